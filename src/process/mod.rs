//! The process boundary: the only module that forks, execs, signals process groups and
//! reaps children. Everything else deals in pids it got from here.
//!
//! Workers are started (see `spawn`: clone with a shared address space until exec, not a
//! full fork) from one dedicated thread that lives as long as the daemon, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
//! process. Each worker leads its own process group, so a stop signal reaches everything
//! it started. The daemon is a child subreaper: orphans of its workers are reparented to
//! it and reaped too, and nothing is left behind when it stops.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::model::Exit;

pub mod cgroup;
mod spawn;

/// Variables that belong to the daemon's own relation with systemd and must not leak into
/// workers: a worker that saw them could talk to systemd in steward's name.
pub const PRIVATE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
];

/// The variables of the daemon's environment a worker gets by default: where to find
/// programs, who it runs as, its language and time zone. Everything else it needs comes
/// from its pool's `env` (or `inherit_env = true`).
pub const WORKER_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// Used when the daemon's environment has no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A worker's environment before its pool's `env`: [`WORKER_ENV`] and every `LC_*` of
/// `daemon`, or with `inherit` all of `daemon`; never [`PRIVATE_ENV`] or the daemon's
/// `CREDENTIALS_DIRECTORY` (its secrets are its own).
pub fn base_environment(daemon: &[(String, String)], inherit: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = daemon
        .iter()
        .filter(|(k, _)| !PRIVATE_ENV.contains(&k.as_str()) && k != "CREDENTIALS_DIRECTORY")
        .filter(|(k, _)| inherit || WORKER_ENV.contains(&k.as_str()) || k.starts_with("LC_"))
        .cloned()
        .collect();
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    out
}

/// What to start.
#[derive(Debug)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment of the child; a later entry for a name wins.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// A descriptor the child inherits under its current number (its number is passed to
    /// the child by the caller, e.g. in an environment variable).
    pub inherit_fd: Option<OwnedFd>,
    /// Whether the child gets a pipe on stdin (else /dev/null).
    pub stdin_pipe: bool,
    /// The `cgroup.procs` of the cgroup the child joins before `execve`.
    pub cgroup: Option<OwnedFd>,
}

/// A started child: the leader of a new process group.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    /// Just before the clone: no exit reaped earlier can be this child's.
    pub began: Instant,
    pub started: Instant,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

type Reply = Box<dyn FnOnce(io::Result<Child>) + Send>;

/// Forks children from one long-lived thread.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Spawner {
    pub fn start() -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>();
        std::thread::Builder::new()
            .name("steward-spawner".into())
            .spawn(move || {
                let mut stack = spawn::Stack::new();
                while let Ok((cmd, reply)) = rx.recv() {
                    reply(spawn::spawn(cmd, &mut stack));
                }
            })?;
        Ok(Spawner { tx })
    }

    /// Start `cmd` on the spawner thread; `reply` is called there with the result.
    pub fn spawn(&self, cmd: Command, reply: impl FnOnce(io::Result<Child>) + Send + 'static) {
        if let Err(mpsc::SendError((_, reply))) = self.tx.send((cmd, Box::new(reply))) {
            reply(Err(io::Error::other("the spawner thread has stopped")));
        }
    }
}

/// Send `sig` to the process group led by `pgid`. `Ok(false)` if the group is gone.
/// Send `sig` to process `pid` alone; `Ok(false)` if it is gone.
pub fn signal_process(pid: i32, sig: Signal) -> io::Result<bool> {
    if pid <= 1 {
        return Err(io::Error::other(format!(
            "refusing to signal process {pid}"
        )));
    }
    match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

pub fn signal_group(pgid: i32, sig: Signal) -> io::Result<bool> {
    if pgid <= 1 {
        return Err(io::Error::other(format!(
            "refusing to signal process group {pgid}"
        )));
    }
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Exits of children the loop does not know yet.
///
/// A child can exit, and be reaped, before the answer to its spawn reaches the loop; its
/// exit is kept here until that answer comes. Exits are kept only while spawns are in
/// flight (otherwise an unknown pid is an adopted orphan), and handed to a spawn only if
/// they were reaped after that spawn began: a pid is reused only once its previous
/// holder has been reaped, so an older exit with the same pid belongs to another
/// process.
#[derive(Debug, Default)]
pub struct EarlyExits {
    exits: std::collections::HashMap<i32, (Exit, Instant)>,
}

/// Early exits kept at most; the oldest go first (only orphans can fill it).
const EARLY_EXITS_MAX: usize = 4096;

impl EarlyExits {
    /// `pid`, unknown to the loop, exited (reaped at `at`).
    pub fn record(&mut self, pid: i32, exit: Exit, at: Instant, spawns_in_flight: usize) {
        if spawns_in_flight == 0 {
            self.exits.clear();
            return;
        }
        if self.exits.len() >= EARLY_EXITS_MAX
            && let Some(oldest) = self
                .exits
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(p, _)| *p)
        {
            self.exits.remove(&oldest);
        }
        self.exits.insert(pid, (exit, at));
    }

    /// The exit of the child `pid` whose spawn began at `began`, if it was reaped already.
    pub fn take(&mut self, pid: i32, began: Instant) -> Option<Exit> {
        match self.exits.remove(&pid) {
            Some((exit, at)) if at >= began => Some(exit),
            _ => None,
        }
    }

    /// No spawn is in flight: nothing kept can be claimed any more.
    pub fn settle(&mut self, spawns_in_flight: usize) {
        if spawns_in_flight == 0 {
            self.exits.clear();
        }
    }
}

/// The soft limit on open descriptors the daemon started with: what its children get
/// back (0: leave theirs as the daemon's).
static CHILD_NOFILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Raise the daemon's soft limit on open descriptors to the hard one, as systemd's own
/// services do (a unit's default soft limit is 1,024, the hard one 524,288), while its
/// children get the limit it started with: programs that use `select(2)` break on
/// descriptors above 1,024. Returns (the limit now, the one children get).
pub fn raise_descriptor_limit() -> (u64, u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (0, 0);
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        CHILD_NOFILE.store(soft, std::sync::atomic::Ordering::Relaxed);
        return (hard, soft);
    }
    (soft, soft)
}

/// Whether an error of a spawn is the system running short (descriptors, processes,
/// memory) rather than anything about the program or its job.
pub fn is_resource_shortage(e: &io::Error) -> bool {
    let errno = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<spawn::SpawnError>())
        .map(|s| s.errno)
        .or_else(|| e.raw_os_error());
    matches!(
        errno,
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    )
}

/// Make this process the reaper of its workers' orphans.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Reap every child that has exited. For each one for which `is_group_leader` is true,
/// whatever is left of its process group is killed first, while the zombie still holds
/// the group id (so it cannot have been reused).
pub fn reap(mut is_group_leader: impl FnMut(i32) -> bool) -> Vec<(i32, Exit)> {
    let mut out = Vec::new();
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let pid = match waitid(Id::All, flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(status) => match status.pid() {
                Some(p) => p,
                None => break,
            },
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        };
        if is_group_leader(pid.as_raw()) {
            let _ = signal_group(pid.as_raw(), Signal::SIGKILL);
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) => out.push((p.as_raw(), Exit::Code(code))),
            Ok(WaitStatus::Signaled(p, sig, _)) => out.push((p.as_raw(), Exit::Signal(sig as i32))),
            _ => {}
        }
    }
    out
}

/// Kill every process still parented to the daemon (orphans it adopted as subreaper).
/// Used at the very end of a stop, after the workers themselves are gone.
pub fn kill_adopted_orphans() -> usize {
    let me = std::process::id() as i32;
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if parent_of(pid) == Some(me)
            && nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The parent pid of `pid`, from /proc (None if it is gone).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `p` is a regular file with an execute bit: what the configuration checks for
/// `command` and what a bare program name is looked up as in `PATH`.
pub fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether reading `fd` would not block right now: bytes are waiting, or the other end
/// closed. Never waits.
pub fn readable(fd: &impl std::os::fd::AsFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP)),
        _ => false,
    }
}

/// This boot's id, or "" where the kernel does not tell.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_early_exit_goes_to_the_spawn_it_belongs_to() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let mut e = EarlyExits::default();
        // Reaped after the spawn began: the child's own exit.
        e.record(100, Exit::Code(3), later, 1);
        assert_eq!(e.take(100, t0), Some(Exit::Code(3)));
        assert_eq!(e.take(100, t0), None, "taken once");
        // An orphan with the same pid, reaped before the spawn began: not the child's.
        e.record(200, Exit::Signal(9), t0, 1);
        assert_eq!(e.take(200, later), None);
        // With no spawn in flight an unknown pid is an orphan and is not kept.
        e.record(300, Exit::Code(0), later, 0);
        assert_eq!(e.take(300, t0), None);
        e.record(400, Exit::Code(0), later, 1);
        e.settle(0);
        assert_eq!(e.take(400, t0), None);
    }

    #[test]
    fn workers_get_a_clean_environment_unless_they_inherit() {
        let daemon: Vec<(String, String)> = [
            ("PATH", "/bin"),
            ("HOME", "/var/lib/steward"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("TZ", "Europe/Paris"),
            ("CREDENTIALS_DIRECTORY", "/run/credentials/steward.service"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("INVOCATION_ID", "abc"),
            ("DATABASE_PASSWORD", "hunter2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let names = |env: Vec<(String, String)>| -> Vec<String> {
            env.into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(
            names(base_environment(&daemon, false)),
            vec!["PATH", "HOME", "LANG", "LC_TIME", "TZ"]
        );
        assert_eq!(
            names(base_environment(&daemon, true)),
            vec![
                "PATH",
                "HOME",
                "LANG",
                "LC_TIME",
                "TZ",
                "INVOCATION_ID",
                "DATABASE_PASSWORD"
            ]
        );
        // No PATH at all: the usual one.
        assert_eq!(
            base_environment(&[], false),
            vec![("PATH".to_string(), DEFAULT_PATH.to_string())]
        );
    }

    #[test]
    fn early_exits_are_bounded() {
        let t0 = Instant::now();
        let mut e = EarlyExits::default();
        for pid in 0..(EARLY_EXITS_MAX as i32 + 10) {
            e.record(
                pid,
                Exit::Code(0),
                t0 + Duration::from_micros(pid as u64),
                1,
            );
        }
        assert_eq!(e.exits.len(), EARLY_EXITS_MAX);
        assert_eq!(e.take(0, t0), None, "the oldest went first");
        assert!(e.take(EARLY_EXITS_MAX as i32 + 9, t0).is_some());
    }
}
