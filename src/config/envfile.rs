//! Environment files in the syntax of systemd's `EnvironmentFile=`, and `${VAR}`
//! expansion in `env` values.
//!
//! An assignment is `NAME=value`, optionally after `export `. Blank lines and lines
//! starting with `#` or `;` are comments. An unquoted value loses its leading and
//! trailing blanks, keeps inner ones, and takes `\x` as `x`; a trailing `\` joins the
//! next line. A `'…'` value is verbatim and may span lines; a `"…"` value may span lines
//! and takes `\"`, `\\`, `` \` `` and `\$` as the character, `\` + newline as nothing,
//! and keeps any other `\x` as it is. Unlike systemd, a line that is not an assignment
//! is an error (with its line number), not skipped: a typo should not silently drop a
//! setting.

/// The most an environment file may hold.
pub const MAX_FILE: u64 = 1024 * 1024;

/// The assignments of `text`, in order (a later one of the same name wins when they are
/// collected), or the 1-based line and what is wrong there.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        // One logical line: skip blanks at its start.
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start_line = line;
        if chars[i] == '\n' {
            i += 1;
            line += 1;
            continue;
        }
        if chars[i] == '#' || chars[i] == ';' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let name_start = i;
        while i < chars.len() && !matches!(chars[i], '=' | '\n') {
            i += 1;
        }
        if i >= chars.len() || chars[i] == '\n' {
            // The line itself is not repeated: it may hold a secret.
            return Err((
                start_line,
                "this line is not an assignment: write NAME=value (comments start with #)"
                    .to_string(),
            ));
        }
        let mut name: String = chars[name_start..i].iter().collect();
        name = name.trim_end().to_string();
        if let Some(rest) = name.strip_prefix("export") {
            if rest.starts_with([' ', '\t']) {
                name = rest.trim_start().to_string();
            }
        }
        if let Some(why) = name_problem(&name) {
            return Err((start_line, why));
        }
        i += 1; // '='
        while i < chars.len() && matches!(chars[i], ' ' | '\t') {
            i += 1;
        }
        let mut value = String::new();
        match chars.get(i) {
            Some(&q @ ('\'' | '"')) => {
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err((
                                start_line,
                                format!("the value of {name} opens a {q} that is never closed"),
                            ));
                        }
                        Some(&c) if c == q => {
                            i += 1;
                            break;
                        }
                        // Inside double quotes only, as in a shell.
                        Some('\\') if q == '"' => match chars.get(i + 1) {
                            Some('\n') => {
                                line += 1;
                                i += 2;
                            }
                            Some(&c @ ('"' | '\\' | '`' | '$')) => {
                                value.push(c);
                                i += 2;
                            }
                            Some(&c) => {
                                value.push('\\');
                                value.push(c);
                                i += 2;
                            }
                            None => i += 1,
                        },
                        Some(&c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                trailing(&chars, &mut i, start_line, &name)?;
            }
            _ => {
                while let Some(&c) = chars.get(i) {
                    match c {
                        '\n' => break,
                        '\\' => match chars.get(i + 1) {
                            Some('\n') => {
                                line += 1;
                                i += 2;
                            }
                            Some(&n) => {
                                value.push(n);
                                i += 2;
                            }
                            None => i += 1,
                        },
                        _ => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                value = value.trim_end_matches([' ', '\t', '\r']).to_string();
            }
        }
        if value.contains('\0') {
            return Err((start_line, format!("the value of {name} holds a NUL byte")));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Names in environment files and `${…}`: letters, digits and `_`, not starting with a
/// digit (as systemd and shells take them).
fn name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (!ok).then(|| {
        format!(
            "`{name}` is not a variable name: use letters, digits and _, not starting with a digit"
        )
    })
}

/// After a closing quote only blanks may follow on the line.
fn trailing(chars: &[char], i: &mut usize, line: usize, name: &str) -> Result<(), (usize, String)> {
    while let Some(&c) = chars.get(*i) {
        match c {
            ' ' | '\t' | '\r' => *i += 1,
            '\n' => return Ok(()),
            _ => {
                return Err((
                    line,
                    format!("the value of {name} goes on after its closing quote"),
                ));
            }
        }
    }
    Ok(())
}

/// `value` with each `${NAME}` replaced by `lookup(NAME)` and each `${NAME:-default}` by
/// that or, when it is unset or empty, `default`; `$$` is one `$`, and any other `$`
/// stays as it is. An unknown name without a default is an error naming it.
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                return Err(format!("`${{` without its closing `}}` in {value:?}"));
            };
            let inner = &r[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if let Some(why) = name_problem(name) {
                return Err(format!("`${{{inner}}}`: {why}"));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "${{{name}}} is set neither in the pool's env_file nor in steward's environment: set it, or give a default with ${{{name}:-value}}"
                    ));
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ok(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap()
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn systemd_environment_file_syntax() {
        let text = "# a comment\n; another\n\nA=1\n  B = two words  \nexport C=3\n\
                    D='single $NOT \\n kept'\nE=\"dq \\\"q\\\" \\$ \\x\"\nF=line\\\n  continued\n\
                    G='spans\nlines'\nH=\nI=a\\ b\\\\c\n";
        assert_eq!(
            ok(text),
            vec![
                pair("A", "1"),
                pair("B", "two words"),
                pair("C", "3"),
                pair("D", "single $NOT \\n kept"),
                pair("E", "dq \"q\" $ \\x"),
                pair("F", "line  continued"),
                pair("G", "spans\nlines"),
                pair("H", ""),
                pair("I", "a b\\c"),
            ]
        );
        let last: BTreeMap<String, String> = ok("A=1\nA=2\n").into_iter().collect();
        assert_eq!(last["A"], "2");
        assert_eq!(ok("A=1"), vec![pair("A", "1")], "no final newline");
        assert_eq!(ok("A=1\r\n"), vec![pair("A", "1")], "CRLF");
    }

    #[test]
    fn a_malformed_file_names_its_line() {
        assert_eq!(parse("A=1\n\nnot an assignment\n").unwrap_err().0, 3);
        assert_eq!(parse("A=1\nB='open\n\nC=2\n").unwrap_err().0, 2);
        assert_eq!(parse("A=\"x\" y\n").unwrap_err().0, 1);
        let (line, why) = parse("A=1\n1BAD=x\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(why.contains("1BAD"), "{why}");
        // Lines counted across a quoted value that spans lines.
        assert_eq!(parse("A='x\ny'\nbad\n").unwrap_err().0, 3);
    }

    #[test]
    fn expansion_of_variables_with_defaults() {
        let look = |n: &str| match n {
            "HOST" => Some("db".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand("postgres://${HOST}/x", &look).unwrap(),
            "postgres://db/x"
        );
        assert_eq!(expand("${MISSING:-fallback}", &look).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY:-fallback}", &look).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY}", &look).unwrap(), "");
        assert_eq!(
            expand("cost $5, $$HOME, ${HOST}", &look).unwrap(),
            "cost $5, $HOME, db"
        );
        let e = expand("${MISSING}", &look).unwrap_err();
        assert!(e.contains("MISSING") && e.contains(":-"), "{e}");
        assert!(expand("${HOST", &look).is_err());
        assert!(expand("${1X}", &look).is_err());
    }
}
