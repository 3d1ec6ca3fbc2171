//! What a run of health probe results means for one worker, and what to do about an
//! unhealthy one given the rest of its pool. Pure: no probes, no clocks.

use std::time::{Duration, Instant};

use crate::config::{HealthSpec, OnUnhealthy};
use crate::time::after;

/// Probes start on a tick of this length shared by every worker, so that 1,000 workers
/// probed every second wake the daemon 50 times a second, not 1,000 times, and their
/// connections go out together.
pub const PROBE_TICK: Duration = Duration::from_millis(50);

/// When the next probe is due: `pace` after the last one was due, or `pace` from `now`
/// if the last one ran past that (a slow probe does not bring on a burst of them).
pub fn next_due(last_due: Instant, pace: Duration, now: Instant) -> Instant {
    let next = after(last_due, pace);
    if next < now { after(now, pace) } else { next }
}

/// `due`, put off to the next [`PROBE_TICK`] counted from `epoch`.
pub fn on_tick(due: Instant, epoch: Instant) -> Instant {
    let Some(since) = due.checked_duration_since(epoch) else {
        return due;
    };
    let tick = PROBE_TICK.as_nanos();
    match since.as_nanos() % tick {
        0 => due,
        rest => after(due, Duration::from_nanos((tick - rest) as u64)),
    }
}

/// One worker's probe record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Failed probes in a row (0 after any success).
    pub failures: u32,
    /// Passing probes in a row since it became unhealthy.
    pub successes: u32,
    pub unhealthy: bool,
    /// A probe of this run has passed: its start period is over.
    pub passed: bool,
}

/// The last probe of a worker's run: passed, what it found, its latency in ms, a body
/// snippet. Written by whoever ran the probe, read for `steward status`.
pub type LastProbe = std::sync::Arc<std::sync::Mutex<Option<(bool, String, f64, Option<String>)>>>;

/// Count a probe of a worker of `pool` in the metrics and keep it as its last.
pub fn note(
    metrics: &crate::metrics::Metrics,
    pool: &str,
    last: &LastProbe,
    outcome: &crate::probe::Outcome,
) {
    metrics.health_checked(pool, outcome.ok, outcome.latency);
    if let Ok(mut l) = last.lock() {
        *l = Some((
            outcome.ok,
            outcome.detail.clone(),
            outcome.latency.as_secs_f64() * 1000.0,
            outcome.snippet.clone(),
        ));
    }
}

/// Whether a passing probe can go unreported to the supervision loop: the worker is up
/// and `passes_before` passes in a row already reached it, enough for `successes`, so
/// this one changes nothing there. Failures, and passes while it starts or recovers,
/// are always reported.
pub fn quiet(ok: bool, up: bool, passes_before: u32, successes: u32) -> bool {
    ok && up && passes_before >= successes
}

/// What one result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    BecameUnhealthy,
    Recovered,
}

impl Health {
    pub fn record(&mut self, spec: &HealthSpec, ok: bool) -> Change {
        if ok {
            self.passed = true;
            self.failures = 0;
            if self.unhealthy {
                self.successes += 1;
                if self.successes >= spec.successes {
                    self.unhealthy = false;
                    self.successes = 0;
                    return Change::Recovered;
                }
            }
            return Change::None;
        }
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if !self.unhealthy && self.failures >= spec.failures {
            self.unhealthy = true;
            return Change::BecameUnhealthy;
        }
        Change::None
    }
}

/// What to do with a worker that just became unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    Restart,
    /// Leave it running, shown as unhealthy, for this reason.
    Mark(String),
}

/// `unhealthy`: workers of the pool unhealthy now, this one included; `restarting`: a
/// health restart of the pool is under way.
pub fn act(spec: &HealthSpec, instances: u32, unhealthy: u32, restarting: bool) -> Act {
    if spec.on_failure == OnUnhealthy::Mark {
        return Act::Mark("on_failure = \"mark\"".into());
    }
    // One worker of its own is not a pattern; two or more, and most of the pool, are.
    if unhealthy >= 2 && unhealthy.saturating_mul(2) > instances {
        return Act::Mark(format!(
            "{unhealthy} of the pool's {instances} workers are unhealthy at once, so a dependency they share is probably down: not restarting them"
        ));
    }
    if restarting {
        return Act::Mark(
            "another worker of the pool is being restarted for its health; one at a time".into(),
        );
    }
    Act::Restart
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ProbeSpec;

    #[test]
    fn probes_keep_their_pace_on_the_shared_tick() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let tick = PROBE_TICK;
        // Due 5 ms past a tick: waits for the next one; due on a tick: goes at once.
        assert_eq!(on_tick(epoch + tick * 20 + ms(5), epoch), epoch + tick * 21);
        assert_eq!(on_tick(epoch + tick * 21, epoch), epoch + tick * 21);
        assert_eq!(on_tick(epoch + ms(1), epoch), epoch + tick);
        // The next time is counted from when the last was due, not from the tick, so
        // rounding does not add up: ten probes a second apart take ten seconds.
        let mut due = epoch + ms(5);
        for _ in 0..10 {
            due = next_due(due, ms(1000), due);
        }
        assert_eq!(due, epoch + ms(10_005));
        // A probe that ran 3 s past its time: the next is an interval from now.
        let late = epoch + ms(13_000);
        assert_eq!(next_due(due, ms(1000), late), late + ms(1000));
        // Nothing overflows, whatever the interval.
        let far = next_due(due, Duration::MAX, late);
        assert!(far > late);
        assert!(on_tick(far, epoch) >= far);
    }

    fn spec(failures: u32, successes: u32) -> HealthSpec {
        HealthSpec {
            probe: ProbeSpec::Tcp("127.0.0.1:1".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures,
            successes,
            on_failure: OnUnhealthy::Restart,
            start_period: None,
            keep_alive: true,
        }
    }

    #[test]
    fn failures_in_a_row_make_a_worker_unhealthy_and_successes_bring_it_back() {
        let s = spec(3, 2);
        let mut h = Health::default();
        assert_eq!(h.record(&s, false), Change::None);
        assert_eq!(h.record(&s, false), Change::None);
        // A success resets the count.
        assert_eq!(h.record(&s, true), Change::None);
        assert_eq!(h.failures, 0);
        for _ in 0..2 {
            assert_eq!(h.record(&s, false), Change::None);
        }
        assert_eq!(h.record(&s, false), Change::BecameUnhealthy);
        assert_eq!(h.record(&s, false), Change::None, "said once");
        assert_eq!(h.record(&s, true), Change::None);
        assert_eq!(h.record(&s, false), Change::None);
        assert_eq!(h.record(&s, true), Change::None);
        assert_eq!(h.record(&s, true), Change::Recovered);
        assert!(!h.unhealthy);
    }

    #[test]
    fn only_passes_that_change_nothing_go_unreported() {
        // Starting: every result is reported (the first pass is the readiness).
        assert!(!quiet(true, false, 5, 1));
        // Failures always are.
        assert!(!quiet(false, true, 5, 1));
        // Up: the first pass after a failure is, the next ones are not.
        assert!(!quiet(true, true, 0, 1));
        assert!(quiet(true, true, 1, 1));
        // An unhealthy worker needs `successes` passes in a row: each is reported.
        assert!(!quiet(true, true, 1, 3));
        assert!(!quiet(true, true, 2, 3));
        assert!(quiet(true, true, 3, 3));
    }

    #[test]
    fn restarts_are_one_at_a_time_and_not_when_most_of_the_pool_is_down() {
        let s = spec(3, 1);
        assert_eq!(act(&s, 4, 1, false), Act::Restart);
        assert_eq!(act(&s, 4, 2, false), Act::Restart);
        assert!(
            matches!(act(&s, 4, 3, false), Act::Mark(why) if why.contains("3 of the pool's 4"))
        );
        assert!(matches!(act(&s, 4, 1, true), Act::Mark(_)));
        assert_eq!(act(&s, 1, 1, false), Act::Restart, "a pool of one");
        assert!(matches!(act(&s, 2, 2, false), Act::Mark(_)));
        let mark = HealthSpec {
            on_failure: OnUnhealthy::Mark,
            ..s
        };
        assert!(matches!(act(&mark, 4, 1, false), Act::Mark(_)));
    }
}
