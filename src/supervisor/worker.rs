//! One worker slot (a plain or a protocol worker), as a state machine.
//!
//! The slot's state carries its own data, [`Worker::step`] is the one place it changes,
//! as a pure function of (state, what happened, now), and it answers with the effects the
//! supervisor must carry out (start a process, signal it, send `drain`, log, retire the
//! slot). Its timers come from the state itself ([`Worker::deadline`]), so the deadline
//! that is scheduled and the one acted on cannot disagree.
//!
//! ```text
//!             ┌──────────────── backoff over ───────────────┐
//!             ▼                                             │
//!  Stopped ─► Spawning ─spawned─► Starting ─stable/ready─► Running ─drain─► Draining
//!             │                     │                        │                │
//!             │ failed to start     │ start timeout,         │ stop           │ empty or
//!             ▼                     ▼ lease, cancel grace    ▼                ▼ drain over
//!        BackingOff ◄─exited─── Killing        Stopping ◄──────────────────────┘
//!             │  (policy: restart)              │ kill_at passed: SIGKILL
//!             └─► Stopped / Failed (policy)     └─exited─► retire (keep, replace, remove)
//! ```
//!
//! What the machine cannot see for itself (whether the worker holds jobs, whether its
//! input waits unread, when its leases and cancel graces end) comes with each
//! [`Input::Tick`] as [`Facts`].

use std::time::{Duration, Instant};

use super::policy::{self, AfterExit, Exit, RestartRules, RunFacts};
use crate::config::PoolSpec;
use crate::time::after;

/// How long past a deadline the judgment may wait for a worker's unread input.
pub const PENDING_GRACE: Duration = Duration::from_secs(5);
/// How often a deadline waiting for unread input is looked at again.
pub const RECHECK: Duration = Duration::from_millis(50);
/// How soon a spawn that failed for want of resources is tried again.
pub const RESOURCE_RETRY: Duration = Duration::from_secs(1);

/// Why steward killed a protocol worker outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KillReason {
    StartTimeout,
    Hung {
        lease: Duration,
    },
    JobTimeout(i64),
    Cancelled(i64),
    /// The daemon could not renew its lease in a shared journal: what it holds must stop
    /// before another host may take it back. Not the worker's fault.
    Fenced,
    /// Its health probes failed (`[pool.NAME.health]`).
    Unhealthy,
    /// `watchdog`: no `WATCHDOG=1` for `period` (`triggered`: it sent `WATCHDOG=trigger`).
    Watchdog {
        period: Duration,
        triggered: bool,
    },
}

pub(super) use crate::config::Readiness;

/// What to do with a slot once its process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retire {
    /// Nothing: it stays (stopped, failed, or restarting by policy).
    Keep,
    /// Start it again with the pool's current spec (rolling restart).
    Replace,
    /// Remove it (scale down, pool removed, shutdown).
    Remove,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    /// No process and none coming: not started yet, stopped by steward, or left stopped
    /// by its restart policy.
    Stopped,
    /// Fork/exec asked, the answer not back; `stop`: a stop was asked meanwhile.
    Spawning {
        stop: bool,
    },
    /// Up, not counted as running yet: a plain worker until it has stayed up
    /// `stable_after`, a protocol worker until it says `ready`.
    Starting {
        pid: i32,
        since: Instant,
    },
    Running {
        pid: i32,
        since: Instant,
    },
    /// A protocol worker was sent `drain`: it is stopped once it holds nothing, or at
    /// `until`.
    Draining {
        pid: i32,
        since: Instant,
        until: Instant,
    },
    /// The stop signal went out at `asked`; SIGKILL at `kill_at` unless `killed`.
    Stopping {
        pid: i32,
        since: Instant,
        asked: Instant,
        kill_at: Instant,
        killed: bool,
    },
    /// Steward SIGKILLed the worker for `why`; its exit is an unstable one.
    Killing {
        pid: i32,
        since: Instant,
        why: KillReason,
    },
    /// Started again at `until`.
    BackingOff {
        until: Instant,
        crash_looping: bool,
    },
    /// Not restarted until `steward restart` or a reload that changes the pool.
    Failed,
}

/// What the machine needs of a pool's spec.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    pub protocol: bool,
    /// What makes a started worker count as running.
    pub ready: Readiness,
    /// `WATCHDOG=1` is due this often once it runs.
    pub watchdog: Option<Duration>,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub restart: RestartRules,
}

impl Rules {
    pub fn of(spec: &PoolSpec) -> Rules {
        Rules {
            protocol: spec.is_protocol(),
            ready: spec.ready,
            watchdog: spec.watchdog,
            start_timeout: spec.start_timeout,
            stop_timeout: spec.stop_timeout,
            restart: RestartRules {
                restart: spec.restart,
                backoff: spec.backoff.clone(),
                crash_loop_after: spec.crash_loop_after,
                give_up_after: spec.give_up_after,
                stable_after: spec.stable_after,
                exit_codes: spec.exit_codes.clone(),
            },
        }
    }
}

/// What the machine cannot see for itself, as of a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Facts {
    /// The worker holds jobs (or jobs are on their way to it).
    pub holds_jobs: bool,
    /// The worker sent something the loop has not handled yet.
    pub input_pending: bool,
    /// When the first lease of a held job runs out, and the lease's length.
    pub lease: Option<(Instant, Duration)>,
    /// The first grace after `cancel` to end, and why the worker is killed then.
    pub job_kill: Option<(KillReason, Instant)>,
    /// When it last sent `WATCHDOG=1` on its notify socket.
    pub watchdog: Option<Instant>,
}

/// What happens to a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Input {
    Spawned {
        pid: i32,
        started: Instant,
    },
    /// The spawn failed for want of descriptors, processes or memory: not the worker's
    /// fault.
    ShortOfResources,
    /// The process exited (or could not be started: the caller says `Code(127)`);
    /// `jitter` in [0, 1) spreads the restart delay.
    Exited {
        exit: Exit,
        jitter: f64,
    },
    /// The worker cannot be started as configured (a required variable is missing): it
    /// is parked as failed, without a process, until a restart or a reload that changes
    /// its pool.
    CannotStart,
    /// Its health probes failed: stopped as by `Stop` (drained first when `drain`), and
    /// its exit counted as an unstable one.
    Unhealthy {
        drain: bool,
    },
    /// The worker said it is ready this way (`ready` on its socket, `READY=1`, a passing
    /// probe); only the way its pool's `ready` names counts.
    Ready(Readiness),
    /// It sent `WATCHDOG=trigger`: killed as hung.
    WatchdogTrigger,
    /// It sent `EXTEND_TIMEOUT_USEC`: the start timeout, drain or stop timeout under way
    /// ends no sooner than this long from now.
    Extend(Duration),
    /// It sent `STOPPING=1`: its next exit is intentional, not a crash.
    Stopping,
    /// Stop the worker and then `retire` the slot; `drain`: a protocol worker holding
    /// jobs is sent `drain` first.
    Stop {
        retire: Retire,
        drain: bool,
    },
    /// A forced stop (a second SIGTERM): SIGKILL now.
    Kill,
    /// The daemon lost its lease in a shared journal: a worker holding jobs is killed
    /// and started again at once.
    Fence,
    /// Time passed: whatever is due is done.
    Tick(Facts),
}

/// What the supervisor must do for a slot.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// Start the worker's process now.
    Spawn,
    /// Send the pool's stop signal to the process group of `pid`; SIGKILL at `kill_at`.
    Signal { pid: i32, kill_at: Instant },
    /// The stop signal was not heeded for `waited`: SIGKILL to the process group.
    Escalate { pid: i32, waited: Duration },
    /// SIGKILL the process group now (a forced stop).
    Kill { pid: i32 },
    /// SIGKILL the process group now, for `why`.
    KillFor { pid: i32, why: KillReason },
    /// Send `drain`; the worker is stopped at `until` at the latest.
    Drain { until: Instant },
    /// The worker counts as running now (as its pool's `ready` says).
    Up { pid: i32 },
    /// A spawn failed for want of resources; tried again at `retry_at`.
    WaitForResources { retry_at: Instant },
    /// The run is over. `deliberate`: steward had asked it to stop; otherwise `next` is
    /// what the restart policy decided (with the delay's jitter in).
    Exited(RunEnded),
    /// No process is left and a stop was asked: apply `Retire`.
    Retire(Retire),
}

/// How a run ended, and what comes next.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnded {
    pub exit: Exit,
    pub pid: Option<i32>,
    pub ran_for: Duration,
    /// steward had asked it to stop.
    pub deliberate: bool,
    pub killed_for: Option<KillReason>,
    /// What the restart policy decided (with the delay's jitter in); `None` after a
    /// deliberate stop.
    pub next: Option<AfterExit>,
}

/// The machine of one slot.
#[derive(Debug, Clone)]
pub(super) struct Worker {
    pub phase: Phase,
    pub rules: Rules,
    /// What happens once the process is gone.
    pub retire: Retire,
    /// Consecutive unstable exits (the backoff level).
    pub level: u32,
    became_ready: bool,
    /// A deadline passed while the worker's input was still unread: judge it again then.
    recheck: Option<Instant>,
    /// This run is being stopped because its health probes failed: its exit is an
    /// unstable one, restarted by the policy with backoff, not a deliberate stop.
    health_stop: bool,
    /// When this run came to count as running (the watchdog runs from then).
    up_at: Option<Instant>,
    /// `EXTEND_TIMEOUT_USEC` during the start: the start timeout ends no sooner.
    start_extended: Option<Instant>,
    /// It sent `STOPPING=1`: its exit is intentional.
    announced_stop: bool,
}

/// When a drain during shutdown must end: early enough to leave the stop signal its
/// `stop_timeout`, but never using more than half of what is left of the budget
/// (`deadline`) for that.
pub(super) fn drain_end(now: Instant, deadline: Instant, stop_timeout: Duration) -> Instant {
    let left = deadline.saturating_duration_since(now);
    after(now, left - stop_timeout.min(left / 2))
}

impl Worker {
    pub fn new(rules: Rules) -> Worker {
        Worker {
            phase: Phase::Stopped,
            rules,
            retire: Retire::Keep,
            level: 0,
            became_ready: false,
            health_stop: false,
            recheck: None,
            up_at: None,
            start_extended: None,
            announced_stop: false,
        }
    }

    /// A fresh start with `rules` (a rolling restart): no backoff level, nothing to retire.
    pub fn replaced(&mut self, rules: Rules) {
        self.rules = rules;
        self.level = 0;
        self.retire = Retire::Keep;
        self.phase = Phase::Stopped;
    }

    /// The process is being started (the caller asks the spawner).
    pub fn spawning(&mut self) {
        self.phase = Phase::Spawning { stop: false };
        self.recheck = None;
    }

    pub fn pid(&self) -> Option<i32> {
        match self.phase {
            Phase::Starting { pid, .. }
            | Phase::Running { pid, .. }
            | Phase::Draining { pid, .. }
            | Phase::Stopping { pid, .. }
            | Phase::Killing { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// When the current process started.
    pub fn since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { since, .. }
            | Phase::Running { since, .. }
            | Phase::Draining { since, .. }
            | Phase::Stopping { since, .. }
            | Phase::Killing { since, .. } => Some(since),
            _ => None,
        }
    }

    /// Whether jobs may be handed to it.
    pub fn takes_jobs(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    /// Whether it is a new worker still coming up (rolling restarts wait for it).
    pub fn coming_up(&self) -> bool {
        matches!(
            self.phase,
            Phase::Spawning { .. }
                | Phase::Starting { .. }
                | Phase::BackingOff { .. }
                | Phase::Failed
        )
    }

    /// As `steward status` shows it.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Spawning { .. } | Phase::Starting { .. } => "starting",
            Phase::Running { .. } | Phase::Draining { .. } => "running",
            Phase::BackingOff {
                crash_looping: true,
                ..
            } => "crash-looping",
            Phase::BackingOff { .. } => "backing-off",
            Phase::Stopping { .. } | Phase::Killing { .. } => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }

    /// The next instant something is due, given `facts` as of now.
    pub fn deadline(&self, facts: &Facts, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        match self.phase {
            Phase::Starting { since, .. } if self.rules.ready == Readiness::Stable => {
                at(after(since, self.rules.restart.stable_after))
            }
            Phase::Starting { since, .. } => at(self.start_due(since)),
            Phase::BackingOff { until, .. } => at(until),
            Phase::Stopping {
                kill_at,
                killed: false,
                ..
            } => at(kill_at),
            Phase::Draining { until, .. } => at(if facts.holds_jobs { until } else { now }),
            _ => {}
        }
        if let Some(t) = self.watchdog_due(facts) {
            at(t);
        }
        if self.rules.protocol && self.watched() {
            if let Some((t, _)) = facts.lease {
                at(t);
            }
            if let Some((_, t)) = facts.job_kill {
                at(t);
            }
            if let Some(r) = self.recheck {
                at(r);
            }
        }
        // A passed deadline waiting for input is looked at again at `recheck`, not on
        // every turn.
        next.map(|t| match self.recheck {
            Some(r) if t < r => r,
            _ => t,
        })
    }

    /// When a worker that must say it is ready is killed for not having said so.
    fn start_due(&self, since: Instant) -> Instant {
        let due = after(since, self.rules.start_timeout);
        self.start_extended.map_or(due, |e| e.max(due))
    }

    /// When a running worker with a `watchdog` is killed unless it sends `WATCHDOG=1`.
    fn watchdog_due(&self, facts: &Facts) -> Option<Instant> {
        let period = self.rules.watchdog?;
        if !matches!(self.phase, Phase::Running { .. } | Phase::Draining { .. }) {
            return None;
        }
        let from = match (self.up_at, facts.watchdog) {
            (Some(u), Some(p)) => u.max(p),
            (u, p) => u.or(p)?,
        };
        Some(after(from, period))
    }

    /// Whether its protocol deadlines (start timeout, leases, cancel graces) apply.
    fn watched(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting { .. } | Phase::Running { .. } | Phase::Draining { .. }
        )
    }

    /// The one transition function. `shutdown`: the end of the daemon's stop budget, if
    /// it is stopping.
    pub fn step(&mut self, input: Input, now: Instant, shutdown: Option<Instant>) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Spawned { pid, started } => {
                self.health_stop = false;
                let stop = matches!(self.phase, Phase::Spawning { stop: true });
                self.phase = Phase::Starting {
                    pid,
                    since: started,
                };
                self.became_ready = false;
                self.recheck = None;
                self.up_at = None;
                self.start_extended = None;
                self.announced_stop = false;
                if stop {
                    self.stop_now(now, shutdown, &mut out);
                }
            }
            Input::ShortOfResources => {
                if matches!(self.phase, Phase::Spawning { stop: true }) {
                    self.phase = Phase::Stopped;
                    out.push(Effect::Retire(self.retire));
                } else {
                    let retry_at = after(now, RESOURCE_RETRY);
                    self.phase = Phase::BackingOff {
                        until: retry_at,
                        crash_looping: false,
                    };
                    out.push(Effect::WaitForResources { retry_at });
                }
            }
            Input::Exited { exit, jitter } => self.exited(exit, jitter, now, shutdown, &mut out),
            Input::Unhealthy { drain } => {
                if let Phase::Running { pid, since } = self.phase {
                    self.health_stop = true;
                    if drain {
                        let until = after(now, self.rules.stop_timeout);
                        self.phase = Phase::Draining { pid, since, until };
                        out.push(Effect::Drain { until });
                    } else {
                        self.stop_now(now, shutdown, &mut out);
                    }
                }
            }
            Input::CannotStart => {
                if matches!(self.phase, Phase::Spawning { stop: true }) {
                    self.phase = Phase::Stopped;
                    out.push(Effect::Retire(self.retire));
                } else if matches!(self.phase, Phase::Spawning { .. }) {
                    self.phase = Phase::Failed;
                }
            }
            Input::Ready(how) => {
                if let Phase::Starting { pid, since } = self.phase
                    && how == self.rules.ready
                {
                    self.up(pid, since, now, &mut out);
                }
            }
            Input::WatchdogTrigger => {
                if let Some(period) = self.rules.watchdog
                    && let Phase::Starting { pid, since }
                    | Phase::Running { pid, since }
                    | Phase::Draining { pid, since, .. } = self.phase
                {
                    let why = KillReason::Watchdog {
                        period,
                        triggered: true,
                    };
                    self.phase = Phase::Killing { pid, since, why };
                    out.push(Effect::KillFor { pid, why });
                }
            }
            Input::Extend(d) => {
                let to = after(now, d);
                match &mut self.phase {
                    Phase::Starting { .. } => {
                        self.start_extended = Some(self.start_extended.map_or(to, |e| e.max(to)));
                    }
                    Phase::Draining { until, .. } => {
                        let end = shutdown.map(|s| drain_end(now, s, self.rules.stop_timeout));
                        *until = end.map_or(to, |e| to.min(e)).max(*until);
                    }
                    Phase::Stopping {
                        kill_at,
                        killed: false,
                        ..
                    } => {
                        *kill_at = shutdown.map_or(to, |s| to.min(s)).max(*kill_at);
                    }
                    _ => {}
                }
            }
            Input::Stopping => {
                if self.pid().is_some() {
                    self.announced_stop = true;
                }
            }
            Input::Stop { retire, drain } => {
                if self.retire != Retire::Remove {
                    self.retire = retire;
                }
                match self.phase {
                    Phase::Draining { pid, since, until } => {
                        if let Some(d) = shutdown {
                            let end = drain_end(now, d, self.rules.stop_timeout);
                            self.phase = Phase::Draining {
                                pid,
                                since,
                                until: until.min(end),
                            };
                        }
                    }
                    Phase::Running { pid, since } if drain => {
                        // Stopping steward: drain within the shutdown budget. Restarting
                        // or removing one worker: drain for up to its stop_timeout.
                        let until = match shutdown {
                            Some(d) => drain_end(now, d, self.rules.stop_timeout),
                            None => after(now, self.rules.stop_timeout),
                        };
                        self.phase = Phase::Draining { pid, since, until };
                        out.push(Effect::Drain { until });
                    }
                    _ => self.stop_now(now, shutdown, &mut out),
                }
            }
            Input::Kill => {
                if let (Some(pid), Some(since)) = (self.pid(), self.since()) {
                    self.phase = Phase::Stopping {
                        pid,
                        since,
                        asked: now,
                        kill_at: now,
                        killed: true,
                    };
                    out.push(Effect::Kill { pid });
                }
            }
            Input::Fence => {
                if self.watched()
                    && let (Some(pid), Some(since)) = (self.pid(), self.since())
                {
                    let why = KillReason::Fenced;
                    self.phase = Phase::Killing { pid, since, why };
                    out.push(Effect::KillFor { pid, why });
                }
            }
            Input::Tick(facts) => self.tick(facts, now, shutdown, &mut out),
        }
        out
    }

    fn up(&mut self, pid: i32, since: Instant, now: Instant, out: &mut Vec<Effect>) {
        self.phase = Phase::Running { pid, since };
        self.became_ready = true;
        self.up_at = Some(now);
        out.push(Effect::Up { pid });
    }

    /// Send the stop signal now (no drain), or retire a slot without a process.
    fn stop_now(&mut self, now: Instant, shutdown: Option<Instant>, out: &mut Vec<Effect>) {
        match self.phase {
            Phase::Spawning { .. } => self.phase = Phase::Spawning { stop: true },
            Phase::Starting { pid, since }
            | Phase::Running { pid, since }
            | Phase::Draining { pid, since, .. } => {
                let kill_at = policy::kill_deadline(now, self.rules.stop_timeout, shutdown);
                self.phase = Phase::Stopping {
                    pid,
                    since,
                    asked: now,
                    kill_at,
                    killed: false,
                };
                out.push(Effect::Signal { pid, kill_at });
            }
            Phase::Stopping {
                pid,
                since,
                asked,
                kill_at,
                killed,
            } => {
                if let Some(d) = shutdown {
                    self.phase = Phase::Stopping {
                        pid,
                        since,
                        asked,
                        kill_at: kill_at.min(d),
                        killed,
                    };
                }
            }
            // SIGKILLed already: its exit retires it (the stop made it deliberate).
            Phase::Killing { .. } => {}
            Phase::BackingOff { .. } | Phase::Stopped | Phase::Failed => {
                self.phase = Phase::Stopped;
                out.push(Effect::Retire(self.retire));
            }
        }
    }

    fn exited(
        &mut self,
        exit: Exit,
        jitter: f64,
        now: Instant,
        shutdown: Option<Instant>,
        out: &mut Vec<Effect>,
    ) {
        let asked_to_stop = match self.phase {
            Phase::Spawning { stop } => stop,
            Phase::Stopping { .. } | Phase::Draining { .. } => true,
            Phase::Starting { .. } | Phase::Running { .. } | Phase::Killing { .. } => false,
            // No process: nothing to do (a stray report).
            Phase::Stopped | Phase::BackingOff { .. } | Phase::Failed => return,
        };
        let pid = self.pid();
        let ran_for = now.saturating_duration_since(self.since().unwrap_or(now));
        let killed_for = match self.phase {
            Phase::Killing { why, .. } => Some(why),
            _ if self.health_stop => Some(KillReason::Unhealthy),
            _ => None,
        };
        let asked_to_stop = asked_to_stop && !self.health_stop;
        let deliberate = asked_to_stop || self.retire != Retire::Keep || shutdown.is_some();
        self.recheck = None;
        if deliberate {
            self.phase = Phase::Stopped;
            out.push(Effect::Exited(RunEnded {
                exit,
                pid,
                ran_for,
                deliberate,
                killed_for,
                next: None,
            }));
            out.push(Effect::Retire(self.retire));
            return;
        }
        if killed_for == Some(KillReason::Fenced) {
            // Steward's own trouble: back at once, the backoff level untouched.
            self.phase = Phase::BackingOff {
                until: now,
                crash_looping: false,
            };
            out.push(Effect::Exited(RunEnded {
                exit,
                pid,
                ran_for,
                deliberate,
                killed_for,
                next: Some(AfterExit::Restart {
                    delay: Duration::ZERO,
                    level: self.level,
                    crash_looping: false,
                }),
            }));
            return;
        }
        let run = RunFacts {
            exit,
            ran_for,
            became_ready: self.became_ready,
            failed_probes: self.health_stop,
            announced: self.announced_stop,
        };
        let next = match policy::after_exit(&self.rules.restart, self.level, run) {
            AfterExit::Restart {
                delay,
                level,
                crash_looping,
            } => {
                let delay = policy::with_jitter(delay, self.rules.restart.backoff.jitter, jitter);
                self.level = level;
                self.phase = Phase::BackingOff {
                    until: after(now, delay),
                    crash_looping,
                };
                AfterExit::Restart {
                    delay,
                    level,
                    crash_looping,
                }
            }
            AfterExit::Stop { level } => {
                self.level = level;
                self.phase = Phase::Stopped;
                AfterExit::Stop { level }
            }
            AfterExit::Fail { level, reason } => {
                self.level = level;
                self.phase = Phase::Failed;
                AfterExit::Fail { level, reason }
            }
        };
        out.push(Effect::Exited(RunEnded {
            exit,
            pid,
            ran_for,
            deliberate,
            killed_for,
            next: Some(next),
        }));
    }

    fn tick(
        &mut self,
        facts: Facts,
        now: Instant,
        shutdown: Option<Instant>,
        out: &mut Vec<Effect>,
    ) {
        if self.recheck.is_some_and(|t| now >= t) {
            self.recheck = None;
        }
        // Judge a deadline that passed at `due` only once the worker's input is read (for
        // at most PENDING_GRACE past it): `true` while it waits, looked at again shortly.
        let waits = |due: Instant| facts.input_pending && now < after(due, PENDING_GRACE);
        match self.phase {
            Phase::Starting { pid, since } if self.rules.ready == Readiness::Stable => {
                if now >= after(since, self.rules.restart.stable_after) {
                    self.up(pid, since, now, out);
                }
                return;
            }
            Phase::BackingOff { until, .. } => {
                if now >= until {
                    out.push(Effect::Spawn);
                }
                return;
            }
            Phase::Stopping {
                pid,
                since,
                asked,
                kill_at,
                killed: false,
            } => {
                if policy::should_kill(now, kill_at, false) {
                    self.phase = Phase::Stopping {
                        pid,
                        since,
                        asked,
                        kill_at,
                        killed: true,
                    };
                    out.push(Effect::Escalate {
                        pid,
                        waited: now.saturating_duration_since(asked),
                    });
                }
                return;
            }
            _ => {}
        }
        if !self.watched() {
            return;
        }
        let (Some(pid), Some(since)) = (self.pid(), self.since()) else {
            return;
        };
        let kill = |why: KillReason, out: &mut Vec<Effect>| {
            out.push(Effect::KillFor { pid, why });
            Phase::Killing { pid, since, why }
        };
        if let Phase::Starting { .. } = self.phase {
            let due = self.start_due(since);
            if now < due {
                return;
            }
            // A protocol worker's `ready` may be in its socket, unread.
            if self.rules.protocol && waits(due) {
                self.recheck = Some(after(now, RECHECK));
            } else {
                self.phase = kill(KillReason::StartTimeout, out);
            }
            return;
        }
        if let (Some(due), Some(period)) = (self.watchdog_due(&facts), self.rules.watchdog)
            && now >= due
        {
            if waits(due) {
                self.recheck = Some(after(now, RECHECK));
            } else {
                let why = KillReason::Watchdog {
                    period,
                    triggered: false,
                };
                self.phase = kill(why, out);
            }
            return;
        }
        if !self.rules.protocol {
            return;
        }
        // Bytes that arrived count as hearing from the worker, so its lease is judged on
        // what was read: no wait here.
        if let Some((expiry, lease)) = facts.lease
            && now >= expiry
        {
            self.phase = kill(KillReason::Hung { lease }, out);
            return;
        }
        if let Some((why, due)) = facts.job_kill
            && now >= due
        {
            if waits(due) {
                self.recheck = Some(after(now, RECHECK));
            } else {
                self.phase = kill(why, out);
            }
            return;
        }
        if let Phase::Draining { until, .. } = self.phase {
            if facts.holds_jobs {
                if now < until {
                    return;
                }
                if waits(until) {
                    self.recheck = Some(after(now, RECHECK));
                    return;
                }
            }
            self.stop_now(now, shutdown, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backoff, RestartPolicy};

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn rules(protocol: bool) -> Rules {
        Rules {
            protocol,
            ready: if protocol {
                Readiness::Protocol
            } else {
                Readiness::Stable
            },
            watchdog: None,
            start_timeout: 10 * S,
            stop_timeout: 5 * S,
            restart: RestartRules {
                restart: RestartPolicy::Always,
                backoff: Backoff {
                    initial: 100 * MS,
                    max: 10 * S,
                    multiplier: 2.0,
                    jitter: 0.0,
                    reset_after: 60 * S,
                },
                crash_loop_after: 3,
                give_up_after: 0,
                stable_after: S,
                exit_codes: Default::default(),
            },
        }
    }

    /// A worker of `rules(protocol)` whose process (pid 10) started at `t0`.
    fn started(protocol: bool, t0: Instant) -> Worker {
        let mut w = Worker::new(rules(protocol));
        w.spawning();
        assert!(
            w.step(
                Input::Spawned {
                    pid: 10,
                    started: t0
                },
                t0,
                None
            )
            .is_empty()
        );
        w
    }

    fn tick(w: &mut Worker, now: Instant, facts: Facts) -> Vec<Effect> {
        w.step(Input::Tick(facts), now, None)
    }

    fn idle() -> Facts {
        Facts::default()
    }

    fn crash(w: &mut Worker, now: Instant) -> Vec<Effect> {
        w.step(
            Input::Exited {
                exit: Exit::Code(1),
                jitter: 0.0,
            },
            now,
            None,
        )
    }

    /// A protocol worker that said `ready` at `t0`.
    fn ready(t0: Instant) -> Worker {
        let mut w = started(true, t0);
        assert_eq!(
            w.step(Input::Ready(Readiness::Protocol), t0, None),
            vec![Effect::Up { pid: 10 }]
        );
        w
    }

    #[test]
    fn a_plain_worker_counts_as_running_once_it_stayed_up_stable_after() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + S));
        assert!(tick(&mut w, t0 + S / 2, idle()).is_empty());
        assert_eq!(w.state_name(), "starting");
        assert_eq!(tick(&mut w, t0 + S, idle()), vec![Effect::Up { pid: 10 }]);
        assert_eq!(w.state_name(), "running");
        assert!(w.takes_jobs());
        assert_eq!(w.deadline(&idle(), t0 + S), None);
    }

    #[test]
    fn crashes_back_off_longer_each_time_then_crash_loop_and_a_stable_run_resets() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            now += 10 * MS;
            let fx = crash(&mut w, now);
            let Some(Effect::Exited(RunEnded {
                next: Some(AfterExit::Restart { delay, .. }),
                deliberate: false,
                ..
            })) = fx.first()
            else {
                panic!("{fx:?}");
            };
            delays.push(*delay);
            let Phase::BackingOff { until, .. } = w.phase else {
                panic!("{:?}", w.phase)
            };
            assert_eq!(w.deadline(&idle(), now), Some(until));
            assert!(tick(&mut w, until - MS, idle()).is_empty());
            assert_eq!(tick(&mut w, until, idle()), vec![Effect::Spawn]);
            w.spawning();
            now = until;
            w.step(
                Input::Spawned {
                    pid: 11,
                    started: now,
                },
                now,
                None,
            );
        }
        assert_eq!(delays, vec![100 * MS, 200 * MS, 400 * MS, 800 * MS]);
        assert_eq!(w.level, 4);
        // The third crash in a row showed as a crash loop; the fourth still does.
        crash(&mut w, now + MS);
        assert_eq!(w.state_name(), "crash-looping");
        // A run longer than reset_after starts from level 0 again (and, stable, stays
        // there).
        let Phase::BackingOff { until, .. } = w.phase else {
            panic!()
        };
        w.spawning();
        w.step(
            Input::Spawned {
                pid: 12,
                started: until,
            },
            until,
            None,
        );
        tick(&mut w, until + S, idle());
        let fx = crash(&mut w, until + 61 * S);
        assert!(matches!(
            fx.first(),
            Some(Effect::Exited(RunEnded {
                next: Some(AfterExit::Restart {
                    level: 0,
                    crash_looping: false,
                    ..
                }),
                ..
            }))
        ));
        assert_eq!(w.state_name(), "backing-off");
    }

    #[test]
    fn exit_78_and_give_up_after_park_the_worker_as_failed() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        w.step(
            Input::Exited {
                exit: Exit::Code(78),
                jitter: 0.0,
            },
            t0 + S,
            None,
        );
        assert_eq!(w.phase, Phase::Failed);
        assert_eq!(w.deadline(&idle(), t0 + S), None);
        assert!(tick(&mut w, t0 + 3600 * S, idle()).is_empty());
        let mut w = started(false, t0);
        w.rules.restart.give_up_after = 1;
        crash(&mut w, t0 + MS);
        assert_eq!(w.state_name(), "failed");
    }

    #[test]
    fn restart_never_leaves_a_clean_exit_stopped() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        w.rules.restart.restart = RestartPolicy::Never;
        let fx = w.step(
            Input::Exited {
                exit: Exit::Code(0),
                jitter: 0.0,
            },
            t0 + 2 * S,
            None,
        );
        assert!(matches!(
            fx.first(),
            Some(Effect::Exited(RunEnded {
                next: Some(AfterExit::Stop { .. }),
                ..
            }))
        ));
        assert_eq!(w.phase, Phase::Stopped);
    }

    #[test]
    fn jitter_spreads_the_delay_within_its_bound() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        w.rules.restart.backoff.jitter = 0.5;
        w.step(
            Input::Exited {
                exit: Exit::Code(1),
                jitter: 0.999,
            },
            t0,
            None,
        );
        let Phase::BackingOff { until, .. } = w.phase else {
            panic!()
        };
        let d = until - t0;
        assert!(d >= 100 * MS && d <= 150 * MS, "{d:?}");
    }

    #[test]
    fn a_stop_signals_then_escalates_to_sigkill_once_and_retires_on_exit() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        let fx = w.step(
            Input::Stop {
                retire: Retire::Remove,
                drain: false,
            },
            t0 + S,
            None,
        );
        assert_eq!(
            fx,
            vec![Effect::Signal {
                pid: 10,
                kill_at: t0 + 6 * S
            }]
        );
        assert_eq!(w.state_name(), "stopping");
        assert_eq!(w.deadline(&idle(), t0 + S), Some(t0 + 6 * S));
        assert!(tick(&mut w, t0 + 5 * S, idle()).is_empty());
        assert_eq!(
            tick(&mut w, t0 + 6 * S, idle()),
            vec![Effect::Escalate {
                pid: 10,
                waited: 5 * S
            }]
        );
        assert!(tick(&mut w, t0 + 7 * S, idle()).is_empty());
        assert_eq!(w.deadline(&idle(), t0 + 7 * S), None);
        let fx = crash(&mut w, t0 + 7 * S);
        assert!(matches!(
            fx.as_slice(),
            [
                Effect::Exited(RunEnded {
                    deliberate: true,
                    next: None,
                    ..
                }),
                Effect::Retire(Retire::Remove)
            ]
        ));
    }

    #[test]
    fn the_shutdown_budget_cuts_the_kill_time_short() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        let fx = w.step(
            Input::Stop {
                retire: Retire::Remove,
                drain: false,
            },
            t0,
            Some(t0 + 2 * S),
        );
        assert_eq!(
            fx,
            vec![Effect::Signal {
                pid: 10,
                kill_at: t0 + 2 * S
            }]
        );
        // Already stopping for a rolling restart when the shutdown comes.
        let mut w = started(false, t0);
        w.step(
            Input::Stop {
                retire: Retire::Replace,
                drain: false,
            },
            t0,
            None,
        );
        w.step(
            Input::Stop {
                retire: Retire::Remove,
                drain: false,
            },
            t0,
            Some(t0 + S),
        );
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + S));
        assert_eq!(w.retire, Retire::Remove);
    }

    #[test]
    fn a_forced_stop_kills_at_once_and_never_twice() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        assert_eq!(
            w.step(Input::Kill, t0, Some(t0)),
            vec![Effect::Kill { pid: 10 }]
        );
        assert!(tick(&mut w, t0 + 10 * S, idle()).is_empty());
        let mut w = Worker::new(rules(false));
        assert!(w.step(Input::Kill, t0, Some(t0)).is_empty());
    }

    #[test]
    fn a_stop_asked_during_the_spawn_is_carried_out_when_it_answers() {
        let t0 = Instant::now();
        let mut w = Worker::new(rules(false));
        w.spawning();
        assert!(
            w.step(
                Input::Stop {
                    retire: Retire::Remove,
                    drain: false
                },
                t0,
                None
            )
            .is_empty()
        );
        let fx = w.step(
            Input::Spawned {
                pid: 10,
                started: t0,
            },
            t0,
            None,
        );
        assert!(matches!(fx.as_slice(), [Effect::Signal { pid: 10, .. }]));
        // The same stop when the spawn fails for want of resources: retired, no retry.
        let mut w = Worker::new(rules(false));
        w.spawning();
        w.step(
            Input::Stop {
                retire: Retire::Remove,
                drain: false,
            },
            t0,
            None,
        );
        assert_eq!(
            w.step(Input::ShortOfResources, t0, None),
            vec![Effect::Retire(Retire::Remove)]
        );
    }

    #[test]
    fn a_shortage_of_resources_retries_without_raising_the_level() {
        let t0 = Instant::now();
        let mut w = Worker::new(rules(false));
        w.spawning();
        let fx = w.step(Input::ShortOfResources, t0, None);
        assert_eq!(
            fx,
            vec![Effect::WaitForResources {
                retry_at: t0 + RESOURCE_RETRY
            }]
        );
        assert_eq!(w.level, 0);
        assert_eq!(
            tick(&mut w, t0 + RESOURCE_RETRY, idle()),
            vec![Effect::Spawn]
        );
    }

    #[test]
    fn stopping_a_worker_that_backs_off_retires_it_at_once() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        crash(&mut w, t0);
        let fx = w.step(
            Input::Stop {
                retire: Retire::Replace,
                drain: false,
            },
            t0,
            None,
        );
        assert_eq!(fx, vec![Effect::Retire(Retire::Replace)]);
        w.replaced(rules(false));
        assert_eq!((w.level, w.retire), (0, Retire::Keep));
    }

    #[test]
    fn a_rolling_restart_replaces_the_worker_after_its_exit() {
        let t0 = Instant::now();
        let mut w = started(false, t0);
        tick(&mut w, t0 + S, idle());
        w.step(
            Input::Stop {
                retire: Retire::Replace,
                drain: false,
            },
            t0 + 2 * S,
            None,
        );
        // It exits on SIGTERM with an error code: still deliberate, no backoff.
        let fx = crash(&mut w, t0 + 3 * S);
        assert_eq!(fx.last(), Some(&Effect::Retire(Retire::Replace)));
        assert_eq!(w.level, 0);
        assert!(!w.coming_up());
    }

    #[test]
    fn a_protocol_worker_that_never_says_ready_is_killed_at_its_start_timeout() {
        let t0 = Instant::now();
        let mut w = started(true, t0);
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + 10 * S));
        assert!(tick(&mut w, t0 + 9 * S, idle()).is_empty());
        assert_eq!(
            tick(&mut w, t0 + 10 * S, idle()),
            vec![Effect::KillFor {
                pid: 10,
                why: KillReason::StartTimeout
            }]
        );
        assert_eq!(w.deadline(&idle(), t0 + 10 * S), None);
        // Its exit is unstable (it never became ready).
        let fx = crash(&mut w, t0 + 10 * S);
        assert!(matches!(
            fx.first(),
            Some(Effect::Exited(RunEnded {
                killed_for: Some(KillReason::StartTimeout),
                next: Some(AfterExit::Restart { level: 1, .. }),
                ..
            }))
        ));
    }

    #[test]
    fn unread_input_at_the_start_timeout_is_read_before_judging() {
        let t0 = Instant::now();
        let mut w = started(true, t0);
        let pending = Facts {
            input_pending: true,
            ..idle()
        };
        // `ready` is in the socket: the judgment waits, and looks again shortly.
        assert!(tick(&mut w, t0 + 10 * S, pending).is_empty());
        assert_eq!(
            w.deadline(&pending, t0 + 10 * S),
            Some(t0 + 10 * S + RECHECK)
        );
        assert_eq!(
            w.step(Input::Ready(Readiness::Protocol), t0 + 10 * S, None)
                .len(),
            1
        );
        // Input that never gets read waits PENDING_GRACE at most.
        let mut w = started(true, t0);
        assert_eq!(tick(&mut w, t0 + 15 * S, pending).len(), 1);
    }

    #[test]
    fn an_idle_worker_is_never_judged_hung_and_a_silent_holder_is() {
        let t0 = Instant::now();
        let mut w = ready(t0);
        // An hour idle: no lease runs, nothing is due.
        assert_eq!(w.deadline(&idle(), t0), None);
        assert!(tick(&mut w, t0 + 3600 * S, idle()).is_empty());
        // A job handed out at t0+3600s: its lease (from the dispatch) runs to +3602s.
        let holding = Facts {
            holds_jobs: true,
            lease: Some((t0 + 3602 * S, 2 * S)),
            ..idle()
        };
        assert_eq!(w.deadline(&holding, t0 + 3600 * S), Some(t0 + 3602 * S));
        assert!(tick(&mut w, t0 + 3601 * S, holding).is_empty());
        assert_eq!(
            tick(&mut w, t0 + 3602 * S, holding),
            vec![Effect::KillFor {
                pid: 10,
                why: KillReason::Hung { lease: 2 * S }
            }]
        );
        assert_eq!(w.state_name(), "stopping");
        assert!(!w.takes_jobs());
    }

    #[test]
    fn a_job_not_given_up_after_cancel_gets_its_worker_killed_after_the_grace() {
        let t0 = Instant::now();
        let mut w = ready(t0);
        let facts = Facts {
            holds_jobs: true,
            job_kill: Some((KillReason::Cancelled(7), t0 + 10 * S)),
            ..idle()
        };
        assert_eq!(w.deadline(&facts, t0), Some(t0 + 10 * S));
        assert!(tick(&mut w, t0 + 9 * S, facts).is_empty());
        // The worker's `fail` may be on its way: wait for it.
        let pending = Facts {
            input_pending: true,
            ..facts
        };
        assert!(tick(&mut w, t0 + 10 * S, pending).is_empty());
        assert_eq!(
            tick(&mut w, t0 + 10 * S + RECHECK, facts),
            vec![Effect::KillFor {
                pid: 10,
                why: KillReason::Cancelled(7)
            }]
        );
        let fx = crash(&mut w, t0 + 11 * S);
        assert!(matches!(
            fx.first(),
            Some(Effect::Exited(RunEnded {
                killed_for: Some(KillReason::Cancelled(7)),
                deliberate: false,
                ..
            }))
        ));
    }

    #[test]
    fn a_drain_waits_for_the_held_jobs_then_stops_the_worker() {
        let t0 = Instant::now();
        let mut w = ready(t0);
        let holding = Facts {
            holds_jobs: true,
            ..idle()
        };
        let fx = w.step(
            Input::Stop {
                retire: Retire::Replace,
                drain: true,
            },
            t0,
            None,
        );
        assert_eq!(fx, vec![Effect::Drain { until: t0 + 5 * S }]);
        assert!(!w.takes_jobs());
        assert_eq!(w.state_name(), "running");
        assert_eq!(w.deadline(&holding, t0), Some(t0 + 5 * S));
        assert!(tick(&mut w, t0 + S, holding).is_empty());
        // The last job is done: stopped at once.
        assert_eq!(w.deadline(&idle(), t0 + 2 * S), Some(t0 + 2 * S));
        assert!(matches!(
            tick(&mut w, t0 + 2 * S, idle()).as_slice(),
            [Effect::Signal { pid: 10, .. }]
        ));
        // A drain that runs out stops the worker with its jobs.
        let mut w = ready(t0);
        w.step(
            Input::Stop {
                retire: Retire::Remove,
                drain: true,
            },
            t0,
            None,
        );
        assert!(matches!(
            tick(&mut w, t0 + 5 * S, holding).as_slice(),
            [Effect::Signal { pid: 10, .. }]
        ));
    }

    #[test]
    fn a_shutdown_during_a_drain_shortens_it_to_fit_the_budget() {
        let t0 = Instant::now();
        let mut w = ready(t0);
        w.rules.stop_timeout = 30 * S;
        w.step(
            Input::Stop {
                retire: Retire::Replace,
                drain: true,
            },
            t0,
            None,
        );
        // The budget ends at +40 s: the drain ends at +20 s (half the budget is kept
        // for the stop, which would want 30 s).
        w.step(
            Input::Stop {
                retire: Retire::Remove,
                drain: true,
            },
            t0,
            Some(t0 + 40 * S),
        );
        assert_eq!(
            w.phase,
            Phase::Draining {
                pid: 10,
                since: t0,
                until: t0 + 20 * S
            }
        );
        assert_eq!(w.retire, Retire::Remove);
        // An exit during the drain is deliberate.
        let fx = crash(&mut w, t0 + S);
        assert_eq!(fx.last(), Some(&Effect::Retire(Retire::Remove)));
    }

    #[test]
    fn a_fenced_worker_is_killed_and_back_at_once_without_a_higher_level() {
        let t0 = Instant::now();
        let mut w = ready(t0);
        w.level = 2;
        assert_eq!(
            w.step(Input::Fence, t0, None),
            vec![Effect::KillFor {
                pid: 10,
                why: KillReason::Fenced
            }]
        );
        assert!(!w.takes_jobs());
        // Fenced twice: one kill.
        assert!(w.step(Input::Fence, t0, None).is_empty());
        let fx = crash(&mut w, t0 + S);
        assert!(matches!(
            fx.first(),
            Some(Effect::Exited(RunEnded {
                killed_for: Some(KillReason::Fenced),
                deliberate: false,
                next: Some(AfterExit::Restart { level: 2, .. }),
                ..
            }))
        ));
        assert_eq!(tick(&mut w, t0 + S, idle()), vec![Effect::Spawn]);
        // A worker not running has nothing to stop.
        let mut w = Worker::new(rules(true));
        assert!(w.step(Input::Fence, t0, None).is_empty());
    }

    #[test]
    fn stray_reports_change_nothing() {
        let t0 = Instant::now();
        let mut w = Worker::new(rules(true));
        assert!(crash(&mut w, t0).is_empty());
        assert!(
            w.step(Input::Ready(Readiness::Protocol), t0, None)
                .is_empty()
        );
        assert_eq!(w.phase, Phase::Stopped);
        let mut w = ready(t0);
        assert!(
            w.step(Input::Ready(Readiness::Protocol), t0, None)
                .is_empty()
        );
    }

    /// A plain worker of a pool with `ready` and `watchdog`, started at `t0`.
    fn notify_worker(ready: Readiness, watchdog: Option<Duration>, t0: Instant) -> Worker {
        let mut w = started(false, t0);
        w.rules.ready = ready;
        w.rules.watchdog = watchdog;
        w
    }

    #[test]
    fn only_the_pools_own_way_of_saying_ready_counts_and_silence_is_a_start_timeout() {
        let t0 = Instant::now();
        let mut w = notify_worker(Readiness::Notify, None, t0);
        // Staying up is not READY=1, nor is a passing probe.
        assert!(tick(&mut w, t0 + 5 * S, idle()).is_empty());
        assert!(w.step(Input::Ready(Readiness::Health), t0, None).is_empty());
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + 10 * S));
        assert_eq!(
            w.step(Input::Ready(Readiness::Notify), t0 + 6 * S, None),
            vec![Effect::Up { pid: 10 }]
        );
        let mut w = notify_worker(Readiness::Health, None, t0);
        assert_eq!(
            tick(&mut w, t0 + 10 * S, idle()),
            vec![Effect::KillFor {
                pid: 10,
                why: KillReason::StartTimeout
            }]
        );
        // Its exit is unstable: it never became ready.
        let out = crash(&mut w, t0 + 10 * S);
        assert!(
            matches!(&out[0], Effect::Exited(e) if matches!(e.next, Some(AfterExit::Restart { level: 1, .. }))),
            "{out:?}"
        );
    }

    #[test]
    fn extend_timeout_moves_the_start_deadline_and_the_stop_deadline_but_not_back() {
        let t0 = Instant::now();
        let mut w = notify_worker(Readiness::Notify, None, t0);
        assert!(w.step(Input::Extend(30 * S), t0 + 5 * S, None).is_empty());
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + 35 * S));
        // A shorter one later does not shorten it.
        w.step(Input::Extend(S), t0 + 6 * S, None);
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + 35 * S));
        assert!(tick(&mut w, t0 + 20 * S, idle()).is_empty());
        w.step(Input::Ready(Readiness::Notify), t0 + 21 * S, None);
        let out = w.step(
            Input::Stop {
                retire: Retire::Keep,
                drain: false,
            },
            t0 + 22 * S,
            None,
        );
        assert_eq!(
            out,
            vec![Effect::Signal {
                pid: 10,
                kill_at: t0 + 27 * S
            }]
        );
        w.step(Input::Extend(60 * S), t0 + 23 * S, None);
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + 83 * S));
        // Within a shutdown's budget, never past its end.
        w.step(Input::Extend(600 * S), t0 + 24 * S, Some(t0 + 100 * S));
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + 100 * S));
    }

    #[test]
    fn a_watchdog_runs_from_readiness_each_ping_moves_it_and_a_miss_or_trigger_kills() {
        let t0 = Instant::now();
        let mut w = notify_worker(Readiness::Notify, Some(5 * S), t0);
        // A slow start is the start timeout's business, not the watchdog's.
        assert!(tick(&mut w, t0 + 8 * S, idle()).is_empty());
        w.step(Input::Ready(Readiness::Notify), t0 + 9 * S, None);
        assert_eq!(w.deadline(&idle(), t0), Some(t0 + 14 * S));
        let pinged = Facts {
            watchdog: Some(t0 + 13 * S),
            ..idle()
        };
        assert_eq!(w.deadline(&pinged, t0), Some(t0 + 18 * S));
        assert!(tick(&mut w, t0 + 14 * S, pinged).is_empty());
        // An unread datagram may be the ping: judged once it is read.
        let unread = Facts {
            input_pending: true,
            ..pinged
        };
        assert!(tick(&mut w, t0 + 18 * S, unread).is_empty());
        let why = KillReason::Watchdog {
            period: 5 * S,
            triggered: false,
        };
        assert_eq!(
            tick(&mut w, t0 + 18 * S + RECHECK, pinged),
            vec![Effect::KillFor { pid: 10, why }]
        );
        let mut w = notify_worker(Readiness::Notify, Some(5 * S), t0);
        w.step(Input::Ready(Readiness::Notify), t0, None);
        assert_eq!(
            w.step(Input::WatchdogTrigger, t0 + S, None),
            vec![Effect::KillFor {
                pid: 10,
                why: KillReason::Watchdog {
                    period: 5 * S,
                    triggered: true
                }
            }]
        );
        // Without a watchdog, a trigger means nothing.
        let mut w = notify_worker(Readiness::Notify, None, t0);
        assert!(w.step(Input::WatchdogTrigger, t0, None).is_empty());
    }

    #[test]
    fn an_exit_after_stopping_is_not_a_crash() {
        let t0 = Instant::now();
        let mut w = notify_worker(Readiness::Notify, None, t0);
        w.level = 2;
        w.step(Input::Ready(Readiness::Notify), t0, None);
        w.step(Input::Stopping, t0, None);
        let out = crash(&mut w, t0 + 100 * MS);
        assert!(
            matches!(&out[0], Effect::Exited(e) if matches!(e.next, Some(AfterExit::Restart { level: 2, .. }))),
            "{out:?}"
        );
        // The next run starts without it.
        w.spawning();
        w.step(
            Input::Spawned {
                pid: 11,
                started: t0 + S,
            },
            t0 + S,
            None,
        );
        w.step(Input::Ready(Readiness::Notify), t0 + S, None);
        let out = crash(&mut w, t0 + S + 100 * MS);
        assert!(
            matches!(&out[0], Effect::Exited(e) if matches!(e.next, Some(AfterExit::Restart { level: 3, .. }))),
            "{out:?}"
        );
    }

    #[test]
    fn a_drain_end_always_leaves_room_for_the_stop() {
        let t0 = Instant::now();
        assert_eq!(drain_end(t0, t0 + 100 * S, 30 * S), t0 + 70 * S);
        assert_eq!(drain_end(t0, t0 + 40 * S, 30 * S), t0 + 20 * S);
        assert_eq!(drain_end(t0, t0 + 10 * S, 30 * S), t0 + 5 * S);
        assert_eq!(drain_end(t0, t0, 30 * S), t0);
    }
}
