//! Counters and histograms, and their Prometheus text exposition (format 0.0.4).
//!
//! Counters and histograms are recorded where things happen (the loop, the journal
//! writer); gauges (workers by state, jobs by state) are read at scrape time from the
//! loop's published snapshot and the journal's counts, so a scrape never waits on the
//! supervisor loop.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const RUN_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0,
];
const PROBE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything counted since the daemon started.
pub struct Metrics {
    pub watchdog_pings: AtomicU64,
    /// Notices from a shared journal that jobs were added (LISTEN/NOTIFY).
    pub journal_wakeups: AtomicU64,
    pub journal_commits: AtomicU64,
    /// Jobs whose routine "started" (and "succeeded") lines `log.max_job_lines` left out.
    pub job_lines_skipped_starts: AtomicU64,
    /// Jobs whose "submitted" line `log.max_job_lines` left out.
    pub job_lines_skipped_submits: AtomicU64,
    worker_restarts: Mutex<BTreeMap<String, u64>>,
    worker_oom_kills: Mutex<BTreeMap<String, u64>>,
    jobs_finished: Mutex<BTreeMap<(String, String), u64>>,
    reclaimed: Mutex<BTreeMap<String, u64>>,
    run_duration: Mutex<BTreeMap<String, Histogram>>,
    queue_wait: Mutex<BTreeMap<String, Histogram>>,
    commit_latency: Mutex<Histogram>,
    health_checks: Mutex<BTreeMap<(String, &'static str), u64>>,
    probe_latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            watchdog_pings: AtomicU64::new(0),
            journal_wakeups: AtomicU64::new(0),
            journal_commits: AtomicU64::new(0),
            job_lines_skipped_starts: AtomicU64::new(0),
            job_lines_skipped_submits: AtomicU64::new(0),
            worker_restarts: Mutex::default(),
            worker_oom_kills: Mutex::default(),
            jobs_finished: Mutex::default(),
            reclaimed: Mutex::default(),
            run_duration: Mutex::default(),
            queue_wait: Mutex::default(),
            commit_latency: Mutex::new(Histogram::new(COMMIT_BUCKETS)),
            health_checks: Mutex::default(),
            probe_latency: Mutex::default(),
        }
    }
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K, by: u64) {
    if let Ok(mut m) = m.lock() {
        *m.entry(k).or_default() += by;
    }
}

fn observe(m: &Mutex<BTreeMap<String, Histogram>>, k: &str, bounds: &'static [f64], v: f64) {
    if let Ok(mut m) = m.lock() {
        m.entry(k.to_string())
            .or_insert_with(|| Histogram::new(bounds))
            .observe(v);
    }
}

/// Escape a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn worker_restarted(&self, pool: &str) {
        bump(&self.worker_restarts, pool.to_string(), 1);
    }

    /// A worker or job process of `pool` was killed by the kernel's OOM killer.
    pub fn worker_oom_killed(&self, pool: &str) {
        bump(&self.worker_oom_kills, pool.to_string(), 1);
    }

    pub fn job_finished(&self, queue: &str, outcome: &str) {
        bump(
            &self.jobs_finished,
            (queue.to_string(), outcome.to_string()),
            1,
        );
    }

    /// `reason`: `worker_exit`, `hang` or `daemon_restart`.
    pub fn jobs_reclaimed(&self, reason: &str, n: u64) {
        bump(&self.reclaimed, reason.to_string(), n);
    }

    /// A health probe of a worker of `pool` passed or failed, taking `latency`.
    pub fn health_checked(&self, pool: &str, ok: bool, latency: Duration) {
        let result = if ok { "pass" } else { "fail" };
        bump(&self.health_checks, (pool.to_string(), result), 1);
        observe(
            &self.probe_latency,
            pool,
            PROBE_BUCKETS,
            latency.as_secs_f64(),
        );
    }

    pub fn job_ran(&self, queue: &str, d: Duration) {
        observe(&self.run_duration, queue, RUN_BUCKETS, d.as_secs_f64());
    }

    pub fn job_waited(&self, queue: &str, d: Duration) {
        observe(&self.queue_wait, queue, WAIT_BUCKETS, d.as_secs_f64());
    }

    pub fn commit(&self, d: Duration) {
        self.journal_commits.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.commit_latency.lock() {
            h.observe(d.as_secs_f64());
        }
    }

    /// The exposition: counters and histograms from here, gauges from `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut o = String::with_capacity(8192);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
        };
        head(&mut o, "steward_up", "gauge", "1 while the daemon runs.");
        let _ = writeln!(o, "steward_up 1");
        head(
            &mut o,
            "steward_build_info",
            "gauge",
            "The steward version, as a label.",
        );
        let _ = writeln!(
            o,
            "steward_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        head(
            &mut o,
            "steward_queue_oldest_due_seconds",
            "gauge",
            "How long the queued job that has been due longest has waited (a delayed or retried job counts from its run time); 0 when none is due.",
        );
        for (queue, secs) in &gauges.oldest_due {
            let _ = writeln!(
                o,
                "steward_queue_oldest_due_seconds{{queue=\"{}\"}} {secs:.3}",
                esc(queue)
            );
        }
        head(
            &mut o,
            "steward_journal_writable",
            "gauge",
            "1 while the job journal accepts writes, 0 while writes fail (see /health).",
        );
        let _ = writeln!(
            o,
            "steward_journal_writable {}",
            u8::from(gauges.journal_writable)
        );
        head(
            &mut o,
            "steward_loop_last_turn_seconds",
            "gauge",
            "Seconds since the supervision loop last turned (it turns at least once a second).",
        );
        let _ = writeln!(
            o,
            "steward_loop_last_turn_seconds {:.3}",
            gauges.loop_age_secs
        );
        head(
            &mut o,
            "steward_workers",
            "gauge",
            "Workers by pool and state.",
        );
        for (pool, state, n) in &gauges.workers {
            let _ = writeln!(
                o,
                "steward_workers{{pool=\"{}\",state=\"{state}\"}} {n}",
                esc(pool)
            );
        }
        head(
            &mut o,
            "steward_worker_restarts_total",
            "counter",
            "Workers started again after an exit, by pool.",
        );
        if let Ok(m) = self.worker_restarts.lock() {
            for (pool, n) in m.iter() {
                let _ = writeln!(
                    o,
                    "steward_worker_restarts_total{{pool=\"{}\"}} {n}",
                    esc(pool)
                );
            }
        }
        head(
            &mut o,
            "steward_worker_oom_kills_total",
            "counter",
            "Workers and job processes killed by the kernel's OOM killer (their cgroup's memory_max), by pool.",
        );
        if let Ok(m) = self.worker_oom_kills.lock() {
            for (pool, n) in m.iter() {
                let _ = writeln!(
                    o,
                    "steward_worker_oom_kills_total{{pool=\"{}\"}} {n}",
                    esc(pool)
                );
            }
        }
        head(
            &mut o,
            "steward_worker_memory_bytes",
            "gauge",
            "Memory of each worker (its cgroup's memory.current, or its process's resident set without cgroups).",
        );
        for u in &gauges.usage {
            let _ = writeln!(
                o,
                "steward_worker_memory_bytes{{pool=\"{}\",instance=\"{}\"}} {}",
                esc(&u.pool),
                u.instance,
                u.memory_bytes
            );
        }
        head(
            &mut o,
            "steward_worker_cpu_seconds_total",
            "counter",
            "CPU time of each worker's current run (its cgroup's, or its process's without cgroups).",
        );
        for u in &gauges.usage {
            let _ = writeln!(
                o,
                "steward_worker_cpu_seconds_total{{pool=\"{}\",instance=\"{}\"}} {:.3}",
                esc(&u.pool),
                u.instance,
                u.cpu_seconds
            );
        }
        head(
            &mut o,
            "steward_jobs",
            "gauge",
            "Jobs in the journal by queue and state.",
        );
        for (queue, state, n) in &gauges.jobs {
            let _ = writeln!(
                o,
                "steward_jobs{{queue=\"{}\",state=\"{state}\"}} {n}",
                esc(queue)
            );
        }
        head(
            &mut o,
            "steward_jobs_finished_total",
            "counter",
            "Jobs that reached a final state, by queue and outcome.",
        );
        if let Ok(m) = self.jobs_finished.lock() {
            for ((queue, outcome), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "steward_jobs_finished_total{{queue=\"{}\",outcome=\"{outcome}\"}} {n}",
                    esc(queue)
                );
            }
        }
        head(
            &mut o,
            "steward_jobs_reclaimed_total",
            "counter",
            "Jobs taken back from workers, by reason.",
        );
        if let Ok(m) = self.reclaimed.lock() {
            for reason in ["worker_exit", "hang", "daemon_restart"] {
                let _ = writeln!(
                    o,
                    "steward_jobs_reclaimed_total{{reason=\"{reason}\"}} {}",
                    m.get(reason).copied().unwrap_or(0)
                );
            }
        }
        head(
            &mut o,
            "steward_health_checks_total",
            "counter",
            "Health probes of workers, by pool and result (pass, fail).",
        );
        if let Ok(m) = self.health_checks.lock() {
            for ((pool, result), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "steward_health_checks_total{{pool=\"{}\",result=\"{result}\"}} {n}",
                    esc(pool)
                );
            }
        }
        head(
            &mut o,
            "steward_health_probe_seconds",
            "histogram",
            "How long health probes took, by pool.",
        );
        if let Ok(m) = self.probe_latency.lock() {
            for (pool, h) in m.iter() {
                h.write(
                    &mut o,
                    "steward_health_probe_seconds",
                    &format!("pool=\"{}\"", esc(pool)),
                );
            }
        }
        head(
            &mut o,
            "steward_job_run_duration_seconds",
            "histogram",
            "How long attempts ran until done or fail, by queue.",
        );
        if let Ok(m) = self.run_duration.lock() {
            for (queue, h) in m.iter() {
                h.write(
                    &mut o,
                    "steward_job_run_duration_seconds",
                    &format!("queue=\"{}\"", esc(queue)),
                );
            }
        }
        head(
            &mut o,
            "steward_job_queue_wait_seconds",
            "histogram",
            "From submit to the first start, by queue.",
        );
        if let Ok(m) = self.queue_wait.lock() {
            for (queue, h) in m.iter() {
                h.write(
                    &mut o,
                    "steward_job_queue_wait_seconds",
                    &format!("queue=\"{}\"", esc(queue)),
                );
            }
        }
        head(
            &mut o,
            "steward_journal_commit_seconds",
            "histogram",
            "Latency of journal transactions, from their start until they are durable.",
        );
        if let Ok(h) = self.commit_latency.lock() {
            h.write(&mut o, "steward_journal_commit_seconds", "");
        }
        head(
            &mut o,
            "steward_journal_commits_total",
            "counter",
            "Journal transactions committed.",
        );
        let _ = writeln!(
            o,
            "steward_journal_commits_total {}",
            self.journal_commits.load(Ordering::Relaxed)
        );
        head(
            &mut o,
            "steward_job_lines_skipped_total",
            "counter",
            "Jobs whose routine log lines log.max_job_lines left out: line=started (the start and success), line=submitted; counted every 10 s.",
        );
        for (line, n) in [
            ("started", &self.job_lines_skipped_starts),
            ("submitted", &self.job_lines_skipped_submits),
        ] {
            let _ = writeln!(
                o,
                "steward_job_lines_skipped_total{{line=\"{line}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        head(
            &mut o,
            "steward_log_lines_dropped_total",
            "counter",
            "Log lines dropped: source=worker (worker output, after the log output made no progress for 5 s), source=steward (steward's own, when its queue was full).",
        );
        for (source, n) in [
            ("steward", gauges.log_dropped.0),
            ("worker", gauges.log_dropped.1),
        ] {
            let _ = writeln!(
                o,
                "steward_log_lines_dropped_total{{source=\"{source}\"}} {n}"
            );
        }
        head(
            &mut o,
            "steward_watchdog_pings_total",
            "counter",
            "WATCHDOG=1 notifications sent to systemd.",
        );
        let _ = writeln!(
            o,
            "steward_watchdog_pings_total {}",
            self.watchdog_pings.load(Ordering::Relaxed)
        );
        head(
            &mut o,
            "steward_journal_wakeups_total",
            "counter",
            "Notices from the shared PostgreSQL journal that jobs were added elsewhere.",
        );
        let _ = writeln!(
            o,
            "steward_journal_wakeups_total {}",
            self.journal_wakeups.load(Ordering::Relaxed)
        );
        o
    }
}

/// Gauge values read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// (pool, state, count)
    pub workers: Vec<(String, String, u64)>,
    /// (queue, state, count)
    pub jobs: Vec<(String, String, u64)>,
    /// Log lines dropped: (steward's own, worker output).
    pub log_dropped: (u64, u64),
    /// Memory and CPU of each running worker.
    pub usage: Vec<WorkerUsage>,
    /// (queue, seconds the job due longest has waited; 0 when none is due)
    pub oldest_due: Vec<(String, f64)>,
    /// Whether the journal accepts writes.
    pub journal_writable: bool,
    /// Seconds since the supervision loop last turned.
    pub loop_age_secs: f64,
}

#[derive(Debug, Clone, Default)]
pub struct WorkerUsage {
    pub pool: String,
    pub instance: u32,
    pub memory_bytes: u64,
    pub cpu_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut o = String::new();
        h.write(&mut o, "x", "q=\"a\"");
        assert!(o.contains("x_bucket{q=\"a\",le=\"1\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{q=\"a\",le=\"2\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{q=\"a\",le=\"+Inf\"} 3\n"), "{o}");
        assert!(o.contains("x_count{q=\"a\"} 3\n"), "{o}");
        assert!(o.contains("x_sum{q=\"a\"} 11\n"), "{o}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(esc("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
