//! The flusher thread: makes committed transactions durable while the writer goes on.
//!
//! With `synchronous = "full"` the writer runs SQLite at `synchronous = NORMAL` (the
//! write-ahead log is synced at checkpoints, the database after them) and this thread
//! calls `fdatasync` on the log after every commit. The guarantee is that of SQLite's own
//! `FULL`: an answer that depends on a change (a submit, a cancel, a finished job) is
//! given only after the log holding that change is on disk. What changes is that the
//! writer does not wait for the disk: it starts the next transaction while the previous
//! one is flushed, and several commits share one flush.
//!
//! Leases are the one thing handed out before the flush (see `Writer::apply_batch`):
//! a job line reaches a worker as soon as its lease is committed. A power cut before the
//! flush loses the lease along with the worker that held it, so the job runs again, as
//! it would after any crash.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::writer::{Res, deliver, fail_op};
use super::{JournalError, Op, Stats};

/// One committed transaction waiting for its flush.
pub(super) struct Committed {
    /// When the transaction began, for the commit latency metric.
    pub began: Instant,
    /// Answers to give once it is durable.
    pub answers: Vec<(Op, Res)>,
}

pub(super) struct Syncer {
    wal: PathBuf,
    /// The open log and its inode: SQLite keeps the same file while the writer's
    /// connection is open, but a different inode is reopened rather than trusted.
    file: Option<(File, u64)>,
    stats: Arc<Mutex<Stats>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Syncer {
    pub fn new(
        wal: PathBuf,
        stats: Arc<Mutex<Stats>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Syncer {
        Syncer {
            wal,
            file: None,
            stats,
            metrics,
        }
    }

    /// Open the log now, so that a journal that cannot be flushed this way is found before
    /// the writer relies on it.
    pub fn open(&mut self) -> Result<(), String> {
        self.flush()
    }

    pub fn run(mut self, rx: Receiver<Committed>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            let t0 = Instant::now();
            let flushed = self.flush();
            let took = t0.elapsed();
            if took > Duration::from_secs(1) {
                tracing::warn!(
                    "flushing the job journal to disk took {:.1}s; is the disk slow?",
                    took.as_secs_f64()
                );
            }
            match flushed {
                Ok(()) => {
                    for c in group {
                        self.metrics.commit(c.began.elapsed());
                        for (op, res) in c.answers {
                            deliver(op, res);
                        }
                    }
                }
                Err(detail) => {
                    let err = JournalError::Io {
                        path: self.wal.clone(),
                        detail: format!(
                            "written but not flushed to disk ({detail}); the change may be lost if the machine goes down"
                        ),
                    };
                    tracing::error!("{err}");
                    if let Ok(mut s) = self.stats.lock() {
                        s.error = Some(err.to_string());
                    }
                    for c in group {
                        for (op, res) in c.answers {
                            match op {
                                // The state change itself is in the journal; the job
                                // moves on, and the error above tells the operator.
                                Op::Finish { .. } => deliver(op, res),
                                other => fail_op(other, err.clone()),
                            }
                        }
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        let ino = std::fs::metadata(&self.wal)
            .map_err(|e| format!("cannot stat {}: {e}", self.wal.display()))?
            .ino();
        let file = match self.file.take() {
            Some((f, i)) if i == ino => f,
            _ => File::open(&self.wal)
                .map_err(|e| format!("cannot open {}: {e}", self.wal.display()))?,
        };
        let synced = file.sync_data().map_err(|e| format!("fdatasync: {e}"));
        self.file = Some((file, ino));
        synced
    }
}
