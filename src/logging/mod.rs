//! Logging: journald with structured fields under systemd, readable text on a terminal.
//!
//! Worker output is read line by line and re-emitted as log events with the fields
//! `POOL`, `INSTANCE`, `WORKER_PID` and `STREAM`. The reading side never waits on the log
//! sink: lines go through a bounded queue to one writer thread, and when that queue is
//! full (journald is slow or stuck) lines are counted and dropped, and the count is
//! logged once the sink catches up. A worker writing to its stdout is therefore never
//! blocked for longer than it takes to read a pipe.

use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod budget;
mod text;

pub use budget::{JobLines, REPORT_EVERY as JOB_LINES_REPORT_EVERY};
pub use text::TextLayer;

/// Longest worker output line kept whole; longer lines are split into pieces this long.
pub const MAX_LINE: usize = 16 * 1024;
/// Worker lines queued for the writer thread before lines are dropped.
const QUEUE: usize = 8192;

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

/// Install the global subscriber. Exactly one output is used, so no line appears twice.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("STEWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry();
    match resolve(format) {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("steward".into())
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    });
                registry.with(layer.with_filter(filter)).init();
            }
            Err(e) => {
                registry.with(text_layer().with_filter(filter)).init();
                tracing::warn!("cannot connect to journald ({e}); logging text to stderr instead");
            }
        },
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr);
            registry.with(layer.with_filter(filter)).init();
        }
        LogFormat::Text | LogFormat::Auto => {
            registry.with(text_layer().with_filter(filter)).init();
        }
    }
}

fn text_layer() -> text::TextLayer {
    text::TextLayer::new(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Who wrote a line.
#[derive(Debug, Clone)]
pub struct Origin {
    pub pool: Arc<str>,
    pub instance: u32,
    pub pid: i32,
    /// The job the worker is running, when it holds exactly one (0 otherwise).
    pub job: Arc<AtomicI64>,
}

struct Line {
    origin: Origin,
    job: i64,
    stream: Stream,
    level: Level,
    text: String,
}

/// The queue in front of the worker-output writer thread.
#[derive(Clone)]
pub struct WorkerLog {
    tx: SyncSender<Line>,
}

impl WorkerLog {
    pub fn start() -> std::io::Result<WorkerLog> {
        let (tx, rx) = mpsc::sync_channel::<Line>(QUEUE);
        std::thread::Builder::new()
            .name("steward-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    emit(&line);
                }
            })?;
        Ok(WorkerLog { tx })
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
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        let mut dropped: u64 = 0;
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
                    self.send(piece, &origin, stream, &mut dropped);
                }
                start = end + 1;
            }
            buf.drain(..start);
            while buf.len() >= MAX_LINE {
                let piece: Vec<u8> = buf.drain(..MAX_LINE).collect();
                self.send(&piece, &origin, stream, &mut dropped);
            }
        }
        if !buf.is_empty() {
            let rest = std::mem::take(&mut buf);
            self.send(&rest, &origin, stream, &mut dropped);
        }
        if dropped > 0 {
            tracing::warn!(POOL = %origin.pool, INSTANCE = origin.instance, WORKER_PID = origin.pid,
                "dropped {dropped} lines of worker output because the log sink was too slow");
        }
    }

    fn send(&self, raw: &[u8], origin: &Origin, stream: Stream, dropped: &mut u64) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (level, raw) = split_priority(raw);
        if *dropped > 0 {
            let note = Line {
                origin: origin.clone(),
                job: 0,
                stream,
                level: Level::WARN,
                text: format!(
                    "[steward: {dropped} lines of this worker's output were dropped because the log sink was too slow]"
                ),
            };
            if self.tx.try_send(note).is_ok() {
                *dropped = 0;
            }
        }
        let line = Line {
            origin: origin.clone(),
            job: origin.job.load(Ordering::Relaxed),
            stream,
            level,
            text: String::from_utf8_lossy(raw).into_owned(),
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => *dropped += 1,
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The end of a stream, kept for the job's history (exec pools).
#[derive(Debug, Default)]
pub struct Capture {
    tail: std::collections::VecDeque<u8>,
}

/// How much of each stream is kept.
pub const CAPTURE: usize = 64 * 1024;

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > CAPTURE {
            &bytes[bytes.len() - CAPTURE..]
        } else {
            bytes
        };
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(CAPTURE);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
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
pub fn split_priority(raw: &[u8]) -> (Level, &[u8]) {
    if raw.len() >= 3 && raw[0] == b'<' && raw[2] == b'>' && (b'0'..=b'7').contains(&raw[1]) {
        let level = match raw[1] - b'0' {
            0..=3 => Level::ERROR,
            4 => Level::WARN,
            5 | 6 => Level::INFO,
            _ => Level::DEBUG,
        };
        (level, &raw[3..])
    } else {
        (Level::INFO, raw)
    }
}

fn emit(l: &Line) {
    let (pool, inst, pid, stream, text, job) = (
        &*l.origin.pool,
        l.origin.instance,
        l.origin.pid,
        l.stream.as_str(),
        l.text.as_str(),
        l.job,
    );
    macro_rules! ev {
        ($lvl:expr) => {
            if job > 0 {
                tracing::event!(target: "worker", $lvl, POOL = %pool, INSTANCE = inst, WORKER_PID = pid, STREAM = %stream, JOB_ID = job, "{}", text)
            } else {
                tracing::event!(target: "worker", $lvl, POOL = %pool, INSTANCE = inst, WORKER_PID = pid, STREAM = %stream, "{}", text)
            }
        };
    }
    match l.level {
        Level::ERROR => ev!(Level::ERROR),
        Level::WARN => ev!(Level::WARN),
        Level::INFO => ev!(Level::INFO),
        Level::DEBUG => ev!(Level::DEBUG),
        Level::TRACE => ev!(Level::TRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_prefixes() {
        assert_eq!(split_priority(b"<3>boom"), (Level::ERROR, &b"boom"[..]));
        assert_eq!(
            split_priority(b"<4>careful"),
            (Level::WARN, &b"careful"[..])
        );
        assert_eq!(split_priority(b"<7>noise"), (Level::DEBUG, &b"noise"[..]));
        assert_eq!(split_priority(b"<9>x"), (Level::INFO, &b"<9>x"[..]));
        assert_eq!(split_priority(b"plain"), (Level::INFO, &b"plain"[..]));
    }
}
