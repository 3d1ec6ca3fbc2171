//! Reading the jobs that have not finished out of a journal that no daemon holds, so
//! that `steward migrate-journal` can move them to another journal.
//!
//! The journal is opened read-only and never changed. It is locked as the daemon locks
//! it, so no daemon can start on it (and add or take jobs) while its jobs are read. A job
//! that was `running` there was interrupted (the daemon is gone); it leaves as a start of
//! steward would have put it back: queued at once, its attempt closed as interrupted, or
//! failed when the interruptions used up its chances.

use std::path::Path;

use nix::fcntl::Flock;
use rusqlite::{Connection, OptionalExtension, params};

use super::{lock_db, schema};
use crate::jobs::{self, Counters, Next, Outcome};
use crate::journal::MovedJob;
use crate::model::{AttemptRecord, JobState};
use crate::time::now_ms;

/// An open source journal.
pub struct Export {
    conn: Connection,
    _lock: Flock<std::fs::File>,
    /// A name for this journal that its copies share: the id of the first daemon run
    /// recorded in it (a journal older than run records: its path).
    pub identity: String,
    /// The last id read so far.
    after: i64,
}

/// The most jobs one [`Export::next_chunk`] returns.
pub const CHUNK: usize = 1_000;

impl Export {
    /// Open the journal at `path`: refused while a daemon uses it, or when it is not a
    /// journal this steward can read.
    pub fn open(path: &Path) -> Result<Export, String> {
        if !path.is_file() {
            return Err(format!(
                "there is no journal at {} (give the SQLite journal with --from, or check [daemon] state_dir)",
                path.display()
            ));
        }
        let lock = lock_db(path).map_err(|e| {
            format!(
                "{e}; stop it first (systemctl stop steward) so that no job is added or taken while they move"
            )
        })?;
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let bad = |e: rusqlite::Error| format!("cannot read {}: {e}", path.display());
        conn.execute_batch("PRAGMA busy_timeout = 10000;")
            .map_err(bad)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(bad)?;
        if version == 0 {
            return Err(format!("{} is not a steward journal", path.display()));
        }
        if version < schema::VERSION {
            return Err(format!(
                "{} has an older schema ({version}; this steward writes {}): start this steward on it once (it upgrades the journal), stop it, then move its jobs",
                path.display(),
                schema::VERSION
            ));
        }
        if version > schema::VERSION {
            return Err(format!(
                "{} was written by a newer steward (schema {version}, this one knows {}): use that steward to move its jobs",
                path.display(),
                schema::VERSION
            ));
        }
        let first_run: Option<String> = conn
            .query_row(
                "SELECT run_id FROM runs ORDER BY started_at, run_id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(bad)?;
        let identity = match first_run {
            Some(run) => format!("sqlite run {run}"),
            None => format!(
                "sqlite {}",
                std::fs::canonicalize(path)
                    .unwrap_or_else(|_| path.to_path_buf())
                    .display()
            ),
        };
        Ok(Export {
            conn,
            _lock: lock,
            identity,
            after: 0,
        })
    }

    /// Jobs that ended there (succeeded, failed, cancelled), which stay where they are.
    pub fn finished(&self) -> Result<u64, String> {
        self.conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0).unsigned_abs())
            .map_err(|e| format!("cannot count the finished jobs: {e}"))
    }

    /// The next jobs that have not finished, in id order, up to [`CHUNK`]; empty at the
    /// end.
    pub fn next_chunk(&mut self) -> Result<Vec<MovedJob>, String> {
        let err = |e: rusqlite::Error| format!("cannot read the jobs: {e}");
        let now = now_ms();
        let mut jobs = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT j.id, j.queue, j.state, j.priority, j.run_at, j.created_at, j.attempts,
                            j.tries, j.crashes, j.interruptions, j.max_attempts, j.timeout_ms,
                            j.unique_key, j.error, j.run_id, d.payload
                     FROM jobs j JOIN job_data d ON d.job_id = j.id
                     WHERE j.id > ?1 AND j.state IN ('queued', 'running')
                     ORDER BY j.id LIMIT ?2",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map(params![self.after, CHUNK as i64], |r| {
                    Ok((
                        MovedJob {
                            source_id: r.get(0)?,
                            queue: r.get(1)?,
                            state: JobState::Queued,
                            priority: r.get(3)?,
                            run_at_ms: r.get(4)?,
                            created_ms: r.get(5)?,
                            attempts: r.get(6)?,
                            tries: r.get(7)?,
                            crashes: r.get(8)?,
                            interruptions: r.get(9)?,
                            max_attempts: r.get(10)?,
                            timeout_ms: r.get(11)?,
                            key: r.get(12)?,
                            error: r.get(13)?,
                            payload: r.get(15)?,
                            history: Vec::new(),
                        },
                        r.get::<_, String>(2)? == "running",
                        r.get::<_, Option<String>>(14)?,
                    ))
                })
                .map_err(err)?;
            for row in rows {
                jobs.push(row.map_err(err)?);
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        for (mut job, running, run) in jobs {
            self.after = job.source_id;
            job.history = self.history(job.source_id)?;
            if running {
                interrupted(&mut job, run.as_deref(), now);
            }
            out.push(job);
        }
        Ok(out)
    }

    fn history(&self, id: i64) -> Result<Vec<AttemptRecord>, String> {
        super::reader::attempts(&self.conn, id)
            .map_err(|e| format!("cannot read the attempts of job {id}: {e}"))
    }
}

/// A job whose daemon is gone while it ran: what a start of steward would make of it.
fn interrupted(job: &mut MovedJob, run: Option<&str>, now: i64) {
    let reason = format!(
        "steward stopped while this attempt ran (daemon run {}); moved to another journal",
        run.unwrap_or("?")
    );
    let counters = Counters {
        tries: job.tries,
        crashes: job.crashes,
        interruptions: job.interruptions,
        max_attempts: job.max_attempts,
    };
    let outcome = Outcome::Interrupted {
        reason: reason.clone(),
    };
    let backoff = crate::config::QueueSpec::new("").retry_backoff;
    let (c, next) = jobs::after_attempt(counters, &outcome, &backoff, 0.0);
    job.tries = c.tries;
    job.interruptions = c.interruptions;
    job.run_at_ms = now;
    match next {
        Next::Failed { reason } => {
            job.state = JobState::Failed;
            job.error = Some(reason);
        }
        _ => job.error = Some(reason.clone()),
    }
    for a in job.history.iter_mut().filter(|a| a.ended_ms.is_none()) {
        a.ended_ms = Some(now);
        a.outcome = Some("interrupted".into());
        a.error = Some(reason.clone());
    }
}
