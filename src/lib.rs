//! steward: a systemd-native job supervisor.
//!
//! The binary is a thin shell around this library: [`cli::run`] runs the daemon and the
//! client commands. The control API's types and client ([`control::api`],
//! [`control::client`]) are public: they are the JSON contract scripts and tests rely on.
//! Everything else is private to the crate.

mod api;
mod bench;
pub mod cli;
mod config;
pub mod control;
mod daemon;
pub mod error;
mod http;
mod jobs;
mod journal;
mod logging;
mod metrics;
mod model;
mod notify;
mod probe;
mod process;
mod protocol;
mod server;
mod stdout;
mod supervisor;
mod time;

pub use logging::{flush as flush_logs, init as init_logging};

/// Throw-away PostgreSQL clusters, for the integration tests. Not an API.
#[doc(hidden)]
pub mod testing {
    pub use crate::journal::postgres::cluster::Cluster;
}

/// What the micro-benchmarks in `benches/` measure. Not an API.
#[doc(hidden)]
pub mod hot {
    pub use crate::config::{QueueSpec, Synchronous};
    pub use crate::jobs::Outcome;
    pub use crate::journal::NewJob;
    pub use crate::journal::sqlite::open as open_journal;
    pub use crate::logging::TextLayer;
    pub use crate::protocol::{job_line, parse};
}
