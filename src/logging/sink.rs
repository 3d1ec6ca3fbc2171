//! The log sink: one thread that writes every record, steward's own and its workers'.
//!
//! Nothing that logs waits for the output. Records are handed over as owned data and
//! formatted here, in batches, so that a slow or stuck output (journald busy, stderr a
//! pipe nobody reads) holds up only this thread. Two queues feed it:
//!
//! - steward's own records, at most [`OWN_QUEUE`]; when full, new ones are dropped and
//!   counted (the supervision loop never waits). They are written first, so a worker
//!   writing at full speed cannot crowd them out.
//! - worker output, at most [`WORKER_QUEUE_BYTES`]. A worker's reader must get room
//!   before it queues a line; without room it stops reading the worker's pipe, so the
//!   worker blocks on its write, as it would under systemd. Lines are dropped only when
//!   the output has made no progress for [`STALLED_AFTER`]; the reader then counts them
//!   and says how many were dropped once the output moves again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::output::Output;
use super::record::{Entry, WorkerLine};

/// steward's own records queued at most.
pub const OWN_QUEUE: usize = 4096;
/// Bytes of worker output queued at most.
pub const WORKER_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Worker lines are dropped instead of waited on once the output has made no progress
/// for this long.
pub const STALLED_AFTER: Duration = Duration::from_secs(5);
/// Bytes of worker lines at error priority or worse that may wait beyond the room, so
/// that they are not dropped while the output is stalled.
pub const RESERVE_BYTES: usize = 1024 * 1024;
/// steward's own error records queued beyond [`OWN_QUEUE`].
pub const OWN_ERROR_RESERVE: usize = 1024;
/// Bytes of worker output taken into one batch.
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Default)]
struct Queues {
    own: VecDeque<Entry>,
    workers: VecDeque<WorkerLine>,
    /// Records taken by the writer and not written yet.
    writing: usize,
}

pub struct Sink {
    queues: Mutex<Queues>,
    /// Wakes the writer when records arrive, and flushers when the queues are empty.
    changed: Condvar,
    /// Room for worker output, in bytes.
    room: Semaphore,
    /// Room for error lines once the output is stalled.
    reserve: Semaphore,
    /// When the writer last finished a batch, or last found nothing to write (ms since
    /// `started`).
    progress_ms: AtomicU64,
    started: Instant,
    dropped_own: AtomicU64,
    dropped_worker: AtomicU64,
}

/// What a worker line costs of the room: its text and the rest of the record.
pub fn cost(text_len: usize) -> u32 {
    u32::try_from(text_len.saturating_add(64)).unwrap_or(u32::MAX)
}

impl Sink {
    pub fn new() -> Sink {
        Sink {
            queues: Mutex::new(Queues::default()),
            changed: Condvar::new(),
            room: Semaphore::new(WORKER_QUEUE_BYTES),
            reserve: Semaphore::new(RESERVE_BYTES),
            progress_ms: AtomicU64::new(0),
            started: Instant::now(),
            dropped_own: AtomicU64::new(0),
            dropped_worker: AtomicU64::new(0),
        }
    }

    /// Start the writer thread on `output`.
    pub fn start(&'static self, mut output: Output) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("steward-log".into())
            .spawn(move || self.write_loop(&mut output))
            .map(|_| ())
    }

    /// Queue one of steward's own records; never waits.
    pub fn own(&self, entry: Entry) {
        let Ok(mut q) = self.queues.lock() else {
            return;
        };
        let limit = if entry.level == tracing::Level::ERROR {
            OWN_QUEUE + OWN_ERROR_RESERVE
        } else {
            OWN_QUEUE
        };
        if q.own.len() >= limit {
            self.dropped_own.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.own.push_back(entry);
        drop(q);
        self.changed.notify_all();
    }

    /// Wait for room for `bytes` of worker output. `false`: the output has made no
    /// progress for [`STALLED_AFTER`] and the lines are to be dropped instead.
    pub async fn room_for(&self, bytes: u32) -> bool {
        let bytes = bytes.min(WORKER_QUEUE_BYTES as u32);
        loop {
            match tokio::time::timeout(Duration::from_millis(200), self.room.acquire_many(bytes))
                .await
            {
                Ok(Ok(permit)) => {
                    // Given back by the writer once written.
                    permit.forget();
                    return true;
                }
                Ok(Err(_)) => return false,
                Err(_) if self.stalled() => return false,
                Err(_) => {}
            }
        }
    }

    /// Take `bytes` of the reserve for error lines, without waiting.
    pub fn reserve(&self, bytes: u32) -> bool {
        match self.reserve.try_acquire_many(bytes) {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Queue worker lines whose room [`room_for`](Self::room_for) or
    /// [`reserve`](Self::reserve) granted.
    pub fn workers(&self, lines: impl IntoIterator<Item = WorkerLine>) {
        let Ok(mut q) = self.queues.lock() else {
            return;
        };
        q.workers.extend(lines);
        drop(q);
        self.changed.notify_all();
    }

    /// Worker lines that were dropped (the reader counts them per worker, too).
    pub fn dropped_worker_lines(&self, n: u64) {
        self.dropped_worker.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the output has made no progress for [`STALLED_AFTER`] with work waiting.
    pub fn stalled(&self) -> bool {
        let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) > STALLED_AFTER
    }

    /// Records dropped so far: (steward's own, worker lines).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_own.load(Ordering::Relaxed),
            self.dropped_worker.load(Ordering::Relaxed),
        )
    }

    /// Wait until everything queued so far is written, for at most `limit`.
    pub fn flush(&self, limit: Duration) {
        let end = Instant::now() + limit;
        let Ok(mut q) = self.queues.lock() else {
            return;
        };
        while !(q.own.is_empty() && q.workers.is_empty() && q.writing == 0) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.changed.wait_timeout(q, left) {
                Ok((guard, _)) => q = guard,
                Err(_) => return,
            }
        }
    }

    fn mark_progress(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    fn write_loop(&self, output: &mut Output) {
        let mut reported_own = 0u64;
        loop {
            let (own, workers) = {
                let Ok(mut q) = self.queues.lock() else {
                    return;
                };
                while q.own.is_empty() && q.workers.is_empty() {
                    q.writing = 0;
                    self.mark_progress();
                    self.changed.notify_all();
                    q = match self.changed.wait(q) {
                        Ok(q) => q,
                        Err(_) => return,
                    };
                }
                let own: Vec<Entry> = q.own.drain(..).collect();
                let mut workers = Vec::new();
                let mut bytes = 0;
                while bytes < BATCH_BYTES
                    && let Some(w) = q.workers.pop_front()
                {
                    bytes += w.size();
                    workers.push(w);
                }
                q.writing = own.len() + workers.len();
                (own, workers)
            };
            // Progress is counted from taking a batch: a writer that was idle for an
            // hour and then blocks on a write is stalled only STALLED_AFTER later.
            self.mark_progress();
            let dropped_own = self.dropped_own.load(Ordering::Relaxed);
            if dropped_own > reported_own {
                output.own(&Entry::note(format!(
                    "{} of steward's own log lines were dropped because the log output could not keep up (journald or stderr blocked); see the lines around this one",
                    dropped_own - reported_own
                )));
                reported_own = dropped_own;
            }
            for e in &own {
                output.own(e);
            }
            let (mut room, mut reserve) = (0usize, 0usize);
            for w in &workers {
                output.worker(w);
                if w.reserve {
                    reserve += cost(w.size()) as usize;
                } else {
                    room += cost(w.size()) as usize;
                }
            }
            output.flush();
            self.mark_progress();
            self.room.add_permits(room);
            self.reserve.add_permits(reserve);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_costs_its_text_and_a_little() {
        assert_eq!(cost(0), 64);
        assert_eq!(cost(100), 164);
        assert!(cost(usize::MAX - 10) == u32::MAX);
    }
}
