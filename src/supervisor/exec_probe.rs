//! Health probes that run a command (`[pool.NAME.health] exec = [...]`).
//!
//! The loop reaps every child of the daemon, so a probe command is started by the
//! spawner like a worker (its own process group, no stdin), its exit comes through the
//! loop's reaper, and it is SIGKILLed (with its group) once it runs past the probe's
//! timeout. At most one probe of a worker runs at a time: a probe that is due while the
//! last one still runs is skipped. What it wrote on stdout and stderr is kept up to
//! [`probe::SNIPPET`] bytes for a failing result; the rest is read and dropped so that it
//! never blocks on a full pipe.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::{Event, SlotId, Supervisor};
use crate::probe::{self, SNIPPET};
use crate::process::{self, Child};
use crate::time::after;

/// How long after a probe's exit its output may still be read before it is judged.
const OUTPUT_WAIT: Duration = Duration::from_millis(100);

/// A probe command that runs.
pub(super) struct ProbeRun {
    slot: SlotId,
    /// The worker it probes: a result for an older run is dropped.
    worker: i32,
    started: Instant,
    timeout: Duration,
    /// Set once it was killed for running past `timeout`.
    timed_out: bool,
    output: Arc<Mutex<Vec<u8>>>,
    closed: Vec<oneshot::Receiver<()>>,
}

impl ProbeRun {
    fn deadline(&self) -> Option<Instant> {
        (!self.timed_out).then(|| after(self.started, self.timeout))
    }
}

/// Probe commands being started or running.
#[derive(Default)]
pub(super) struct Probes {
    /// By the probe's pid.
    pub running: std::collections::HashMap<i32, ProbeRun>,
    /// Slots whose probe was asked of the spawner and not answered yet.
    spawning: HashSet<SlotId>,
}

/// Read `fd` to its end, keeping what fits in `into` (up to [`SNIPPET`] bytes in all).
fn collect(fd: OwnedFd, into: Arc<Mutex<Vec<u8>>>) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            let mut chunk = [0u8; 1024];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut kept) = into.lock() {
                    let room = SNIPPET.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        let _ = tx.send(());
    });
    rx
}

impl Supervisor {
    /// The prober of slot `id` says a command probe of its worker `pid` is due.
    pub(super) fn exec_probe_due(&mut self, id: SlotId, pid: i32) {
        let busy = self.probes.spawning.contains(&id)
            || self.probes.running.values().any(|r| r.slot == id);
        let Some(slot) = self.slots.get(&id) else {
            return;
        };
        if busy || slot.run.pid() != Some(pid) || self.shutdown.is_some() {
            return;
        }
        let Some(probe::Target::Exec(argv)) = slot.spec.probe_for(slot.index) else {
            return;
        };
        let (_, own_env) = slot.spec.for_instance(slot.index);
        let mut env = process::base_environment(&self.env.vars, slot.spec.inherit_env);
        env.extend(own_env);
        env.push(("STEWARD_POOL".into(), slot.pool.clone()));
        env.push(("STEWARD_INSTANCE".into(), slot.index.to_string()));
        env.push(("STEWARD_WORKER_PID".into(), pid.to_string()));
        let cmd = process::Command {
            program: argv.first().cloned().unwrap_or_default().into(),
            args: argv.iter().skip(1).cloned().collect(),
            env,
            cwd: slot.spec.working_dir.clone(),
            inherit_fd: None,
            stdin_pipe: false,
            cgroup: None,
        };
        self.probes.spawning.insert(id);
        self.spawn_asked();
        let tx = self.events_tx.clone();
        self.spawner.spawn(cmd, move |result| {
            let _ = tx.send(Event::ProbeSpawned {
                slot: id,
                pid,
                result,
            });
        });
    }

    /// The spawner answered for a probe of slot `id`'s worker `worker`.
    pub(super) fn probe_spawned(&mut self, id: SlotId, worker: i32, result: io::Result<Child>) {
        let early = match &result {
            Ok(child) => self.early_exits.take(child.pid, child.began),
            Err(_) => None,
        };
        self.spawn_answered();
        self.probes.spawning.remove(&id);
        let timeout = self
            .slots
            .get(&id)
            .and_then(|s| s.spec.health.as_ref())
            .map_or(Duration::from_secs(5), |h| h.timeout);
        let child = match result {
            Ok(child) => child,
            Err(e) => {
                let outcome = probe::Outcome {
                    ok: false,
                    detail: format!("cannot start the probe command: {e}"),
                    snippet: None,
                    latency: Duration::ZERO,
                };
                if let Some(slot) = self.slots.get(&id) {
                    super::health::note(
                        &self.observed.metrics,
                        &slot.pool,
                        &slot.last_probe,
                        &outcome,
                    );
                }
                return self.probed(id, worker, outcome);
            }
        };
        let output = Arc::new(Mutex::new(Vec::new()));
        let closed = vec![
            collect(child.stdout, output.clone()),
            collect(child.stderr, output.clone()),
        ];
        let pid = child.pid;
        self.probes.running.insert(
            pid,
            ProbeRun {
                slot: id,
                worker,
                started: child.started,
                timeout,
                timed_out: false,
                output,
                closed,
            },
        );
        if let Some(exit) = early {
            self.probe_exited(pid, exit, Instant::now());
        }
    }

    /// Probe `pid` exited: judged once its output is read (for at most [`OUTPUT_WAIT`]).
    pub(super) fn probe_exited(&mut self, pid: i32, exit: crate::model::Exit, now: Instant) {
        let Some(run) = self.probes.running.remove(&pid) else {
            return;
        };
        let latency = now.saturating_duration_since(run.started);
        let timed_out = run.timed_out.then_some(run.timeout);
        let tx = self.events_tx.clone();
        let metrics = self.observed.metrics.clone();
        let seen = self
            .slots
            .get(&run.slot)
            .map(|s| (s.pool.clone(), s.last_probe.clone()));
        tokio::spawn(async move {
            for c in run.closed {
                let _ = tokio::time::timeout(OUTPUT_WAIT, c).await;
            }
            let output = run.output.lock().map(|o| o.clone()).unwrap_or_default();
            let outcome = probe::exec_outcome(exit, timed_out, &output, latency);
            if let Some((pool, last)) = &seen {
                super::health::note(&metrics, pool, last, &outcome);
            }
            let _ = tx.send(Event::Probed {
                slot: run.slot,
                pid: run.worker,
                outcome,
            });
        });
    }

    /// Kill the probes that ran past their timeout.
    pub(super) fn probe_timers(&mut self, now: Instant) {
        for (pid, run) in &mut self.probes.running {
            if run.deadline().is_some_and(|d| now >= d) {
                run.timed_out = true;
                let _ = process::signal_group(*pid, Signal::SIGKILL);
            }
        }
    }

    /// When the next probe runs past its timeout.
    pub(super) fn probe_deadline(&self) -> Option<Instant> {
        self.probes
            .running
            .values()
            .filter_map(ProbeRun::deadline)
            .min()
    }

    /// Stopping: no probe outlives the daemon.
    pub(super) fn kill_probes(&mut self) {
        for (pid, run) in &mut self.probes.running {
            run.timed_out = true;
            let _ = process::signal_group(*pid, Signal::SIGKILL);
        }
    }
}
