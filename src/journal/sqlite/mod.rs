//! The job journal in SQLite (bundled), in WAL mode: the embedded default.
//!
//! One writer thread owns the read-write connection. Requests queue up in front of it
//! while a transaction is written and go into the next one together (group commit);
//! every caller is answered only after the commit that holds its change is durable (a
//! flusher thread syncs the log while the writer goes on, see `syncer.rs`), except leases,
//! which go out at commit. A separate read-only connection on its own thread serves
//! listings and job details, so reads never wait behind writes. Nothing here blocks the
//! supervisor loop: answers come back through callbacks.
//!
//! One daemon holds the journal (an exclusive lock on the file); every other run named in
//! it is over, so their leases are reclaimed when it opens.

mod damage;
pub mod export;
mod reader;
mod salvage;
mod schema;
mod syncer;
mod writer;

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension};

use super::{
    AttemptOutput, CancelResult, Claimed, Finished, JobFilter, JobStore, Journal, JournalError,
    Leased, NewJob, Overview, Page, Reclaimed, Reply, Stats, Submitted,
};
use crate::config::{RetryBackoff, Synchronous};
use crate::jobs::Outcome;
use crate::model::JobRecord;
use crate::time::now_ms;

pub(crate) enum Op {
    Submit {
        jobs: Vec<NewJob>,
        reply: Reply<Vec<Submitted>>,
    },
    Claim {
        queues: Vec<String>,
        n: usize,
        worker: String,
        pid: i32,
        reply: Reply<Claimed>,
    },
    Finish {
        id: i64,
        token: i64,
        outcome: Outcome,
        backoff: RetryBackoff,
        output: Option<Box<AttemptOutput>>,
        reply: Reply<Finished>,
    },
    Progress {
        id: i64,
        token: i64,
        progress: Option<f64>,
        message: Option<String>,
    },
    Cancel {
        id: i64,
        reply: Reply<CancelResult>,
    },
    Retry {
        id: i64,
        reply: Reply<Submitted>,
    },
    Prune {
        /// (queue, delete succeeded finished before, delete failed/cancelled finished before)
        rules: Vec<(String, i64, i64)>,
        reply: Reply<u64>,
    },
    /// Renew this run's lease.
    Renew,
}

/// The SQLite journal, as the daemon's [`Journal`] handle reaches it.
struct Sqlite {
    tx: mpsc::Sender<Op>,
    reader: reader::Reader,
    stats: Arc<Mutex<Stats>>,
    path: PathBuf,
}

/// Owns the writer thread and the lock file; dropping it after the last [`Journal`] lets
/// the writer finish every queued write.
pub struct JournalOwner {
    thread: Option<JoinHandle<()>>,
    /// Held until the daemon exits (see [`lock`]).
    _locks: [Flock<File>; 2],
}

/// Files a daemon creates in the state directory hold job payloads: only its owner may
/// read them, whatever the umask (SQLite gives the log and shared-memory files the mode
/// of the database file).
const JOURNAL_MODE: u32 = 0o600;

/// Make the state directory (0700 when steward creates it) and take the journal for this
/// daemon alone: an exclusive lock on `journal.lock`, which older versions lock, and on
/// `journal.db` itself, which no removed or replaced lock file can undo. Both are `flock`
/// locks; SQLite's own are `fcntl` locks, which they do not touch. Also returns the size
/// of `journal.db` as it was found (`None`: there was none), before it is created.
fn lock(state_dir: &Path) -> Result<([Flock<File>; 2], Option<u64>), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| {
            format!(
                "cannot create the state directory {}: {e}",
                state_dir.display()
            )
        })?;
    let file = Flock::lock(
        open_private(&state_dir.join("journal.lock"))?,
        FlockArg::LockExclusiveNonblock,
    )
    .map_err(|_| taken(state_dir))?;
    let db_path = state_dir.join("journal.db");
    let db_len = std::fs::metadata(&db_path).ok().map(|m| m.len());
    let db = lock_db(&db_path)?;
    for side in ["journal.db-wal", "journal.db-shm"] {
        let p = state_dir.join(side);
        if let Ok(f) = File::open(&p) {
            restrict(&f, &p)?;
        }
    }
    Ok(([db, file], db_len))
}

fn taken(state_dir: &Path) -> String {
    format!(
        "another steward is using the journal in {} (only one daemon may run per state_dir)",
        state_dir.display()
    )
}

/// Open (creating it if need be) a file of the journal, no more readable than it should be.
fn open_private(path: &Path) -> Result<File, String> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(JOURNAL_MODE)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    restrict(&f, path)?;
    Ok(f)
}

fn lock_db(path: &Path) -> Result<Flock<File>, String> {
    Flock::lock(open_private(path)?, FlockArg::LockExclusiveNonblock)
        .map_err(|_| taken(path.parent().unwrap_or(Path::new("."))))
}

/// No access for others than the owner and group (a journal made by an earlier version,
/// or by SQLite under a loose umask, may allow more).
fn restrict(f: &File, path: &Path) -> Result<(), String> {
    let mode = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o770))
            .map_err(|e| format!("cannot restrict the mode of {}: {e}", path.display()))?;
    }
    Ok(())
}

impl JournalOwner {
    /// Wait for every write sent so far to be committed (call after dropping all handles).
    pub fn close(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Settings of the writer's connection.
fn configure(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    let sync_mode = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync_mode}; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF;"
    ))?;
    // Plans that do not depend on the values bound to parameters. Without this, SQLite
    // re-prepares a statement whenever a bound value might change whether a partial index
    // applies, on every run of the hot statements, which cost a third of the writer's time.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Distinct priorities stepped through before [`earliest_run_at`] scans instead.
const PRIORITY_STEPS: usize = 64;

/// The earliest `run_at` of a due queued job of `queue` with `after < run_at <= until`.
///
/// Due queued jobs are in `jobs_dispatch` (queue, priority DESC, run_at, id), kept for
/// dispatch order. Within one priority it is ordered by run time, so this takes one seek
/// per distinct priority (most queues use one or two), and scans the queue's part of the
/// index only when it has more than [`PRIORITY_STEPS`] of them.
pub(super) fn earliest_run_at(
    conn: &Connection,
    queue: &str,
    after: i64,
    until: i64,
) -> rusqlite::Result<Option<i64>> {
    let mut next_priority = conn.prepare_cached(
        "SELECT priority FROM jobs INDEXED BY jobs_dispatch
         WHERE state = 'queued' AND delayed = 0 AND queue = ?1 AND priority <= ?2
         ORDER BY priority DESC LIMIT 1",
    )?;
    let mut earliest_at = conn.prepare_cached(
        "SELECT min(run_at) FROM jobs INDEXED BY jobs_dispatch
         WHERE state = 'queued' AND delayed = 0 AND queue = ?1 AND priority = ?2
           AND run_at > ?3 AND run_at <= ?4",
    )?;
    let mut best: Option<i64> = None;
    let mut at_most = i64::MAX;
    for _ in 0..PRIORITY_STEPS {
        let Some(p) = next_priority
            .query_row(rusqlite::params![queue, at_most], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(best);
        };
        let t: Option<i64> =
            earliest_at.query_row(rusqlite::params![queue, p, after, until], |r| r.get(0))?;
        best = match (best, t) {
            (Some(b), Some(t)) => Some(b.min(t)),
            (b, t) => b.or(t),
        };
        match p.checked_sub(1) {
            Some(lower) => at_most = lower,
            None => return Ok(best),
        }
    }
    conn.prepare_cached(
        "SELECT min(run_at) FROM jobs INDEXED BY jobs_dispatch
         WHERE state = 'queued' AND delayed = 0 AND queue = ?1 AND run_at > ?2 AND run_at <= ?3",
    )?
    .query_row(rusqlite::params![queue, after, until], |r| r.get(0))
}

/// The earliest run time of a delayed job of `queue` (one seek of `jobs_delayed`).
pub(super) fn next_delayed(conn: &Connection, queue: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT min(run_at) FROM jobs INDEXED BY jobs_delayed
         WHERE state = 'queued' AND delayed = 1 AND queue = ?1",
    )?
    .query_row(rusqlite::params![queue], |r| r.get(0))
}

/// The run time of the queued job of `queue` that has been due longest at `now`: a due
/// job, or a delayed one whose time has come and that no claim has promoted yet.
pub(super) fn due_longest(
    conn: &Connection,
    queue: &str,
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    let due = earliest_run_at(conn, queue, i64::MIN, now)?;
    let delayed = next_delayed(conn, queue)?.filter(|t| *t <= now);
    Ok(match (due, delayed) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// This machine, as leases name it: `/etc/machine-id`, else the host name.
fn host_id() -> String {
    ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Why the journal could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// It is damaged, and the daemon was not told to start anyway.
    Damaged(String),
    Failed(String),
}

impl From<String> for OpenError {
    fn from(s: String) -> Self {
        OpenError::Failed(s)
    }
}

/// How long the integrity check at start may take; a larger journal is checked the rest
/// of the way in the background while the daemon runs.
const START_CHECK: Duration = Duration::from_secs(10);

/// How far the check at start got.
enum Checked {
    Whole,
    Unfinished,
}

/// SQLite's `quick_check` (every page and row readable and well formed; no index
/// comparison), stopped after `budget`.
fn quick_check(conn: &Connection, budget: Option<Duration>) -> Result<Checked, String> {
    let (done, wait) = mpsc::channel::<()>();
    if let Some(budget) = budget {
        let handle = conn.get_interrupt_handle();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(budget) {
                handle.interrupt();
            }
        });
    }
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(10)")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect());
    drop(done);
    match rows {
        Ok(rows) if rows == ["ok"] => Ok(Checked::Whole),
        Ok(rows) => Err(format!("its integrity check found: {}", rows.join("; "))),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            Ok(Checked::Unfinished)
        }
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            Err("journal.db is not a journal (not an SQLite database)".into())
        }
        Err(e) => Err(format!("its integrity check failed: {e}")),
    }
}

/// The checks SQLite can make at start: every page readable, and a journal that held
/// jobs when it was closed still holding them.
fn check_at_start(path: &Path, record: Option<&damage::Record>) -> Result<Checked, String> {
    // With a log present, read-only: closing the connection must not checkpoint the log
    // into a journal that may be refused. Without one, read-write, so that the log and
    // index this connection makes are removed again when it closes.
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let flags = if Path::new(&wal).exists() {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| format!("it cannot be opened: {e}"))?;
    let checked = quick_check(&conn, Some(START_CHECK))?;
    if let Some(r) = record.filter(|r| r.clean && r.jobs > 0) {
        let jobs: i64 = conn
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap_or(0);
        if jobs == 0 {
            return Err(format!(
                "it holds no jobs, but it held {} when steward last closed it",
                r.jobs
            ));
        }
    }
    Ok(checked)
}

/// Finish an integrity check cut short at start, on a connection of its own.
fn check_in_background(path: PathBuf, stats: Arc<Mutex<Stats>>) {
    let run = move || {
        let started = std::time::Instant::now();
        let result = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())
            .and_then(|c| quick_check(&c, None));
        match result {
            Ok(_) => tracing::info!(
                "the integrity check of the job journal finished in {:.0}s: no damage",
                started.elapsed().as_secs_f64()
            ),
            Err(detail) => Stats::damage(
                &stats,
                &JournalError::Damaged {
                    path: path.clone(),
                    detail,
                },
            ),
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("steward-check".into())
        .spawn(run)
    {
        tracing::warn!("cannot finish the integrity check of the job journal: {e}");
    }
}

impl Sqlite {
    fn send(&self, op: Op) {
        if let Err(mpsc::SendError(op)) = self.tx.send(op) {
            writer::fail_op(op, JournalError::Closed);
        }
    }
}

impl JobStore for Sqlite {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    /// Bytes on disk: the database and its WAL.
    fn size_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        size(&self.path) + size(Path::new(&wal))
    }

    fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn submit(&self, jobs: Vec<NewJob>, reply: Reply<Vec<Submitted>>) {
        // A damaged journal may lose what it is given: nothing new is accepted.
        if let Some(detail) = self.stats.lock().ok().and_then(|s| s.damaged.clone()) {
            reply(Err(JournalError::Refused(detail)));
            return;
        }
        self.send(Op::Submit { jobs, reply });
    }

    fn claim(
        &self,
        queues: Vec<String>,
        n: usize,
        worker: String,
        pid: i32,
        reply: Reply<Claimed>,
    ) {
        self.send(Op::Claim {
            queues,
            n,
            worker,
            pid,
            reply,
        });
    }

    fn finish(
        &self,
        id: i64,
        token: i64,
        outcome: Outcome,
        backoff: RetryBackoff,
        output: Option<AttemptOutput>,
        reply: Reply<Finished>,
    ) {
        self.send(Op::Finish {
            id,
            token,
            outcome,
            backoff,
            output: output.map(Box::new),
            reply,
        });
    }

    fn progress(&self, id: i64, token: i64, progress: Option<f64>, message: Option<String>) {
        self.send(Op::Progress {
            id,
            token,
            progress,
            message,
        });
    }

    fn cancel(&self, id: i64, reply: Reply<CancelResult>) {
        self.send(Op::Cancel { id, reply });
    }

    fn retry(&self, id: i64, reply: Reply<Submitted>) {
        self.send(Op::Retry { id, reply });
    }

    fn prune(&self, rules: Vec<(String, i64, i64)>, reply: Reply<u64>) {
        self.send(Op::Prune { rules, reply });
    }

    fn renew(&self) {
        self.send(Op::Renew);
    }

    fn overview(&self, queues: Vec<String>, now_ms: i64, reply: Reply<Overview>) {
        self.reader.overview(queues, now_ms, reply);
    }

    fn list(&self, filter: JobFilter, reply: Reply<Page>) {
        self.reader.list(filter, reply);
    }

    fn get(&self, id: i64, reply: Reply<JobRecord>) {
        self.reader.get(id, reply);
    }
}

/// Open (or create) `<state_dir>/journal.db`, check it for damage, migrate it, and
/// reclaim every job left `running` by an earlier run of the daemon. A damaged
/// journal is refused unless `accept_damaged`: then its files are moved aside and
/// what can be read of it becomes the journal.
pub fn open(
    state_dir: &Path,
    sync: Synchronous,
    run_id: &str,
    metrics: Arc<crate::metrics::Metrics>,
    accept_damaged: bool,
) -> Result<(Journal, JournalOwner, Vec<Reclaimed>), OpenError> {
    let (mut locks, db_len) = lock(state_dir)?;
    let path = state_dir.join("journal.db");
    let record = damage::read_record(state_dir);
    let mut found = damage::inspect(state_dir, record.as_ref(), db_len);
    let mut unfinished = false;
    if found.is_empty() && db_len.is_some_and(|l| l > 0) {
        match check_at_start(&path, record.as_ref()) {
            Ok(Checked::Whole) => {}
            Ok(Checked::Unfinished) => unfinished = true,
            Err(e) => found.push(e),
        }
    }
    if !found.is_empty() {
        let what = found.join("; ");
        if !accept_damaged {
            return Err(OpenError::Damaged(format!(
                "the job journal {} is damaged: {what}. Nothing was changed. Restore the last backup with `steward restore FILE` (made by `steward backup`), or start once with `steward daemon --accept-damaged-journal` to move the damaged files aside and keep the jobs that can still be read",
                path.display()
            )));
        }
        let aside = salvage::set_aside(state_dir, "damaged")?;
        let got = salvage::salvage(&aside, &path)?;
        // The lock on journal.db went with the file that was moved.
        locks[0] = lock_db(&path)?;
        tracing::warn!(
            "the job journal {} was damaged: {what}. Its files were moved to {}; {}",
            path.display(),
            aside.display(),
            got.describe()
        );
        unfinished = false;
    }
    let mut conn = Connection::open(&path)
        .map_err(|e| format!("cannot open the job journal {}: {e}", path.display()))?;
    configure(&conn, sync)
        .map_err(|e| format!("cannot configure the job journal {}: {e}", path.display()))?;
    schema::migrate(&mut conn)?;
    let owner = writer::Owner {
        run_id: run_id.to_string(),
        host: host_id(),
        boot_id: damage::boot_id(),
        pid: std::process::id(),
    };
    writer::register_run(&conn, &owner, now_ms())
        .map_err(|e| format!("cannot record this run in {}: {e}", path.display()))?;
    let reclaimed = writer::reclaim_interrupted(&mut conn, run_id)
        .map_err(|e| format!("cannot reclaim interrupted jobs in {}: {e}", path.display()))?;
    let stats = writer::initial_stats(&conn)
        .map_err(|e| format!("cannot count jobs in {}: {e}", path.display()))?;
    damage::write_record(
        state_dir,
        &damage::Record {
            clean: false,
            boot: damage::boot_id(),
            jobs: stats.jobs(),
        },
    )?;
    let stats = Arc::new(Mutex::new(stats));
    if unfinished {
        tracing::info!(
            "the integrity check of the job journal did not finish within {}s; it goes on in the background",
            START_CHECK.as_secs()
        );
        check_in_background(path.clone(), stats.clone());
    }
    let reader = reader::Reader::start(&path, stats.clone())?;
    let (tx, rx) = mpsc::channel();
    let w = writer::Writer::new(
        conn,
        path.clone(),
        owner,
        stats.clone(),
        metrics,
        sync == Synchronous::Full,
    );
    let thread = std::thread::Builder::new()
        .name("steward-journal".into())
        .spawn(move || w.run(rx))
        .map_err(|e| format!("cannot start the journal writer: {e}"))?;
    Ok((
        Journal::new(Sqlite {
            tx,
            reader,
            stats,
            path,
        }),
        JournalOwner {
            thread: Some(thread),
            _locks: locks,
        },
        reclaimed,
    ))
}

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub bytes: u64,
    pub jobs: i64,
}

/// Copy the journal in `state_dir` to `dest` with SQLite's online backup: a consistent
/// snapshot, safe while the daemon runs and writes. The copy is checked before it is
/// reported good. `dest` must not exist unless `force`.
pub fn backup(state_dir: &Path, dest: &Path, force: bool) -> Result<BackupReport, String> {
    let src = state_dir.join("journal.db");
    if !src.exists() {
        return Err(format!(
            "there is no journal at {} (is [daemon] state_dir right?)",
            src.display()
        ));
    }
    if dest.exists() && !force {
        return Err(format!(
            "{} exists; choose another name or pass --force",
            dest.display()
        ));
    }
    if force && dest.exists() {
        std::fs::remove_file(dest)
            .map_err(|e| format!("cannot replace {}: {e}", dest.display()))?;
    }
    // The copy holds the same payloads: it is created no more readable than the journal
    // (SQLite gives its own side files the mode of the file they belong to).
    let mode = std::fs::metadata(&src)
        .map_err(|e| format!("cannot read {}: {e}", src.display()))?
        .permissions()
        .mode()
        & 0o666;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let conn = Connection::open_with_flags(&src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", src.display()))?;
    conn.execute_batch("PRAGMA busy_timeout = 10000;")
        .map_err(|e| format!("cannot configure {}: {e}", src.display()))?;
    conn.backup(
        rusqlite::MAIN_DB,
        dest,
        None::<fn(rusqlite::backup::Progress)>,
    )
    .map_err(|e| {
        format!(
            "backup of {} to {} failed: {e}",
            src.display(),
            dest.display()
        )
    })?;
    let copy = Connection::open(dest)
        .map_err(|e| format!("cannot open the copy {}: {e}", dest.display()))?;
    let check: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| format!("cannot check the copy: {e}"))?;
    if check != "ok" {
        return Err(format!(
            "the copy {} failed its integrity check: {check}",
            dest.display()
        ));
    }
    let jobs: i64 = copy
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .map_err(|e| format!("cannot count jobs in the copy: {e}"))?;
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport { bytes, jobs })
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub jobs: i64,
    /// Where the files it replaced are.
    pub aside: PathBuf,
}

/// Put `backup` in place of the journal in `state_dir`, with the daemon stopped. The
/// copy is checked first; the journal's files are moved aside, not deleted; files made
/// as root belong to the owner of the state directory, as the daemon's own do.
pub fn restore(state_dir: &Path, backup: &Path) -> Result<Restored, String> {
    let copy = Connection::open_with_flags(backup, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", backup.display()))?;
    let bad = |why: String| format!("{} cannot be restored: {why}", backup.display());
    quick_check(&copy, None).map_err(bad)?;
    let version: i64 = copy
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| bad(e.to_string()))?;
    if version == 0 || version > schema::VERSION {
        return Err(bad(if version == 0 {
            "it is not a steward journal".into()
        } else {
            format!(
                "it was written by a newer steward (schema {version}, this one knows {})",
                schema::VERSION
            )
        }));
    }
    let jobs: i64 = copy
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .map_err(|e| bad(e.to_string()))?;
    drop(copy);
    if !state_dir.is_dir() {
        return Err(format!(
            "there is no state directory {} (is [daemon] state_dir right?)",
            state_dir.display()
        ));
    }
    let (_locks, _) = lock(state_dir).map_err(|e| {
        format!("cannot restore while steward runs: {e}; stop it first (systemctl stop steward)")
    })?;
    let aside = salvage::set_aside(state_dir, "replaced")?;
    let dest = state_dir.join("journal.db");
    let tmp = state_dir.join("journal.db.restoring");
    let put = || -> std::io::Result<()> {
        let mut from = File::open(backup)?;
        let mut to = File::options()
            .write(true)
            .create_new(true)
            .mode(JOURNAL_MODE)
            .open(&tmp)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        File::open(state_dir)?.sync_all()
    };
    put().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!(
            "cannot copy {} to {}: {e} (the journal it was to replace is in {})",
            backup.display(),
            dest.display(),
            aside.display()
        )
    })?;
    damage::write_record(
        state_dir,
        &damage::Record {
            clean: true,
            boot: damage::boot_id(),
            jobs: jobs.max(0) as u64,
        },
    )?;
    if nix::unistd::geteuid().is_root() {
        let owner = std::fs::metadata(state_dir)
            .map_err(|e| format!("cannot read {}: {e}", state_dir.display()))?;
        use std::os::unix::fs::MetadataExt;
        for p in [
            dest.clone(),
            state_dir.join(damage::STATE_FILE),
            aside.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).map_err(|e| {
                format!(
                    "cannot give {} to the owner of {}: {e}",
                    p.display(),
                    state_dir.display()
                )
            })?;
        }
    }
    Ok(Restored { jobs, aside })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit_one(j: &Journal) -> Result<Vec<Submitted>, JournalError> {
        let (tx, rx) = mpsc::channel();
        let job = NewJob {
            queue: "q".into(),
            payload: "{}".into(),
            priority: 0,
            run_at_ms: now_ms(),
            max_attempts: 3,
            timeout_ms: None,
            key: None,
        };
        j.submit(vec![job], move |r| {
            let _ = tx.send(r);
        });
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or(Err(JournalError::Closed))
    }

    #[test]
    fn a_submit_is_refused_when_its_commit_cannot_be_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (j, owner, _) =
            open(dir.path(), Synchronous::Full, "run", Arc::default(), false).unwrap();
        assert!(submit_one(&j).is_ok());
        // The flusher finds the log gone: the change is committed but cannot be made
        // durable, so the caller must not be told it was kept.
        std::fs::remove_file(dir.path().join("journal.db-wal")).unwrap();
        let err = submit_one(&j).unwrap_err().to_string();
        assert!(err.contains("not flushed to disk"), "{err}");
        assert!(j.stats().error.is_some());
        drop(j);
        owner.close();
    }

    #[test]
    fn earliest_run_at_looks_at_every_priority() {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn).unwrap();
        let add = |queue: &str, priority: i64, run_at: i64| {
            conn.execute(
                "INSERT INTO jobs (queue, state, priority, run_at, created_at, updated_at, max_attempts)
                 VALUES (?1, 'queued', ?2, ?3, 0, 0, 3)",
                rusqlite::params![queue, priority, run_at],
            )
            .unwrap();
        };
        assert_eq!(earliest_run_at(&conn, "q", 0, i64::MAX).unwrap(), None);
        add("q", 5, 300);
        add("q", 0, 200);
        add("q", -3, 150);
        add("q", i64::MIN, 400);
        add("other", 0, 10);
        // the next delayed job after 100, and after 150
        assert_eq!(
            earliest_run_at(&conn, "q", 100, i64::MAX).unwrap(),
            Some(150)
        );
        assert_eq!(
            earliest_run_at(&conn, "q", 150, i64::MAX).unwrap(),
            Some(200)
        );
        // the job due longest at 250, and nothing due at 100
        assert_eq!(
            earliest_run_at(&conn, "q", i64::MIN, 250).unwrap(),
            Some(150)
        );
        assert_eq!(earliest_run_at(&conn, "q", i64::MIN, 100).unwrap(), None);
        assert_eq!(
            earliest_run_at(&conn, "other", i64::MIN, 100).unwrap(),
            Some(10)
        );
        // More distinct priorities than are stepped through: the scan gives the same answer.
        for p in 0..(PRIORITY_STEPS as i64 + 10) {
            add("many", 1000 - p, 500 - p);
        }
        assert_eq!(
            earliest_run_at(&conn, "many", 0, i64::MAX).unwrap(),
            Some(500 - (PRIORITY_STEPS as i64 + 9))
        );
        assert_eq!(earliest_run_at(&conn, "many", 0, 440).unwrap(), Some(427));
    }

    #[test]
    fn attempt_timeout_prefers_the_job_and_zero_means_none() {
        let mut job = Leased {
            id: 1,
            queue: "q".into(),
            attempt: 1,
            token: 1,
            payload: "{}".into(),
            timeout_ms: None,
            created_ms: 0,
        };
        let queue = Some(Duration::from_secs(60));
        assert_eq!(job.timeout(queue), queue);
        job.timeout_ms = Some(1500);
        assert_eq!(job.timeout(queue), Some(Duration::from_millis(1500)));
        job.timeout_ms = Some(0);
        assert_eq!(job.timeout(queue), None);
    }
}
