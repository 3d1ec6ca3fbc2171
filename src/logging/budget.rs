//! The budget of routine per-job lines.
//!
//! Every job would otherwise log "submitted", "started" and "succeeded". At a few hundred
//! jobs a second that is more than journald accepts from one service by default (10,000
//! messages per 30 s, `RateLimitBurst=`), and once over it journald drops *every* message
//! of the service for the rest of the interval, warnings and errors included. It also costs
//! the supervisor a formatted line and a write per event.
//!
//! So routine lines are written up to `log.max_job_lines` a second (a token bucket that
//! holds ten seconds' worth, so ordinary bursts are logged in full). A job whose start was
//! logged also gets its success logged, so a job's story is either whole or left to
//! `steward job ID`. Lines about anything that went wrong (retries, failures, timeouts,
//! reclaims, cancels) never go through the budget. What was left out is counted and
//! reported in one line every ten seconds.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds of lines the bucket holds when full.
const BURST_SECONDS: u32 = 10;
/// How often the left-out lines are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

pub struct JobLines {
    inner: Mutex<Bucket>,
}

struct Bucket {
    /// Lines a second; 0 = no limit.
    per_second: u32,
    tokens: f64,
    refilled: Instant,
    /// Running jobs whose start was logged (at most the running jobs: every job that
    /// starts also ends, and its end removes it).
    logged: HashSet<i64>,
    skipped_starts: u64,
    /// Jobs whose submit line was left out (a batch counts all its jobs).
    skipped_submits: u64,
}

/// What was left out since the last report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    pub starts: u64,
    pub submits: u64,
}

impl JobLines {
    pub fn new(per_second: u32, now: Instant) -> JobLines {
        JobLines {
            inner: Mutex::new(Bucket {
                per_second,
                tokens: f64::from(per_second) * f64::from(BURST_SECONDS),
                refilled: now,
                logged: HashSet::new(),
                skipped_starts: 0,
                skipped_submits: 0,
            }),
        }
    }

    /// A reload changed the limit.
    pub fn set_limit(&self, per_second: u32) {
        if let Ok(mut b) = self.inner.lock() {
            b.per_second = per_second;
            b.tokens = b.tokens.min(b.capacity());
        }
    }

    /// Job `job` starts: whether to log its start, and later its success (two lines).
    pub fn start(&self, job: i64, now: Instant) -> bool {
        let Ok(mut b) = self.inner.lock() else {
            return true;
        };
        if b.take(2.0, now) {
            b.logged.insert(job);
            true
        } else {
            b.skipped_starts += 1;
            false
        }
    }

    /// Job `job` ended (whatever the outcome): whether its start was logged, so that its
    /// success is logged as well.
    pub fn end(&self, job: i64) -> bool {
        match self.inner.lock() {
            Ok(mut b) => b.logged.remove(&job),
            Err(_) => true,
        }
    }

    /// `jobs` jobs were submitted together (1 for a single submit): whether to log the
    /// one line that says so.
    pub fn submit(&self, jobs: u64, now: Instant) -> bool {
        let Ok(mut b) = self.inner.lock() else {
            return true;
        };
        if b.take(1.0, now) {
            true
        } else {
            b.skipped_submits += jobs;
            false
        }
    }

    /// What was left out since the last call.
    pub fn take_skipped(&self) -> Skipped {
        match self.inner.lock() {
            Ok(mut b) => Skipped {
                starts: std::mem::take(&mut b.skipped_starts),
                submits: std::mem::take(&mut b.skipped_submits),
            },
            Err(_) => Skipped::default(),
        }
    }
}

impl Bucket {
    fn capacity(&self) -> f64 {
        f64::from(self.per_second) * f64::from(BURST_SECONDS)
    }

    fn take(&mut self, lines: f64, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.per_second)).min(self.capacity());
        if self.tokens >= lines {
            self.tokens -= lines;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_the_rate_holds() {
        let t0 = Instant::now();
        let lines = JobLines::new(10, t0);
        // Ten seconds' worth (100 lines) = 50 jobs started at once.
        let logged = (0..80).filter(|j| lines.start(*j, t0)).count();
        assert_eq!(logged, 50);
        assert_eq!(
            lines.take_skipped(),
            Skipped {
                starts: 30,
                submits: 0
            }
        );
        assert_eq!(lines.take_skipped(), Skipped::default());
        // One second later: 10 more lines = 5 jobs, or 10 submits.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((100..110).filter(|j| lines.start(*j, t1)).count(), 5);
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| lines.submit(1, t2)).count(), 10);
        assert_eq!(
            lines.take_skipped(),
            Skipped {
                starts: 5,
                submits: 10
            }
        );
        // A batch is one line; left out, it counts all its jobs.
        assert!(!lines.submit(500, t2));
        assert_eq!(
            lines.take_skipped(),
            Skipped {
                starts: 0,
                submits: 500
            }
        );
    }

    #[test]
    fn a_job_whose_start_was_logged_gets_its_end_logged() {
        let t0 = Instant::now();
        let lines = JobLines::new(1, t0);
        assert!((0..5).all(|j| lines.start(j, t0)));
        assert!(!lines.start(5, t0));
        assert!(lines.end(3));
        assert!(!lines.end(3), "only once");
        assert!(!lines.end(5));
    }

    #[test]
    fn zero_means_every_line() {
        let t0 = Instant::now();
        let lines = JobLines::new(0, t0);
        assert!((0..100_000).all(|j| lines.start(j, t0) && lines.submit(1, t0)));
        assert!(lines.end(7));
        assert_eq!(lines.take_skipped(), Skipped::default());
    }

    #[test]
    fn a_lower_limit_takes_effect_at_once() {
        let t0 = Instant::now();
        let lines = JobLines::new(1000, t0);
        lines.set_limit(1);
        assert_eq!((0..100).filter(|_| lines.submit(1, t0)).count(), 10);
        lines.set_limit(0);
        assert!(lines.submit(1, t0));
    }
}
