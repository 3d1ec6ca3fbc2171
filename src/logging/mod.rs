//! Logging: journald with structured fields under systemd, readable text on a terminal.
//!
//! Everything logged, steward's own events and its workers' output, goes to one sink
//! thread (see `sink.rs`) that formats and writes it, so no thread that logs ever waits
//! for journald or stderr. Worker output is read line by line and written with the
//! fields `POOL`, `INSTANCE`, `WORKER_PID`, `STREAM` (and `JOB_ID`). When the sink cannot
//! keep up, a worker's pipe is no longer read and the worker waits on its write, as under
//! systemd; lines are dropped, and counted, only once the output has made no progress for
//! `sink::STALLED_AFTER`.

use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod budget;
mod output;
mod record;
mod sink;
mod structured;
mod text;

pub use budget::{JobLines, REPORT_EVERY as JOB_LINES_REPORT_EVERY};
pub use output::Output;
pub use record::{Origin, Stream};
pub use sink::STALLED_AFTER;
pub use structured::{Format as LineFormat, Rules as LineRules, SharedRules};

/// Longest worker output line kept whole; longer lines are split into pieces this long.
pub const MAX_LINE: usize = 16 * 1024;
/// Bytes read from a worker's pipe at a time.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald when stderr is connected to the journal, text otherwise.
    Auto,
    Journald,
    Text,
    Json,
}

/// Which output `Auto` picks in this environment.
pub fn resolve(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for the stream it connected; it only
/// applies if stderr is still that stream.
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (u64::from_str(dev), u64::from_str(ino)) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

static SINK: OnceLock<sink::Sink> = OnceLock::new();
/// Whether steward writes coloured text to a terminal (where workers' colours may stay).
static ON_TERMINAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `strip_ansi`'s default: on, unless steward writes to a terminal.
pub fn strip_ansi_by_default() -> bool {
    !ON_TERMINAL.load(Ordering::Relaxed)
}
static STARTED: OnceLock<()> = OnceLock::new();

/// The sink everything is logged to.
fn sink() -> &'static sink::Sink {
    SINK.get_or_init(sink::Sink::new)
}

/// Start the sink's writer on `output`, unless it runs already.
fn start(output: impl FnOnce() -> Output) {
    STARTED.get_or_init(|| {
        if let Err(e) = sink().start(output()) {
            let _ = writeln!(
                std::io::stderr(),
                "steward: cannot start the log writer: {e}"
            );
        }
    });
}

use std::io::Write as _;

/// Install the global subscriber. Exactly one output is used, so no line appears twice.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("STEWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let mut fallback = None;
    let output = match resolve(format) {
        LogFormat::Journald => match output::Journald::connect() {
            Ok(j) => Output::Journald(j),
            Err(e) => {
                fallback = Some(e);
                Output::text(text_colour())
            }
        },
        LogFormat::Json => Output::json(),
        LogFormat::Text | LogFormat::Auto => {
            ON_TERMINAL.store(std::io::stderr().is_terminal(), Ordering::Relaxed);
            Output::text(text_colour())
        }
    };
    start(|| output);
    tracing_subscriber::registry()
        .with(record::ToSink { sink: sink() }.with_filter(filter))
        .init();
    if let Some(e) = fallback {
        tracing::warn!("cannot connect to journald ({e}); logging text to stderr instead");
    }
}

fn text_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Wait (at most `limit`) until everything logged so far is written: before exiting.
pub fn flush(limit: Duration) {
    if STARTED.get().is_some() {
        sink().flush(limit);
    }
}

/// Log records dropped so far: (steward's own, worker lines).
pub fn dropped() -> (u64, u64) {
    SINK.get().map(|s| s.dropped()).unwrap_or((0, 0))
}

/// Turns each event into a text line, as the sink would, and hands it to `write`: for
/// the micro-benchmark of a job line (`benches/hot.rs`).
pub struct TextLayer {
    ansi: bool,
    write: fn(&str),
}

impl TextLayer {
    pub fn with_writer(ansi: bool, write: fn(&str)) -> TextLayer {
        TextLayer { ansi, write }
    }
}

impl<S: tracing::Subscriber> Layer<S> for TextLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        thread_local! {
            static CLOCK: std::cell::RefCell<text::Clock> = std::cell::RefCell::default();
        }
        let e = record::capture(event);
        let mut line = String::new();
        CLOCK.with(|c| text::entry_line(&mut line, &mut c.borrow_mut(), self.ansi, &e));
        (self.write)(&line);
    }
}

/// Reads workers' output into the sink.
#[derive(Clone)]
pub struct WorkerLog {
    sink: &'static sink::Sink,
}

impl WorkerLog {
    pub fn start() -> std::io::Result<WorkerLog> {
        // Text to stderr if `init` chose nothing (tests of the library).
        start(|| Output::text(false));
        Ok(WorkerLog { sink: sink() })
    }

    /// Read `fd` (one end of a worker's stdout or stderr pipe) until it closes, logging
    /// each line. Runs as a task on the current runtime.
    pub fn forward(&self, fd: OwnedFd, origin: Origin, stream: Stream) {
        self.forward_with(fd, origin, stream, None, None);
    }

    /// As [`forward`](Self::forward), also keeping the stream's tail in `capture` and
    /// calling `on_close` once the stream has closed and every line was handled.
    pub fn forward_with(
        &self,
        fd: OwnedFd,
        origin: Origin,
        stream: Stream,
        capture: Option<Arc<Mutex<Capture>>>,
        on_close: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let log = self.clone();
        tokio::spawn(async move {
            let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(POOL = %origin.pool, INSTANCE = origin.instance, "cannot read worker {}: {e}", stream.as_str());
                    return;
                }
            };
            log.pump(pipe, origin, stream, capture.as_deref()).await;
            if let Some(f) = on_close {
                f();
            }
        });
    }

    async fn pump(
        &self,
        mut pipe: tokio::net::unix::pipe::Receiver,
        origin: Origin,
        stream: Stream,
        capture: Option<&Mutex<Capture>>,
    ) {
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut lines = Lines::new(origin, stream);
        loop {
            let n = match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(c) = capture
                && let Ok(mut c) = c.lock()
            {
                c.push(&chunk[..n]);
            }
            let mut start = 0;
            while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
                let end = start + pos;
                for piece in buf[start..end].chunks(MAX_LINE) {
                    lines.add(piece);
                }
                start = end + 1;
            }
            buf.drain(..start);
            while buf.len() >= MAX_LINE {
                let piece: Vec<u8> = buf.drain(..MAX_LINE).collect();
                lines.add(&piece);
            }
            // Nothing more is read from the pipe until these lines have room.
            lines.send(self.sink).await;
        }
        if !buf.is_empty() {
            lines.add(&buf);
        }
        lines.send(self.sink).await;
        if lines.dropped > 0 {
            tracing::warn!(POOL = %lines.origin.pool, INSTANCE = lines.origin.instance, WORKER_PID = lines.origin.pid,
                "dropped {} lines of worker output because the log output made no progress for {}s",
                lines.dropped, STALLED_AFTER.as_secs());
        }
    }
}

/// The lines of one read, on their way to the sink.
struct Lines {
    origin: Origin,
    stream: Stream,
    batch: Vec<record::WorkerLine>,
    room: u32,
    /// Lines dropped since the last that reached the sink.
    dropped: u64,
}

impl Lines {
    fn new(origin: Origin, stream: Stream) -> Lines {
        Lines {
            origin,
            stream,
            batch: Vec::new(),
            room: 0,
            dropped: 0,
        }
    }

    fn line(&self, priority: u8, text: String) -> record::WorkerLine {
        record::WorkerLine {
            time: SystemTime::now(),
            priority,
            pool: self.origin.pool.clone(),
            instance: self.origin.instance,
            pid: self.origin.pid,
            stream: self.stream,
            job: self.origin.job.load(Ordering::Relaxed),
            text,
            fields: Vec::new(),
            reserve: false,
        }
    }

    fn add(&mut self, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (priority, raw) = split_priority(raw);
        let read = structured::read(raw, priority, self.origin.rules.get());
        let mut line = self.line(read.priority, read.message);
        line.fields = read.fields;
        self.room = self.room.saturating_add(sink::cost(line.size()));
        self.batch.push(line);
    }

    /// Hand the batch to the sink once it has room, or drop it if the output is stalled.
    async fn send(&mut self, sink: &sink::Sink) {
        if self.batch.is_empty() {
            return;
        }
        let note = (self.dropped > 0).then(|| {
            self.line(
                4,
                format!(
                    "[steward: {} lines of this worker's output were dropped because the log output made no progress for {}s]",
                    self.dropped,
                    STALLED_AFTER.as_secs()
                ),
            )
        });
        let room = self
            .room
            .saturating_add(note.as_ref().map_or(0, |n| sink::cost(n.text.len())));
        let batch = std::mem::take(&mut self.batch);
        self.room = 0;
        if sink.room_for(room).await {
            self.dropped = 0;
            sink.workers(note.into_iter().chain(batch));
        } else {
            // The output is stalled: error lines (and worse) still go, from the reserve.
            let mut kept = Vec::new();
            let mut dropped = 0u64;
            for mut line in batch {
                if line.priority <= structured::ERR && sink.reserve(sink::cost(line.size())) {
                    line.reserve = true;
                    kept.push(line);
                } else {
                    dropped += 1;
                }
            }
            self.dropped += dropped;
            sink.dropped_worker_lines(dropped);
            sink.workers(kept);
        }
    }
}

/// The end of a stream, kept for the job's history (exec pools) or for the story of a
/// worker's exit.
#[derive(Debug, Default)]
pub struct Capture {
    tail: std::collections::VecDeque<u8>,
    /// The most kept; 0 = [`CAPTURE`].
    limit: usize,
}

/// How much of each stream is kept.
pub const CAPTURE: usize = 64 * 1024;

impl Capture {
    /// A capture that keeps at most the last `limit` bytes.
    pub fn with_limit(limit: usize) -> Capture {
        Capture {
            tail: std::collections::VecDeque::new(),
            limit,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let cap = if self.limit == 0 { CAPTURE } else { self.limit };
        let bytes = if bytes.len() > cap {
            &bytes[bytes.len() - cap..]
        } else {
            bytes
        };
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(cap);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
    }

    /// The last `n` whole lines kept (a first line cut by the limit is left out),
    /// without their line ends.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let Some(text) = self.text() else {
            return Vec::new();
        };
        let cut = self.tail.len() >= if self.limit == 0 { CAPTURE } else { self.limit };
        let mut lines: Vec<&str> = text.lines().collect();
        if cut && lines.len() > 1 {
            lines.remove(0);
        }
        let skip = lines.len().saturating_sub(n);
        lines[skip..].iter().map(|l| l.to_string()).collect()
    }

    /// The kept text (lossy UTF-8), if anything was written.
    pub fn text(&self) -> Option<String> {
        if self.tail.is_empty() {
            return None;
        }
        let (a, b) = self.tail.as_slices();
        let mut v = Vec::with_capacity(self.tail.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        Some(String::from_utf8_lossy(&v).into_owned())
    }

    /// The last non-empty line.
    pub fn last_line(&self) -> Option<String> {
        self.text()?
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
    }
}

/// A line starting with `<N>` (N = 0..7, as in sd-daemon(3)) carries its syslog priority.
pub fn split_priority(raw: &[u8]) -> (u8, &[u8]) {
    if raw.len() >= 3 && raw[0] == b'<' && raw[2] == b'>' && (b'0'..=b'7').contains(&raw[1]) {
        (raw[1] - b'0', &raw[3..])
    } else {
        (structured::INFO, raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_prefixes() {
        assert_eq!(split_priority(b"<3>boom"), (3, &b"boom"[..]));
        assert_eq!(split_priority(b"<4>careful"), (4, &b"careful"[..]));
        assert_eq!(split_priority(b"<5>note"), (5, &b"note"[..]));
        assert_eq!(split_priority(b"<7>noise"), (7, &b"noise"[..]));
        assert_eq!(split_priority(b"<9>x"), (6, &b"<9>x"[..]));
        assert_eq!(split_priority(b"plain"), (6, &b"plain"[..]));
    }
}
