//! The supervisor's decisions as pure functions of state and time.
//!
//! Nothing here touches a process, a clock or a socket: callers pass in what happened and
//! when, and get back what to do. That keeps restart delays, crash-loop detection, giving
//! up and stop escalation testable with made-up times.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::config::{Backoff, ExitAction, RestartPolicy};

/// Exit code with which a worker says "my configuration is wrong, do not restart me"
/// (sysexits.h `EX_CONFIG`).
pub const WORKER_EX_CONFIG: i32 = 78;

pub use crate::model::{Exit, describe_exit, signal_name};
pub use crate::time::{exponential, with_jitter};

/// What the policy needs to know about a pool.
#[derive(Debug, Clone)]
pub struct RestartRules {
    pub restart: RestartPolicy,
    pub backoff: Backoff,
    pub crash_loop_after: u32,
    pub give_up_after: u32,
    pub stable_after: Duration,
    /// What the worker's own exit codes mean (`exit_codes`).
    pub exit_codes: BTreeMap<i32, ExitAction>,
}

/// Facts about the run that just ended.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts {
    pub exit: Exit,
    /// How long the process was up.
    pub ran_for: Duration,
    /// Whether the worker ever counted as running (for a plain worker: it stayed up
    /// `stable_after`; for a protocol worker: it said `ready`).
    pub became_ready: bool,
    /// Steward stopped it because its health probes failed: an unstable exit whatever
    /// its code.
    pub failed_probes: bool,
    /// It said `STOPPING=1` first: the exit is intentional, whatever its code, so the
    /// backoff level is not raised.
    pub announced: bool,
}

/// What to do after a worker exited on its own (not because steward stopped it).
#[derive(Debug, Clone, PartialEq)]
pub enum AfterExit {
    /// Start it again after `delay` (the base delay; the caller adds jitter).
    Restart {
        delay: Duration,
        /// Consecutive unstable exits, after this one.
        level: u32,
        crash_looping: bool,
    },
    /// Leave it stopped: the policy does not restart this kind of exit.
    Stop { level: u32 },
    /// Park it as failed, with a reason for the operator.
    Fail { level: u32, reason: String },
}

/// The backoff delay before restart number `level` (1-based) of a run of unstable exits:
/// `min(max, initial × multiplier^(level-1))`.
pub fn base_delay(b: &Backoff, level: u32) -> Duration {
    exponential(b.initial, b.max, b.multiplier, level)
}

/// Decide what happens after a worker exits on its own.
///
/// `level` is the number of consecutive unstable exits before this one. A run that stayed
/// up `reset_after` starts from level 0. An unstable run (shorter than `stable_after`, or
/// never ready) raises the level; any other exit keeps it. A clean exit (code 0) under
/// `restart = "always"` is restarted without raising the level.
pub fn after_exit(rules: &RestartRules, level: u32, run: RunFacts) -> AfterExit {
    let level = if run.ran_for >= rules.backoff.reset_after {
        0
    } else {
        level
    };
    let action = match run.exit {
        Exit::Code(c) => rules
            .exit_codes
            .get(&c)
            .copied()
            .or((c == WORKER_EX_CONFIG).then_some(ExitAction::ConfigError)),
        Exit::Signal(_) => None,
    };
    if action == Some(ExitAction::ConfigError) {
        let listed = matches!(run.exit, Exit::Code(c) if rules.exit_codes.contains_key(&c));
        let how = if listed { ", as exit_codes says" } else { "" };
        return AfterExit::Fail {
            level,
            reason: format!(
                "worker reported a configuration error ({}{how})",
                describe_exit(run.exit)
            ),
        };
    }
    let planned = action == Some(ExitAction::Restart) && !run.failed_probes;
    let unstable = run.ran_for < rules.stable_after || !run.became_ready || run.failed_probes;
    // A clean exit is deliberate: it does not raise the level, even when quick; nor
    // does a code `exit_codes` calls a restart. A worker stopped for failing its probes
    // exited because it was asked to: its code says nothing.
    let failed = !run.exit.is_clean() || run.failed_probes;
    let level = if unstable && failed && !planned && !run.announced {
        level.saturating_add(1)
    } else {
        level
    };
    let restart = match rules.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed || planned,
        RestartPolicy::Never => false,
    };
    if !restart {
        return if run.exit.is_clean() {
            AfterExit::Stop { level }
        } else {
            AfterExit::Fail {
                level,
                reason: format!(
                    "exited ({}) and restart = \"{}\"",
                    describe_exit(run.exit),
                    rules.restart.as_str()
                ),
            }
        };
    }
    if rules.give_up_after > 0 && level >= rules.give_up_after {
        return AfterExit::Fail {
            level,
            reason: format!(
                "gave up after {level} consecutive unstable exits (give_up_after = {}); last: {}",
                rules.give_up_after,
                describe_exit(run.exit)
            ),
        };
    }
    AfterExit::Restart {
        delay: base_delay(&rules.backoff, level),
        level,
        crash_looping: level >= rules.crash_loop_after,
    }
}

/// When a worker asked to stop at `asked_at` gets SIGKILL: after its own `stop_timeout`,
/// but never later than the deadline of the whole shutdown, if there is one.
pub fn kill_deadline(
    asked_at: Instant,
    stop_timeout: Duration,
    shutdown_deadline: Option<Instant>,
) -> Instant {
    let own = crate::time::after(asked_at, stop_timeout);
    match shutdown_deadline {
        Some(d) => own.min(d),
        None => own,
    }
}

/// Whether a worker that is stopping should now be killed.
pub fn should_kill(now: Instant, kill_at: Instant, already_killed: bool) -> bool {
    !already_killed && now >= kill_at
}

/// At most `per_second` of something a second, in bursts of up to twice that; what
/// goes beyond is counted, to be reported now and then instead of one by one.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(per_second: u32, now: Instant) -> RateLimit {
        let per_second = f64::from(per_second.max(1));
        RateLimit {
            per_second,
            tokens: 2.0 * per_second,
            refilled: now,
            suppressed: 0,
        }
    }

    /// Whether one more may go now; if not, it is counted.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(2.0 * self.per_second);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// How many were held back since the last call.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// A failure that repeats while its cause lasts (claims while the journal is out of
/// reach fail every second): said at once, then once every `every` with how many there
/// were, and its end said once.
#[derive(Debug, Clone)]
pub struct Repeated {
    every: Duration,
    /// Since when it has been failing, and when it was last said.
    failing: Option<(Instant, Instant)>,
    /// Failures in all, and since it was last said.
    count: u64,
    unsaid: u64,
}

/// Whether to log a failure now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Say {
    /// The first of a run of failures.
    First,
    /// Still failing, `unsaid` times since the last line, for `failing` in all.
    Again {
        unsaid: u64,
        failing: Duration,
    },
    Quiet,
}

impl Repeated {
    pub fn new(every: Duration) -> Repeated {
        Repeated {
            every,
            failing: None,
            count: 0,
            unsaid: 0,
        }
    }

    pub fn failed(&mut self, now: Instant) -> Say {
        self.count += 1;
        match self.failing {
            None => {
                self.failing = Some((now, now));
                Say::First
            }
            Some((since, said)) if now.saturating_duration_since(said) >= self.every => {
                self.failing = Some((since, now));
                let unsaid = std::mem::take(&mut self.unsaid) + 1;
                Say::Again {
                    unsaid,
                    failing: now.saturating_duration_since(since),
                }
            }
            Some(_) => {
                self.unsaid += 1;
                Say::Quiet
            }
        }
    }

    /// It worked: how long it had failed and how many times, if it had.
    pub fn succeeded(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let (since, _) = self.failing.take()?;
        self.unsaid = 0;
        Some((
            now.saturating_duration_since(since),
            std::mem::take(&mut self.count),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(restart: RestartPolicy) -> RestartRules {
        RestartRules {
            restart,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                multiplier: 2.0,
                jitter: 0.25,
                reset_after: Duration::from_secs(120),
            },
            crash_loop_after: 5,
            give_up_after: 0,
            stable_after: Duration::from_secs(3),
            exit_codes: BTreeMap::new(),
        }
    }

    fn crash(ran: u64) -> RunFacts {
        RunFacts {
            exit: Exit::Code(1),
            ran_for: Duration::from_secs(ran),
            became_ready: ran >= 3,
            failed_probes: false,
            announced: false,
        }
    }

    #[test]
    fn base_delay_grows_and_caps() {
        let b = rules(RestartPolicy::Always).backoff;
        let d: Vec<u64> = (1..=8).map(|n| base_delay(&b, n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(base_delay(&b, 10_000), Duration::from_secs(60));
        assert_eq!(base_delay(&b, 0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_is_bounded_and_never_below_base() {
        let base = Duration::from_secs(4);
        assert_eq!(with_jitter(base, 0.25, 0.0), base);
        assert_eq!(with_jitter(base, 0.25, 0.5), Duration::from_millis(4500));
        assert!(with_jitter(base, 0.25, 0.999_999) < Duration::from_secs(5));
        assert_eq!(with_jitter(base, 0.0, 0.9), base);
    }

    #[test]
    fn unstable_exits_raise_the_level_and_mark_crash_loops() {
        let r = rules(RestartPolicy::Always);
        let mut level = 0;
        for n in 1..=6 {
            match after_exit(&r, level, crash(0)) {
                AfterExit::Restart {
                    delay,
                    level: l,
                    crash_looping,
                } => {
                    assert_eq!(l, n);
                    assert_eq!(delay, base_delay(&r.backoff, n));
                    assert_eq!(crash_looping, n >= 5);
                    level = l;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_long_run_resets_the_level() {
        let r = rules(RestartPolicy::Always);
        match after_exit(&r, 6, crash(200)) {
            AfterExit::Restart {
                level,
                delay,
                crash_looping,
            } => {
                assert_eq!(level, 0);
                assert_eq!(delay, Duration::from_secs(1));
                assert!(!crash_looping);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stable_failure_keeps_the_level() {
        let r = rules(RestartPolicy::Always);
        assert_eq!(
            after_exit(&r, 3, crash(10)),
            AfterExit::Restart {
                delay: Duration::from_secs(4),
                level: 3,
                crash_looping: false
            }
        );
    }

    #[test]
    fn clean_exit_under_always_does_not_raise_the_level() {
        let r = rules(RestartPolicy::Always);
        let run = RunFacts {
            exit: Exit::Code(0),
            ran_for: Duration::from_millis(10),
            became_ready: false,
            failed_probes: false,
            announced: false,
        };
        assert_eq!(
            after_exit(&r, 2, run),
            AfterExit::Restart {
                delay: Duration::from_secs(2),
                level: 2,
                crash_looping: false
            }
        );
    }

    #[test]
    fn policies() {
        let clean = RunFacts {
            exit: Exit::Code(0),
            ran_for: Duration::from_secs(10),
            became_ready: true,
            failed_probes: false,
            announced: false,
        };
        let killed = RunFacts {
            exit: Exit::Signal(9),
            ran_for: Duration::from_secs(10),
            became_ready: true,
            failed_probes: false,
            announced: false,
        };
        assert!(matches!(
            after_exit(&rules(RestartPolicy::OnFailure), 0, clean),
            AfterExit::Stop { .. }
        ));
        assert!(matches!(
            after_exit(&rules(RestartPolicy::OnFailure), 0, killed),
            AfterExit::Restart { .. }
        ));
        assert!(matches!(
            after_exit(&rules(RestartPolicy::Never), 0, clean),
            AfterExit::Stop { .. }
        ));
        assert!(matches!(
            after_exit(&rules(RestartPolicy::Never), 0, killed),
            AfterExit::Fail { .. }
        ));
        assert!(matches!(
            after_exit(&rules(RestartPolicy::Always), 0, clean),
            AfterExit::Restart { .. }
        ));
    }

    #[test]
    fn exit_78_parks_the_worker() {
        let run = RunFacts {
            exit: Exit::Code(78),
            ran_for: Duration::from_secs(1),
            became_ready: false,
            failed_probes: false,
            announced: false,
        };
        match after_exit(&rules(RestartPolicy::Always), 0, run) {
            AfterExit::Fail { reason, .. } => assert!(reason.contains("configuration error")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pools_own_exit_codes_park_or_restart_without_raising_the_level() {
        let mut r = rules(RestartPolicy::Always);
        r.exit_codes.insert(158, ExitAction::ConfigError);
        r.exit_codes.insert(75, ExitAction::Restart);
        r.exit_codes.insert(78, ExitAction::Restart);
        let quick = |code| RunFacts {
            exit: Exit::Code(code),
            ran_for: Duration::from_millis(100),
            became_ready: false,
            failed_probes: false,
            announced: false,
        };
        match after_exit(&r, 2, quick(158)) {
            AfterExit::Fail { reason, level } => {
                assert_eq!(level, 2);
                assert!(
                    reason.contains("exit code 158, as exit_codes says"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A planned restart: quick, yet not an unstable exit.
        assert!(matches!(
            after_exit(&r, 2, quick(75)),
            AfterExit::Restart { level: 2, .. }
        ));
        // 78 can be given another meaning.
        assert!(matches!(
            after_exit(&r, 0, quick(78)),
            AfterExit::Restart { level: 0, .. }
        ));
        // Under on-failure, a planned restart still restarts; other codes as before.
        r.restart = RestartPolicy::OnFailure;
        assert!(matches!(
            after_exit(&r, 0, quick(75)),
            AfterExit::Restart { .. }
        ));
        assert!(matches!(
            after_exit(&r, 0, quick(1)),
            AfterExit::Restart { level: 1, .. }
        ));
    }

    #[test]
    fn an_exit_announced_with_stopping_does_not_raise_the_level() {
        let r = rules(RestartPolicy::Always);
        let run = |code, announced| RunFacts {
            exit: Exit::Code(code),
            ran_for: Duration::from_millis(100),
            became_ready: true,
            failed_probes: false,
            announced,
        };
        assert!(matches!(
            after_exit(&r, 2, run(1, true)),
            AfterExit::Restart { level: 2, .. }
        ));
        assert!(matches!(
            after_exit(&r, 2, run(1, false)),
            AfterExit::Restart { level: 3, .. }
        ));
        // Under on-failure a clean announced exit stays stopped, as systemd does.
        let r = rules(RestartPolicy::OnFailure);
        assert!(matches!(
            after_exit(&r, 0, run(0, true)),
            AfterExit::Stop { .. }
        ));
    }

    #[test]
    fn give_up_after_n_unstable_exits() {
        let mut r = rules(RestartPolicy::Always);
        r.give_up_after = 3;
        assert!(matches!(
            after_exit(&r, 1, crash(0)),
            AfterExit::Restart { level: 2, .. }
        ));
        assert!(matches!(
            after_exit(&r, 2, crash(0)),
            AfterExit::Fail { level: 3, .. }
        ));
    }

    #[test]
    fn a_rate_limit_allows_bursts_then_a_steady_rate_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, t0);
        let burst = (0..100).filter(|_| r.allow(t0)).count();
        assert_eq!(burst, 20);
        assert_eq!(r.take_suppressed(), 80);
        assert_eq!(r.take_suppressed(), 0);
        // One second later: ten more.
        let t1 = t0 + Duration::from_secs(1);
        let next = (0..100).filter(|_| r.allow(t1)).count();
        assert_eq!(next, 10);
        assert_eq!(r.take_suppressed(), 90);
        // A long quiet spell refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| r.allow(t2)).count(), 20);
        // A clock that seems to go back refills nothing and does not panic.
        assert!(!r.allow(t0));
    }

    #[test]
    fn stop_escalation() {
        let t0 = Instant::now();
        let k = kill_deadline(t0, Duration::from_secs(30), None);
        assert_eq!(k, t0 + Duration::from_secs(30));
        let k2 = kill_deadline(
            t0,
            Duration::from_secs(30),
            Some(t0 + Duration::from_secs(5)),
        );
        assert_eq!(k2, t0 + Duration::from_secs(5));
        assert!(!should_kill(t0 + Duration::from_secs(4), k2, false));
        assert!(should_kill(t0 + Duration::from_secs(5), k2, false));
        assert!(!should_kill(t0 + Duration::from_secs(6), k2, true));
    }

    #[test]
    fn a_repeated_failure_is_said_once_then_every_interval_and_its_end_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Repeated::new(Duration::from_secs(30));
        assert_eq!(r.succeeded(t0), None, "nothing had failed");
        assert_eq!(r.failed(at(0)), Say::First);
        for s in 1..30 {
            assert_eq!(r.failed(at(s)), Say::Quiet, "at {s} s");
        }
        assert_eq!(
            r.failed(at(30)),
            Say::Again {
                unsaid: 30,
                failing: Duration::from_secs(30)
            }
        );
        assert_eq!(r.failed(at(31)), Say::Quiet);
        assert_eq!(r.succeeded(at(32)), Some((Duration::from_secs(32), 32)));
        assert_eq!(r.succeeded(at(33)), None);
        // The next outage starts afresh.
        assert_eq!(r.failed(at(100)), Say::First);
        assert_eq!(r.succeeded(at(101)), Some((Duration::from_secs(1), 1)));
    }
}
