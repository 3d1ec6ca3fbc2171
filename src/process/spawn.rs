//! Starting a child with `clone(CLONE_VM | CLONE_VFORK)`, the way `posix_spawn` does.
//!
//! A plain `fork` copies the daemon's page tables and turns every page it touches
//! afterwards into a copy-on-write fault with a TLB shootdown on the other cores: with a
//! job process per job that cost more CPU than the jobs themselves. Here the child
//! borrows the daemon's memory until it calls `execve`, while the spawner thread waits.
//! Everything the child needs (paths, argv, environment, descriptors) is prepared
//! beforehand; between `clone` and `execve` the child only makes system calls on that
//! prepared data: it does not allocate, lock or unwind.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use nix::sched::CloneFlags;

use super::{Child, Command};

/// The child's stack while it runs in the daemon's memory (it needs a few KiB).
const STACK_SIZE: usize = 256 * 1024;

/// A stack for the short-lived child, reused by every spawn of one thread.
pub(super) struct Stack(Vec<u8>);

impl Stack {
    pub(super) fn new() -> Stack {
        Stack(vec![0; STACK_SIZE])
    }
}

/// A step of the child that failed, with its errno (kept, so that a shortage of
/// descriptors or memory can be told from a wrong program).
#[derive(Debug)]
pub struct SpawnError {
    step: i32,
    pub errno: i32,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            Step::from_i32(self.step),
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for SpawnError {}

/// What failed in the child before `execve` replaced it; reported to the parent through
/// memory they share until then.
#[derive(Clone, Copy)]
#[repr(i32)]
enum Step {
    ProcessGroup = 1,
    ParentDeathSignal,
    DaemonGone,
    Redirect,
    KeepDescriptor,
    Directory,
    Limit,
    Cgroup,
    Exec,
}

impl Step {
    fn from_i32(v: i32) -> &'static str {
        match v {
            1 => "cannot make it a process group leader",
            2 => "cannot set its parent-death signal",
            3 => "steward exited while starting it",
            4 => "cannot connect its standard input/output",
            5 => "cannot pass it the worker socket",
            6 => "cannot change to its working directory",
            7 => "cannot set its limit on open files",
            8 => "cannot join its cgroup",
            _ => "cannot execute the program",
        }
    }
}

/// Start `cmd` as the leader of a new process group with `PR_SET_PDEATHSIG` = SIGKILL
/// tied to the calling thread.
pub(super) fn spawn(cmd: Command, stack: &mut Stack) -> io::Result<Child> {
    let program = resolve(&cmd.program, &cmd.env, &cmd.cwd)?;
    let path = cstring(program.as_os_str().as_bytes())?;
    let cwd = cstring(cmd.cwd.as_os_str().as_bytes())?;
    let mut argv_owned = vec![cstring(cmd.program.as_os_str().as_bytes())?];
    for a in &cmd.args {
        argv_owned.push(cstring(a.as_bytes())?);
    }
    let envp_owned = environment(&cmd.env)?;
    let argv = null_terminated(&argv_owned);
    let envp = null_terminated(&envp_owned);

    // The child's ends are kept above 2 so that redirecting one cannot clobber another.
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (stdin_parent, stdin_child) = if cmd.stdin_pipe {
        let (r, w) = pipe()?;
        (Some(w), r)
    } else {
        (None, above_stdio(open_dev_null()?)?)
    };
    let stdout_w = above_stdio(stdout_w)?;
    let stderr_w = above_stdio(stderr_w)?;
    let child_fds = [
        stdin_child.as_raw_fd(),
        stdout_w.as_raw_fd(),
        stderr_w.as_raw_fd(),
    ];
    let keep_fd = cmd.inherit_fd.as_ref().map(|fd| fd.as_raw_fd());
    if keep_fd.is_some_and(|fd| fd <= 2) {
        return Err(io::Error::other(
            "the worker socket has a standard descriptor number",
        ));
    }
    let parent = std::process::id() as libc::pid_t;
    // The soft limit on open files the child gets back (see raise_descriptor_limit).
    let nofile = super::CHILD_NOFILE.load(Ordering::Relaxed);
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(nofile);
    let limit = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: hard,
    };
    let cgroup_fd = cmd.cgroup.as_ref().map(|fd| fd.as_raw_fd());
    let failed_step = AtomicI32::new(0);
    let failed_errno = AtomicI32::new(0);

    let child_main = || -> isize {
        // SAFETY: only system calls on data prepared above, which lives until the parent
        // resumes (after our execve or exit); nothing here allocates or unwinds.
        unsafe {
            let fail = |step: Step| -> isize {
                failed_errno.store(*libc::__errno_location(), Ordering::Relaxed);
                failed_step.store(step as i32, Ordering::Relaxed);
                libc::_exit(127)
            };
            reset_signals();
            // Into its own cgroup first, so that nothing of it runs outside.
            if let Some(fd) = cgroup_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return fail(Step::Cgroup);
            }
            if libc::setpgid(0, 0) != 0 {
                return fail(Step::ProcessGroup);
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return fail(Step::ParentDeathSignal);
            }
            // The daemon died between clone and prctl: do not run orphaned.
            if libc::getppid() != parent {
                *libc::__errno_location() = libc::ESRCH;
                return fail(Step::DaemonGone);
            }
            for (target, fd) in child_fds.iter().enumerate() {
                if libc::dup2(*fd, target as RawFd) < 0 {
                    return fail(Step::Redirect);
                }
            }
            if let Some(fd) = keep_fd {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return fail(Step::KeepDescriptor);
                }
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                return fail(Step::Directory);
            }
            if nofile > 0 && libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return fail(Step::Limit);
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(Step::Exec)
        }
    };

    // Signals stay blocked on this thread across clone, so that no handler of the daemon
    // runs in the child while it shares the daemon's memory; the child resets handlers
    // and unblocks everything before exec.
    let blocked = block_all_signals()?;
    let began = Instant::now();
    // SAFETY: CLONE_VFORK suspends this thread until the child has exec'd or exited, so
    // everything `child_main` borrows outlives its use; the stack is ours alone meanwhile.
    let cloned = unsafe {
        nix::sched::clone(
            Box::new(child_main),
            &mut stack.0,
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    };
    restore_signals(&blocked);
    let pid = cloned.map_err(io::Error::from)?;
    let started = Instant::now();

    let step = failed_step.load(Ordering::Relaxed);
    if step != 0 {
        // The child has exited; collect it unless the supervisor's reaper already did.
        let _ = nix::sys::wait::waitpid(pid, None);
        let errno = failed_errno.load(Ordering::Relaxed);
        let kind = io::Error::from_raw_os_error(errno).kind();
        return Err(io::Error::new(kind, SpawnError { step, errno }));
    }
    drop((stdin_child, stdout_w, stderr_w));
    Ok(Child {
        pid: pid.as_raw(),
        began,
        started,
        stdin: stdin_parent,
        stdout: stdout_r,
        stderr: stderr_r,
    })
}

/// The program to execute: as given when it contains a slash (relative to the working
/// directory), else the first executable match in `PATH`, as a shell would find it.
fn resolve(program: &Path, env: &[(String, String)], cwd: &Path) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    if program.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no program given",
        ));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| OsString::from(super::DEFAULT_PATH));
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            cwd.to_path_buf()
        } else {
            cwd.join(dir)
        };
        let candidate = dir.join(program);
        if super::is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "program `{}` was not found in PATH ({})",
            program.display(),
            path.to_string_lossy()
        ),
    ))
}

/// The child's environment as `KEY=value` strings, from the whole list it is to get; a
/// later entry for a name wins.
fn environment(vars: &[(String, String)]) -> io::Result<Vec<CString>> {
    let mut last = std::collections::HashMap::with_capacity(vars.len());
    for (i, (k, _)) in vars.iter().enumerate() {
        if k.is_empty() || k.contains('=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid environment variable name `{k}`"),
            ));
        }
        last.insert(k.as_str(), i);
    }
    vars.iter()
        .enumerate()
        .filter(|(i, (k, _))| last.get(k.as_str()) == Some(i))
        .map(|(_, (k, v))| cstring(format!("{k}={v}").as_bytes()))
        .collect()
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "`{}` contains a NUL byte",
                String::from_utf8_lossy(bytes).replace('\0', "\\0")
            ),
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((above_stdio(r)?, w))
}

fn open_dev_null() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
}

/// `fd` itself if its number is above 2, else a close-on-exec duplicate that is.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new descriptor we then own.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

fn block_all_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: plain libc calls on local, initialised signal sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(old)
    }
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: `old` came from pthread_sigmask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// In the child: every signal the daemon handles goes back to its default action (the
/// handlers live in memory that is about to be replaced), SIGPIPE too (ignored by the
/// daemon, expected by most programs), and nothing stays blocked.
///
/// # Safety
/// Only for the child between clone and execve.
unsafe fn reset_signals() {
    // SAFETY: sigaction and sigprocmask on local structures; invalid signal numbers
    // (e.g. those the C library reserves) just fail.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut cur: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut cur) != 0 {
                continue;
            }
            let handled = cur.sa_sigaction != libc::SIG_DFL && cur.sa_sigaction != libc::SIG_IGN;
            if handled || sig == libc::SIGPIPE {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// `program args…` in `cwd` with `env` on top of ours, no inherited socket.
    fn command(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &str,
        stdin_pipe: bool,
    ) -> Command {
        Command {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: cwd.into(),
            inherit_fd: None,
            stdin_pipe,
            cgroup: None,
        }
    }

    #[test]
    fn resolves_bare_names_in_path_and_keeps_paths() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin:/usr/bin".to_string())];
        let p = resolve(Path::new("sh"), &env, Path::new("/")).unwrap();
        assert!(p.ends_with("sh") && p.is_absolute(), "{}", p.display());
        let kept = resolve(Path::new("./run.sh"), &env, Path::new("/")).unwrap();
        assert_eq!(kept, PathBuf::from("./run.sh"));
        let missing = resolve(Path::new("no-such-program-here"), &env, Path::new("/"));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn environment_is_the_list_given_and_the_last_entry_wins() {
        let env = environment(&[
            ("A_STEWARD_TEST".into(), "1".into()),
            ("B".into(), "x".into()),
            ("A_STEWARD_TEST".into(), "2".into()),
        ])
        .unwrap();
        let strings: Vec<String> = env
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        assert_eq!(strings, vec!["B=x", "A_STEWARD_TEST=2"]);
        assert!(environment(&[("BAD=NAME".into(), "x".into())]).is_err());
        assert!(environment(&[("A".into(), "x\0y".into())]).is_err());
    }

    #[test]
    fn spawns_with_pipes_and_reports_exec_failures() {
        let mut stack = Stack::new();
        let child = spawn(
            command(
                "sh",
                &["-c", "echo \"$STEWARD_X $(pwd)\"; echo err >&2"],
                &[("STEWARD_X", "hello")],
                "/tmp",
                false,
            ),
            &mut stack,
        )
        .unwrap();
        let mut out = String::new();
        let mut err = String::new();
        std::fs::File::from(child.stdout)
            .read_to_string(&mut out)
            .unwrap();
        std::fs::File::from(child.stderr)
            .read_to_string(&mut err)
            .unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None).unwrap();
        assert_eq!(out, "hello /tmp\n");
        assert_eq!(err, "err\n");
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(child.pid), 0)
        );
        // The child leads its own process group, and SIGPIPE is back to its default.
        let child = spawn(
            command(
                "sh",
                &["-c", "grep SigIgn /proc/$$/status; read x"],
                &[],
                "/",
                true,
            ),
            &mut stack,
        )
        .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.pid)).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        let pgrp: i32 = after_name
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pgrp, child.pid);
        drop(child.stdin);
        let mut out = String::new();
        std::fs::File::from(child.stdout)
            .read_to_string(&mut out)
            .unwrap();
        let ignored =
            u64::from_str_radix(out.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE ignored: {out}"
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None);
        let bad_dir = spawn(
            command("/bin/true", &[], &[], "/nonexistent-dir", true),
            &mut stack,
        )
        .unwrap_err();
        assert!(
            bad_dir.to_string().contains("working directory"),
            "{bad_dir}"
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain-file");
        std::fs::write(&plain, "not a program").unwrap();
        let not_exec = spawn(
            command(plain.to_str().unwrap(), &[], &[], "/", false),
            &mut stack,
        )
        .unwrap_err();
        assert!(
            not_exec.to_string().contains("cannot execute"),
            "{not_exec}"
        );
    }
}
