//! The PostgreSQL [`JobStore`]: one thread with a runtime of its own that owns the
//! connection, and a queue of operations in front of it, as with SQLite.
//!
//! The database may go away and come back. While it is away the daemon goes on
//! supervising: submits, claims, cancels and reads are refused with an error that says
//! so (nothing is acknowledged that is not stored), `/health` and `STATUS=` name the
//! trouble through [`Stats::error`], and the thread reconnects with a capped backoff.
//! Completions and progress of attempts that ran meanwhile are kept (at most
//! [`KEPT_AT_MOST`]) and written once the database is back: they are fenced by their
//! lease token, so a late one changes nothing if the job was taken back meanwhile.
//!
//! The operation queue is unbounded, as SQLite's: what fills it is bounded before it
//! (claims by the free worker slots, submits by the control server's connections,
//! completions by the running jobs).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::leases::{self, Taker};
use super::{connect, describe, register, renew, schema};
use crate::config::RetryBackoff;
use crate::jobs::{JobState, Outcome};
use crate::journal::{
    AttemptOutput, CancelResult, Claimed, Finished, JobFilter, JobStore, Journal, JournalError,
    LIST_TEXT, NewJob, Overview, PAGE_BYTES, Page, Reclaimed, Reply, Stats, Submitted, now_ms,
};
use crate::model::{AttemptRecord, JobRecord, QueueCounts};

/// How long a run's lease lasts without a renewal (renewed every `RENEW_EVERY`).
pub const HOST_TTL: Duration = Duration::from_secs(30);
/// A daemon whose last renewal was sent longer than `HOST_TTL - FENCE_MARGIN` ago stops
/// the attempts it holds, so that they are gone before another host may take the jobs
/// back (once the lease has run out, and at the next of its renewals, up to 10 s later).
pub const FENCE_MARGIN: Duration = Duration::from_secs(10);
/// Completions and progress kept while the database is out of reach, at most.
pub const KEPT_AT_MOST: usize = 100_000;
/// The longest wait between two attempts to reach the database.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Operations taken from the queue at once, at most (completions among them share one
/// transaction).
const BATCH_AT_MOST: usize = 256;
/// How often the counts of queued and running jobs are read again (other hosts change
/// them too); each comes from its state's partial index.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// How often finished jobs are counted again. That count reads every finished job kept
/// (an index-only scan of 1,000,000 takes about 0.1 s), on the connection claims and
/// completions wait for, so not every second.
const FINISHED_COUNT_EVERY: Duration = Duration::from_secs(10);
/// A submit tells listening daemons of its queue at most this often (per queue).
const NOTIFY_EVERY: Duration = Duration::from_millis(100);
/// Notices of added jobs waiting for the supervisor, at most; more are dropped (the
/// once-a-second look finds their jobs).
const WAKEUPS_QUEUED: usize = 1024;

/// What a daemon needs to open the PostgreSQL journal.
pub struct Options {
    pub url: String,
    pub schema: String,
    pub host: String,
    pub run_id: String,
    pub boot_id: String,
    /// No LISTEN connection (behind a pooler in transaction mode).
    pub poll_only: bool,
}

enum Op {
    Submit(Vec<NewJob>, Reply<Vec<Submitted>>),
    Claim {
        queues: Vec<String>,
        n: usize,
        worker: String,
        pid: i32,
        reply: Reply<Claimed>,
    },
    Finish {
        id: i64,
        token: i64,
        outcome: Outcome,
        backoff: RetryBackoff,
        output: Option<AttemptOutput>,
        reply: Reply<Finished>,
    },
    Progress {
        id: i64,
        token: i64,
        progress: Option<f64>,
        message: Option<String>,
    },
    Cancel(i64, Reply<CancelResult>),
    Retry(i64, Reply<Submitted>),
    Prune(Vec<(String, i64, i64)>, Reply<u64>),
    Renew,
    Overview(Vec<String>, i64, Reply<Overview>),
    List(JobFilter, Reply<Page>),
    Get(i64, Reply<JobRecord>),
}

pub struct Postgres {
    tx: mpsc::UnboundedSender<Op>,
    stats: Arc<Mutex<Stats>>,
    location: String,
    wakeups: Mutex<Option<mpsc::Receiver<String>>>,
}

/// Held by the daemon until it exits: its close waits for the last writes.
pub struct Owner {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Owner {
    pub fn close(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What an operation of a group answered.
enum Answer {
    Finished(Finished),
    Claimed(Claimed),
}

/// The thread's side: the connection and who this run is.
struct Conn {
    opts: Options,
    client: Option<Client>,
    /// The hot statements, prepared on `client`'s connection.
    hot: Option<leases::Hot>,
    stats: Arc<Mutex<Stats>>,
    metrics: Arc<crate::metrics::Metrics>,
    location: PathBuf,
    /// This run is registered (its host row exists).
    registered: bool,
    /// The jobs this run has handed to the supervisor and not yet seen finished.
    /// (Their queues, so that this run's own ends count at once between two counts of
    /// finished jobs.)
    held: HashMap<i64, String>,
    /// A claim's connection broke before its answer came: it may have taken jobs that
    /// nobody knows of, to be put back once the database is reachable again.
    claim_lost: bool,
    /// When each queue's last notice went out.
    notified: HashMap<String, Instant>,
    /// Jobs claimed by this run (see [`upkeep`](super::upkeep)).
    claimed: Arc<AtomicU64>,
    /// When finished jobs were last counted.
    finished_counted: Option<Instant>,
}

/// Open the journal: connect, bring the schema up to date, register this run and take
/// back the jobs of this host's earlier runs. A wrong URL, a schema of a newer steward or
/// missing privileges stop the start; an unreachable server does not (the daemon starts,
/// says so, and keeps trying).
pub fn open(
    opts: Options,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(Journal, Owner, Vec<Reclaimed>), String> {
    let location = format!(
        "PostgreSQL schema {} (this host: {})",
        opts.schema, opts.host
    );
    let stats = Arc::new(Mutex::new(Stats::default()));
    let (tx, rx) = mpsc::unbounded_channel();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let mut conn = Conn {
        opts,
        client: None,
        hot: None,
        stats: stats.clone(),
        metrics,
        location: PathBuf::from(&location),
        registered: false,
        held: HashMap::new(),
        claim_lost: false,
        notified: HashMap::new(),
        claimed: Arc::new(AtomicU64::new(0)),
        finished_counted: None,
    };
    let upkeep = (
        conn.opts.url.clone(),
        conn.opts.schema.clone(),
        conn.claimed.clone(),
    );
    let (wake_tx, wake_rx) = mpsc::channel(WAKEUPS_QUEUED);
    let listen = (!conn.opts.poll_only).then(|| {
        (
            conn.opts.url.clone(),
            schema::channel(&conn.opts.schema),
            wake_tx,
            conn.metrics.clone(),
        )
    });
    let thread = std::thread::Builder::new()
        .name("steward-journal".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = first_tx.send(Err(format!("cannot start the journal's runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let first = conn.reach().await;
                let go_on = !matches!(first, Err(Reach::Fatal(_)));
                let _ = first_tx.send(first.map_err(Reach::into_message));
                if go_on {
                    if let Some((url, channel, tx, metrics)) = listen {
                        tokio::spawn(listen_for_jobs(url, channel, tx, metrics));
                    }
                    let (url, schema, claimed) = upkeep;
                    tokio::spawn(super::upkeep::vacuum_when_due(url, schema, claimed));
                    conn.serve(rx).await;
                }
            });
        })
        .map_err(|e| format!("cannot start the journal thread: {e}"))?;
    let reclaimed = match first_rx.recv() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if stats.lock().is_ok_and(|s| s.error.is_some()) => {
            tracing::error!("{e}; steward starts anyway and keeps trying");
            Vec::new()
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => return Err("the journal thread ended at start".into()),
    };
    Ok((
        Journal::new(Postgres {
            tx,
            stats,
            location,
            wakeups: Mutex::new(Some(wake_rx)),
        }),
        Owner {
            thread: Some(thread),
        },
        reclaimed,
    ))
}

/// Why the database could not be used.
enum Reach {
    /// Out of reach for now: try again.
    Away(String),
    /// Wrong in a way that retrying does not mend (the URL, the schema's version, the
    /// role's privileges).
    Fatal(String),
}

impl Reach {
    fn into_message(self) -> String {
        match self {
            Reach::Away(m) | Reach::Fatal(m) => m,
        }
    }
}

fn ms(col: &str) -> String {
    format!("(extract(epoch FROM {col}) * 1000)::bigint")
}

fn count(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

impl Conn {
    fn schema(&self) -> &str {
        &self.opts.schema
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut s) = self.stats.lock() {
            s.error = e;
        }
    }

    /// A renewal (or registration) sent at `sent` landed: leases are safe until then.
    fn lease_landed(&self, sent: Instant) {
        if let Ok(mut st) = self.stats.lock() {
            st.lease_valid_until = sent.checked_add(HOST_TTL - FENCE_MARGIN);
        }
    }

    fn away(&self, detail: &str) -> JournalError {
        JournalError::Io {
            path: self.location.clone(),
            detail: format!("the database is out of reach ({detail}); steward keeps trying"),
        }
    }

    /// Connect, migrate and register (the first time) or renew (after a reconnect); once
    /// registered, the jobs of this host's earlier runs come back.
    async fn reach(&mut self) -> Result<Vec<Reclaimed>, Reach> {
        let mut client = match connect(&self.opts.url).await {
            Ok(c) => c,
            Err(e) if e.contains("URL is not valid") => return Err(Reach::Fatal(e)),
            Err(e) => {
                self.set_error(Some(format!("the job journal is out of reach: {e}")));
                return Err(Reach::Away(e));
            }
        };
        if let Err(e) = schema::migrate(&mut client, &self.opts.schema).await {
            return Err(match e {
                schema::MigrateError::Other { .. } if client.is_closed() => {
                    Reach::Away(e.to_string())
                }
                e => Reach::Fatal(e.to_string()),
            });
        }
        let schema = self.opts.schema.clone();
        let sent = Instant::now();
        if !self.registered {
            register(
                &mut client,
                &schema,
                &self.opts.host,
                &self.opts.run_id,
                &self.opts.boot_id,
                HOST_TTL,
            )
            .await
            .map_err(Reach::Away)?;
            self.registered = true;
            self.lease_landed(sent);
        } else {
            if self.claim_lost {
                self.put_back_lost_claims(&client)
                    .await
                    .map_err(Reach::Away)?;
            }
            self.keep_lease(&mut client).await.map_err(Reach::Away)?;
        }
        let rescued = leases::rescue(&mut client, &schema)
            .await
            .map_err(Reach::Away)?;
        self.hot = Some(
            leases::Hot::prepare(&client, &schema)
                .await
                .map_err(Reach::Away)?,
        );
        self.client = Some(client);
        self.set_error(None);
        self.refresh_counts().await;
        Ok(self.note_rescued(rescued))
    }

    /// Jobs a claim took for this run whose answer was lost with the connection: back to
    /// the queue, their attempt not counted (as a job claimed but never handed out).
    async fn put_back_lost_claims(&mut self, client: &Client) -> Result<(), String> {
        let s = self.opts.schema.clone();
        let held: Vec<i64> = self.held.keys().copied().collect();
        let rows = client
            .query(
                &format!(
                    "UPDATE {s}.jobs SET state = 'queued', tries = greatest(tries - 1, 0),
                         lease_host = NULL, lease_run = NULL, worker = NULL, updated_at = now()
                     WHERE state = 'running' AND lease_run = $1 AND NOT (id = ANY($2))
                     RETURNING id"
                ),
                &[&self.opts.run_id, &held],
            )
            .await
            .map_err(db)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        client
            .execute(
                &format!(
                    "UPDATE {s}.attempts a SET ended_at = now(), outcome = 'released',
                         error = 'the claim was lost with the connection to the database'
                     FROM {s}.jobs j WHERE a.job_id = j.id AND a.attempt = j.attempts
                       AND a.ended_at IS NULL AND j.id = ANY($1)"
                ),
                &[&ids],
            )
            .await
            .map_err(db)?;
        if !ids.is_empty() {
            tracing::warn!(
                "put {} jobs back in the queue: a claim took them while the connection to the database broke, and no worker got them",
                ids.len()
            );
        }
        self.claim_lost = false;
        Ok(())
    }

    /// Renew this run's lease; one that expired (the database was out of reach for
    /// longer than its ttl) is not revived: this daemon registers as a new run.
    async fn keep_lease(&mut self, client: &mut Client) -> Result<(), String> {
        let schema = self.opts.schema.clone();
        let sent = Instant::now();
        if renew(client, &schema, &self.opts.run_id, HOST_TTL).await? {
            self.lease_landed(sent);
            return Ok(());
        }
        let old = std::mem::replace(
            &mut self.opts.run_id,
            format!("{:016x}", rand::random::<u64>()),
        );
        tracing::error!(
            "this daemon's lease in the shared journal (run {old}) expired: the database was out of reach for longer than {}s, so other hosts may run the jobs it held; it goes on as run {}",
            HOST_TTL.as_secs(),
            self.opts.run_id
        );
        let sent = Instant::now();
        register(
            client,
            &schema,
            &self.opts.host,
            &self.opts.run_id,
            &self.opts.boot_id,
            HOST_TTL,
        )
        .await?;
        self.lease_landed(sent);
        Ok(())
    }

    fn note_rescued(&self, rescued: Vec<leases::Rescued>) -> Vec<Reclaimed> {
        if !rescued.is_empty() {
            self.metrics
                .jobs_reclaimed("host_lease", rescued.len() as u64);
        }
        rescued
            .into_iter()
            .map(|r| Reclaimed {
                id: r.id,
                queue: r.queue,
                attempt: 0,
                worker: Some(format!("host {}", r.host)),
                now: r.now,
            })
            .collect()
    }

    async fn serve(&mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut kept: VecDeque<Op> = VecDeque::new();
        let mut delay = Duration::from_millis(500);
        let mut next_count = Instant::now() + COUNT_EVERY;
        loop {
            if self.client.is_none() {
                match self.reach().await {
                    Ok(_) => {
                        tracing::info!(
                            "the job journal is reachable again ({} completions kept meanwhile)",
                            kept.len()
                        );
                        delay = Duration::from_millis(500);
                    }
                    Err(why) => {
                        let why = why.into_message();
                        // Until the next try: refuse what cannot wait, keep what must land.
                        let until = tokio::time::Instant::now() + delay;
                        loop {
                            match tokio::time::timeout_at(until, rx.recv()).await {
                                Ok(Some(op)) => self.refuse_or_keep(op, &mut kept, &why),
                                Ok(None) => return,
                                Err(_) => break,
                            }
                        }
                        delay = (delay * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
            while let Some(op) = kept.pop_front() {
                if let Err(op) = self.apply(op).await {
                    kept.push_front(op);
                    break;
                }
            }
            if self.client.is_none() {
                continue;
            }
            let wait = next_count.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(op)) => {
                    // What else has arrived goes with it: completions in a row share
                    // one transaction (one commit).
                    let mut ops = vec![op];
                    while ops.len() < BATCH_AT_MOST {
                        match rx.try_recv() {
                            Ok(op) => ops.push(op),
                            Err(_) => break,
                        }
                    }
                    self.apply_all(ops, &mut kept).await;
                }
                Ok(None) => return,
                Err(_) => {}
            }
            if Instant::now() >= next_count {
                self.refresh_counts().await;
                next_count = Instant::now() + COUNT_EVERY;
            }
        }
    }

    /// Carry out `ops` in order; claims and completions in a row are written in one
    /// transaction (one commit for all of them).
    async fn apply_all(&mut self, ops: Vec<Op>, kept: &mut VecDeque<Op>) {
        let mut group: Vec<Op> = Vec::new();
        for op in ops {
            if matches!(op, Op::Finish { .. } | Op::Claim { .. }) {
                group.push(op);
                continue;
            }
            self.apply_group(std::mem::take(&mut group), kept).await;
            if let Err(op) = self.apply(op).await {
                self.refuse_or_keep(op, kept, "the connection was lost");
            }
        }
        self.apply_group(group, kept).await;
    }

    /// Claims and completions (only those) in one transaction; if it fails while the
    /// connection lives, each is carried out in a transaction of its own, so that one
    /// bad operation cannot hold back the others.
    async fn apply_group(&mut self, group: Vec<Op>, kept: &mut VecDeque<Op>) {
        if group.is_empty() {
            return;
        }
        let (Some(mut client), Some(hot)) = (self.client.take(), self.hot.take()) else {
            for op in group {
                self.refuse_or_keep(op, kept, "the connection was lost");
            }
            return;
        };
        let result = self.in_one_transaction(&mut client, &hot, &group).await;
        let closed = client.is_closed();
        if closed {
            self.set_error(Some(
                "the job journal is out of reach: the connection to PostgreSQL was lost".into(),
            ));
        } else {
            self.client = Some(client);
            self.hot = Some(hot);
        }
        match result {
            Ok(answers) => {
                for (op, answer) in group.into_iter().zip(answers) {
                    match (op, answer) {
                        (Op::Finish { id, reply, .. }, Some(Answer::Finished(d))) => {
                            let queue = self.held.remove(&id);
                            if let (Some(q), Finished::Applied { state, .. }) = (queue, &d) {
                                self.count_end(&q, *state);
                            }
                            reply(Ok(d));
                        }
                        (Op::Claim { reply, .. }, Some(Answer::Claimed(c))) => {
                            self.held
                                .extend(c.jobs.iter().map(|j| (j.id, j.queue.clone())));
                            self.claimed
                                .fetch_add(c.jobs.len() as u64, Ordering::Relaxed);
                            reply(Ok(c));
                        }
                        _ => {}
                    }
                }
            }
            Err(_) if closed => {
                if group.iter().any(|op| matches!(op, Op::Claim { .. })) {
                    self.claim_lost = true;
                }
                for op in group {
                    self.refuse_or_keep(op, kept, "the connection was lost");
                }
            }
            Err(e) if group.len() == 1 => {
                let err = JournalError::Io {
                    path: self.location.clone(),
                    detail: e,
                };
                for op in group {
                    match op {
                        Op::Finish { id, reply, .. } => {
                            self.held.remove(&id);
                            reply(Err(err.clone()));
                        }
                        Op::Claim { reply, .. } => reply(Err(err.clone())),
                        _ => {}
                    }
                }
            }
            Err(_) => {
                for op in group {
                    Box::pin(self.apply_group(vec![op], kept)).await;
                }
            }
        }
    }

    /// The group's operations in one transaction: successful ends in one statement, other
    /// ends one by one, then every claim (sent together). The answers are in the
    /// group's order.
    ///
    /// A group of successes and claims only, the usual kind, is sent in one write
    /// ([`leases::succeed_and_claim`]).
    async fn in_one_transaction(
        &self,
        client: &mut Client,
        hot: &leases::Hot,
        group: &[Op],
    ) -> Result<Vec<Option<Answer>>, String> {
        let s = self.opts.schema.as_str();
        let mut answers: Vec<Option<Answer>> = group.iter().map(|_| None).collect();
        let mut succeeded = Vec::new();
        let mut others = Vec::new();
        let mut at = Vec::new();
        let mut requests = Vec::new();
        for (i, op) in group.iter().enumerate() {
            match op {
                Op::Finish {
                    id,
                    token,
                    outcome: Outcome::Succeeded { result },
                    output: None,
                    ..
                } => succeeded.push((i, (*id, *token, result.as_deref()))),
                Op::Finish { .. } => others.push(i),
                Op::Claim {
                    queues,
                    n,
                    worker,
                    pid,
                    ..
                } => {
                    at.push(i);
                    requests.push(leases::ClaimRequest {
                        queues,
                        n: *n,
                        taker: Taker {
                            host: &self.opts.host,
                            run_id: &self.opts.run_id,
                            worker,
                            pid: *pid,
                        },
                    });
                }
                _ => {}
            }
        }
        let done: Vec<_> = succeeded.iter().map(|(_, d)| *d).collect();
        let (applied, mut claimed) = if others.is_empty() {
            leases::succeed_and_claim(client, hot, &done, &requests).await?
        } else {
            let tx = client.transaction().await.map_err(db)?;
            for &i in &others {
                if let Op::Finish {
                    id,
                    token,
                    outcome,
                    backoff,
                    output,
                    ..
                } = &group[i]
                {
                    answers[i] = Some(Answer::Finished(
                        leases::finish_in(&tx, s, *id, *token, outcome, backoff, output.as_ref())
                            .await?,
                    ));
                }
            }
            let applied = if done.is_empty() {
                HashMap::new()
            } else {
                leases::succeed_many(&tx, hot, &done).await?
            };
            let claimed = if requests.is_empty() {
                Vec::new()
            } else {
                leases::claim_many(&tx, hot, &requests).await?
            };
            tx.commit().await.map_err(db)?;
            (applied, claimed)
        };
        // Committed: what is no longer in doubt.
        if let Err(e) = leases::note_next_runs(&*client, hot, &requests, &mut claimed).await {
            tracing::debug!("{e}");
        }
        for (i, (id, _, _)) in succeeded {
            answers[i] = Some(Answer::Finished(match applied.get(&id) {
                Some(&run_at_ms) => Finished::Applied {
                    state: JobState::Succeeded,
                    run_at_ms,
                    reason: None,
                },
                None => Finished::Stale,
            }));
        }
        for (i, c) in at.into_iter().zip(claimed) {
            answers[i] = Some(Answer::Claimed(c));
        }
        Ok(answers)
    }

    /// While the database is away: completions and progress wait (bounded), the rest
    /// is refused.
    fn refuse_or_keep(&self, op: Op, kept: &mut VecDeque<Op>, why: &str) {
        match op {
            Op::Finish { .. } | Op::Progress { .. } if kept.len() < KEPT_AT_MOST => {
                kept.push_back(op)
            }
            Op::Finish { id, reply, .. } => {
                tracing::error!(
                    JOB_ID = id,
                    "the end of job {id} cannot be written: the database is out of reach and {KEPT_AT_MOST} completions wait already; the job will be taken back when this run's lease ends"
                );
                reply(Err(self.away(why)));
            }
            Op::Progress { .. } | Op::Renew => {}
            Op::Submit(_, reply) => reply(Err(self.away(why))),
            Op::Claim { reply, .. } => reply(Err(self.away(why))),
            Op::Cancel(_, reply) => reply(Err(self.away(why))),
            Op::Retry(_, reply) => reply(Err(self.away(why))),
            Op::Prune(_, reply) => reply(Err(self.away(why))),
            Op::Overview(_, _, reply) => reply(Err(self.away(why))),
            Op::List(_, reply) => reply(Err(self.away(why))),
            Op::Get(_, reply) => reply(Err(self.away(why))),
        }
    }

    /// Carry out one operation; `Err(op)`, unanswered, if the connection broke under it.
    async fn apply(&mut self, op: Op) -> Result<(), Op> {
        if matches!(op, Op::Finish { .. } | Op::Claim { .. }) {
            // The same statements as in a group, in a transaction of its own; what the
            // lost connection left unanswered comes back.
            let mut lost = VecDeque::new();
            self.apply_group(vec![op], &mut lost).await;
            return lost.pop_front().map_or(Ok(()), Err);
        }
        let Some(mut client) = self.client.take() else {
            return Err(op);
        };
        let result = self.apply_on(&mut client, op).await;
        if !client.is_closed() {
            self.client = Some(client);
        } else {
            self.set_error(Some(
                "the job journal is out of reach: the connection to PostgreSQL was lost".into(),
            ));
        }
        result
    }

    async fn apply_on(&mut self, c: &mut Client, op: Op) -> Result<(), Op> {
        let schema = self.opts.schema.clone();
        let s = schema.as_str();
        let io = |e: String| JournalError::Io {
            path: self.location.clone(),
            detail: e,
        };
        let read = |e: String| JournalError::Read {
            path: self.location.clone(),
            detail: e,
        };
        macro_rules! answer {
            ($result:expr, $op:expr, $reply:ident, $map:expr) => {{
                let r = $result;
                if r.is_err() && c.is_closed() {
                    return Err($op);
                }
                $reply(r.map_err($map));
            }};
        }
        match op {
            Op::Submit(jobs, reply) => {
                let now = Instant::now();
                let notify: Vec<String> = jobs
                    .iter()
                    .map(|j| j.queue.clone())
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .filter(|q| {
                        self.notified
                            .get(q)
                            .is_none_or(|t| now.saturating_duration_since(*t) >= NOTIFY_EVERY)
                    })
                    .collect();
                let r = submit(c, s, &jobs, &notify).await;
                if r.is_ok() {
                    for q in notify {
                        self.notified.insert(q, now);
                    }
                }
                // Refused as never stored if the connection broke before the commit; an
                // uncertain end is said as such.
                if r.is_err() && c.is_closed() && !matches!(r, Err(JournalError::Uncertain(_))) {
                    return Err(Op::Submit(jobs, reply));
                }
                reply(r);
            }
            // Carried out by `apply` as a group of one.
            op @ (Op::Claim { .. } | Op::Finish { .. }) => return Err(op),
            Op::Progress {
                id,
                token,
                progress,
                message,
            } => {
                let r = c
                    .execute(
                        &format!(
                            "UPDATE {s}.jobs SET progress = $3, progress_message = $4, updated_at = now()
                             WHERE id = $1 AND lease_token = $2 AND state = 'running'"
                        ),
                        &[&id, &token, &progress, &message],
                    )
                    .await;
                if let Err(e) = r {
                    if c.is_closed() {
                        return Err(Op::Progress {
                            id,
                            token,
                            progress,
                            message,
                        });
                    }
                    tracing::warn!(
                        JOB_ID = id,
                        "cannot write the progress of job {id}: {}",
                        describe(&e)
                    );
                }
            }
            Op::Cancel(id, reply) => {
                let r = cancel(c, s, id).await;
                if r.is_err() && c.is_closed() {
                    return Err(Op::Cancel(id, reply));
                }
                reply(r);
            }
            Op::Retry(id, reply) => {
                let r = retry(c, s, id).await;
                if r.is_err() && c.is_closed() {
                    return Err(Op::Retry(id, reply));
                }
                reply(r);
            }
            Op::Prune(rules, reply) => {
                let r = prune(c, s, &rules).await;
                answer!(r, Op::Prune(rules, reply), reply, io)
            }
            Op::Renew => {
                let r = self.keep_lease(c).await;
                let r = match r {
                    Ok(()) => leases::rescue(c, s).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(rescued) => {
                        for j in self.note_rescued(rescued) {
                            tracing::warn!(JOB_ID = j.id, QUEUE = %j.queue,
                                "job {} was running on {}, whose lease in the shared journal expired; it is {} again",
                                j.id, j.worker.as_deref().unwrap_or("another host"), j.now.as_str());
                        }
                    }
                    Err(_) if c.is_closed() => return Err(Op::Renew),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            Op::Overview(queues, now, reply) => {
                let r = overview(c, s, &queues, now).await;
                answer!(r, Op::Overview(queues, now, reply), reply, read)
            }
            Op::List(filter, reply) => {
                let r = list(c, s, &filter).await;
                answer!(r, Op::List(filter, reply), reply, read)
            }
            Op::Get(id, reply) => {
                let r = get(c, s, id).await;
                if r.is_err() && c.is_closed() {
                    return Err(Op::Get(id, reply));
                }
                reply(r.and_then(|j| j.ok_or(JournalError::NotFound(id))));
            }
        }
        Ok(())
    }

    /// One of this run's jobs ended in `state`: counted at once (the next count of
    /// finished jobs, which sees every host's, replaces it).
    fn count_end(&self, queue: &str, state: JobState) {
        let Ok(mut st) = self.stats.lock() else {
            return;
        };
        let q = st.queues.entry(queue.to_string()).or_default();
        match state {
            JobState::Succeeded => q.succeeded += 1,
            JobState::Failed => q.failed += 1,
            JobState::Cancelled => q.cancelled += 1,
            JobState::Queued | JobState::Running => return,
        }
        q.running = q.running.saturating_sub(1);
    }

    /// Count the jobs by queue and state again: unfinished ones every time, finished ones
    /// every [`FINISHED_COUNT_EVERY`] (in between, the last count stands).
    async fn refresh_counts(&mut self) {
        let Some(c) = &self.client else { return };
        let s = self.schema();
        let now = Instant::now();
        let finished_too = self
            .finished_counted
            .is_none_or(|t| now.saturating_duration_since(t) >= FINISHED_COUNT_EVERY);
        // One partial index each (a plain GROUP BY reads the whole table).
        let mut sql = format!(
            "SELECT queue, 'queued', count(*) FROM {s}.jobs WHERE state = 'queued' GROUP BY queue
             UNION ALL SELECT queue, 'queued', count(*) FROM {s}.jobs WHERE state = 'scheduled' GROUP BY queue
             UNION ALL SELECT queue, 'running', count(*) FROM {s}.jobs WHERE state = 'running' GROUP BY queue"
        );
        if finished_too {
            sql.push_str(&format!(
                " UNION ALL SELECT queue, state, count(*) FROM {s}.jobs_done GROUP BY queue, state"
            ));
        }
        let Ok(rows) = c.query(&sql, &[]).await else {
            return;
        };
        let Ok(mut st) = self.stats.lock() else {
            return;
        };
        let mut queues: HashMap<String, QueueCounts> = HashMap::new();
        if !finished_too {
            for (name, old) in &st.queues {
                queues.insert(
                    name.clone(),
                    QueueCounts {
                        succeeded: old.succeeded,
                        failed: old.failed,
                        cancelled: old.cancelled,
                        ..QueueCounts::default()
                    },
                );
            }
        }
        for r in rows {
            let q = queues.entry(r.get(0)).or_default();
            let n = u64::try_from(r.get::<_, i64>(2)).unwrap_or(0);
            match r.get::<_, &str>(1) {
                "queued" => q.queued += n,
                "running" => q.running += n,
                "succeeded" => q.succeeded += n,
                "failed" => q.failed += n,
                "cancelled" => q.cancelled += n,
                _ => {}
            }
        }
        queues.retain(|_, q| q.total() > 0);
        st.queues = queues;
        drop(st);
        if finished_too {
            self.finished_counted = Some(now);
        }
    }
}

fn db(e: tokio_postgres::Error) -> String {
    describe(&e)
}

/// A failed write to schema `s`, as the API reports it.
fn write_error(s: &str) -> impl Fn(tokio_postgres::Error) -> JournalError + Copy + '_ {
    move |e| JournalError::Io {
        path: PathBuf::from(format!("PostgreSQL schema {s}")),
        detail: describe(&e),
    }
}

/// The keyed jobs `leaders` of `jobs` (one for each queue and key): stored in one
/// statement where no unfinished job of the queue holds the key, else answered with the
/// job that does. A key whose holder finished between the two statements is tried again.
async fn keyed_submit(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    jobs: &[NewJob],
    leaders: &[usize],
    out: &mut [Option<Submitted>],
) -> Result<(), String> {
    let mut left: Vec<usize> = leaders.to_vec();
    // Each round settles every key that is not raced; a bound against a pathological
    // race that would never settle.
    for _ in 0..100 {
        if left.is_empty() {
            return Ok(());
        }
        let queues: Vec<&str> = left.iter().map(|&i| jobs[i].queue.as_str()).collect();
        let keys: Vec<&str> = left
            .iter()
            .map(|&i| jobs[i].key.as_deref().unwrap_or_default())
            .collect();
        let payloads: Vec<&str> = left.iter().map(|&i| jobs[i].payload.as_str()).collect();
        let timeouts: Vec<Option<i64>> = left.iter().map(|&i| jobs[i].timeout_ms).collect();
        let priorities: Vec<i64> = left.iter().map(|&i| jobs[i].priority).collect();
        let run_at: Vec<i64> = left.iter().map(|&i| jobs[i].run_at_ms).collect();
        let attempts: Vec<i32> = left
            .iter()
            .map(|&i| i32::try_from(jobs[i].max_attempts).unwrap_or(i32::MAX))
            .collect();
        // Inserted: (ord, id, true); held by an unfinished job already: (ord, its id,
        // false) with its run time.
        let rows = tx
            .query(
                &format!(
                    "WITH n AS MATERIALIZED (
                         SELECT u.* FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                                                $5::int[], $6::bigint[], $7::text[])
                             WITH ORDINALITY AS u(queue, unique_key, priority, run_at, max_attempts,
                                                  timeout_ms, payload, ord)),
                     i AS (
                         INSERT INTO {s}.jobs (id, queue, state, priority, run_at, max_attempts,
                                               timeout_ms, unique_key)
                         SELECT nextval('{s}.jobs_id_seq'), queue,
                             CASE WHEN run_at > $8::bigint THEN 'scheduled' ELSE 'queued' END,
                             priority, to_timestamp(run_at / 1000.0), max_attempts, timeout_ms,
                             unique_key
                         FROM n ORDER BY ord
                         ON CONFLICT (queue, unique_key)
                             WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')
                             DO NOTHING
                         RETURNING id, queue, unique_key),
                     d AS (
                         INSERT INTO {s}.job_data (job_id, payload)
                         SELECT i.id, n.payload::jsonb FROM i JOIN n USING (queue, unique_key))
                     SELECT n.ord, i.id, true, n.run_at FROM n JOIN i USING (queue, unique_key)"
                ),
                &[
                    &queues, &keys, &priorities, &run_at, &attempts, &timeouts, &payloads,
                    &now_ms(),
                ],
            )
            .await
            .map_err(db)?;
        let mut settled = vec![false; left.len()];
        for r in rows {
            let ord: i64 = r.get(0);
            let Some(k) = usize::try_from(ord - 1).ok().filter(|k| *k < left.len()) else {
                continue;
            };
            settled[k] = true;
            out[left[k]] = Some(Submitted {
                id: r.get(1),
                existing: false,
                run_at_ms: r.get(3),
            });
        }
        let held: Vec<usize> = (0..left.len()).filter(|k| !settled[*k]).collect();
        if !held.is_empty() {
            let hq: Vec<&str> = held.iter().map(|&k| queues[k]).collect();
            let hk: Vec<&str> = held.iter().map(|&k| keys[k]).collect();
            let rows = tx
                .query(
                    &format!(
                        "SELECT u.ord, j.id, {} FROM unnest($1::text[], $2::text[])
                             WITH ORDINALITY AS u(queue, unique_key, ord)
                         JOIN {s}.jobs j ON j.queue = u.queue AND j.unique_key = u.unique_key
                             AND j.state IN ('queued', 'scheduled', 'running')",
                        ms("j.run_at")
                    ),
                    &[&hq, &hk],
                )
                .await
                .map_err(db)?;
            for r in rows {
                let ord: i64 = r.get(0);
                let Some(&k) = usize::try_from(ord - 1).ok().and_then(|o| held.get(o)) else {
                    continue;
                };
                settled[k] = true;
                out[left[k]] = Some(Submitted {
                    id: r.get(1),
                    existing: true,
                    run_at_ms: r.get(2),
                });
            }
        }
        left = (0..left.len())
            .filter(|k| !settled[*k])
            .map(|k| left[k])
            .collect();
    }
    Err(format!(
        "{} jobs with unique keys could not be stored: their keys kept changing hands",
        left.len()
    ))
}

/// Store `jobs` in one transaction, telling listening daemons of the queues in
/// `notify` when it commits.
async fn submit(
    c: &mut Client,
    s: &str,
    jobs: &[NewJob],
    notify: &[String],
) -> Result<Vec<Submitted>, JournalError> {
    let io = |e: String| JournalError::Io {
        path: PathBuf::from(format!("PostgreSQL schema {s}")),
        detail: e,
    };
    let tx = c.transaction().await.map_err(db).map_err(io)?;
    let mut out: Vec<Option<Submitted>> = vec![None; jobs.len()];
    // Jobs without a unique key: all in one statement.
    let plain: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].key.is_none()).collect();
    if !plain.is_empty() {
        let col = |f: &dyn Fn(&NewJob) -> i64| -> Vec<i64> {
            plain.iter().map(|&i| f(&jobs[i])).collect()
        };
        let queues: Vec<&str> = plain.iter().map(|&i| jobs[i].queue.as_str()).collect();
        let payloads: Vec<&str> = plain.iter().map(|&i| jobs[i].payload.as_str()).collect();
        let timeouts: Vec<Option<i64>> = plain.iter().map(|&i| jobs[i].timeout_ms).collect();
        let priorities = col(&|j| j.priority);
        let run_at = col(&|j| j.run_at_ms);
        let attempts: Vec<i32> = plain
            .iter()
            .map(|&i| i32::try_from(jobs[i].max_attempts).unwrap_or(i32::MAX))
            .collect();
        let rows = tx
            .query(
                &format!(
                    "WITH n AS MATERIALIZED (
                         SELECT nextval('{s}.jobs_id_seq') AS id, u.*
                         FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[], $5::bigint[], $6::text[])
                             WITH ORDINALITY AS u(queue, priority, run_at, max_attempts, timeout_ms, payload, ord)),
                     j AS (
                         INSERT INTO {s}.jobs (id, queue, state, priority, run_at, max_attempts, timeout_ms)
                         SELECT id, queue, CASE WHEN run_at > $7::bigint THEN 'scheduled' ELSE 'queued' END,
                             priority, to_timestamp(run_at / 1000.0), max_attempts, timeout_ms
                         FROM n ORDER BY ord),
                     d AS (
                         INSERT INTO {s}.job_data (job_id, payload) SELECT id, payload::jsonb FROM n)
                     SELECT id, ord FROM n"
                ),
                &[&queues, &priorities, &run_at, &attempts, &timeouts, &payloads, &now_ms()],
            )
            .await
            .map_err(db)
            .map_err(io)?;
        for r in rows {
            let ord: i64 = r.get(1);
            let Some(&i) = usize::try_from(ord - 1).ok().and_then(|k| plain.get(k)) else {
                continue;
            };
            out[i] = Some(Submitted {
                id: r.get(0),
                existing: false,
                run_at_ms: jobs[i].run_at_ms,
            });
        }
    }
    // Jobs with a unique key: the first of each (queue, key) in the batch, inserted in
    // one statement where no unfinished job holds the key; the others of the batch
    // share its answer.
    let mut leaders: Vec<usize> = Vec::new();
    let mut followers: Vec<(usize, usize)> = Vec::new();
    {
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, j) in jobs.iter().enumerate() {
            let Some(key) = &j.key else { continue };
            match first.get(&(j.queue.as_str(), key.as_str())) {
                Some(&l) => followers.push((i, l)),
                None => {
                    first.insert((j.queue.as_str(), key.as_str()), i);
                    leaders.push(i);
                }
            }
        }
    }
    if !leaders.is_empty() {
        keyed_submit(&tx, s, jobs, &leaders, &mut out)
            .await
            .map_err(io)?;
    }
    for (i, l) in followers {
        out[i] = out[l].as_ref().map(|leader| Submitted {
            existing: true,
            ..*leader
        });
    }
    let Some(out) = out.into_iter().collect::<Option<Vec<Submitted>>>() else {
        return Err(io("a submitted job got no id from PostgreSQL".to_string()));
    };
    if !notify.is_empty() {
        tx.execute(
            "SELECT pg_notify($1, q) FROM unnest($2::text[]) q",
            &[&schema::channel(s), &notify],
        )
        .await
        .map_err(db)
        .map_err(io)?;
    }
    tx.commit().await.map_err(|e| {
        if e.as_db_error().is_some() {
            // The server answered: it rolled back.
            io(db(e))
        } else {
            JournalError::Uncertain(format!(
                "the connection to PostgreSQL broke while the submit was being committed ({}), so whether its {} jobs were stored is not known: look with `steward jobs` before submitting them again (a submit with a unique key --key is safe to repeat)",
                db(e),
                jobs.len()
            ))
        }
    })?;
    Ok(out)
}

/// Listen on `channel` for notices that jobs were added, and pass each queue on (`*`
/// after every connection: jobs may have been added while nobody listened). A
/// connection that ends is replaced, with a capped backoff.
async fn listen_for_jobs(
    url: String,
    channel: String,
    tx: mpsc::Sender<String>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut delay = Duration::from_millis(500);
    let mut first = true;
    loop {
        if tx.is_closed() {
            return;
        }
        match listen_once(&url, &channel, &tx, &metrics).await {
            Ok(()) => {
                tracing::warn!(
                    "the connection listening for new jobs in the shared journal ended; listening again (meanwhile idle workers look every second)"
                );
                delay = Duration::from_millis(500);
            }
            Err(e) if first => tracing::warn!(
                "cannot listen for new jobs in the shared journal: {e}; idle workers look every second meanwhile"
            ),
            Err(_) => {}
        }
        first = false;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

async fn listen_once(
    url: &str,
    channel: &str,
    tx: &mpsc::Sender<String>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| describe(&e))?;
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    // The connection delivers notices only while it is polled: a task of its own.
    let pump = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if msg_tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(|e| describe(&e))?;
    let _ = tx.try_send("*".to_string());
    while let Some(queue) = msg_rx.recv().await {
        metrics
            .journal_wakeups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Full: the supervisor has notices enough to look; the sweep finds the rest.
        let _ = tx.try_send(queue);
    }
    pump.abort();
    Ok(())
}

async fn cancel(c: &mut Client, s: &str, id: i64) -> Result<CancelResult, JournalError> {
    let io = write_error(s);
    let tx = c.transaction().await.map_err(io)?;
    let Some(row) = tx
        .query_opt(
            &format!("SELECT state, worker, lease_host FROM {s}.jobs WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await
        .map_err(io)?
    else {
        // Finished already, or no such job.
        let done = tx
            .query_opt(
                &format!("SELECT state FROM {s}.jobs_done WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(io)?;
        return match done {
            Some(row) => {
                let state: String = row.get(0);
                Ok(CancelResult::AlreadyFinal(
                    JobState::parse(&state).unwrap_or(JobState::Cancelled),
                ))
            }
            None => Err(JournalError::NotFound(id)),
        };
    };
    let state: String = row.get(0);
    let result = match state.as_str() {
        "queued" | "scheduled" => {
            let to_done = super::schema::move_job(
                s,
                "jobs_done",
                "g",
                &[
                    ("state", "'cancelled'"),
                    ("finished_at", "now()"),
                    ("updated_at", "now()"),
                    ("error", "'cancelled by steward cancel'"),
                ],
            );
            tx.execute(
                &format!("WITH g AS (DELETE FROM {s}.jobs WHERE id = $1 RETURNING *) {to_done}"),
                &[&id],
            )
            .await
            .map_err(io)?;
            CancelResult::Cancelled
        }
        "running" => {
            let worker: Option<String> = row.get(1);
            let host: Option<String> = row.get(2);
            CancelResult::Running {
                worker: match (worker, host) {
                    (Some(w), Some(h)) => Some(format!("{w} on host {h}")),
                    (w, _) => w,
                },
            }
        }
        other => CancelResult::AlreadyFinal(JobState::parse(other).unwrap_or(JobState::Cancelled)),
    };
    tx.commit().await.map_err(io)?;
    Ok(result)
}

async fn retry(c: &mut Client, s: &str, id: i64) -> Result<Submitted, JournalError> {
    let io = write_error(s);
    let tx = c.transaction().await.map_err(io)?;
    let Some(row) = tx
        .query_opt(
            &format!("SELECT state, queue, unique_key FROM {s}.jobs_all WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(io)?
    else {
        return Err(JournalError::NotFound(id));
    };
    let state: String = row.get(0);
    if !matches!(state.as_str(), "failed" | "cancelled") {
        let shown = if state == "scheduled" {
            "queued"
        } else {
            &state
        };
        return Err(JournalError::Invalid(format!(
            "job {id} is {shown}; only failed or cancelled jobs can be retried"
        )));
    }
    let (queue, key): (String, Option<String>) = (row.get(1), row.get(2));
    if let Some(key) = &key {
        let holder = tx
            .query_opt(
                &format!(
                    "SELECT id FROM {s}.jobs WHERE queue = $1 AND unique_key = $2
                     AND state IN ('queued', 'scheduled', 'running')"
                ),
                &[&queue, key],
            )
            .await
            .map_err(io)?;
        if let Some(h) = holder {
            let other: i64 = h.get(0);
            return Err(JournalError::Invalid(format!(
                "job {other} with the same key ({key}) is queued or running; job {id} is left {state}"
            )));
        }
    }
    // Back from `jobs_done` into `jobs`. A unique key taken since the check above makes
    // the insert fail, and nothing changes.
    let to_jobs = super::schema::move_job(
        s,
        "jobs",
        "g",
        &[
            ("state", "'queued'"),
            ("tries", "0"),
            ("crashes", "0"),
            ("interruptions", "0"),
            ("run_at", "now()"),
            ("finished_at", "NULL::timestamptz"),
            ("error", "NULL::text"),
            ("updated_at", "now()"),
        ],
    );
    let Some(row) = tx
        .query_opt(
            &format!(
                "WITH g AS (DELETE FROM {s}.jobs_done WHERE id = $1 AND state IN ('failed', 'cancelled')
                     RETURNING *)
                 {to_jobs} RETURNING {}",
                ms("run_at")
            ),
            &[&id],
        )
        .await
        .map_err(io)?
    else {
        return Err(JournalError::Invalid(format!(
            "job {id} changed while it was retried; look at it again with steward job {id}"
        )));
    };
    let run_at: i64 = row.get(0);
    tx.commit().await.map_err(io)?;
    Ok(Submitted {
        id,
        existing: false,
        run_at_ms: run_at,
    })
}

/// Delete finished jobs past their retention, at most 1,000 per queue and call (their
/// data and history go with them).
async fn prune(c: &Client, s: &str, rules: &[(String, i64, i64)]) -> Result<u64, String> {
    let mut deleted = 0;
    for (queue, succeeded_before, failed_before) in rules {
        let n: i64 = c
            .query_one(
                &format!(
                    "WITH gone AS (
                         DELETE FROM {s}.jobs_done WHERE id IN (
                             SELECT id FROM {s}.jobs_done WHERE queue = $1 AND (
                                 (state = 'succeeded' AND finished_at < to_timestamp($2::bigint / 1000.0))
                                 OR (state IN ('failed', 'cancelled') AND finished_at < to_timestamp($3::bigint / 1000.0)))
                             LIMIT 1000)
                         RETURNING id),
                     d AS (DELETE FROM {s}.job_data WHERE job_id IN (SELECT id FROM gone)),
                     a AS (DELETE FROM {s}.attempts WHERE job_id IN (SELECT id FROM gone))
                     SELECT count(*) FROM gone"
                ),
                &[queue, succeeded_before, failed_before],
            )
            .await
            .map_err(db)?
            .get(0);
        deleted += u64::try_from(n).unwrap_or(0);
    }
    Ok(deleted)
}

fn columns(payloads: bool) -> String {
    format!(
        "j.id, j.queue, j.state, j.priority, {}, d.result::text, j.error, j.attempts, j.tries,
         j.max_attempts, j.crashes, j.interruptions, j.unique_key, {}, {}, {}, j.worker, j.progress,
         j.progress_message",
        if payloads {
            "d.payload::text"
        } else {
            "NULL::text"
        },
        ms("j.created_at"),
        ms("j.run_at"),
        ms("j.finished_at"),
    )
}

fn job_from_row(r: &tokio_postgres::Row) -> JobRecord {
    let state: &str = r.get(2);
    JobRecord {
        id: r.get(0),
        queue: r.get(1),
        state: match state {
            "scheduled" => JobState::Queued,
            s => JobState::parse(s).unwrap_or(JobState::Queued),
        },
        priority: r.get(3),
        payload: r.get(4),
        result: r.get(5),
        result_cut: false,
        error: r.get(6),
        attempts: count(r.get(7)),
        tries: count(r.get(8)),
        max_attempts: count(r.get(9)),
        crashes: count(r.get(10)),
        interruptions: count(r.get(11)),
        key: r.get(12),
        created_ms: r.get(13),
        run_at_ms: r.get(14),
        finished_ms: r.get(15),
        worker: r.get(16),
        progress: r.get(17),
        progress_message: r.get(18),
        history: Vec::new(),
    }
}

async fn list(c: &Client, s: &str, f: &JobFilter) -> Result<Page, String> {
    let states: Vec<String> = match f.state {
        Some(JobState::Queued) => vec!["queued".into(), "scheduled".into()],
        Some(st) => vec![st.as_str().into()],
        None => Vec::new(),
    };
    let limit = i64::try_from(f.limit.max(1))
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let rows = c
        .query(
            &format!(
                "SELECT {} FROM {s}.jobs_all j JOIN {s}.job_data d ON d.job_id = j.id
                 WHERE (cardinality($1::text[]) = 0 OR j.queue = ANY($1))
                   AND (cardinality($2::text[]) = 0 OR j.state = ANY($2))
                   AND ($3::bigint IS NULL OR j.id < $3)
                   AND ($5::bigint IS NULL OR j.created_at >= to_timestamp($5 / 1000.0))
                   AND ($6::bigint IS NULL OR j.created_at < to_timestamp($6 / 1000.0))
                 ORDER BY j.id DESC LIMIT $4",
                columns(f.payloads)
            ),
            &[
                &f.queues,
                &states,
                &f.before,
                &limit,
                &f.since_ms,
                &f.until_ms,
            ],
        )
        .await
        .map_err(db)?;
    let (mut jobs, mut bytes) = (Vec::new(), 0usize);
    for r in &rows {
        let mut job = job_from_row(r);
        let size = [&job.payload, &job.result, &job.error]
            .iter()
            .filter_map(|t| t.as_ref().map(String::len))
            .sum::<usize>()
            + 256;
        if jobs.len() >= f.limit.max(1) || (!jobs.is_empty() && bytes + size > PAGE_BYTES) {
            let next = jobs.last().map(|j: &JobRecord| j.id);
            return Ok((jobs, next));
        }
        bytes += size;
        if job.result.as_ref().is_some_and(|t| t.len() > LIST_TEXT) {
            job.result = job
                .result
                .take()
                .map(|t| crate::journal::shorten(t, job.id));
            job.result_cut = true;
        }
        if job.error.as_ref().is_some_and(|t| t.len() > LIST_TEXT) {
            job.error = job.error.take().map(|t| crate::journal::shorten(t, job.id));
        }
        jobs.push(job);
    }
    Ok((jobs, None))
}

async fn get(c: &Client, s: &str, id: i64) -> Result<Option<JobRecord>, JournalError> {
    let read = |e: tokio_postgres::Error| JournalError::Read {
        path: PathBuf::from(format!("PostgreSQL schema {s}")),
        detail: describe(&e),
    };
    let Some(row) = c
        .query_opt(
            &format!(
                "SELECT {} FROM {s}.jobs_all j JOIN {s}.job_data d ON d.job_id = j.id WHERE j.id = $1",
                columns(true)
            ),
            &[&id],
        )
        .await
        .map_err(read)?
    else {
        return Ok(None);
    };
    let mut job = job_from_row(&row);
    let rows = c
        .query(
            &format!(
                "SELECT attempt, CASE WHEN host IS NULL THEN worker ELSE worker || ' on ' || host END,
                     pid, {}, {}, outcome, error, stdout_tail, stderr_tail
                 FROM {s}.attempts WHERE job_id = $1 ORDER BY attempt",
                ms("started_at"),
                ms("ended_at")
            ),
            &[&id],
        )
        .await
        .map_err(read)?;
    job.history = rows
        .iter()
        .map(|r| AttemptRecord {
            attempt: count(r.get(0)),
            worker: r.get(1),
            pid: r.get(2),
            started_ms: r.get(3),
            ended_ms: r.get(4),
            outcome: r.get(5),
            error: r.get(6),
            stdout: r.get(7),
            stderr: r.get(8),
        })
        .collect();
    Ok(Some(job))
}

async fn overview(c: &Client, s: &str, queues: &[String], now: i64) -> Result<Overview, String> {
    let mut o = Overview::default();
    let hour_ago = now - 3_600_000;
    for q in queues {
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed')
                     FROM {s}.jobs_done WHERE queue = $1 AND finished_at >= to_timestamp($2::bigint / 1000.0)"
                ),
                &[q, &hour_ago],
            )
            .await
            .map_err(db)?;
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        o.last_hour.insert(q.clone(), (n(0), n(1)));
        let due: Option<i64> = c
            .query_one(
                &format!(
                    "SELECT {} FROM {s}.jobs WHERE queue = $1 AND state IN ('queued', 'scheduled')
                     AND run_at <= to_timestamp($2::bigint / 1000.0)",
                    ms("min(run_at)")
                ),
                &[q, &now],
            )
            .await
            .map_err(db)?
            .get(0);
        if let Some(t) = due {
            o.oldest_queued.insert(q.clone(), t);
        }
    }
    let rows = c
        .query(
            &format!(
                "SELECT id, queue, error, {} FROM {s}.jobs_done WHERE state = 'failed' ORDER BY id DESC LIMIT 5",
                ms("finished_at")
            ),
            &[],
        )
        .await
        .map_err(db)?;
    o.recent_failures = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok(o)
}

impl Postgres {
    fn send(&self, op: Op) {
        // The thread outlives every handle; if it is gone, the reply is dropped and the
        // asker sees the journal as closed.
        let _ = self.tx.send(op);
    }
}

impl JobStore for Postgres {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn size_bytes(&self) -> u64 {
        0
    }

    fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn submit(&self, jobs: Vec<NewJob>, reply: Reply<Vec<Submitted>>) {
        self.send(Op::Submit(jobs, reply));
    }

    fn claim(
        &self,
        queues: Vec<String>,
        n: usize,
        worker: String,
        pid: i32,
        reply: Reply<Claimed>,
    ) {
        self.send(Op::Claim {
            queues,
            n,
            worker,
            pid,
            reply,
        });
    }

    fn finish(
        &self,
        id: i64,
        token: i64,
        outcome: Outcome,
        backoff: RetryBackoff,
        output: Option<AttemptOutput>,
        reply: Reply<Finished>,
    ) {
        self.send(Op::Finish {
            id,
            token,
            outcome,
            backoff,
            output,
            reply,
        });
    }

    fn progress(&self, id: i64, token: i64, progress: Option<f64>, message: Option<String>) {
        self.send(Op::Progress {
            id,
            token,
            progress,
            message,
        });
    }

    fn cancel(&self, id: i64, reply: Reply<CancelResult>) {
        self.send(Op::Cancel(id, reply));
    }

    fn retry(&self, id: i64, reply: Reply<Submitted>) {
        self.send(Op::Retry(id, reply));
    }

    fn prune(&self, rules: Vec<(String, i64, i64)>, reply: Reply<u64>) {
        self.send(Op::Prune(rules, reply));
    }

    fn renew(&self) {
        self.send(Op::Renew);
    }

    fn overview(&self, queues: Vec<String>, now_ms: i64, reply: Reply<Overview>) {
        self.send(Op::Overview(queues, now_ms, reply));
    }

    fn list(&self, filter: JobFilter, reply: Reply<Page>) {
        self.send(Op::List(filter, reply));
    }

    fn get(&self, id: i64, reply: Reply<JobRecord>) {
        self.send(Op::Get(id, reply));
    }

    fn take_wakeups(&self) -> Option<mpsc::Receiver<String>> {
        self.wakeups.lock().ok()?.take()
    }
}
