//! The control API's messages: what the socket serves and what the CLI reads. Data only:
//! it uses no other module of steward but the domain (`model`).
//!
//! These types are the JSON contract of `GET /v1/status` and friends (and of
//! `steward status --json`); add fields, do not rename them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    /// RFC 3339.
    pub started_at: String,
    pub uptime_secs: u64,
    pub config: String,
    pub socket: String,
    pub state_dir: String,
    /// `starting`, `running` or `stopping`.
    pub state: String,
    /// The systemd status line, as last computed.
    pub status_line: String,
    pub last_reload: Option<ReloadReport>,
    pub pools: Vec<PoolStatus>,
    #[serde(default)]
    pub queues: Vec<QueueStatus>,
    /// Path of the job journal and its size in bytes (database and WAL).
    #[serde(default)]
    pub journal: Option<JournalStatus>,
    /// The latest jobs that failed for good, newest first.
    #[serde(default)]
    pub recent_failures: Vec<FailureView>,
    /// Whether workers have cgroups of their own, and where (or why not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<CgroupsView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupsView {
    pub enabled: bool,
    /// Where they are and which controllers they have, or why there are none.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureView {
    pub id: i64,
    pub queue: String,
    pub error: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalStatus {
    pub path: String,
    pub size_bytes: u64,
    /// The last write error, while writes are failing.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// `worker` (long-lived workers) or `exec` (one process per job; `workers` lists the
    /// running job processes, by lane).
    #[serde(default)]
    pub mode: String,
    pub command: Vec<String>,
    /// Workers it runs now (0 when stopped by the operator).
    pub instances: u32,
    /// `instances` in the configuration.
    #[serde(default)]
    pub configured_instances: u32,
    /// The queues it takes jobs from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// What the operator set with `steward stop` or `scale`, said in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    pub running: u32,
    /// Bumped by every change that restarts the pool's workers (reload, `steward restart`).
    pub generation: u64,
    /// True while workers of an older generation are still being replaced.
    pub rolling: bool,
    /// What makes a started worker count as running: `stable`, `protocol`, `notify` or
    /// `health` (`ready`).
    #[serde(default)]
    pub ready: String,
    /// Its `[pool.NAME.limits]`, as "memory_max 512M".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
    /// Limits configured and not enforced here, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits_not_enforced: Vec<String>,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub instance: u32,
    /// `starting`, `running`, `backing-off`, `crash-looping`, `stopping`, `stopped` or `failed`.
    pub state: String,
    pub pid: Option<i32>,
    pub uptime_secs: Option<f64>,
    /// How many times this instance was started again after an exit.
    pub restarts: u64,
    /// Consecutive unstable exits (the backoff level).
    pub unstable_exits: u32,
    pub next_restart_in_secs: Option<f64>,
    pub last_exit: Option<LastExit>,
    /// Why the worker is failed or stopped.
    pub reason: Option<String>,
    pub generation: u64,
    /// Jobs the worker holds now.
    #[serde(default)]
    pub jobs: Vec<i64>,
    /// Its last health probe, with a `[pool.NAME.health]` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ProbeView>,
    /// What the worker last said with `STATUS=` on its notify socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Memory of its cgroup (or of its process without cgroups), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU time of its current run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_secs: Option<f64>,
    /// Its own cgroup, where workers have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// A worker's last health probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeView {
    pub ok: bool,
    /// What it found: `HTTP 200`, `cannot connect to …`, `no answer within 5s`.
    pub detail: String,
    pub latency_ms: f64,
    /// The start of a failing answer's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Failed probes in a row.
    pub failures: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub description: String,
    /// RFC 3339.
    pub at: String,
    pub ran_secs: f64,
    /// Its last lines on stderr (at most 20), when the exit was unexpected; empty: it
    /// wrote nothing there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    pub ok: bool,
    /// RFC 3339.
    pub at: String,
    pub summary: String,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// One job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: i64,
    pub queue: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub priority: i64,
    /// Left out of listings unless asked for (`payload=true`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    /// Why the job failed or was cancelled, or the last attempt's error.
    pub error: Option<String>,
    /// Attempts started so far, interruptions included (the history's last number).
    pub attempts: u32,
    /// Attempts that count against `max_attempts`.
    pub tries: u32,
    pub max_attempts: u32,
    pub crashes: u32,
    pub interruptions: u32,
    pub key: Option<String>,
    /// RFC 3339 times.
    pub created_at: String,
    pub run_at: String,
    pub finished_at: Option<String>,
    /// `pool/instance` holding the job while it runs.
    pub worker: Option<String>,
    pub progress: Option<f64>,
    pub progress_message: Option<String>,
    /// Every attempt, oldest first (only in the single-job view).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub worker: Option<String>,
    pub pid: Option<i32>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// `succeeded`, `failed`, `crashed`, `hung`, `timeout`, `interrupted`, `released`,
    /// `cancelled`, or null while it runs.
    pub outcome: Option<String>,
    pub error: Option<String>,
    /// Exec pools: the last 64 KiB the job process wrote to stdout and stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub queue: String,
    #[serde(default)]
    pub payload: serde_json::Value,
    #[serde(default)]
    pub priority: i64,
    /// Run no earlier than this many milliseconds from now.
    pub delay_ms: Option<u64>,
    /// Run no earlier than this time (RFC 3339).
    pub run_at: Option<String>,
    pub max_attempts: Option<u32>,
    /// Per-attempt time limit in milliseconds (0 = none); default: the queue's.
    pub timeout_ms: Option<u64>,
    /// While a job with this queue and key is queued or running, submitting again
    /// returns that job instead of adding one.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub id: i64,
    /// True when `key` matched a job that was already queued or running.
    pub existing: bool,
}

/// `POST /v1/jobs/batch`: many jobs, one commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub jobs: Vec<SubmitRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    pub jobs: Vec<SubmitResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// More jobs follow: ask again with `before` set to this (the oldest id shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct QueueStatus {
    pub name: String,
    pub queued: u64,
    pub running: u64,
    /// Jobs in the journal in each final state (until pruned by retention).
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    #[serde(default)]
    pub succeeded_last_hour: u64,
    #[serde(default)]
    pub failed_last_hour: u64,
    /// How long the queued job that has been due longest has waited, in seconds; a
    /// delayed or retried job counts from its run time. None when no job is due.
    #[serde(default)]
    pub oldest_queued_secs: Option<f64>,
    /// Pools taking jobs from this queue.
    pub pools: Vec<String>,
}

impl QueueStatus {
    /// A queue's counts, before the figures only the daemon knows (last hour, oldest
    /// wait, pools) are added.
    pub fn new(name: String, c: crate::model::QueueCounts) -> QueueStatus {
        QueueStatus {
            name,
            queued: c.queued,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
            ..QueueStatus::default()
        }
    }
}
