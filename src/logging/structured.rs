//! What a worker's line says about itself: a JSON object's message, priority and fields
//! (pino, bunyan, structlog, winston, python-json-logger), a level word at the start of a
//! text line, and terminal colour codes taken out. Pure: bytes in, a line out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// journald's priorities (syslog's): 0 emerg … 3 err, 4 warning, 5 notice, 6 info, 7 debug.
pub const ERR: u8 = 3;
pub const INFO: u8 = 6;

/// Most fields taken from one JSON line.
pub const MAX_FIELDS: usize = 32;
/// Longest field value kept (longer ones are cut at a character boundary).
pub const MAX_FIELD_VALUE: usize = 4096;

/// How a pool's lines are read (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A JSON object with a message (`msg`, `message` or `event`) is structured; any
    /// other line is text.
    #[default]
    Auto,
    /// Every JSON object is structured (without a message key, the line is the message);
    /// any other line is text.
    Json,
    /// Every line is text.
    Text,
}

/// A pool's rules for its workers' lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub format: Format,
    /// `ERROR …`, `WARN …` at the start of a text line set its priority.
    pub level_from_text: bool,
    /// Terminal escape sequences and other control characters (but tab) are removed.
    pub strip_ansi: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            format: Format::Auto,
            level_from_text: false,
            strip_ansi: true,
        }
    }
}

impl Rules {
    fn bits(self) -> u8 {
        let f = match self.format {
            Format::Auto => 0,
            Format::Json => 1,
            Format::Text => 2,
        };
        f | (u8::from(self.level_from_text) << 2) | (u8::from(self.strip_ansi) << 3)
    }

    fn from_bits(b: u8) -> Rules {
        Rules {
            format: match b & 3 {
                1 => Format::Json,
                2 => Format::Text,
                _ => Format::Auto,
            },
            level_from_text: b & 4 != 0,
            strip_ansi: b & 8 != 0,
        }
    }
}

/// A pool's rules, shared with the readers of its workers' output, so that a reload
/// changes them for running workers too.
#[derive(Debug, Clone)]
pub struct SharedRules(Arc<AtomicU8>);

impl SharedRules {
    pub fn new(rules: Rules) -> SharedRules {
        SharedRules(Arc::new(AtomicU8::new(rules.bits())))
    }

    pub fn get(&self) -> Rules {
        Rules::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, rules: Rules) {
        self.0.store(rules.bits(), Ordering::Relaxed);
    }
}

impl Default for SharedRules {
    fn default() -> SharedRules {
        SharedRules::new(Rules::default())
    }
}

/// A line as it is logged.
#[derive(Debug, PartialEq)]
pub struct Line {
    pub priority: u8,
    pub message: String,
    /// `APP_…` journal fields, at most [`MAX_FIELDS`].
    pub fields: Vec<(String, String)>,
}

/// Read one line (without its line end) under `rules`; `priority` is the line's priority
/// so far (an sd-daemon `<N>` prefix, already removed, or info).
pub fn read(raw: &[u8], priority: u8, rules: Rules) -> Line {
    let stripped;
    let raw = if rules.strip_ansi && raw.iter().any(|b| *b < 0x20 && *b != b'\t') {
        stripped = strip_ansi(raw);
        &stripped[..]
    } else {
        raw
    };
    if rules.format != Format::Text
        && raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && let Some(line) = json(raw, priority, rules.format)
    {
        return line;
    }
    let message = String::from_utf8_lossy(raw).into_owned();
    let priority = if rules.level_from_text {
        text_level(&message).unwrap_or(priority)
    } else {
        priority
    };
    Line {
        priority,
        message,
        fields: Vec::new(),
    }
}

const MESSAGE_KEYS: [&str; 3] = ["msg", "message", "event"];
const LEVEL_KEYS: [&str; 3] = ["level", "levelname", "severity"];

fn json(raw: &[u8], priority: u8, format: Format) -> Option<Line> {
    let serde_json::Value::Object(map) = serde_json::from_slice(raw).ok()? else {
        return None;
    };
    let message_key = MESSAGE_KEYS
        .iter()
        .find(|k| map.get(**k).is_some_and(|v| v.is_string()));
    let message = match message_key {
        Some(k) => map.get(*k)?.as_str()?.to_string(),
        None if format == Format::Json => String::from_utf8_lossy(raw).trim().to_string(),
        None => return None,
    };
    let level_key = LEVEL_KEYS.iter().find(|k| map.contains_key(**k));
    let priority = level_key
        .and_then(|k| map.get(*k))
        .and_then(json_level)
        .unwrap_or(priority);
    let mut fields = Vec::new();
    for (key, value) in &map {
        if fields.len() >= MAX_FIELDS {
            break;
        }
        if Some(&key.as_str()) == message_key || Some(&key.as_str()) == level_key {
            continue;
        }
        let text = match value {
            serde_json::Value::String(s) => cut(s),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        fields.push((field_name(key), text));
    }
    Some(Line {
        priority,
        message,
        fields,
    })
}

/// A `level` value as a priority: pino's and bunyan's numbers (10 trace … 60 fatal),
/// syslog's 0–7, or a name.
fn json_level(v: &serde_json::Value) -> Option<u8> {
    match v {
        serde_json::Value::Number(n) => {
            let n = n.as_f64()?;
            Some(match n {
                n if (0.0..=7.0).contains(&n) && n.fract() == 0.0 => n as u8,
                n if n >= 60.0 => 2,
                n if n >= 50.0 => 3,
                n if n >= 40.0 => 4,
                n if n >= 30.0 => 6,
                _ => 7,
            })
        }
        serde_json::Value::String(s) => level_name(s),
        _ => None,
    }
}

/// The priority a level's name stands for, in any case.
pub fn level_name(name: &str) -> Option<u8> {
    Some(match name.to_ascii_lowercase().as_str() {
        "emerg" | "emergency" | "panic" => 0,
        "alert" => 1,
        "crit" | "critical" | "fatal" => 2,
        "err" | "error" => 3,
        "warn" | "warning" => 4,
        "notice" => 5,
        "info" | "information" | "informational" => 6,
        "debug" | "trace" | "verbose" | "silly" => 7,
        _ => return None,
    })
}

/// `ERROR: …`, `[WARN] …`, `FATAL …`: an upper-case level word first, then a space, a
/// colon, `]` or the end.
fn text_level(line: &str) -> Option<u8> {
    let s = line.strip_prefix('[').unwrap_or(line);
    let end = s.find(|c: char| !c.is_ascii_uppercase()).unwrap_or(s.len());
    let (word, rest) = s.split_at(end);
    if word.len() < 3 || !(rest.is_empty() || rest.starts_with([' ', ':', ']', '\t', '|'])) {
        return None;
    }
    level_name(word)
}

/// `APP_` and the key upper-cased, anything but letters, digits and `_` replaced by `_`.
pub fn field_name(key: &str) -> String {
    let mut out = String::with_capacity(4 + key.len());
    out.push_str("APP_");
    for c in key.chars().take(60) {
        let c = c.to_ascii_uppercase();
        out.push(if c.is_ascii_uppercase() || c.is_ascii_digit() {
            c
        } else {
            '_'
        });
    }
    out
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_FIELD_VALUE {
        return s.to_string();
    }
    let mut end = MAX_FIELD_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// `raw` without terminal escape sequences (CSI such as colours and cursor moves, OSC
/// such as titles and links, two-byte escapes) and without other control characters but
/// tab.
pub fn strip_ansi(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            i += 1;
            match raw.get(i) {
                Some(b'[') => {
                    // Parameters and intermediates, then one final byte 0x40–0x7e.
                    i += 1;
                    while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                Some(b']') => {
                    // Up to BEL or ESC \.
                    i += 1;
                    while i < raw.len() {
                        if raw[i] == 0x07 {
                            i += 1;
                            break;
                        }
                        if raw[i] == 0x1b && raw.get(i + 1) == Some(&b'\\') {
                            i += 2;
                            break;
                        }
                        i += 1;
                    }
                }
                Some(c) if (0x20..=0x2f).contains(c) => {
                    // nF: intermediates, then one final byte.
                    while i < raw.len() && (0x20..=0x2f).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                Some(_) => i += 1,
                None => {}
            }
            continue;
        }
        if b >= 0x20 || b == b'\t' {
            out.push(b);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(format: Format) -> Rules {
        Rules {
            format,
            level_from_text: false,
            strip_ansi: true,
        }
    }

    #[test]
    fn pino_lines_give_message_priority_and_fields() {
        let raw = br#"{"level":50,"time":1733222400000,"pid":42,"hostname":"vm-7","msg":"upload failed","req":{"id":1},"retry":true}"#;
        let l = read(raw, INFO, rules(Format::Auto));
        assert_eq!(l.message, "upload failed");
        assert_eq!(l.priority, 3);
        assert_eq!(
            l.fields,
            vec![
                ("APP_HOSTNAME".to_string(), "vm-7".to_string()),
                ("APP_PID".into(), "42".into()),
                ("APP_RETRY".into(), "true".into()),
                ("APP_TIME".into(), "1733222400000".into()),
            ]
        );
        for (n, p) in [(10, 7), (20, 7), (30, 6), (40, 4), (50, 3), (60, 2)] {
            let raw = format!(r#"{{"level":{n},"msg":"x"}}"#);
            assert_eq!(read(raw.as_bytes(), INFO, rules(Format::Auto)).priority, p);
        }
    }

    #[test]
    fn structlog_and_named_levels() {
        let raw = br#"{"event": "cache miss", "level": "warning", "key": "user:1", "logger": "app.cache"}"#;
        let l = read(raw, INFO, rules(Format::Auto));
        assert_eq!(l.message, "cache miss");
        assert_eq!(l.priority, 4);
        assert!(l.fields.contains(&("APP_KEY".into(), "user:1".into())));
        assert!(
            l.fields
                .contains(&("APP_LOGGER".into(), "app.cache".into()))
        );
        for (name, p) in [("FATAL", 2), ("Error", 3), ("notice", 5), ("trace", 7)] {
            let raw = format!(r#"{{"level":"{name}","message":"x"}}"#);
            assert_eq!(read(raw.as_bytes(), INFO, rules(Format::Auto)).priority, p);
        }
    }

    #[test]
    fn auto_wants_a_message_and_json_takes_any_object() {
        let raw = br#"{"id": 7, "ok": true}"#;
        let l = read(raw, INFO, rules(Format::Auto));
        assert_eq!(l.message, r#"{"id": 7, "ok": true}"#);
        assert!(l.fields.is_empty());
        let l = read(raw, INFO, rules(Format::Json));
        assert_eq!(l.message, r#"{"id": 7, "ok": true}"#);
        assert_eq!(l.fields.len(), 2);
        let l = read(br#"{"msg":"x","level":"error"}"#, INFO, rules(Format::Text));
        assert_eq!(l.priority, INFO);
        assert!(l.fields.is_empty());
        // Not an object, or not JSON: text.
        for raw in [&b"[1,2]"[..], b"{not json", b"{\"msg\":\"cut", b"plain"] {
            let l = read(raw, INFO, rules(Format::Json));
            assert_eq!(l.message.as_bytes(), raw);
            assert!(l.fields.is_empty());
        }
    }

    #[test]
    fn at_most_32_fields_and_names_made_valid() {
        let mut raw = String::from(r#"{"msg":"many""#);
        for i in 0..50 {
            raw.push_str(&format!(r#","k{i:02}":{i}"#));
        }
        raw.push_str(r#","nested":{"a":1},"list":[1],"none":null}"#);
        let l = read(raw.as_bytes(), INFO, rules(Format::Auto));
        assert_eq!(l.fields.len(), MAX_FIELDS);
        assert_eq!(field_name("req.id"), "APP_REQ_ID");
        assert_eq!(field_name("user-agent"), "APP_USER_AGENT");
        assert_eq!(field_name("été"), "APP__T_");
        let long = "x".repeat(10_000);
        let l = read(
            format!(r#"{{"msg":"m","body":"{long}"}}"#).as_bytes(),
            INFO,
            rules(Format::Auto),
        );
        assert_eq!(l.fields[0].1.len(), MAX_FIELD_VALUE);
    }

    #[test]
    fn level_words_only_when_asked() {
        let mut r = rules(Format::Auto);
        assert_eq!(read(b"ERROR: disk full", INFO, r).priority, INFO);
        r.level_from_text = true;
        for (line, p) in [
            (&b"ERROR: disk full"[..], 3),
            (b"WARN slow", 4),
            (b"[WARNING] slow", 4),
            (b"FATAL", 2),
            (b"ERROR:root:boom", 3),
            (b"ERRORS were fine", INFO),
            (b"error lowercase", INFO),
            (b"INFORMATIONAL", INFO),
            (b"Everything fine", INFO),
        ] {
            assert_eq!(
                read(line, INFO, r).priority,
                p,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // An sd-daemon prefix stays when no word says otherwise.
        assert_eq!(read(b"fine", 4, r).priority, 4);
    }

    #[test]
    fn colours_and_control_characters_are_removed() {
        let pretty = b"\x1b[90m[12:00:01.123]\x1b[39m \x1b[31mERROR\x1b[39m (42): \x1b[36mupload failed\x1b[39m";
        assert_eq!(
            strip_ansi(pretty),
            b"[12:00:01.123] ERROR (42): upload failed"
        );
        assert_eq!(
            strip_ansi(b"\x1b]8;;http://x\x07link\x1b]8;;\x1b\\ done"),
            b"link done"
        );
        assert_eq!(strip_ansi(b"a\x1b(Bb\rc\x07d\te\x1b"), b"abcd\te");
        let l = read(
            b"\x1b[32m{\"msg\":\"ok\"}\x1b[0m",
            INFO,
            rules(Format::Auto),
        );
        assert_eq!(l.message, "ok");
        let kept = read(
            b"\x1b[31mred\x1b[0m",
            INFO,
            Rules {
                strip_ansi: false,
                ..rules(Format::Auto)
            },
        );
        assert_eq!(kept.message, "\x1b[31mred\x1b[0m");
    }

    #[test]
    fn shared_rules_round_trip() {
        for format in [Format::Auto, Format::Json, Format::Text] {
            for level_from_text in [false, true] {
                for strip_ansi in [false, true] {
                    let r = Rules {
                        format,
                        level_from_text,
                        strip_ansi,
                    };
                    let s = SharedRules::new(Rules::default());
                    s.set(r);
                    assert_eq!(s.get(), r);
                }
            }
        }
    }
}
