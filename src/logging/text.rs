//! The text output: one line per event,
//! `2026-11-23T20:50:01.123456Z  INFO message KEY=value …`, coloured on a terminal.
//!
//! The supervisor logs its job lines on the thread that dispatches jobs, so the cost of a
//! line is paid on the path of the jobs. This formatter does only what the format
//! needs: the date part of the timestamp is computed once a second, the line is built in
//! a buffer kept per thread and written with one `write(2)`.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Writes events as text lines to stderr.
pub struct TextLayer {
    /// Colour the level and dim the timestamp and fields (a terminal that wants colour).
    ansi: bool,
    /// Where finished lines go: stderr, or a test's buffer.
    write: fn(&str),
}

impl TextLayer {
    /// Lines to stderr.
    pub fn new(ansi: bool) -> TextLayer {
        TextLayer {
            ansi,
            write: write_stderr,
        }
    }

    /// Lines to `write` instead (benchmarks, tests).
    pub fn with_writer(ansi: bool, write: fn(&str)) -> TextLayer {
        TextLayer { ansi, write }
    }
}

#[derive(Default)]
struct Buffers {
    line: String,
    fields: String,
    /// The second the cached date was computed for, and `YYYY-MM-DDTHH:MM:SS` of it.
    second: Option<u64>,
    date: String,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

impl<S: Subscriber> Layer<S> for TextLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let own = |event: &Event<'_>| {
            let mut b = Buffers::default();
            format_event(event, self.ansi, SystemTime::now(), &mut b);
            (self.write)(&b.line);
        };
        let kept = BUFFERS.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => {
                let b = &mut *b;
                format_event(event, self.ansi, SystemTime::now(), b);
                (self.write)(&b.line);
            }
            // An event logged while this thread is formatting one (a `Debug` impl that
            // logs): format it into buffers of its own.
            Err(_) => own(event),
        });
        // The thread is exiting and its buffers are gone.
        if kept.is_err() {
            own(event);
        }
    }
}

fn write_stderr(line: &str) {
    // Nowhere to report a failed write of the log itself.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn format_event(event: &Event<'_>, ansi: bool, now: SystemTime, b: &mut Buffers) {
    b.line.clear();
    b.fields.clear();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since.as_secs();
    if b.second != Some(second) {
        b.date.clear();
        write_date(&mut b.date, second);
        b.second = Some(second);
    }
    if ansi {
        b.line.push_str("\x1b[2m");
    }
    b.line.push_str(&b.date);
    let _ = write!(b.line, ".{:06}Z", since.subsec_micros());
    if ansi {
        b.line.push_str("\x1b[0m");
    }
    let level = *event.metadata().level();
    let (name, colour) = match level {
        Level::ERROR => ("ERROR", "\x1b[31m"),
        Level::WARN => (" WARN", "\x1b[33m"),
        Level::INFO => (" INFO", "\x1b[32m"),
        Level::DEBUG => ("DEBUG", "\x1b[34m"),
        Level::TRACE => ("TRACE", "\x1b[35m"),
    };
    b.line.push(' ');
    if ansi {
        b.line.push_str(colour);
        b.line.push_str(name);
        b.line.push_str("\x1b[0m");
    } else {
        b.line.push_str(name);
    }
    b.line.push(' ');
    event.record(&mut Fields {
        message: &mut b.line,
        fields: &mut b.fields,
    });
    if !b.fields.is_empty() {
        if ansi {
            b.line.push_str("\x1b[2m");
        }
        b.line.push_str(&b.fields);
        if ansi {
            b.line.push_str("\x1b[0m");
        }
    }
    b.line.push('\n');
}

/// Puts the message into one buffer and ` NAME=value` for every other field into another.
struct Fields<'a> {
    message: &'a mut String,
    fields: &'a mut String,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            push_escaped(self.message, value);
        } else {
            let _ = write!(self.fields, " {}=", field.name());
            let _ = write!(Escaped(self.fields), "{value:?}");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let _ = write!(self.fields, " {}={value}", field.name());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let _ = write!(self.fields, " {}={value}", field.name());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let _ = write!(self.fields, " {}={value}", field.name());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(Escaped(self.message), "{value:?}");
        } else {
            let _ = write!(self.fields, " {}=", field.name());
            let _ = write!(Escaped(self.fields), "{value:?}");
        }
    }
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

    use tracing_subscriber::layer::SubscriberExt;

    thread_local! {
        static WRITTEN: RefCell<String> = const { RefCell::new(String::new()) };
    }

    fn capture(line: &str) {
        WRITTEN.with(|w| w.borrow_mut().push_str(line));
    }

    fn lines_of(ansi: bool, f: impl FnOnce()) -> String {
        WRITTEN.with(|w| w.borrow_mut().clear());
        let layer = TextLayer::with_writer(ansi, capture);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        WRITTEN.with(|w| w.borrow().clone())
    }

    #[test]
    fn a_line_has_time_level_message_and_fields() {
        let out = lines_of(false, || {
            let job = 42;
            let queue = "mail";
            tracing::info!(JOB_ID = job, QUEUE = %queue, NOTE = "a\x1bb", "job {job} succeeded");
            tracing::warn!("second");
        });
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
        let out = lines_of(true, || tracing::error!(POOL = "w", "boom"));
        assert!(out.contains("\x1b[31mERROR\x1b[0m boom"), "{out:?}");
        assert!(out.contains("\x1b[2m POOL=\"w\"\x1b[0m"), "{out:?}");
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
