//! The two tasks behind each protocol worker's socket: one reads lines and hands them to
//! the loop as events, one writes the lines the loop queues. The loop never waits on a
//! worker's socket, and no worker can make it hold more than a bounded amount:
//!
//! - the reader gives way to the runtime after every [`YIELD_EVERY`] bytes, so a
//!   socket that never runs dry cannot hold a runtime thread;
//! - heartbeats are not handed over at all: the read itself renews the worker's leases;
//! - every other line needs room in the worker's budget ([`IN_FLIGHT`] bytes) until the
//!   loop has handled it; without room the reader stops reading, so a worker that writes
//!   faster than the loop can follow waits on its own writes;
//! - lines that are not valid protocol messages reach the loop at most
//!   [`INVALID_PER_SECOND`] a second; the rest are counted and reported every
//!   [`REPORT_EVERY`];
//! - error replies to a worker that does not read its socket are not queued once
//!   [`REPLY_BACKLOG`] bytes wait unsent.
//!
//! The loop judges a worker silent (hung, or too slow to say `ready`) only after looking
//! at what has arrived: [`Conn::last_read`] is when the reader task last took bytes from
//! the worker (a line may still be on its way to the loop), and
//! [`Conn::unread_in_socket`] tells whether bytes are waiting that nobody read yet (the
//! daemon was paused, or its reader has not run since).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::policy::RateLimit;
use super::{Event, SlotId};
use crate::protocol::{self, FromWorker, MAX_LINE};

/// Bytes the reader task handles before it lets the runtime's other tasks and its
/// timers run (it does at once when the socket runs dry).
const YIELD_EVERY: usize = 64 * 1024;
/// Bytes of queued lines gathered into one write, at most (one line may exceed it).
const WRITE_BATCH: usize = 64 * 1024;
/// What one worker's lines may hold of the loop's queue until handled: twice the longest
/// line. Each line counts its length and [`LINE_COST`].
pub const IN_FLIGHT: usize = 2 * MAX_LINE;
/// What a line counts beyond its text (its event), so that many tiny lines are bounded
/// too (at most 8,192 in flight).
const LINE_COST: usize = 4096;
/// Invalid lines of one worker handed to the loop (answered and logged) per second.
pub const INVALID_PER_SECOND: u32 = 10;
/// How often the invalid lines beyond that are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Error replies wait unsent for a worker up to this many bytes; beyond, none are queued.
pub const REPLY_BACKLOG: usize = 64 * 1024;

/// A line's share of its worker's budget, given back when the loop is done with it.
pub type Budget = OwnedSemaphorePermit;

/// Our side of a protocol worker's socket, as the loop holds it.
pub struct Conn {
    /// Lines to send to the worker.
    lines: mpsc::UnboundedSender<String>,
    /// Bytes queued for the worker and not yet written to its socket.
    unsent: Arc<AtomicUsize>,
    /// When the reader task last got bytes from the worker (see [`stamp`]); 0: never.
    last_read: Arc<AtomicU64>,
    /// The stamp of the last read whose every line the reader has dealt with (handed to
    /// the loop, or a heartbeat).
    settled: Arc<AtomicU64>,
    /// A duplicate of the socket, only to ask whether unread bytes are waiting in it.
    probe: Option<OwnedFd>,
    /// The worker's budget: while a line handed to the loop is not handled, its share
    /// is taken.
    budget: Arc<Semaphore>,
}

impl Conn {
    /// Queue a line for the worker (jobs, cancels, drains: bounded by what it holds).
    pub fn send(&self, line: String) {
        self.unsent.fetch_add(line.len(), Ordering::Relaxed);
        let _ = self.lines.send(line);
    }

    /// Queue an error reply, unless [`REPLY_BACKLOG`] bytes already wait unsent (the
    /// worker is not reading): `false` then, and nothing is queued.
    pub fn reply(&self, line: String) -> bool {
        if self.unsent.load(Ordering::Relaxed) > REPLY_BACKLOG {
            return false;
        }
        self.send(line);
        true
    }

    /// When the reader task last took bytes from the worker (whole lines or not). Ask
    /// [`unread_in_socket`](Self::unread_in_socket) first: the reader stamps before it
    /// reads, so once the socket is found empty this includes the read that emptied it.
    pub fn last_read(&self) -> Option<Instant> {
        from_stamp(self.last_read.load(Ordering::SeqCst))
    }

    /// Whether bytes from the worker are waiting in the socket, unread.
    pub fn unread_in_socket(&self) -> bool {
        self.probe.as_ref().is_some_and(crate::process::readable)
    }

    /// Whether the worker sent something the loop has not handled yet. Asked in the
    /// order the reader works, so that nothing slips between two looks: bytes still in
    /// the socket (the reader stamps before it reads), then a read the reader has not
    /// dealt with yet (it settles a read after handing over its lines), then lines handed
    /// over and not handled (each holds its share of the budget until then).
    pub fn input_pending(&self) -> bool {
        self.unread_in_socket()
            || self.last_read.load(Ordering::SeqCst) > self.settled.load(Ordering::SeqCst)
            || self.budget.available_permits() < IN_FLIGHT
    }
}

/// Instants as milliseconds since the first call (plus one, so that 0 means "never"),
/// to share them through an atomic.
fn stamp(t: Instant) -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(base).as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

fn from_stamp(v: u64) -> Option<Instant> {
    let base = *BASE.get_or_init(Instant::now);
    let ms = v.checked_sub(1)?;
    base.checked_add(std::time::Duration::from_millis(ms))
}

static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Start the tasks on `stream` (with `probe` a duplicate of it, if one could be made).
pub fn start(
    stream: UnixStream,
    probe: Option<OwnedFd>,
    slot: SlotId,
    pid: i32,
    events: mpsc::UnboundedSender<Event>,
) -> Conn {
    let (read_half, mut write_half) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let last_read = Arc::new(AtomicU64::new(0));
    let settled = Arc::new(AtomicU64::new(0));
    let unsent = Arc::new(AtomicUsize::new(0));
    let written = unsent.clone();
    tokio::spawn(async move {
        while let Some(mut out) = rx.recv().await {
            // Lines queued together (the jobs of one claim) go out in one write.
            while out.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(line) => out.push_str(&line),
                    Err(_) => break,
                }
            }
            if write_half.write_all(out.as_bytes()).await.is_err() {
                break;
            }
            written.fetch_sub(out.len(), Ordering::Relaxed);
        }
    });
    let budget = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut reader = Reader {
        slot,
        pid,
        events,
        budget: budget.clone(),
        invalid: RateLimit::new(INVALID_PER_SECOND, Instant::now()),
        next_report: Instant::now() + REPORT_EVERY,
    };
    let stamped = last_read.clone();
    let dealt_with = settled.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut line: Vec<u8> = Vec::new();
        let mut oversized = false;
        let mut since_yield = 0usize;
        loop {
            if read_half.readable().await.is_err() {
                break;
            }
            // Stamped before the read, so that whoever finds the socket empty (see
            // `Conn`) and then looks at the stamp sees this read's.
            let this_read = stamp(Instant::now());
            stamped.store(this_read, Ordering::SeqCst);
            let n = match read_half.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    dealt_with.store(this_read, Ordering::SeqCst);
                    since_yield = 0;
                    continue;
                }
                Err(_) => break,
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (chunk, newline) = match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => (&rest[..i], true),
                    None => (rest, false),
                };
                if !oversized {
                    if line.len() + chunk.len() > MAX_LINE {
                        oversized = true;
                        line.clear();
                    } else {
                        line.extend_from_slice(chunk);
                    }
                }
                rest = &rest[chunk.len() + usize::from(newline)..];
                if newline {
                    let msg = if oversized {
                        Err(format!(
                            "line longer than {} MiB ignored",
                            MAX_LINE / (1024 * 1024)
                        ))
                    } else {
                        protocol::parse(&line)
                    };
                    let len = line.len();
                    oversized = false;
                    line.clear();
                    if !reader.hand_over(msg, len).await {
                        return;
                    }
                }
            }
            // A partial line left over is not silence: it waits for its end.
            if line.is_empty() {
                dealt_with.store(this_read, Ordering::SeqCst);
            }
            // Waiting for readiness does not count against the task's share of the
            // runtime, so a socket that never runs dry would hold this thread for good:
            // give way after every YIELD_EVERY bytes.
            since_yield += n;
            if since_yield >= YIELD_EVERY {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
        reader.report();
    });
    Conn {
        lines: tx,
        unsent,
        last_read,
        settled,
        probe,
        budget,
    }
}

/// What the reader task knows beyond the bytes it reads.
struct Reader {
    slot: SlotId,
    pid: i32,
    events: mpsc::UnboundedSender<Event>,
    budget: Arc<Semaphore>,
    invalid: RateLimit,
    next_report: Instant,
}

impl Reader {
    /// Hand one line to the loop, once it has room; `false` when the loop is gone.
    async fn hand_over(&mut self, msg: Result<FromWorker, String>, len: usize) -> bool {
        let now = Instant::now();
        if now >= self.next_report {
            self.report();
        }
        match &msg {
            // Its read has renewed the leases already: nothing for the loop to do.
            Ok(FromWorker::Heartbeat) => return true,
            Err(_) if !self.invalid.allow(now) => return true,
            _ => {}
        }
        let cost = u32::try_from((len + LINE_COST).min(IN_FLIGHT)).unwrap_or(u32::MAX);
        let Ok(budget) = self.budget.clone().acquire_many_owned(cost).await else {
            return false;
        };
        let ev = Event::FromWorker {
            slot: self.slot,
            pid: self.pid,
            msg,
            budget,
        };
        self.events.send(ev).is_ok()
    }

    /// Say how many invalid lines were left out since the last report, if any.
    fn report(&mut self) {
        self.next_report = Instant::now() + REPORT_EVERY;
        let ignored = self.invalid.take_suppressed();
        if ignored > 0 {
            let _ = self.events.send(Event::InvalidLinesIgnored {
                slot: self.slot,
                pid: self.pid,
                ignored,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_zero_is_never() {
        assert_eq!(from_stamp(0), None);
        let t = Instant::now() + std::time::Duration::from_millis(1500);
        let back = from_stamp(stamp(t)).unwrap();
        assert!(back <= t && t.duration_since(back) < std::time::Duration::from_millis(2));
    }
}
