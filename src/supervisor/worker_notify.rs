//! A worker's own `NOTIFY_SOCKET` (`ready = "notify"`, `watchdog`): the sd_notify
//! datagrams of workers that already speak it (gunicorn, Python's `sdnotify`, Node's
//! `sd-notify`), without steward's protocol.
//!
//! Each run of a worker gets a datagram socket of its own under the runtime directory,
//! with `SO_PASSCRED`: a datagram is taken only from the worker's process group (its
//! main process or a child that stayed in its group); anything else is dropped. The
//! socket is made before the spawn (the path is in the worker's environment) and
//! removed when the run ends.
//!
//! Bounds: a datagram is at most [`MAX_DATAGRAM`] bytes (a longer one is dropped whole);
//! `STATUS=` is cut to [`MAX_STATUS`] bytes; at most [`NOTICES_PER_SECOND`] notices a
//! second (bursts of twice that) reach the supervision loop, the rest are counted and
//! reported every ten seconds. `WATCHDOG=1` is only a time stamp the loop reads when it
//! judges the worker, so it never queues.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, UnixAddr, sockopt};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::policy::RateLimit;
use super::{Event, SlotId};

/// The longest datagram taken (systemd takes the same).
pub const MAX_DATAGRAM: usize = 4096;
/// The most of a `STATUS=` text kept.
pub const MAX_STATUS: usize = 256;
/// Notices a second that reach the loop from one worker.
pub const NOTICES_PER_SECOND: u32 = 20;
/// How often notices dropped over the limit (or from elsewhere) are reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What a datagram asks, besides the watchdog's `WATCHDOG=1`.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// `READY=1`.
    Ready,
    /// `STATUS=...`, cut to [`MAX_STATUS`] bytes, control characters replaced.
    Status(String),
    /// `STOPPING=1`: its next exit is intentional.
    Stopping,
    /// `WATCHDOG=trigger`: it asks to be treated as hung.
    WatchdogTrigger,
    /// `EXTEND_TIMEOUT_USEC=N`: the current start or stop timeout is extended to N from
    /// now.
    ExtendTimeout(Duration),
    /// Datagrams dropped: over the rate limit, too long, or from a process outside the
    /// worker's group (counts since the last report).
    Dropped {
        over_limit: u64,
        too_long: u64,
        foreign: u64,
    },
}

/// What one datagram says: its notices, and whether it held `WATCHDOG=1`.
pub fn parse(datagram: &[u8]) -> (Vec<Notice>, bool) {
    let text = String::from_utf8_lossy(datagram);
    let mut notices = Vec::new();
    let mut ping = false;
    for line in text.split('\n') {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match (key, value) {
            ("READY", "1") => notices.push(Notice::Ready),
            ("STOPPING", "1") => notices.push(Notice::Stopping),
            ("WATCHDOG", "1") => ping = true,
            ("WATCHDOG", "trigger") => notices.push(Notice::WatchdogTrigger),
            ("STATUS", s) => notices.push(Notice::Status(clean_status(s))),
            ("EXTEND_TIMEOUT_USEC", n) => {
                // Past the longest duration steward takes anywhere: not a timeout.
                if let Ok(us) = n.parse::<u64>()
                    && let Ok(d) = crate::time::bounded(Duration::from_micros(us))
                {
                    notices.push(Notice::ExtendTimeout(d));
                }
            }
            // MAINPID, RELOADING, ERRNO, FDSTORE, ...: nothing steward acts on.
            _ => {}
        }
    }
    (notices, ping)
}

fn clean_status(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_STATUS {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// A worker's watchdog stamps: when it last sent `WATCHDOG=1`, read by the loop.
#[derive(Debug, Clone)]
pub struct Pings {
    base: Instant,
    /// Milliseconds after `base`, plus one; 0: never.
    last: Arc<AtomicU64>,
}

impl Pings {
    fn new(base: Instant) -> Pings {
        Pings {
            base,
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn stamp(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.base).as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX - 1);
        self.last.store(ms + 1, Ordering::Relaxed);
    }

    /// When the last `WATCHDOG=1` came, if one did.
    pub fn last(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            n => Some(crate::time::after(
                self.base,
                Duration::from_millis(n.saturating_sub(1)),
            )),
        }
    }
}

/// The socket of one run, bound and waiting for the worker's pid.
#[derive(Debug)]
pub struct Bound {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

/// The socket of a running worker and the task that reads it. Dropping it stops the
/// task and removes the socket.
#[derive(Debug)]
pub struct Listener {
    path: PathBuf,
    pub pings: Pings,
    task: tokio::task::JoinHandle<()>,
    /// A duplicate of the socket, to see whether a datagram waits unread.
    peek: std::os::unix::net::UnixDatagram,
}

impl Listener {
    /// Whether a datagram is waiting that the reader has not taken yet.
    pub fn unread(&self) -> bool {
        let mut b = [0u8; 1];
        socket::recv(
            self.peek.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        )
        .is_ok()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Only a socket that never got its task is removed here; `start` moves the path.
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The path of run `run` of slot `slot` under `dir`.
pub fn path_for(dir: &Path, slot: SlotId, run: u64) -> PathBuf {
    dir.join(format!("{slot}.{run}"))
}

/// Make the socket at `path` (its directory made 0700 if missing), taking senders'
/// credentials.
pub fn bind(path: &Path) -> io::Result<Bound> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(path);
    let socket = std::os::unix::net::UnixDatagram::bind(path)?;
    socket::setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
    socket.set_nonblocking(true)?;
    Ok(Bound {
        socket,
        path: path.to_path_buf(),
    })
}

impl Bound {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start reading for the worker `pid` of `slot`, which started at `started`.
    pub fn start(
        mut self,
        slot: SlotId,
        pid: i32,
        started: Instant,
        events: mpsc::UnboundedSender<Event>,
    ) -> io::Result<Listener> {
        let path = std::mem::take(&mut self.path);
        let peek = self.socket.try_clone()?;
        let std_socket = self.socket.try_clone()?;
        let socket = tokio::net::UnixDatagram::from_std(std_socket)?;
        let pings = Pings::new(started);
        let stamps = pings.clone();
        let task = tokio::spawn(async move {
            read(socket, slot, pid, stamps, events).await;
        });
        Ok(Listener {
            path,
            pings,
            task,
            peek,
        })
    }
}

/// Whether `sender` is `pid` or in its process group.
fn from_worker(sender: i32, pid: i32) -> bool {
    sender == pid
        || (sender > 0
            && nix::unistd::getpgid(Some(Pid::from_raw(sender))) == Ok(Pid::from_raw(pid)))
}

/// One datagram: its bytes, whether it was cut, and who sent it.
fn receive(fd: i32, buf: &mut [u8]) -> io::Result<(usize, bool, Option<i32>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(socket::UnixCredentials, [std::os::fd::RawFd; 8]);
    let msg = socket::recvmsg::<UnixAddr>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut sender = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => sender = Some(cred.pid()),
                ControlMessageOwned::ScmRights(fds) => {
                    // Descriptors (FDSTORE=1) are not kept: closed at once.
                    for fd in fds {
                        // SAFETY: the kernel just installed `fd` in this process for this
                        // message; nothing else knows it, so taking ownership is sound.
                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
                _ => {}
            }
        }
    }
    let cut = msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC);
    Ok((msg.bytes, cut, sender))
}

async fn read(
    socket: tokio::net::UnixDatagram,
    slot: SlotId,
    pid: i32,
    pings: Pings,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut limit = RateLimit::new(NOTICES_PER_SECOND, Instant::now());
    let (mut too_long, mut foreign) = (0u64, 0u64);
    let mut next_report = Instant::now() + REPORT_EVERY;
    loop {
        let deadline = tokio::time::Instant::from_std(next_report);
        let got = tokio::time::timeout_at(
            deadline,
            socket.async_io(Interest::READABLE, || receive(socket.as_raw_fd(), &mut buf)),
        )
        .await;
        let now = Instant::now();
        match got {
            // Nothing came: only the report is due.
            Err(_) => {}
            Ok(Ok((n, cut, sender))) => {
                if !sender.is_some_and(|s| from_worker(s, pid)) {
                    foreign += 1;
                } else if cut || n > MAX_DATAGRAM {
                    too_long += 1;
                } else {
                    let (notices, ping) = parse(&buf[..n]);
                    if ping {
                        pings.stamp(now);
                    }
                    for msg in notices {
                        if limit.allow(now)
                            && events.send(Event::Notified { slot, pid, msg }).is_err()
                        {
                            return;
                        }
                    }
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => {
                tracing::warn!(
                    "cannot read the notify socket of worker pid {pid}: {e}; its notify messages are no longer read"
                );
                return;
            }
        }
        if now >= next_report {
            next_report = now + REPORT_EVERY;
            let over_limit = limit.take_suppressed();
            if over_limit + too_long + foreign > 0 {
                let msg = Notice::Dropped {
                    over_limit,
                    too_long,
                    foreign,
                };
                (too_long, foreign) = (0, 0);
                if events.send(Event::Notified { slot, pid, msg }).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_says_its_notices_and_unknown_or_malformed_lines_are_ignored() {
        let (n, ping) = parse(b"READY=1\nSTATUS=warming up\nMAINPID=1\nnonsense\nWATCHDOG=1");
        assert_eq!(n, vec![Notice::Ready, Notice::Status("warming up".into())]);
        assert!(ping);
        let (n, ping) = parse(b"STOPPING=1\nWATCHDOG=trigger\nEXTEND_TIMEOUT_USEC=2500000");
        assert_eq!(
            n,
            vec![
                Notice::Stopping,
                Notice::WatchdogTrigger,
                Notice::ExtendTimeout(Duration::from_millis(2500))
            ]
        );
        assert!(!ping);
        // READY=0, a negative or huge extension: nothing.
        let (n, _) =
            parse(b"READY=0\nEXTEND_TIMEOUT_USEC=-5\nEXTEND_TIMEOUT_USEC=18446744073709551615");
        assert!(n.is_empty(), "{n:?}");
        assert_eq!(parse(&[0xff, 0xfe]).0, vec![]);
    }

    #[test]
    fn a_status_is_bounded_and_has_no_control_characters() {
        let (n, _) = parse(format!("STATUS=a\tb\u{1b}[31m{}", "é".repeat(400)).as_bytes());
        let Notice::Status(s) = &n[0] else {
            panic!("{n:?}")
        };
        assert!(s.len() <= MAX_STATUS, "{}", s.len());
        assert!(s.starts_with("a b [31m"), "{s}");
        assert!(!s.chars().any(char::is_control));
    }

    #[test]
    fn pings_are_stamped_and_read_back() {
        let t0 = Instant::now();
        let p = Pings::new(t0);
        assert_eq!(p.last(), None);
        p.stamp(t0);
        assert_eq!(p.last(), Some(t0));
        p.stamp(t0 + Duration::from_millis(1500));
        assert_eq!(p.last(), Some(t0 + Duration::from_millis(1500)));
    }
}
