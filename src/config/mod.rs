//! Configuration: the TOML file an operator writes, turned into a validated [`Config`].
//!
//! Parsing happens in two phases. [`reader`] walks the spanned TOML tree and records
//! *every* problem it finds (unknown keys, wrong types, bad values) with the exact
//! file:line:column, instead of stopping at the first one. Only a file without a single
//! error becomes a [`Config`]; the daemon never runs on a half-understood file.
//!
//! Defaults live here, in code, so that the packaged config file can stay small.

mod envfile;
mod reader;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most attempts a job may be given, in the configuration and in a submit.
pub const MAX_ATTEMPTS: u32 = 1_000_000;

use nix::sys::signal::Signal;

use reader::{Ctx, Section};

/// Where the daemon looks for its configuration when neither `--config` nor
/// `STEWARD_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/steward/steward.toml";

/// Exit code for "the configuration is invalid" (sysexits.h `EX_CONFIG`). The systemd unit
/// lists it in `RestartPreventExitStatus=` so that a broken file does not cause a restart loop.
pub const EX_CONFIG: u8 = 78;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (absolute).
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    pub journal: JournalConfig,
    pub http: HttpConfig,
    pub api: ApiConfig,
    pub log: LogConfig,
    /// Pools by name, in name order.
    pub pools: BTreeMap<String, PoolSpec>,
    /// Job queues by name.
    pub queues: BTreeMap<String, QueueSpec>,
    /// Variables of `required_env` that a pool's workers will not get: not errors of the
    /// file (the daemon runs, and parks those workers as failed), but `check-config`
    /// reports them as errors.
    pub unmet: Vec<ConfigError>,
}

impl Config {
    /// Names of the configured queues, for messages.
    pub fn queue_names(&self) -> String {
        if self.queues.is_empty() {
            "(none configured)".to_string()
        } else {
            self.queues.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: a submitted job survives power loss.
    Full,
    /// fsync at checkpoints only: survives a crash of steward, not of the machine.
    Normal,
}

/// The optional TCP listener for `/health` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpConfig {
    pub listen: Option<std::net::SocketAddr>,
}

/// The job routes of the control API over TCP, for programs on other machines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiConfig {
    pub listen: Option<std::net::SocketAddr>,
    /// One bearer token per line (blank lines and `#` comments skipped).
    pub tokens_file: Option<PathBuf>,
}

/// What steward writes to its log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Routine per-job lines (submitted, started, succeeded) written per second at most;
    /// 0 = all of them. See [`crate::logging::JobLines`].
    pub max_job_lines: u32,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { max_job_lines: 100 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JournalConfig {
    pub synchronous: Synchronous,
    pub backend: Backend,
}

/// Where the jobs are kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// `journal.db` in the state directory: one host.
    Sqlite,
    /// A PostgreSQL database that many hosts share.
    Postgres(PostgresConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// Where the connection URL comes from: given inline, or read from a file at start
    /// (so that the secret is not in the configuration).
    pub url: UrlSource,
    /// The schema all of steward's tables live in.
    pub schema: String,
    /// This host's name in the shared journal.
    pub host: String,
    /// No LISTEN connection (behind a pooler in transaction mode): jobs added elsewhere
    /// are found by the once-a-second look only.
    pub poll_only: bool,
}

#[derive(Clone, PartialEq)]
pub enum UrlSource {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for UrlSource {
    // Never the URL itself: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlSource::Inline(_) => write!(f, "Inline(..)"),
            UrlSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// The most a connection URL (or its file) may hold.
pub const MAX_URL: usize = 4096;

impl UrlSource {
    /// The URL: read from its file, if it is in one (`$CREDENTIALS_DIRECTORY` first for
    /// a relative name).
    pub fn read(&self, env: &Environment) -> Result<String, String> {
        match self {
            UrlSource::Inline(u) => Ok(u.clone()),
            UrlSource::File(p) => {
                let path = match (&env.credentials_directory, p.is_relative()) {
                    (Some(dir), true) => dir.join(p),
                    (None, true) => {
                        return Err(format!(
                            "journal.url_file = {:?} is relative, which names a credential, but steward has no $CREDENTIALS_DIRECTORY (LoadCredential= in the unit): give an absolute path",
                            p.display().to_string()
                        ));
                    }
                    _ => p.clone(),
                };
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "cannot read the PostgreSQL URL from {}: {e} (journal.url_file)",
                        path.display()
                    )
                })?;
                let url = text.trim();
                if url.is_empty() || url.len() > MAX_URL {
                    return Err(format!(
                        "{} must hold one PostgreSQL URL of at most {MAX_URL} bytes (journal.url_file)",
                        path.display()
                    ));
                }
                Ok(url.to_string())
            }
        }
    }
}

/// Retry backoff of a queue: the delay before attempt n+1 after n counted failures.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBackoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

/// A named queue of jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    /// Attempts in all (the first run included) before a job is `failed`.
    pub max_attempts: u32,
    pub retry_backoff: RetryBackoff,
    /// Time limit of one attempt; `None` = no limit.
    pub timeout: Option<Duration>,
    /// A worker holding a job must send some line at least this often.
    pub lease: Duration,
    /// Largest accepted payload, in bytes of JSON.
    pub max_payload: u64,
    pub retention_succeeded: Duration,
    pub retention_failed: Duration,
}

impl QueueSpec {
    pub fn new(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_string(),
            max_attempts: 5,
            retry_backoff: RetryBackoff {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(3600),
                multiplier: 2.0,
                jitter: 0.2,
            },
            timeout: Some(Duration::from_secs(30 * 60)),
            lease: Duration::from_secs(60),
            max_payload: 1024 * 1024,
            retention_succeeded: Duration::from_secs(7 * 86_400),
            retention_failed: Duration::from_secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Where the daemon keeps durable state (the job journal).
    pub state_dir: PathBuf,
    /// The control socket (HTTP/1.1 + JSON over a Unix stream socket).
    pub socket: PathBuf,
    /// The whole budget for a graceful stop: draining, stop signals, escalation.
    pub shutdown_timeout: Duration,
    /// This host's name in a journal that many hosts share.
    pub host: String,
    /// Whether workers get cgroups of their own where the unit delegates them.
    pub cgroups: bool,
}

impl DaemonConfig {
    /// Where workers' own notify sockets are made: beside the control socket.
    pub fn notify_dir(&self) -> PathBuf {
        self.socket
            .parent()
            .unwrap_or(Path::new("/"))
            .join("notify")
    }
}

/// What the daemon does when a worker exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// Exponential backoff between restarts of an unstable worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// Up to this fraction of the delay is added at random, so that many workers that
    /// crashed together do not come back in lockstep.
    pub jitter: f64,
    /// A run at least this long resets the backoff level.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.25,
            reset_after: Duration::from_secs(120),
        }
    }
}

/// How a pool runs its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// Long-lived workers (plain, or speaking the protocol when the pool has queues).
    Worker,
    /// One process per job: payload on stdin, exit code is the outcome.
    Exec,
}

/// A pool's health probes (`[pool.NAME.health]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub probe: ProbeSpec,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed probes in a row that make a worker unhealthy.
    pub failures: u32,
    /// Passing probes in a row that make an unhealthy worker healthy again.
    pub successes: u32,
    pub on_failure: OnUnhealthy,
    /// From the worker's start, how long failed probes do not count (probing every 2 s,
    /// or `interval` if shorter, until it is ready); `None`: the pool's start_timeout.
    pub start_period: Option<Duration>,
    /// HTTP probes: keep the connection for the next probe while the server allows it
    /// (a new one at least every minute, and after any failure).
    pub keep_alive: bool,
}

/// What a probe asks; `{port}` and `{instance}` are filled in per worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    Http(String),
    Tcp(String),
    /// Program (resolved as `command`'s is) and arguments.
    Exec(Vec<String>),
}

/// What happens to an unhealthy worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnhealthy {
    /// Stopped (drained first) and restarted by its policy, as an unstable exit.
    Restart,
    /// Shown as unhealthy, left running.
    Mark,
}

/// What makes a started worker count as running (`ready`): protocol dispatch starts,
/// rolling restarts move on, the start timeout stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It stayed up `stable_after` (plain workers without a health block).
    Stable,
    /// It said `{"type":"ready"}` on its socket (protocol workers).
    Protocol,
    /// It sent `READY=1` on its own `NOTIFY_SOCKET`.
    Notify,
    /// A health probe passed (plain workers with a health block).
    Health,
}

impl Readiness {
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Stable => "stable",
            Readiness::Protocol => "protocol",
            Readiness::Notify => "notify",
            Readiness::Health => "health",
        }
    }
}

/// Who gets a worker's stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KillMode {
    /// Its whole process group.
    #[default]
    Group,
    /// Its main process only, so that it can let its own children finish; the group
    /// gets SIGKILL after `stop_timeout` (systemd's `KillMode=mixed`).
    Main,
}

/// What a worker's own exit code means (`exit_codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Like 78: park the worker as failed, no restart.
    ConfigError,
    /// A planned restart: started again without raising the backoff level.
    Restart,
}

/// One pool: `instances` copies of the same long-lived worker command, or (exec mode)
/// up to `instances` job processes at once.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub mode: PoolMode,
    /// Program and arguments. The program is an absolute path, or a bare name looked up in
    /// `PATH` when the worker starts.
    pub command: Vec<String>,
    pub instances: u32,
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub restart: RestartPolicy,
    pub backoff: Backoff,
    pub crash_loop_after: u32,
    pub give_up_after: u32,
    pub stable_after: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// Queues this pool takes jobs from; a pool with queues speaks the worker protocol.
    pub queues: Vec<String>,
    /// Jobs one worker holds at once.
    pub concurrency: u32,
    /// A protocol worker must say `ready` within this long.
    pub start_timeout: Duration,
    /// Exec pools: exit codes that fail a job at once, without retry (78 always does).
    pub no_retry_exit_codes: Vec<i32>,
    /// Workers get the daemon's whole environment (less its private variables) instead
    /// of the documented clean one.
    pub inherit_env: bool,
    /// Instance n gets port `port_base + n` (`{port}`, `STEWARD_PORT`).
    pub port_base: Option<u16>,
    /// Variables every worker's final environment must hold, not empty.
    pub required_env: Vec<String>,
    /// Worker pools: what the worker's own exit codes mean (78 is `ConfigError` unless
    /// given here).
    pub exit_codes: BTreeMap<i32, ExitAction>,
    /// Who gets the stop signal.
    pub kill_mode: KillMode,
    /// A worker that has run this long is restarted gracefully (each a little earlier,
    /// by up to a tenth, so that a pool does not restart at once).
    pub max_lifetime: Option<Duration>,
    /// Health probes of each worker once it runs.
    pub health: Option<HealthSpec>,
    /// Variables whose values are systemd credentials: (variable, credential name),
    /// read from `$CREDENTIALS_DIRECTORY` at each start of a worker.
    pub credentials: Vec<(String, String)>,
    /// What makes a started worker count as running.
    pub ready: Readiness,
    /// A running worker must send `WATCHDOG=1` on its notify socket this often.
    pub watchdog: Option<Duration>,
    /// Resource limits of each worker's (exec pools: each job's) cgroup.
    pub limits: Limits,
    /// How the workers' output lines are read (`log_format`).
    pub log_format: crate::logging::LineFormat,
    pub log_level_from_text: bool,
    /// None: strip unless steward itself writes to a terminal.
    pub strip_ansi: Option<bool>,
}

impl PoolSpec {
    /// The command and the `env` of instance `index` (an exec pool's lane): `{instance}`
    /// and `{port}` replaced in both, and `STEWARD_PORT` added with `port_base`.
    pub fn for_instance(&self, index: u32) -> (Vec<String>, Vec<(String, String)>) {
        let port = self.port(index);
        let fill = |text: &str| self.fill(text, index);
        let command = self.command.iter().map(|a| fill(a)).collect();
        let mut env: Vec<(String, String)> =
            self.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
        if let Some(p) = port {
            env.push(("STEWARD_PORT".into(), p.to_string()));
        }
        (command, env)
    }

    /// The names of `required_env` that `env` (a worker's final environment, a later
    /// entry winning) lacks or holds empty.
    pub fn missing_env(&self, env: &[(String, String)]) -> Vec<String> {
        self.required_env
            .iter()
            .filter(|name| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == *name)
                    .is_none_or(|(_, v)| v.is_empty())
            })
            .cloned()
            .collect()
    }

    /// Instance `index`'s probe, its `{port}` and `{instance}` filled in.
    pub fn probe_for(&self, index: u32) -> Option<crate::probe::Target> {
        self.health.as_ref().map(|h| match &h.probe {
            ProbeSpec::Http(u) => crate::probe::Target::Http(self.fill(u, index)),
            ProbeSpec::Tcp(a) => crate::probe::Target::Tcp(self.fill(a, index)),
            ProbeSpec::Exec(c) => {
                crate::probe::Target::Exec(c.iter().map(|a| self.fill(a, index)).collect())
            }
        })
    }

    /// `text` with instance `index`'s `{instance}` and `{port}`.
    fn fill(&self, text: &str, index: u32) -> String {
        let t = text.replace("{instance}", &index.to_string());
        match self.port(index) {
            Some(p) => t.replace("{port}", &p.to_string()),
            None => t,
        }
    }

    /// Instance `index`'s port: `port_base + index` (checked at load to fit).
    pub fn port(&self, index: u32) -> Option<u32> {
        self.port_base.map(|b| u32::from(b).saturating_add(index))
    }

    /// Whether the workers speak the worker protocol (long-lived workers taking jobs).
    pub fn is_protocol(&self) -> bool {
        self.mode == PoolMode::Worker && !self.queues.is_empty()
    }

    pub fn is_exec(&self) -> bool {
        self.mode == PoolMode::Exec
    }

    /// Whether its workers get a `NOTIFY_SOCKET` of their own.
    pub fn has_notify_socket(&self) -> bool {
        self.ready == Readiness::Notify || self.watchdog.is_some()
    }

    /// How long after a start failed probes do not count.
    pub fn start_period(&self) -> Duration {
        self.health
            .as_ref()
            .and_then(|h| h.start_period)
            .unwrap_or(self.start_timeout)
    }

    /// True when `other` differs from `self` only in the number of instances, so the
    /// pool can be scaled without restarting the workers it already has.
    /// Whether `other` differs from this at most in what applies to running workers
    /// (the number of instances, how output lines are read).
    pub fn same_except_live(&self, other: &PoolSpec) -> bool {
        let mut a = self.clone();
        a.instances = other.instances;
        a.log_format = other.log_format;
        a.log_level_from_text = other.log_level_from_text;
        a.strip_ansi = other.strip_ansi;
        &a == other
    }

    /// The rules its workers' output lines are read by.
    pub fn line_rules(&self) -> crate::logging::LineRules {
        crate::logging::LineRules {
            format: self.log_format,
            level_from_text: self.log_level_from_text,
            strip_ansi: self
                .strip_ansi
                .unwrap_or_else(crate::logging::strip_ansi_by_default),
        }
    }
}

/// One problem in a configuration file, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (the file cannot be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// The problems found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    /// The first of them, in file order (at most `reader::MAX_REPORTED`).
    pub errors: Vec<ConfigError>,
    /// How many there are in all.
    pub total: usize,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.total;
        write!(
            f,
            "{} has {} error{}:",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        if n > self.errors.len() {
            write!(f, "\n  … and {} more", n - self.errors.len())?;
        }
        write!(
            f,
            "\nFix the file, then check it with `steward check-config --config {}`.",
            self.file.display()
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// The environment the defaults depend on, captured once so that tests can vary it.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$STATE_DIRECTORY` as systemd sets it (first entry if several).
    pub state_directory: Option<PathBuf>,
    /// `$RUNTIME_DIRECTORY` as systemd sets it (first entry if several).
    pub runtime_directory: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` as systemd sets it (`LoadCredential=`).
    pub credentials_directory: Option<PathBuf>,
    /// `$PATH`, to check that bare program names can be found.
    pub path: Option<String>,
    /// The daemon's own environment (variables whose name and value are UTF-8), from
    /// which workers get theirs (see `process::base_environment`).
    pub vars: Vec<(String, String)>,
}

impl Environment {
    pub fn from_process() -> Self {
        fn first(var: &str) -> Option<PathBuf> {
            let v = std::env::var_os(var)?;
            let s = v.to_string_lossy();
            let first = s.split(':').next().unwrap_or("").trim();
            (!first.is_empty()).then(|| PathBuf::from(first))
        }
        let mut vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        // Who the workers run as, for a HOME, USER and LOGNAME the daemon was not given.
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
            let from_passwd = [
                ("HOME", user.dir.to_string_lossy().into_owned()),
                ("USER", user.name.clone()),
                ("LOGNAME", user.name.clone()),
                ("SHELL", user.shell.to_string_lossy().into_owned()),
            ];
            for (k, v) in from_passwd {
                if !vars.iter().any(|(n, _)| n == k) {
                    vars.push((k.to_string(), v));
                }
            }
        }
        Environment {
            state_directory: first("STATE_DIRECTORY"),
            runtime_directory: first("RUNTIME_DIRECTORY"),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            path: std::env::var("PATH").ok(),
            vars,
        }
    }
}

/// The largest configuration file read (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Read and validate the configuration file at `path`.
pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigErrors> {
    let abs = absolute(path);
    if let Ok(m) = std::fs::metadata(&abs)
        && m.len() > MAX_CONFIG_BYTES
    {
        return Err(ConfigErrors {
            file: abs.clone(),
            errors: vec![ConfigError {
                file: abs,
                line: 0,
                column: 0,
                message: format!(
                    "the configuration file is {} bytes, more than the {MAX_CONFIG_BYTES} steward reads: is it the right file?",
                    m.len()
                ),
            }],
            total: 1,
        });
    }
    let text = match std::fs::read_to_string(&abs) {
        Ok(t) => t,
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    " (create it, or point --config / STEWARD_CONFIG at the right file)"
                }
                std::io::ErrorKind::PermissionDenied => {
                    " (run as root or as a member of group steward)"
                }
                _ => "",
            };
            return Err(ConfigErrors {
                file: abs.clone(),
                errors: vec![ConfigError {
                    file: abs,
                    line: 0,
                    column: 0,
                    message: format!("cannot read the configuration file: {e}{hint}"),
                }],
                total: 1,
            });
        }
    };
    parse(&text, &abs, env)
}

/// Validate configuration text as if it had been read from `path`.
pub fn parse(text: &str, path: &Path, env: &Environment) -> Result<Config, ConfigErrors> {
    let path = absolute(path);
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut ctx = Ctx::new(text, &path);
    let config = ctx.parse_document().map(|root| {
        let root = Section::root(&root);
        let daemon = parse_daemon(&mut ctx, &root, &base, env);
        let journal = parse_journal(&mut ctx, &root, daemon.host.clone());
        let http = parse_http(&mut ctx, &root);
        let api = parse_api(&mut ctx, &root, &base);
        let log = parse_log(&mut ctx, &root);
        let queues = parse_queues(&mut ctx, &root);
        let pools = parse_pools(&mut ctx, &root, &base, env, &queues, &daemon);
        root.finish(
            &mut ctx,
            &["daemon", "journal", "http", "api", "log", "queue", "pool"],
        );
        Config {
            path: path.clone(),
            daemon,
            journal,
            http,
            api,
            log,
            pools,
            queues,
            unmet: Vec::new(),
        }
    });
    let (errors, total, unmet) = ctx.into_errors();
    match config {
        Some(mut c) if total == 0 => {
            c.unmet = unmet;
            Ok(c)
        }
        _ => Err(ConfigErrors {
            file: path,
            errors,
            total,
        }),
    }
}

/// Only the `[daemon]` settings of a file, even if other parts of it are invalid: client
/// commands use this to find the socket of a daemon still running on an older, valid file.
pub fn daemon_settings(path: &Path, env: &Environment) -> Option<DaemonConfig> {
    let path = absolute(path);
    let text = std::fs::read_to_string(&path).ok()?;
    let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut ctx = Ctx::new(&text, &path);
    let root = ctx.parse_document()?;
    Some(parse_daemon(&mut ctx, &Section::root(&root), &base, env))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn parse_daemon(ctx: &mut Ctx, root: &Section, base: &Path, env: &Environment) -> DaemonConfig {
    let mut d = DaemonConfig {
        state_dir: env
            .state_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/steward")),
        socket: env
            .runtime_directory
            .as_ref()
            .map(|r| r.join("steward.sock"))
            .unwrap_or_else(|| PathBuf::from("/run/steward/steward.sock")),
        shutdown_timeout: Duration::from_secs(60),
        host: hostname(),
        cgroups: true,
    };
    let Some(s) = root.table(ctx, "daemon") else {
        return d;
    };
    if let Some(p) = s.path(ctx, "state_dir", base) {
        d.state_dir = p;
    }
    if let Some((p, span)) = s.path_spanned(ctx, "socket", base) {
        // sun_path holds 108 bytes including the terminating NUL.
        let len = p.as_os_str().len();
        if len > 107 {
            ctx.error(
                span,
                format!("the socket path is {len} bytes long; Unix sockets allow at most 107: choose a shorter path"),
            );
        }
        d.socket = p;
    }
    if let Some(t) = s.duration(ctx, "shutdown_timeout") {
        d.shutdown_timeout = t;
    }
    if let Some((h, span)) = s.string(ctx, "host") {
        if valid_host(&h) {
            d.host = h;
        } else {
            ctx.error(
                span,
                format!("daemon.host `{h}` is not allowed: use letters, digits, `-`, `_` and `.` (at most 253)"),
            );
        }
    }
    if let Some((v, span)) = s.string(ctx, "cgroups") {
        match v.as_str() {
            "auto" => d.cgroups = true,
            "off" => d.cgroups = false,
            other => ctx.error(
                span,
                format!("cgroups = \"{other}\": use \"auto\" (a cgroup per worker where the unit has Delegate=) or \"off\" (process groups only)"),
            ),
        }
    }
    s.finish(
        ctx,
        &["state_dir", "socket", "shutdown_timeout", "host", "cgroups"],
    );
    d
}

const POOL_KEYS: &[&str] = &[
    "command",
    "instances",
    "env",
    "working_dir",
    "restart",
    "backoff",
    "crash_loop_after",
    "give_up_after",
    "stable_after",
    "stop_signal",
    "stop_timeout",
    "queues",
    "concurrency",
    "start_timeout",
    "mode",
    "no_retry_exit_codes",
    "inherit_env",
    "env_file",
    "port_base",
    "required_env",
    "exit_codes",
    "kill_mode",
    "max_lifetime",
    "health",
    "env_from_credentials",
    "ready",
    "watchdog",
    "limits",
    "log_format",
    "log_level_from_text",
    "strip_ansi",
];

/// A pool's `[pool.NAME.limits]`: enforced through each worker's (or job's) own cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes; past it the kernel's OOM killer kills the worker's whole cgroup (no swap).
    pub memory_max: Option<u64>,
    /// Bytes; past it the worker is throttled and its memory reclaimed hard.
    pub memory_high: Option<u64>,
    pub pids_max: Option<u64>,
    /// 1–10,000 (the kernel's default is 100).
    pub cpu_weight: Option<u64>,
    /// Percent of one CPU (150 = one and a half).
    pub cpu_max_percent: Option<u64>,
    /// Bytes; a worker whose memory passes it is restarted gracefully.
    pub recycle_above: Option<u64>,
}

/// One cgroup file a limit is written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The controller that provides the file.
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
    /// The config key it comes from (for the "not enforced" warning).
    pub key: &'static str,
    /// Whether a kernel without the file (e.g. no swap accounting) is fine.
    pub optional: bool,
}

impl Limits {
    /// Each limit set, as "memory_max 512M".
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, v) in [
            ("memory_max", self.memory_max),
            ("memory_high", self.memory_high),
            ("recycle_above", self.recycle_above),
        ] {
            if let Some(n) = v {
                out.push(format!("{key} {}", human_size(n)));
            }
        }
        if let Some(n) = self.pids_max {
            out.push(format!("pids_max {n}"));
        }
        if let Some(n) = self.cpu_weight {
            out.push(format!("cpu_weight {n}"));
        }
        if let Some(p) = self.cpu_max_percent {
            out.push(format!("cpu_max {p}%"));
        }
        out
    }

    /// What each limit set needs: (its key, the controller that enforces it), once each.
    pub fn needs(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&'static str, &'static str)> = Vec::new();
        let recycle = self.recycle_above.map(|_| ("recycle_above", "memory"));
        for need in self
            .settings()
            .iter()
            .filter(|s| !s.optional)
            .map(|s| (s.key, s.controller))
            .chain(recycle)
        {
            if !out.contains(&need) {
                out.push(need);
            }
        }
        out
    }

    /// The cgroup files these limits are written to, in order.
    pub fn settings(&self) -> Vec<CgroupSetting> {
        let mut out = Vec::new();
        let mut add = |controller, file, value: String, key, optional| {
            out.push(CgroupSetting {
                controller,
                file,
                value,
                key,
                optional,
            })
        };
        if let Some(n) = self.memory_max {
            add("memory", "memory.max", n.to_string(), "memory_max", false);
            add("memory", "memory.swap.max", "0".into(), "memory_max", true);
            add(
                "memory",
                "memory.oom.group",
                "1".into(),
                "memory_max",
                false,
            );
        }
        if let Some(n) = self.memory_high {
            add("memory", "memory.high", n.to_string(), "memory_high", false);
        }
        if let Some(n) = self.pids_max {
            add("pids", "pids.max", n.to_string(), "pids_max", false);
        }
        if let Some(n) = self.cpu_weight {
            add("cpu", "cpu.weight", n.to_string(), "cpu_weight", false);
        }
        if let Some(p) = self.cpu_max_percent {
            // A period of 100 ms; the quota is the share of it, in µs.
            add(
                "cpu",
                "cpu.max",
                format!("{} 100000", p * 1000),
                "cpu_max",
                false,
            );
        }
        out
    }
}

/// A size in bytes for memory limits: "512M", "2G", "1GiB", "500MB", a number of bytes.
fn memory_size(ctx: &mut Ctx, s: &Section, name: &str, key: &str) -> Option<u64> {
    let (v, span) = s.string(ctx, key)?;
    match parse_size(&v) {
        Some(n) if (1024 * 1024..=1u64 << 50).contains(&n) => Some(n),
        _ => {
            ctx.error(
                span,
                format!("pool.{name}.limits.{key} = \"{v}\" is not a size between 1M and 1P: write e.g. \"512M\" or \"2G\""),
            );
            None
        }
    }
}

fn parse_limits(ctx: &mut Ctx, s: Section, name: &str) -> Limits {
    let mut l = Limits {
        memory_max: memory_size(ctx, &s, name, "memory_max"),
        memory_high: memory_size(ctx, &s, name, "memory_high"),
        recycle_above: memory_size(ctx, &s, name, "recycle_above"),
        ..Limits::default()
    };
    if let Some(n) = s.integer(ctx, "pids_max", 1, 4_194_304) {
        l.pids_max = Some(n as u64);
    }
    if let Some(n) = s.integer(ctx, "cpu_weight", 1, 10_000) {
        l.cpu_weight = Some(n as u64);
    }
    if let Some((v, span)) = s.string(ctx, "cpu_max") {
        match v.strip_suffix('%').and_then(|n| n.trim().parse::<u64>().ok()) {
            Some(p) if (1..=100_000).contains(&p) => l.cpu_max_percent = Some(p),
            _ => ctx.error(
                span,
                format!("pool.{name}.limits.cpu_max = \"{v}\" is not a share of CPU: write a percentage of one CPU from 1% to 100000%, e.g. \"50%\" or \"150%\" (one and a half CPUs)"),
            ),
        }
    }
    if let (Some(high), Some(max)) = (l.memory_high, l.memory_max)
        && high > max
    {
        ctx.error(
            s.span(),
            format!("pool.{name}.limits: memory_high ({}) is above memory_max ({}); memory_high throttles before memory_max kills, so it must be lower", human_size(high), human_size(max)),
        );
    }
    if let (Some(r), Some(max)) = (l.recycle_above, l.memory_max)
        && r >= max
    {
        ctx.error(
            s.span(),
            format!("pool.{name}.limits: recycle_above ({}) is not below memory_max ({}): a worker would be OOM-killed before it is recycled", human_size(r), human_size(max)),
        );
    }
    s.finish(
        ctx,
        &[
            "memory_max",
            "memory_high",
            "pids_max",
            "cpu_weight",
            "cpu_max",
            "recycle_above",
        ],
    );
    l
}

/// 536870912 → "512M", 1610612736 → "1.5G": how limits are shown.
pub fn human_size(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (u, size) in UNITS {
        if n >= size {
            let whole = n / size;
            let tenth = (n % size) * 10 / size;
            return if tenth == 0 || whole >= 100 {
                format!("{whole}{u}")
            } else {
                format!("{whole}.{tenth}{u}")
            };
        }
    }
    format!("{n}B")
}

/// This machine's name: the kernel's host name, or `localhost` without one.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| valid_host(h))
        .unwrap_or_else(|| "localhost".into())
}

/// A host name as the shared journal records it: letters, digits, `-`, `_` and `.`, at
/// most 253 bytes.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_journal(ctx: &mut Ctx, root: &Section, host: String) -> JournalConfig {
    let mut j = JournalConfig {
        synchronous: Synchronous::Full,
        backend: Backend::Sqlite,
    };
    let Some(s) = root.table(ctx, "journal") else {
        return j;
    };
    let backend = s.string(ctx, "backend");
    let url = s.string(ctx, "url");
    let url_file = s
        .string(ctx, "url_file")
        .map(|(p, span)| (PathBuf::from(p), span));
    let schema = s.string(ctx, "schema");
    let poll_only = s.boolean_spanned(ctx, "poll_only");
    match backend.as_ref().map(|(b, span)| (b.as_str(), span.clone())) {
        None | Some(("sqlite", _)) => {
            for (key, span) in [
                ("url", url.as_ref().map(|u| u.1.clone())),
                ("url_file", url_file.as_ref().map(|u| u.1.clone())),
                ("schema", schema.as_ref().map(|u| u.1.clone())),
                ("poll_only", poll_only.as_ref().map(|u| u.1.clone())),
            ] {
                if let Some(span) = span {
                    ctx.error(
                        span,
                        format!("journal.{key} is for backend = \"postgres\"; the journal is SQLite here (set backend = \"postgres\" or remove {key})"),
                    );
                }
            }
        }
        Some(("postgres", span)) => {
            let source = match (url, url_file) {
                (Some((u, span)), None) => {
                    if u.trim().is_empty() || u.len() > MAX_URL {
                        ctx.error(span, format!("journal.url must be a PostgreSQL URL of at most {MAX_URL} bytes"));
                    }
                    Some(UrlSource::Inline(u))
                }
                (None, Some((p, _))) => Some(UrlSource::File(p)),
                (Some((_, span)), Some(_)) => {
                    ctx.error(span, "give journal.url or journal.url_file, not both".to_string());
                    None
                }
                (None, None) => {
                    ctx.error(
                        span,
                        "backend = \"postgres\" needs the database: url_file = \"/etc/steward/postgres-url\" (a file, mode 0600, holding the URL) or url = \"postgres://...\"".to_string(),
                    );
                    None
                }
            };
            let schema = match schema {
                Some((name, span)) => {
                    if let Err(e) = check_schema_name(&name) {
                        ctx.error(span, format!("journal.{e}"));
                    }
                    name
                }
                None => "steward".to_string(),
            };
            if let Some(url) = source {
                j.backend = Backend::Postgres(PostgresConfig {
                    url,
                    schema,
                    host,
                    poll_only: poll_only.is_some_and(|(v, _)| v),
                });
            }
        }
        Some((other, span)) => ctx.error(
            span,
            format!("journal.backend = \"{other}\" is not a backend: use \"sqlite\" (one host, the default) or \"postgres\" (many hosts on one database)"),
        ),
    }
    if let Some((v, span)) = s.string(ctx, "synchronous") {
        match v.as_str() {
            "full" => j.synchronous = Synchronous::Full,
            "normal" => j.synchronous = Synchronous::Normal,
            other => ctx.error(
                span,
                format!("journal.synchronous = \"{other}\" is not a mode: use \"full\" (survives power loss) or \"normal\" (faster; survives a crash of steward)"),
            ),
        }
    }
    s.finish(
        ctx,
        &["synchronous", "backend", "url", "url_file", "schema"],
    );
    j
}

fn parse_http(ctx: &mut Ctx, root: &Section) -> HttpConfig {
    let mut h = HttpConfig::default();
    let Some(s) = root.table(ctx, "http") else {
        return h;
    };
    if let Some((v, span)) = s.string(ctx, "listen") {
        match v.parse::<std::net::SocketAddr>() {
            Ok(a) => h.listen = Some(a),
            Err(_) => ctx.error(
                span,
                format!("http.listen = \"{v}\" is not an address and port: write e.g. \"127.0.0.1:9187\" or \"[::1]:9187\""),
            ),
        }
    }
    s.finish(ctx, &["listen"]);
    h
}

fn parse_api(ctx: &mut Ctx, root: &Section, base: &Path) -> ApiConfig {
    let mut a = ApiConfig::default();
    let Some(s) = root.table(ctx, "api") else {
        return a;
    };
    let listen = s.string(ctx, "listen");
    if let Some((v, span)) = &listen {
        match v.parse::<std::net::SocketAddr>() {
            Ok(addr) => a.listen = Some(addr),
            Err(_) => ctx.error(
                span.clone(),
                format!(
                    "api.listen = \"{v}\" is not an address and port: write e.g. \"0.0.0.0:9188\""
                ),
            ),
        }
    }
    a.tokens_file = s.path(ctx, "tokens_file", base);
    if let (Some((_, span)), None) = (&listen, &a.tokens_file) {
        ctx.error(
            span.clone(),
            "api.listen needs api.tokens_file: a file (mode 0600) with one bearer token per line; requests without one of them are refused".to_string(),
        );
    }
    s.finish(ctx, &["listen", "tokens_file"]);
    a
}

fn parse_log(ctx: &mut Ctx, root: &Section) -> LogConfig {
    let mut l = LogConfig::default();
    let Some(s) = root.table(ctx, "log") else {
        return l;
    };
    if let Some(n) = s.integer(ctx, "max_job_lines", 0, i64::from(u32::MAX)) {
        l.max_job_lines = u32::try_from(n).unwrap_or(u32::MAX);
    }
    s.finish(ctx, &["max_job_lines"]);
    l
}

const QUEUE_KEYS: &[&str] = &[
    "max_attempts",
    "retry_backoff",
    "timeout",
    "lease",
    "max_payload",
    "retention_succeeded",
    "retention_failed",
];

/// The `[KIND.NAME]` tables, with every name checked (pool and queue names appear in
/// paths, URLs and journal fields).
fn named_tables<'t, 'i>(
    ctx: &mut Ctx,
    root: &Section<'t, 'i>,
    kind: &str,
) -> Vec<(String, Section<'t, 'i>)> {
    let Some(all) = root.table(ctx, kind) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, name_span) in all.keys() {
        let Some(s) = all.table(ctx, &name) else {
            continue;
        };
        if !valid_name(&name) {
            ctx.error(
                name_span,
                format!("{kind} name `{name}` is not allowed: use letters, digits, `-` and `_` (at most 64)"),
            );
        }
        out.push((name, s));
    }
    out
}

fn parse_queues(ctx: &mut Ctx, root: &Section) -> BTreeMap<String, QueueSpec> {
    let mut queues = BTreeMap::new();
    for (name, s) in named_tables(ctx, root, "queue") {
        let mut q = QueueSpec::new(&name);
        if let Some(n) = s.integer(ctx, "max_attempts", 1, i64::from(MAX_ATTEMPTS)) {
            q.max_attempts = n as u32;
        }
        if let Some(b) = s.table(ctx, "retry_backoff") {
            let r = &mut q.retry_backoff;
            if let Some(d) = b.duration(ctx, "initial") {
                r.initial = d;
            }
            if let Some(d) = b.duration(ctx, "max") {
                r.max = d;
            }
            if let Some(m) = b.float(ctx, "multiplier", 1.0, 100.0) {
                r.multiplier = m;
            }
            if let Some(j) = b.float(ctx, "jitter", 0.0, 1.0) {
                r.jitter = j;
            }
            b.finish(ctx, &["initial", "max", "multiplier", "jitter"]);
        }
        if let Some(d) = s.duration(ctx, "timeout") {
            q.timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = s.duration(ctx, "lease") {
            if d < Duration::from_secs(1) {
                ctx.error(s.span(), format!("queue.{name}.lease must be at least 1s"));
            }
            q.lease = d;
        }
        if let Some((v, span)) = s.string(ctx, "max_payload") {
            match parse_size(&v) {
                Some(n) if n > 0 && n <= 64 * 1024 * 1024 => q.max_payload = n,
                _ => ctx.error(
                    span,
                    format!("max_payload = \"{v}\" is not a size between 1B and 64MiB: write e.g. \"256KiB\" or \"1MiB\""),
                ),
            }
        }
        if let Some(d) = s.duration(ctx, "retention_succeeded") {
            q.retention_succeeded = d;
        }
        if let Some(d) = s.duration(ctx, "retention_failed") {
            q.retention_failed = d;
        }
        s.finish(ctx, QUEUE_KEYS);
        queues.insert(name, q);
    }
    queues
}

/// "1MiB", "512KiB", "2MB", "1000" (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_pools(
    ctx: &mut Ctx,
    root: &Section,
    base: &Path,
    env: &Environment,
    queues: &BTreeMap<String, QueueSpec>,
    daemon: &DaemonConfig,
) -> BTreeMap<String, PoolSpec> {
    let mut pools = BTreeMap::new();
    for (name, s) in named_tables(ctx, root, "pool") {
        let spec = parse_pool(ctx, &s, &name, base, env, queues);
        let span = s.span();
        s.finish(ctx, POOL_KEYS);
        let dir = daemon.notify_dir();
        // Room for "/<slot>.<run>" with ids up to 12 digits each.
        if spec.as_ref().is_some_and(PoolSpec::has_notify_socket)
            && dir.as_os_str().len() + 27 > 107
        {
            ctx.error(
                span,
                format!("pool `{name}` gives its workers notify sockets in {}, a path too long for Unix sockets (at most 107 bytes with the socket's name): choose a shorter [daemon] socket path", dir.display()),
            );
            continue;
        }
        if let Some(spec) = spec {
            pools.insert(name, spec);
        }
    }
    pools
}

fn parse_pool(
    ctx: &mut Ctx,
    s: &Section,
    name: &str,
    base: &Path,
    env: &Environment,
    queues: &BTreeMap<String, QueueSpec>,
) -> Option<PoolSpec> {
    let before = ctx.error_count();
    let mut command = Vec::new();
    match s.string_list_spanned(ctx, "command") {
        None if s.has("command") => {}
        None => ctx.error(
            s.span(),
            format!("pool `{name}` has no `command`: add e.g. command = [\"/usr/bin/python3\", \"worker.py\"]"),
        ),
        Some((items, _)) if items.iter().any(|(a, _)| a.contains('\0')) => {
            for (i, (arg, span)) in items.iter().enumerate() {
                if arg.contains('\0') {
                    ctx.error(
                        span.clone(),
                        format!("`pool.{name}.command` argument {} contains a NUL byte, which no program argument can hold", i + 1),
                    );
                }
            }
        }
        Some((items, span)) => {
            let list: Vec<String> = items.into_iter().map(|(a, _)| a).collect();
            if list.is_empty() || list[0].trim().is_empty() {
                ctx.error(span, format!("`pool.{name}.command` is empty: give the program to run and its arguments, e.g. [\"/usr/bin/python3\", \"worker.py\"]"));
            } else {
                command = list;
                let program = &command[0];
                if program.contains('/') {
                    let p = reader::normalize(&base.join(program));
                    if !crate::process::is_executable(&p) {
                        ctx.error(
                            span,
                            format!("program {} does not exist or is not executable", p.display()),
                        );
                    }
                    command[0] = p.to_string_lossy().into_owned();
                } else if find_in_path(program, env.path.as_deref()).is_none() {
                    ctx.error(
                        span,
                        format!("program `{program}` was not found in PATH ({}); give its absolute path", env.path.as_deref().unwrap_or("")),
                    );
                }
            }
        }
    }
    let mut spec = PoolSpec {
        name: name.to_string(),
        mode: PoolMode::Worker,
        command,
        instances: 1,
        env: BTreeMap::new(),
        working_dir: base.to_path_buf(),
        restart: RestartPolicy::Always,
        backoff: Backoff::default(),
        crash_loop_after: 5,
        give_up_after: 0,
        stable_after: Duration::from_secs(3),
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(30),
        queues: Vec::new(),
        concurrency: 1,
        start_timeout: Duration::from_secs(30),
        no_retry_exit_codes: Vec::new(),
        inherit_env: false,
        port_base: None,
        required_env: Vec::new(),
        exit_codes: BTreeMap::new(),
        kill_mode: KillMode::Group,
        max_lifetime: None,
        health: None,
        credentials: Vec::new(),
        ready: Readiness::Stable,
        watchdog: None,
        limits: Limits::default(),
        log_format: crate::logging::LineFormat::Auto,
        log_level_from_text: false,
        strip_ansi: None,
    };
    if let Some((v, span)) = s.string(ctx, "mode") {
        match v.as_str() {
            "worker" => spec.mode = PoolMode::Worker,
            "exec" => spec.mode = PoolMode::Exec,
            other => ctx.error(
                span,
                format!("mode = \"{other}\" is not a pool mode: use \"worker\" (long-lived workers) or \"exec\" (one process per job)"),
            ),
        }
    }
    if let Some(n) = s.integer(ctx, "instances", 1, 10_000) {
        spec.instances = n as u32;
    }
    // Environment files first (later files win), then `env` (which wins over them).
    if let Some((files, _)) = s.string_list_spanned(ctx, "env_file") {
        for (entry, span) in files {
            let (optional, file) = match entry.strip_prefix('-') {
                Some(f) => (true, f),
                None => (false, entry.as_str()),
            };
            let path = reader::normalize(&base.join(file));
            match read_env_file(&path) {
                Ok(Some(pairs)) => spec.env.extend(pairs),
                Ok(None) if optional => {}
                Ok(None) => ctx.error(
                    span,
                    format!("env file {} does not exist (pool.{name}.env_file): create it, or write \"-{file}\" if it may be absent", path.display()),
                ),
                Err(why) => ctx.error(span, format!("{why} (pool.{name}.env_file)")),
            }
        }
    }
    if let Some(n) = s.integer(ctx, "port_base", 1, 65_535) {
        spec.port_base = Some(n as u16);
    }
    if let Some(entries) = s.string_map_spanned(ctx, "env") {
        let from_files = spec.env.clone();
        let lookup = |var: &str| {
            from_files.get(var).cloned().or_else(|| {
                env.vars
                    .iter()
                    .find(|(k, _)| k == var)
                    .map(|(_, v)| v.clone())
            })
        };
        for ((k, key_span), (v, value_span)) in entries {
            if let Some(why) = env_name_problem(&k) {
                ctx.error(key_span, why);
            } else if v.contains('\0') {
                ctx.error(
                    value_span,
                    format!("`pool.{name}.env.{k}` contains a NUL byte, which no environment value can hold"),
                );
            } else {
                match envfile::expand(&v, &lookup) {
                    Ok(v) => {
                        spec.env.insert(k, v);
                    }
                    Err(why) => {
                        let hint = if why.contains("${STEWARD_INSTANCE}")
                            || why.contains("${STEWARD_PORT}")
                        {
                            " (per-instance values are written {instance} and {port}, without $)"
                        } else {
                            ""
                        };
                        ctx.error(value_span, format!("`pool.{name}.env.{k}`: {why}{hint}"))
                    }
                }
            }
        }
    }
    if let Some((p, span)) = s.path_spanned(ctx, "working_dir", base) {
        if !p.is_dir() {
            ctx.error(
                span,
                format!("working_dir {} is not an existing directory", p.display()),
            );
        }
        spec.working_dir = p;
    }
    if let Some((v, span)) = s.string(ctx, "restart") {
        match v.as_str() {
            "always" => spec.restart = RestartPolicy::Always,
            "on-failure" => spec.restart = RestartPolicy::OnFailure,
            "never" => spec.restart = RestartPolicy::Never,
            other => ctx.error(
                span,
                format!("restart = \"{other}\" is not a policy: use \"always\", \"on-failure\" or \"never\""),
            ),
        }
    }
    if let Some(b) = s.table(ctx, "backoff") {
        if let Some(d) = b.duration(ctx, "initial") {
            spec.backoff.initial = d;
        }
        if let Some(d) = b.duration(ctx, "max") {
            spec.backoff.max = d;
        }
        if let Some(m) = b.float(ctx, "multiplier", 1.0, 100.0) {
            spec.backoff.multiplier = m;
        }
        if let Some(j) = b.float(ctx, "jitter", 0.0, 1.0) {
            spec.backoff.jitter = j;
        }
        if let Some(d) = b.duration(ctx, "reset_after") {
            spec.backoff.reset_after = d;
        }
        if spec.backoff.max < spec.backoff.initial {
            ctx.error(
                b.span(),
                format!(
                    "backoff.max ({}) is shorter than backoff.initial ({}): make max at least as long",
                    humantime::format_duration(spec.backoff.max),
                    humantime::format_duration(spec.backoff.initial)
                ),
            );
        }
        b.finish(
            ctx,
            &["initial", "max", "multiplier", "jitter", "reset_after"],
        );
    }
    if let Some(n) = s.integer(ctx, "crash_loop_after", 1, 1_000_000) {
        spec.crash_loop_after = n as u32;
    }
    if let Some(n) = s.integer(ctx, "give_up_after", 0, 1_000_000) {
        spec.give_up_after = n as u32;
    }
    if let Some(d) = s.duration(ctx, "stable_after") {
        spec.stable_after = d;
    }
    if let Some((v, span)) = s.string(ctx, "stop_signal") {
        match parse_signal(&v) {
            Some(sig) => spec.stop_signal = sig,
            None => ctx.error(
                span,
                format!("stop_signal = \"{v}\" is not a signal name: use e.g. \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\""),
            ),
        }
    }
    if let Some(d) = s.duration(ctx, "stop_timeout") {
        spec.stop_timeout = d;
    }
    if let Some((list, span)) = s.string_list(ctx, "queues") {
        for q in &list {
            if !queues.contains_key(q) {
                let known = if queues.is_empty() {
                    "none are configured; add a [queue.NAME] section".to_string()
                } else {
                    format!(
                        "configured queues: {}",
                        queues.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                ctx.error(
                    span.clone(),
                    format!("pool `{name}` takes jobs from unknown queue `{q}` ({known})"),
                );
            }
        }
        spec.queues = list;
    }
    if let Some(n) = s.integer(ctx, "concurrency", 1, 10_000) {
        spec.concurrency = n as u32;
    }
    if let Some(d) = s.duration(ctx, "start_timeout") {
        spec.start_timeout = d;
    }
    if let Some(b) = s.boolean(ctx, "inherit_env") {
        spec.inherit_env = b;
    }
    if let Some(list) = s.int_list(ctx, "no_retry_exit_codes", 1, 255) {
        spec.no_retry_exit_codes = list.into_iter().map(|n| n as i32).collect();
    }
    if let Some(entries) = s.string_map_spanned(ctx, "env_from_credentials") {
        for ((var, var_span), (cred, cred_span)) in entries {
            if let Some(why) = env_name_problem(&var) {
                ctx.error(var_span, why);
            } else if spec.env.contains_key(&var) {
                ctx.error(
                    var_span,
                    format!("{var} is set both in the pool's env (or env_file) and in env_from_credentials: keep one"),
                );
            } else if cred.is_empty() || cred.contains('/') || cred == "." || cred == ".." {
                ctx.error(
                    cred_span,
                    format!("{cred:?} is not a credential name: give the name used in LoadCredential=NAME:/path (no /)"),
                );
            } else {
                if let Some(dir) = &env.credentials_directory
                    && !dir.join(&cred).is_file()
                {
                    ctx.unmet(
                        cred_span,
                        format!("pool `{name}` takes {var} from credential {cred:?}, which {} does not hold: add LoadCredential={cred}:/path/to/file to the unit; until then the workers are not started", dir.display()),
                    );
                }
                spec.credentials.push((var, cred));
            }
        }
    }
    if let Some(l) = s.table(ctx, "limits") {
        spec.limits = parse_limits(ctx, l, name);
    }
    if let Some(h) = s.table(ctx, "health") {
        spec.health = parse_health(ctx, &h, name, base);
        h.finish(
            ctx,
            &[
                "http",
                "tcp",
                "exec",
                "interval",
                "timeout",
                "failures",
                "successes",
                "on_failure",
                "start_period",
                "keep_alive",
            ],
        );
    }
    parse_readiness(ctx, s, &mut spec, name);
    if let Some(d) = s.duration(ctx, "max_lifetime") {
        if d < Duration::from_secs(1) {
            ctx.error(
                s.span(),
                format!("pool `{name}`: max_lifetime must be at least 1s (\"0\" is not \"never\": leave it out)"),
            );
        } else {
            spec.max_lifetime = Some(d);
        }
    }
    if let Some((v, span)) = s.string(ctx, "log_format") {
        match v.as_str() {
            "auto" => spec.log_format = crate::logging::LineFormat::Auto,
            "json" => spec.log_format = crate::logging::LineFormat::Json,
            "text" => spec.log_format = crate::logging::LineFormat::Text,
            other => ctx.error(
                span,
                format!("log_format = \"{other}\": use \"auto\" (a JSON object with msg, message or event is read as a structured line), \"json\" (every JSON object is) or \"text\" (no line is)"),
            ),
        }
    }
    if let Some(b) = s.boolean(ctx, "log_level_from_text") {
        spec.log_level_from_text = b;
    }
    if let Some(b) = s.boolean(ctx, "strip_ansi") {
        spec.strip_ansi = Some(b);
    }
    if let Some((v, span)) = s.string(ctx, "kill_mode") {
        match v.as_str() {
            "group" => spec.kill_mode = KillMode::Group,
            "main" => spec.kill_mode = KillMode::Main,
            other => ctx.error(
                span,
                format!("kill_mode = \"{other}\": use \"group\" (the stop signal to the worker's whole process group) or \"main\" (to its main process only; the group gets SIGKILL after stop_timeout)"),
            ),
        }
    }
    if let Some(entries) = s.string_map_spanned(ctx, "exit_codes") {
        for ((code, code_span), (action, action_span)) in entries {
            let Some(n) = code.parse::<i32>().ok().filter(|n| (1..=255).contains(n)) else {
                ctx.error(
                    code_span,
                    format!("`pool.{name}.exit_codes`: {code:?} is not an exit code from 1 to 255 (0 is a clean exit)"),
                );
                continue;
            };
            match action.as_str() {
                "config-error" => {
                    spec.exit_codes.insert(n, ExitAction::ConfigError);
                }
                "restart" => {
                    spec.exit_codes.insert(n, ExitAction::Restart);
                }
                other => ctx.error(
                    action_span,
                    format!("`pool.{name}.exit_codes.{code}` = {other:?}: use \"config-error\" (park the worker as failed, as exit code 78 does) or \"restart\" (restart it without raising the backoff level)"),
                ),
            }
        }
    }
    if let Some((names, _)) = s.string_list_spanned(ctx, "required_env") {
        // What instance 0 would get (names do not change between instances).
        let mut final_env = crate::process::base_environment(&env.vars, spec.inherit_env);
        final_env.extend(spec.for_instance(0).1);
        for (n, span) in names {
            match env_name_problem(&n) {
                Some(why) => ctx.error(span, why),
                None => {
                    spec.required_env.push(n.clone());
                    if !spec.missing_env(&final_env).contains(&n) {
                        continue;
                    }
                    ctx.unmet(
                        span,
                        format!("pool `{name}` requires {n} (required_env), which its workers would not get or would get empty: set it in the pool's env or env_file, or in steward's environment; until then the workers are not started"),
                    );
                }
            }
        }
    }
    match spec.port_base {
        Some(b) if u32::from(b) + spec.instances - 1 > 65_535 => ctx.error(
            s.span(),
            format!(
                "pool `{name}`: port_base {b} with {} instances reaches port {}, past 65535: lower port_base or instances",
                spec.instances,
                u32::from(b) + spec.instances - 1
            ),
        ),
        Some(_) => {}
        None => {
            let in_probe = match spec.health.as_ref().map(|h| &h.probe) {
                Some(ProbeSpec::Http(t)) | Some(ProbeSpec::Tcp(t)) => t.contains("{port}"),
                Some(ProbeSpec::Exec(c)) => c.iter().any(|a| a.contains("{port}")),
                None => false,
            };
            let uses_port = spec.command.iter().any(|a| a.contains("{port}"))
                || spec.env.values().any(|v| v.contains("{port}"))
                || in_probe;
            if uses_port {
                ctx.error(
                    s.span(),
                    format!("pool `{name}` uses {{port}} but has no port_base: add e.g. port_base = 8081 (instance n gets port_base + n)"),
                );
            }
        }
    }
    if spec.is_exec() {
        if spec.queues.is_empty() {
            ctx.error(
                s.span(),
                format!("exec pool `{name}` takes jobs, so it needs queues = [\"...\"] (one process is started per job)"),
            );
        }
        if s.has("concurrency") {
            ctx.error(
                s.span(),
                format!("`concurrency` does not apply to exec pool `{name}`: each job is its own process; `instances` is how many run at once"),
            );
        }
        if s.has("health") {
            ctx.error(
                s.span(),
                format!("[pool.{name}.health] applies to worker pools; exec pool `{name}` has no long-lived workers to probe"),
            );
        }
        if s.has("max_lifetime") {
            ctx.error(
                s.span(),
                format!("`max_lifetime` applies to worker pools; exec pool `{name}` starts a process per job (use the queue's timeout)"),
            );
        }
        if s.has("kill_mode") {
            ctx.error(
                s.span(),
                format!("`kill_mode` applies to worker pools; exec pool `{name}` stops a job's whole process group"),
            );
        }
        for key in ["ready", "watchdog"] {
            if s.has(key) {
                ctx.error(
                    s.span(),
                    format!("`{key}` applies to worker pools; exec pool `{name}` starts a process per job, whose exit is its outcome"),
                );
            }
        }
        if s.has("exit_codes") {
            ctx.error(
                s.span(),
                format!("`exit_codes` applies to worker pools; exec pool `{name}` has no_retry_exit_codes for codes that fail a job at once"),
            );
        }
        if spec.limits.recycle_above.is_some() {
            ctx.error(
                s.span(),
                format!("`limits.recycle_above` applies to worker pools; exec pool `{name}` starts a process per job (memory_max bounds each job)"),
            );
        }
    } else if s.has("no_retry_exit_codes") {
        ctx.error(s.span(), format!("`no_retry_exit_codes` applies only to exec pools (pool `{name}` has mode \"worker\")"));
    }
    (ctx.error_count() == before).then_some(spec)
}

/// Why `name` cannot be the name of an environment variable, if it cannot.
fn parse_health(ctx: &mut Ctx, h: &Section, name: &str, base: &Path) -> Option<HealthSpec> {
    let http = h.string(ctx, "http");
    let tcp = h.string(ctx, "tcp");
    let exec = h.string_list_spanned(ctx, "exec");
    let given = [http.is_some(), tcp.is_some(), exec.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        ctx.error(
            h.span(),
            format!("[pool.{name}.health] has more than one of http, tcp and exec: give one"),
        );
        return None;
    }
    if let Some((items, span)) = exec {
        let mut list: Vec<String> = items.into_iter().map(|(a, _)| a).collect();
        if list.is_empty() || list[0].trim().is_empty() {
            ctx.error(span, format!("pool.{name}.health.exec is empty: give a program and its arguments, e.g. [\"/usr/local/bin/check\", \"--port={{port}}\"]"));
            return None;
        }
        if list.iter().any(|a| a.contains('\0')) {
            ctx.error(span, format!("pool.{name}.health.exec contains a NUL byte, which no program argument can hold"));
            return None;
        }
        if list[0].contains('/') {
            let p = reader::normalize(&base.join(&list[0]));
            if !crate::process::is_executable(&p) {
                ctx.error(
                    span,
                    format!(
                        "pool.{name}.health.exec: program {} does not exist or is not executable",
                        p.display()
                    ),
                );
                return None;
            }
            list[0] = p.to_string_lossy().into_owned();
        }
        return Some(health_spec(ctx, h, name, ProbeSpec::Exec(list)));
    }
    let probe = match (http, tcp) {
        (Some((url, span)), None) => {
            match crate::probe::split_url(&url.replace("{port}", "1").replace("{instance}", "0")) {
                Ok(_) => ProbeSpec::Http(url),
                Err(why) => {
                    ctx.error(span, format!("pool.{name}.health.http: {why}"));
                    return None;
                }
            }
        }
        (None, Some((addr, span))) => {
            if !addr.contains(':') {
                ctx.error(span, format!("pool.{name}.health.tcp = {addr:?} needs host:port, e.g. \"127.0.0.1:{{port}}\""));
                return None;
            }
            ProbeSpec::Tcp(addr)
        }
        (Some(_), Some(_)) => {
            ctx.error(
                h.span(),
                format!("[pool.{name}.health] has both http and tcp: give one"),
            );
            return None;
        }
        (None, None) => {
            ctx.error(h.span(), format!("[pool.{name}.health] needs what to probe: http = \"http://127.0.0.1:{{port}}/health\", tcp = \"127.0.0.1:{{port}}\" or exec = [\"/path/to/check\", ...]"));
            return None;
        }
    };
    Some(health_spec(ctx, h, name, probe))
}

/// The rest of a health block, around its `probe`.
fn health_spec(ctx: &mut Ctx, h: &Section, name: &str, probe: ProbeSpec) -> HealthSpec {
    let mut spec = HealthSpec {
        probe,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        failures: 3,
        successes: 1,
        on_failure: OnUnhealthy::Restart,
        start_period: None,
        keep_alive: true,
    };
    if let Some((b, span)) = h.boolean_spanned(ctx, "keep_alive") {
        if matches!(spec.probe, ProbeSpec::Http(_)) {
            spec.keep_alive = b;
        } else {
            ctx.error(
                span,
                format!("pool.{name}.health.keep_alive is for http probes only: remove it"),
            );
        }
    }
    if let Some(d) = h.duration(ctx, "start_period") {
        spec.start_period = Some(d);
    }
    if let Some(d) = h.duration(ctx, "interval") {
        spec.interval = d;
    }
    if let Some(d) = h.duration(ctx, "timeout") {
        spec.timeout = d;
    }
    if spec.interval < Duration::from_millis(100) || spec.timeout < Duration::from_millis(10) {
        ctx.error(
            h.span(),
            format!(
                "[pool.{name}.health]: interval must be at least 100ms and timeout at least 10ms"
            ),
        );
    }
    if let Some(n) = h.integer(ctx, "failures", 1, 1000) {
        spec.failures = n as u32;
    }
    if let Some(n) = h.integer(ctx, "successes", 1, 1000) {
        spec.successes = n as u32;
    }
    if let Some((v, span)) = h.string(ctx, "on_failure") {
        match v.as_str() {
            "restart" => spec.on_failure = OnUnhealthy::Restart,
            "mark" => spec.on_failure = OnUnhealthy::Mark,
            other => ctx.error(
                span,
                format!("on_failure = \"{other}\": use \"restart\" or \"mark\""),
            ),
        }
    }
    spec
}

/// `ready` and `watchdog`, once `queues` and `health` are known (they decide the
/// default).
fn parse_readiness(ctx: &mut Ctx, s: &Section, spec: &mut PoolSpec, name: &str) {
    spec.ready = match (spec.is_protocol(), spec.health.is_some()) {
        (true, _) => Readiness::Protocol,
        (false, true) => Readiness::Health,
        (false, false) => Readiness::Stable,
    };
    if let Some((v, span)) = s.string(ctx, "ready") {
        let asked = match v.as_str() {
            "stable" => Some(Readiness::Stable),
            "protocol" => Some(Readiness::Protocol),
            "notify" => Some(Readiness::Notify),
            "health" => Some(Readiness::Health),
            _ => None,
        };
        match asked {
            None => ctx.error(
                span,
                format!("ready = \"{v}\": use \"notify\" (the worker sends READY=1 on $NOTIFY_SOCKET), \"health\" (its first passing health probe), \"stable\" (it stayed up stable_after) or, for a pool with queues, \"protocol\" (it says {{\"type\":\"ready\"}})"),
            ),
            Some(Readiness::Protocol) if !spec.is_protocol() => ctx.error(
                span,
                format!("ready = \"protocol\" needs a pool that takes jobs (queues = [...]); pool `{name}` has none: use \"notify\", \"health\" or \"stable\""),
            ),
            Some(Readiness::Stable) if spec.is_protocol() => ctx.error(
                span,
                format!("ready = \"stable\" does not fit pool `{name}`, which takes jobs: its workers say when they can take them (\"protocol\", the default, or \"notify\")"),
            ),
            Some(Readiness::Health) if spec.health.is_none() => ctx.error(
                span,
                format!("ready = \"health\" needs a [pool.{name}.health] block to probe with"),
            ),
            Some(r) => spec.ready = r,
        }
    }
    if let Some(d) = s.duration(ctx, "watchdog") {
        if d < Duration::from_millis(100) {
            ctx.error(
                s.span(),
                format!("pool `{name}`: watchdog must be at least 100ms (leave it out for none)"),
            );
        } else {
            spec.watchdog = Some(d);
        }
    }
}

/// The most a credential given to a worker as a variable may hold.
pub const MAX_CREDENTIAL: u64 = 64 * 1024;

/// The value of systemd credential `name` in `dir` (`$CREDENTIALS_DIRECTORY`), without a
/// final newline.
pub fn read_credential(dir: Option<&Path>, name: &str) -> Result<String, String> {
    use std::io::Read;
    let Some(dir) = dir else {
        return Err(format!(
            "credential {name:?} needs $CREDENTIALS_DIRECTORY, which steward was not given: add LoadCredential={name}:/path/to/file to the unit (systemctl edit steward)"
        ));
    };
    let path = dir.join(name);
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_CREDENTIAL + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read credential {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_CREDENTIAL {
        return Err(format!(
            "credential {} is larger than {} KiB",
            path.display(),
            MAX_CREDENTIAL / 1024
        ));
    }
    let value = text.strip_suffix('\n').unwrap_or(&text);
    if value.contains('\0') {
        return Err(format!("credential {} holds a NUL byte", path.display()));
    }
    Ok(value.to_string())
}

/// The assignments of an environment file; `None` when it does not exist.
fn read_env_file(path: &Path) -> Result<Option<Vec<(String, String)>>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read env file {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(envfile::MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read env file {} as UTF-8 text: {e}", path.display()))?;
    if text.len() as u64 > envfile::MAX_FILE {
        return Err(format!(
            "env file {} is larger than {} KiB",
            path.display(),
            envfile::MAX_FILE / 1024
        ));
    }
    envfile::parse(&text)
        .map(Some)
        .map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))
}

pub fn env_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("an environment variable name is empty: give it a name, e.g. APP_ENV".into())
    } else if name.contains('\0') {
        Some(format!(
            "environment variable name `{}` contains a NUL byte",
            name.replace('\0', "\\0")
        ))
    } else if name.contains('=') {
        Some(format!(
            "environment variable name `{name}` contains `=`, which ends a name: the value goes on the right, e.g. {{ A = \"B\" }}"
        ))
    } else {
        None
    }
}

/// A schema name steward accepts: an SQL identifier that needs no quoting (lower-case
/// letters, digits and `_`, starting with a letter or `_`), at most 55 bytes so that its
/// notice channel (`steward_<schema>`) fits PostgreSQL's 63.
pub fn check_schema_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok
        || name.len() > 55
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "schema must be 1 to 55 lower-case letters, digits or _, starting with a letter or _, not {name:?}"
        ));
    }
    Ok(())
}

/// Pool and queue names appear in paths, URLs and journal fields: keep them simple.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Accepts `SIGTERM`, `TERM` or `sigterm`.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let sig: Signal = full.parse().ok()?;
    // Stopping with SIGSTOP/SIGCONT/SIGCHLD would never stop anything.
    match sig {
        Signal::SIGSTOP | Signal::SIGCONT | Signal::SIGCHLD | Signal::SIGTSTP => None,
        s => Some(s),
    }
}

/// Parses "30s", "1m 30s", "250ms"; "0" means zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| e.to_string())
}

fn find_in_path(program: &str, path: Option<&str>) -> Option<PathBuf> {
    path?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| crate::process::is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_need_no_quoting_and_are_bounded() {
        for ok in ["steward", "_x", "steward_2", &"a".repeat(55)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Steward",
            "2x",
            "a-b",
            "a b",
            "x;drop",
            "é",
            &"a".repeat(56),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    fn env() -> Environment {
        Environment {
            state_directory: None,
            credentials_directory: None,
            runtime_directory: None,
            path: Some("/usr/bin:/bin".into()),
            vars: Vec::new(),
        }
    }

    fn parse_str(text: &str) -> Result<Config, ConfigErrors> {
        parse(text, Path::new("/etc/steward/steward.toml"), &env())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse_str("").expect("valid");
        assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/steward"));
        assert_eq!(c.daemon.socket, PathBuf::from("/run/steward/steward.sock"));
        assert_eq!(c.daemon.shutdown_timeout, Duration::from_secs(60));
        assert!(c.pools.is_empty());
    }

    #[test]
    fn systemd_directories_set_the_defaults() {
        let e = Environment {
            state_directory: Some("/var/lib/x".into()),
            runtime_directory: Some("/run/x".into()),
            credentials_directory: None,
            path: None,
            vars: Vec::new(),
        };
        let c = parse("", Path::new("/etc/s.toml"), &e).expect("valid");
        assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(c.daemon.socket, PathBuf::from("/run/x/steward.sock"));
    }

    #[test]
    fn full_pool_parses() {
        let c = parse_str(
            r#"
[daemon]
state_dir = "state"
socket = "state/s.sock"
shutdown_timeout = "90s"

[pool.web]
command = ["sh", "-c", "sleep 100"]
instances = 4
env = { APP_ENV = "production" }
working_dir = "/tmp"
restart = "on-failure"
backoff = { initial = "500ms", max = "10s", multiplier = 3.0, jitter = 0.1, reset_after = "1m" }
crash_loop_after = 2
give_up_after = 7
stable_after = "2s"
stop_signal = "INT"
stop_timeout = "5s"
"#,
        )
        .expect("valid");
        assert_eq!(c.daemon.state_dir, PathBuf::from("/etc/steward/state"));
        assert_eq!(c.daemon.socket, PathBuf::from("/etc/steward/state/s.sock"));
        let p = &c.pools["web"];
        assert_eq!(p.instances, 4);
        assert_eq!(p.env["APP_ENV"], "production");
        assert_eq!(p.restart, RestartPolicy::OnFailure);
        assert_eq!(p.backoff.initial, Duration::from_millis(500));
        assert_eq!(p.backoff.multiplier, 3.0);
        assert_eq!(p.backoff.reset_after, Duration::from_secs(60));
        assert_eq!(p.give_up_after, 7);
        assert_eq!(p.stop_signal, Signal::SIGINT);
        assert_eq!(p.working_dir, PathBuf::from("/tmp"));
    }

    #[test]
    fn pool_limits_become_cgroup_files_and_bad_ones_are_positioned() {
        let c = parse_str(
            "[daemon]\ncgroups = \"off\"\n[pool.a]\ncommand = [\"/bin/sh\"]\n[pool.a.limits]\nmemory_max = \"512M\"\nmemory_high = \"400M\"\npids_max = 64\ncpu_weight = 50\ncpu_max = \"150%\"\nrecycle_above = \"300M\"\n",
        )
        .expect("valid");
        assert!(!c.daemon.cgroups);
        let l = &c.pools["a"].limits;
        assert_eq!(l.memory_max, Some(512 << 20));
        let files: Vec<(&str, String)> = l
            .settings()
            .into_iter()
            .map(|s| (s.file, s.value))
            .collect();
        assert_eq!(
            files,
            vec![
                ("memory.max", (512u64 << 20).to_string()),
                ("memory.swap.max", "0".into()),
                ("memory.oom.group", "1".into()),
                ("memory.high", (400u64 << 20).to_string()),
                ("pids.max", "64".into()),
                ("cpu.weight", "50".into()),
                ("cpu.max", "150000 100000".into()),
            ]
        );
        assert_eq!(
            l.describe(),
            vec![
                "memory_max 512M",
                "memory_high 400M",
                "recycle_above 300M",
                "pids_max 64",
                "cpu_weight 50",
                "cpu_max 150%"
            ]
        );
        assert_eq!(
            l.needs(),
            vec![
                ("memory_max", "memory"),
                ("memory_high", "memory"),
                ("pids_max", "pids"),
                ("cpu_weight", "cpu"),
                ("cpu_max", "cpu"),
                ("recycle_above", "memory"),
            ]
        );
        // No limits: no files, and the default is cgroups where delegated.
        let c = parse_str("[pool.a]\ncommand = [\"/bin/sh\"]\n").expect("valid");
        assert!(c.pools["a"].limits.settings().is_empty());
        assert!(c.daemon.cgroups);

        let err = parse_str(
            "[pool.a]\ncommand = [\"/bin/sh\"]\n[pool.a.limits]\nmemory_max = \"lots\"\ncpu_max = \"2\"\npids_max = 0\ncpu_weight = 20000\nswap = 1\n[pool.b]\ncommand = [\"/bin/sh\"]\n[pool.b.limits]\nmemory_max = \"100M\"\nmemory_high = \"200M\"\nrecycle_above = \"100M\"\n[daemon]\ncgroups = \"yes\"\n",
        )
        .expect_err("invalid");
        let msgs: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
        let has = |needle: &str| msgs.iter().any(|m| m.contains(needle));
        assert!(
            has(":4:14: pool.a.limits.memory_max = \"lots\" is not a size"),
            "{msgs:#?}"
        );
        assert!(
            has(":5:11: pool.a.limits.cpu_max = \"2\" is not a share of CPU"),
            "{msgs:#?}"
        );
        assert!(has(":6:"), "pids_max 0: {msgs:#?}");
        assert!(has(":7:"), "cpu_weight 20000: {msgs:#?}");
        assert!(has(":8:1: unknown key `swap`"), "{msgs:#?}");
        assert!(
            has("memory_high (200M) is above memory_max (100M)"),
            "{msgs:#?}"
        );
        assert!(
            has("recycle_above (100M) is not below memory_max (100M)"),
            "{msgs:#?}"
        );
        assert!(has("cgroups = \"yes\": use \"auto\""), "{msgs:#?}");
        // Sizes as shown.
        assert_eq!(human_size(1536 << 20), "1.5G");
        assert_eq!(human_size(530 << 20), "530M");
        assert_eq!(human_size(512), "512B");
    }

    #[test]
    fn all_errors_are_reported_with_positions() {
        let err = parse_str(
            "[pool.a]\ncommand = []\ninstances = 0\nbogus = 1\nstop_timeout = \"soon\"\n\n[pool.b]\ncommand = \"sh\"\n",
        )
        .expect_err("invalid");
        let msgs: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 5, "{msgs:#?}");
        assert!(
            msgs[0].starts_with("/etc/steward/steward.toml:2:11: `pool.a.command` is empty"),
            "{msgs:#?}"
        );
        assert!(
            msgs[1].starts_with("/etc/steward/steward.toml:3:13: "),
            "{msgs:#?}"
        );
        assert!(msgs[2].contains(":4:1: unknown key `bogus`"), "{msgs:#?}");
        assert!(msgs[3].contains(":5:16: "), "{msgs:#?}");
        assert!(msgs[4].contains(":8:11: "), "{msgs:#?}");
    }

    #[test]
    fn log_section() {
        assert_eq!(parse_str("").expect("valid").log.max_job_lines, 100);
        let c = parse_str("[log]\nmax_job_lines = 0\n").expect("valid");
        assert_eq!(c.log.max_job_lines, 0);
        let err = parse_str("[log]\nmax_job_lines = -5\nlevel = \"debug\"\n").expect_err("invalid");
        assert_eq!(err.errors.len(), 2, "{err}");
        assert_eq!((err.errors[0].line, err.errors[0].column), (2, 17), "{err}");
        assert_eq!(err.errors[1].line, 3, "{err}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse_str("[daemon]\nshutdown_timeout = \n").expect_err("invalid");
        assert_eq!(err.errors[0].line, 2, "{err}");
    }

    #[test]
    fn log_keys_of_a_pool() {
        let c = parse_str("[pool.a]\ncommand=[\"sh\"]\n").expect("valid");
        let p = &c.pools["a"];
        assert_eq!(p.log_format, crate::logging::LineFormat::Auto);
        assert!(!p.log_level_from_text);
        assert_eq!(p.strip_ansi, None);
        let c = parse_str(
            "[pool.a]\ncommand=[\"sh\"]\nlog_format = \"json\"\nlog_level_from_text = true\nstrip_ansi = false\n",
        )
        .expect("valid");
        let p = &c.pools["a"];
        assert_eq!(p.log_format, crate::logging::LineFormat::Json);
        assert!(p.log_level_from_text);
        assert!(!p.line_rules().strip_ansi);
        let err =
            parse_str("[pool.a]\ncommand=[\"sh\"]\nlog_format = \"pino\"\nstrip_ansi = \"yes\"\n")
                .expect_err("invalid");
        assert_eq!(err.errors.len(), 2, "{err}");
        assert_eq!((err.errors[0].line, err.errors[0].column), (3, 14), "{err}");
        assert!(err.errors[0].message.contains("use \"auto\""), "{err}");
        assert_eq!(err.errors[1].line, 4, "{err}");
    }

    #[test]
    fn instances_only_change_is_detected() {
        let c = parse_str("[pool.a]\ncommand=[\"sh\"]\n").expect("valid");
        let mut b = c.pools["a"].clone();
        b.instances = 3;
        assert!(c.pools["a"].same_except_live(&b));
        b.log_format = crate::logging::LineFormat::Text;
        b.strip_ansi = Some(false);
        assert!(c.pools["a"].same_except_live(&b));
        b.stop_timeout = Duration::from_secs(1);
        assert!(!c.pools["a"].same_except_live(&b));
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("SIGSTOP"), None);
        assert_eq!(parse_signal("NOPE"), None);
    }
}
