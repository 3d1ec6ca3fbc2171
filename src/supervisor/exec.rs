//! Exec pools: one process per job.
//!
//! An exec pool has `instances` lanes. A free lane claims a job from the journal (with
//! the same lease and fencing as protocol workers), starts `command` in a new process
//! group with the payload as JSON on stdin, and records the outcome from the exit code
//! once the process is gone and its output pipes are drained. Timeouts and cancellation
//! send the pool's stop signal to the whole group, then SIGKILL after `stop_timeout`.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;

use super::exec_run::{Effect, ExecRun, ExecStop, Input, Shutdown};
use super::policy::Exit;
use super::worker::{RESOURCE_RETRY, drain_end};
use super::{Event, Supervisor, human};
use crate::config::{self, PoolSpec};
use crate::jobs::{self, Outcome};
use crate::journal::{AttemptOutput, Claimed, JournalError, now_ms};
use crate::logging::{Capture, Origin, Stream};
use crate::process::{self, Child};

/// One job process of an exec pool: the job, and its run's state machine.
pub(super) struct Lane {
    pub job: i64,
    pub token: i64,
    pub attempt: u32,
    pub queue: String,
    pub run: ExecRun,
    pub stdout: Arc<Mutex<Capture>>,
    pub stderr: Arc<Mutex<Capture>>,
    /// The lane's cgroup the job process runs in, where there are cgroups.
    pub cgroup: Option<std::path::PathBuf>,
    /// Set when its process was killed by the OOM killer: how to say so.
    pub oom: Option<String>,
    /// Its process, once started (kept for the attempt's history after it exits).
    pub pid: Option<i32>,
}

/// The exec side of a pool.
#[derive(Default)]
pub(super) struct ExecLanes {
    /// Running job processes by lane.
    pub runs: std::collections::BTreeMap<u32, Lane>,
    /// Jobs asked of the journal and not answered yet.
    pub claiming: usize,
    /// A job process could not be started for want of resources: no claims until then.
    pub resources_wait: Option<Instant>,
    /// Its job processes cannot be given the environment they need (a credential that
    /// cannot be read, a required variable missing): no claims, looked at again at the
    /// instant given.
    pub blocked: Option<(String, Instant)>,
}

/// How often an exec pool that cannot start jobs looks again.
const BLOCKED_RECHECK: Duration = Duration::from_secs(5);

impl Supervisor {
    /// The environment of a job process of `spec` in `lane` (without the per-job
    /// STEWARD_* variables), or why it cannot be made: a credential that cannot be read, a
    /// required variable missing.
    fn exec_env(&self, spec: &PoolSpec, lane: u32) -> Result<Vec<(String, String)>, String> {
        let mut env = process::base_environment(&self.env.vars, spec.inherit_env);
        env.extend(spec.for_instance(lane).1);
        for (var, cred) in &spec.credentials {
            let v = config::read_credential(self.env.credentials_directory.as_deref(), cred)
                .map_err(|why| format!("{why} (for {var}, env_from_credentials)"))?;
            env.push((var.clone(), v));
        }
        match spec.missing_env(&env).as_slice() {
            [] => Ok(env),
            [one] => Err(format!("missing required environment variable {one}")),
            many => Err(format!(
                "missing required environment variables {}",
                many.join(", ")
            )),
        }
    }

    /// Record whether exec pool `name` can start jobs (`problem`: why not), saying so
    /// when that changes; true if it can.
    fn exec_blocked(&mut self, name: &str, problem: Option<String>) -> bool {
        let Some(pool) = self.pools.get_mut(name) else {
            return false;
        };
        match problem {
            Some(why) => {
                if pool.exec.blocked.as_ref().map(|(w, _)| w) != Some(&why) {
                    tracing::error!(POOL = %name,
                        "exec pool {name} takes no jobs: {why}; its jobs wait in the queue. Fix it and `systemctl reload steward` (or, for LoadCredential=, `systemctl restart steward`); steward looks again every {}s",
                        BLOCKED_RECHECK.as_secs());
                }
                pool.exec.blocked = Some((why, Instant::now() + BLOCKED_RECHECK));
                false
            }
            None => {
                if pool.exec.blocked.take().is_some() {
                    tracing::info!(POOL = %name, "exec pool {name} takes jobs again");
                }
                true
            }
        }
    }

    /// Claim jobs for the free lanes of every exec pool.
    pub(super) fn dispatch_exec(&mut self) {
        if self.shutdown.is_some() || self.fenced {
            return;
        }
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            let Some(pool) = self.pools.get(&name) else {
                continue;
            };
            if !pool.spec.is_exec()
                || pool.removing
                || pool.exec.resources_wait.is_some_and(|t| Instant::now() < t)
            {
                continue;
            }
            let busy = pool.exec.runs.len() + pool.exec.claiming;
            let free = (pool.instances() as usize).saturating_sub(busy);
            if free == 0 {
                continue;
            }
            if pool
                .exec
                .blocked
                .as_ref()
                .is_some_and(|(_, at)| Instant::now() < *at)
            {
                continue;
            }
            let Some((queues, epochs)) = self.ready_queues(&pool.spec.queues) else {
                continue;
            };
            // Only with jobs to claim: the credentials are read then, not on every turn.
            let spec = pool.spec.clone();
            let problem = self.exec_env(&spec, 0).err();
            if !self.exec_blocked(&name, problem) {
                continue;
            }
            if let Some(pool) = self.pools.get_mut(&name) {
                pool.exec.claiming += free;
            }
            let tx = self.events_tx.clone();
            let pool_name = name.clone();
            self.journal.claim(queues, free, name, 0, move |result| {
                let _ = tx.send(Event::ExecClaimed {
                    pool: pool_name,
                    asked: free,
                    epochs,
                    result,
                });
            });
        }
    }

    pub(super) fn on_exec_claimed(
        &mut self,
        name: String,
        asked: usize,
        epochs: HashMap<String, u64>,
        result: Result<Claimed, JournalError>,
    ) {
        if let Some(pool) = self.pools.get_mut(&name) {
            pool.exec.claiming = pool.exec.claiming.saturating_sub(asked);
        }
        let claimed = match result {
            Ok(c) => c,
            Err(e) => {
                self.claim_failed(&e, Instant::now());
                return;
            }
        };
        let now = Instant::now();
        self.claim_worked(now);
        self.note_claim(asked, &epochs, &claimed);
        let socket = self.config.daemon.socket.to_string_lossy().into_owned();
        for job in claimed.jobs {
            let spec = self.queue_spec(&job.queue);
            let lane = self
                .pools
                .get(&name)
                .filter(|p| !p.removing && self.shutdown.is_none())
                .and_then(|p| (0..p.instances()).find(|l| !p.exec.runs.contains_key(l)));
            let (Some(lane), Some(pool)) = (lane, self.pools.get_mut(&name)) else {
                self.give_back(&job);
                continue;
            };
            let timeout = job.timeout(spec.timeout);
            let wait_ms = (now_ms() - job.created_ms).max(0) as u64;
            if job.attempt == 1 {
                self.observed
                    .metrics
                    .job_waited(&job.queue, Duration::from_millis(wait_ms));
            }
            let pspec = pool.spec.clone();
            if self.job_lines.start(job.id, Instant::now()) {
                tracing::info!(JOB_ID = job.id, QUEUE = %job.queue, ATTEMPT = job.attempt, POOL = %name, INSTANCE = lane,
                    "job {} attempt {} starting as a process of exec pool {name} (lane {lane}) after {} in the queue",
                    job.id, job.attempt, human(Duration::from_millis(wait_ms)));
            }
            let (command, mut env) = match self.exec_env(&pspec, lane) {
                Ok(env) => (pspec.for_instance(lane).0, env),
                Err(why) => {
                    // Changed since the claim: the job goes back, untouched.
                    self.exec_blocked(&name, Some(why));
                    self.give_back(&job);
                    continue;
                }
            };
            env.push(("STEWARD_POOL".into(), name.clone()));
            env.push(("STEWARD_INSTANCE".into(), lane.to_string()));
            env.push(("STEWARD_SOCKET".into(), socket.clone()));
            env.push(("STEWARD_JOB_ID".into(), job.id.to_string()));
            env.push(("STEWARD_QUEUE".into(), job.queue.clone()));
            env.push(("STEWARD_ATTEMPT".into(), job.attempt.to_string()));
            let (cgroup, cgroup_procs) = match self.resources.for_job(&pspec, lane, now) {
                Ok(Some((path, fd))) => (Some(path), Some(fd)),
                Ok(None) => (None, None),
                Err(e) => {
                    tracing::error!(POOL = %name, "cannot make a cgroup for job {}: {e}; the job goes back to the queue", job.id);
                    self.give_back(&job);
                    continue;
                }
            };
            let Some(pool) = self.pools.get_mut(&name) else {
                continue;
            };
            let cmd = process::Command {
                program: command.first().cloned().unwrap_or_default().into(),
                args: command.iter().skip(1).cloned().collect(),
                env,
                cwd: pspec.working_dir.clone(),
                inherit_fd: None,
                stdin_pipe: true,
                cgroup: cgroup_procs,
            };
            pool.exec.runs.insert(
                lane,
                Lane {
                    job: job.id,
                    token: job.token,
                    attempt: job.attempt,
                    queue: job.queue.clone(),
                    run: ExecRun::new(now, timeout, pspec.stop_timeout),
                    stdout: Arc::default(),
                    stderr: Arc::default(),
                    cgroup,
                    oom: None,
                    pid: None,
                },
            );
            let tx = self.events_tx.clone();
            let (pool_name, job_id) = (name.clone(), job.id);
            let payload = job.payload;
            self.spawn_asked();
            self.spawner.spawn(cmd, move |result| {
                let _ = tx.send(Event::ExecSpawned {
                    pool: pool_name,
                    lane,
                    job: job_id,
                    payload,
                    result,
                });
            });
        }
    }

    pub(super) fn on_exec_spawned(
        &mut self,
        name: String,
        lane: u32,
        job: i64,
        payload: String,
        result: io::Result<Child>,
    ) {
        let now = Instant::now();
        let early = match &result {
            Ok(child) => self.early_exits.take(child.pid, child.began),
            Err(_) => None,
        };
        self.spawn_answered();
        if result.is_ok()
            && let Some(p) = self.pools.get_mut(&name)
        {
            p.exec.resources_wait = None;
        }
        let rules = self
            .pools
            .get(&name)
            .map(|p| p.rules.clone())
            .unwrap_or_default();
        let run = self
            .pools
            .get_mut(&name)
            .and_then(|p| p.exec.runs.get_mut(&lane))
            .filter(|r| r.job == job);
        let Some(run) = run else {
            if let Ok(child) = result {
                let _ = process::signal_group(child.pid, Signal::SIGKILL);
            }
            return;
        };
        match result {
            Err(e) => {
                let (token, queue, attempt) = (run.token, run.queue.clone(), run.attempt);
                let shortage = process::is_resource_shortage(&e);
                if let Some(p) = self.pools.get_mut(&name) {
                    p.exec.runs.remove(&lane);
                    if shortage {
                        // steward's trouble, not the job's: it waits, its attempts intact.
                        if p.exec.resources_wait.is_none() {
                            tracing::warn!(JOB_ID = job, POOL = %name,
                                "cannot start the process for job {job}: {e}; the job goes back to its queue without using an attempt, and pool {name} takes no jobs for {}s",
                                RESOURCE_RETRY.as_secs());
                        }
                        p.exec.resources_wait = Some(now + RESOURCE_RETRY);
                    }
                }
                if shortage {
                    self.short_of_resources(&e, now);
                    self.finish_job(job, token, &queue, attempt, Outcome::Released);
                    return;
                }
                tracing::error!(JOB_ID = job, POOL = %name, "cannot start the process for job {job}: {e}; check the pool's command and working_dir");
                let outcome = Outcome::Failed {
                    error: format!("could not start the job process: {e}"),
                    retry: true,
                };
                self.finish_job(job, token, &queue, attempt, outcome);
            }
            Ok(child) => {
                let pid = child.pid;
                run.pid = Some(pid);
                let started = child.started;
                self.exec_pids.insert(pid, (name.clone(), lane));
                if let Some(stdin) = child.stdin {
                    tokio::spawn(async move {
                        if let Ok(mut w) = tokio::net::unix::pipe::Sender::from_owned_fd(stdin) {
                            let _ = w.write_all(payload.as_bytes()).await;
                            let _ = w.write_all(b"\n").await;
                        }
                    });
                }
                let origin = Origin {
                    pool: Arc::from(name.as_str()),
                    instance: lane,
                    pid,
                    job: Arc::new(std::sync::atomic::AtomicI64::new(job)),
                    rules: rules.clone(),
                };
                for (fd, stream, capture) in [
                    (child.stdout, Stream::Stdout, run.stdout.clone()),
                    (child.stderr, Stream::Stderr, run.stderr.clone()),
                ] {
                    let tx = self.events_tx.clone();
                    let pool = name.clone();
                    let on_close: Box<dyn FnOnce() + Send> = Box::new(move || {
                        let _ = tx.send(Event::ExecStreamClosed { pool, lane, job });
                    });
                    self.worker_log.forward_with(
                        fd,
                        origin.clone(),
                        stream,
                        Some(capture),
                        Some(on_close),
                    );
                }
                self.exec_step(&name, lane, Input::Spawned { pid, started }, now);
                if let Some(exit) = early {
                    self.exec_pids.remove(&pid);
                    self.on_exec_exit(&name, lane, exit, now);
                }
            }
        }
    }

    pub(super) fn on_exec_exit(&mut self, name: &str, lane: u32, exit: Exit, now: Instant) {
        if let Some(pool) = self.pools.get(name)
            && pool
                .exec
                .runs
                .get(&lane)
                .is_some_and(|l| l.cgroup.is_some())
        {
            let limits = pool.spec.limits.clone();
            // Whatever the job process left behind goes with it.
            let ended = self.resources.job_ended(name, lane);
            if let Some(oom) = ended.and_then(|e| e.oom(&limits)) {
                self.observed.metrics.worker_oom_killed(name);
                if let Some(l) = self
                    .pools
                    .get_mut(name)
                    .and_then(|p| p.exec.runs.get_mut(&lane))
                {
                    l.oom = Some(oom);
                }
            }
        }
        self.exec_step(name, lane, Input::Exited(exit), now);
    }

    pub(super) fn on_exec_stream_closed(&mut self, name: String, lane: u32, job: i64) {
        let ours = self
            .pools
            .get(&name)
            .and_then(|p| p.exec.runs.get(&lane))
            .is_some_and(|l| l.job == job);
        if ours {
            self.exec_step(&name, lane, Input::StreamClosed, Instant::now());
        }
    }

    /// What the daemon's stop means for the runs of pool `name`, if it is stopping.
    fn exec_shutdown(&self, name: &str) -> Option<Shutdown> {
        let sd = self.shutdown.as_ref()?;
        let pool = self.pools.get(name)?;
        Some(Shutdown {
            drain_until: drain_end(sd.started, sd.deadline, pool.spec.stop_timeout),
            deadline: sd.deadline,
        })
    }

    /// Feed one input to a run's machine and carry out its effects: the only way a run
    /// changes. Returns what a stop it began did, if it began one.
    fn exec_step(&mut self, name: &str, lane: u32, input: Input, now: Instant) -> Option<String> {
        let shutdown = self.exec_shutdown(name);
        let pool = self.pools.get_mut(name)?;
        let sig = pool.spec.stop_signal;
        let l = pool.exec.runs.get_mut(&lane)?;
        let mut said = None;
        let effects = l.run.step(input, now, shutdown);
        let job = l.job;
        for effect in effects {
            match effect {
                Effect::Signal { pid } => {
                    let _ = process::signal_group(pid, sig);
                }
                Effect::Kill { pid } => {
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                }
                Effect::Stopping { why, pid, kill_at } => {
                    let msg = format!(
                        "sent {} to the process group of job {job} (pid {}); SIGKILL in {}",
                        sig.as_str(),
                        pid.map(|p| p.to_string())
                            .unwrap_or_else(|| "starting".into()),
                        human(kill_at.saturating_duration_since(now))
                    );
                    match why {
                        ExecStop::Timeout => {
                            tracing::warn!(POOL = %name, "job ran past its timeout: {msg}")
                        }
                        ExecStop::Shutdown => tracing::info!(POOL = %name, "stopping: {msg}"),
                        // Said by whoever cancelled.
                        ExecStop::Cancelled => {}
                    }
                    said = Some(msg);
                }
                Effect::Escalated { pid } => {
                    tracing::warn!(JOB_ID = job, POOL = %name, "job {job} (pid {pid}) did not stop; sending SIGKILL to its process group");
                }
                Effect::Complete { exit, stopped } => {
                    self.complete_exec(name, lane, exit, stopped, now);
                    return said;
                }
            }
        }
        said
    }

    /// Record the outcome of a run whose process is gone and whose output is read.
    fn complete_exec(
        &mut self,
        name: &str,
        lane: u32,
        exit: Exit,
        stopped: Option<ExecStop>,
        now: Instant,
    ) {
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        let Some(l) = pool.exec.runs.remove(&lane) else {
            return;
        };
        let no_retry = pool.spec.no_retry_exit_codes.clone();
        let (out_tail, out_last) = l
            .stdout
            .lock()
            .map(|c| (c.text(), c.last_line()))
            .unwrap_or_default();
        let (err_tail, err_last) = l
            .stderr
            .lock()
            .map(|c| (c.text(), c.last_line()))
            .unwrap_or_default();
        let ran = now.saturating_duration_since(l.run.started);
        let outcome = match stopped {
            Some(ExecStop::Timeout) => Outcome::TimedOut {
                reason: format!(
                    "ran past its timeout and was stopped ({})",
                    super::policy::describe_exit(exit)
                ),
            },
            Some(ExecStop::Cancelled) => Outcome::Cancelled {
                reason: format!(
                    "cancelled; the process was stopped ({})",
                    super::policy::describe_exit(exit)
                ),
            },
            Some(ExecStop::Shutdown) => Outcome::Interrupted {
                reason: "steward stopped while the job process ran".to_string(),
            },
            None => match &l.oom {
                Some(oom) => Outcome::Crashed {
                    reason: format!("the job process was {oom}"),
                },
                None => {
                    jobs::exec_outcome(exit, &no_retry, out_last.as_deref(), err_last.as_deref())
                }
            },
        };
        self.observed.metrics.job_ran(&l.queue, ran);
        if matches!(outcome, Outcome::Crashed { .. }) {
            self.observed.metrics.jobs_reclaimed("worker_exit", 1);
        }
        tracing::debug!(JOB_ID = l.job, POOL = %name, "job {} process ended: {} after {}", l.job, super::policy::describe_exit(exit), human(ran));
        let output = AttemptOutput {
            worker: Some(format!("{name}/{lane}")),
            pid: l.pid.or(l.run.pid()),
            stdout_tail: out_tail,
            stderr_tail: err_tail,
        };
        self.finish_job_with(l.job, l.token, &l.queue, l.attempt, outcome, Some(output));
    }

    /// Whatever the clock makes due for exec runs: timeouts, stop escalation, the end of
    /// an output drain, the shutdown drain.
    pub(super) fn exec_timers(&mut self, now: Instant) {
        let due: Vec<(String, u32)> = self
            .pools
            .iter()
            .flat_map(|(name, pool)| {
                let shutdown = self.exec_shutdown(name);
                pool.exec
                    .runs
                    .iter()
                    .filter(move |(_, l)| l.run.deadline(shutdown).is_some_and(|d| now >= d))
                    .map(|(&lane, _)| (name.clone(), lane))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (name, lane) in due {
            self.exec_step(&name, lane, Input::Tick, now);
        }
    }

    /// The earliest exec deadline, for the loop's timer: each run's own, from its state.
    pub(super) fn exec_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (name, pool) in &self.pools {
            if let Some(t) = pool.exec.resources_wait {
                at(t);
            }
            let shutdown = self.exec_shutdown(name);
            for l in pool.exec.runs.values() {
                if let Some(t) = l.run.deadline(shutdown) {
                    at(t);
                }
            }
        }
        next
    }

    /// `steward cancel` for a job running in an exec pool: stop its process.
    pub(super) fn cancel_exec(&mut self, job: i64) -> Option<String> {
        let (name, lane, stopping) = self.pools.iter().find_map(|(n, p)| {
            p.exec
                .runs
                .iter()
                .find(|(_, l)| l.job == job)
                .map(|(lane, l)| {
                    (
                        n.clone(),
                        *lane,
                        !matches!(
                            l.run.phase,
                            super::exec_run::Phase::Starting
                                | super::exec_run::Phase::Running { .. }
                        ),
                    )
                })
        })?;
        let msg = if stopping {
            None
        } else {
            self.exec_step(&name, lane, Input::Cancel, Instant::now())
        };
        Some(
            msg.map(|m| format!("cancelling job {job}: {m}"))
                .unwrap_or_else(|| format!("job {job} is already stopping")),
        )
    }

    /// A forced stop: SIGKILL to every job process now. Their jobs are recorded as
    /// interrupted once the processes are gone.
    pub(super) fn kill_exec_runs(&mut self) {
        let now = Instant::now();
        let lanes: Vec<(String, u32)> = self
            .pools
            .iter()
            .flat_map(|(n, p)| p.exec.runs.keys().map(move |l| (n.clone(), *l)))
            .collect();
        for (name, lane) in lanes {
            self.exec_step(&name, lane, Input::Kill, now);
        }
    }

    /// Exec runs still going (the daemon waits for them before it exits).
    pub(super) fn exec_running(&self) -> usize {
        self.pools.values().map(|p| p.exec.runs.len()).sum()
    }
}
