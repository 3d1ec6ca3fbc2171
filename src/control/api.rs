//! The control API's messages: what the socket serves and what the CLI reads.
//!
//! These types are the JSON contract of `GET /v1/status` and friends (and of
//! `steward status --json`); add fields, do not rename them.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub command: Vec<String>,
    pub instances: u32,
    pub running: u32,
    /// Bumped by every change that restarts the pool's workers (reload, `steward restart`).
    pub generation: u64,
    /// True while workers of an older generation are still being replaced.
    pub rolling: bool,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub description: String,
    /// RFC 3339.
    pub at: String,
    pub ran_secs: f64,
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

/// A request from the socket to the supervisor loop.
pub enum Request {
    Status,
    Reload,
    RestartPool(String),
}

pub enum Reply {
    Status(Box<DaemonStatus>),
    Reload(ReloadReport),
    Restart(Result<String, String>),
}

pub type RequestTx = mpsc::Sender<(Request, oneshot::Sender<Reply>)>;
pub type RequestRx = mpsc::Receiver<(Request, oneshot::Sender<Reply>)>;
