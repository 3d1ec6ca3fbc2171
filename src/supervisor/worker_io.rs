//! The two tasks behind each protocol worker's socket: one reads lines and hands them to
//! the loop as events, one writes the lines the loop queues. The loop never waits on a
//! worker's socket.
//!
//! The loop judges a worker silent (hung, or too slow to say `ready`) only after looking
//! at what has arrived: [`Conn::last_read`] is when the reader task last took bytes from
//! the worker (a line may still be on its way to the loop), and
//! [`Conn::unread_in_socket`] tells whether bytes are waiting that nobody read yet (the
//! daemon was paused, or its reader has not run since).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::{Event, SlotId};
use crate::protocol::{self, MAX_LINE};

/// Bytes of queued lines gathered into one write, at most (one line may exceed it).
const WRITE_BATCH: usize = 64 * 1024;

/// Our side of a protocol worker's socket, as the loop holds it.
pub struct Conn {
    /// Lines to send to the worker.
    lines: mpsc::UnboundedSender<String>,
    /// When the reader task last got bytes from the worker (see [`stamp`]); 0: never.
    last_read: Arc<AtomicU64>,
    /// A duplicate of the socket, only to ask whether unread bytes are waiting in it.
    probe: Option<OwnedFd>,
}

impl Conn {
    pub fn send(&self, line: String) {
        let _ = self.lines.send(line);
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
        }
    });
    let stamped = last_read.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut line: Vec<u8> = Vec::new();
        let mut oversized = false;
        loop {
            if read_half.readable().await.is_err() {
                break;
            }
            // Stamped before the read, so that whoever finds the socket empty (see
            // `Conn`) and then looks at the stamp sees this read's.
            stamped.store(stamp(Instant::now()), Ordering::SeqCst);
            let n = match read_half.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
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
                    oversized = false;
                    line.clear();
                    if events.send(Event::FromWorker { slot, pid, msg }).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Conn {
        lines: tx,
        last_read,
        probe,
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
