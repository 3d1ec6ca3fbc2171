//! The jobs a protocol worker holds, and the deadlines that come with them: each job's
//! lease, its time limit, the grace after `cancel`, and progress held back by the
//! once-a-second limit. Pure: callers pass the time and get back what is due.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::worker::KillReason;
use crate::time::after;

/// Grace given to a worker to give up a job after `cancel`, before it is killed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// Progress is written to the journal at most this often per job.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CancelWhy {
    Timeout,
    Cancelled,
}

/// Progress a worker reported: how far, and what it said.
pub(super) type Progress = (Option<f64>, Option<String>);

/// A job held by a worker, under a lease.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub queue: String,
    pub attempt: u32,
    /// The fencing token of this lease.
    pub token: i64,
    /// When it was handed to the worker: its lease runs from here at the earliest.
    pub started: Instant,
    /// Its time limit, if it has one.
    pub deadline: Option<Instant>,
    /// `cancel` was sent; the worker is killed at the instant given.
    pub cancel: Option<(CancelWhy, Instant)>,
    pub last_progress_write: Option<Instant>,
    /// The latest progress the once-a-second limit held back: written when its second is
    /// up, or before the attempt's end, so the journal keeps the last word.
    pub unsaved_progress: Option<Progress>,
}

impl Held {
    pub fn new(
        queue: String,
        attempt: u32,
        token: i64,
        now: Instant,
        timeout: Option<Duration>,
    ) -> Held {
        Held {
            queue,
            attempt,
            token,
            started: now,
            deadline: timeout.map(|t| after(now, t)),
            cancel: None,
            last_progress_write: None,
            unsaved_progress: None,
        }
    }

    /// Progress was reported: `Some` when it is to be written now, else it is kept back
    /// until its second is up.
    pub fn progress(&mut self, now: Instant, p: Progress) -> Option<Progress> {
        let due = self
            .last_progress_write
            .is_none_or(|t| now.saturating_duration_since(t) >= PROGRESS_EVERY);
        if due {
            self.last_progress_write = Some(now);
            self.unsaved_progress = None;
            Some(p)
        } else {
            self.unsaved_progress = Some(p);
            None
        }
    }

    /// Ask the worker to give the job up (unless it was asked already): `true` if the
    /// `cancel` line is to be sent now.
    pub fn cancel(&mut self, why: CancelWhy, now: Instant) -> bool {
        if self.cancel.is_some() {
            return false;
        }
        self.cancel = Some((why, after(now, CANCEL_GRACE)));
        true
    }

    /// When held-back progress may be written.
    fn progress_due(&self) -> Option<Instant> {
        self.unsaved_progress.as_ref()?;
        Some(after(self.last_progress_write?, PROGRESS_EVERY))
    }
}

/// When the first of the leases runs out, and that lease's length. Each lease runs from
/// its job's dispatch or from `heard` (the worker's last sign of life), whichever is
/// later: a worker that held nothing owed no word, so its silence before a job counts
/// for nothing.
pub(super) fn lease_expiry(
    held: &BTreeMap<i64, Held>,
    heard: Instant,
    lease_of: impl Fn(&str) -> Duration,
) -> Option<(Instant, Duration)> {
    held.values()
        .map(|h| {
            let lease = lease_of(&h.queue);
            (after(h.started.max(heard), lease), lease)
        })
        .min()
}

/// Something due for a held job.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Due {
    /// Write progress the limit held back.
    SaveProgress { job: i64, progress: Progress },
    /// The job ran past its time limit: send `cancel` (the grace began).
    Cancel { job: i64, ran_for: Duration },
}

/// What is due at `now`, marked as done in `held` (progress written, cancel sent).
pub(super) fn take_due(held: &mut BTreeMap<i64, Held>, now: Instant) -> Vec<Due> {
    let mut out = Vec::new();
    for (&job, h) in held.iter_mut() {
        if h.progress_due().is_some_and(|t| now >= t)
            && let Some(progress) = h.unsaved_progress.take()
        {
            h.last_progress_write = Some(now);
            out.push(Due::SaveProgress { job, progress });
        }
        if h.deadline.is_some_and(|d| now >= d) && h.cancel(CancelWhy::Timeout, now) {
            out.push(Due::Cancel {
                job,
                ran_for: now.saturating_duration_since(h.started),
            });
        }
    }
    out
}

/// The first job whose grace after `cancel` ends (or ended), and why the worker is to be
/// killed then.
pub(super) fn kill_due(held: &BTreeMap<i64, Held>) -> Option<(KillReason, Instant)> {
    held.iter()
        .filter_map(|(&job, h)| {
            let (why, at) = h.cancel?;
            Some((
                match why {
                    CancelWhy::Timeout => KillReason::JobTimeout(job),
                    CancelWhy::Cancelled => KillReason::Cancelled(job),
                },
                at,
            ))
        })
        .min_by_key(|(_, at)| *at)
}

/// The next instant something of [`take_due`] falls due (kills are [`kill_due`]'s).
pub(super) fn deadline(held: &BTreeMap<i64, Held>) -> Option<Instant> {
    held.values()
        .flat_map(|h| [h.progress_due(), h.deadline.filter(|_| h.cancel.is_none())])
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn one(t0: Instant, timeout: Option<Duration>) -> BTreeMap<i64, Held> {
        BTreeMap::from([(7, Held::new("q".into(), 1, 1, t0, timeout))])
    }

    #[test]
    fn a_lease_runs_from_dispatch_when_the_worker_was_idle_before() {
        let t0 = Instant::now();
        // Last heard an hour before it got the job: the lease still runs from the job.
        let held = one(t0 + 3600 * S, None);
        let (expiry, lease) = lease_expiry(&held, t0, |_| 2 * S).unwrap();
        assert_eq!((expiry, lease), (t0 + 3602 * S, 2 * S));
        // A line after the dispatch renews it.
        let (expiry, _) = lease_expiry(&held, t0 + 3601 * S, |_| 2 * S).unwrap();
        assert_eq!(expiry, t0 + 3603 * S);
        // Nothing held: no lease to run out.
        assert_eq!(lease_expiry(&BTreeMap::new(), t0, |_| 2 * S), None);
    }

    #[test]
    fn the_shortest_lease_of_several_queues_runs_out_first() {
        let t0 = Instant::now();
        let mut held = one(t0, None);
        held.insert(8, Held::new("short".into(), 1, 1, t0 + S, None));
        let lease_of = |q: &str| if q == "short" { 2 * S } else { 60 * S };
        assert_eq!(lease_expiry(&held, t0, lease_of), Some((t0 + 3 * S, 2 * S)));
    }

    #[test]
    fn a_job_past_its_timeout_is_cancelled_once_then_killed_after_the_grace() {
        let t0 = Instant::now();
        let mut held = one(t0, Some(5 * S));
        assert_eq!(deadline(&held), Some(t0 + 5 * S));
        assert!(take_due(&mut held, t0 + 4 * S).is_empty());
        assert_eq!(kill_due(&held), None);
        assert_eq!(
            take_due(&mut held, t0 + 5 * S),
            vec![Due::Cancel {
                job: 7,
                ran_for: 5 * S
            }]
        );
        // Sent once; the deadline is now the kill's, not the timeout's.
        assert!(take_due(&mut held, t0 + 6 * S).is_empty());
        assert_eq!(deadline(&held), None);
        assert_eq!(
            kill_due(&held),
            Some((KillReason::JobTimeout(7), t0 + 5 * S + CANCEL_GRACE))
        );
    }

    #[test]
    fn steward_cancel_is_sent_once_and_has_its_grace() {
        let t0 = Instant::now();
        let mut held = one(t0, None);
        let h = held.get_mut(&7).unwrap();
        assert!(h.cancel(CancelWhy::Cancelled, t0 + S));
        assert!(!h.cancel(CancelWhy::Cancelled, t0 + 2 * S));
        assert!(!h.cancel(CancelWhy::Timeout, t0 + 3 * S));
        assert_eq!(
            kill_due(&held),
            Some((KillReason::Cancelled(7), t0 + S + CANCEL_GRACE))
        );
    }

    #[test]
    fn progress_is_written_at_most_once_a_second_and_the_last_word_is_kept() {
        let t0 = Instant::now();
        let mut held = one(t0, None);
        let h = held.get_mut(&7).unwrap();
        assert!(h.progress(t0, (Some(0.1), None)).is_some());
        assert!(h.progress(t0 + S / 2, (Some(0.2), None)).is_none());
        assert!(h.progress(t0 + S / 2, (Some(0.3), None)).is_none());
        assert_eq!(deadline(&held), Some(t0 + S));
        assert!(take_due(&mut held, t0 + S / 2).is_empty());
        assert_eq!(
            take_due(&mut held, t0 + S),
            vec![Due::SaveProgress {
                job: 7,
                progress: (Some(0.3), None)
            }]
        );
        assert_eq!(deadline(&held), None);
    }
}
