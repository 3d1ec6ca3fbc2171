//! What happens to a job after an attempt ends: pure decisions, tested without SQLite.
//!
//! Counted attempts (`tries`) are limited by `max_attempts`. Crashes of the worker holding
//! a job are counted apart: after [`QUARANTINE_AFTER_CRASHES`] the job is quarantined as
//! `failed`, so one poisonous payload cannot crash a pool forever. Interruptions by a stop
//! or crash of steward itself do not use up attempts, but are capped at
//! [`MAX_INTERRUPTIONS`].

use std::time::Duration;

use crate::config::RetryBackoff;
use crate::time::{exponential, with_jitter};

pub const QUARANTINE_AFTER_CRASHES: u32 = 3;
pub const MAX_INTERRUPTIONS: u32 = 10;

pub use crate::model::JobState;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `done` from the worker; the result as JSON text.
    Succeeded { result: Option<String> },
    /// `fail` from the worker.
    Failed { error: String, retry: bool },
    /// The worker exited while holding the job.
    Crashed { reason: String },
    /// The worker went silent past its lease and was killed.
    Hung { reason: String },
    /// The attempt ran past its timeout.
    TimedOut { reason: String },
    /// steward stopped (or was restarted) while the attempt ran.
    Interrupted { reason: String },
    /// The job was claimed but never reached a worker.
    Released,
    /// `steward cancel` while it ran.
    Cancelled { reason: String },
}

impl Outcome {
    /// The word stored in the attempt history.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Crashed { .. } => "crashed",
            Outcome::Hung { .. } => "hung",
            Outcome::TimedOut { .. } => "timeout",
            Outcome::Interrupted { .. } => "interrupted",
            Outcome::Released => "released",
            Outcome::Cancelled { .. } => "cancelled",
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded { .. } | Outcome::Released => None,
            Outcome::Failed { error, .. } => Some(error),
            Outcome::Crashed { reason }
            | Outcome::Hung { reason }
            | Outcome::TimedOut { reason }
            | Outcome::Interrupted { reason }
            | Outcome::Cancelled { reason } => Some(reason),
        }
    }
}

/// A job's counters, as stored. `tries` already includes the attempt that just ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub tries: u32,
    pub crashes: u32,
    pub interruptions: u32,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Succeeded,
    /// Back to the queue, to run again after `delay`.
    Queued {
        delay: Duration,
    },
    Failed {
        reason: String,
    },
    Cancelled,
}

/// Decide a job's next state after an attempt. `random` is uniform in [0, 1).
pub fn after_attempt(
    c: Counters,
    outcome: &Outcome,
    backoff: &RetryBackoff,
    random: f64,
) -> (Counters, Next) {
    let mut c = c;
    let retry_delay = |tries: u32| {
        with_jitter(
            exponential(backoff.initial, backoff.max, backoff.multiplier, tries),
            backoff.jitter,
            random,
        )
    };
    let exhausted = |c: &Counters, last: &str| Next::Failed {
        reason: format!(
            "failed after {} of {} attempts; last error: {last}",
            c.tries, c.max_attempts
        ),
    };
    let next = match outcome {
        Outcome::Succeeded { .. } => Next::Succeeded,
        Outcome::Cancelled { .. } => Next::Cancelled,
        Outcome::Failed {
            error,
            retry: false,
        } => Next::Failed {
            reason: format!("the worker reported a permanent failure: {error}"),
        },
        Outcome::Failed {
            error: last,
            retry: true,
        }
        | Outcome::TimedOut { reason: last } => {
            if c.tries >= c.max_attempts {
                exhausted(&c, last)
            } else {
                Next::Queued {
                    delay: retry_delay(c.tries),
                }
            }
        }
        Outcome::Crashed { reason } | Outcome::Hung { reason } => {
            c.crashes += 1;
            if c.crashes >= QUARANTINE_AFTER_CRASHES {
                Next::Failed {
                    reason: format!(
                        "quarantined: the worker holding this job crashed {} times (last: {reason})",
                        c.crashes
                    ),
                }
            } else if c.tries >= c.max_attempts {
                exhausted(&c, reason)
            } else {
                Next::Queued {
                    delay: retry_delay(c.tries),
                }
            }
        }
        Outcome::Interrupted { .. } => {
            c.tries = c.tries.saturating_sub(1);
            c.interruptions += 1;
            if c.interruptions > MAX_INTERRUPTIONS {
                Next::Failed {
                    reason: format!(
                        "interrupted {} times by steward stopping while it ran",
                        c.interruptions
                    ),
                }
            } else {
                Next::Queued {
                    delay: Duration::ZERO,
                }
            }
        }
        Outcome::Released => {
            c.tries = c.tries.saturating_sub(1);
            Next::Queued {
                delay: Duration::ZERO,
            }
        }
    };
    (c, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> RetryBackoff {
        RetryBackoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(100),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    fn c(tries: u32) -> Counters {
        Counters {
            tries,
            crashes: 0,
            interruptions: 0,
            max_attempts: 3,
        }
    }

    fn fail(retry: bool) -> Outcome {
        Outcome::Failed {
            error: "boom".into(),
            retry,
        }
    }

    #[test]
    fn retries_back_off_then_fail() {
        assert_eq!(
            after_attempt(c(1), &fail(true), &backoff(), 0.0).1,
            Next::Queued {
                delay: Duration::from_secs(10)
            }
        );
        assert_eq!(
            after_attempt(c(2), &fail(true), &backoff(), 0.0).1,
            Next::Queued {
                delay: Duration::from_secs(20)
            }
        );
        match after_attempt(c(3), &fail(true), &backoff(), 0.0).1 {
            Next::Failed { reason } => assert!(
                reason.contains("3 of 3 attempts; last error: boom"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_retryable_fails_at_once() {
        assert!(matches!(
            after_attempt(c(1), &fail(false), &backoff(), 0.0).1,
            Next::Failed { .. }
        ));
    }

    #[test]
    fn three_crashes_quarantine() {
        let crash = Outcome::Crashed {
            reason: "exit code 1".into(),
        };
        let mut counters = Counters {
            max_attempts: 20,
            ..c(0)
        };
        for n in 1..=3 {
            counters.tries += 1;
            let (next_c, next) = after_attempt(counters, &crash, &backoff(), 0.0);
            counters = next_c;
            if n < 3 {
                assert!(matches!(next, Next::Queued { .. }));
            } else {
                match next {
                    Next::Failed { reason } => {
                        assert!(reason.starts_with("quarantined"), "{reason}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(counters.crashes, 3);
    }

    #[test]
    fn interruptions_do_not_use_attempts_but_are_capped() {
        let int = Outcome::Interrupted {
            reason: "stop".into(),
        };
        let mut counters = c(1);
        for _ in 0..MAX_INTERRUPTIONS {
            let (next_c, next) = after_attempt(counters, &int, &backoff(), 0.0);
            assert_eq!(
                next,
                Next::Queued {
                    delay: Duration::ZERO
                }
            );
            assert_eq!(next_c.tries, 0);
            counters = Counters { tries: 1, ..next_c };
        }
        assert!(matches!(
            after_attempt(counters, &int, &backoff(), 0.0).1,
            Next::Failed { .. }
        ));
    }

    #[test]
    fn timeout_counts_as_a_failure() {
        let t = Outcome::TimedOut {
            reason: "ran 30m".into(),
        };
        assert!(matches!(
            after_attempt(c(1), &t, &backoff(), 0.0).1,
            Next::Queued { .. }
        ));
        assert!(matches!(
            after_attempt(c(3), &t, &backoff(), 0.0).1,
            Next::Failed { .. }
        ));
    }
}

/// How an exec-pool job process ended, as the journal records it.
///
/// Exit 0 succeeds, with the last stdout line as the result if it is a JSON value. Exit 78
/// (`EX_CONFIG`) or a code in `no_retry` fails at once. Any other code (75, `EX_TEMPFAIL`,
/// included) is a failed attempt, retried per the queue. A signal is a crash.
pub fn exec_outcome(
    exit: crate::model::Exit,
    no_retry: &[i32],
    last_stdout: Option<&str>,
    last_stderr: Option<&str>,
) -> Outcome {
    use crate::model::{Exit, describe_exit};
    let why = |code: i32| match last_stderr.map(str::trim).filter(|l| !l.is_empty()) {
        Some(line) => crate::protocol::truncate(
            format!("exited with code {code}: {line}"),
            crate::protocol::MAX_ERROR,
        ),
        None => format!("exited with code {code}"),
    };
    match exit {
        Exit::Code(0) => Outcome::Succeeded {
            result: last_stdout
                .map(str::trim)
                .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
                .map(str::to_string),
        },
        Exit::Code(c) if c == 78 || no_retry.contains(&c) => Outcome::Failed {
            error: why(c),
            retry: false,
        },
        Exit::Code(c) => Outcome::Failed {
            error: why(c),
            retry: true,
        },
        Exit::Signal(_) => Outcome::Crashed {
            reason: format!("the job process was {}", describe_exit(exit)),
        },
    }
}

#[cfg(test)]
mod exec_tests {
    use super::*;
    use crate::model::Exit;

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(
            exec_outcome(Exit::Code(0), &[], Some("{\"n\": 1}"), None),
            Outcome::Succeeded {
                result: Some("{\"n\": 1}".into())
            }
        );
        assert_eq!(
            exec_outcome(Exit::Code(0), &[], Some("plain text"), None),
            Outcome::Succeeded { result: None }
        );
        assert_eq!(
            exec_outcome(Exit::Code(0), &[], Some("42"), None),
            Outcome::Succeeded {
                result: Some("42".into())
            }
        );
        assert!(matches!(
            exec_outcome(Exit::Code(1), &[], None, None),
            Outcome::Failed { retry: true, .. }
        ));
        assert!(matches!(
            exec_outcome(Exit::Code(75), &[], None, None),
            Outcome::Failed { retry: true, .. }
        ));
        assert!(matches!(
            exec_outcome(Exit::Code(78), &[], None, None),
            Outcome::Failed { retry: false, .. }
        ));
        assert!(matches!(
            exec_outcome(Exit::Code(3), &[3, 4], None, None),
            Outcome::Failed { retry: false, .. }
        ));
        assert!(matches!(
            exec_outcome(Exit::Signal(9), &[], None, None),
            Outcome::Crashed { .. }
        ));
        match exec_outcome(Exit::Code(2), &[], None, Some("disk on fire\n")) {
            Outcome::Failed { error, .. } => assert_eq!(error, "exited with code 2: disk on fire"),
            other => panic!("{other:?}"),
        }
    }
}
