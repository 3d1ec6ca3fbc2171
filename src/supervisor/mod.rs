//! The supervisor loop: the one task that owns all live state.
//!
//! Pools, worker slots, pids and timers live here and nowhere else. Everything that
//! happens reaches the loop as an event (a child exited, a spawn finished, a signal, a
//! control request, a timer) and the loop answers with effects (spawn, signal a process
//! group, notify systemd). Each slot's lifecycle is a state machine ([`worker`]; exec
//! runs: [`exec_run`]) whose transitions are pure; this module carries out the effects
//! they ask for. The restart decisions themselves are in [`policy`].
//!
//! A worker *slot* is one instance of a pool (`web/0`, `web/1`, ...). A slot outlives the
//! processes it runs: it is started, exits, backs off and is started again.

mod dispatch;
mod exec;
mod exec_probe;
mod exec_run;
mod health;
mod held;
mod operator;
pub mod policy;
mod requests;
mod resources;
mod worker;
mod worker_io;
mod worker_notify;

pub use requests::{PoolAction, Reply, Request, RequestRx, RequestTx};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{
    DaemonStatus, JournalStatus, LastExit, PoolStatus, QueueStatus, ReloadReport, WorkerStatus,
};
use crate::config::{self, Config, ConfigErrors, Environment, PoolSpec};
use crate::journal::{Claimed, Finished, Journal, JournalError};
use crate::logging::{Capture, JobLines, Origin, Stream, WorkerLog};
use crate::notify::Notifier;
use crate::process::{self, Child, Spawner};
use crate::protocol::FromWorker;
use crate::time::after;
use held::Held;
use policy::{AfterExit, Exit};
use worker::{Effect, Input, KillReason, Retire, Rules, RunEnded, Worker};

/// After a forced stop (second SIGTERM), how long to wait for the kernel to deliver the
/// last exits before leaving anyway.
const FORCED_GRACE: Duration = Duration::from_secs(3);
/// How often `EXTEND_TIMEOUT_USEC` is sent while stopping.
const EXTEND_EVERY: Duration = Duration::from_secs(5);
/// How often finished jobs past their retention are pruned, at most (shorter retentions
/// are pruned more often: every half retention, but not more than once a second).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most events handled in one turn of the loop before timers, restarts and dispatch run.
const EVENTS_PER_TURN: usize = 256;
/// Most control requests handled in one turn.
const REQUESTS_PER_TURN: usize = 16;
/// How long after the last such failure `/health` still reports it.
const SHORTAGE_SHOWN: Duration = Duration::from_secs(10);
/// How often statuses are published and the periodic reports made.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

fn prune_every(config: &Config) -> Duration {
    config
        .queues
        .values()
        .flat_map(|q| [q.retention_succeeded, q.retention_failed])
        .map(|r| r / 2)
        .min()
        .unwrap_or(PRUNE_EVERY)
        .clamp(Duration::from_secs(1), PRUNE_EVERY)
}

type SlotId = u64;

struct Slot {
    pool: String,
    index: u32,
    /// The spec this slot's process was started with.
    spec: Arc<PoolSpec>,
    generation: u64,
    /// The slot's lifecycle: its state, backoff level and what happens once it stops.
    run: Worker,
    restarts: u64,
    ever_started: bool,
    last_exit: Option<LastExit>,
    reason: Option<String>,
    /// Protocol workers: our side of the worker's socket.
    conn: Option<worker_io::Conn>,
    /// Our end of the socket between fork and the spawn result.
    pending_conn: Option<std::os::unix::net::UnixStream>,
    /// Jobs held, by id.
    held: BTreeMap<i64, Held>,
    /// Jobs asked of the journal and not answered yet.
    claiming: usize,
    /// When the loop last handled a line from the worker (its process start before the
    /// first one). Each held job's lease runs from the later of this and its dispatch.
    last_heard: Instant,
    /// Lines of this worker that steward rejects are answered and logged at most this
    /// often; the rest are counted and reported every ten seconds.
    rejects: policy::RateLimit,
    /// The job whose output this worker's log lines belong to (0: none or several).
    current_job: Arc<AtomicI64>,
    /// The current run's last stderr output, and word when its stderr closed.
    stderr: Option<(Arc<Mutex<Capture>>, oneshot::Receiver<()>)>,
    /// Counts the runs that ended, so that a late stderr tail goes to its own exit.
    exits: u64,
    /// When this run reaches the pool's `max_lifetime` (less its share of jitter), or
    /// now once its memory passed `recycle_above`.
    retire_at: Option<Instant>,
    /// Why it is to be recycled, when it is for its memory.
    recycle: Option<String>,
    /// This run's probe results, and the task that probes it while it runs.
    health: health::Health,
    last_probe: health::LastProbe,
    prober: Option<tokio::task::JoinHandle<()>>,
    /// Restarted for its health and no probe has passed since: counts as unhealthy, and
    /// as the pool's one health restart under way.
    awaiting_health: bool,
    /// Set once the run counts as running: its prober moves from the start period's
    /// pace to `interval`.
    up_flag: Arc<std::sync::atomic::AtomicBool>,
    /// The notify socket of the run being started, and of the running one.
    pending_notify: Option<worker_notify::Bound>,
    notify: Option<worker_notify::Listener>,
    /// What the worker last said with `STATUS=`.
    notify_status: Option<String>,
    /// It sent `STOPPING=1` in this run.
    announced_stop: bool,
    /// The cgroup of the run being started or running, where workers have their own.
    cgroup: Option<process::cgroup::Group>,
}

impl Slot {
    /// Its state as shown: `unhealthy` for a running worker whose probes fail.
    fn shown_state(&self) -> &'static str {
        match self.run.state_name() {
            "running" if self.health.unhealthy => "unhealthy",
            s => s,
        }
    }

    /// Where its memory and CPU are read, while it has a process.
    fn usage_source(&self) -> Option<process::cgroup::UsageSource> {
        let pid = self.run.pid()?;
        Some(match &self.cgroup {
            Some(g) => process::cgroup::UsageSource::Cgroup(g.path().to_path_buf()),
            None => process::cgroup::UsageSource::Process(pid),
        })
    }

    fn stop_probing(&mut self) {
        if let Some(t) = self.prober.take() {
            t.abort();
        }
        self.health = health::Health::default();
        // A new cell: a probe of the old run that still ends writes to the old one.
        self.last_probe = health::LastProbe::default();
    }

    /// Start probing the worker `pid` that started at `started`: every 2 s (or
    /// `interval` if shorter) until it counts as running or its start period is over,
    /// then every `interval`. A passing probe that changes nothing (see
    /// [`health::quiet`]) is only counted and kept here: 1,000 workers probed every
    /// second do not wake the supervision loop 1,000 times a second.
    fn start_probing(
        &mut self,
        id: SlotId,
        pid: i32,
        events: mpsc::UnboundedSender<Event>,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        let (Some(target), Some(h)) = (self.spec.probe_for(self.index), self.spec.health.clone())
        else {
            return;
        };
        self.stop_probing();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.up_flag = up.clone();
        let start_end = after(Instant::now(), self.spec.start_period());
        let (last, pool) = (self.last_probe.clone(), self.pool.clone());
        self.prober = Some(tokio::spawn(async move {
            let mut passes = 0u32;
            let mut prober = crate::probe::Prober::new(target, h.keep_alive);
            let epoch = *PROBE_EPOCH.get_or_init(Instant::now);
            let mut due = Instant::now();
            loop {
                let starting =
                    !up.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < start_end;
                let pace = if starting {
                    h.interval.min(START_PROBE_EVERY)
                } else {
                    h.interval
                };
                due = health::next_due(due, pace, Instant::now());
                tokio::time::sleep_until(health::on_tick(due, epoch).into()).await;
                if let crate::probe::Target::Exec(_) = prober.target() {
                    // A command is started by the loop, which reaps every child.
                    if events.send(Event::ProbeDue { slot: id, pid }).is_err() {
                        return;
                    }
                    continue;
                }
                let outcome = prober.run(h.timeout).await;
                health::note(&metrics, &pool, &last, &outcome);
                let is_up = up.load(std::sync::atomic::Ordering::Relaxed);
                let quiet = health::quiet(outcome.ok, is_up, passes, h.successes);
                passes = if outcome.ok {
                    passes.saturating_add(1)
                } else {
                    0
                };
                if quiet {
                    continue;
                }
                if events
                    .send(Event::Probed {
                        slot: id,
                        pid,
                        outcome,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
}

/// Where the probe tick of every worker is counted from.
static PROBE_EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// How often a worker is probed during its start period.
const START_PROBE_EVERY: Duration = Duration::from_secs(2);

/// Lines of stderr told with an unexpected exit.
const EXIT_TAIL_LINES: usize = 20;
/// Bytes of a worker's stderr kept for its exit (its last 20 lines, mostly).
const EXIT_TAIL_BYTES: usize = 8 * 1024;
/// How long an exit's story waits for the worker's last stderr lines to be read (a
/// process it left behind may hold the pipe open longer).
const EXIT_TAIL_WAIT: Duration = Duration::from_millis(250);

/// `message`, then the last lines the worker wrote on stderr (or that it wrote none).
fn with_tail(message: &str, tail: &[String]) -> String {
    if tail.is_empty() {
        return format!("{message}. It wrote nothing on stderr.");
    }
    let mut s = format!("{message}. Its last lines on stderr:");
    for l in tail {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}

/// A worker's exit, at its level.
fn log_exit(level: tracing::Level, pool: &str, index: u32, message: &str) {
    match level {
        tracing::Level::ERROR => tracing::error!(POOL = %pool, INSTANCE = index, "{message}"),
        tracing::Level::WARN => tracing::warn!(POOL = %pool, INSTANCE = index, "{message}"),
        _ => tracing::info!(POOL = %pool, INSTANCE = index, "{message}"),
    }
}

impl Slot {
    fn name(&self) -> String {
        format!("{}/{}", self.pool, self.index)
    }
}

struct Pool {
    spec: Arc<PoolSpec>,
    generation: u64,
    /// Slots by instance index (worker pools).
    slots: BTreeMap<u32, SlotId>,
    removing: bool,
    /// Running job processes (exec pools).
    exec: exec::ExecLanes,
    /// How its workers' output lines are read; changed in place by a reload.
    rules: crate::logging::SharedRules,
    /// What `steward stop|start|scale` set.
    operator: operator::Override,
}

impl Pool {
    /// The workers (exec pools: job processes) it runs now: the configuration's,
    /// unless the operator stopped or scaled it.
    fn instances(&self) -> u32 {
        self.operator.instances(self.spec.instances)
    }
}

struct Shutdown {
    started: Instant,
    deadline: Instant,
    forced_at: Option<Instant>,
    next_extend: Instant,
}

/// Something that happened, delivered to the loop.
pub enum Event {
    Spawned {
        slot: SlotId,
        result: io::Result<Child>,
    },
    FromWorker {
        slot: SlotId,
        pid: i32,
        msg: Result<FromWorker, String>,
        /// The line's share of its worker's budget, given back once it is handled.
        budget: worker_io::Budget,
    },
    /// A worker sent this many invalid lines beyond what is answered and logged.
    InvalidLinesIgnored {
        slot: SlotId,
        pid: i32,
        ignored: u64,
    },
    Claimed {
        slot: SlotId,
        pid: i32,
        asked: usize,
        epochs: HashMap<String, u64>,
        result: Result<Claimed, JournalError>,
    },
    Finished {
        job: i64,
        queue: String,
        attempt: u32,
        kind: &'static str,
        result: Result<Finished, JournalError>,
    },
    /// Jobs were committed to `queue` (by a submit or a retry), due at `run_at_ms`.
    JobsAdded {
        queue: String,
        run_at_ms: i64,
    },
    ExecClaimed {
        pool: String,
        asked: usize,
        epochs: HashMap<String, u64>,
        result: Result<Claimed, JournalError>,
    },
    ExecSpawned {
        pool: String,
        lane: u32,
        job: i64,
        payload: String,
        result: io::Result<Child>,
    },
    ExecStreamClosed {
        pool: String,
        lane: u32,
        job: i64,
    },
    /// A health probe of the worker `pid` of a slot ended.
    Probed {
        slot: SlotId,
        pid: i32,
        outcome: crate::probe::Outcome,
    },
    /// A command probe of the worker `pid` of a slot is due.
    ProbeDue {
        slot: SlotId,
        pid: i32,
    },
    /// The spawner answered for a command probe of the worker `pid` of a slot.
    ProbeSpawned {
        slot: SlotId,
        pid: i32,
        result: io::Result<Child>,
    },
    /// A worker sent this on its notify socket.
    Notified {
        slot: SlotId,
        pid: i32,
        msg: worker_notify::Notice,
    },
    /// What a worker wrote last on stderr before its exit number `seq`.
    ExitTail {
        slot: SlotId,
        seq: u64,
        lines: Vec<String>,
    },
    /// The configuration file was read again (for a reload).
    ConfigRead {
        result: Box<Result<Config, ConfigErrors>>,
        reply: Option<oneshot::Sender<Reply>>,
    },
}

/// What the control server may tell the loop directly.
#[derive(Clone)]
pub struct Handle {
    events: mpsc::UnboundedSender<Event>,
    job_lines: Arc<JobLines>,
}

impl Handle {
    /// `jobs` jobs were submitted in one request: whether the line that says so fits the
    /// budget of job lines.
    pub fn log_submit(&self, jobs: u64) -> bool {
        self.job_lines.submit(jobs, Instant::now())
    }

    pub fn jobs_added(&self, queue: &str, run_at_ms: i64) {
        let _ = self.events.send(Event::JobsAdded {
            queue: queue.to_string(),
            run_at_ms,
        });
    }
}

/// How often a journal that keeps refusing claims is said again.
const CLAIM_TROUBLE_EVERY: Duration = Duration::from_secs(30);

pub struct Supervisor {
    config: Config,
    env: Environment,
    pools: BTreeMap<String, Pool>,
    slots: HashMap<SlotId, Slot>,
    pids: HashMap<i32, SlotId>,
    /// Exec-pool job processes: pid → (pool, lane).
    exec_pids: HashMap<i32, (String, u32)>,
    /// Exits of children whose spawn answer has not arrived yet.
    early_exits: process::EarlyExits,
    /// Health probe commands being started or running.
    probes: exec_probe::Probes,
    /// Spawns asked of the spawner and not answered yet.
    spawns_in_flight: usize,
    /// The last spawn that failed for want of resources, and when.
    shortage: Option<(String, Instant)>,
    /// Claims refused by the journal (out of reach), said once per [`CLAIM_TROUBLE_EVERY`].
    claim_trouble: policy::Repeated,
    next_id: SlotId,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    spawner: Spawner,
    worker_log: WorkerLog,
    notifier: Notifier,
    shutdown: Option<Shutdown>,
    started: Instant,
    started_wall: SystemTime,
    last_reload: Option<ReloadReport>,
    ready: bool,
    /// Slots of the initial configuration whose first spawn has not answered yet.
    initial_pending: HashSet<SlotId>,
    status_line: String,
    status_sent: String,
    journal: Journal,
    /// The configuration as the control server sees it (for submit validation).
    config_tx: watch::Sender<Arc<Config>>,
    hints: HashMap<String, dispatch::QueueHint>,
    next_sweep: Instant,
    next_prune: Instant,
    observed: crate::http::Observed,
    /// When jobs failed for good in the last hour (for the status line).
    failures: std::collections::VecDeque<Instant>,
    /// The budget of routine per-job log lines, shared with the control server.
    job_lines: Arc<JobLines>,
    /// When the count of job lines left out is next reported.
    next_lines_report: Instant,
    /// The lease in a shared journal could not be renewed in time: no jobs are taken,
    /// and what was held has been stopped.
    fenced: bool,
    /// Workers' and job processes' own cgroups.
    resources: resources::Resources,
}

fn rfc3339(t: SystemTime) -> String {
    crate::time::rfc3339_secs(t)
}

fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

impl Supervisor {
    pub fn new(
        config: Config,
        env: Environment,
        notifier: Notifier,
        journal: Journal,
        config_tx: watch::Sender<Arc<Config>>,
        observed: crate::http::Observed,
        cgroups: Result<process::cgroup::Tree, process::cgroup::Without>,
    ) -> io::Result<Supervisor> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let mut s = Supervisor {
            pools: BTreeMap::new(),
            slots: HashMap::new(),
            pids: HashMap::new(),
            exec_pids: HashMap::new(),
            early_exits: process::EarlyExits::default(),
            probes: exec_probe::Probes::default(),
            spawns_in_flight: 0,
            shortage: None,
            claim_trouble: policy::Repeated::new(CLAIM_TROUBLE_EVERY),
            next_id: 1,
            events_tx,
            events_rx,
            spawner: Spawner::start()?,
            worker_log: WorkerLog::start()?,
            notifier,
            shutdown: None,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            last_reload: None,
            ready: false,
            initial_pending: HashSet::new(),
            status_line: String::new(),
            status_sent: String::new(),
            journal,
            config_tx,
            hints: HashMap::new(),
            next_sweep: now,
            next_prune: now + prune_every(&config),
            observed,
            failures: std::collections::VecDeque::new(),
            job_lines: Arc::new(JobLines::new(config.log.max_job_lines, now)),
            next_lines_report: now + crate::logging::JOB_LINES_REPORT_EVERY,
            fenced: false,
            resources: resources::Resources::new(cgroups),
            env,
            config,
        };
        for (name, spec) in s.config.pools.clone() {
            s.resources.warn_unenforced(&spec);
            s.pools.insert(
                name,
                Pool {
                    rules: crate::logging::SharedRules::new(spec.line_rules()),
                    operator: operator::Override::default(),
                    spec: Arc::new(spec),
                    generation: 1,
                    slots: BTreeMap::new(),
                    removing: false,
                    exec: exec::ExecLanes::default(),
                },
            );
        }
        s.load_overrides();
        Ok(s)
    }

    pub fn handle(&self) -> Handle {
        Handle {
            events: self.events_tx.clone(),
            job_lines: self.job_lines.clone(),
        }
    }

    /// Run until stopped by SIGTERM/SIGINT. Sends `READY=1` once every pool's instances
    /// have been spawned.
    pub async fn run(mut self, mut requests: RequestRx) -> io::Result<()> {
        // tokio's signal streams (themselves built on signal-hook-registry) wake this loop
        // directly, with no thread of their own and no self-pipe to read.
        let mut sigchld = signal(SignalKind::child())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        // The watchdog and the housekeeping go by the clock, checked on every turn, not as
        // branches of the select below: a source that is always ready (a loud worker)
        // must not keep them waiting. The pings stop only when the loop stops.
        let wd_every = self.notifier.watchdog_interval();
        let mut next_ping = wd_every.map(|w| Instant::now() + w);
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
        // The run's lease in the journal lives while this loop turns.
        let mut next_renewal = Instant::now() + crate::journal::RENEW_EVERY;

        let now = Instant::now();
        self.reconcile(now);
        // Workers parked before their spawn (a required variable missing) are not waited
        // for.
        self.initial_pending = self
            .slots
            .iter()
            .filter(|(_, s)| s.run.state_name() != "failed")
            .map(|(id, _)| *id)
            .collect();
        tracing::info!(
            "steward {} starting: {} pools, {} workers, config {}",
            env!("CARGO_PKG_VERSION"),
            self.pools.len(),
            self.slots.len(),
            self.config.path.display()
        );

        loop {
            let mut wake = self.next_deadline(Instant::now()).min(next_housekeeping);
            if let Some(p) = next_ping {
                wake = wake.min(p);
            }
            let deadline = tokio::time::Instant::from_std(wake);
            tokio::select! {
                biased;
                _ = sigchld.recv() => self.reap(),
                _ = sigterm.recv() => self.begin_shutdown("SIGTERM"),
                _ = sigint.recv() => self.begin_shutdown("SIGINT"),
                _ = sighup.recv() => self.reload(None),
                Some(ev) = self.events_rx.recv() => self.on_event(ev),
                Some((req, reply)) = requests.recv() => self.on_request(req, reply),
                _ = tokio::time::sleep_until(deadline) => {}
            }
            // Take what else has arrived, a bounded amount of each source, before the
            // bookkeeping below, which then runs once for all of it (and frees slots
            // claim together), and before any timer judges a worker silent: a line
            // already here is not silence.
            for _ in 0..EVENTS_PER_TURN {
                match self.events_rx.try_recv() {
                    Ok(ev) => self.on_event(ev),
                    Err(_) => break,
                }
            }
            for _ in 0..REQUESTS_PER_TURN {
                match requests.try_recv() {
                    Ok((req, reply)) => self.on_request(req, reply),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if let (Some(every), Some(at)) = (wd_every, next_ping)
                && now >= at
            {
                self.notifier.watchdog();
                self.observed
                    .metrics
                    .watchdog_pings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                next_ping = Some(now + every);
            }
            if now >= next_housekeeping {
                next_housekeeping = now + HOUSEKEEPING_EVERY;
                // A safety net for coalesced SIGCHLDs.
                self.reap();
                self.resources.tick(now);
                self.check_recycling(now);
                self.publish_status();
                self.publish_snapshot();
                self.report_job_lines();
            }
            if now >= next_renewal {
                next_renewal = now + crate::journal::RENEW_EVERY;
                self.journal.renew();
            }
            self.observed.turned();
            self.fence(now);
            self.on_timers(now);
            self.reconcile(now);
            self.dispatch(now);
            self.dispatch_exec();
            if now >= self.next_prune {
                self.next_prune = now + prune_every(&self.config);
                self.prune();
            }
            if !self.ready && self.initial_pending.is_empty() {
                self.ready = true;
                self.update_status_line();
                // Logged before READY=1 goes out, so that the journal shows it before
                // systemd's "Started" line, which READY=1 causes.
                tracing::info!("steward is ready: {}", self.status_line);
                self.notifier.ready(&self.status_line);
                self.status_sent = self.status_line.clone();
                self.publish_snapshot();
            }
            if self.finished(now) {
                break;
            }
        }
        self.resources.finish();
        let orphans = process::kill_adopted_orphans();
        if orphans > 0 {
            tracing::warn!("killed {orphans} leftover processes that workers had left behind");
        }
        tracing::info!("steward stopped: all workers are gone");
        Ok(())
    }

    /// Workers whose memory passed their pool's `recycle_above` are marked to be
    /// restarted gracefully, one at a time per pool (see `reconcile`).
    fn check_recycling(&mut self, now: Instant) {
        for s in self.slots.values_mut() {
            let (Some(limit), Some(g)) = (s.spec.limits.recycle_above, &s.cgroup) else {
                continue;
            };
            if s.recycle.is_some() || s.run.state_name() != "running" {
                continue;
            }
            let used = g.memory_current().unwrap_or(0);
            if used > limit {
                s.recycle = Some(format!(
                    "uses {} of memory, above its pool's recycle_above ({})",
                    config::human_size(used),
                    config::human_size(limit)
                ));
                s.retire_at = Some(now);
            }
        }
    }

    fn finished(&self, now: Instant) -> bool {
        let Some(sd) = &self.shutdown else {
            return false;
        };
        if self.slots.is_empty() && self.exec_running() == 0 && self.probes.running.is_empty() {
            return true;
        }
        if sd.forced_at.is_some_and(|f| now >= f + FORCED_GRACE) {
            tracing::error!(
                "{} workers did not go away after SIGKILL; exiting anyway",
                self.slots.len()
            );
            return true;
        }
        if now >= sd.deadline + FORCED_GRACE {
            tracing::error!(
                "{} workers did not go away after SIGKILL at the end of the stop budget; exiting anyway",
                self.slots.len()
            );
            return true;
        }
        false
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = now + Duration::from_secs(3600);
        for s in self.slots.values() {
            let facts = self.facts(s, now);
            for t in [s.run.deadline(&facts, now), held::deadline(&s.held)]
                .into_iter()
                .flatten()
            {
                next = next.min(t);
            }
        }
        if let Some(t) = self.exec_deadline() {
            next = next.min(t);
        }
        if let Some(t) = self.probe_deadline() {
            next = next.min(t);
        }
        for h in self.hints.values() {
            if let Some(t) = h.due_at {
                next = next.min(t);
            }
        }
        if self.shutdown.is_none() && self.slots.values().any(|s| s.spec.is_protocol()) {
            next = next.min(self.next_sweep);
        }
        next = next.min(self.next_prune);
        if let Some(sd) = &self.shutdown {
            next = next.min(sd.next_extend).min(sd.deadline + FORCED_GRACE);
            if let Some(f) = sd.forced_at {
                next = next.min(f + FORCED_GRACE);
            }
        }
        next.max(now)
    }

    // ----------------------------------------------------------------- events

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Spawned { slot, result } => self.on_spawned(slot, result),
            Event::FromWorker {
                slot,
                pid,
                msg,
                budget,
            } => {
                self.on_worker_line(slot, pid, msg);
                drop(budget);
            }
            Event::ExitTail { slot, seq, lines } => self.exit_tail(slot, seq, lines),
            Event::Probed { slot, pid, outcome } => self.probed(slot, pid, outcome),
            Event::Notified { slot, pid, msg } => self.notified(slot, pid, msg),
            Event::ProbeDue { slot, pid } => self.exec_probe_due(slot, pid),
            Event::ProbeSpawned { slot, pid, result } => self.probe_spawned(slot, pid, result),
            Event::InvalidLinesIgnored { slot, pid, ignored } => {
                self.invalid_lines_ignored(slot, pid, ignored)
            }
            Event::Claimed {
                slot,
                pid,
                asked,
                epochs,
                result,
            } => self.on_claimed(slot, pid, asked, epochs, result),
            Event::Finished {
                job,
                queue,
                attempt,
                kind,
                result,
            } => self.on_finished(job, queue, attempt, kind, result),
            Event::JobsAdded { queue, run_at_ms } => self.jobs_added(&queue, run_at_ms),
            Event::ExecClaimed {
                pool,
                asked,
                epochs,
                result,
            } => self.on_exec_claimed(pool, asked, epochs, result),
            Event::ExecSpawned {
                pool,
                lane,
                job,
                payload,
                result,
            } => self.on_exec_spawned(pool, lane, job, payload, result),
            Event::ExecStreamClosed { pool, lane, job } => {
                self.on_exec_stream_closed(pool, lane, job)
            }
            Event::ConfigRead { result, reply } => self.on_config_read(*result, reply),
        }
    }

    fn on_request(&mut self, req: Request, reply: oneshot::Sender<Reply>) {
        let answer = match req {
            Request::Status => Reply::Status(Box::new(self.snapshot())),
            Request::Reload => return self.reload(Some(reply)),
            Request::RestartPool(name) => Reply::Restart(self.restart_pool(&name)),
            Request::Pool(name, action) => Reply::Pool(self.operate(&name, action)),
            Request::Cancel(job) => return self.cancel_job(job, reply),
            #[cfg(debug_assertions)]
            Request::Stall(d) => {
                let _ = reply.send(Reply::Stalling);
                tracing::warn!(
                    "blocking the supervision loop for {} (debug route)",
                    human(d)
                );
                std::thread::sleep(d.min(Duration::from_secs(60)));
                return;
            }
        };
        let _ = reply.send(answer);
    }

    fn reap(&mut self) {
        let (pids, exec_pids, probes) = (&self.pids, &self.exec_pids, &self.probes.running);
        let exits = process::reap(|pid| {
            pids.contains_key(&pid) || exec_pids.contains_key(&pid) || probes.contains_key(&pid)
        });
        let now = Instant::now();
        for (pid, exit) in exits {
            if let Some(id) = self.pids.remove(&pid) {
                self.on_exit(id, exit, now);
            } else if let Some((pool, lane)) = self.exec_pids.remove(&pid) {
                self.on_exec_exit(&pool, lane, exit, now);
            } else if self.probes.running.contains_key(&pid) {
                self.probe_exited(pid, exit, now);
            } else {
                // Perhaps a child whose spawn result has not arrived yet.
                self.early_exits
                    .record(pid, exit, now, self.spawns_in_flight);
            }
        }
    }

    /// A spawn was asked of the spawner.
    fn spawn_asked(&mut self) {
        self.spawns_in_flight += 1;
    }

    /// A spawn's answer arrived; with none left in flight, no early exit can be claimed.
    fn spawn_answered(&mut self) {
        self.spawns_in_flight = self.spawns_in_flight.saturating_sub(1);
        self.early_exits.settle(self.spawns_in_flight);
    }

    fn on_spawned(&mut self, id: SlotId, result: io::Result<Child>) {
        let early = match &result {
            Ok(child) => self.early_exits.take(child.pid, child.began),
            Err(_) => None,
        };
        self.spawn_answered();
        self.initial_pending.remove(&id);
        let now = Instant::now();
        let shutdown = self.shutdown_deadline();
        let Some(slot) = self.slots.get_mut(&id) else {
            if let Ok(child) = result {
                let _ = process::signal_group(child.pid, Signal::SIGKILL);
            }
            return;
        };
        let child = match result {
            Ok(child) => child,
            Err(e) => return self.spawn_failed(id, e, now),
        };
        let pid = child.pid;
        slot.last_heard = child.started;
        if let Some(ours) = slot.pending_conn.take() {
            // A duplicate of our end, to look for unread input before judging the worker
            // silent; without it only what the reader took is seen.
            let probe = ours.try_clone().ok().map(OwnedFd::from);
            match ours
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(ours))
            {
                Ok(stream) => {
                    slot.conn = Some(worker_io::start(
                        stream,
                        probe,
                        id,
                        pid,
                        self.events_tx.clone(),
                    ))
                }
                Err(e) => tracing::error!("cannot use the socket of worker {}: {e}", slot.name()),
            }
        }
        slot.notify_status = None;
        slot.announced_stop = false;
        if let Some(bound) = slot.pending_notify.take() {
            match bound.start(id, pid, child.started, self.events_tx.clone()) {
                Ok(l) => slot.notify = Some(l),
                Err(e) => tracing::error!(
                    "cannot read the notify socket of worker {}: {e}",
                    slot.name()
                ),
            }
        }
        slot.start_probing(
            id,
            pid,
            self.events_tx.clone(),
            self.observed.metrics.clone(),
        );
        self.pids.insert(pid, id);
        let origin = Origin {
            pool: Arc::from(slot.pool.as_str()),
            instance: slot.index,
            pid,
            job: slot.current_job.clone(),
            rules: self
                .pools
                .get(&slot.pool)
                .map(|p| p.rules.clone())
                .unwrap_or_default(),
        };
        tracing::info!(POOL = %slot.pool, INSTANCE = slot.index, WORKER_PID = pid,
            "started worker {} (pid {pid}): {}", slot.name(), slot.spec.command.join(" "));
        self.worker_log
            .forward(child.stdout, origin.clone(), Stream::Stdout);
        let tail = Arc::new(Mutex::new(Capture::with_limit(EXIT_TAIL_BYTES)));
        let (closed_tx, closed) = oneshot::channel();
        self.worker_log.forward_with(
            child.stderr,
            origin,
            Stream::Stderr,
            Some(tail.clone()),
            Some(Box::new(move || {
                let _ = closed_tx.send(());
            })),
        );
        slot.stderr = Some((tail, closed));
        slot.recycle = None;
        slot.retire_at = slot.spec.max_lifetime.map(|l| {
            let share = l.mul_f64(0.1 * rand::random::<f64>());
            crate::time::after(now, l.saturating_sub(share))
        });
        let effects = slot.run.step(
            Input::Spawned {
                pid,
                started: child.started,
            },
            now,
            shutdown,
        );
        self.carry_out(id, effects, now, "");
        if let Some(exit) = early {
            self.pids.remove(&pid);
            self.on_exit(id, exit, now);
        }
    }

    /// A worker could not be started. For want of descriptors, processes or memory that
    /// is steward's trouble, not the worker's: it tries again shortly, its backoff level
    /// untouched, and `/health` says why. Anything else is an unstable exit.
    fn spawn_failed(&mut self, id: SlotId, e: io::Error, now: Instant) {
        self.initial_pending.remove(&id);
        let shortage = process::is_resource_shortage(&e);
        if shortage {
            self.short_of_resources(&e, now);
        }
        let shutdown = self.shutdown_deadline();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.pending_conn = None;
        slot.pending_notify = None;
        if let Some(g) = slot.cgroup.take() {
            self.resources.release(g, now);
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if shortage {
            let effects = slot.run.step(Input::ShortOfResources, now, shutdown);
            return self.carry_out(id, effects, now, &e.to_string());
        }
        tracing::error!(POOL = %slot.pool, INSTANCE = slot.index,
            "cannot start worker {}: {e} (command: {}); check the pool's command and working_dir",
            slot.name(), slot.spec.command.join(" "));
        let description = format!("could not start: {e}");
        self.after_run(id, Exit::Code(127), description, now);
    }

    /// Slot `id`'s worker lacks required variables: parked as failed, not started (a
    /// restart would only fail the same way).
    /// `missing`: the required variables it lacks, or why a credential could not be read.
    fn cannot_start(&mut self, id: SlotId, missing: Result<&[String], String>, now: Instant) {
        self.initial_pending.remove(&id);
        let shutdown = self.shutdown_deadline();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let (reason, then) = match missing {
            Ok(names) => (
                if let [one] = names {
                    format!("missing required environment variable {one}")
                } else {
                    format!("missing required environment variables {}", names.join(", "))
                },
                format!("set it in the pool's env or env_file, or in steward's environment, then `systemctl reload steward` (or `steward restart {}`)", slot.pool),
            ),
            Err(why) => (
                why,
                "systemd sets credentials up when the service starts: `systemctl restart steward` after changing LoadCredential=".to_string(),
            ),
        };
        tracing::error!(POOL = %slot.pool, INSTANCE = slot.index,
            "worker {} is not started: {reason}; {then}", slot.name());
        slot.reason = Some(reason);
        let effects = slot.run.step(Input::CannotStart, now, shutdown);
        self.carry_out(id, effects, now, "");
    }

    /// Remember that a spawn failed for want of resources, for `/health`.
    pub(super) fn short_of_resources(&mut self, e: &io::Error, now: Instant) {
        self.shortage = Some((
            format!(
                "cannot start processes: {e}; workers and jobs wait for it to pass (see LimitNOFILE= and TasksMax= of the unit)"
            ),
            now,
        ));
    }

    fn on_exit(&mut self, id: SlotId, exit: Exit, now: Instant) {
        let mut description = policy::describe_exit(exit);
        if let Some(slot) = self.slots.get_mut(&id)
            && let Some(g) = slot.cgroup.take()
        {
            let limits = slot.spec.limits.clone();
            let pool = slot.pool.clone();
            // Whatever is left of its tree (children that left its process group) goes
            // with it.
            let ended = self.resources.release(g, now);
            if let Some(oom) = ended.oom(&limits) {
                self.observed.metrics.worker_oom_killed(&pool);
                description = oom;
            }
        }
        self.after_run(id, exit, description, now);
    }

    /// A run of slot `id` is over, either because its process exited or because it
    /// could not be started at all.
    fn after_run(&mut self, id: SlotId, exit: Exit, description: String, now: Instant) {
        let shutdown = self.shutdown_deadline();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let jitter = rand::random::<f64>();
        let effects = slot.run.step(Input::Exited { exit, jitter }, now, shutdown);
        self.carry_out(id, effects, now, &description);
    }

    /// With a journal shared by several hosts: once this daemon's lease may run out
    /// (its renewals have not landed for the lease's ttl less a margin), it takes no jobs
    /// and kills what holds jobs, so that nothing it ran is still running when another
    /// host takes the jobs back. It takes jobs again once a renewal lands.
    fn fence(&mut self, now: Instant) {
        let Some(until) = self.journal.stats().lease_valid_until else {
            return;
        };
        let fenced = now >= until;
        if fenced == self.fenced {
            return;
        }
        self.fenced = fenced;
        if !fenced {
            tracing::info!("the lease in the shared journal is renewed again: taking jobs again");
            return;
        }
        let holding: Vec<SlotId> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.held.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let exec = self.exec_running();
        tracing::error!(
            "cannot renew this host's lease in the shared journal (the database has been out of reach for {}s or more): taking no jobs, and killing {} workers and {exec} job processes that hold jobs, so that no job runs twice when another host takes them back",
            (crate::journal::postgres::store::HOST_TTL
                - crate::journal::postgres::store::FENCE_MARGIN)
                .as_secs(),
            holding.len()
        );
        let shutdown = self.shutdown_deadline();
        for id in holding {
            if let Some(slot) = self.slots.get_mut(&id) {
                let effects = slot.run.step(Input::Fence, now, shutdown);
                self.carry_out(id, effects, now, "");
            }
        }
        self.kill_exec_runs();
    }

    /// The end of the stop budget, while steward stops.
    fn shutdown_deadline(&self) -> Option<Instant> {
        self.shutdown.as_ref().map(|s| s.deadline)
    }

    /// Carry out what slot `id`'s machine asked for. `detail`: what the input was about
    /// (the exit's description, the error of a spawn), for the log.
    fn carry_out(&mut self, id: SlotId, effects: Vec<Effect>, now: Instant, detail: &str) {
        for effect in effects {
            let Some(slot) = self.slots.get_mut(&id) else {
                return;
            };
            let (name, pool, index) = (slot.name(), slot.pool.clone(), slot.index);
            match effect {
                Effect::Spawn => self.spawn_slot(id),
                Effect::Signal { pid, kill_at } => {
                    let sig = slot.spec.stop_signal;
                    let main_only = slot.spec.kill_mode == config::KillMode::Main;
                    tracing::info!(POOL = %pool, INSTANCE = index,
                        "stopping worker {name} (pid {pid}) with {}{}; SIGKILL in {} if it is still there",
                        sig.as_str(),
                        if main_only { " to its main process only (kill_mode = \"main\")" } else { "" },
                        human(kill_at.saturating_duration_since(now)));
                    let sent = if main_only {
                        process::signal_process(pid, sig)
                    } else {
                        process::signal_group(pid, sig)
                    };
                    if let Err(e) = sent {
                        tracing::warn!("cannot signal worker {name} (pid {pid}): {e}");
                    }
                }
                Effect::Escalate { pid, waited } => {
                    tracing::warn!(POOL = %pool, INSTANCE = index,
                        "worker {name} (pid {pid}) did not exit {} after {}; sending SIGKILL to its process group",
                        human(waited), slot.spec.stop_signal.as_str());
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                }
                Effect::Kill { pid } => {
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                }
                Effect::KillFor { pid, why } => {
                    let message = match why {
                        KillReason::StartTimeout => match slot.spec.ready {
                            config::Readiness::Notify => format!(
                                "did not send READY=1 on its NOTIFY_SOCKET within {} (start_timeout)",
                                human(slot.spec.start_timeout)
                            ),
                            config::Readiness::Health => format!(
                                "passed no health probe within {} (start_timeout)",
                                human(slot.spec.start_timeout)
                            ),
                            _ => format!(
                                "did not send {{\"type\":\"ready\"}} within {} (start_timeout)",
                                human(slot.spec.start_timeout)
                            ),
                        },
                        KillReason::Watchdog {
                            period,
                            triggered: false,
                        } => format!(
                            "sent no WATCHDOG=1 for {} (watchdog): it is taken as hung",
                            human(period)
                        ),
                        KillReason::Watchdog {
                            triggered: true, ..
                        } => "sent WATCHDOG=trigger".to_string(),
                        KillReason::Hung { lease } => {
                            format!("held jobs but sent nothing for {} (lease)", human(lease))
                        }
                        KillReason::JobTimeout(job) | KillReason::Cancelled(job) => format!(
                            "did not give up job {job} within {}s of `cancel`",
                            held::CANCEL_GRACE.as_secs()
                        ),
                        KillReason::Unhealthy => "failed its health probes".to_string(),
                        KillReason::Fenced => format!(
                            "holds jobs {:?}, and steward cannot renew its lease in the shared journal",
                            slot.held.keys().collect::<Vec<_>>()
                        ),
                    };
                    tracing::error!(POOL = %pool, INSTANCE = index, WORKER_PID = pid,
                        "worker {name} (pid {pid}) {message}; killing it");
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                }
                Effect::Drain { until } => {
                    tracing::info!(POOL = %pool, INSTANCE = index,
                        "draining worker {name}: waiting up to {} for its {} jobs before stopping it",
                        human(until.saturating_duration_since(now)), slot.held.len());
                    if let Some(c) = &slot.conn {
                        c.send(crate::protocol::drain_line());
                    }
                }
                Effect::Up { pid } => {
                    slot.up_flag
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if slot.spec.is_protocol() {
                        tracing::info!(POOL = %pool, INSTANCE = index, WORKER_PID = pid,
                            "worker {name} is ready for jobs");
                    } else {
                        tracing::info!(POOL = %pool, INSTANCE = index, "worker {name} is running");
                    }
                }
                Effect::WaitForResources { retry_at } => {
                    let reason = format!("waiting for resources: {detail}");
                    if slot.reason.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(POOL = %pool, INSTANCE = index,
                            "cannot start worker {name}: {detail}; trying again every {} (the backoff level is not raised: this is not the worker's fault)",
                            human(retry_at.saturating_duration_since(now)));
                    }
                    slot.reason = Some(reason);
                }
                Effect::Exited(ended) => self.exited(id, ended, detail),
                Effect::Retire(retire) => self.finish_stop(id, retire),
            }
        }
    }

    /// A run is over: record and log it, and reclaim the jobs it held.
    fn exited(&mut self, id: SlotId, ended: RunEnded, description: &str) {
        let RunEnded {
            exit,
            pid,
            ran_for,
            deliberate,
            killed_for,
            next,
        } = ended;
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.stop_probing();
        slot.notify = None;
        slot.notify_status = None;
        let announced = std::mem::take(&mut slot.announced_stop);
        let announced_text;
        let description = if announced {
            announced_text = format!("{description} (it had sent STOPPING=1)");
            announced_text.as_str()
        } else {
            description
        };
        slot.last_exit = Some(LastExit {
            code: match exit {
                Exit::Code(c) => Some(c),
                Exit::Signal(_) => None,
            },
            signal: match exit {
                Exit::Signal(s) => Some(policy::signal_name(s)),
                Exit::Code(_) => None,
            },
            description: description.to_string(),
            at: rfc3339(SystemTime::now()),
            ran_secs: ran_for.as_secs_f64(),
            stderr_tail: None,
        });
        let name = slot.name();
        let (pool, index) = (slot.pool.clone(), slot.index);
        let restart = slot.spec.restart;
        let pid_s = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        self.reclaim_held(
            id,
            &format!("exited ({description})"),
            deliberate,
            killed_for,
        );
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        use tracing::Level;
        let (level, message) = match next {
            None => (
                Level::INFO,
                format!(
                    "worker {name}{pid_s} stopped: {description} after {}",
                    human(ran_for)
                ),
            ),
            Some(AfterExit::Restart {
                delay,
                level,
                crash_looping,
            }) => {
                if crash_looping {
                    (
                        Level::ERROR,
                        format!(
                            "worker {name}{pid_s} is crash-looping: {description} after {}, {level} unstable exits in a row; next restart in {}. Read its output with: journalctl -u steward POOL={pool}",
                            human(ran_for),
                            human(delay)
                        ),
                    )
                } else if exit.is_clean() {
                    (
                        Level::INFO,
                        format!(
                            "worker {name}{pid_s} exited cleanly after {}; restarting in {}",
                            human(ran_for),
                            human(delay)
                        ),
                    )
                } else if announced {
                    (
                        Level::INFO,
                        format!(
                            "worker {name}{pid_s} exited: {description} after {}; restarting in {}",
                            human(ran_for),
                            human(delay)
                        ),
                    )
                } else {
                    (
                        Level::WARN,
                        format!(
                            "worker {name}{pid_s} exited: {description} after {}; restarting in {} (unstable exits in a row: {level})",
                            human(ran_for),
                            human(delay)
                        ),
                    )
                }
            }
            Some(AfterExit::Stop { .. }) => {
                slot.reason = Some(format!(
                    "exited: {description}; restart = \"{}\"",
                    restart.as_str()
                ));
                (
                    Level::INFO,
                    format!(
                        "worker {name}{pid_s} exited: {description}; not restarted (restart = \"{}\")",
                        restart.as_str()
                    ),
                )
            }
            Some(AfterExit::Fail { reason, .. }) => {
                slot.reason = Some(reason.clone());
                (
                    Level::ERROR,
                    format!(
                        "worker {name}{pid_s} failed: {reason}; it will not be restarted until `steward restart {pool}` or a reload that changes the pool"
                    ),
                )
            }
        };
        slot.exits += 1;
        // An exit nobody asked for, and a quick or failing one: told with what the worker
        // last wrote on stderr, once that has been read.
        let unexpected =
            !deliberate && !announced && (!exit.is_clean() || ran_for < slot.spec.stable_after);
        match slot.stderr.take() {
            Some((tail, closed)) if unexpected => {
                let (tx, seq) = (self.events_tx.clone(), slot.exits);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(EXIT_TAIL_WAIT, closed).await;
                    let lines = tail
                        .lock()
                        .map(|c| c.last_lines(EXIT_TAIL_LINES))
                        .unwrap_or_default();
                    log_exit(level, &pool, index, &with_tail(&message, &lines));
                    let _ = tx.send(Event::ExitTail {
                        slot: id,
                        seq,
                        lines,
                    });
                });
            }
            _ => log_exit(level, &pool, index, &message),
        }
    }

    /// A probe of slot `id`'s worker `pid` ended: record it, and act on a change.
    fn probed(&mut self, id: SlotId, pid: i32, outcome: crate::probe::Outcome) {
        let now = Instant::now();
        let shutdown = self.shutdown_deadline();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let starting = match slot.run.state_name() {
            "starting" => true,
            "running" => false,
            _ => return,
        };
        if slot.run.pid() != Some(pid) {
            return;
        }
        let Some(spec) = slot.spec.health.clone() else {
            return;
        };
        if outcome.ok {
            slot.awaiting_health = false;
        }
        if starting {
            // Failures before it is up do not count; a success is its readiness when
            // `ready = "health"`.
            if outcome.ok {
                slot.health.passed = true;
                let effects = slot
                    .run
                    .step(Input::Ready(config::Readiness::Health), now, shutdown);
                self.carry_out(id, effects, now, "");
            }
            return;
        }
        // As with Docker's start period: it ends early at the first passing probe.
        let in_start_period = !slot.health.passed
            && slot
                .run
                .since()
                .is_some_and(|s| now < after(s, slot.spec.start_period()));
        if !outcome.ok && in_start_period {
            return;
        }
        let change = slot.health.record(&spec, outcome.ok);
        let (name, pool_name, index) = (slot.name(), slot.pool.clone(), slot.index);
        let failures = slot.health.failures;
        match change {
            health::Change::None => {}
            health::Change::Recovered => {
                tracing::info!(POOL = %pool_name, INSTANCE = index,
                    "worker {name} is healthy again ({})", outcome.detail);
            }
            health::Change::BecameUnhealthy => {
                let Some(pool) = self.pools.get(&pool_name) else {
                    return;
                };
                let others: Vec<&Slot> = pool
                    .slots
                    .values()
                    .filter(|i| **i != id)
                    .filter_map(|i| self.slots.get(i))
                    .collect();
                let unhealthy = 1 + others
                    .iter()
                    .filter(|s| s.health.unhealthy || s.awaiting_health)
                    .count() as u32;
                let restarting = others.iter().any(|s| s.awaiting_health);
                let last = match &outcome.snippet {
                    Some(body) => format!("{}: {}", outcome.detail, body.trim()),
                    None => outcome.detail.clone(),
                };
                match health::act(&spec, pool.instances(), unhealthy, restarting) {
                    health::Act::Restart => {
                        tracing::warn!(POOL = %pool_name, INSTANCE = index,
                            "worker {name} is unhealthy: {failures} health probes in a row failed (last: {last}); restarting it");
                        let shutdown = self.shutdown_deadline();
                        let Some(slot) = self.slots.get_mut(&id) else {
                            return;
                        };
                        slot.awaiting_health = true;
                        let drain =
                            slot.spec.is_protocol() && !slot.held.is_empty() && slot.conn.is_some();
                        let effects = slot.run.step(Input::Unhealthy { drain }, now, shutdown);
                        self.carry_out(id, effects, now, "");
                    }
                    health::Act::Mark(why) => {
                        tracing::warn!(POOL = %pool_name, INSTANCE = index,
                            "worker {name} is unhealthy: {failures} health probes in a row failed (last: {last}); left running: {why}");
                    }
                }
            }
        }
    }

    /// Slot `id`'s worker `pid` sent `msg` on its notify socket.
    fn notified(&mut self, id: SlotId, pid: i32, msg: worker_notify::Notice) {
        use worker_notify::Notice;
        let now = Instant::now();
        let shutdown = self.shutdown_deadline();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.run.pid() != Some(pid) {
            return;
        }
        let (name, pool, index) = (slot.name(), slot.pool.clone(), slot.index);
        let input = match msg {
            Notice::Ready => Input::Ready(config::Readiness::Notify),
            Notice::Status(text) => {
                slot.notify_status = Some(text);
                return;
            }
            Notice::Stopping => {
                if !slot.announced_stop {
                    tracing::info!(POOL = %pool, INSTANCE = index, WORKER_PID = pid,
                        "worker {name} says it is stopping (STOPPING=1): its exit is not counted as a crash");
                }
                slot.announced_stop = true;
                Input::Stopping
            }
            Notice::WatchdogTrigger => Input::WatchdogTrigger,
            Notice::ExtendTimeout(d) => {
                tracing::info!(POOL = %pool, INSTANCE = index, WORKER_PID = pid,
                    "worker {name} asks for {} more (EXTEND_TIMEOUT_USEC)", human(d));
                Input::Extend(d)
            }
            Notice::Dropped {
                over_limit,
                too_long,
                foreign,
            } => {
                let mut parts = Vec::new();
                if over_limit > 0 {
                    parts.push(format!(
                        "{over_limit} over the limit of {} a second",
                        worker_notify::NOTICES_PER_SECOND
                    ));
                }
                if too_long > 0 {
                    parts.push(format!(
                        "{too_long} longer than {} bytes",
                        worker_notify::MAX_DATAGRAM
                    ));
                }
                if foreign > 0 {
                    parts.push(format!(
                        "{foreign} from processes outside its process group"
                    ));
                }
                tracing::warn!(POOL = %pool, INSTANCE = index, WORKER_PID = pid,
                    "notify messages of worker {name} ignored in the last 10s: {}", parts.join(", "));
                return;
            }
        };
        let effects = slot.run.step(input, now, shutdown);
        self.carry_out(id, effects, now, "");
    }

    /// The stderr lines of a slot's exit, once read: kept with its last exit.
    fn exit_tail(&mut self, id: SlotId, seq: u64, lines: Vec<String>) {
        if let Some(slot) = self.slots.get_mut(&id)
            && slot.exits == seq
            && let Some(e) = &mut slot.last_exit
        {
            e.stderr_tail = Some(lines);
        }
    }

    // ----------------------------------------------------------------- timers

    /// Act on every deadline that has come: each slot's machine is ticked only when its
    /// own deadline (derived from its state) has passed.
    fn on_timers(&mut self, now: Instant) {
        let shutdown = self.shutdown_deadline();
        let ids: Vec<SlotId> = self.slots.keys().copied().collect();
        for id in ids {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            if held::deadline(&slot.held).is_some_and(|t| now >= t) {
                self.job_timers(id, now);
            }
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            let facts = self.facts(slot, now);
            if slot.run.deadline(&facts, now).is_none_or(|t| now < t) {
                continue;
            }
            let facts = self.judged_facts(id, now);
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let effects = slot.run.step(Input::Tick(facts), now, shutdown);
            self.carry_out(id, effects, now, "");
        }
        self.exec_timers(now);
        self.probe_timers(now);
        if let Some(sd) = &mut self.shutdown
            && now >= sd.next_extend
        {
            sd.next_extend = now + EXTEND_EVERY;
            let left = sd.deadline.saturating_duration_since(now) + Duration::from_secs(10);
            self.notifier.extend_timeout(left);
        }
    }

    // ----------------------------------------------------------------- actions

    fn new_slot(&mut self, pool_name: &str, index: u32) -> Option<SlotId> {
        let pool = self.pools.get_mut(pool_name)?;
        let id = self.next_id;
        self.next_id += 1;
        pool.slots.insert(index, id);
        self.slots.insert(
            id,
            Slot {
                pool: pool_name.to_string(),
                index,
                spec: pool.spec.clone(),
                generation: pool.generation,
                run: Worker::new(Rules::of(&pool.spec)),
                restarts: 0,
                ever_started: false,
                last_exit: None,
                reason: None,
                conn: None,
                pending_conn: None,
                held: BTreeMap::new(),
                claiming: 0,
                last_heard: Instant::now(),
                rejects: policy::RateLimit::new(worker_io::INVALID_PER_SECOND, Instant::now()),
                current_job: Arc::new(AtomicI64::new(0)),
                stderr: None,
                exits: 0,
                retire_at: None,
                recycle: None,
                health: health::Health::default(),
                last_probe: health::LastProbe::default(),
                prober: None,
                awaiting_health: false,
                up_flag: Arc::default(),
                pending_notify: None,
                notify: None,
                notify_status: None,
                announced_stop: false,
                cgroup: None,
            },
        );
        Some(id)
    }

    fn spawn_slot(&mut self, id: SlotId) {
        let socket = self.config.daemon.socket.to_string_lossy().into_owned();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.ever_started {
            slot.restarts += 1;
            self.observed.metrics.worker_restarted(&slot.pool);
        }
        slot.ever_started = true;
        slot.run.spawning();
        slot.reason = None;
        slot.pending_conn = None;
        let spec = &slot.spec;
        let (command, own_env) = spec.for_instance(slot.index);
        let mut env = process::base_environment(&self.env.vars, spec.inherit_env);
        env.extend(own_env);
        env.push(("STEWARD_POOL".into(), slot.pool.clone()));
        env.push(("STEWARD_INSTANCE".into(), slot.index.to_string()));
        env.push(("STEWARD_SOCKET".into(), socket));
        if !spec.queues.is_empty() {
            // For worker libraries: how many jobs at once, and how often to heartbeat
            // (a third of the shortest lease of the pool's queues).
            env.push(("STEWARD_CONCURRENCY".into(), spec.concurrency.to_string()));
            let lease = spec
                .queues
                .iter()
                .filter_map(|q| self.config.queues.get(q))
                .map(|q| q.lease)
                .min()
                .unwrap_or(Duration::from_secs(60));
            let every = (lease / 3).max(Duration::from_millis(100));
            env.push(("STEWARD_HEARTBEAT_MS".into(), every.as_millis().to_string()));
        }
        for (var, cred) in &spec.credentials {
            match config::read_credential(self.env.credentials_directory.as_deref(), cred) {
                Ok(v) => env.push((var.clone(), v)),
                Err(why) => {
                    let why = format!("{why} (for {var}, env_from_credentials)");
                    return self.cannot_start(id, Err(why), Instant::now());
                }
            }
        }
        let missing = spec.missing_env(&env);
        if !missing.is_empty() {
            return self.cannot_start(id, Ok(&missing), Instant::now());
        }
        slot.pending_notify = None;
        if spec.has_notify_socket() {
            let path = worker_notify::path_for(&self.config.daemon.notify_dir(), id, slot.exits);
            match worker_notify::bind(&path) {
                Ok(bound) => {
                    env.push((
                        "NOTIFY_SOCKET".into(),
                        bound.path().to_string_lossy().into_owned(),
                    ));
                    slot.pending_notify = Some(bound);
                }
                Err(e) => {
                    let e = io::Error::new(
                        e.kind(),
                        format!("cannot make its notify socket {}: {e}", path.display()),
                    );
                    return self.spawn_failed(id, e, Instant::now());
                }
            }
            if let Some(w) = spec.watchdog {
                env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
            }
        }
        let mut inherit_fd: Option<OwnedFd> = None;
        let cwd = spec.working_dir.clone();
        if spec.is_protocol() {
            match std::os::unix::net::UnixStream::pair() {
                Ok((ours, theirs)) => {
                    env.push(("STEWARD_FD".into(), theirs.as_raw_fd().to_string()));
                    inherit_fd = Some(OwnedFd::from(theirs));
                    slot.pending_conn = Some(ours);
                }
                // Without its socket the worker cannot take jobs: not started.
                Err(e) => return self.spawn_failed(id, e, Instant::now()),
            }
        }
        if let Some(old) = slot.cgroup.take() {
            self.resources.release(old, Instant::now());
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let mut cgroup = match self.resources.create(&slot.spec, slot.index) {
            Ok(g) => g,
            Err(e) => {
                slot.pending_conn = None;
                return self.spawn_failed(id, e, Instant::now());
            }
        };
        let cgroup_procs = cgroup.as_mut().and_then(|g| g.take_procs());
        slot.cgroup = cgroup;
        let cmd = process::Command {
            program: command.first().cloned().unwrap_or_default().into(),
            args: command.iter().skip(1).cloned().collect(),
            env,
            cwd,
            inherit_fd,
            stdin_pipe: false,
            cgroup: cgroup_procs,
        };
        let tx = self.events_tx.clone();
        self.spawn_asked();
        self.spawner.spawn(cmd, move |result| {
            let _ = tx.send(Event::Spawned { slot: id, result });
        });
    }

    /// Ask slot `id` to stop; `retire` says what happens once it is gone. A protocol
    /// worker holding jobs is sent `drain` first and stopped once they are done (or at
    /// the end of its drain time: `stop_timeout`, cut short by the shutdown budget).
    fn request_stop(&mut self, id: SlotId, retire: Retire, now: Instant) {
        let shutdown = self.shutdown_deadline();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let drain = slot.spec.is_protocol() && !slot.held.is_empty() && slot.conn.is_some();
        let effects = slot.run.step(Input::Stop { retire, drain }, now, shutdown);
        self.carry_out(id, effects, now, "");
    }

    /// Slot `id` has no process any more and was asked to stop: apply `retire`.
    fn finish_stop(&mut self, id: SlotId, retire: Retire) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        match retire {
            Retire::Remove => {
                let (pool, index) = (slot.pool.clone(), slot.index);
                self.slots.remove(&id);
                if let Some(p) = self.pools.get_mut(&pool)
                    && p.slots.get(&index) == Some(&id)
                {
                    p.slots.remove(&index);
                }
            }
            Retire::Replace => {
                let Some(pool) = self.pools.get(&slot.pool) else {
                    return self.finish_stop(id, Retire::Remove);
                };
                slot.spec = pool.spec.clone();
                slot.generation = pool.generation;
                slot.run.replaced(Rules::of(&pool.spec));
                self.spawn_slot(id);
            }
            Retire::Keep => slot.reason = Some("stopped by steward".into()),
        }
    }

    /// Bring pools in line with what they should be: missing instances started, extra
    /// ones stopped, removed pools drained, and rolling restarts advanced one worker at
    /// a time (the next only once the previous one is running).
    fn reconcile(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            let Some(pool) = self.pools.get(&name) else {
                continue;
            };
            if pool.removing {
                let ids: Vec<SlotId> = pool.slots.values().copied().collect();
                if ids.is_empty() && pool.exec.runs.is_empty() {
                    self.pools.remove(&name);
                    tracing::info!(POOL = %name, "pool {name} removed: all its workers have stopped");
                    continue;
                }
                for id in ids {
                    self.request_stop(id, Retire::Remove, now);
                }
                continue;
            }
            if pool.spec.is_exec() {
                // Exec pools have lanes, not long-lived workers; workers left from before
                // a reload that switched the pool to exec mode are stopped.
                let ids: Vec<SlotId> = pool.slots.values().copied().collect();
                for id in ids {
                    self.request_stop(id, Retire::Remove, now);
                }
                continue;
            }
            let instances = pool.instances();
            let generation = pool.generation;
            let missing: Vec<u32> = (0..instances)
                .filter(|i| !pool.slots.contains_key(i))
                .collect();
            let extra: Vec<SlotId> = pool.slots.range(instances..).map(|(_, id)| *id).collect();
            for index in missing {
                if let Some(id) = self.new_slot(&name, index) {
                    self.spawn_slot(id);
                }
            }
            for id in extra {
                self.request_stop(id, Retire::Remove, now);
            }
            let Some(pool) = self.pools.get(&name) else {
                continue;
            };
            let mut busy = false;
            let mut outdated = None;
            for (&index, id) in &pool.slots {
                let Some(s) = self.slots.get(id) else {
                    continue;
                };
                if index >= instances {
                    continue;
                }
                if s.run.retire == Retire::Replace
                    || (s.generation == generation && s.run.coming_up())
                {
                    busy = true;
                }
                if s.generation < generation && s.run.retire == Retire::Keep && outdated.is_none() {
                    outdated = Some(*id);
                }
            }
            if let (false, Some(id)) = (busy, outdated) {
                self.request_stop(id, Retire::Replace, now);
                busy = true;
            }
            // Workers past their max_lifetime: replaced one at a time, like a rollout.
            if !busy {
                let Some(pool) = self.pools.get(&name) else {
                    continue;
                };
                let old = pool.slots.values().copied().find(|id| {
                    self.slots.get(id).is_some_and(|s| {
                        s.run.state_name() == "running"
                            && s.run.retire == Retire::Keep
                            && s.retire_at.is_some_and(|t| now >= t)
                    })
                });
                if let Some(id) = old
                    && let Some(s) = self.slots.get(&id)
                {
                    match &s.recycle {
                        Some(why) => tracing::info!(POOL = %s.pool, INSTANCE = s.index,
                            "worker {} {why}: restarting it gracefully", s.name()),
                        None => tracing::info!(POOL = %s.pool, INSTANCE = s.index,
                            "worker {} has run for its max_lifetime ({}): restarting it gracefully",
                            s.name(), human(s.spec.max_lifetime.unwrap_or_default())),
                    }
                    self.request_stop(id, Retire::Replace, now);
                }
            }
        }
    }

    fn begin_shutdown(&mut self, why: &str) {
        let now = Instant::now();
        self.kill_probes();
        if let Some(sd) = &mut self.shutdown {
            if sd.forced_at.is_none() {
                sd.forced_at = Some(now);
                tracing::warn!(
                    "second {why} while stopping: killing every worker and job process now"
                );
                let ids: Vec<SlotId> = self.slots.keys().copied().collect();
                for id in ids {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        let effects = slot.run.step(Input::Kill, now, Some(now));
                        self.carry_out(id, effects, now, "");
                    }
                }
                self.kill_exec_runs();
            }
            return;
        }
        let budget = self.config.daemon.shutdown_timeout;
        let live = self
            .slots
            .values()
            .filter(|s| s.run.pid().is_some())
            .count();
        tracing::info!(
            "received {why}: stopping {live} workers (budget {})",
            human(budget)
        );
        self.notifier.stopping(&format!("stopping {live} workers"));
        // Tell systemd the budget at once (it may be longer than TimeoutStopSec), then
        // keep extending while workers are still going.
        self.shutdown = Some(Shutdown {
            started: now,
            deadline: after(now, budget),
            forced_at: None,
            next_extend: now,
        });
        let ids: Vec<SlotId> = self.slots.keys().copied().collect();
        for id in ids {
            self.request_stop(id, Retire::Remove, now);
        }
    }

    /// Every ten seconds: how many routine job lines the budget left out, if any.
    fn report_job_lines(&mut self) {
        let now = Instant::now();
        if now < self.next_lines_report {
            return;
        }
        self.next_lines_report = now + crate::logging::JOB_LINES_REPORT_EVERY;
        self.report_rejects();
        let skipped = self.job_lines.take_skipped();
        if skipped.starts == 0 && skipped.submits == 0 {
            return;
        }
        let m = &self.observed.metrics;
        m.job_lines_skipped_starts
            .fetch_add(skipped.starts, std::sync::atomic::Ordering::Relaxed);
        m.job_lines_skipped_submits
            .fetch_add(skipped.submits, std::sync::atomic::Ordering::Relaxed);
        let limit = self.config.log.max_job_lines;
        let what = match (skipped.starts, skipped.submits) {
            (n, 0) => format!("the start and success of {n} jobs"),
            (0, m) => format!("the submit of {m} jobs"),
            (n, m) => format!("the start and success of {n} jobs and the submit of {m}"),
        };
        tracing::info!(
            SKIPPED_STARTS = skipped.starts,
            SKIPPED_SUBMITS = skipped.submits,
            "not logged in the last {}s: {what}, beyond log.max_job_lines = {limit} lines a second; \
             failures, retries and reclaims are always logged, and `steward job ID` shows any job's history",
            crate::logging::JOB_LINES_REPORT_EVERY.as_secs(),
        );
    }

    // ----------------------------------------------------------------- reload

    /// Read the configuration file again, off the loop (a file may be large, or on a slow
    /// disk); [`on_config_read`](Self::on_config_read) applies it.
    fn reload(&mut self, reply: Option<oneshot::Sender<Reply>>) {
        self.notifier.reloading();
        let path = self.config.path.clone();
        tracing::info!("reloading configuration from {}", path.display());
        let env = self.env.clone();
        let tx = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = Box::new(config::load(&path, &env));
            let _ = tx.send(Event::ConfigRead { result, reply });
        });
    }

    fn on_config_read(
        &mut self,
        result: Result<Config, ConfigErrors>,
        reply: Option<oneshot::Sender<Reply>>,
    ) {
        let path = self.config.path.clone();
        let report = match result {
            Err(errs) => {
                for e in &errs.errors {
                    tracing::error!("{e}");
                }
                if errs.total > errs.errors.len() {
                    tracing::error!(
                        "… and {} more errors in {}",
                        errs.total - errs.errors.len(),
                        path.display()
                    );
                }
                let summary = format!(
                    "reload failed: {} error{} in {}; still running the previous configuration",
                    errs.total,
                    if errs.total == 1 { "" } else { "s" },
                    path.display()
                );
                tracing::error!(
                    "{summary}. Fix the file and run `steward check-config`, then reload again"
                );
                ReloadReport {
                    ok: false,
                    at: rfc3339(SystemTime::now()),
                    summary,
                    errors: errs.errors.iter().map(|e| e.to_string()).collect(),
                }
            }
            Ok(new) => {
                let summary = self.apply(new);
                tracing::info!("configuration reloaded: {summary}");
                ReloadReport {
                    ok: true,
                    at: rfc3339(SystemTime::now()),
                    summary,
                    errors: Vec::new(),
                }
            }
        };
        self.last_reload = Some(report.clone());
        self.reconcile(Instant::now());
        self.update_status_line();
        self.notifier.ready(&self.status_line);
        self.status_sent = self.status_line.clone();
        if let Some(r) = reply {
            let _ = r.send(Reply::Reload(report));
        }
    }

    fn apply(&mut self, mut new: Config) -> String {
        self.job_lines.set_limit(new.log.max_job_lines);
        let old = &self.config.daemon;
        if new.daemon.socket != old.socket {
            tracing::warn!(
                "[daemon] socket changed from {} to {}; the new path takes effect when steward restarts",
                old.socket.display(),
                new.daemon.socket.display()
            );
            new.daemon.socket = old.socket.clone();
        }
        if new.daemon.state_dir != old.state_dir {
            tracing::warn!(
                "[daemon] state_dir changed from {} to {}; the new directory takes effect when steward restarts",
                old.state_dir.display(),
                new.daemon.state_dir.display()
            );
            new.daemon.state_dir = old.state_dir.clone();
        }
        if new.daemon.cgroups != old.cgroups {
            tracing::warn!(
                "[daemon] cgroups changed; workers' cgroups are set up at start, so the change takes effect when steward restarts"
            );
            new.daemon.cgroups = old.cgroups;
        }
        let (mut added, mut removed, mut changed, mut scaled, mut logs, mut same) =
            (vec![], vec![], vec![], vec![], vec![], 0);
        for (name, pool) in self.pools.iter_mut() {
            if !new.pools.contains_key(name) && !pool.removing {
                pool.removing = true;
                removed.push(name.clone());
            }
        }
        for (name, spec) in &new.pools {
            match self.pools.get_mut(name) {
                None => {
                    self.pools.insert(
                        name.clone(),
                        Pool {
                            rules: crate::logging::SharedRules::new(spec.line_rules()),
                            operator: operator::Override::default(),
                            spec: Arc::new(spec.clone()),
                            generation: 1,
                            slots: BTreeMap::new(),
                            removing: false,
                            exec: exec::ExecLanes::default(),
                        },
                    );
                    added.push(name.clone());
                }
                Some(pool) if pool.removing => {
                    pool.removing = false;
                    pool.rules.set(spec.line_rules());
                    pool.spec = Arc::new(spec.clone());
                    pool.generation += 1;
                    added.push(name.clone());
                }
                Some(pool) if *pool.spec == *spec => same += 1,
                Some(pool) if pool.spec.same_except_live(spec) => {
                    if pool.spec.instances != spec.instances {
                        scaled.push(format!("{name} {}→{}", pool.spec.instances, spec.instances));
                    } else {
                        logs.push(name.clone());
                    }
                    pool.rules.set(spec.line_rules());
                    pool.spec = Arc::new(spec.clone());
                }
                Some(pool) => {
                    pool.rules.set(spec.line_rules());
                    pool.spec = Arc::new(spec.clone());
                    pool.generation += 1;
                    changed.push(name.clone());
                }
            }
        }
        for name in &removed {
            self.resources.forget_pool(name, Instant::now());
        }
        self.settle_overrides();
        for spec in new.pools.values() {
            self.resources.warn_unenforced(spec);
        }
        self.config = new;
        self.config_tx.send_replace(Arc::new(self.config.clone()));
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", added.join(", ")));
        }
        if !removed.is_empty() {
            parts.push(format!("removed {}", removed.join(", ")));
        }
        if !changed.is_empty() {
            parts.push(format!("changed {} (rolling restart)", changed.join(", ")));
        }
        if !scaled.is_empty() {
            parts.push(format!("scaled {}", scaled.join(", ")));
        }
        if !logs.is_empty() {
            parts.push(format!(
                "log settings of {} (applied to running workers)",
                logs.join(", ")
            ));
        }
        parts.push(format!("{same} unchanged"));
        parts.join("; ")
    }

    /// Apply the overrides kept in the state directory to the configured pools.
    fn load_overrides(&mut self) {
        let (kept, warning) = operator::load(&self.config.daemon.state_dir);
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        for (name, o) in kept {
            match self.pools.get_mut(&name) {
                Some(pool) => {
                    pool.operator = o;
                    if let Some(said) = o.describe(&name, pool.spec.instances) {
                        tracing::info!(POOL = %name, "pool {name}: {said}");
                    }
                }
                None => tracing::info!(
                    "pool {name} was stopped or scaled by the operator but is no longer configured: forgotten"
                ),
            }
        }
        self.settle_overrides();
    }

    /// Drop what no longer applies (a scale the configuration's `instances` changed
    /// under, a pool that is gone) and keep the file in step.
    fn settle_overrides(&mut self) {
        for (name, pool) in self.pools.iter_mut() {
            if let Some(sc) = pool.operator.scale
                && sc.configured != pool.spec.instances
            {
                tracing::info!(POOL = %name,
                    "pool {name}: instances changed in the configuration ({}→{}), so the operator's scale to {} no longer applies",
                    sc.configured, pool.spec.instances, sc.instances);
                pool.operator.scale = None;
            }
        }
        self.save_overrides();
    }

    fn save_overrides(&self) {
        let all: BTreeMap<String, operator::Override> = self
            .pools
            .iter()
            .filter(|(_, p)| !p.removing)
            .map(|(n, p)| (n.clone(), p.operator))
            .collect();
        if let Err(e) = operator::save(&self.config.daemon.state_dir, &all) {
            tracing::warn!(
                "cannot keep the operator's pool settings in {}: {e}; they hold until the daemon restarts",
                self.config.daemon.state_dir.join(operator::FILE).display()
            );
        }
    }

    /// `steward stop|start|scale POOL`.
    fn operate(&mut self, name: &str, action: PoolAction) -> Result<String, String> {
        let Some(pool) = self.pools.get_mut(name).filter(|p| !p.removing) else {
            return Err(self.no_such_pool(name));
        };
        let configured = pool.spec.instances;
        let before = pool.instances();
        let said = match action {
            PoolAction::Stop if pool.operator.stopped => format!("pool {name} is already stopped"),
            PoolAction::Stop => {
                pool.operator.stopped = true;
                format!(
                    "stopping pool {name}: {before} workers, gracefully (`steward start {name}` starts it again)"
                )
            }
            PoolAction::Start if !pool.operator.stopped => {
                format!("pool {name} is not stopped ({before} of {before} wanted)")
            }
            PoolAction::Start => {
                pool.operator.stopped = false;
                format!("starting pool {name}: {} workers", pool.instances())
            }
            PoolAction::Scale(n) if n > operator::MAX_INSTANCES => {
                return Err(format!(
                    "cannot scale pool {name} to {n}: at most {} instances",
                    operator::MAX_INSTANCES
                ));
            }
            PoolAction::Scale(n) => {
                pool.operator.scale = (n != configured).then_some(operator::Scale {
                    instances: n,
                    configured,
                });
                if pool.operator.stopped {
                    format!(
                        "pool {name} will run {n} workers once started (it is stopped: `steward start {name}`)"
                    )
                } else if n == configured {
                    format!("scaling pool {name} {before}→{n} (as configured)")
                } else {
                    format!(
                        "scaling pool {name} {before}→{n} (the configuration says {configured}; kept across reloads and restarts until instances changes there)"
                    )
                }
            }
        };
        tracing::info!(POOL = %name, "{said}");
        self.save_overrides();
        self.reconcile(Instant::now());
        Ok(said)
    }

    fn no_such_pool(&self, name: &str) -> String {
        let known: Vec<&str> = self
            .pools
            .iter()
            .filter(|(_, p)| !p.removing)
            .map(|(n, _)| n.as_str())
            .collect();
        format!(
            "no pool named `{name}`; configured pools: {}",
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        )
    }

    fn restart_pool(&mut self, name: &str) -> Result<String, String> {
        match self.pools.get_mut(name) {
            Some(pool) if !pool.removing => {
                pool.generation += 1;
                let n = pool.instances();
                tracing::info!(POOL = %name, "restarting pool {name}: {n} workers, one at a time");
                self.reconcile(Instant::now());
                Ok(format!(
                    "restarting pool {name}: {n} workers, one at a time"
                ))
            }
            _ => Err(self.no_such_pool(name)),
        }
    }

    // ----------------------------------------------------------------- status

    fn update_status_line(&mut self) {
        if self.shutdown.is_some() {
            let live = self
                .slots
                .values()
                .filter(|s| s.run.pid().is_some())
                .count();
            self.status_line = format!("stopping: {live} workers left");
            return;
        }
        let (mut total, mut running, mut backing, mut looping, mut failed, mut unhealthy) =
            (0, 0, 0, 0, 0, 0);
        for pool in self
            .pools
            .values()
            .filter(|p| !p.removing && !p.spec.is_exec())
        {
            total += pool.instances();
            for id in pool.slots.values() {
                match self.slots.get(id).map(|s| s.shown_state()) {
                    Some("running") => running += 1,
                    Some("unhealthy") => unhealthy += 1,
                    Some("crash-looping") => looping += 1,
                    Some("backing-off") => backing += 1,
                    Some("failed") => failed += 1,
                    _ => {}
                }
            }
        }
        let mut line = format!("{running}/{total} workers up");
        if backing > 0 {
            line.push_str(&format!(", {backing} backing off"));
        }
        if looping > 0 {
            line.push_str(&format!(", {looping} crash-looping"));
        }
        if failed > 0 {
            line.push_str(&format!(", {failed} failed"));
        }
        if unhealthy > 0 {
            line.push_str(&format!(", {unhealthy} unhealthy"));
        }
        if !self.config.queues.is_empty() {
            let stats = self.journal.stats();
            let queued: u64 = stats.queues.values().map(|q| q.queued).sum();
            let running: u64 = stats.queues.values().map(|q| q.running).sum();
            let hour_ago = Instant::now().checked_sub(Duration::from_secs(3600));
            self.failures.retain(|t| hour_ago.is_none_or(|h| *t >= h));
            line.push_str(&format!(
                "; {queued} queued, {running} running; {} failed/h",
                self.failures.len()
            ));
            if stats.damaged.is_some() {
                line.push_str("; JOURNAL DAMAGED, NOT ACCEPTING JOBS");
            } else if stats.error.is_some() {
                line.push_str("; JOURNAL WRITE FAILING");
            }
        }
        if self.last_reload.as_ref().is_some_and(|r| !r.ok) {
            line = format!("reload failed, running previous config; {line}");
        }
        self.status_line = line;
    }

    fn publish_status(&mut self) {
        self.update_status_line();
        if self.ready && self.status_line != self.status_sent {
            self.notifier.status(&self.status_line);
            self.status_sent = self.status_line.clone();
        }
    }

    fn snapshot(&mut self) -> DaemonStatus {
        self.update_status_line();
        let now = Instant::now();
        let usage = |source: Option<process::cgroup::UsageSource>| {
            source.and_then(|s| process::cgroup::read_usage(&s))
        };
        let pools = self
            .pools
            .iter()
            .map(|(name, pool)| {
                let workers: Vec<WorkerStatus> = pool
                    .slots
                    .values()
                    .filter_map(|id| self.slots.get(id))
                    .map(|s| {
                        let used = usage(s.usage_source());
                        WorkerStatus {
                            instance: s.index,
                            state: s.shown_state().to_string(),
                            pid: s.run.pid(),
                            uptime_secs: s
                                .run
                                .since()
                                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                            restarts: s.restarts,
                            unstable_exits: s.run.level,
                            next_restart_in_secs: match s.run.phase {
                                worker::Phase::BackingOff { until, .. } => {
                                    Some(until.saturating_duration_since(now).as_secs_f64())
                                }
                                _ => None,
                            },
                            last_exit: s.last_exit.clone(),
                            reason: s.reason.clone(),
                            generation: s.generation,
                            jobs: s.held.keys().copied().collect(),
                            health: s.last_probe.lock().ok().and_then(|l| l.clone()).map(
                                |(ok, detail, ms, body)| crate::api::ProbeView {
                                    ok,
                                    detail,
                                    latency_ms: ms,
                                    body,
                                    failures: s.health.failures,
                                },
                            ),
                            status: s.notify_status.clone(),
                            memory_bytes: used.map(|u| u.0),
                            cpu_secs: used.map(|u| u.1),
                            cgroup: s.cgroup.as_ref().map(|g| g.path().display().to_string()),
                        }
                    })
                    .collect();
                let mut workers = workers;
                for (&lane, r) in &pool.exec.runs {
                    workers.push(WorkerStatus {
                        instance: lane,
                        state: r.run.state_name().to_string(),
                        pid: r.run.pid(),
                        uptime_secs: Some(
                            now.saturating_duration_since(r.run.started).as_secs_f64(),
                        ),
                        restarts: 0,
                        unstable_exits: 0,
                        next_restart_in_secs: None,
                        last_exit: None,
                        reason: None,
                        generation: pool.generation,
                        jobs: vec![r.job],
                        health: None,
                        status: None,
                        memory_bytes: None,
                        cpu_secs: None,
                        cgroup: r.cgroup.as_ref().map(|p| p.display().to_string()),
                    });
                }
                PoolStatus {
                    name: name.clone(),
                    mode: if pool.spec.is_exec() {
                        "exec"
                    } else {
                        "worker"
                    }
                    .to_string(),
                    command: pool.spec.command.clone(),
                    instances: if pool.removing { 0 } else { pool.instances() },
                    configured_instances: pool.spec.instances,
                    queues: pool.spec.queues.clone(),
                    operator: pool.operator.describe(name, pool.spec.instances),
                    running: workers.iter().filter(|w| w.state == "running").count() as u32,
                    generation: pool.generation,
                    rolling: workers.iter().any(|w| w.generation < pool.generation),
                    ready: if pool.spec.is_exec() {
                        String::new()
                    } else {
                        pool.spec.ready.as_str().to_string()
                    },
                    limits: pool.spec.limits.describe(),
                    limits_not_enforced: self.resources.unenforced(&pool.spec),
                    workers,
                }
            })
            .collect();
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: rfc3339(self.started_wall),
            uptime_secs: now.duration_since(self.started).as_secs(),
            config: self.config.path.display().to_string(),
            socket: self.config.daemon.socket.display().to_string(),
            state_dir: self.config.daemon.state_dir.display().to_string(),
            state: if self.shutdown.is_some() {
                "stopping"
            } else if self.ready {
                "running"
            } else {
                "starting"
            }
            .to_string(),
            status_line: self.status_line.clone(),
            last_reload: self.last_reload.clone(),
            pools,
            queues: self.queue_statuses(),
            recent_failures: Vec::new(),
            journal: Some(JournalStatus {
                path: self.journal.location(),
                size_bytes: self.journal.size_bytes(),
                error: self.journal.stats().problem(),
            }),
            cgroups: {
                let (enabled, detail) = self.resources.describe();
                Some(crate::api::CgroupsView { enabled, detail })
            },
        }
    }

    /// Publish what `/health` and `/metrics` read (they never wait on the loop).
    fn publish_snapshot(&self) {
        let pools = self
            .pools
            .iter()
            .filter(|(_, p)| !p.removing)
            .map(|(name, pool)| {
                // Exec pools have no long-lived workers to be ready: only their job
                // processes, counted as running.
                let mut h = crate::http::PoolHealth {
                    name: name.clone(),
                    instances: if pool.spec.is_exec() {
                        0
                    } else {
                        pool.instances()
                    },
                    running: pool.exec.runs.len() as u32,
                    ..Default::default()
                };
                if !pool.exec.runs.is_empty() {
                    h.states
                        .insert("running".into(), pool.exec.runs.len() as u64);
                }
                for s in pool.slots.values().filter_map(|id| self.slots.get(id)) {
                    let state = s.shown_state();
                    match state {
                        "running" => h.running += 1,
                        "crash-looping" => h.crash_looping += 1,
                        "failed" => {
                            h.failed += 1;
                            if h.failed_reason.is_none() {
                                h.failed_reason = s.reason.clone();
                            }
                        }
                        _ => {}
                    }
                    *h.states.entry(state.to_string()).or_default() += 1;
                }
                h
            })
            .collect();
        let trouble = self
            .shortage
            .as_ref()
            .filter(|(_, at)| at.elapsed() < SHORTAGE_SHOWN)
            .map(|(why, _)| why.clone())
            .into_iter()
            .collect();
        let usage = self
            .slots
            .values()
            .filter_map(|s| Some((s.pool.clone(), s.index, s.usage_source()?)))
            .collect();
        if let Ok(mut snap) = self.observed.snapshot.lock() {
            snap.pools = pools;
            snap.trouble = trouble;
            snap.usage = usage;
        }
    }

    fn queue_statuses(&self) -> Vec<QueueStatus> {
        let stats = self.journal.stats();
        let mut names: Vec<String> = self.config.queues.keys().cloned().collect();
        for q in stats.queues.keys() {
            if !names.contains(q) {
                names.push(q.clone());
            }
        }
        names
            .into_iter()
            .map(|name| {
                let counts = stats.queues.get(&name).copied().unwrap_or_default();
                let mut q = QueueStatus::new(name.clone(), counts);
                q.pools = self
                    .pools
                    .iter()
                    .filter(|(_, p)| !p.removing && p.spec.queues.contains(&name))
                    .map(|(n, _)| n.clone())
                    .collect();
                q
            })
            .collect()
    }
}
