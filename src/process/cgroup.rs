//! Per-worker cgroups under a systemd unit with `Delegate=`.
//!
//! systemd gives the unit one cgroup and, with `Delegate=`, the right to manage what is
//! below it. cgroup v2 lets processes live only in leaves once controllers are handed
//! down, so the daemon first moves itself into `<unit>/supervisor`, then hands the
//! unit's controllers (of cpu, memory, pids) to `<unit>/w`, under which every worker and
//! job process gets a cgroup of its own. The child joins its cgroup before `execve`
//! (see `spawn`), so nothing of it ever runs outside. Everything here is plain file I/O
//! on cgroupfs; what to write (the limits) is decided by the caller.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted.
const MOUNT: &str = "/sys/fs/cgroup";

/// The controllers steward hands down to its workers when the unit has them.
pub const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// The unit's delegated cgroup, set up for workers.
#[derive(Debug)]
pub struct Tree {
    /// The unit's cgroup (e.g. /sys/fs/cgroup/system.slice/steward.service).
    pub root: PathBuf,
    /// Where workers' cgroups are made (`<root>/w`).
    workers: PathBuf,
    /// Controllers enabled for the workers' cgroups.
    pub controllers: Vec<String>,
}

/// Why the daemon runs without cgroups of its own (process groups only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Without {
    /// `[daemon] cgroups = "off"`.
    Off,
    /// Not started by systemd as a service.
    NotAService,
    /// A service, but without `Delegate=` (or cgroup v1).
    NotDelegated(String),
    /// Delegated, but setting it up failed.
    Failed(String),
}

impl std::fmt::Display for Without {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Without::Off => write!(f, "cgroups = \"off\" in [daemon]"),
            Without::NotAService => write!(f, "not started by systemd as a service"),
            Without::NotDelegated(why) => write!(f, "{why}"),
            Without::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// The controllers this machine's cgroup v2 root offers; None without cgroup v2.
pub fn machine_controllers() -> Option<Vec<String>> {
    let text = fs::read_to_string(Path::new(MOUNT).join("cgroup.controllers")).ok()?;
    Some(text.split_whitespace().map(str::to_string).collect())
}

/// This process's cgroup v2 path (e.g. `/system.slice/steward.service`), from
/// /proc/self/cgroup.
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// Whether systemd marked `dir` as delegated (the `trusted.delegate` or
/// `user.delegate` extended attribute, set by systemd 251 and later).
fn marked_delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    for name in [c"trusted.delegate", c"user.delegate"] {
        let mut buf = [0u8; 8];
        // SAFETY: valid NUL-terminated strings and a buffer of the length given.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n > 0 && buf[0] == b'1' {
            return true;
        }
    }
    false
}

/// Whether this (unprivileged) process may write `path`.
fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(text.as_bytes())
}

fn context(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let p = path.display().to_string();
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("cannot {what} {p}: {e}"))
}

impl Tree {
    /// Set up the unit's cgroup for workers, if this daemon is a systemd service with a
    /// delegated cgroup: move into `<unit>/supervisor`, hand the unit's controllers to
    /// `<unit>/w`, and remove worker cgroups a previous run left (killing what is in
    /// them).
    pub fn set_up() -> Result<Tree, Without> {
        // The unit's main process only: a daemon started by something that itself runs
        // under systemd (a shell, a CI job) must not rearrange that unit's cgroup.
        let main_of_unit = std::env::var("SYSTEMD_EXEC_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id())
            || nix::unistd::getppid().as_raw() == 1;
        if std::env::var_os("INVOCATION_ID").is_none() || !main_of_unit {
            return Err(Without::NotAService);
        }
        let Some(own) = own_cgroup() else {
            return Err(Without::NotDelegated(
                "no cgroup v2 (unified hierarchy) for this process".into(),
            ));
        };
        let mut unit = PathBuf::from(MOUNT).join(own.trim_start_matches('/'));
        if unit.file_name().is_some_and(|n| n == "supervisor") {
            // Started again within the same unit cgroup (e.g. exec'd by itself).
            unit.pop();
        }
        if !unit
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".service"))
        {
            return Err(Without::NotAService);
        }
        let root_user = nix::unistd::geteuid().is_root();
        let delegated = if root_user {
            marked_delegated(&unit)
        } else {
            writable(&unit.join("cgroup.subtree_control")) && writable(&unit.join("cgroup.procs"))
        };
        if !delegated {
            return Err(Without::NotDelegated(format!(
                "the unit's cgroup {} is not delegated (the unit has no Delegate=)",
                unit.display()
            )));
        }
        Tree::build(unit).map_err(|e| Without::Failed(e.to_string()))
    }

    fn build(unit: PathBuf) -> io::Result<Tree> {
        let leaf = unit.join("supervisor");
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(context(&leaf, "create")(e)),
        }
        write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())
            .map_err(context(&leaf, "move the daemon into"))?;
        let available = fs::read_to_string(unit.join("cgroup.controllers")).unwrap_or_default();
        let controllers: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| c.to_string())
            .collect();
        let enable: String = controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        if !enable.is_empty() {
            write_file(&unit.join("cgroup.subtree_control"), &enable)
                .map_err(context(&unit, "enable controllers in"))?;
        }
        let workers = unit.join("w");
        match fs::create_dir(&workers) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(context(&workers, "create")(e)),
        }
        if !enable.is_empty() {
            write_file(&workers.join("cgroup.subtree_control"), &enable)
                .map_err(context(&workers, "enable controllers in"))?;
        }
        let tree = Tree {
            root: unit,
            workers,
            controllers,
        };
        tree.remove_leftovers();
        Ok(tree)
    }

    /// Kill and remove the worker cgroups a previous run of the daemon left behind.
    fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.workers) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let g = Group {
                    path: e.path(),
                    procs: None,
                };
                let _ = g.kill();
                g.wait_empty(std::time::Duration::from_secs(2));
                let _ = g.remove();
            }
        }
    }

    /// Its controllers as "cpu memory pids", or "none".
    pub fn controller_list(&self) -> String {
        if self.controllers.is_empty() {
            "none".to_string()
        } else {
            self.controllers.join(" ")
        }
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// A new cgroup `name` for one worker or job, with `settings` written into it
    /// (file name, value, whether a kernel without that file is fine); a cgroup of that name left from before is killed and
    /// replaced. The returned group holds an open `cgroup.procs` for the child to join.
    pub fn create(
        &self,
        name: &str,
        settings: &[(&'static str, String, bool)],
    ) -> io::Result<Group> {
        let path = self.workers.join(name);
        if let Err(e) = fs::create_dir(&path) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(context(&path, "create")(e));
            }
            let old = Group {
                path: path.clone(),
                procs: None,
            };
            let _ = old.kill();
            old.wait_empty(std::time::Duration::from_secs(1));
        }
        let group = Group {
            path: path.clone(),
            procs: None,
        };
        for (file, value, optional) in settings {
            if let Err(e) = write_file(&path.join(file), value) {
                if *optional && e.kind() == io::ErrorKind::NotFound {
                    continue;
                }
                let _ = group.remove();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot set {file} = {value} in {}: {e}", path.display()),
                ));
            }
        }
        let procs = group.open_procs()?;
        Ok(Group {
            path,
            procs: Some(procs),
        })
    }
}

/// One worker's or job's cgroup.
#[derive(Debug)]
pub struct Group {
    path: PathBuf,
    /// Its `cgroup.procs`, open for writing, until the child has joined.
    procs: Option<OwnedFd>,
}

impl Group {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open `cgroup.procs` the child writes "0" to before `execve`.
    pub fn take_procs(&mut self) -> Option<OwnedFd> {
        self.procs.take()
    }

    /// `cgroup.procs` opened for writing, for one more child to join (a group reused).
    pub fn open_procs(&self) -> io::Result<OwnedFd> {
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.path.join("cgroup.procs"))
            .map(OwnedFd::from)
            .map_err(context(&self.path, "open cgroup.procs of"))
    }

    /// Kill every process in the group and its descendants (`cgroup.kill`, Linux 5.14;
    /// on older kernels each process listed, twice over for forks in between).
    pub fn kill(&self) -> io::Result<()> {
        match write_file(&self.path.join("cgroup.kill"), "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !self.path.exists() {
                    return Ok(());
                }
                for _ in 0..2 {
                    for pid in self.pids() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|p| *p > 1)
            .collect()
    }

    /// Whether any process is left in it (or below); false once it is gone.
    pub fn populated(&self) -> bool {
        match fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(text) => text.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => false,
        }
    }

    /// Wait up to `limit` for the group to empty (after a kill that takes a few ms).
    pub fn wait_empty(&self, limit: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        loop {
            if !self.populated() {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Remove the (empty) group: `Ok(false)` while it is still busy (processes left,
    /// or the kernel not done with an OOM kill), `Ok(true)` once it is gone.
    pub fn remove(&self) -> io::Result<bool> {
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(context(&self.path, "remove")(e)),
        }
    }

    fn number(&self, file: &str) -> Option<u64> {
        fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Processes the kernel's OOM killer killed in it so far (0 without the memory
    /// controller).
    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.path.join("memory.events"))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// The most memory it has used (Linux 5.19 and later).
    pub fn memory_peak(&self) -> Option<u64> {
        self.number("memory.peak")
    }

    pub fn memory_current(&self) -> Option<u64> {
        self.number("memory.current")
    }
}

/// Where a running worker's memory and CPU are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageSource {
    /// Its cgroup (the whole tree it started).
    Cgroup(PathBuf),
    /// Its main process alone, from /proc (no cgroups).
    Process(i32),
}

/// (memory in bytes, CPU seconds) of `source` now; None once it is gone.
pub fn read_usage(source: &UsageSource) -> Option<(u64, f64)> {
    match source {
        UsageSource::Cgroup(path) => {
            let memory = fs::read_to_string(path.join("memory.current"))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            let cpu = fs::read_to_string(path.join("cpu.stat"))
                .ok()
                .and_then(|t| keyed(&t, "usage_usec"));
            if memory.is_none() && cpu.is_none() {
                // Without the memory controller: the processes' own figures would be
                // wrong for the tree; a cgroup that is gone reads as nothing.
                return path.exists().then_some((0, 0.0));
            }
            Some((memory.unwrap_or(0), cpu.unwrap_or(0) as f64 / 1e6))
        }
        UsageSource::Process(pid) => {
            let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces): utime is the 12th.
            let rest = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .unwrap_or(4096) as u64;
            let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .unwrap_or(100)
                .max(1) as f64;
            Some((pages.saturating_mul(page), ticks as f64 / hz))
        }
    }
}

/// The value of `key` in a flat-keyed cgroup file ("key value" lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        let events = "low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "high"), Some(12));
        assert_eq!(keyed(events, "oom"), Some(1), "not confused with oom_kill");
        assert_eq!(keyed(events, "missing"), None);
        assert_eq!(keyed("usage_usec x\n", "usage_usec"), None);
    }

    #[test]
    fn a_process_reads_its_own_usage() {
        let (memory, cpu) = read_usage(&UsageSource::Process(std::process::id() as i32))
            .expect("this process exists");
        assert!(memory > 1024 * 1024, "{memory}");
        assert!(cpu >= 0.0);
        assert_eq!(read_usage(&UsageSource::Process(i32::MAX)), None);
    }
}
