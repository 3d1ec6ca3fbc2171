//! steward: a systemd-native job supervisor.
//!
//! The binary is a thin shell around this library: [`daemon::run`] runs the daemon,
//! [`cli`] implements the client commands.

pub mod bench;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod http;
pub mod jobs;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod protocol;
pub mod supervisor;
pub mod time;
