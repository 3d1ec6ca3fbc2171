//! Jobs on the supervisor loop: handing jobs to protocol workers, reading what they say,
//! leases, timeouts, cancellation and reclaim.
//!
//! The journal is the source of truth for jobs; this side keeps only what the loop needs
//! to act fast: which worker holds which job under which lease token, and whether a
//! queue may have due jobs (so idle workers do not poll an empty queue).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Reply;
use super::held::{self, CANCEL_GRACE, CancelWhy, Held};
use super::worker::{Facts, Input, KillReason};
use super::{CLAIM_TROUBLE_EVERY, Event, Slot, SlotId, Supervisor, human, policy, worker_io};
use crate::config::QueueSpec;
use crate::jobs::{JobState, Outcome};
use crate::journal::{CancelResult, Claimed, Finished, JournalError, now_ms};
use crate::protocol::{self, FromWorker};
use crate::time::{after, ms_after, rfc3339_ms};

/// Idle workers look for due jobs at least this often, whatever the hints say.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// The same with a journal that other hosts and programs add jobs to, unseen by this
/// daemon: idle workers look every second.
pub const SHARED_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The lease of a job whose queue is no longer configured.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Whether a queue may have due jobs, as far as the loop knows.
#[derive(Debug, Default, Clone)]
pub struct QueueHint {
    pub ready: bool,
    /// Bumped whenever jobs are added, so that an older "nothing there" answer does not
    /// hide them.
    pub epoch: u64,
    /// A delayed job becomes due then.
    pub due_at: Option<Instant>,
}

/// Converts a journal time to a loop deadline.
fn instant_at(ms: i64) -> Instant {
    let delta = ms.saturating_sub(now_ms()).max(0);
    after(Instant::now(), Duration::from_millis(delta.unsigned_abs()))
}

impl Supervisor {
    pub(super) fn queue_spec(&self, name: &str) -> QueueSpec {
        self.config
            .queues
            .get(name)
            .cloned()
            .unwrap_or_else(|| QueueSpec::new(name))
    }

    /// Jobs were added to `queue`, due at `run_at_ms`.
    pub(super) fn jobs_added(&mut self, queue: &str, run_at_ms: i64) {
        if queue == "*" {
            // Every queue may have jobs (the journal could not say which).
            let queues: Vec<String> = self.config.queues.keys().cloned().collect();
            for q in queues {
                self.jobs_added(&q, run_at_ms);
            }
            return;
        }
        let hint = self.hints.entry(queue.to_string()).or_default();
        hint.epoch += 1;
        if run_at_ms <= now_ms() {
            hint.ready = true;
        } else {
            let at = instant_at(run_at_ms);
            hint.due_at = Some(hint.due_at.map_or(at, |d| d.min(at)));
        }
    }

    /// Those of `queues` that may have due jobs, with their epochs (see [`QueueHint`]);
    /// `None` when none may.
    pub(super) fn ready_queues(
        &self,
        queues: &[String],
    ) -> Option<(Vec<String>, HashMap<String, u64>)> {
        let ready: Vec<String> = queues
            .iter()
            .filter(|q| self.hints.get(*q).is_some_and(|h| h.ready))
            .cloned()
            .collect();
        if ready.is_empty() {
            return None;
        }
        let epochs = ready
            .iter()
            .map(|q| (q.clone(), self.hints.get(q).map(|h| h.epoch).unwrap_or(0)))
            .collect();
        Some((ready, epochs))
    }

    /// Hand jobs to every ready protocol worker with free capacity.
    pub(super) fn dispatch(&mut self, now: Instant) {
        if self.shutdown.is_some() || self.fenced {
            return;
        }
        for hint in self.hints.values_mut() {
            if hint.due_at.is_some_and(|t| t <= now) {
                hint.due_at = None;
                hint.ready = true;
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now
                + match self.config.journal.backend {
                    crate::config::Backend::Sqlite => SWEEP_EVERY,
                    crate::config::Backend::Postgres(_) => SHARED_SWEEP_EVERY,
                };
            for q in self.config.queues.keys() {
                self.hints.entry(q.clone()).or_default().ready = true;
            }
        }
        let ids: Vec<SlotId> = self.slots.keys().copied().collect();
        for id in ids {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            if !slot.spec.is_protocol() || !slot.run.takes_jobs() || slot.conn.is_none() {
                continue;
            }
            let Some(pid) = slot.run.pid() else { continue };
            let used = slot.held.len() + slot.claiming;
            let free = (slot.spec.concurrency as usize).saturating_sub(used);
            if free == 0 {
                continue;
            }
            let Some((queues, epochs)) = self.ready_queues(&slot.spec.queues) else {
                continue;
            };
            let worker = slot.name();
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.claiming += free;
            }
            let tx = self.events_tx.clone();
            self.journal
                .claim(queues, free, worker, pid, move |result| {
                    let _ = tx.send(Event::Claimed {
                        slot: id,
                        pid,
                        asked: free,
                        epochs,
                        result,
                    });
                });
        }
    }

    /// A claim returned fewer jobs than asked: its queues are empty (unless jobs were
    /// added since it was asked), and delayed jobs become due at `next_run_at`.
    pub(super) fn note_claim(
        &mut self,
        asked: usize,
        epochs: &HashMap<String, u64>,
        claimed: &Claimed,
    ) {
        if claimed.jobs.len() >= asked {
            return;
        }
        for (q, epoch) in epochs {
            let h = self.hints.entry(q.clone()).or_default();
            if h.epoch == *epoch {
                h.ready = false;
            }
            if let Some(t) = claimed.next_run_at_ms {
                let at = instant_at(t);
                h.due_at = Some(h.due_at.map_or(at, |d| d.min(at)));
            }
        }
    }

    /// A claim the journal refused: said at once, then every 30 s while it lasts (idle
    /// workers ask every second).
    pub(super) fn claim_failed(&mut self, e: &JournalError, now: Instant) {
        match self.claim_trouble.failed(now) {
            policy::Say::First => tracing::warn!(
                "cannot take jobs from the journal: {e}; idle workers ask again every second (said again every {} s while it lasts)",
                CLAIM_TROUBLE_EVERY.as_secs()
            ),
            policy::Say::Again { unsaid, failing } => tracing::warn!(
                "still cannot take jobs from the journal, for {} s now ({unsaid} more claims refused): {e}",
                failing.as_secs()
            ),
            policy::Say::Quiet => {}
        }
    }

    pub(super) fn claim_worked(&mut self, now: Instant) {
        if let Some((failing, count)) = self.claim_trouble.succeeded(now) {
            tracing::info!(
                "taking jobs from the journal again, after {:.1} s in which {count} claims were refused",
                failing.as_secs_f64()
            );
        }
    }

    pub(super) fn on_claimed(
        &mut self,
        id: SlotId,
        pid: i32,
        asked: usize,
        epochs: HashMap<String, u64>,
        result: Result<Claimed, JournalError>,
    ) {
        let now = Instant::now();
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.claiming = slot.claiming.saturating_sub(asked);
        }
        let claimed = match result {
            Ok(c) => c,
            Err(e) => {
                self.claim_failed(&e, now);
                for q in epochs.keys() {
                    let h = self.hints.entry(q.clone()).or_default();
                    h.ready = false;
                    h.due_at = Some(now + Duration::from_secs(1));
                }
                return;
            }
        };
        self.claim_worked(now);
        self.note_claim(asked, &epochs, &claimed);
        let usable =
            self.slots.get(&id).is_some_and(|s| {
                s.run.pid() == Some(pid) && s.run.takes_jobs() && s.conn.is_some()
            }) && self.shutdown.is_none();
        for job in claimed.jobs {
            let spec = self.queue_spec(&job.queue);
            if !usable {
                self.give_back(&job);
                continue;
            }
            let timeout = job.timeout(spec.timeout);
            let deadline_wall = timeout.map(|t| rfc3339_ms(ms_after(now_ms(), t)));
            let line = protocol::job_line(
                job.id,
                &job.queue,
                job.attempt,
                &job.payload,
                deadline_wall.as_deref(),
            );
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let wait_ms = (now_ms() - job.created_ms).max(0);
            if job.attempt == 1 {
                self.observed
                    .metrics
                    .job_waited(&job.queue, Duration::from_millis(wait_ms as u64));
            }
            if self.job_lines.start(job.id, now) {
                tracing::info!(JOB_ID = job.id, QUEUE = %job.queue, ATTEMPT = job.attempt, POOL = %slot.pool, INSTANCE = slot.index,
                    "job {} attempt {} started on worker {} (pid {pid}) after {} in the queue",
                    job.id, job.attempt, slot.name(), human(Duration::from_millis(wait_ms as u64)));
            }
            slot.held.insert(
                job.id,
                Held::new(job.queue, job.attempt, job.token, now, timeout),
            );
            // Attribute the worker's output to the job before it can print anything.
            slot.update_current_job();
            if let Some(conn) = &slot.conn {
                conn.send(line);
            }
        }
    }

    /// A line from a worker (already parsed, or the reason it could not be).
    pub(super) fn on_worker_line(&mut self, id: SlotId, pid: i32, msg: Result<FromWorker, String>) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.run.pid() != Some(pid) {
            return;
        }
        // Any line renews the leases the worker holds.
        slot.last_heard = now;
        let name = slot.name();
        let (pool, index) = (slot.pool.clone(), slot.index);
        let reject = |slot: &mut super::Slot, why: String| {
            if !slot.rejects.allow(now) {
                return;
            }
            tracing::warn!(POOL = %pool, INSTANCE = index, WORKER_PID = pid, "worker {name}: {why}");
            // Not queued when the worker does not read what it was sent already.
            if let Some(c) = &slot.conn {
                c.reply(protocol::error_line(&why));
            }
        };
        match msg {
            Err(e) => reject(slot, format!("invalid line ignored: {e}")),
            Ok(FromWorker::Ready) => {
                let shutdown = self.shutdown.as_ref().map(|s| s.deadline);
                let effects = slot.run.step(
                    Input::Ready(crate::config::Readiness::Protocol),
                    now,
                    shutdown,
                );
                self.carry_out(id, effects, now, "");
            }
            Ok(FromWorker::Heartbeat) => {}
            Ok(FromWorker::Progress {
                id: job,
                progress,
                message,
            }) => {
                let Some(held) = slot.held.get_mut(&job) else {
                    return reject(
                        slot,
                        format!("progress for job {job}, which this worker does not hold; ignored"),
                    );
                };
                let progress = progress.filter(|p| p.is_finite());
                if let Some((progress, message)) = held.progress(now, (progress, message)) {
                    tracing::debug!(
                        JOB_ID = job,
                        "job {job} progress {:?} {}",
                        progress,
                        message.as_deref().unwrap_or("")
                    );
                    self.journal.progress(job, held.token, progress, message);
                }
            }
            Ok(FromWorker::Done { id: job, result }) => {
                let Some(held) = slot.held.remove(&job) else {
                    return reject(
                        slot,
                        format!(
                            "`done` for job {job}, which this worker does not hold; ignored (the job is untouched)"
                        ),
                    );
                };
                slot.update_current_job();
                save_progress(&self.journal, job, &held);
                let took = now.duration_since(held.started);
                self.observed.metrics.job_ran(&held.queue, took);
                tracing::debug!(JOB_ID = job, "job {job} done after {}", human(took));
                // A result is kept up to the queue's max_payload: what may go in may
                // come out, and no more.
                let limit = self
                    .config
                    .queues
                    .get(&held.queue)
                    .map_or(1024 * 1024, |q| q.max_payload);
                let result = result.map(|r| {
                    let r = r.get();
                    if r.len() as u64 <= limit {
                        r.to_string()
                    } else {
                        tracing::warn!(JOB_ID = job, QUEUE = %held.queue,
                            "job {job}: its result of {} bytes is over the queue's max_payload ({limit} bytes) and was not kept", r.len());
                        serde_json::json!({
                            "steward": format!("the result of {} bytes was not kept: it is over the queue's max_payload of {limit} bytes", r.len())
                        })
                        .to_string()
                    }
                });
                self.finish_job(
                    job,
                    held.token,
                    &held.queue,
                    held.attempt,
                    Outcome::Succeeded { result },
                );
            }
            Ok(FromWorker::Fail {
                id: job,
                error,
                retry,
            }) => {
                let Some(held) = slot.held.remove(&job) else {
                    return reject(
                        slot,
                        format!(
                            "`fail` for job {job}, which this worker does not hold; ignored (the job is untouched)"
                        ),
                    );
                };
                slot.update_current_job();
                save_progress(&self.journal, job, &held);
                self.observed
                    .metrics
                    .job_ran(&held.queue, now.duration_since(held.started));
                let error = error
                    .unwrap_or_else(|| "the worker reported a failure without a message".into());
                let outcome = match held.cancel {
                    Some((CancelWhy::Cancelled, _)) => Outcome::Cancelled {
                        reason: format!("cancelled by steward cancel; worker said: {error}"),
                    },
                    Some((CancelWhy::Timeout, _)) => Outcome::TimedOut {
                        reason: format!("timed out; worker said: {error}"),
                    },
                    None => Outcome::Failed { error, retry },
                };
                self.finish_job(job, held.token, &held.queue, held.attempt, outcome);
            }
        }
    }

    /// A worker's reader counted invalid lines beyond those answered and logged.
    pub(super) fn invalid_lines_ignored(&mut self, id: SlotId, pid: i32, ignored: u64) {
        let Some(slot) = self.slots.get(&id).filter(|s| s.run.pid() == Some(pid)) else {
            return;
        };
        tracing::warn!(POOL = %slot.pool, INSTANCE = slot.index, WORKER_PID = pid, IGNORED = ignored,
            "worker {} sent {ignored} more invalid lines in the last {}s; they were neither answered nor logged one by one (at most {} a second are)",
            slot.name(), worker_io::REPORT_EVERY.as_secs(), worker_io::INVALID_PER_SECOND);
    }

    /// Every ten seconds: the lines each worker sent that steward rejected beyond what it
    /// answers and logs.
    pub(super) fn report_rejects(&mut self) {
        for slot in self.slots.values_mut() {
            let n = slot.rejects.take_suppressed();
            if n > 0 {
                tracing::warn!(POOL = %slot.pool, INSTANCE = slot.index, IGNORED = n,
                    "worker {} sent {n} more lines that steward rejected (such as `done` for a job it does not hold); they were neither answered nor logged one by one",
                    slot.name());
            }
        }
    }

    /// A job claimed that cannot run here after all goes back to its queue untouched.
    pub(super) fn give_back(&self, job: &crate::journal::Leased) {
        self.finish_job(
            job.id,
            job.token,
            &job.queue,
            job.attempt,
            Outcome::Released,
        );
    }

    /// Record how an attempt ended.
    pub(super) fn finish_job(
        &self,
        job: i64,
        token: i64,
        queue: &str,
        attempt: u32,
        outcome: Outcome,
    ) {
        self.finish_job_with(job, token, queue, attempt, outcome, None);
    }

    pub(super) fn finish_job_with(
        &self,
        job: i64,
        token: i64,
        queue: &str,
        attempt: u32,
        outcome: Outcome,
        output: Option<crate::journal::AttemptOutput>,
    ) {
        let backoff = self.queue_spec(queue).retry_backoff;
        let tx = self.events_tx.clone();
        let queue_s = queue.to_string();
        let kind = outcome.as_str();
        self.journal
            .finish(job, token, outcome, backoff, output, move |result| {
                let _ = tx.send(Event::Finished {
                    job,
                    queue: queue_s,
                    attempt,
                    kind,
                    result,
                });
            });
    }

    pub(super) fn on_finished(
        &mut self,
        job: i64,
        queue: String,
        attempt: u32,
        kind: &'static str,
        result: Result<Finished, JournalError>,
    ) {
        let start_logged = self.job_lines.end(job);
        match result {
            Err(e) => {
                tracing::error!(JOB_ID = job, QUEUE = %queue, ATTEMPT = attempt, "cannot record the end of job {job}: {e}")
            }
            Ok(Finished::Stale) => {
                tracing::warn!(JOB_ID = job, QUEUE = %queue, ATTEMPT = attempt,
                    "job {job} attempt {attempt} ended ({kind}) but its lease was no longer current; the newer attempt is kept")
            }
            Ok(Finished::Applied {
                state,
                run_at_ms,
                reason,
            }) => {
                let why = reason.as_deref().unwrap_or("");
                if state.is_final() {
                    self.observed.metrics.job_finished(&queue, state.as_str());
                }
                if state == JobState::Failed {
                    self.failures.push_back(Instant::now());
                }
                match state {
                    JobState::Succeeded if start_logged => {
                        tracing::info!(JOB_ID = job, QUEUE = %queue, ATTEMPT = attempt, "job {job} succeeded (attempt {attempt})")
                    }
                    JobState::Succeeded => {}
                    JobState::Queued if kind == "released" => {
                        self.jobs_added(&queue, run_at_ms);
                    }
                    JobState::Queued => {
                        let wait = Duration::from_millis((run_at_ms - now_ms()).max(0) as u64);
                        tracing::warn!(JOB_ID = job, QUEUE = %queue, ATTEMPT = attempt,
                            "job {job} attempt {attempt} {kind}: {why}; it will run again in {}", human(wait));
                        self.jobs_added(&queue, run_at_ms);
                    }
                    JobState::Failed => {
                        tracing::error!(JOB_ID = job, QUEUE = %queue, ATTEMPT = attempt, "job {job} failed: {why}. Retry it with: steward retry {job}")
                    }
                    JobState::Cancelled => {
                        tracing::info!(JOB_ID = job, QUEUE = %queue, ATTEMPT = attempt, "job {job} cancelled")
                    }
                    JobState::Running => {}
                }
            }
        }
    }

    /// The worker of slot `id` is gone: every job it held is reclaimed at once.
    pub(super) fn reclaim_held(
        &mut self,
        id: SlotId,
        description: &str,
        deliberate: bool,
        killed_for: Option<KillReason>,
    ) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let held = std::mem::take(&mut slot.held);
        slot.update_current_job();
        slot.conn = None;
        let reason = killed_for;
        let name = slot.name();
        for (job, h) in held {
            save_progress(&self.journal, job, &h);
            let outcome = match reason {
                Some(KillReason::Fenced) => Outcome::Interrupted {
                    reason: format!(
                        "steward could not renew its lease in the shared journal and killed worker {name}"
                    ),
                },
                Some(KillReason::Hung { .. }) => Outcome::Hung {
                    reason: format!(
                        "worker {name} sent nothing for longer than its lease and was killed"
                    ),
                },
                Some(KillReason::JobTimeout(j)) if j == job => Outcome::TimedOut {
                    reason: format!(
                        "ran past its timeout and did not give up within {}s of `cancel`",
                        CANCEL_GRACE.as_secs()
                    ),
                },
                Some(KillReason::Cancelled(j)) if j == job => Outcome::Cancelled {
                    reason: "cancelled; the worker was killed because it did not give the job up"
                        .into(),
                },
                Some(KillReason::JobTimeout(_)) | Some(KillReason::Cancelled(_)) => {
                    Outcome::Interrupted {
                        reason: format!("worker {name} was killed because of another job it held"),
                    }
                }
                _ if deliberate => Outcome::Interrupted {
                    reason: format!("steward stopped worker {name} while it ran"),
                },
                _ => Outcome::Crashed {
                    reason: format!("worker {name} {description} while running it"),
                },
            };
            match outcome {
                Outcome::Crashed { .. } => self.observed.metrics.jobs_reclaimed("worker_exit", 1),
                Outcome::Hung { .. } => self.observed.metrics.jobs_reclaimed("hang", 1),
                _ => {}
            }
            tracing::warn!(JOB_ID = job, QUEUE = %h.queue, ATTEMPT = h.attempt,
                "job {job} attempt {} reclaimed from worker {name}: {}", h.attempt, outcome.error().unwrap_or(""));
            self.finish_job(job, h.token, &h.queue, h.attempt, outcome);
        }
    }

    /// What is due for the jobs slot `id` holds: held-back progress written, and
    /// `cancel` sent to jobs past their time limit.
    pub(super) fn job_timers(&mut self, id: SlotId, now: Instant) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let name = slot.name();
        for due in held::take_due(&mut slot.held, now) {
            match due {
                held::Due::SaveProgress {
                    job,
                    progress: (progress, message),
                } => {
                    if let Some(h) = slot.held.get(&job) {
                        self.journal.progress(job, h.token, progress, message);
                    }
                }
                held::Due::Cancel { job, ran_for } => {
                    if let Some(h) = slot.held.get(&job) {
                        tracing::warn!(JOB_ID = job, QUEUE = %h.queue, ATTEMPT = h.attempt,
                            "job {job} ran past its timeout ({}); sent cancel to worker {name}", human(ran_for));
                    }
                    if let Some(c) = &slot.conn {
                        c.send(protocol::cancel_line(job));
                    }
                }
            }
        }
    }

    /// What slot `s`'s machine needs to know for its deadline: whether it holds jobs, when
    /// its first lease runs out (from its last sign of life as the loop knows it), and
    /// the first grace after `cancel` to end. Cheap: no look at its socket.
    pub(super) fn facts(&self, s: &Slot, _now: Instant) -> Facts {
        let watchdog = s.notify.as_ref().and_then(|n| n.pings.last());
        if !s.spec.is_protocol() {
            return Facts {
                watchdog,
                ..Facts::default()
            };
        }
        Facts {
            holds_jobs: !s.held.is_empty(),
            input_pending: false,
            lease: self.lease_expiry(s, heard(s)),
            job_kill: held::kill_due(&s.held),
            watchdog,
        }
    }

    /// The same facts for a judgment, once a deadline has come: what the worker sent is
    /// looked at first. Bytes waiting in its socket are a sign of life for its leases; for
    /// the other deadlines (which lines do not extend) they mean the judgment waits for
    /// them to be read.
    pub(super) fn judged_facts(&mut self, id: SlotId, now: Instant) -> Facts {
        let Some(slot) = self.slots.get(&id) else {
            return Facts::default();
        };
        let mut facts = self.facts(slot, now);
        // A datagram not read yet may be the WATCHDOG=1 that is due.
        let notify_unread = slot.notify.as_ref().is_some_and(|n| n.unread());
        if !slot.spec.is_protocol() {
            facts.input_pending = notify_unread;
            return facts;
        }
        let unread = slot.conn.as_ref().is_some_and(|c| c.unread_in_socket());
        facts.input_pending =
            notify_unread || unread || slot.conn.as_ref().is_some_and(|c| c.input_pending());
        if facts.lease.is_some_and(|(expiry, _)| now >= expiry) {
            if unread {
                // Bytes are waiting in the socket: the worker has spoken.
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.last_heard = now;
                }
            }
            // Judged again with the reader's latest stamp, read after the socket.
            if let Some(slot) = self.slots.get(&id) {
                facts.lease = self.lease_expiry(slot, heard(slot));
            }
        }
        facts
    }

    /// When the first of the leases `s` holds runs out, and that lease's length.
    fn lease_expiry(&self, s: &Slot, heard: Instant) -> Option<(Instant, Duration)> {
        let queues = &self.config.queues;
        held::lease_expiry(&s.held, heard, |q| {
            queues.get(q).map(|q| q.lease).unwrap_or(DEFAULT_LEASE)
        })
    }

    /// `steward cancel ID`: a queued job is cancelled in the journal; a running one is
    /// asked to stop on its worker, which is killed if it does not give it up.
    pub(super) fn cancel_job(&mut self, job: i64, reply: oneshot::Sender<Reply>) {
        let now = Instant::now();
        if let Some(msg) = self.cancel_exec(job) {
            tracing::info!(JOB_ID = job, "{msg}");
            let _ = reply.send(Reply::Cancel(Ok(msg)));
            return;
        }
        for slot in self.slots.values_mut() {
            let name = slot.name();
            if let Some(h) = slot.held.get_mut(&job) {
                if h.cancel(CancelWhy::Cancelled, now)
                    && let Some(c) = &slot.conn
                {
                    c.send(protocol::cancel_line(job));
                }
                tracing::info!(JOB_ID = job, QUEUE = %h.queue, ATTEMPT = h.attempt, "cancelling job {job} on worker {name}");
                let _ = reply.send(Reply::Cancel(Ok(format!(
                    "job {job} is running on worker {name}: asked it to stop; it will be killed in {}s if it does not",
                    CANCEL_GRACE.as_secs()
                ))));
                return;
            }
        }
        self.journal.cancel(job, move |r| {
            let msg = match r {
                Ok(CancelResult::Cancelled) => {
                    tracing::info!(JOB_ID = job, "job {job} cancelled");
                    Ok(format!("job {job} cancelled"))
                }
                Ok(CancelResult::Running { worker }) => Err(format!(
                    "job {job} is being handed to worker {} right now; run steward cancel again in a moment",
                    worker.unwrap_or_default()
                )),
                Ok(CancelResult::AlreadyFinal(s)) => Err(format!("job {job} is already {}; nothing to cancel", s.as_str())),
                Err(e) => Err(e.to_string()),
            };
            let _ = reply.send(Reply::Cancel(msg));
        });
    }

    /// Ask the journal to delete finished jobs past their queue's retention.
    pub(super) fn prune(&mut self) {
        let now = now_ms();
        let rules: Vec<(String, i64, i64)> = self
            .config
            .queues
            .values()
            .map(|q| {
                (
                    q.name.clone(),
                    now - q.retention_succeeded.as_millis() as i64,
                    now - q.retention_failed.as_millis() as i64,
                )
            })
            .collect();
        if rules.is_empty() {
            return;
        }
        self.journal.prune(rules, |r| match r {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} finished jobs past their retention"),
            Err(e) => tracing::warn!("cannot delete old jobs: {e}"),
        });
    }
}

/// Write the progress the limit held back, before the attempt's end is written.
fn save_progress(journal: &crate::journal::Journal, job: i64, h: &Held) {
    if let Some((progress, message)) = h.unsaved_progress.clone() {
        journal.progress(job, h.token, progress, message);
    }
}

/// The worker's last sign of life: a line the loop handled, or bytes its reader took.
fn heard(slot: &Slot) -> Instant {
    match slot.conn.as_ref().and_then(|c| c.last_read()) {
        Some(t) => t.max(slot.last_heard),
        None => slot.last_heard,
    }
}

impl super::Slot {
    /// Worker output is attributed to a job when the worker holds exactly one.
    pub(super) fn update_current_job(&self) {
        let v = if self.held.len() == 1 {
            self.held.keys().next().copied().unwrap_or(0)
        } else {
            0
        };
        self.current_job.store(v, Ordering::Relaxed);
    }
}
