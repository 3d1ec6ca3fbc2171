//! The job journal: where jobs are kept, behind one boundary.
//!
//! The supervisor and the control API speak to the journal only through [`Journal`], a
//! cheap handle over a [`JobStore`]: submit (one job or a batch), claim for a pool with N
//! free slots, finish with a fenced token, progress, cancel, retry, prune, renew the
//! daemon run's lease, and the reads (overview, list, get, counts). Every operation
//! answers through a callback, so nothing here blocks the supervisor loop; the store
//! batches writes as it sees fit (group commit). The types are the domain's
//! ([`crate::model`]); the API's JSON is built from them in `control`.
//!
//! Leases are fenced: each claim bumps a job's `lease_token`, and a completion is applied
//! only if its token is still the current one and the job is still running, so a stale
//! attempt can never overwrite a newer one. Each lease names its owner (the daemon run and
//! its host); a run has a lease of its own, renewed while its loop turns, and jobs are
//! reclaimed when their owner is gone. Retry and quarantine decisions are pure functions
//! in `jobs.rs`, which the store applies.
//!
//! [`sqlite`] is the store: the embedded default.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RetryBackoff;
use crate::jobs::{JobState, Outcome};
use crate::model::{JobRecord, QueueCounts};

pub use sqlite::{OpenError, backup, restore};

pub use crate::time::now_ms;

/// How often the supervisor renews its run's lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the disk holding the job journal {path} is full: free some space, then submit again (jobs already accepted are safe)"
    )]
    Full { path: PathBuf },
    #[error(
        "cannot write the job journal {path}: {detail} (jobs already accepted are safe; see journalctl -u steward)"
    )]
    Io { path: PathBuf, detail: String },
    #[error(
        "cannot read the job journal {path}: {detail} (jobs already accepted are safe; see journalctl -u steward)"
    )]
    Read { path: PathBuf, detail: String },
    #[error(
        "the job journal {path} is damaged ({detail}); steward goes on supervising but accepts no new jobs: stop it, then restore the last backup with `steward restore FILE`, or start it with `steward daemon --accept-damaged-journal` to keep what can be read"
    )]
    Damaged { path: PathBuf, detail: String },
    /// Submits while the journal is damaged (the text says why).
    #[error("{0}")]
    Refused(String),
    /// The connection broke after the commit was sent and before its answer came: the
    /// change may or may not be stored (the text says what to do).
    #[error("{0}")]
    Uncertain(String),
    #[error("no job with id {0}")]
    NotFound(i64),
    #[error("{0}")]
    Invalid(String),
    #[error("the job journal is closed because steward is stopping")]
    Closed,
}

pub type Reply<T> = Box<dyn FnOnce(Result<T, JournalError>) + Send>;

/// A job to add.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    /// JSON text.
    pub payload: String,
    pub priority: i64,
    pub run_at_ms: i64,
    pub max_attempts: u32,
    /// Per-attempt limit; `None` = the queue's.
    pub timeout_ms: Option<i64>,
    pub key: Option<String>,
}

/// A job that has not finished, as it leaves one journal for another
/// (`steward migrate-journal`): everything needed to run it on as it would have run on.
#[derive(Debug, Clone, PartialEq)]
pub struct MovedJob {
    /// Its id in the journal it comes from.
    pub source_id: i64,
    pub queue: String,
    /// `Queued` (due now or later) or `Failed` (an interrupted attempt used up its last
    /// chance, as a start of steward would have decided).
    pub state: crate::model::JobState,
    pub priority: i64,
    pub run_at_ms: i64,
    pub created_ms: i64,
    pub attempts: u32,
    pub tries: u32,
    pub crashes: u32,
    pub interruptions: u32,
    pub max_attempts: u32,
    pub timeout_ms: Option<i64>,
    pub key: Option<String>,
    pub error: Option<String>,
    /// JSON text.
    pub payload: String,
    pub history: Vec<crate::model::AttemptRecord>,
}

#[derive(Debug, Clone, Copy)]
pub struct Submitted {
    pub id: i64,
    pub existing: bool,
    pub run_at_ms: i64,
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: i64,
    pub queue: String,
    /// The attempt number (1 for the first run; unique in the job's history).
    pub attempt: u32,
    /// The fencing token of this lease.
    pub token: i64,
    pub payload: String,
    pub timeout_ms: Option<i64>,
    pub created_ms: i64,
}

impl Leased {
    /// The time limit of this attempt: the job's own (0 = none), else the queue's.
    pub fn timeout(&self, queue_default: Option<Duration>) -> Option<Duration> {
        // Capped: a journal written before durations were bounded may hold more.
        match self.timeout_ms {
            Some(0) => None,
            Some(ms) => {
                Some(Duration::from_millis(ms.max(0).unsigned_abs()).min(crate::time::MAX_DURATION))
            }
            None => queue_default,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub jobs: Vec<Leased>,
    /// When fewer jobs than asked were ready: the earliest `run_at` of a queued job in
    /// these queues that is not due yet.
    pub next_run_at_ms: Option<i64>,
}

/// What a completion did.
#[derive(Debug, Clone)]
pub enum Finished {
    /// Applied; the job is now in `state` (for `queued`, due at `run_at_ms`).
    Applied {
        state: JobState,
        run_at_ms: i64,
        reason: Option<String>,
    },
    /// The lease was no longer current: nothing was changed.
    Stale,
}

/// Who ran an attempt and what it printed (exec pools).
#[derive(Debug, Clone, Default)]
pub struct AttemptOutput {
    pub worker: Option<String>,
    pub pid: Option<i32>,
    pub stdout_tail: Option<String>,
    pub stderr_tail: Option<String>,
}

#[derive(Debug, Clone)]
pub enum CancelResult {
    Cancelled,
    /// It is running; the holder must be told.
    Running {
        worker: Option<String>,
    },
    AlreadyFinal(JobState),
}

/// Counts kept up to date by the writer after each commit.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub queues: HashMap<String, QueueCounts>,
    /// The last write error, cleared by the next successful commit.
    pub error: Option<String>,
    /// Damage found in the journal while running; it stays until a restart.
    pub damaged: Option<String>,
    /// A journal shared with other hosts: until when this daemon may hold leases, by its
    /// own clock (from the sending of its last renewal that landed, plus the lease's ttl
    /// less a margin). Past it, others may soon take its jobs back, so it must stop them.
    pub lease_valid_until: Option<std::time::Instant>,
}

impl Stats {
    /// What is wrong with the journal, the worst first.
    pub fn problem(&self) -> Option<String> {
        self.damaged.clone().or_else(|| self.error.clone())
    }

    /// Jobs in the journal, in every state.
    pub fn jobs(&self) -> u64 {
        self.queues.values().map(QueueCounts::total).sum()
    }

    /// Record damage (the first report stays, and is logged once).
    pub(crate) fn damage(stats: &Mutex<Stats>, err: &JournalError) {
        if !matches!(err, JournalError::Damaged { .. }) {
            return;
        }
        if let Ok(mut s) = stats.lock()
            && s.damaged.is_none()
        {
            s.damaged = Some(err.to_string());
            tracing::error!("{err}");
        }
    }

    fn moved(&mut self, queue: &str, from: Option<JobState>, to: Option<JobState>) {
        let q = self.queues.entry(queue.to_string()).or_default();
        match from {
            Some(JobState::Queued) => q.queued = q.queued.saturating_sub(1),
            Some(JobState::Running) => q.running = q.running.saturating_sub(1),
            Some(JobState::Succeeded) => q.succeeded = q.succeeded.saturating_sub(1),
            Some(JobState::Failed) => q.failed = q.failed.saturating_sub(1),
            Some(JobState::Cancelled) => q.cancelled = q.cancelled.saturating_sub(1),
            None => {}
        }
        match to {
            Some(JobState::Queued) => q.queued += 1,
            Some(JobState::Running) => q.running += 1,
            Some(JobState::Succeeded) => q.succeeded += 1,
            Some(JobState::Failed) => q.failed += 1,
            Some(JobState::Cancelled) => q.cancelled += 1,
            None => {}
        }
    }
}

/// A job found `running` when the daemon started: its worker died with an earlier run.
#[derive(Debug, Clone)]
pub struct Reclaimed {
    pub id: i64,
    pub queue: String,
    pub attempt: u32,
    pub worker: Option<String>,
    pub now: JobState,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs of these queues (none: every queue).
    pub queues: Vec<String>,
    /// Only jobs created at or after this (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only jobs created before this (ms since the epoch).
    pub until_ms: Option<i64>,
    pub state: Option<JobState>,
    pub limit: usize,
    /// Only jobs with a smaller id (the cursor of the previous page).
    pub before: Option<i64>,
    /// Include payloads.
    pub payloads: bool,
}

/// A page of a listing holds at most this many bytes of payloads, results and errors
/// (and at least one job).
pub const PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Results and errors in a listing are cut to this; `steward job ID` shows them whole.
pub const LIST_TEXT: usize = 1024;

/// A long text of a listing, cut with a pointer to the whole of it.
pub(crate) fn shorten(text: String, id: i64) -> String {
    let whole = text.len();
    let mut t = crate::protocol::truncate(text, LIST_TEXT);
    t.push_str(&format!(
        " ({whole} bytes: steward job {id} shows it whole)"
    ));
    t
}

/// A page of jobs, and the cursor of the next page when there is one.
pub type Page = (Vec<JobRecord>, Option<i64>);

/// What `steward status` shows beyond live counts.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// queue → (succeeded, failed) finished in the last hour
    pub last_hour: std::collections::HashMap<String, (u64, u64)>,
    /// queue → run_at (ms) of its queued job that has been due longest
    pub oldest_queued: std::collections::HashMap<String, i64>,
    /// The latest failed jobs: (id, queue, error, finished_at ms)
    pub recent_failures: Vec<(i64, String, Option<String>, Option<i64>)>,
}

/// What a store does; [`Journal`] is how the daemon reaches one.
pub trait JobStore: Send + Sync {
    /// Where the jobs are, for `steward status` (a file, later a database).
    fn location(&self) -> String;
    /// Bytes the store takes on disk, where it knows.
    fn size_bytes(&self) -> u64;
    /// Job counts per queue, and what is wrong, kept current without a read.
    fn stats(&self) -> Stats;
    /// Store new jobs, all or none; answered once they are durable.
    fn submit(&self, jobs: Vec<NewJob>, reply: Reply<Vec<Submitted>>);
    /// Lease up to `n` due jobs of `queues` to `worker`, in dispatch order.
    fn claim(&self, queues: Vec<String>, n: usize, worker: String, pid: i32, reply: Reply<Claimed>);
    /// End an attempt, if `token` is still the job's lease; the next state follows
    /// `jobs::after_attempt`.
    fn finish(
        &self,
        id: i64,
        token: i64,
        outcome: Outcome,
        backoff: RetryBackoff,
        output: Option<AttemptOutput>,
        reply: Reply<Finished>,
    );
    /// A worker's progress on a job it holds (dropped when the token is stale).
    fn progress(&self, id: i64, token: i64, progress: Option<f64>, message: Option<String>);
    fn cancel(&self, id: i64, reply: Reply<CancelResult>);
    /// `failed` or `cancelled` → `queued`, with a fresh attempt budget.
    fn retry(&self, id: i64, reply: Reply<Submitted>);
    /// Delete finished jobs past their retention: (queue, succeeded before, failed or
    /// cancelled before), in ms.
    fn prune(&self, rules: Vec<(String, i64, i64)>, reply: Reply<u64>);
    /// Renew this run's lease: it lives as long as the supervisor renews it.
    fn renew(&self);
    fn overview(&self, queues: Vec<String>, now_ms: i64, reply: Reply<Overview>);
    fn list(&self, filter: JobFilter, reply: Reply<Page>);
    fn get(&self, id: i64, reply: Reply<JobRecord>);
    /// Notices that jobs were added to a queue (`*`: any queue) by someone other than
    /// this daemon, where the store hears of them; taken once.
    fn take_wakeups(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        None
    }
}

/// The handle everyone uses. Cheap to clone.
#[derive(Clone)]
pub struct Journal(Arc<dyn JobStore>);

/// Wait for a callback's answer.
async fn answer<T: Send + 'static>(ask: impl FnOnce(Reply<T>)) -> Result<T, JournalError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    ask(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await.unwrap_or(Err(JournalError::Closed))
}

impl Journal {
    pub fn new(store: impl JobStore + 'static) -> Journal {
        Journal(Arc::new(store))
    }

    pub fn location(&self) -> String {
        self.0.location()
    }

    pub fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }

    pub fn stats(&self) -> Stats {
        self.0.stats()
    }

    pub fn submit(
        &self,
        jobs: Vec<NewJob>,
        reply: impl FnOnce(Result<Vec<Submitted>, JournalError>) + Send + 'static,
    ) {
        self.0.submit(jobs, Box::new(reply));
    }

    pub fn claim(
        &self,
        queues: Vec<String>,
        n: usize,
        worker: String,
        pid: i32,
        reply: impl FnOnce(Result<Claimed, JournalError>) + Send + 'static,
    ) {
        self.0.claim(queues, n, worker, pid, Box::new(reply));
    }

    pub fn finish(
        &self,
        id: i64,
        token: i64,
        outcome: Outcome,
        backoff: RetryBackoff,
        output: Option<AttemptOutput>,
        reply: impl FnOnce(Result<Finished, JournalError>) + Send + 'static,
    ) {
        self.0
            .finish(id, token, outcome, backoff, output, Box::new(reply));
    }

    pub fn progress(&self, id: i64, token: i64, progress: Option<f64>, message: Option<String>) {
        self.0.progress(id, token, progress, message);
    }

    pub fn cancel(
        &self,
        id: i64,
        reply: impl FnOnce(Result<CancelResult, JournalError>) + Send + 'static,
    ) {
        self.0.cancel(id, Box::new(reply));
    }

    pub fn prune(
        &self,
        rules: Vec<(String, i64, i64)>,
        reply: impl FnOnce(Result<u64, JournalError>) + Send + 'static,
    ) {
        self.0.prune(rules, Box::new(reply));
    }

    pub fn renew(&self) {
        self.0.renew();
    }

    pub fn take_wakeups(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        self.0.take_wakeups()
    }

    /// Submit and wait for the commit.
    pub async fn submit_wait(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>, JournalError> {
        answer(|r| self.0.submit(jobs, r)).await
    }

    /// `failed` or `cancelled` → `queued`, with a fresh attempt budget.
    pub async fn retry_wait(&self, id: i64) -> Result<Submitted, JournalError> {
        answer(|r| self.0.retry(id, r)).await
    }

    pub async fn overview(
        &self,
        queues: Vec<String>,
        now_ms: i64,
    ) -> Result<Overview, JournalError> {
        answer(|r| self.0.overview(queues, now_ms, r)).await
    }

    pub async fn list(&self, filter: JobFilter) -> Result<Page, JournalError> {
        answer(|r| self.0.list(filter, r)).await
    }

    pub async fn get(&self, id: i64) -> Result<JobRecord, JournalError> {
        answer(|r| self.0.get(id, r)).await
    }
}
