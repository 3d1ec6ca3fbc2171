//! Where the sink writes: text lines or JSON lines to stderr (one write per batch), or
//! journald's native protocol (one datagram per record, fields as journal fields).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Level;

use super::record::{Entry, Value, WorkerLine};
use super::text::{self, Clock};

/// journald's socket for native messages.
const JOURNALD: &str = "/run/systemd/journal/socket";
/// Longest message sent to journald; longer ones are cut (worker lines are already split
/// at 16 KiB, so only a very long message of steward's own can be).
const JOURNALD_MESSAGE_MAX: usize = 64 * 1024;

pub enum Output {
    Text(Lines),
    Json(Lines),
    Journald(Journald),
}

/// Text or JSON lines gathered into one buffer and written together.
pub struct Lines {
    ansi: bool,
    clock: Clock,
    buf: String,
    out: Box<dyn Write + Send>,
}

impl Lines {
    pub fn new(ansi: bool, out: Box<dyn Write + Send>) -> Lines {
        Lines {
            ansi,
            clock: Clock::default(),
            buf: String::with_capacity(256 * 1024),
            out,
        }
    }
}

impl Output {
    /// Text lines to stderr.
    pub fn text(ansi: bool) -> Output {
        Output::Text(Lines::new(ansi, Box::new(std::io::stderr())))
    }

    /// JSON lines to stderr.
    pub fn json() -> Output {
        Output::Json(Lines::new(false, Box::new(std::io::stderr())))
    }

    pub fn own(&mut self, e: &Entry) {
        match self {
            Output::Text(l) => text::entry_line(&mut l.buf, &mut l.clock, l.ansi, e),
            Output::Json(l) => text::entry_json(&mut l.buf, &mut l.clock, e),
            Output::Journald(j) => j.entry(e),
        }
    }

    pub fn worker(&mut self, w: &WorkerLine) {
        match self {
            Output::Text(l) => text::worker_line(&mut l.buf, &mut l.clock, l.ansi, w),
            Output::Json(l) => text::worker_json(&mut l.buf, &mut l.clock, w),
            Output::Journald(j) => j.worker(w),
        }
    }

    /// Write what the last records left in the buffer.
    pub fn flush(&mut self) {
        if let Output::Text(l) | Output::Json(l) = self
            && !l.buf.is_empty()
        {
            // Nowhere to report a failed write of the log itself.
            let _ = l.out.write_all(l.buf.as_bytes());
            let _ = l.out.flush();
            l.buf.clear();
        }
    }
}

/// journald's native protocol: one datagram per record, `NAME=value` lines (values with
/// a newline in the binary form: name, newline, 64-bit length, value).
pub struct Journald {
    socket: UnixDatagram,
    buf: Vec<u8>,
}

impl Journald {
    /// Connect to journald, if it is there.
    pub fn connect() -> std::io::Result<Journald> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(JOURNALD)?;
        Ok(Journald {
            socket,
            buf: Vec::with_capacity(4096),
        })
    }

    fn entry(&mut self, e: &Entry) {
        self.begin(e.level, e.message.as_bytes());
        put(&mut self.buf, "TARGET", e.target.as_bytes());
        for (name, value) in &e.fields {
            let name = field_name(name);
            match value {
                Value::I64(n) => put(&mut self.buf, &name, n.to_string().as_bytes()),
                Value::U64(n) => put(&mut self.buf, &name, n.to_string().as_bytes()),
                Value::F64(n) => put(&mut self.buf, &name, n.to_string().as_bytes()),
                Value::Bool(b) => put(&mut self.buf, &name, b.to_string().as_bytes()),
                Value::Str(s) | Value::Shown(s) => put(&mut self.buf, &name, s.as_bytes()),
            }
        }
        self.send();
    }

    fn worker(&mut self, w: &WorkerLine) {
        self.begin_priority(w.priority, w.text.as_bytes());
        put(&mut self.buf, "POOL", w.pool.as_bytes());
        put(&mut self.buf, "INSTANCE", w.instance.to_string().as_bytes());
        put(&mut self.buf, "WORKER_PID", w.pid.to_string().as_bytes());
        put(&mut self.buf, "STREAM", w.stream.as_str().as_bytes());
        if w.job > 0 {
            put(&mut self.buf, "JOB_ID", w.job.to_string().as_bytes());
        }
        for (name, value) in &w.fields {
            put(&mut self.buf, name, value.as_bytes());
        }
        self.send();
    }

    fn begin(&mut self, level: Level, message: &[u8]) {
        let priority = match level {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        self.begin_priority(priority, message);
    }

    fn begin_priority(&mut self, priority: u8, message: &[u8]) {
        self.buf.clear();
        put(&mut self.buf, "PRIORITY", &[b'0' + priority.min(7)]);
        put(&mut self.buf, "SYSLOG_IDENTIFIER", b"steward");
        let cut = message.len().min(JOURNALD_MESSAGE_MAX);
        put(&mut self.buf, "MESSAGE", &message[..cut]);
    }

    fn send(&mut self) {
        // Blocks while journald's queue is full: that is the sink waiting, not steward.
        let _ = self.socket.send(&self.buf);
    }
}

fn put(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value);
    } else {
        buf.push(b'=');
        buf.extend_from_slice(value);
    }
    buf.push(b'\n');
}

/// A journal field name: upper-case letters, digits and `_`, not starting with `_` (kept
/// for the journal's own fields) or a digit.
pub fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        out.insert(0, 'F');
    }
    out
}

/// Seconds and microseconds of a time since the epoch (0 before it).
pub fn since_epoch(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_fields_in_both_forms() {
        let mut buf = Vec::new();
        put(&mut buf, "POOL", b"web");
        put(&mut buf, "MESSAGE", b"two\nlines");
        let mut want = b"POOL=web\nMESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(buf, want);
    }

    #[test]
    fn field_names_are_made_valid() {
        assert_eq!(field_name("JOB_ID"), "JOB_ID");
        assert_eq!(field_name("job-id"), "JOB_ID");
        assert_eq!(field_name("_PID"), "F_PID");
        assert_eq!(field_name("9lives"), "F9LIVES");
        assert_eq!(field_name(""), "F");
    }
}
