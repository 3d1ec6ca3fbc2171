//! The `steward` command line: the daemon entry point and the client commands that talk
//! to a running daemon over its control socket.

mod completion;
mod jobs;
mod migrate;
mod pools;
pub(crate) use crate::stdout as out;
mod status;
mod top;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hyper::Method;

use crate::api::{DaemonStatus, Message, ReloadReport};
use crate::config::{self, DEFAULT_CONFIG_PATH, Environment};
use crate::control::client::{Client, ClientError};
use crate::error::Failure;
use crate::logging::LogFormat;
use crate::supervisor::PoolAction;

#[derive(Debug, Parser)]
#[command(
    name = "steward",
    version,
    about = "A systemd-native job supervisor: keeps pools of worker processes running."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "STEWARD_CONFIG",
        default_value = DEFAULT_CONFIG_PATH,
        value_name = "PATH",
        help_heading = GLOBAL
    )]
    pub config: PathBuf,
    /// Control socket of the daemon (default: the one named in the configuration).
    #[arg(long, global = true, env = "STEWARD_SOCKET", value_name = "PATH", help_heading = GLOBAL)]
    pub socket: Option<PathBuf>,
    /// How long to wait for each answer of the daemon.
    #[arg(
        long,
        global = true,
        env = "STEWARD_REQUEST_TIMEOUT",
        default_value = "30s",
        value_parser = parse_duration_arg,
        value_name = "DURATION",
        help_heading = GLOBAL
    )]
    pub request_timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

/// The heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// The job states, as `--state` takes them.
const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (this is what the systemd unit starts).
    Daemon {
        /// Log output: journald when stderr is connected to the journal, else text.
        #[arg(long, value_enum, default_value = "auto", value_name = "FORMAT")]
        log_format: LogFormat,
        /// Start even if the job journal is damaged: its files are moved to a
        /// damaged-TIME directory in the state directory, and the jobs that can still be
        /// read from them make up the new journal.
        #[arg(long)]
        accept_damaged_journal: bool,
    },
    /// Validate the configuration file without starting anything (exit 0 or 78).
    CheckConfig,
    /// Show the daemon, its pools and their workers.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restart a pool's workers one at a time, each only after the previous one runs.
    Restart {
        /// The pool, as named in the configuration ([pool.NAME]).
        pool: String,
        /// Return once the restart has begun instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration_arg, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Re-read the configuration file and apply it; reports whether it was valid.
    Reload,
    /// Stop a pool's workers gracefully (protocol workers drain first; an exec pool
    /// takes no new jobs and lets running ones finish). The pool stays stopped across
    /// reloads and daemon restarts until `steward start POOL`.
    Stop {
        /// The pool, as named in the configuration ([pool.NAME]).
        pool: String,
        /// Return at once instead of waiting until no worker of the pool is left.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration_arg, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Start a pool stopped with `steward stop`; waits until its workers run.
    Start {
        /// The pool, as named in the configuration ([pool.NAME]).
        pool: String,
        /// Return at once instead of waiting until its workers run.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration_arg, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Run N workers (exec pools: N job processes at once) instead of the configured
    /// number. Kept across reloads and daemon restarts, until the configuration's
    /// `instances` for the pool changes (the edited file wins) or `scale` sets it back.
    Scale {
        /// The pool, as named in the configuration ([pool.NAME]).
        pool: String,
        /// How many (0 to 10000).
        #[arg(value_parser = clap::value_parser!(u32).range(0..=10_000))]
        instances: u32,
        /// Return at once instead of waiting until the pool runs that many.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration_arg, value_name = "DURATION")]
        timeout: Duration,
    },
    /// List every worker and job process: pool, instance, pid, state, uptime, restarts,
    /// memory, CPU and the jobs it holds.
    Ps {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show steward's records in the journal: all of them, one pool's, or one job's
    /// (through journalctl; needs membership of systemd-journal or adm, or root).
    Logs {
        /// Only this pool's records (its workers' output and steward's lines about it).
        #[arg(conflicts_with = "job")]
        pool: Option<String>,
        /// Only this job's records.
        #[arg(long, value_name = "ID")]
        job: Option<i64>,
        /// Keep printing new records as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many of the latest records to show first.
        #[arg(short = 'n', long, default_value_t = 50, value_name = "N")]
        lines: u32,
        /// journalctl's output format, e.g. short-precise, cat, json, verbose.
        #[arg(short, long, value_name = "FORMAT")]
        output: Option<String>,
        /// steward's systemd unit.
        #[arg(long, default_value = "steward.service", value_name = "UNIT")]
        unit: String,
    },
    /// Print this program's version and the running daemon's.
    Version,
    /// A live view: pools, queues with throughput and a sparkline of their wait, recent
    /// failures; `q` quits. Not on a terminal, it prints the same every interval.
    Top {
        /// How often to refresh.
        #[arg(long, default_value = "2s", value_parser = parse_duration_arg, value_name = "DURATION")]
        interval: Duration,
        /// Stop after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Submit a job; prints its id.
    Submit {
        /// The queue, as named in the configuration ([queue.NAME]).
        queue: String,
        /// The payload as JSON, or `-` to read it from stdin (default: {}).
        payload: Option<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// Run no earlier than this long from now, e.g. 10m.
        #[arg(long, value_parser = parse_duration_arg, conflicts_with = "at", value_name = "DURATION")]
        delay: Option<Duration>,
        /// Run no earlier than this time (RFC 3339, e.g. 2026-11-23T18:00:00Z).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Attempts in all before the job fails (default: the queue's).
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// Time limit of one attempt, e.g. 5m; 0 = none (default: the queue's).
        #[arg(long, value_parser = parse_duration_arg, value_name = "DURATION")]
        timeout: Option<Duration>,
        /// While a job with this key is queued or running in the queue, return it instead.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Wait until the job is finished; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// Print {"id":…, "existing":…} instead of the bare id.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs of this queue.
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// Only jobs of this pool's queues.
        #[arg(long, value_name = "POOL", conflicts_with = "queue")]
        pool: Option<String>,
        /// Only jobs created since then: a duration back from now (1h, 30m, 2d) or a
        /// time (2026-12-03T10:00:00Z).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only jobs created before then: a duration back from now or a time.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Only jobs in this state.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STATES))]
        state: Option<String>,
        /// How many jobs to show at most (1 to 10000).
        #[arg(short = 'n', long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=10_000), value_name = "N")]
        limit: u16,
        /// Only jobs older than this id (where the previous page ended).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        /// Include each job's payload (with --json).
        #[arg(long, requires = "json")]
        payload: bool,
        /// Print the jobs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: payload, result, and every attempt.
    Job {
        /// The job's id, as `submit` printed it.
        id: i64,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
        /// Follow the job's progress until it ends; exit 0 only if it succeeded.
        #[arg(long, conflicts_with = "json")]
        follow: bool,
    },
    /// Cancel jobs: a queued one at once, a running one on its worker. Give ids, or a
    /// selection (--queue, --state); more than 10 jobs need --yes.
    Cancel {
        /// The jobs' ids.
        #[arg(required_unless_present_any = ["queue", "state"], conflicts_with_all = ["queue", "state"])]
        ids: Vec<i64>,
        /// Every job of this queue (with --state: in that state).
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// Every job in this state (queued or running).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["queued", "running"]))]
        state: Option<String>,
        /// Go ahead with a selection of more than 10 jobs.
        #[arg(long)]
        yes: bool,
    },
    /// Queue failed or cancelled jobs again, each with a fresh attempt budget. Give ids,
    /// or a selection (--state, --queue); more than 10 jobs need --yes.
    Retry {
        /// The jobs' ids.
        #[arg(required_unless_present = "state", conflicts_with_all = ["queue", "state"])]
        ids: Vec<i64>,
        /// Only jobs of this queue (with --state).
        #[arg(long, value_name = "QUEUE", requires = "state")]
        queue: Option<String>,
        /// Every job in this state.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["failed", "cancelled"]))]
        state: Option<String>,
        /// Go ahead with a selection of more than 10 jobs.
        #[arg(long)]
        yes: bool,
    },
    /// Copy the job journal to DEST: a consistent snapshot, safe while steward runs.
    Backup {
        /// Where to write the copy (a new file).
        dest: PathBuf,
        /// Replace DEST if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup in place of the job journal, with steward stopped. The journal's
    /// files are moved to a replaced-TIME directory in the state directory, not deleted.
    Restore {
        /// The copy to restore, as written by `steward backup`.
        backup: PathBuf,
    },
    /// Move the jobs that have not finished from an SQLite journal into the PostgreSQL
    /// journal this configuration names, with steward stopped on the SQLite one. The
    /// SQLite journal is read, never changed; running it again moves only what is left.
    MigrateJournal {
        /// The SQLite journal (default: journal.db in [daemon] state_dir).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        /// Count what would move, and check that both journals can be reached; change
        /// nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Measure steward on this machine with a private daemon (nothing of the host's
    /// steward is touched); prints medians over several runs.
    Bench {
        /// A short run (smaller sizes, fewer runs), e.g. as a smoke test.
        #[arg(long)]
        quick: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        /// Run only these scenarios, e.g. --only 1,4.
        #[arg(long, value_delimiter = ',', value_name = "N,...")]
        only: Vec<u8>,
    },
    /// The minimal protocol worker used by `steward bench`.
    #[command(hide = true)]
    BenchWorker,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell). bash's and
    /// zsh's also complete the pool and queue names of the configuration file.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// The pool or queue names of the configuration file, one a line (for completion).
    #[command(hide = true)]
    CompleteNames {
        /// `pools` or `queues`.
        kind: String,
    },
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    config::parse_duration(s).and_then(crate::time::bounded)
}

impl Cli {
    /// The daemon's log output, when the command is `daemon`.
    pub fn daemon_log_format(&self) -> Option<LogFormat> {
        match self.command {
            Command::Daemon { log_format, .. } => Some(log_format),
            _ => None,
        }
    }
}

/// Run a command; `Ok` means exit code 0.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Daemon {
            accept_damaged_journal,
            ..
        } => crate::daemon::run(&cli.config, *accept_damaged_journal),
        Command::Restore { backup } => restore(&cli.config, backup),
        Command::CheckConfig => check_config(&cli.config),
        Command::Backup { dest, force } => backup(&cli.config, dest, *force),
        Command::MigrateJournal { from, dry_run } => {
            migrate::run(&cli.config, from.as_deref(), *dry_run)
        }
        Command::Bench { quick, json, only } => crate::bench::run(*quick, *json, only),
        Command::BenchWorker => crate::bench::worker::run().map_err(Failure::Failed),
        Command::Completions { shell } => {
            let mut cmd = completion_command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "steward", &mut script);
            out::write_bytes(&completion::with_names(*shell, script))
        }
        Command::CompleteNames { kind } => {
            let names = completion::names(&cli.config, kind);
            out::print(&names.iter().map(|n| format!("{n}\n")).collect::<String>())
        }
        _ => {
            // Client commands only need timers (their requests are blocking calls).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(client_command(&cli))
        }
    }
}

/// The command tree for completion scripts: the visible commands only (completions
/// would otherwise offer the internal `bench-worker`).
fn completion_command() -> clap::Command {
    let full = <Cli as clap::CommandFactory>::command();
    let mut cmd = clap::Command::new("steward")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .args(full.get_arguments().cloned());
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(sub.clone());
    }
    cmd
}

fn check_config(path: &Path) -> Result<(), Failure> {
    let c = config::load(path, &Environment::from_process()).map_err(Failure::Config)?;
    if !c.unmet.is_empty() {
        // The daemon would run with this file, but those workers would not start.
        return Err(Failure::Config(config::ConfigErrors {
            file: c.path.clone(),
            total: c.unmet.len(),
            errors: c.unmet,
        }));
    }
    // Limits are enforced only through cgroups: say which ones this machine cannot.
    let offered = crate::process::cgroup::machine_controllers();
    for p in c.pools.values() {
        let missing: Vec<String> = p
            .limits
            .needs()
            .into_iter()
            .filter_map(|(key, controller)| {
                let why = match &offered {
                    _ if !c.daemon.cgroups => "cgroups = \"off\" in [daemon]".to_string(),
                    None => "this machine has no cgroup v2".to_string(),
                    Some(list) if !list.iter().any(|x| x == controller) => {
                        format!("this machine offers no {controller} controller")
                    }
                    Some(_) => return None,
                };
                Some(format!("{key} ({why})"))
            })
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "{}: warning: pool {}: limits not enforced: {}",
                c.path.display(),
                p.name,
                missing.join(", ")
            );
        }
    }
    if c.pools
        .values()
        .any(|p| p.limits != config::Limits::default())
    {
        eprintln!(
            "{}: note: limits are enforced when steward runs as its systemd unit (Delegate=cpu memory pids); `steward status` shows what is enforced",
            c.path.display()
        );
    }
    let pools: Vec<String> = c
        .pools
        .values()
        .map(|p| format!("{} ×{}", p.name, p.instances))
        .collect();
    out::line(&format!(
        "{}: configuration is valid ({} pool{}{}{})",
        c.path.display(),
        pools.len(),
        if pools.len() == 1 { "" } else { "s" },
        if pools.is_empty() { "" } else { ": " },
        pools.join(", ")
    ))
}

/// The state directory the configuration names (or the default).
fn state_dir(config: &Path) -> PathBuf {
    let env = Environment::from_process();
    config::daemon_settings(config, &env)
        .or_else(|| config::daemon_settings(Path::new("/dev/null"), &env))
        .map(|d| d.state_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/steward"))
}

fn restore(config: &Path, backup: &Path) -> Result<(), Failure> {
    let r = crate::journal::restore(&state_dir(config), backup).map_err(Failure::Failed)?;
    out::line(&format!(
        "{} restored: {} jobs; the journal it replaced is in {}",
        backup.display(),
        r.jobs,
        r.aside.display()
    ))
}

fn backup(config: &Path, dest: &Path, force: bool) -> Result<(), Failure> {
    let r = crate::journal::backup(&state_dir(config), dest, force).map_err(Failure::Failed)?;
    out::line(&format!(
        "{}: {} jobs, {:.1} MiB, integrity checked",
        dest.display(),
        r.jobs,
        r.bytes as f64 / (1024.0 * 1024.0)
    ))
}

/// The control socket: `--socket`/`STEWARD_SOCKET`, else the configuration's, else the
/// default under `$RUNTIME_DIRECTORY` or /run/steward.
pub(crate) fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    let env = Environment::from_process();
    config::daemon_settings(&cli.config, &env)
        .or_else(|| config::daemon_settings(Path::new("/dev/null"), &env))
        .map(|d| d.socket)
        .unwrap_or_else(|| PathBuf::from("/run/steward/steward.sock"))
}

async fn client_command(cli: &Cli) -> Result<(), Failure> {
    let client = Client::with_timeout(
        &socket_path(cli),
        cli.request_timeout.max(Duration::from_millis(1)),
    );
    match &cli.command {
        Command::Status { json } => {
            let s: DaemonStatus = client.get("/v1/status").await?;
            if *json {
                let text =
                    serde_json::to_string_pretty(&s).map_err(|e| Failure::Failed(e.to_string()))?;
                out::line(&text)
            } else {
                out::print(&status::render(&s, status::colour_stdout()))
            }
        }
        Command::Reload => reload(&client).await,
        Command::Restart {
            pool,
            no_wait,
            timeout,
        } => restart(&client, pool, *no_wait, *timeout).await,
        Command::Submit {
            queue,
            payload,
            priority,
            delay,
            at,
            max_attempts,
            timeout,
            key,
            wait,
            json,
        } => {
            let args = jobs::SubmitArgs {
                queue: queue.clone(),
                payload: payload.clone(),
                priority: *priority,
                delay: *delay,
                at: at.clone(),
                max_attempts: *max_attempts,
                timeout: *timeout,
                key: key.clone(),
                wait: *wait,
                json: *json,
            };
            jobs::submit(&client, args).await
        }
        Command::Jobs {
            queue,
            pool,
            since,
            until,
            state,
            limit,
            before,
            payload,
            json,
        } => {
            let queues = match pool {
                Some(p) => pool_queues(&client, p).await?,
                None => queue.iter().cloned().collect(),
            };
            let args = jobs::ListArgs {
                queues,
                since: since.as_deref().map(when).transpose()?,
                until: until.as_deref().map(when).transpose()?,
                state: state.clone(),
                limit: usize::from(*limit),
                before: *before,
                payload: *payload,
                json: *json,
            };
            jobs::list(&client, args).await
        }
        Command::Job {
            id, follow: true, ..
        } => jobs::wait(&client, *id).await,
        Command::Job { id, json, .. } => jobs::show(&client, *id, *json).await,
        Command::Cancel {
            ids,
            queue,
            state,
            yes,
        }
        | Command::Retry {
            ids,
            queue,
            state,
            yes,
        } => {
            let s = jobs::Selection {
                ids: ids.clone(),
                queue: queue.clone(),
                state: state.clone(),
                yes: *yes,
            };
            let retry = matches!(cli.command, Command::Retry { .. });
            jobs::act(&client, s, retry).await
        }
        Command::Stop {
            pool,
            no_wait,
            timeout,
        }
        | Command::Start {
            pool,
            no_wait,
            timeout,
        }
        | Command::Scale {
            pool,
            no_wait,
            timeout,
            ..
        } => {
            let action = match &cli.command {
                Command::Stop { .. } => PoolAction::Stop,
                Command::Scale { instances, .. } => PoolAction::Scale(*instances),
                _ => PoolAction::Start,
            };
            let w = pools::Wait {
                no_wait: *no_wait,
                timeout: *timeout,
            };
            pools::operate(&client, pool, action, w).await
        }
        Command::Ps { json } => pools::ps(&client, *json).await,
        Command::Version => pools::version(&client, &socket_path(cli)).await,
        Command::Top { interval, count } => {
            top::run(&client, (*interval).max(Duration::from_millis(200)), *count).await
        }
        Command::Logs {
            pool,
            job,
            follow,
            lines,
            output,
            unit,
        } => {
            let a = pools::LogsArgs {
                pool: pool.clone(),
                job: *job,
                follow: *follow,
                lines: *lines,
                unit: unit.clone(),
                output: output.clone(),
            };
            pools::logs(&client, a).await
        }
        Command::Daemon { .. }
        | Command::CheckConfig
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Bench { .. }
        | Command::MigrateJournal { .. }
        | Command::BenchWorker
        | Command::Completions { .. }
        | Command::CompleteNames { .. } => Ok(()),
    }
}

/// `--since`/`--until`: a duration back from now, or a time; as RFC 3339.
fn when(text: &str) -> Result<String, Failure> {
    if let Some(ms) = crate::time::parse_rfc3339_ms(text) {
        return Ok(crate::time::rfc3339_ms(ms));
    }
    match config::parse_duration(text) {
        Ok(d) => {
            let back = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Ok(crate::time::rfc3339_ms(
                crate::time::now_ms().saturating_sub(back),
            ))
        }
        Err(_) => Err(Failure::Failed(format!(
            "`{text}` is neither a duration back from now (e.g. 1h, 30m, 2d) nor a time (e.g. 2026-12-03T10:00:00Z)"
        ))),
    }
}

/// The queues a pool takes jobs from, as the daemon says.
async fn pool_queues(client: &Client, pool: &str) -> Result<Vec<String>, Failure> {
    let s: DaemonStatus = client.get("/v1/status").await?;
    let Some(p) = s.pools.iter().find(|p| p.name == pool) else {
        return Err(pools::no_such_pool(pool, &s));
    };
    if p.queues.is_empty() {
        return Err(Failure::Failed(format!(
            "pool {pool} takes no jobs (it has no queues)"
        )));
    }
    Ok(p.queues.clone())
}

async fn reload(client: &Client) -> Result<(), Failure> {
    match client
        .call::<ReloadReport>(Method::POST, "/v1/reload", None::<&()>)
        .await
    {
        Ok(r) => out::line(&r.summary),
        Err(ClientError::Api { body, .. }) => match serde_json::from_slice::<ReloadReport>(&body) {
            Ok(r) => {
                let mut msg = r.summary;
                for e in &r.errors {
                    msg.push_str("\n  ");
                    msg.push_str(e);
                }
                Err(Failure::InvalidConfig(msg))
            }
            Err(_) => Err(Failure::Failed(
                "reload failed; see journalctl -u steward".into(),
            )),
        },
        Err(e) => Err(e.into()),
    }
}

async fn restart(
    client: &Client,
    pool: &str,
    no_wait: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let m: Message = client
        .call(
            Method::POST,
            &format!("/v1/pools/{pool}/restart"),
            None::<&()>,
        )
        .await?;
    out::line(&m.message)?;
    if no_wait {
        return Ok(());
    }
    let begun = Instant::now();
    let mut target = None;
    let mut reported = std::collections::HashSet::new();
    loop {
        let s: DaemonStatus = client.get("/v1/status").await?;
        let Some(p) = s.pools.iter().find(|p| p.name == pool) else {
            return Err(Failure::Failed(format!(
                "pool {pool} disappeared while restarting (was it removed by a reload?)"
            )));
        };
        let generation = *target.get_or_insert(p.generation);
        for w in &p.workers {
            if w.generation >= generation && w.state == "running" && reported.insert(w.instance) {
                out::line(&format!(
                    "  {pool}/{} running (pid {})",
                    w.instance,
                    w.pid.map(|p| p.to_string()).unwrap_or_default()
                ))?;
            }
            if w.generation >= generation && matches!(w.state.as_str(), "failed" | "crash-looping")
            {
                return Err(Failure::Failed(format!(
                    "{pool}/{} is {} after the restart; the rest of the pool keeps its old workers. See: journalctl -u steward POOL={pool}",
                    w.instance, w.state
                )));
            }
        }
        let done = p.workers.iter().all(|w| {
            w.generation >= generation && matches!(w.state.as_str(), "running" | "stopped")
        });
        if done && p.workers.len() as u32 == p.instances {
            return out::line(&format!(
                "pool {pool} restarted: {}/{} workers running",
                p.running, p.instances
            ));
        }
        if begun.elapsed() > timeout {
            return Err(Failure::Failed(format!(
                "pool {pool} did not finish restarting within {}; see `steward status`",
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_argument_and_option_says_what_it_is() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for arg in sub.get_arguments() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !help.trim().is_empty(),
                    "`steward {} {}` has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn log_format_is_an_option_of_the_daemon_only() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let has = sub.get_arguments().any(|a| a.get_id() == "log_format");
            assert_eq!(has, sub.get_name() == "daemon", "{}", sub.get_name());
        }
        assert!(cmd.get_arguments().all(|a| a.get_id() != "log_format"));
    }

    #[test]
    fn completions_offer_visible_commands_and_the_states() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut completion_command(),
            "steward",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(!script.contains("bench-worker"), "internal command offered");
        assert!(script.contains("submit") && script.contains("backup"));
        assert!(
            script.contains("queued running succeeded failed cancelled"),
            "--state does not complete its values"
        );
    }
}
