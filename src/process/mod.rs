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

use crate::supervisor::policy::Exit;

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

/// What to start.
#[derive(Debug)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Set on top of the daemon's environment (after removing [`PRIVATE_ENV`]).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// A descriptor the child inherits under its current number (its number is passed to
    /// the child by the caller, e.g. in an environment variable).
    pub inherit_fd: Option<OwnedFd>,
    /// Whether the child gets a pipe on stdin (else /dev/null).
    pub stdin_pipe: bool,
}

/// A started child: the leader of a new process group.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
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
