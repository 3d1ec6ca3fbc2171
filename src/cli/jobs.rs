//! Client commands for jobs: submit, jobs, job, cancel, retry.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::time::Duration;

use hyper::Method;

use super::out;
use crate::api::{JobList, JobView, Message, SubmitRequest, SubmitResponse};
use crate::control::client::Client;
use crate::error::Failure;

pub struct SubmitArgs {
    pub queue: String,
    pub payload: Option<String>,
    pub priority: i64,
    pub delay: Option<Duration>,
    pub at: Option<String>,
    pub max_attempts: Option<u32>,
    pub timeout: Option<Duration>,
    pub key: Option<String>,
    pub wait: bool,
    pub json: bool,
}

/// Parse the payload argument: JSON text, `-` for stdin, or nothing (`{}`).
pub fn read_payload(arg: Option<&str>) -> Result<serde_json::Value, Failure> {
    let text = match arg {
        None => return Ok(serde_json::json!({})),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::Failed(format!("cannot read the payload from stdin: {e}")))?;
            s
        }
        Some(t) => t.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| {
        Failure::Failed(format!(
            "the payload is not valid JSON: {e}. Pass a JSON value, e.g. '{{\"file\": \"a.png\"}}' or '\"text\"'; nothing was submitted"
        ))
    })
}

pub async fn submit(client: &Client, a: SubmitArgs) -> Result<(), Failure> {
    let payload = read_payload(a.payload.as_deref())?;
    let req = SubmitRequest {
        queue: a.queue,
        payload,
        priority: a.priority,
        delay_ms: a.delay.map(|d| d.as_millis() as u64),
        run_at: a.at,
        max_attempts: a.max_attempts,
        timeout_ms: a.timeout.map(|d| d.as_millis() as u64),
        key: a.key.clone(),
    };
    let r: SubmitResponse = client.call(Method::POST, "/v1/jobs", Some(&req)).await?;
    if a.json {
        out::line(&serde_json::json!({"id": r.id, "existing": r.existing}).to_string())?;
    } else {
        out::line(&r.id.to_string())?;
    }
    if r.existing {
        let _ = writeln!(
            std::io::stderr(),
            "steward: job {} with key {} is already queued or running; not submitted again",
            r.id,
            a.key.unwrap_or_default()
        );
    }
    if a.wait {
        return wait(client, r.id).await;
    }
    Ok(())
}

/// Wait until job `id` is final, showing its progress; Ok only if it succeeded.
///
/// On a terminal, progress is a bar with the worker's message (on stderr); otherwise one
/// plain line per change. The result, if any, goes to stdout.
pub async fn wait(client: &Client, id: i64) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(1000);
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} job {prefix} {wide_bar} {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        b.set_style(style);
        b.set_prefix(id.to_string());
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let mut last: Option<(String, Option<i64>, Option<String>)> = None;
    loop {
        let j: JobView = client.get(&format!("/v1/jobs/{id}")).await?;
        let pct = j
            .progress
            .map(|p| (p.clamp(0.0, 1.0) * 100.0).round() as i64);
        let now = (j.state.clone(), pct, j.progress_message.clone());
        if last.as_ref() != Some(&now) {
            let msg = match (&j.progress_message, j.state.as_str()) {
                (Some(m), "running") => m.clone(),
                (_, state) => state.to_string(),
            };
            match &bar {
                Some(b) => {
                    b.set_position(
                        j.progress
                            .map(|p| (p.clamp(0.0, 1.0) * 1000.0) as u64)
                            .unwrap_or(0),
                    );
                    b.set_message(msg);
                }
                None => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "job {id}: {}{}{}",
                        j.state,
                        pct.map(|p| format!(" {p}%")).unwrap_or_default(),
                        j.progress_message
                            .as_ref()
                            .map(|m| format!(" {m}"))
                            .unwrap_or_default()
                    );
                }
            }
            last = Some(now);
        }
        match j.state.as_str() {
            "succeeded" => {
                if let Some(b) = &bar {
                    b.set_position(1000);
                    b.finish_with_message("succeeded");
                }
                if let Some(r) = &j.result {
                    out::line(&r.to_string())?;
                }
                return Ok(());
            }
            "failed" | "cancelled" => {
                if let Some(b) = &bar {
                    b.abandon_with_message(j.state.clone());
                }
                return Err(Failure::Failed(format!(
                    "job {id} {}: {}",
                    j.state,
                    j.error.as_deref().unwrap_or("no error recorded")
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub struct ListArgs {
    /// Queues to list (empty: all).
    pub queues: Vec<String>,
    /// RFC 3339 times of creation.
    pub since: Option<String>,
    pub until: Option<String>,
    pub state: Option<String>,
    pub limit: usize,
    pub before: Option<i64>,
    pub payload: bool,
    pub json: bool,
}

pub async fn list(client: &Client, a: ListArgs) -> Result<(), Failure> {
    let mut path = format!("/v1/jobs?limit={}", a.limit);
    if !a.queues.is_empty() {
        let _ = write!(path, "&queue={}", encode(&a.queues.join(",")));
    }
    if let Some(t) = &a.since {
        let _ = write!(path, "&since={}", encode(t));
    }
    if let Some(t) = &a.until {
        let _ = write!(path, "&until={}", encode(t));
    }
    if let Some(s) = &a.state {
        let _ = write!(path, "&state={}", encode(s));
    }
    if let Some(b) = a.before {
        let _ = write!(path, "&before={b}");
    }
    if a.payload {
        path.push_str("&payload=true");
    }
    let l: JobList = client.get(&path).await?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&l.jobs).map_err(|e| Failure::Failed(e.to_string()))?;
        if let Some(n) = l.next {
            let _ = writeln!(
                std::io::stderr(),
                "steward: more jobs follow; the next page: --before {n}"
            );
        }
        return out::line(&text);
    }
    use std::io::IsTerminal;
    let relative = std::io::stdout().is_terminal();
    let now = crate::time::now_ms();
    let mut o = format!(
        "{:<10} {:<16} {:<10} {:<8} {:<24} DETAIL\n",
        "ID", "QUEUE", "STATE", "ATTEMPT", "CREATED"
    );
    for j in &l.jobs {
        let created = match crate::time::parse_rfc3339_ms(&j.created_at) {
            Some(t) if relative => ago(now.saturating_sub(t)),
            _ => j.created_at.clone(),
        };
        let detail = match j.state.as_str() {
            "succeeded" => j.result.as_ref().map(|r| r.to_string()).unwrap_or_default(),
            "running" => j.worker.clone().unwrap_or_default(),
            _ => j.error.clone().unwrap_or_default(),
        };
        let _ = writeln!(
            o,
            "{:<10} {:<16} {:<10} {:<8} {:<24} {}",
            j.id,
            j.queue,
            j.state,
            format!("{}/{}", j.tries, j.max_attempts),
            created,
            truncate(&detail, 60)
        );
    }
    if l.jobs.is_empty() {
        o.push_str("(no jobs)\n");
    }
    if let Some(n) = l.next {
        let _ = writeln!(o, "(more: the same command with --before {n})");
    }
    out::print(&o)
}

/// "just now", "42 s ago", "3 min ago", "5 h ago", "2 days ago".
pub fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=4 => "just now".to_string(),
        5..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        86_400..=172_799 => "1 day ago".to_string(),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// How long an attempt ran (or has run so far).
fn attempt_duration(started: Option<&str>, ended: Option<&str>, now_ms: i64) -> String {
    let Some(start) = started.and_then(crate::time::parse_rfc3339_ms) else {
        return "-".into();
    };
    let (end, running) = match ended.and_then(crate::time::parse_rfc3339_ms) {
        Some(e) => (e, false),
        None => (now_ms, true),
    };
    let ms = end.saturating_sub(start).max(0);
    let text = if ms < 10_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        super::status::format_secs(ms as f64 / 1000.0)
    };
    if running { format!("{text}…") } else { text }
}

pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub async fn show(client: &Client, id: i64, json: bool) -> Result<(), Failure> {
    let j: JobView = client.get(&format!("/v1/jobs/{id}")).await?;
    if json {
        let text = serde_json::to_string_pretty(&j).map_err(|e| Failure::Failed(e.to_string()))?;
        return out::line(&text);
    }
    out::print(&render(&j))
}

/// `steward job ID` as text.
fn render(j: &JobView) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "job {} — {} in queue {}", j.id, j.state, j.queue);
    let _ = writeln!(o, "  priority:  {}", j.priority);
    let _ = writeln!(
        o,
        "  attempts:  {} counted of {} (crashes {}, interruptions {})",
        j.tries, j.max_attempts, j.crashes, j.interruptions
    );
    let _ = writeln!(o, "  created:   {}", j.created_at);
    let _ = writeln!(o, "  run at:    {}", j.run_at);
    if let Some(f) = &j.finished_at {
        let _ = writeln!(o, "  finished:  {f}");
    }
    if let Some(k) = &j.key {
        let _ = writeln!(o, "  key:       {k}");
    }
    if let Some(w) = &j.worker {
        let _ = writeln!(o, "  worker:    {w}");
    }
    if let Some(p) = j.progress {
        let pct = format!("{:.0}%", p * 100.0);
        // A worker that says the percentage again as its message is not repeated.
        match j.progress_message.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() && m != pct => {
                let _ = writeln!(o, "  progress:  {pct} {m}");
            }
            _ => {
                let _ = writeln!(o, "  progress:  {pct}");
            }
        }
    }
    let _ = writeln!(o, "  payload:   {}", j.payload);
    if let Some(r) = &j.result {
        let _ = writeln!(o, "  result:    {r}");
    }
    if let Some(e) = &j.error {
        let _ = writeln!(o, "  error:     {e}");
    }
    if !j.history.is_empty() {
        let _ = writeln!(
            o,
            "\n  {:<4} {:<14} {:<8} {:<26} {:<9} {:<12} ERROR",
            "#", "WORKER", "PID", "STARTED", "DURATION", "OUTCOME"
        );
        let now = crate::time::now_ms();
        for a in &j.history {
            let _ = writeln!(
                o,
                "  {:<4} {:<14} {:<8} {:<26} {:<9} {:<12} {}",
                a.attempt,
                a.worker.as_deref().unwrap_or("-"),
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                a.started_at.as_deref().unwrap_or("-"),
                attempt_duration(a.started_at.as_deref(), a.ended_at.as_deref(), now),
                a.outcome.as_deref().unwrap_or("running"),
                a.error.as_deref().unwrap_or("")
            );
        }
        // Exec pools keep the end of each attempt's output: show the latest attempt's.
        if let Some(a) = j
            .history
            .iter()
            .rev()
            .find(|a| a.stdout.is_some() || a.stderr.is_some())
        {
            for (name, text) in [("stdout", &a.stdout), ("stderr", &a.stderr)] {
                if let Some(t) = text {
                    let lines: Vec<&str> = t.lines().collect();
                    let from = lines.len().saturating_sub(20);
                    let _ = writeln!(
                        o,
                        "\n  attempt {} {name} (last {} lines):",
                        a.attempt,
                        lines.len() - from
                    );
                    for l in &lines[from..] {
                        let _ = writeln!(o, "    {l}");
                    }
                }
            }
        }
    }
    o
}

/// The jobs `cancel` and `retry` act on: ids, or a selection.
pub struct Selection {
    pub ids: Vec<i64>,
    pub queue: Option<String>,
    pub state: Option<String>,
    /// Act on a selection of more than [`CONFIRM_ABOVE`] jobs.
    pub yes: bool,
}

/// A selection of more jobs than this needs `--yes`.
pub const CONFIRM_ABOVE: usize = 10;
/// The most jobs one command acts on.
pub const MAX_SELECTED: usize = 100_000;

/// The ids a selection names, newest first.
async fn select(client: &Client, s: &Selection, verb: &str) -> Result<Vec<i64>, Failure> {
    if !s.ids.is_empty() {
        return Ok(s.ids.clone());
    }
    let mut ids = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut path = "/v1/jobs?limit=10000".to_string();
        if let Some(q) = &s.queue {
            let _ = write!(path, "&queue={}", encode(q));
        }
        if let Some(st) = &s.state {
            let _ = write!(path, "&state={}", encode(st));
        }
        if let Some(b) = before {
            let _ = write!(path, "&before={b}");
        }
        let l: JobList = client.get(&path).await?;
        ids.extend(l.jobs.iter().map(|j| j.id));
        if ids.len() > MAX_SELECTED {
            return Err(Failure::Failed(format!(
                "the selection holds more than {MAX_SELECTED} jobs; {verb} them in parts (--queue, or ids)"
            )));
        }
        match l.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    if ids.len() > CONFIRM_ABOVE && !s.yes {
        let what = [
            s.queue.as_ref().map(|q| format!("queue {q}")),
            s.state.as_ref().map(|st| format!("state {st}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        return Err(Failure::Failed(format!(
            "this would {verb} {} jobs ({what}; ids {} to {}); nothing was changed. Run it again with --yes to {verb} them",
            ids.len(),
            ids.last().copied().unwrap_or_default(),
            ids.first().copied().unwrap_or_default()
        )));
    }
    Ok(ids)
}

/// `steward cancel|retry`: each job in turn; fails if any could not be.
pub async fn act(client: &Client, s: Selection, retry: bool) -> Result<(), Failure> {
    let verb = if retry { "retry" } else { "cancel" };
    let ids = select(client, &s, verb).await?;
    if ids.is_empty() {
        return out::line(&format!("no jobs match; nothing to {verb}"));
    }
    let quiet = ids.len() > CONFIRM_ABOVE;
    let (mut done, mut refused) = (0usize, Vec::new());
    for id in &ids {
        match client
            .call::<Message>(Method::POST, &format!("/v1/jobs/{id}/{verb}"), None::<&()>)
            .await
        {
            Ok(m) => {
                done += 1;
                if !quiet {
                    out::line(&m.message)?;
                }
            }
            Err(e @ crate::control::client::ClientError::Api { .. }) => {
                refused.push(format!("job {id}: {e}"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if quiet || !refused.is_empty() {
        let past = if retry { "queued again" } else { "cancelled" };
        out::line(&format!("{done} of {} jobs {past}", ids.len()))?;
    }
    if refused.is_empty() {
        return Ok(());
    }
    for r in refused.iter().take(20) {
        let _ = writeln!(std::io::stderr(), "steward: {r}");
    }
    if refused.len() > 20 {
        let _ = writeln!(
            std::io::stderr(),
            "steward: … and {} more",
            refused.len() - 20
        );
    }
    Err(Failure::Failed(format!(
        "{} of {} jobs could not be {}",
        refused.len(),
        ids.len(),
        if retry { "retried" } else { "cancelled" }
    )))
}
