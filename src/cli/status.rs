//! `steward status` as text: a compact view in the spirit of `systemctl status`.

use std::fmt::Write;

use crate::api::{DaemonStatus, WorkerStatus};

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

/// A pool's limits, and those that are not enforced here; and what the operator set.
fn limits(out: &mut String, p: &Paint, pool: &crate::api::PoolStatus) {
    if let Some(o) = &pool.operator {
        let _ = writeln!(out, "  {}", p.wrap("1;33", o));
    }
    if !pool.limits.is_empty() {
        let _ = writeln!(
            out,
            "  {}",
            p.dim(&format!("limits: {}", pool.limits.join(", ")))
        );
    }
    if !pool.limits_not_enforced.is_empty() {
        let _ = writeln!(
            out,
            "  {} {}",
            p.wrap("1;33", "limits NOT enforced:"),
            pool.limits_not_enforced.join(", ")
        );
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

/// ANSI colours, or nothing.
struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(&self, t: &str) -> String {
        self.wrap("1", t)
    }
    fn dim(&self, t: &str) -> String {
        self.wrap("2", t)
    }
    /// A worker state, padded to `width`, coloured by how good it is.
    fn state(&self, state: &str, width: usize) -> String {
        let padded = format!("{state:<width$}");
        match state {
            "running" => self.wrap("32", &padded),
            "starting" | "stopping" | "backing-off" => self.wrap("33", &padded),
            "crash-looping" | "failed" => self.wrap("1;31", &padded),
            _ => padded,
        }
    }
}

/// Whether to colour output on stdout: a terminal, and `NO_COLOR` unset.
pub fn colour_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1024.0 * 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

pub fn render(s: &DaemonStatus, colour: bool) -> String {
    let p = Paint(colour);
    let mut out = String::new();
    let dot = match s.state.as_str() {
        "running"
            if s.status_line.contains("crash-looping") || s.status_line.contains("failed,") =>
        {
            p.wrap("33", "●")
        }
        "running" => p.wrap("32", "●"),
        _ => p.wrap("33", "●"),
    };
    let _ = writeln!(
        out,
        "{dot} {} {} — {}, pid {}, up {}",
        p.bold("steward"),
        s.version,
        s.state,
        s.pid,
        format_secs(s.uptime_secs as f64)
    );
    let _ = writeln!(out, "  {}  {}", p.dim("status "), s.status_line);
    let _ = writeln!(out, "  {}  {}", p.dim("config "), s.config);
    if let Some(j) = &s.journal {
        let _ = writeln!(
            out,
            "  {}  {} ({})",
            p.dim("journal"),
            j.path,
            size(j.size_bytes)
        );
        if let Some(e) = &j.error {
            let _ = writeln!(out, "  {}  {}", p.wrap("1;31", "JOURNAL"), e);
        }
    }
    let _ = writeln!(out, "  {}  {}", p.dim("socket "), s.socket);
    if let Some(c) = &s.cgroups {
        let text = if c.enabled {
            format!("one per worker under {}", c.detail)
        } else {
            format!("none (process groups only): {}", c.detail)
        };
        let _ = writeln!(out, "  {}  {}", p.dim("cgroups"), text);
    }
    if let Some(r) = s.last_reload.as_ref().filter(|r| !r.ok) {
        let _ = writeln!(
            out,
            "  {}  {} at {}",
            p.wrap("1;31", "reload "),
            r.summary,
            r.at
        );
        for e in &r.errors {
            let _ = writeln!(out, "           {e}");
        }
    }
    if s.pools.is_empty() {
        let _ = writeln!(
            out,
            "\nNo pools configured. Add a [pool.NAME] section to {} and run `systemctl reload steward`.",
            s.config
        );
    }
    for pool in &s.pools {
        let rolling = if pool.rolling {
            ", restarting one by one"
        } else {
            ""
        };
        if pool.mode == "exec" {
            let _ = writeln!(
                out,
                "\n{} {}/{} job processes  {}",
                p.bold(&format!("pool {} (exec)", pool.name)),
                pool.workers.len(),
                pool.instances,
                p.dim(&pool.command.join(" "))
            );
            limits(&mut out, &p, pool);
            for w in &pool.workers {
                let _ = writeln!(
                    out,
                    "  {:<4} {} {:<8} {:<9} job {}",
                    w.instance,
                    p.state(&w.state, 14),
                    w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    w.uptime_secs.map(format_secs).unwrap_or_else(|| "-".into()),
                    w.jobs.first().map(|j| j.to_string()).unwrap_or_default()
                );
            }
            continue;
        }
        let _ = writeln!(
            out,
            "\n{} {}/{} running{rolling}  {}",
            p.bold(&format!("pool {}", pool.name)),
            pool.running,
            pool.instances,
            p.dim(&pool.command.join(" "))
        );
        limits(&mut out, &p, pool);
        let _ = writeln!(
            out,
            "  {}",
            p.dim(&format!(
                "{:<4} {:<14} {:<8} {:<9} {:<9} {:<10} {:>7} {:>8}  LAST EXIT",
                "#", "STATE", "PID", "UPTIME", "RESTARTS", "JOB", "MEM", "CPU"
            ))
        );
        for w in &pool.workers {
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
                "  {:<4} {} {:<8} {:<9} {:<9} {:<10} {:>7} {:>8}  {}",
                w.instance,
                p.state(&w.state, 14),
                w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                w.uptime_secs.map(format_secs).unwrap_or_else(|| "-".into()),
                w.restarts,
                jobs,
                w.memory_bytes
                    .map(crate::config::human_size)
                    .unwrap_or_else(|| "-".into()),
                w.cpu_secs
                    .map(|c| format!("{c:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                last_exit(w)
            );
            if let (Some(h), false) = (&w.health, w.health.as_ref().is_some_and(|h| h.ok)) {
                let body = h
                    .body
                    .as_deref()
                    .map(|b| format!(": {}", b.trim()))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "       {}",
                    p.dim(&format!(
                        "last probe: {}{body} ({:.0} ms, {} failed in a row)",
                        h.detail, h.latency_ms, h.failures
                    ))
                );
            }
            if let Some(text) = &w.status {
                let _ = writeln!(out, "       {}", p.dim(&format!("status: {text}")));
            }
            if w.state == "starting" {
                let waiting = match pool.ready.as_str() {
                    "notify" => Some("READY=1 on its NOTIFY_SOCKET"),
                    "health" => Some("its first passing health probe"),
                    "protocol" => Some("{\"type\":\"ready\"} on its socket"),
                    _ => None,
                };
                if let Some(what) = waiting {
                    let _ = writeln!(out, "       {}", p.dim(&format!("waiting for {what}")));
                }
            }
            // Why a worker that is down went down: its last words on stderr.
            let down = !matches!(w.state.as_str(), "running" | "starting" | "stopping");
            if let (true, Some(tail)) = (
                down,
                w.last_exit.as_ref().and_then(|e| e.stderr_tail.as_ref()),
            ) {
                if tail.is_empty() {
                    let _ = writeln!(out, "       {}", p.dim("(it wrote nothing on stderr)"));
                }
                for line in tail {
                    let _ = writeln!(out, "       {}", p.dim(&format!("| {line}")));
                }
            }
        }
    }
    if !s.queues.is_empty() {
        let _ = writeln!(out, "\n{}", p.bold("queues"));
        let _ = writeln!(
            out,
            "  {}",
            p.dim(&format!(
                "{:<16} {:>8} {:>8} {:>10} {:>10} {:>8}  POOLS",
                "QUEUE", "QUEUED", "RUNNING", "OK/HOUR", "FAILED/H", "WAITING"
            ))
        );
        for q in &s.queues {
            let pools = if q.pools.is_empty() {
                "(no pool takes these jobs)".to_string()
            } else {
                q.pools.join(", ")
            };
            let failed = format!("{:>10}", q.failed_last_hour);
            let failed = if q.failed_last_hour > 0 {
                p.wrap("31", &failed)
            } else {
                failed
            };
            let _ = writeln!(
                out,
                "  {:<16} {:>8} {:>8} {:>10} {failed} {:>8}  {}",
                q.name,
                q.queued,
                q.running,
                q.succeeded_last_hour,
                q.oldest_queued_secs
                    .map(format_secs)
                    .unwrap_or_else(|| "-".into()),
                pools
            );
        }
    }
    if !s.recent_failures.is_empty() {
        let _ = writeln!(out, "\n{}", p.bold("recent failures"));
        for f in &s.recent_failures {
            let _ = writeln!(
                out,
                "  {} {:<10} {} {}",
                p.wrap("31", &format!("job {:<8}", f.id)),
                f.queue,
                p.dim(f.finished_at.as_deref().unwrap_or("")),
                f.error.as_deref().unwrap_or("")
            );
        }
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
