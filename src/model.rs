//! The domain: what steward's parts say to each other about processes and jobs, with no
//! I/O. Every other module may use this one; it uses none of them.

/// How one run of a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn is_clean(self) -> bool {
        self == Exit::Code(0)
    }
}

/// "exit code 3" / "killed by SIGKILL".
pub fn describe_exit(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("killed by {}", signal_name(s)),
    }
}

pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// One job as the journal holds it. Texts are as stored: the payload and result are
/// JSON text (a listing may leave the payload out, and cut a long result or error).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: i64,
    pub queue: String,
    pub state: JobState,
    pub priority: i64,
    pub payload: Option<String>,
    pub result: Option<String>,
    /// `result` was cut to fit a listing, and is plain text, no longer JSON.
    pub result_cut: bool,
    pub error: Option<String>,
    pub attempts: u32,
    pub tries: u32,
    pub max_attempts: u32,
    pub crashes: u32,
    pub interruptions: u32,
    pub key: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub run_at_ms: i64,
    pub finished_ms: Option<i64>,
    pub worker: Option<String>,
    pub progress: Option<f64>,
    pub progress_message: Option<String>,
    /// Every attempt, oldest first (filled in for a single job, not in listings).
    pub history: Vec<AttemptRecord>,
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker: Option<String>,
    pub pid: Option<i32>,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// How many jobs of one queue are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl QueueCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.succeeded + self.failed + self.cancelled
    }
}
