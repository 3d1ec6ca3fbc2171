//! Client commands for pools and workers: stop, start, scale, ps, logs, version.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hyper::Method;

use super::out;
use super::status::format_secs;
use crate::api::{DaemonStatus, Message};
use crate::control::client::Client;
use crate::error::Failure;
use crate::supervisor::PoolAction;

/// How `stop`, `start` and `scale` wait for their result.
pub struct Wait {
    pub no_wait: bool,
    pub timeout: Duration,
}

/// `steward stop|start|scale POOL`: ask, say what the daemon answered, and wait (unless
/// told not to) until the pool has settled.
pub async fn operate(
    client: &Client,
    pool: &str,
    action: PoolAction,
    w: Wait,
) -> Result<(), Failure> {
    let (what, body) = match action {
        PoolAction::Stop => ("stop", None),
        PoolAction::Start => ("start", None),
        PoolAction::Scale(n) => ("scale", Some(serde_json::json!({ "instances": n }))),
    };
    let m: Message = client
        .call(
            Method::POST,
            &format!("/v1/pools/{}/{what}", super::jobs::encode(pool)),
            body.as_ref(),
        )
        .await?;
    out::line(&m.message)?;
    if w.no_wait {
        return Ok(());
    }
    settle(client, pool, w.timeout).await
}

/// Wait until the pool runs what it now wants: no worker left when it is stopped, every
/// wanted worker running otherwise (an exec pool, no more job processes than its lanes).
async fn settle(client: &Client, pool: &str, timeout: Duration) -> Result<(), Failure> {
    let begun = std::time::Instant::now();
    loop {
        let s: DaemonStatus = client.get("/v1/status").await?;
        let Some(p) = s.pools.iter().find(|p| p.name == pool) else {
            return Err(Failure::Failed(format!(
                "pool {pool} disappeared (was it removed by a reload?)"
            )));
        };
        if let Some(w) = p
            .workers
            .iter()
            .find(|w| matches!(w.state.as_str(), "failed" | "crash-looping"))
        {
            return Err(Failure::Failed(format!(
                "{pool}/{} is {}: {}. See: journalctl -u steward POOL={pool}",
                w.instance,
                w.state,
                w.reason
                    .clone()
                    .or_else(|| w.last_exit.as_ref().map(|e| e.description.clone()))
                    .unwrap_or_default()
            )));
        }
        let live = p.workers.len() as u32;
        let done = if p.mode == "exec" {
            live <= p.instances
        } else {
            live == p.instances && p.running == p.instances
        };
        if done {
            return out::line(&if p.instances == 0 {
                format!("pool {pool} stopped: no workers left")
            } else if p.mode == "exec" {
                format!("pool {pool}: up to {} job processes at once", p.instances)
            } else {
                format!("pool {pool}: {}/{} running", p.running, p.instances)
            });
        }
        if begun.elapsed() > timeout {
            return Err(Failure::Failed(format!(
                "pool {pool} did not settle within {} ({live} workers, {} running, {} wanted); see `steward status`",
                humantime::format_duration(timeout),
                p.running,
                p.instances
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `steward ps`: one line per worker and job process.
pub async fn ps(client: &Client, json: bool) -> Result<(), Failure> {
    let s: DaemonStatus = client.get("/v1/status").await?;
    if json {
        let rows: Vec<serde_json::Value> = s
            .pools
            .iter()
            .flat_map(|p| {
                p.workers.iter().map(|w| {
                    serde_json::json!({
                        "pool": p.name,
                        "instance": w.instance,
                        "pid": w.pid,
                        "state": w.state,
                        "uptime_secs": w.uptime_secs,
                        "restarts": w.restarts,
                        "memory_bytes": w.memory_bytes,
                        "cpu_secs": w.cpu_secs,
                        "jobs": w.jobs,
                    })
                })
            })
            .collect();
        let text =
            serde_json::to_string_pretty(&rows).map_err(|e| Failure::Failed(e.to_string()))?;
        return out::line(&text);
    }
    out::print(&render_ps(&s))
}

fn render_ps(s: &DaemonStatus) -> String {
    let mut o = format!(
        "{:<16} {:>4} {:>8} {:<14} {:>8} {:>8} {:>8} {:>8}  JOBS\n",
        "POOL", "INST", "PID", "STATE", "UPTIME", "RESTARTS", "MEM", "CPU"
    );
    let mut rows = 0;
    for p in &s.pools {
        for w in &p.workers {
            rows += 1;
            let jobs: Vec<String> = w.jobs.iter().map(|j| j.to_string()).collect();
            let _ = writeln!(
                o,
                "{:<16} {:>4} {:>8} {:<14} {:>8} {:>8} {:>8} {:>8}  {}",
                p.name,
                w.instance,
                w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                w.state,
                w.uptime_secs.map(format_secs).unwrap_or_else(|| "-".into()),
                w.restarts,
                w.memory_bytes.map(mib).unwrap_or_else(|| "-".into()),
                w.cpu_secs
                    .map(|c| format!("{c:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                if jobs.is_empty() {
                    "-".to_string()
                } else {
                    jobs.join(",")
                }
            );
        }
        if p.workers.is_empty()
            && let Some(why) = &p.operator
        {
            rows += 1;
            let _ = writeln!(o, "{:<16}    - {why}", p.name);
        }
    }
    if rows == 0 {
        o.push_str("(no workers)\n");
    }
    o
}

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1024.0 * 1024.0))
}

/// "no pool named `x`; configured pools: a, b", from the daemon's status.
pub fn no_such_pool(pool: &str, s: &DaemonStatus) -> Failure {
    let known: Vec<&str> = s.pools.iter().map(|p| p.name.as_str()).collect();
    Failure::Failed(format!(
        "no pool named `{pool}`; configured pools: {}",
        if known.is_empty() {
            "(none)".to_string()
        } else {
            known.join(", ")
        }
    ))
}

/// `steward version`: this program's version, and the running daemon's if it answers.
pub async fn version(client: &Client, socket: &Path) -> Result<(), Failure> {
    out::line(&format!("steward {}", env!("CARGO_PKG_VERSION")))?;
    match client.get::<DaemonStatus>("/v1/status").await {
        Ok(s) => out::line(&format!(
            "daemon  {} (pid {}, up {}, socket {})",
            s.version,
            s.pid,
            format_secs(s.uptime_secs as f64),
            socket.display()
        )),
        Err(e) => out::line(&format!("daemon  not reachable: {e}")),
    }
}

pub struct LogsArgs {
    pub pool: Option<String>,
    pub job: Option<i64>,
    pub follow: bool,
    pub lines: u32,
    pub unit: String,
    pub output: Option<String>,
}

/// The `journalctl` arguments for `steward logs`.
pub fn journalctl_args(a: &LogsArgs) -> Vec<String> {
    let mut args = vec![
        "--unit".to_string(),
        a.unit.clone(),
        "--lines".into(),
        a.lines.to_string(),
    ];
    if a.follow {
        args.push("--follow".into());
    } else {
        args.push("--no-pager".into());
    }
    if let Some(o) = &a.output {
        args.push("--output".into());
        args.push(o.clone());
    }
    if let Some(p) = &a.pool {
        args.push(format!("POOL={p}"));
    }
    if let Some(j) = a.job {
        args.push(format!("JOB_ID={j}"));
    }
    args
}

/// `steward logs`: the journal's records of steward's unit, one pool or one job, through
/// `journalctl` (which this process becomes).
pub async fn logs(client: &Client, a: LogsArgs) -> Result<(), Failure> {
    if !Path::new("/run/systemd/system").exists() {
        return Err(Failure::Failed(
            "this machine is not running systemd, so there is no journal to read: a daemon started by hand (`steward daemon`) writes its log, and its workers' output, to its standard error, wherever it was started".into(),
        ));
    }
    let loaded = std::process::Command::new("systemctl")
        .args(["show", "--property", "LoadState", "--value", &a.unit])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "loaded")
        .unwrap_or(false);
    if !loaded {
        return Err(Failure::Failed(format!(
            "the systemd unit {} is not installed here; a daemon started by hand (`steward daemon`) writes its log to its standard error. Another unit name: --unit NAME",
            a.unit
        )));
    }
    if let Some(why) = cannot_read_journal() {
        return Err(Failure::Failed(why));
    }
    if let Some(pool) = &a.pool {
        // A pool the daemon does not know has no records: say which ones it has. When the
        // daemon does not answer, its old records are still worth reading.
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get::<DaemonStatus>("/v1/status"),
        )
        .await
            && !s.pools.iter().any(|p| &p.name == pool)
        {
            return Err(no_such_pool(pool, &s));
        }
    }
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new("journalctl")
        .args(journalctl_args(&a))
        .exec();
    Err(Failure::Failed(format!(
        "cannot run journalctl: {e}; it comes with systemd (package systemd)"
    )))
}

/// Why this user cannot read the system journal, if it cannot: root and the members of
/// systemd-journal, adm and wheel can.
fn cannot_read_journal() -> Option<String> {
    if nix::unistd::geteuid().is_root() {
        return None;
    }
    let groups = nix::unistd::getgroups().unwrap_or_default();
    let mut readers = Vec::new();
    for name in ["systemd-journal", "adm", "wheel"] {
        if let Ok(Some(g)) = nix::unistd::Group::from_name(name) {
            if groups.contains(&g.gid) || nix::unistd::getegid() == g.gid {
                return None;
            }
            readers.push(name);
        }
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "$USER".into());
    Some(format!(
        "you cannot read steward's records in the system journal: that needs membership of {} (sudo usermod -aG systemd-journal {user}, then log in again), or run it with sudo",
        if readers.is_empty() {
            "systemd-journal".to_string()
        } else {
            readers.join(" or ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journalctl_gets_the_unit_and_the_matches() {
        let a = LogsArgs {
            pool: Some("thumbs".into()),
            job: None,
            follow: true,
            lines: 20,
            unit: "steward.service".into(),
            output: None,
        };
        assert_eq!(
            journalctl_args(&a),
            [
                "--unit",
                "steward.service",
                "--lines",
                "20",
                "--follow",
                "POOL=thumbs"
            ]
        );
        let a = LogsArgs {
            pool: None,
            job: Some(42),
            follow: false,
            lines: 50,
            unit: "steward.service".into(),
            output: Some("json".into()),
        };
        assert_eq!(
            journalctl_args(&a),
            [
                "--unit",
                "steward.service",
                "--lines",
                "50",
                "--no-pager",
                "--output",
                "json",
                "JOB_ID=42"
            ]
        );
    }
}
