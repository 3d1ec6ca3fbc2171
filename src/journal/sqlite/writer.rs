//! The writer thread: group commit of every state change.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::syncer::{Committed, Syncer};
use super::{
    CancelResult, Claimed, Finished, JournalError, Leased, NewJob, Op, Reclaimed, Stats, Submitted,
    now_ms,
};
use crate::jobs::{self, Counters, JobState, Next, Outcome};

/// Free the unique key of job ?1, if it has one. By the key's primary key: job_keys has
/// no index on job_id, and a search by it read every live key.
const DELETE_KEY: &str = "DELETE FROM job_keys
     WHERE queue = (SELECT queue FROM jobs WHERE id = ?1)
       AND key = (SELECT unique_key FROM jobs WHERE id = ?1) AND job_id = ?1";

/// Most operations in one transaction.
const MAX_BATCH: usize = 8192;
/// How often failed completions are retried while the disk refuses writes.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A queue name as an SQL string literal. Names are validated to letters, digits, `-` and
/// `_` by the configuration; quotes are doubled anyway.
fn literal(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

pub(super) fn map_err(e: rusqlite::Error, path: &Path) -> JournalError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => JournalError::Full {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => JournalError::Damaged {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => JournalError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
    }
}

/// Answer an operation that could not be carried out.
pub(crate) fn fail_op(op: Op, e: JournalError) {
    match op {
        Op::Submit { reply, .. } => reply(Err(e)),
        Op::Claim { reply, .. } => reply(Err(e)),
        Op::Finish { reply, .. } => reply(Err(e)),
        Op::Progress { .. } | Op::Renew => {}
        Op::Cancel { reply, .. } => reply(Err(e)),
        Op::Retry { reply, .. } => reply(Err(e)),
        Op::Prune { reply, .. } => reply(Err(e)),
    }
}

pub(super) enum Res {
    Submit(Result<Vec<Submitted>, JournalError>),
    Claim(Result<Claimed, JournalError>),
    Finish(Result<Finished, JournalError>),
    Progress,
    Cancel(Result<CancelResult, JournalError>),
    Retry(Result<Submitted, JournalError>),
    Prune(Result<u64, JournalError>),
}

pub(super) fn deliver(op: Op, res: Res) {
    match (op, res) {
        (Op::Submit { reply, .. }, Res::Submit(r)) => reply(r),
        (Op::Claim { reply, .. }, Res::Claim(r)) => reply(r),
        (Op::Finish { reply, .. }, Res::Finish(r)) => reply(r),
        (Op::Cancel { reply, .. }, Res::Cancel(r)) => reply(r),
        (Op::Retry { reply, .. }, Res::Retry(r)) => reply(r),
        (Op::Prune { reply, .. }, Res::Prune(r)) => reply(r),
        (Op::Progress { .. } | Op::Renew, Res::Progress) => {}
        (op, _) => fail_op(
            op,
            JournalError::Invalid("internal error: mismatched journal reply".into()),
        ),
    }
}

type Moves = Vec<(String, Option<JobState>, Option<JobState>)>;

pub(super) struct Writer {
    conn: Connection,
    path: PathBuf,
    owner: Owner,
    stats: Arc<Mutex<Stats>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Completions whose commit failed; retried until they land.
    pending: Vec<Op>,
    /// `synchronous = "full"`: commits are flushed to disk by the flusher thread.
    flush: bool,
    /// Where committed transactions go to be flushed before their answers are given.
    flusher: Option<Sender<Committed>>,
}

impl Writer {
    pub fn new(
        conn: Connection,
        path: PathBuf,
        owner: Owner,
        stats: Arc<Mutex<Stats>>,
        metrics: Arc<crate::metrics::Metrics>,
        flush: bool,
    ) -> Writer {
        // Every statement the writer uses stays prepared.
        conn.set_prepared_statement_cache_capacity(64);
        Writer {
            conn,
            path,
            owner,
            stats,
            metrics,
            pending: Vec::new(),
            flush,
            flusher: None,
        }
    }

    /// Start the flusher thread and let SQLite stop syncing on every commit; on any
    /// failure SQLite keeps syncing itself (`FULL`), which is slower but as safe.
    fn start_flusher(&mut self) -> Option<std::thread::JoinHandle<()>> {
        match self.try_start_flusher() {
            Ok((tx, handle)) => {
                self.flusher = Some(tx);
                Some(handle)
            }
            Err(e) => {
                tracing::warn!("the journal will sync on every commit, which is slower: {e}");
                None
            }
        }
    }

    fn try_start_flusher(
        &mut self,
    ) -> Result<(Sender<Committed>, std::thread::JoinHandle<()>), String> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let mut syncer = Syncer::new(wal.into(), self.stats.clone(), self.metrics.clone());
        syncer.open()?;
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(|e| e.to_string())?;
        let (tx, rx) = std::sync::mpsc::channel();
        match std::thread::Builder::new()
            .name("steward-flush".into())
            .spawn(move || syncer.run(rx))
        {
            Ok(handle) => Ok((tx, handle)),
            Err(e) => {
                let _ = self.conn.execute_batch("PRAGMA synchronous = FULL;");
                Err(format!("cannot start the journal flusher: {e}"))
            }
        }
    }

    pub fn run(mut self, rx: Receiver<Op>) {
        let flusher = if self.flush {
            self.start_flusher()
        } else {
            None
        };
        loop {
            let mut batch = std::mem::take(&mut self.pending);
            let first = if batch.is_empty() {
                match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(op) => Some(op),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        // Last chance for the retried completions, then leave.
                        self.apply_batch(batch);
                        break;
                    }
                }
            };
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply_batch(batch);
        }
        if !self.pending.is_empty() {
            tracing::error!(
                "{} job state changes could not be written to the journal before exit; those jobs will be reclaimed at the next start",
                self.pending.len()
            );
        }
        // Every answer still waiting for its flush is given before the writer leaves.
        self.flusher = None;
        if let Some(f) = flusher {
            let _ = f.join();
        }
        // This run is over: its lease ends now.
        let now = now_ms();
        let _ = self.conn.execute(
            "UPDATE runs SET stopped_at = ?2, lease_expires_at = ?2 WHERE run_id = ?1",
            params![self.owner.run_id, now],
        );
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);");
        // Nothing more is written: the log may now go (SQLite removes it when the last
        // connection closes) without that being a sign of damage at the next start.
        let jobs = self
            .conn
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get::<_, i64>(0));
        if let (Ok(jobs), Some(dir)) = (jobs, self.path.parent()) {
            let record = super::damage::Record {
                clean: true,
                boot: super::damage::boot_id(),
                jobs: jobs.max(0) as u64,
            };
            if let Err(e) = super::damage::write_record(dir, &record) {
                tracing::warn!("{e}");
            }
        }
    }

    fn apply_batch(&mut self, batch: Vec<Op>) {
        if batch.is_empty() {
            return;
        }
        let now = now_ms();
        let t0 = Instant::now();
        let mut moves: Moves = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        let mut failure = self.conn.execute_batch("BEGIN IMMEDIATE").err();
        if failure.is_none() {
            for op in &batch {
                match self.apply_inner(op, now, &mut moves) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if failure.is_none() {
            failure = self.conn.execute_batch("COMMIT").err();
        }
        let Some(e) = failure else {
            if let Ok(mut s) = self.stats.lock() {
                for (q, from, to) in &moves {
                    s.moved(q, *from, *to);
                }
                s.error = None;
            }
            let took = t0.elapsed();
            if took > Duration::from_secs(1) {
                tracing::warn!(
                    "a journal commit of {} changes took {:.1}s; is the disk slow?",
                    batch.len(),
                    took.as_secs_f64()
                );
            }
            let Some(flusher) = &self.flusher else {
                self.metrics.commit(took);
                for (op, res) in batch.into_iter().zip(results) {
                    deliver(op, res);
                }
                return;
            };
            // Leases go out at once: the job line may reach the worker while the commit
            // is flushed (see syncer.rs). Every other answer waits for the flush.
            let mut answers = Vec::with_capacity(batch.len());
            for (op, res) in batch.into_iter().zip(results) {
                if matches!(op, Op::Claim { .. }) {
                    deliver(op, res);
                } else {
                    answers.push((op, res));
                }
            }
            if let Err(e) = flusher.send(Committed { began: t0, answers }) {
                let err = JournalError::Invalid(
                    "internal error: the journal flusher is gone; the change is written but may not be on disk"
                        .into(),
                );
                for (op, _) in e.0.answers {
                    fail_op(op, err.clone());
                }
            }
            return;
        };
        let _ = self.conn.execute_batch("ROLLBACK");
        // The disk or the database is failing: the whole batch fails (submits are refused,
        // completions kept for a retry). Any other error belongs to one operation: run
        // each alone, so that one bad operation does not take the others down with it.
        let storage = matches!(
            e.sqlite_error_code(),
            Some(
                ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::CannotOpen
                    | ErrorCode::ReadOnly
                    | ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::DatabaseCorrupt
                    | ErrorCode::NotADatabase
            )
        );
        if storage || batch.len() == 1 {
            let err = map_err(e, &self.path);
            self.failed(batch, err);
        } else {
            for op in batch {
                self.apply_batch(vec![op]);
            }
        }
    }

    /// A transaction failed: refuse new submissions, keep completions for a retry.
    fn failed(&mut self, batch: Vec<Op>, err: JournalError) {
        Stats::damage(&self.stats, &err);
        let first_failure = self
            .stats
            .lock()
            .map(|mut s| s.error.replace(err.to_string()).is_none())
            .unwrap_or(false);
        if first_failure {
            tracing::error!("{err}");
        }
        for op in batch {
            match op {
                Op::Finish { .. } | Op::Progress { .. } => self.pending.push(op),
                other => fail_op(other, err.clone()),
            }
        }
    }

    /// Apply one operation. `Err` is a database error (the batch is rolled back); a
    /// logical refusal (unknown job, wrong state) is an `Ok` carrying the refusal.
    fn apply_inner(&mut self, op: &Op, now: i64, moves: &mut Moves) -> rusqlite::Result<Res> {
        Ok(match op {
            Op::Submit { jobs, .. } => Res::Submit(Ok(self.submit(jobs, now, moves)?)),
            Op::Claim {
                queues,
                n,
                worker,
                pid,
                ..
            } => Res::Claim(Ok(self.claim(queues, *n, worker, *pid, now, moves)?)),
            Op::Finish {
                id,
                token,
                outcome,
                backoff,
                output,
                ..
            } => Res::Finish(Ok(self.finish(
                *id,
                *token,
                outcome,
                backoff,
                output.as_deref(),
                now,
                moves,
            )?)),
            Op::Progress {
                id,
                token,
                progress,
                message,
            } => {
                self.conn
                    .prepare_cached(
                        "UPDATE jobs SET progress = ?1, progress_message = ?2 WHERE id = ?3 AND lease_token = ?4 AND state = 'running'",
                    )?
                    .execute(params![progress, message, id, token])?;
                Res::Progress
            }
            Op::Cancel { id, .. } => Res::Cancel(
                self.cancel(*id, now, moves)?
                    .ok_or(JournalError::NotFound(*id)),
            ),
            Op::Retry { id, .. } => Res::Retry(self.retry(*id, now, moves)?),
            Op::Prune { rules, .. } => Res::Prune(Ok(self.prune(rules, moves)?)),
            Op::Renew => {
                self.conn
                    .prepare_cached(
                        "UPDATE runs SET lease_expires_at = ?2 WHERE run_id = ?1 AND stopped_at IS NULL",
                    )?
                    .execute(params![
                        self.owner.run_id,
                        now.saturating_add(RUN_TTL.as_millis() as i64)
                    ])?;
                Res::Progress
            }
        })
    }

    fn submit(
        &mut self,
        jobs: &[NewJob],
        now: i64,
        moves: &mut Moves,
    ) -> rusqlite::Result<Vec<Submitted>> {
        let mut out = Vec::with_capacity(jobs.len());
        for j in jobs {
            // A job due now is due from its commit: it never runs "before" it was created.
            let run_at = j.run_at_ms.max(now);
            if let Some(key) = &j.key {
                let existing: Option<(i64, i64)> = self
                    .conn
                    .prepare_cached(
                        "SELECT k.job_id, j.run_at FROM job_keys k JOIN jobs j ON j.id = k.job_id WHERE k.queue = ?1 AND k.key = ?2",
                    )?
                    .query_row(params![j.queue, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((id, run_at_ms)) = existing {
                    out.push(Submitted {
                        id,
                        existing: true,
                        run_at_ms,
                    });
                    continue;
                }
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO jobs (queue, state, priority, run_at, created_at, updated_at, max_attempts, timeout_ms, unique_key, delayed)
                     VALUES (?1, 'queued', ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![j.queue, j.priority, run_at, now, j.max_attempts, j.timeout_ms, j.key, run_at > now])?;
            let id = self.conn.last_insert_rowid();
            self.conn
                .prepare_cached("INSERT INTO job_data (job_id, payload) VALUES (?1, ?2)")?
                .execute(params![id, j.payload])?;
            if let Some(key) = &j.key {
                self.conn
                    .prepare_cached(
                        "INSERT INTO job_keys (queue, key, job_id) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![j.queue, key, id])?;
            }
            moves.push((j.queue.clone(), None, Some(JobState::Queued)));
            out.push(Submitted {
                id,
                existing: false,
                run_at_ms: run_at,
            });
        }
        Ok(out)
    }

    fn claim(
        &mut self,
        queues: &[String],
        n: usize,
        worker: &str,
        pid: i32,
        now: i64,
        moves: &mut Moves,
    ) -> rusqlite::Result<Claimed> {
        // Candidates from each queue in dispatch order, then merged.
        let mut candidates: Vec<(i64, i64, i64)> = Vec::new();
        for q in queues {
            // Delayed jobs whose time has come join the due ones (one seek of
            // jobs_delayed when none has).
            self.conn
                .prepare_cached(&format!(
                    "UPDATE jobs INDEXED BY jobs_delayed SET delayed = 0
                     WHERE state = 'queued' AND delayed = 1 AND queue = {} AND run_at <= ?1",
                    literal(q)
                ))?
                .execute(params![now])?;
            // INDEXED BY: walk the dispatch index in order and stop after n rows (left to
            // itself the planner may pick another index and sort every queued job). No parameter
            // for the queue or the limit: with either, SQLite re-prepared this statement on
            // every run once rows had changed, which cost more than the query itself. The
            // queue name is a literal (names are validated), and stepping stops after n.
            // Every job in this index is due: future ones wait in jobs_delayed.
            let sql = format!(
                "SELECT id, priority, run_at FROM jobs INDEXED BY jobs_dispatch
                 WHERE state = 'queued' AND delayed = 0 AND queue = {}
                 ORDER BY priority DESC, run_at, id",
                literal(q)
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .take(n);
            for row in rows {
                candidates.push(row?);
            }
        }
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        candidates.truncate(n);
        let mut jobs = Vec::with_capacity(candidates.len());
        for (id, _, _) in candidates {
            // No RETURNING on the hot UPDATEs: SQLite runs it through a temporary table,
            // which cost more than the update itself; the row is read back by rowid.
            self.conn
                .prepare_cached(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, tries = tries + 1,
                         lease_token = lease_token + 1, worker = ?2, run_id = ?3, updated_at = ?4,
                         claimed_at = ?4, lease_host = ?5, progress = NULL, progress_message = NULL
                     WHERE id = ?1",
                )?
                .execute(params![id, worker, self.owner.run_id, now, self.owner.host])?;
            let (queue, attempt, token, timeout_ms, created_ms, payload): (
                String,
                u32,
                i64,
                Option<i64>,
                i64,
                String,
            ) = self
                .conn
                .prepare_cached(
                    "SELECT j.queue, j.attempts, j.lease_token, j.timeout_ms, j.created_at, d.payload
                     FROM jobs j JOIN job_data d ON d.job_id = j.id WHERE j.id = ?1",
                )?
                .query_row(params![id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?;
            self.conn
                .prepare_cached("INSERT INTO attempts (job_id, attempt, worker, pid, started_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![id, attempt, worker, pid, now])?;
            moves.push((
                queue.clone(),
                Some(JobState::Queued),
                Some(JobState::Running),
            ));
            jobs.push(Leased {
                id,
                queue,
                attempt,
                token,
                payload,
                timeout_ms,
                created_ms,
            });
        }
        let mut next_run_at_ms = None;
        if jobs.len() < n {
            for q in queues {
                if let Some(t) = super::next_delayed(&self.conn, q)? {
                    next_run_at_ms = Some(next_run_at_ms.map_or(t, |c: i64| c.min(t)));
                }
            }
        }
        Ok(Claimed {
            jobs,
            next_run_at_ms,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        id: i64,
        token: i64,
        outcome: &Outcome,
        backoff: &crate::config::RetryBackoff,
        output: Option<&super::AttemptOutput>,
        now: i64,
        moves: &mut Moves,
    ) -> rusqlite::Result<Finished> {
        // A success needs no counters: one fenced UPDATE does it (the common case).
        let (queue, attempt, has_key, new_state, run_at, reason) = if let Outcome::Succeeded {
            ..
        } = outcome
        {
            let changed = self
                .conn
                .prepare_cached(
                    "UPDATE jobs SET state = 'succeeded', finished_at = ?3, updated_at = ?3, worker = NULL, error = NULL
                     WHERE id = ?1 AND lease_token = ?2 AND state = 'running'",
                )?
                .execute(params![id, token, now])?;
            if changed == 0 {
                return Ok(Finished::Stale);
            }
            let (queue, attempt, has_key): (String, u32, bool) = self
                .conn
                .prepare_cached(
                    "SELECT queue, attempts, unique_key IS NOT NULL FROM jobs WHERE id = ?1",
                )?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            (queue, attempt, has_key, JobState::Succeeded, None, None)
        } else {
            let row: Option<(String, String, i64, u32, Counters, bool)> = self
                .conn
                .prepare_cached(
                    "SELECT queue, state, lease_token, attempts, tries, crashes, interruptions, max_attempts,
                         unique_key IS NOT NULL FROM jobs WHERE id = ?1",
                )?
                .query_row(params![id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        Counters {
                            tries: r.get(4)?,
                            crashes: r.get(5)?,
                            interruptions: r.get(6)?,
                            max_attempts: r.get(7)?,
                        },
                        r.get(8)?,
                    ))
                })
                .optional()?;
            let Some((queue, state, current, attempt, counters, has_key)) = row else {
                return Ok(Finished::Stale);
            };
            if state != "running" || current != token {
                return Ok(Finished::Stale);
            }
            let (c, next) = jobs::after_attempt(counters, outcome, backoff, rand::random::<f64>());
            let (new_state, run_at, finished_at, reason) = match &next {
                Next::Succeeded => (JobState::Succeeded, None, Some(now), None),
                Next::Cancelled => (
                    JobState::Cancelled,
                    None,
                    Some(now),
                    outcome.error().map(str::to_string),
                ),
                Next::Failed { reason } => {
                    (JobState::Failed, None, Some(now), Some(reason.clone()))
                }
                Next::Queued { delay } => (
                    JobState::Queued,
                    Some(now + delay.as_millis() as i64),
                    None,
                    outcome.error().map(str::to_string),
                ),
            };
            self.conn
                .prepare_cached(
                    "UPDATE jobs SET state = ?2, tries = ?3, crashes = ?4, interruptions = ?5,
                         run_at = COALESCE(?6, run_at), finished_at = ?7, error = ?8, updated_at = ?9, worker = NULL,
                         delayed = ?10
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    new_state.as_str(),
                    c.tries,
                    c.crashes,
                    c.interruptions,
                    run_at,
                    finished_at,
                    reason,
                    now,
                    run_at.is_some_and(|t| t > now)
                ])?;
            (queue, attempt, has_key, new_state, run_at, reason)
        };
        if has_key && new_state.is_final() {
            self.conn.prepare_cached(DELETE_KEY)?.execute(params![id])?;
        }
        if let Outcome::Succeeded { result: Some(r) } = outcome {
            self.conn
                .prepare_cached("UPDATE job_data SET result = ?2 WHERE job_id = ?1")?
                .execute(params![id, r])?;
        }
        self.conn
            .prepare_cached("UPDATE attempts SET ended_at = ?3, outcome = ?4, error = ?5 WHERE job_id = ?1 AND attempt = ?2")?
                        .execute(params![id, attempt, now, outcome.as_str(), outcome.error()])?;
        if let Some(o) = output {
            self.conn
                .prepare_cached(
                    "UPDATE attempts SET worker = COALESCE(?3, worker), pid = COALESCE(?4, pid), stdout_tail = ?5, stderr_tail = ?6
                     WHERE job_id = ?1 AND attempt = ?2",
                )?
                .execute(params![id, attempt, o.worker, o.pid, o.stdout_tail, o.stderr_tail])?;
        }
        moves.push((queue, Some(JobState::Running), Some(new_state)));
        Ok(Finished::Applied {
            state: new_state,
            run_at_ms: run_at.unwrap_or(now),
            reason,
        })
    }

    fn cancel(
        &mut self,
        id: i64,
        now: i64,
        moves: &mut Moves,
    ) -> rusqlite::Result<Option<CancelResult>> {
        let row: Option<(String, String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT queue, state, worker FROM jobs WHERE id = ?1")?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((queue, state, worker)) = row else {
            return Ok(None);
        };
        match JobState::parse(&state) {
            Some(JobState::Queued) => {
                self.conn.execute(
                                        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2, error = 'cancelled by steward cancel' WHERE id = ?1",
                    params![id, now],
                )?;
                self.conn.execute(DELETE_KEY, params![id])?;
                moves.push((queue, Some(JobState::Queued), Some(JobState::Cancelled)));
                Ok(Some(CancelResult::Cancelled))
            }
            Some(JobState::Running) => Ok(Some(CancelResult::Running { worker })),
            Some(other) => Ok(Some(CancelResult::AlreadyFinal(other))),
            None => Ok(None),
        }
    }

    fn retry(
        &mut self,
        id: i64,
        now: i64,
        moves: &mut Moves,
    ) -> rusqlite::Result<Result<Submitted, JournalError>> {
        let row: Option<(String, String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT queue, state, unique_key FROM jobs WHERE id = ?1")?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((queue, state, key)) = row else {
            return Ok(Err(JournalError::NotFound(id)));
        };
        let from = JobState::parse(&state);
        if !matches!(from, Some(JobState::Failed | JobState::Cancelled)) {
            return Ok(Err(JournalError::Invalid(format!(
                "job {id} is {state}; only failed or cancelled jobs can be retried"
            ))));
        }
        if let Some(key) = key {
            let holder: Option<i64> = self
                .conn
                .query_row(
                    "SELECT job_id FROM job_keys WHERE queue = ?1 AND key = ?2",
                    params![queue, key],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = holder {
                return Ok(Err(JournalError::Invalid(format!(
                    "job {other} with the same key ({key}) is queued or running; job {id} is left {state}"
                ))));
            }
            self.conn.execute(
                "INSERT INTO job_keys (queue, key, job_id) VALUES (?1, ?2, ?3)",
                params![queue, key, id],
            )?;
        }
        self.conn.execute(
            "UPDATE jobs SET state = 'queued', tries = 0, crashes = 0, interruptions = 0, run_at = ?2,
                 finished_at = NULL, error = NULL, updated_at = ?2, delayed = 0 WHERE id = ?1",
            params![id, now],
        )?;
        moves.push((queue, from, Some(JobState::Queued)));
        Ok(Ok(Submitted {
            id,
            existing: false,
            run_at_ms: now,
        }))
    }

    /// Delete finished jobs past their retention, a bounded number per call.
    fn prune(&mut self, rules: &[(String, i64, i64)], moves: &mut Moves) -> rusqlite::Result<u64> {
        let mut deleted = 0u64;
        for (queue, succeeded_before, failed_before) in rules {
            let mut ids: Vec<(i64, String)> = Vec::new();
            {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT id, state FROM jobs WHERE queue = ?1 AND state = 'succeeded' AND finished_at < ?2 LIMIT 500",
                )?;
                for row in stmt.query_map(params![queue, succeeded_before], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })? {
                    ids.push(row?);
                }
                let mut stmt = self.conn.prepare_cached(
                    "SELECT id, state FROM jobs WHERE queue = ?1 AND state IN ('failed', 'cancelled') AND finished_at < ?2 LIMIT 500",
                )?;
                for row in stmt.query_map(params![queue, failed_before], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })? {
                    ids.push(row?);
                }
            }
            for (id, state) in ids {
                moves.push((queue.clone(), JobState::parse(&state), None));
                self.conn
                    .prepare_cached("DELETE FROM attempts WHERE job_id = ?1")?
                    .execute(params![id])?;
                self.conn
                    .prepare_cached("DELETE FROM job_data WHERE job_id = ?1")?
                    .execute(params![id])?;
                self.conn
                    .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                    .execute(params![id])?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.conn.execute_batch("PRAGMA incremental_vacuum(256);")?;
        }
        Ok(deleted)
    }
}

/// How long a run's lease lasts without a renewal (the supervisor renews it every
/// [`crate::journal::RENEW_EVERY`] while its loop turns).
pub(super) const RUN_TTL: Duration = Duration::from_secs(30);

/// Who this daemon run is, as its leases name it.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub run_id: String,
    /// The machine (`/etc/machine-id`, else the host name).
    pub host: String,
    pub boot_id: String,
    pub pid: u32,
}

/// Register `me` as a live run with a lease of [`RUN_TTL`]. The caller holds the
/// journal's exclusive lock, so every other run is over: each is marked stopped, and its
/// lease ends now if it had not already.
pub(super) fn register_run(conn: &Connection, me: &Owner, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET stopped_at = coalesce(stopped_at, ?2), lease_expires_at = min(lease_expires_at, ?2)
         WHERE run_id != ?1",
        params![me.run_id, now],
    )?;
    conn.execute(
        "INSERT INTO runs (run_id, host, boot_id, pid, started_at, lease_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            me.run_id,
            me.host,
            me.boot_id,
            me.pid,
            now,
            now.saturating_add(RUN_TTL.as_millis() as i64)
        ],
    )?;
    // The runs of the past are kept for the story of their jobs: the latest 100, and any
    // that still owns a job.
    conn.execute(
        "DELETE FROM runs WHERE run_id NOT IN (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 100)
           AND NOT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_running WHERE state = 'running' AND jobs.run_id = runs.run_id)",
        [],
    )?;
    Ok(())
}

/// Every job still `running` whose owner run is gone (stopped, or its lease expired): its
/// worker died with it. Put each back in its queue at once (interruptions do not use up
/// attempts) and record the interruption in its history.
pub(super) fn reclaim_interrupted(
    conn: &mut Connection,
    run_id: &str,
) -> rusqlite::Result<Vec<Reclaimed>> {
    let now = now_ms();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut rows = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT id, queue, attempts, tries, crashes, interruptions, max_attempts, worker, run_id
             FROM jobs INDEXED BY jobs_running
             WHERE state = 'running' AND (run_id IS NULL OR (run_id != ?1 AND NOT EXISTS (
                 SELECT 1 FROM runs r WHERE r.run_id = jobs.run_id AND r.stopped_at IS NULL AND r.lease_expires_at > ?2)))",
        )?;
        let it = stmt.query_map(params![run_id, now], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                Counters {
                    tries: r.get(3)?,
                    crashes: r.get(4)?,
                    interruptions: r.get(5)?,
                    max_attempts: r.get(6)?,
                },
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })?;
        for row in it {
            rows.push(row?);
        }
    }
    let mut out = Vec::new();
    for (id, queue, attempt, counters, worker, old_run) in rows {
        let reason = format!(
            "steward stopped while this attempt ran (daemon run {}); reclaimed by run {run_id}",
            old_run.as_deref().unwrap_or("?")
        );
        let outcome = Outcome::Interrupted {
            reason: reason.clone(),
        };
        let backoff = crate::config::QueueSpec::new("").retry_backoff;
        let (c, next) = jobs::after_attempt(counters, &outcome, &backoff, 0.0);
        let (state, err) = match next {
            Next::Failed { reason } => (JobState::Failed, Some(reason)),
            _ => (JobState::Queued, Some(reason.clone())),
        };
        tx.execute(
            "UPDATE jobs SET state = ?2, tries = ?3, interruptions = ?4, run_at = ?5, updated_at = ?5, worker = NULL, delayed = 0,
                 error = ?6, finished_at = CASE WHEN ?2 = 'failed' THEN ?5 ELSE NULL END
             WHERE id = ?1",
                        params![id, state.as_str(), c.tries, c.interruptions, now, err],
        )?;
        if state == JobState::Failed {
            tx.execute(DELETE_KEY, params![id])?;
        }
        tx.execute(
            "UPDATE attempts SET ended_at = ?3, outcome = 'interrupted', error = ?4 WHERE job_id = ?1 AND attempt = ?2 AND ended_at IS NULL",
            params![id, attempt, now, reason],
        )?;
        out.push(Reclaimed {
            id,
            queue,
            attempt,
            worker,
            now: state,
        });
    }
    tx.commit()?;
    Ok(out)
}

/// Jobs by queue and state, as the daemon starts. Each state is counted from its own
/// index, never from the table: queued jobs from `jobs_dispatch`, running ones from
/// `jobs_running`, finished ones from `jobs_finished` (which holds queue and state, so the
/// table is not read). With 1,000,000 finished jobs, one `GROUP BY` over the table took
/// 1.1–1.4 s before `READY=1`; the finished index alone takes about 0.18 s.
const STATS_SQL: [&str; 4] = [
    "SELECT queue, 'queued', count(*) FROM jobs INDEXED BY jobs_dispatch
     WHERE state = 'queued' AND delayed = 0 GROUP BY queue",
    "SELECT queue, 'queued', count(*) FROM jobs INDEXED BY jobs_delayed
     WHERE state = 'queued' AND delayed = 1 GROUP BY queue",
    "SELECT queue, 'running', count(*) FROM jobs INDEXED BY jobs_running
     WHERE state = 'running' GROUP BY queue",
    "SELECT queue, state, count(*) FROM jobs INDEXED BY jobs_finished
     WHERE finished_at IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
     GROUP BY queue, state",
];

/// Jobs per queue and state, counted once at start and kept current by every commit.
pub(super) fn initial_stats(conn: &Connection) -> rusqlite::Result<Stats> {
    let mut stats = Stats::default();
    for sql in STATS_SQL {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (queue, state, n) = row?;
            let n = n.max(0) as u64;
            let q = stats.queues.entry(queue).or_default();
            // Queued jobs come in two counts: due and delayed.
            match JobState::parse(&state) {
                Some(JobState::Queued) => q.queued += n,
                Some(JobState::Running) => q.running += n,
                Some(JobState::Succeeded) => q.succeeded += n,
                Some(JobState::Failed) => q.failed += n,
                Some(JobState::Cancelled) => q.cancelled += n,
                None => {}
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QueueSpec, Synchronous};

    /// Every statement the writer keeps prepared: how often SQLite had to prepare it
    /// again, with its SQL.
    fn reprepared(conn: &Connection) -> Vec<(i32, String)> {
        let mut out = Vec::new();
        // SAFETY: the handle belongs to `conn`, which outlives this loop; sqlite3_next_stmt
        // walks the connection's own list, and nothing is prepared or finalized meanwhile.
        unsafe {
            let db = conn.handle();
            let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let n = rusqlite::ffi::sqlite3_stmt_status(
                    stmt,
                    rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE,
                    0,
                );
                let sql = std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_sql(stmt))
                    .to_string_lossy()
                    .into_owned();
                out.push((n, sql));
                stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
            }
        }
        out
    }

    #[test]
    fn starting_counts_come_from_indexes_and_match_the_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        for sql in STATS_SQL {
            let plan = super::super::schema::query_plan(&conn, sql, []).join("; ");
            assert!(plan.contains("SCAN jobs USING"), "{plan}");
        }
        let finished = super::super::schema::query_plan(&conn, STATS_SQL[3], []).join("; ");
        assert!(
            finished.contains("COVERING INDEX jobs_finished"),
            "{finished}"
        );
        let rows = [
            ("a", "queued", None, 3),
            ("a", "running", None, 2),
            ("a", "succeeded", Some(9), 5),
            ("a", "failed", Some(9), 1),
            ("b", "queued", None, 1),
            ("b", "cancelled", Some(9), 2),
            ("c", "succeeded", Some(9), 4),
        ];
        for (queue, state, finished_at, n) in rows {
            for _ in 0..n {
                conn.execute(
                    "INSERT INTO jobs (queue, state, run_at, created_at, updated_at, finished_at, max_attempts)
                     VALUES (?1, ?2, 1, 1, 1, ?3, 3)",
                    rusqlite::params![queue, state, finished_at],
                )
                .unwrap();
            }
        }
        let stats = initial_stats(&conn).unwrap();
        let mut got: Vec<(String, [u64; 5])> = stats
            .queues
            .iter()
            .map(|(name, q)| {
                (
                    name.clone(),
                    [q.queued, q.running, q.succeeded, q.failed, q.cancelled],
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), [3, 2, 5, 1, 0]),
                ("b".to_string(), [1, 0, 0, 0, 2]),
                ("c".to_string(), [0, 0, 4, 0, 0]),
            ]
        );
    }

    fn job(priority: i64, run_at_ms: i64) -> NewJob {
        NewJob {
            queue: "q".into(),
            payload: "{}".into(),
            priority,
            run_at_ms,
            max_attempts: 3,
            timeout_ms: None,
            key: None,
        }
    }

    fn owner(run: &str) -> Owner {
        Owner {
            run_id: run.into(),
            host: "host-a".into(),
            boot_id: "boot".into(),
            pid: 1,
        }
    }

    #[test]
    fn leases_name_their_owner_and_only_a_gone_owner_loses_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let t0 = 1_000_000;
        register_run(&conn, &owner("first"), t0).unwrap();
        let stats: Arc<Mutex<Stats>> = Arc::default();
        let mut w = Writer::new(
            conn,
            "m".into(),
            owner("first"),
            stats,
            Arc::default(),
            false,
        );
        let mut moves = Vec::new();
        w.submit(&[job(0, t0), job(0, t0)], t0, &mut moves).unwrap();
        let c = w
            .claim(&["q".into()], 1, "w/0", 7, t0 + 5, &mut moves)
            .unwrap();
        let id = c.jobs[0].id;
        let (run, host, claimed): (String, String, i64) = w
            .conn
            .query_row(
                "SELECT run_id, lease_host, claimed_at FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (run.as_str(), host.as_str(), claimed),
            ("first", "host-a", t0 + 5)
        );
        let mut conn = w.conn;
        // The run that owns the lease is alive, and it is not someone else's to take.
        assert!(reclaim_interrupted(&mut conn, "first").unwrap().is_empty());
        // A later run that holds the journal: the first one is over (killed: it never
        // said so), and its lease goes with it, once.
        register_run(&conn, &owner("second"), t0 + 10).unwrap();
        let (stopped, expires): (Option<i64>, i64) = conn
            .query_row(
                "SELECT stopped_at, lease_expires_at FROM runs WHERE run_id = 'first'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((stopped, expires), (Some(t0 + 10), t0 + 10));
        let back = reclaim_interrupted(&mut conn, "second").unwrap();
        assert_eq!(back.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
        assert_eq!(back[0].now, JobState::Queued);
        assert!(reclaim_interrupted(&mut conn, "second").unwrap().is_empty());
        let alive: i64 = conn
            .query_row(
                "SELECT lease_expires_at FROM runs WHERE run_id = 'second' AND stopped_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(alive, t0 + 10 + RUN_TTL.as_millis() as i64);
    }

    #[test]
    fn delayed_jobs_wait_apart_until_due() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let stats: Arc<Mutex<Stats>> = Arc::default();
        let mut w = Writer::new(conn, "m".into(), owner("run"), stats, Arc::default(), false);
        let now = 1_000_000;
        let mut moves = Vec::new();
        // Many jobs of a higher priority due later, one due now.
        let later: Vec<NewJob> = (0..50).map(|_| job(100, now + 60_000)).collect();
        w.submit(&later, now, &mut moves).unwrap();
        let due = w.submit(&[job(0, now)], now, &mut moves).unwrap()[0].id;
        let plan = super::super::schema::query_plan(
            &w.conn,
            "SELECT id FROM jobs INDEXED BY jobs_dispatch WHERE state = 'queued' AND delayed = 0 AND queue = 'q' ORDER BY priority DESC, run_at, id",
            [],
        )
        .join("; ");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        let c = w
            .claim(&["q".into()], 10, "w/0", 1, now, &mut moves)
            .unwrap();
        assert_eq!(c.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![due]);
        assert_eq!(c.next_run_at_ms, Some(now + 60_000));
        // Only the due job was read: the delayed ones are not in the dispatch index.
        let in_dispatch: i64 = w
            .conn
            .query_row(
                "SELECT count(*) FROM jobs INDEXED BY jobs_dispatch WHERE state = 'queued' AND delayed = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(in_dispatch, 0);
        // Their time comes: a claim promotes them, highest priority first as ever.
        let c = w
            .claim(&["q".into()], 10, "w/0", 1, now + 60_000, &mut moves)
            .unwrap();
        assert_eq!(c.jobs.len(), 10);
        let counts = initial_stats(&w.conn).unwrap();
        assert_eq!(counts.queues["q"].queued, 40);
        assert_eq!(counts.queues["q"].running, 11);
        // A retry after a failure waits apart too.
        let j = &c.jobs[0];
        let backoff = QueueSpec::new("q").retry_backoff;
        let fail = Outcome::Failed {
            error: "no".into(),
            retry: true,
        };
        w.finish(
            j.id,
            j.token,
            &fail,
            &backoff,
            None,
            now + 60_000,
            &mut moves,
        )
        .unwrap();
        let delayed: i64 = w
            .conn
            .query_row("SELECT delayed FROM jobs WHERE id = ?1", [j.id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(delayed, 1);
    }

    #[test]
    fn a_version_5_journal_moves_its_future_jobs_aside() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &super::super::schema::MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        let far = i64::MAX / 2;
        conn.execute_batch(&format!(
            "INSERT INTO jobs (queue, state, run_at, created_at, updated_at, max_attempts)
             VALUES ('q', 'queued', 1, 1, 1, 3), ('q', 'queued', {far}, 1, 1, 3);"
        ))
        .unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let flags: Vec<i64> = conn
            .prepare("SELECT delayed FROM jobs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(flags, vec![0, 1]);
    }

    #[test]
    fn a_unique_key_is_freed_through_its_primary_key() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let plan = super::super::schema::query_plan(&conn, DELETE_KEY, [1]);
        assert!(
            plan.iter()
                .any(|p| p.contains("job_keys USING PRIMARY KEY")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.starts_with("SCAN")), "{plan:?}");
    }

    #[test]
    fn hot_statements_are_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let mut conn = Connection::open(&path).unwrap();
        super::super::configure(&conn, Synchronous::Full).unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let mut w = Writer::new(
            conn,
            path,
            owner("run"),
            Arc::default(),
            Arc::default(),
            false,
        );
        let backoff = QueueSpec::new("q").retry_backoff;
        for round in 0..4i64 {
            let now = now_ms() + round;
            let mut moves = Vec::new();
            let jobs: Vec<NewJob> = (0..5)
                .map(|i| NewJob {
                    queue: "q".into(),
                    payload: format!("{{\"n\": {i}}}"),
                    priority: i % 2,
                    run_at_ms: now,
                    max_attempts: 3,
                    timeout_ms: (i == 0).then_some(1000),
                    key: None,
                })
                .collect();
            w.submit(&jobs, now, &mut moves).unwrap();
            let claimed = w
                .claim(&["q".to_string()], 8, "w/0", 42, now, &mut moves)
                .unwrap();
            assert_eq!(claimed.jobs.len(), 5);
            for (i, job) in claimed.jobs.iter().enumerate() {
                let outcome = if i % 2 == 0 {
                    Outcome::Succeeded {
                        result: Some(format!("{i}")),
                    }
                } else {
                    Outcome::Failed {
                        error: "no".into(),
                        retry: true,
                    }
                };
                let done = w
                    .finish(job.id, job.token, &outcome, &backoff, None, now, &mut moves)
                    .unwrap();
                assert!(matches!(done, Finished::Applied { .. }));
            }
        }
        let stmts = reprepared(&w.conn);
        assert!(stmts.len() >= 8, "{stmts:?}");
        let again: Vec<_> = stmts.iter().filter(|(n, _)| *n > 0).collect();
        assert!(again.is_empty(), "prepared again: {again:?}");
    }
}
