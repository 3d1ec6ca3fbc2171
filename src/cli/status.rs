//! `steward status` as text: a compact view in the spirit of `systemctl status`.

use std::fmt::Write;

use crate::control::api::{DaemonStatus, WorkerStatus};

/// "3m 10s", "2h 5m", "4d 3h".
pub fn format_secs(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn last_exit(w: &WorkerStatus) -> String {
    let mut s = w
        .last_exit
        .as_ref()
        .map(|e| e.description.clone())
        .unwrap_or_else(|| "-".into());
    if let Some(t) = w.next_restart_in_secs {
        let _ = write!(s, " (restart in {})", format_secs(t.ceil()));
    }
    if let (Some(r), "failed" | "stopped") = (&w.reason, w.state.as_str()) {
        s = r.clone();
    }
    s
}

pub fn render(s: &DaemonStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "steward {} — {}, pid {}, up {}",
        s.version,
        s.state,
        s.pid,
        format_secs(s.uptime_secs as f64)
    );
    let _ = writeln!(out, "  status:  {}", s.status_line);
    let _ = writeln!(out, "  config:  {}", s.config);
    let _ = writeln!(out, "  socket:  {}", s.socket);
    let _ = writeln!(out, "  state:   {}", s.state_dir);
    if let Some(r) = &s.last_reload {
        let _ = writeln!(out, "  reload:  {} at {}", r.summary, r.at);
        for e in &r.errors {
            let _ = writeln!(out, "           {e}");
        }
    }
    if let Some(j) = &s.journal {
        let _ = writeln!(
            out,
            "  journal: {} ({:.1} MiB)",
            j.path,
            j.size_bytes as f64 / (1024.0 * 1024.0)
        );
        if let Some(e) = &j.error {
            let _ = writeln!(out, "  JOURNAL: {e}");
        }
    }
    if s.pools.is_empty() {
        let _ = writeln!(
            out,
            "\nNo pools configured. Add a [pool.NAME] section to {} and run `systemctl reload steward`.",
            s.config
        );
    }
    for p in &s.pools {
        let rolling = if p.rolling {
            ", restarting one by one"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\npool {}: {}/{} running{rolling} — {}",
            p.name,
            p.running,
            p.instances,
            p.command.join(" ")
        );
        let _ = writeln!(
            out,
            "  {:<4} {:<14} {:<8} {:<9} {:<9} {:<10} LAST EXIT",
            "#", "STATE", "PID", "UPTIME", "RESTARTS", "JOBS"
        );
        for w in &p.workers {
            let jobs = if w.jobs.is_empty() {
                "-".to_string()
            } else {
                w.jobs
                    .iter()
                    .map(|j| j.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(
                out,
                "  {:<4} {:<14} {:<8} {:<9} {:<9} {:<10} {}",
                w.instance,
                w.state,
                w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                w.uptime_secs.map(format_secs).unwrap_or_else(|| "-".into()),
                w.restarts,
                jobs,
                last_exit(w)
            );
        }
    }
    if !s.queues.is_empty() {
        let _ = writeln!(
            out,
            "\n  {:<16} {:>9} {:>9} {:>10} {:>8} {:>10}  POOLS",
            "QUEUE", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
        );
        for q in &s.queues {
            let pools = if q.pools.is_empty() {
                "(no pool takes these jobs)".to_string()
            } else {
                q.pools.join(", ")
            };
            let _ = writeln!(
                out,
                "  {:<16} {:>9} {:>9} {:>10} {:>8} {:>10}  {}",
                q.name, q.queued, q.running, q.succeeded, q.failed, q.cancelled, pools
            );
        }
        let _ = writeln!(
            out,
            "  (succeeded, failed and cancelled: since steward started)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_secs(5.2), "5s");
        assert_eq!(format_secs(190.0), "3m 10s");
        assert_eq!(format_secs(7500.0), "2h 5m");
        assert_eq!(format_secs(90_000.0), "1d 1h");
    }
}
