//! What the control socket asks of the supervisor loop, and what it answers.

use tokio::sync::{mpsc, oneshot};

use crate::api::{DaemonStatus, ReloadReport};

/// A request from the socket to the supervisor loop.
pub enum Request {
    Status,
    Reload,
    RestartPool(String),
    Pool(String, PoolAction),
    Cancel(i64),
    /// Debug builds only, for tests: block the supervision loop this long (the rest of
    /// the daemon runs on), as a loop stuck in a long computation would be.
    #[cfg(debug_assertions)]
    Stall(std::time::Duration),
}

/// What the operator does to a pool.
#[derive(Debug, Clone, Copy)]
pub enum PoolAction {
    Stop,
    Start,
    Scale(u32),
}

pub enum Reply {
    Status(Box<DaemonStatus>),
    Reload(ReloadReport),
    Restart(Result<String, String>),
    Pool(Result<String, String>),
    Cancel(Result<String, String>),
    #[cfg(debug_assertions)]
    Stalling,
}

pub type RequestTx = mpsc::Sender<(Request, oneshot::Sender<Reply>)>;
pub type RequestRx = mpsc::Receiver<(Request, oneshot::Sender<Reply>)>;
