//! Formatting records as text lines,
//! `2026-11-23T20:50:01.123456Z  INFO message KEY=value …` (coloured on a terminal), or
//! as JSON lines. The sink formats whole batches into one buffer; the date part of the
//! timestamp is computed once a second.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::Level;

use super::output::since_epoch;
use super::record::{Entry, Value, WorkerLine};

/// The date of the current second, kept between lines.
#[derive(Default)]
pub struct Clock {
    second: Option<u64>,
    date: String,
}

impl Clock {
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of `t`.
    fn stamp(&mut self, out: &mut String, t: SystemTime) {
        let (secs, micros) = since_epoch(t);
        if self.second != Some(secs) {
            self.date.clear();
            write_date(&mut self.date, secs);
            self.second = Some(secs);
        }
        out.push_str(&self.date);
        let _ = write!(out, ".{micros:06}Z");
    }
}

fn level_name(level: Level) -> (&'static str, &'static str) {
    match level {
        Level::ERROR => ("ERROR", "\x1b[31m"),
        Level::WARN => (" WARN", "\x1b[33m"),
        Level::INFO => (" INFO", "\x1b[32m"),
        Level::DEBUG => ("DEBUG", "\x1b[34m"),
        Level::TRACE => ("TRACE", "\x1b[35m"),
    }
}

/// Time and level, up to the message.
fn begin(out: &mut String, clock: &mut Clock, ansi: bool, t: SystemTime, level: Level) {
    if ansi {
        out.push_str("\x1b[2m");
    }
    clock.stamp(out, t);
    if ansi {
        out.push_str("\x1b[0m");
    }
    let (name, colour) = level_name(level);
    out.push(' ');
    if ansi {
        out.push_str(colour);
        out.push_str(name);
        out.push_str("\x1b[0m");
    } else {
        out.push_str(name);
    }
    out.push(' ');
}

/// ` NAME=value` of each field, dimmed on a terminal.
fn fields(out: &mut String, ansi: bool, f: impl FnOnce(&mut String)) {
    let start = out.len();
    if ansi {
        out.push_str("\x1b[2m");
    }
    let marked = out.len();
    f(out);
    if out.len() == marked {
        out.truncate(start);
    } else if ansi {
        out.push_str("\x1b[0m");
    }
}

/// One of steward's own records as a text line.
pub fn entry_line(out: &mut String, clock: &mut Clock, ansi: bool, e: &Entry) {
    begin(out, clock, ansi, e.time, e.level);
    push_escaped(out, &e.message);
    fields(out, ansi, |out| {
        for (name, value) in &e.fields {
            let _ = write!(out, " {name}=");
            match value {
                Value::I64(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::U64(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::F64(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Bool(b) => {
                    let _ = write!(out, "{b}");
                }
                Value::Str(s) => {
                    let _ = write!(Escaped(out), "{s:?}");
                }
                Value::Shown(s) => push_escaped(out, s),
            }
        }
    });
    out.push('\n');
}

/// A worker's line as a text line.
pub fn worker_line(out: &mut String, clock: &mut Clock, ansi: bool, w: &WorkerLine) {
    begin(out, clock, ansi, w.time, w.level());
    if ansi {
        push_keeping_colours(out, &w.text);
    } else {
        push_escaped(out, &w.text);
    }
    fields(out, ansi, |out| {
        let _ = write!(
            out,
            " POOL={} INSTANCE={} WORKER_PID={} STREAM={}",
            w.pool,
            w.instance,
            w.pid,
            w.stream.as_str()
        );
        if w.job > 0 {
            let _ = write!(out, " JOB_ID={}", w.job);
        }
        for (name, value) in &w.fields {
            let _ = write!(out, " {name}=");
            if value.is_empty() || value.contains([' ', '"', '=']) {
                let _ = write!(Escaped(out), "{value:?}");
            } else {
                push_escaped(out, value);
            }
        }
    });
    out.push('\n');
}

/// A JSON string.
fn json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

fn json_begin(out: &mut String, clock: &mut Clock, t: SystemTime, level: Level, message: &str) {
    out.push_str("{\"timestamp\":\"");
    clock.stamp(out, t);
    let _ = write!(out, "\",\"level\":\"{}\",\"message\":", level.as_str());
    json_str(out, message);
}

/// One of steward's own records as a JSON object on one line.
pub fn entry_json(out: &mut String, clock: &mut Clock, e: &Entry) {
    json_begin(out, clock, e.time, e.level, &e.message);
    for (name, value) in &e.fields {
        out.push(',');
        json_str(out, name);
        out.push(':');
        match value {
            Value::I64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::U64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::F64(n) if n.is_finite() => {
                let _ = write!(out, "{n}");
            }
            Value::F64(_) => out.push_str("null"),
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Value::Str(s) | Value::Shown(s) => json_str(out, s),
        }
    }
    out.push_str(",\"target\":");
    json_str(out, e.target);
    out.push_str("}\n");
}

/// A worker's line as a JSON object on one line.
pub fn worker_json(out: &mut String, clock: &mut Clock, w: &WorkerLine) {
    json_begin(out, clock, w.time, w.level(), &w.text);
    let _ = write!(out, ",\"priority\":{}", w.priority);
    out.push_str(",\"POOL\":");
    json_str(out, &w.pool);
    let _ = write!(
        out,
        ",\"INSTANCE\":{},\"WORKER_PID\":{},\"STREAM\":\"{}\"",
        w.instance,
        w.pid,
        w.stream.as_str()
    );
    if w.job > 0 {
        let _ = write!(out, ",\"JOB_ID\":{}", w.job);
    }
    for (name, value) in &w.fields {
        out.push(',');
        json_str(out, name);
        out.push(':');
        json_str(out, value);
    }
    out.push_str(",\"target\":\"worker\"}\n");
}

/// Text from workers and from the outside goes into lines read on terminals: control
/// characters other than tab and newline are written as `\u{1b}` and the like, so a
/// worker cannot move the cursor or change colours of whoever reads the log.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

fn push_escaped(out: &mut String, s: &str) {
    let clean = |c: char| !c.is_control() || c == '\n' || c == '\t';
    if s.chars().all(clean) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if clean(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// As [`push_escaped`], but a worker's colours (SGR sequences, `ESC [ … m`) stay, for a
/// terminal; the colour is reset after the text.
fn push_keeping_colours(out: &mut String, s: &str) {
    let mut rest = s;
    let mut coloured = false;
    while let Some(at) = rest.find('\x1b') {
        push_escaped(out, &rest[..at]);
        let seq = &rest[at..];
        let params = seq[1..].strip_prefix('[').map(|p| {
            p.len()
                - p.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';')
                    .len()
        });
        match params {
            Some(n) if seq[2 + n..].starts_with('m') => {
                out.push_str(&seq[..3 + n]);
                coloured = true;
                rest = &seq[3 + n..];
            }
            _ => {
                push_escaped(out, "\x1b");
                rest = &seq[1..];
            }
        }
    }
    push_escaped(out, rest);
    if coloured {
        out.push_str("\x1b[0m");
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time in seconds.
fn write_date(out: &mut String, unix: u64) {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (the well-known
/// era-based conversion: eras of 400 years, years starting in March).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn entry(level: Level, message: &str, fields: Vec<(&'static str, Value)>) -> Entry {
        Entry {
            time: SystemTime::now(),
            level,
            target: "steward::test",
            message: message.to_string(),
            fields,
        }
    }

    #[test]
    fn a_line_has_time_level_message_and_fields() {
        let mut out = String::new();
        let mut clock = Clock::default();
        let fields = vec![
            ("JOB_ID", Value::I64(42)),
            ("QUEUE", Value::Shown("mail".into())),
            ("NOTE", Value::Str("a\x1bb".into())),
        ];
        entry_line(
            &mut out,
            &mut clock,
            false,
            &entry(Level::INFO, "job 42 succeeded", fields),
        );
        entry_line(
            &mut out,
            &mut clock,
            false,
            &entry(Level::WARN, "second", vec![]),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert_eq!(time.len(), "2026-11-23T20:50:01.123456Z".len(), "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert_eq!(
            rest,
            r#" INFO job 42 succeeded JOB_ID=42 QUEUE=mail NOTE="a\u{1b}b""#
        );
        assert!(lines[1].ends_with(" WARN second"), "{}", lines[1]);
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn colour_only_when_asked() {
        let mut out = String::new();
        let e = entry(Level::ERROR, "boom", vec![("POOL", Value::Str("w".into()))]);
        entry_line(&mut out, &mut Clock::default(), true, &e);
        assert!(out.contains("\x1b[31mERROR\x1b[0m boom"), "{out:?}");
        assert!(out.contains("\x1b[2m POOL=\"w\"\x1b[0m"), "{out:?}");
    }

    #[test]
    fn worker_lines_carry_their_origin_as_text_and_json() {
        let w = WorkerLine {
            time: SystemTime::now(),
            priority: 4,
            pool: Arc::from("web"),
            instance: 2,
            pid: 4242,
            stream: super::super::record::Stream::Stderr,
            job: 7,
            text: "disk \x07 slow".into(),
            fields: vec![("APP_DISK".into(), "sda 1".into())],
            reserve: false,
        };
        let mut out = String::new();
        let mut clock = Clock::default();
        worker_line(&mut out, &mut clock, false, &w);
        assert!(
            out.ends_with(" WARN disk \\u{7} slow POOL=web INSTANCE=2 WORKER_PID=4242 STREAM=stderr JOB_ID=7 APP_DISK=\"sda 1\"\n"),
            "{out:?}"
        );
        out.clear();
        worker_json(&mut out, &mut clock, &w);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["message"], "disk \x07 slow");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["INSTANCE"], 2);
        assert_eq!(v["JOB_ID"], 7);
        assert_eq!(v["APP_DISK"], "sda 1");
        assert_eq!(v["priority"], 4);
        assert_eq!(v["target"], "worker");
    }

    #[test]
    fn a_terminal_keeps_a_workers_colours_but_nothing_else() {
        let mut out = String::new();
        push_keeping_colours(&mut out, "\x1b[31mred\x1b[0m \x1b[2Jclear \x07");
        assert_eq!(out, "\x1b[31mred\x1b[0m \\u{1b}[2Jclear \\u{7}\x1b[0m");
        out.clear();
        push_keeping_colours(&mut out, "plain\x1b");
        assert_eq!(out, "plain\\u{1b}");
    }

    #[test]
    fn own_records_as_json() {
        let mut out = String::new();
        let e = entry(
            Level::INFO,
            "a \"quoted\" word",
            vec![
                ("JOBS", Value::U64(3)),
                ("POOL", Value::Shown("w".into())),
                ("X", Value::F64(f64::NAN)),
            ],
        );
        entry_json(&mut out, &mut Clock::default(), &e);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["message"], "a \"quoted\" word");
        assert_eq!(v["JOBS"], 3);
        assert_eq!(v["POOL"], "w");
        assert!(v["X"].is_null());
        assert_eq!(v["target"], "steward::test");
    }

    #[test]
    fn dates() {
        let mut s = String::new();
        write_date(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00");
        s.clear();
        // 2000-02-29 (a leap day in a century year) 12:34:56
        write_date(&mut s, 951_827_696);
        assert_eq!(s, "2000-02-29T12:34:56");
        s.clear();
        write_date(&mut s, 1_795_478_399);
        assert_eq!(s, "2026-11-23T23:59:59");
        s.clear();
        // 2100-03-01: 2100 is not a leap year.
        write_date(&mut s, 4_107_542_400);
        assert_eq!(s, "2100-03-01T00:00:00");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut s = String::new();
        push_escaped(&mut s, "plain\ttext");
        assert_eq!(s, "plain\ttext");
        s.clear();
        push_escaped(&mut s, "\x1b[31mred\x07");
        assert_eq!(s, "\\u{1b}[31mred\\u{7}");
    }
}
