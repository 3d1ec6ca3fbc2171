//! The failures a `steward` command can end with, and the exit code of each.

use crate::config::{ConfigErrors, EX_CONFIG};

/// sysexits.h `EX_UNAVAILABLE`: the daemon is not there to answer.
pub const EX_UNAVAILABLE: u8 = 69;
/// sysexits.h `EX_DATAERR`: the job journal is damaged; the daemon will not start on it
/// without being told to (the unit does not restart on it).
pub const EX_DATAERR: u8 = 65;
/// sysexits.h `EX_NOPERM`: the daemon is there, but this user may not talk to it.
pub const EX_NOPERM: u8 = 77;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The configuration is invalid (exit 78).
    #[error("{0}")]
    Config(ConfigErrors),
    /// The daemon reported an invalid configuration (exit 78).
    #[error("{0}")]
    InvalidConfig(String),
    /// The daemon could not be reached (exit 69).
    #[error("{0}")]
    Unavailable(String),
    /// The user may not use the control socket (exit 77).
    #[error("{0}")]
    NoPermission(String),
    /// The job journal is damaged (exit 65).
    #[error("{0}")]
    DamagedJournal(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Whoever read our output stopped reading (a closed pipe): exit 0, say nothing.
    #[error("standard output was closed")]
    OutputClosed,
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) | Failure::InvalidConfig(_) => EX_CONFIG,
            Failure::Unavailable(_) => EX_UNAVAILABLE,
            Failure::NoPermission(_) => EX_NOPERM,
            Failure::DamagedJournal(_) => EX_DATAERR,
            Failure::Failed(_) => 1,
            Failure::OutputClosed => 0,
        }
    }
}

impl From<crate::control::client::ClientError> for Failure {
    fn from(e: crate::control::client::ClientError) -> Self {
        use crate::control::client::ClientError;
        match e {
            ClientError::Unavailable { .. } | ClientError::Timeout { .. } => {
                Failure::Unavailable(e.to_string())
            }
            ClientError::PermissionDenied { .. } => Failure::NoPermission(e.to_string()),
            other => Failure::Failed(other.to_string()),
        }
    }
}
