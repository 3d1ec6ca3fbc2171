//! Talking to systemd through `NOTIFY_SOCKET` (sd_notify(3)).
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. Messages are sent from a
//! thread of their own behind a bounded queue: the datagram send blocks when the
//! receiver does not drain its socket, and the supervisor loop must never wait on that.
//! When the queue is full, messages are dropped (a missed `WATCHDOG=1` then lets
//! systemd act, as it should when notifications cannot get through).

use std::sync::mpsc::{self, SyncSender};
use std::time::Duration;

use sd_notify::NotifyState;

/// A message to send, owned so that it can cross to the sender thread.
enum Msg {
    Ready(String),
    Status(String),
    Reloading,
    Stopping(String),
    Watchdog,
    Extend(u32),
}

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    tx: Option<SyncSender<Msg>>,
}

fn send_now(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (a watchdog meant for
    /// another pid is ignored).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let tx = enabled.then(|| {
            let (tx, rx) = mpsc::sync_channel::<Msg>(64);
            let spawned = std::thread::Builder::new()
                .name("steward-notify".into())
                .spawn(move || {
                    while let Ok(m) = rx.recv() {
                        match m {
                            Msg::Ready(s) => {
                                send_now(&[NotifyState::Ready, NotifyState::Status(&s)])
                            }
                            Msg::Status(s) => send_now(&[NotifyState::Status(&s)]),
                            Msg::Reloading => match NotifyState::monotonic_usec_now() {
                                Ok(now) => send_now(&[
                                    NotifyState::Reloading,
                                    now,
                                    NotifyState::Status("reloading configuration"),
                                ]),
                                Err(_) => send_now(&[NotifyState::Reloading]),
                            },
                            Msg::Stopping(s) => {
                                send_now(&[NotifyState::Stopping, NotifyState::Status(&s)])
                            }
                            Msg::Watchdog => send_now(&[NotifyState::Watchdog]),
                            Msg::Extend(usec) => send_now(&[NotifyState::ExtendTimeoutUsec(usec)]),
                        }
                    }
                });
            spawned.ok().map(|_| tx)
        });
        Notifier {
            enabled,
            watchdog: sd_notify::watchdog_enabled(),
            tx: tx.flatten(),
        }
    }

    /// How often to send `WATCHDOG=1`: half the timeout systemd gave us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| (w / 2).max(Duration::from_millis(1)))
    }

    fn send(&self, m: Msg) {
        if !self.enabled {
            return;
        }
        if let Some(tx) = &self.tx
            && tx.try_send(m).is_err()
        {
            tracing::debug!(
                "sd_notify queue full: the service manager is not reading; message dropped"
            );
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(Msg::Ready(status.to_string()));
    }

    pub fn status(&self, status: &str) {
        self.send(Msg::Status(status.to_string()));
    }

    pub fn reloading(&self) {
        self.send(Msg::Reloading);
    }

    pub fn stopping(&self, status: &str) {
        self.send(Msg::Stopping(status.to_string()));
    }

    pub fn watchdog(&self) {
        self.send(Msg::Watchdog);
    }

    /// Ask for `more` time from now before systemd's stop timeout kills us.
    pub fn extend_timeout(&self, more: Duration) {
        let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
        self.send(Msg::Extend(usec));
    }
}
