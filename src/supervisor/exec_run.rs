//! One job process of an exec pool, as a state machine.
//!
//! The run's state carries its own data, [`ExecRun::step`] is the one place it changes,
//! as a pure function of (state, what happened, now), and it answers with the effects the
//! supervisor must carry out. Its timers come from the state itself
//! ([`ExecRun::deadline`]), so the deadline that is scheduled and the one acted on cannot
//! disagree.
//!
//! ```text
//!   Starting ──spawned──► Running ──exited──► Exited ──output drained──► Done
//!      │                    │                   ▲
//!      └──stop / kill──► Stopping ──exited──────┘      (stop: timeout, cancel, shutdown;
//!                         │  └─ kill_at passed: SIGKILL  kill: a forced stop)
//! ```

use std::time::{Duration, Instant};

use super::policy::Exit;
use crate::time::after;

/// After the process exits, how long to wait for its output pipes to close (a
/// grandchild may hold them) before recording the outcome anyway.
pub(super) const DRAIN_OUTPUT: Duration = Duration::from_secs(2);

/// Why a job process was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExecStop {
    Timeout,
    Cancelled,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    /// Claimed; the process is being started.
    Starting,
    Running {
        pid: i32,
        /// The job's time limit, from the process start.
        deadline: Option<Instant>,
    },
    /// The stop signal was sent to the process group (or goes out once the process is
    /// there); SIGKILL follows at `kill_at`.
    Stopping {
        pid: Option<i32>,
        why: ExecStop,
        kill_at: Instant,
        killed: bool,
    },
    /// The process is gone; its output is read to the end.
    Exited {
        exit: Exit,
        at: Instant,
        stopped: Option<ExecStop>,
    },
    /// The outcome was handed on.
    Done,
}

/// What happens to a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Input {
    Spawned {
        pid: i32,
        started: Instant,
    },
    Exited(Exit),
    /// One of stdout and stderr reached its end.
    StreamClosed,
    /// `steward cancel`.
    Cancel,
    /// A forced stop (a second SIGTERM): SIGKILL now.
    Kill,
    /// Time passed: whatever is due is done.
    Tick,
}

/// What the supervisor must do for a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Effect {
    /// Send the pool's stop signal to the process group of `pid`.
    Signal { pid: i32 },
    /// SIGKILL to the process group of `pid`.
    Kill { pid: i32 },
    /// The run began to stop (for the log): SIGKILL at `kill_at`.
    Stopping {
        why: ExecStop,
        pid: Option<i32>,
        kill_at: Instant,
    },
    /// The run did not stop in time and was killed (for the log).
    Escalated { pid: i32 },
    /// Record the outcome: the process ended with `exit`, stopped by steward if `stopped`.
    Complete {
        exit: Exit,
        stopped: Option<ExecStop>,
    },
}

/// What the daemon's stop means for a run: from `drain_until` on, running jobs are
/// stopped, and nothing may outlive `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shutdown {
    pub drain_until: Instant,
    pub deadline: Instant,
}

/// The machine of one run.
#[derive(Debug, Clone)]
pub(super) struct ExecRun {
    pub phase: Phase,
    /// When the process started (until then, when the job was claimed).
    pub started: Instant,
    timeout: Option<Duration>,
    stop_timeout: Duration,
    /// stdout and stderr not closed yet.
    open_streams: u8,
}

impl ExecRun {
    pub fn new(claimed: Instant, timeout: Option<Duration>, stop_timeout: Duration) -> ExecRun {
        ExecRun {
            phase: Phase::Starting,
            started: claimed,
            timeout,
            stop_timeout,
            open_streams: 2,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self.phase {
            Phase::Running { pid, .. } => Some(pid),
            Phase::Stopping { pid, .. } => pid,
            _ => None,
        }
    }

    /// As `steward status` shows a lane.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Starting | Phase::Running { .. } => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Exited { .. } | Phase::Done => "exited",
        }
    }

    /// The outcome was handed on.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn kill_at(&self, now: Instant, shutdown: Option<Shutdown>) -> Instant {
        let own = after(now, self.stop_timeout);
        shutdown.map_or(own, |s| own.min(s.deadline))
    }

    /// Begin to stop: the stop signal now if the process is there.
    fn stop(
        &mut self,
        why: ExecStop,
        now: Instant,
        shutdown: Option<Shutdown>,
        out: &mut Vec<Effect>,
    ) {
        let pid = match self.phase {
            Phase::Starting => None,
            Phase::Running { pid, .. } => Some(pid),
            _ => return,
        };
        let kill_at = self.kill_at(now, shutdown);
        self.phase = Phase::Stopping {
            pid,
            why,
            kill_at,
            killed: false,
        };
        if let Some(pid) = pid {
            out.push(Effect::Signal { pid });
        }
        out.push(Effect::Stopping { why, pid, kill_at });
    }

    /// The one transition function.
    pub fn step(&mut self, input: Input, now: Instant, shutdown: Option<Shutdown>) -> Vec<Effect> {
        let mut out = Vec::new();
        match (input, self.phase.clone()) {
            (Input::Spawned { pid, started }, Phase::Starting) => {
                self.started = started;
                self.phase = Phase::Running {
                    pid,
                    deadline: self.timeout.map(|t| after(started, t)),
                };
            }
            (
                Input::Spawned { pid, started },
                Phase::Stopping {
                    why,
                    kill_at,
                    killed,
                    pid: None,
                },
            ) => {
                // Stopped while it started: the signal goes now.
                self.started = started;
                self.phase = Phase::Stopping {
                    pid: Some(pid),
                    why,
                    kill_at,
                    killed,
                };
                out.push(if killed {
                    Effect::Kill { pid }
                } else {
                    Effect::Signal { pid }
                });
            }
            (Input::Exited(exit), Phase::Running { .. }) => {
                self.phase = Phase::Exited {
                    exit,
                    at: now,
                    stopped: None,
                };
            }
            (Input::Exited(exit), Phase::Stopping { why, .. }) => {
                self.phase = Phase::Exited {
                    exit,
                    at: now,
                    stopped: Some(why),
                };
            }
            (Input::StreamClosed, _) => {
                self.open_streams = self.open_streams.saturating_sub(1);
            }
            (Input::Cancel, _) => self.stop(ExecStop::Cancelled, now, shutdown, &mut out),
            (Input::Kill, Phase::Starting) => {
                self.phase = Phase::Stopping {
                    pid: None,
                    why: ExecStop::Shutdown,
                    kill_at: now,
                    killed: true,
                };
            }
            (Input::Kill, Phase::Running { pid, .. }) => {
                self.phase = Phase::Stopping {
                    pid: Some(pid),
                    why: ExecStop::Shutdown,
                    kill_at: now,
                    killed: true,
                };
                out.push(Effect::Kill { pid });
            }
            (Input::Kill, Phase::Stopping { pid, why, .. }) => {
                self.phase = Phase::Stopping {
                    pid,
                    why,
                    kill_at: now,
                    killed: true,
                };
                if let Some(pid) = pid {
                    out.push(Effect::Kill { pid });
                }
            }
            _ => {}
        }
        self.due(now, shutdown, &mut out);
        out
    }

    /// What the clock makes due in the current state.
    fn due(&mut self, now: Instant, shutdown: Option<Shutdown>, out: &mut Vec<Effect>) {
        let draining = shutdown.is_some_and(|s| now >= s.drain_until);
        match self.phase.clone() {
            Phase::Running { deadline, .. } => {
                if deadline.is_some_and(|d| now >= d) {
                    self.stop(ExecStop::Timeout, now, shutdown, out);
                } else if draining {
                    self.stop(ExecStop::Shutdown, now, shutdown, out);
                }
            }
            Phase::Starting if draining => self.stop(ExecStop::Shutdown, now, shutdown, out),
            Phase::Stopping {
                pid,
                why,
                kill_at,
                killed: false,
            } if now >= kill_at => {
                self.phase = Phase::Stopping {
                    pid,
                    why,
                    kill_at,
                    killed: true,
                };
                if let Some(pid) = pid {
                    out.push(Effect::Kill { pid });
                    out.push(Effect::Escalated { pid });
                }
            }
            Phase::Exited { exit, at, stopped }
                if self.open_streams == 0 || now >= at + DRAIN_OUTPUT =>
            {
                self.phase = Phase::Done;
                out.push(Effect::Complete { exit, stopped });
            }
            _ => {}
        }
    }

    /// When this run next needs the clock, from its state alone.
    pub fn deadline(&self, shutdown: Option<Shutdown>) -> Option<Instant> {
        let drain = shutdown.map(|s| s.drain_until);
        match &self.phase {
            Phase::Starting => drain,
            Phase::Running { deadline, .. } => match (*deadline, drain) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Phase::Stopping {
                kill_at,
                killed: false,
                ..
            } => Some(*kill_at),
            Phase::Stopping { .. } => None,
            Phase::Exited { at, .. } => Some(*at + DRAIN_OUTPUT),
            Phase::Done => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOP: Duration = Duration::from_secs(5);

    fn running(t0: Instant, timeout: Option<Duration>) -> ExecRun {
        let mut r = ExecRun::new(t0, timeout, STOP);
        assert!(
            r.step(
                Input::Spawned {
                    pid: 42,
                    started: t0
                },
                t0,
                None
            )
            .is_empty()
        );
        r
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_run_that_exits_completes_once_its_output_is_read() {
        let t0 = Instant::now();
        let mut r = running(t0, None);
        assert_eq!(r.deadline(None), None);
        assert!(
            r.step(Input::Exited(Exit::Code(0)), t0 + secs(1), None)
                .is_empty()
        );
        assert_eq!(r.deadline(None), Some(t0 + secs(1) + DRAIN_OUTPUT));
        assert!(r.step(Input::StreamClosed, t0 + secs(1), None).is_empty());
        let out = r.step(Input::StreamClosed, t0 + secs(1), None);
        assert_eq!(
            out,
            vec![Effect::Complete {
                exit: Exit::Code(0),
                stopped: None
            }]
        );
        assert!(r.is_done());
        // Nothing more happens to a finished run.
        assert!(r.step(Input::Tick, t0 + secs(60), None).is_empty());
        assert_eq!(r.deadline(None), None);
    }

    #[test]
    fn output_held_by_a_grandchild_is_waited_for_only_so_long() {
        let t0 = Instant::now();
        let mut r = running(t0, None);
        r.step(Input::Exited(Exit::Code(3)), t0, None);
        assert!(r.step(Input::Tick, t0 + secs(1), None).is_empty());
        let out = r.step(Input::Tick, t0 + DRAIN_OUTPUT, None);
        assert!(matches!(out[..], [Effect::Complete { .. }]), "{out:?}");
    }

    #[test]
    fn the_timeout_runs_from_the_process_start_then_escalates() {
        let claimed = Instant::now();
        let mut r = ExecRun::new(claimed, Some(secs(10)), STOP);
        // A slow start does not eat into the job's time.
        let started = claimed + secs(4);
        r.step(Input::Spawned { pid: 7, started }, started, None);
        assert_eq!(r.deadline(None), Some(started + secs(10)));
        assert!(r.step(Input::Tick, claimed + secs(10), None).is_empty());
        let out = r.step(Input::Tick, started + secs(10), None);
        assert_eq!(out[0], Effect::Signal { pid: 7 });
        let kill_at = started + secs(10) + STOP;
        assert_eq!(
            out[1],
            Effect::Stopping {
                why: ExecStop::Timeout,
                pid: Some(7),
                kill_at
            }
        );
        assert_eq!(r.deadline(None), Some(kill_at));
        let out = r.step(Input::Tick, kill_at, None);
        assert_eq!(
            out,
            vec![Effect::Kill { pid: 7 }, Effect::Escalated { pid: 7 }]
        );
        assert_eq!(r.deadline(None), None);
        r.step(Input::Exited(Exit::Signal(9)), kill_at, None);
        r.step(Input::StreamClosed, kill_at, None);
        let out = r.step(Input::StreamClosed, kill_at, None);
        assert_eq!(
            out,
            vec![Effect::Complete {
                exit: Exit::Signal(9),
                stopped: Some(ExecStop::Timeout)
            }]
        );
    }

    #[test]
    fn a_process_that_stops_in_time_is_not_killed() {
        let t0 = Instant::now();
        let mut r = running(t0, None);
        let out = r.step(Input::Cancel, t0, None);
        assert_eq!(out[0], Effect::Signal { pid: 42 });
        r.step(Input::Exited(Exit::Code(143)), t0 + secs(1), None);
        let out = r.step(Input::Tick, t0 + STOP + secs(1), None);
        assert!(!out.contains(&Effect::Kill { pid: 42 }), "{out:?}");
        assert!(matches!(
            out[..],
            [Effect::Complete {
                stopped: Some(ExecStop::Cancelled),
                ..
            }]
        ));
        // A second cancel of a stopping or finished run does nothing.
        assert!(r.step(Input::Cancel, t0 + secs(9), None).is_empty());
    }

    #[test]
    fn a_cancel_while_the_process_starts_reaches_it_once_it_is_there() {
        let t0 = Instant::now();
        let mut r = ExecRun::new(t0, None, STOP);
        let out = r.step(Input::Cancel, t0, None);
        assert_eq!(
            out,
            vec![Effect::Stopping {
                why: ExecStop::Cancelled,
                pid: None,
                kill_at: t0 + STOP
            }]
        );
        let out = r.step(
            Input::Spawned {
                pid: 9,
                started: t0 + secs(1),
            },
            t0 + secs(1),
            None,
        );
        assert_eq!(out, vec![Effect::Signal { pid: 9 }]);
        assert_eq!(r.pid(), Some(9));
    }

    #[test]
    fn the_daemon_s_stop_drains_then_stops_within_its_deadline() {
        let t0 = Instant::now();
        let mut r = running(t0, Some(secs(600)));
        let sd = Shutdown {
            drain_until: t0 + secs(20),
            deadline: t0 + secs(22),
        };
        assert_eq!(r.deadline(Some(sd)), Some(t0 + secs(20)));
        assert!(r.step(Input::Tick, t0 + secs(19), Some(sd)).is_empty());
        let out = r.step(Input::Tick, t0 + secs(20), Some(sd));
        // SIGKILL no later than the shutdown's own deadline, whatever stop_timeout says.
        assert_eq!(
            out,
            vec![
                Effect::Signal { pid: 42 },
                Effect::Stopping {
                    why: ExecStop::Shutdown,
                    pid: Some(42),
                    kill_at: t0 + secs(22)
                }
            ]
        );
        // A run still starting when the drain ends is stopped as soon as it is there.
        let mut s = ExecRun::new(t0, None, STOP);
        let out = s.step(Input::Tick, t0 + secs(20), Some(sd));
        assert!(matches!(out[..], [Effect::Stopping { pid: None, .. }]));
    }

    #[test]
    fn a_forced_stop_kills_at_once_in_every_state() {
        let t0 = Instant::now();
        let mut r = running(t0, None);
        assert_eq!(
            r.step(Input::Kill, t0, None),
            vec![Effect::Kill { pid: 42 }]
        );
        let mut stopping = running(t0, None);
        stopping.step(Input::Cancel, t0, None);
        assert_eq!(
            stopping.step(Input::Kill, t0, None),
            vec![Effect::Kill { pid: 42 }]
        );
        let mut starting = ExecRun::new(t0, None, STOP);
        assert!(starting.step(Input::Kill, t0, None).is_empty());
        assert_eq!(
            starting.step(
                Input::Spawned {
                    pid: 5,
                    started: t0
                },
                t0,
                None
            ),
            vec![Effect::Kill { pid: 5 }]
        );
        // Killed runs end as interrupted by the stop.
        starting.step(Input::Exited(Exit::Signal(9)), t0, None);
        starting.step(Input::StreamClosed, t0, None);
        assert_eq!(
            starting.step(Input::StreamClosed, t0, None),
            vec![Effect::Complete {
                exit: Exit::Signal(9),
                stopped: Some(ExecStop::Shutdown)
            }]
        );
    }
}
