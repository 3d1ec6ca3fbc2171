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

use super::policy::Exit;
use super::{Event, Supervisor, drain_end, human};
use crate::jobs::{self, Outcome};
use crate::journal::{AttemptOutput, Claimed, JournalError, now_ms};
use crate::logging::{Capture, Origin, Stream};
use crate::process::{self, Child};
use crate::time::after;

/// After the process exits, how long to wait for its output pipes to close (a
/// grandchild may hold them) before recording the outcome anyway.
const DRAIN_OUTPUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExecStop {
    Timeout,
    Cancelled,
    Shutdown,
}

/// One job process of an exec pool.
pub(super) struct ExecRun {
    pub job: i64,
    pub token: i64,
    pub attempt: u32,
    pub queue: String,
    pub pid: Option<i32>,
    /// When the process started (until then, when the job was claimed).
    pub started: Instant,
    /// The job's time limit; its deadline runs from the process start.
    pub timeout: Option<Duration>,
    pub deadline: Option<Instant>,
    /// Why and when the stop signal was sent, and when SIGKILL follows.
    pub stop: Option<(ExecStop, Instant)>,
    pub killed: bool,
    pub exit: Option<(Exit, Instant)>,
    /// stdout and stderr not closed yet.
    pub open_streams: u8,
    pub stdout: Arc<Mutex<Capture>>,
    pub stderr: Arc<Mutex<Capture>>,
}

/// The exec side of a pool.
#[derive(Default)]
pub(super) struct ExecLanes {
    /// Running job processes by lane.
    pub runs: std::collections::BTreeMap<u32, ExecRun>,
    /// Jobs asked of the journal and not answered yet.
    pub claiming: usize,
    /// A job process could not be started for want of resources: no claims until then.
    pub resources_wait: Option<Instant>,
}

impl Supervisor {
    /// Claim jobs for the free lanes of every exec pool.
    pub(super) fn dispatch_exec(&mut self) {
        if self.shutdown.is_some() {
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
            let free = (pool.spec.instances as usize).saturating_sub(busy);
            if free == 0 {
                continue;
            }
            let Some((queues, epochs)) = self.ready_queues(&pool.spec.queues) else {
                continue;
            };
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
                tracing::warn!(
                    "cannot take jobs from the journal for pool {name}: {e}; trying again shortly"
                );
                return;
            }
        };
        self.note_claim(asked, &epochs, &claimed);
        let now = Instant::now();
        let socket = self.config.daemon.socket.to_string_lossy().into_owned();
        for job in claimed.jobs {
            let spec = self.queue_spec(&job.queue);
            let lane = self
                .pools
                .get(&name)
                .filter(|p| !p.removing && self.shutdown.is_none())
                .and_then(|p| (0..p.spec.instances).find(|l| !p.exec.runs.contains_key(l)));
            let (Some(lane), Some(pool)) = (lane, self.pools.get_mut(&name)) else {
                self.finish_job(
                    job.id,
                    job.token,
                    &job.queue,
                    job.attempt,
                    Outcome::Released,
                );
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
            let mut env = process::base_environment(&self.env.vars, pspec.inherit_env);
            env.extend(pspec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            env.push(("STEWARD_POOL".into(), name.clone()));
            env.push(("STEWARD_INSTANCE".into(), lane.to_string()));
            env.push(("STEWARD_SOCKET".into(), socket.clone()));
            env.push(("STEWARD_JOB_ID".into(), job.id.to_string()));
            env.push(("STEWARD_QUEUE".into(), job.queue.clone()));
            env.push(("STEWARD_ATTEMPT".into(), job.attempt.to_string()));
            let cmd = process::Command {
                program: pspec.command.first().cloned().unwrap_or_default().into(),
                args: pspec.command.iter().skip(1).cloned().collect(),
                env,
                cwd: pspec.working_dir.clone(),
                inherit_fd: None,
                stdin_pipe: true,
            };
            pool.exec.runs.insert(
                lane,
                ExecRun {
                    job: job.id,
                    token: job.token,
                    attempt: job.attempt,
                    queue: job.queue.clone(),
                    pid: None,
                    started: now,
                    timeout,
                    deadline: None,
                    stop: None,
                    killed: false,
                    exit: None,
                    open_streams: 2,
                    stdout: Arc::default(),
                    stderr: Arc::default(),
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
        let stop_signal = self
            .pools
            .get(&name)
            .map(|p| p.spec.stop_signal)
            .unwrap_or(Signal::SIGTERM);
        if result.is_ok()
            && let Some(p) = self.pools.get_mut(&name)
        {
            p.exec.resources_wait = None;
        }
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
                                super::RESOURCE_RETRY.as_secs());
                        }
                        p.exec.resources_wait = Some(now + super::RESOURCE_RETRY);
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
                run.started = child.started;
                run.deadline = run.timeout.map(|t| after(child.started, t));
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
                if let Some(exit) = early {
                    self.exec_pids.remove(&pid);
                    self.on_exec_exit(&name, lane, exit, now);
                } else if run.killed {
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                } else if run.stop.is_some() {
                    let _ = process::signal_group(pid, stop_signal);
                }
            }
        }
    }

    pub(super) fn on_exec_exit(&mut self, name: &str, lane: u32, exit: Exit, now: Instant) {
        if let Some(run) = self
            .pools
            .get_mut(name)
            .and_then(|p| p.exec.runs.get_mut(&lane))
        {
            run.exit = Some((exit, now));
        }
        self.try_complete_exec(name, lane, now);
    }

    pub(super) fn on_exec_stream_closed(&mut self, name: String, lane: u32, job: i64) {
        if let Some(run) = self
            .pools
            .get_mut(&name)
            .and_then(|p| p.exec.runs.get_mut(&lane))
            && run.job == job
        {
            run.open_streams = run.open_streams.saturating_sub(1);
        }
        self.try_complete_exec(&name, lane, Instant::now());
    }

    /// Record the outcome once the process is gone and its output read (or given up on).
    fn try_complete_exec(&mut self, name: &str, lane: u32, now: Instant) {
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        let ready = pool.exec.runs.get(&lane).is_some_and(|r| {
            r.exit
                .is_some_and(|(_, at)| r.open_streams == 0 || now >= at + DRAIN_OUTPUT)
        });
        if !ready {
            return;
        }
        let Some(run) = pool.exec.runs.remove(&lane) else {
            return;
        };
        let no_retry = pool.spec.no_retry_exit_codes.clone();
        let Some((exit, _)) = run.exit else { return };
        let (out_tail, out_last) = run
            .stdout
            .lock()
            .map(|c| (c.text(), c.last_line()))
            .unwrap_or_default();
        let (err_tail, err_last) = run
            .stderr
            .lock()
            .map(|c| (c.text(), c.last_line()))
            .unwrap_or_default();
        let ran = now.duration_since(run.started);
        let outcome = match run.stop {
            Some((ExecStop::Timeout, _)) => Outcome::TimedOut {
                reason: format!(
                    "ran past its timeout and was stopped ({})",
                    super::policy::describe_exit(exit)
                ),
            },
            Some((ExecStop::Cancelled, _)) => Outcome::Cancelled {
                reason: format!(
                    "cancelled; the process was stopped ({})",
                    super::policy::describe_exit(exit)
                ),
            },
            Some((ExecStop::Shutdown, _)) => Outcome::Interrupted {
                reason: "steward stopped while the job process ran".to_string(),
            },
            None => jobs::exec_outcome(exit, &no_retry, out_last.as_deref(), err_last.as_deref()),
        };
        self.observed.metrics.job_ran(&run.queue, ran);
        if matches!(outcome, Outcome::Crashed { .. }) {
            self.observed.metrics.jobs_reclaimed("worker_exit", 1);
        }
        tracing::debug!(JOB_ID = run.job, POOL = %name, "job {} process ended: {} after {}", run.job, super::policy::describe_exit(exit), human(ran));
        let output = AttemptOutput {
            worker: Some(format!("{name}/{lane}")),
            pid: run.pid,
            stdout_tail: out_tail,
            stderr_tail: err_tail,
        };
        self.finish_job_with(
            run.job,
            run.token,
            &run.queue,
            run.attempt,
            outcome,
            Some(output),
        );
    }

    /// Send the stop signal to a run's process group; SIGKILL follows at `kill_at`.
    fn stop_exec(&mut self, name: &str, lane: u32, why: ExecStop, now: Instant) -> Option<String> {
        let pool = self.pools.get_mut(name)?;
        let (sig, timeout) = (pool.spec.stop_signal, pool.spec.stop_timeout);
        let kill_at = match self.shutdown.as_ref() {
            Some(sd) => after(now, timeout).min(sd.deadline),
            None => after(now, timeout),
        };
        let run = pool.exec.runs.get_mut(&lane)?;
        if run.stop.is_some() || run.exit.is_some() {
            return None;
        }
        run.stop = Some((why, kill_at));
        if let Some(pid) = run.pid {
            let _ = process::signal_group(pid, sig);
        }
        Some(format!(
            "sent {} to the process group of job {} (pid {}); SIGKILL in {}",
            sig.as_str(),
            run.job,
            run.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "starting".into()),
            human(kill_at.saturating_duration_since(now))
        ))
    }

    /// Timeouts, stop escalation, output drain and the shutdown drain of exec runs.
    pub(super) fn exec_timers(&mut self, now: Instant) {
        let mut todo: Vec<(String, u32, u8)> = Vec::new();
        for (name, pool) in &self.pools {
            let drain_until = self
                .shutdown
                .as_ref()
                .map(|sd| drain_end(sd.started, sd.deadline, pool.spec.stop_timeout));
            for (&lane, r) in &pool.exec.runs {
                if r.exit.is_some() {
                    todo.push((name.clone(), lane, 0));
                } else if let Some((_, kill_at)) = r.stop {
                    if now >= kill_at && !r.killed {
                        todo.push((name.clone(), lane, 1));
                    }
                } else if r.deadline.is_some_and(|d| now >= d) {
                    todo.push((name.clone(), lane, 2));
                } else if drain_until.is_some_and(|d| now >= d) {
                    todo.push((name.clone(), lane, 3));
                }
            }
        }
        for (name, lane, what) in todo {
            match what {
                0 => self.try_complete_exec(&name, lane, now),
                1 => {
                    if let Some(r) = self
                        .pools
                        .get_mut(&name)
                        .and_then(|p| p.exec.runs.get_mut(&lane))
                    {
                        r.killed = true;
                        if let Some(pid) = r.pid {
                            tracing::warn!(JOB_ID = r.job, POOL = %name, "job {} (pid {pid}) did not stop; sending SIGKILL to its process group", r.job);
                            let _ = process::signal_group(pid, Signal::SIGKILL);
                        }
                    }
                }
                2 => {
                    if let Some(msg) = self.stop_exec(&name, lane, ExecStop::Timeout, now) {
                        tracing::warn!(POOL = %name, "job ran past its timeout: {msg}");
                    }
                }
                _ => {
                    if let Some(msg) = self.stop_exec(&name, lane, ExecStop::Shutdown, now) {
                        tracing::info!(POOL = %name, "stopping: {msg}");
                    }
                }
            }
        }
    }

    /// The earliest exec deadline, for the loop's timer.
    pub(super) fn exec_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for pool in self.pools.values() {
            if let Some(t) = pool.exec.resources_wait {
                at(t);
            }
            if let Some(sd) = &self.shutdown
                && !pool.exec.runs.is_empty()
            {
                at(drain_end(sd.started, sd.deadline, pool.spec.stop_timeout));
            }
            for r in pool.exec.runs.values() {
                if let Some((_, t)) = r.exit {
                    at(t + DRAIN_OUTPUT);
                } else if let Some((_, kill_at)) = r.stop {
                    if !r.killed {
                        at(kill_at);
                    }
                } else if let Some(d) = r.deadline {
                    at(d);
                }
            }
        }
        next
    }

    /// `steward cancel` for a job running in an exec pool: stop its process.
    pub(super) fn cancel_exec(&mut self, job: i64) -> Option<String> {
        let found = self.pools.iter().find_map(|(n, p)| {
            p.exec
                .runs
                .iter()
                .find(|(_, r)| r.job == job)
                .map(|(l, _)| (n.clone(), *l))
        })?;
        let msg = self.stop_exec(&found.0, found.1, ExecStop::Cancelled, Instant::now());
        Some(
            msg.map(|m| format!("cancelling job {job}: {m}"))
                .unwrap_or_else(|| format!("job {job} is already stopping")),
        )
    }

    /// A forced stop: SIGKILL to every job process now. Their jobs are recorded as
    /// interrupted once the processes are gone.
    pub(super) fn kill_exec_runs(&mut self) {
        let now = Instant::now();
        for pool in self.pools.values_mut() {
            for r in pool.exec.runs.values_mut() {
                if r.stop.is_none() {
                    r.stop = Some((ExecStop::Shutdown, now));
                }
                r.killed = true;
                if let Some(pid) = r.pid {
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                }
            }
        }
    }

    /// Exec runs still going (the daemon waits for them before it exits).
    pub(super) fn exec_running(&self) -> usize {
        self.pools.values().map(|p| p.exec.runs.len()).sum()
    }
}
