//! Shell completion scripts: clap's, plus the names of the pools and queues configured
//! (read from the configuration file each time, through `steward complete-names`).

use std::path::Path;

/// The pool or queue names in the configuration file, sorted; none if it cannot be read.
pub fn names(config: &Path, kind: &str) -> Vec<String> {
    let table = match kind {
        "pools" => "pool",
        "queues" => "queue",
        _ => return Vec::new(),
    };
    let Ok(meta) = std::fs::metadata(config) else {
        return Vec::new();
    };
    // Completion must stay instant: a configuration file is not this large.
    if meta.len() > crate::config::MAX_CONFIG_BYTES {
        return Vec::new();
    }
    let Ok(text) = std::fs::read_to_string(config) else {
        return Vec::new();
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut v: Vec<String> = doc
        .get(table)
        .and_then(|t| t.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    v.sort();
    v
}

const BASH: &str = r#"
# Pool and queue names from the configuration (steward complete-names).
_steward_with_names() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local cmd="" at=0 i config=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --config) config=(--config "${COMP_WORDS[i+1]}"); ((i++)) ;;
            --socket | --request-timeout) ((i++)) ;;
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; at=$i; break ;;
        esac
    done
    local kind=""
    case "$prev" in
        --queue) kind=queues ;;
        --pool) kind=pools ;;
    esac
    if [[ -z "$kind" && "$cur" != -* && $at -gt 0 && $at -eq $((COMP_CWORD - 1)) ]]; then
        case "$cmd" in
            stop | start | scale | restart | logs) kind=pools ;;
            submit) kind=queues ;;
        esac
    fi
    if [[ -n "$kind" ]]; then
        local names
        names=$("${COMP_WORDS[0]}" "${config[@]}" complete-names "$kind" 2>/dev/null)
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
        return 0
    fi
    _steward "$@"
}
if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _steward_with_names -o nosort -o bashdefault -o default steward
else
    complete -F _steward_with_names -o bashdefault -o default steward
fi
"#;

const ZSH: &str = r#"
# Pool and queue names from the configuration (steward complete-names).
_steward_names() {
    local -a cfg names
    local i=${words[(I)--config]}
    (( i > 0 )) && cfg=(--config "${words[i+1]}")
    names=(${(f)"$(${words[1]} "${cfg[@]}" complete-names $1 2>/dev/null)"})
    compadd -a names
}
_steward_pools() { _steward_names pools }
_steward_queues() { _steward_names queues }
"#;

/// Add the name completion to clap's script for `shell`.
pub fn with_names(shell: clap_complete::Shell, script: Vec<u8>) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(&script).into_owned();
    match shell {
        clap_complete::Shell::Bash => text.push_str(BASH),
        clap_complete::Shell::Zsh => {
            let mut out = String::new();
            for line in text.lines() {
                let is = |p: &str| line.starts_with(p) && line.ends_with(":_default' \\");
                let line =
                    if is("':pool -- ") || is("'::pool -- ") || line.contains(":POOL:_default'") {
                        line.replace(":_default'", ":_steward_pools'")
                    } else if is("':queue -- ") || line.contains(":QUEUE:_default'") {
                        line.replace(":_default'", ":_steward_queues'")
                    } else {
                        line.to_string()
                    };
                out.push_str(&line);
                out.push('\n');
                if line.starts_with("#compdef") {
                    out.push_str(ZSH);
                }
            }
            text = out;
        }
        _ => {}
    }
    text.into_bytes()
}
