//! `steward top`: a live view of the daemon on a terminal (pools, queues with their
//! throughput and a sparkline of the oldest due job's wait, recent failures), `q` to
//! quit; plain periodic output when stdout is not a terminal.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::out;
use super::status::format_secs;
use crate::api::DaemonStatus;
use crate::control::client::Client;
use crate::error::Failure;

/// Samples kept per queue for its sparkline.
const HISTORY: usize = 40;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// What is remembered between refreshes, per queue.
#[derive(Default)]
struct QueueHistory {
    /// Jobs ended (succeeded + failed + cancelled) at the last refresh.
    ended: Option<u64>,
    at: Option<Instant>,
    rate: f64,
    waits: VecDeque<f64>,
}

#[derive(Default)]
pub struct View {
    queues: BTreeMap<String, QueueHistory>,
}

impl View {
    /// Take in a fresh status.
    fn update(&mut self, s: &DaemonStatus, now: Instant) {
        for q in &s.queues {
            let h = self.queues.entry(q.name.clone()).or_default();
            let ended = q.succeeded + q.failed + q.cancelled;
            if let (Some(before), Some(at)) = (h.ended, h.at) {
                let dt = now.duration_since(at).as_secs_f64();
                // Retention prunes finished jobs: a smaller count is not a negative rate.
                if dt > 0.0 {
                    h.rate = ended.saturating_sub(before) as f64 / dt;
                }
            }
            h.ended = Some(ended);
            h.at = Some(now);
            h.waits.push_back(q.oldest_queued_secs.unwrap_or(0.0));
            while h.waits.len() > HISTORY {
                h.waits.pop_front();
            }
        }
        self.queues
            .retain(|name, _| s.queues.iter().any(|q| &q.name == name));
    }
}

/// `▁▃█`: each value against the largest shown (at least `floor`, so that waits of a
/// few milliseconds do not fill the bars).
pub fn sparkline(values: impl IntoIterator<Item = f64> + Clone, floor: f64) -> String {
    let max = values.clone().into_iter().fold(floor, f64::max);
    values
        .into_iter()
        .map(|v| {
            if max <= 0.0 || v <= 0.0 {
                BARS[0]
            } else {
                let i = ((v / max) * (BARS.len() - 1) as f64).round() as usize;
                BARS[i.min(BARS.len() - 1)]
            }
        })
        .collect()
}

/// The screen (or one block of plain output).
fn render(s: &DaemonStatus, v: &View, width: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "steward {} — {}, pid {}, up {}   {}",
        s.version,
        s.state,
        s.pid,
        format_secs(s.uptime_secs as f64),
        s.status_line
    );
    if let Some(e) = s.journal.as_ref().and_then(|j| j.error.as_ref()) {
        let _ = writeln!(o, "JOURNAL: {e}");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "{:<20} {:>9}  {:<40} NOTE", "POOL", "RUNNING", "WORKERS");
    for p in &s.pools {
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for w in &p.workers {
            *states.entry(w.state.as_str()).or_default() += 1;
        }
        let states: Vec<String> = states.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let running = if p.mode == "exec" {
            format!("{}/{}", p.workers.len(), p.instances)
        } else {
            format!("{}/{}", p.running, p.instances)
        };
        let mut note = p.operator.clone().unwrap_or_default();
        if p.rolling {
            note = format!("restarting one by one {note}");
        }
        let _ = writeln!(
            o,
            "{:<20} {:>9}  {:<40} {}",
            p.name,
            running,
            if states.is_empty() {
                "-".to_string()
            } else {
                states.join(", ")
            },
            note
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<20} {:>8} {:>8} {:>9} {:>10}  OLDEST DUE JOB'S WAIT (last {HISTORY} refreshes)",
        "QUEUE", "QUEUED", "RUNNING", "ENDED/s", "WAITING"
    );
    for q in &s.queues {
        let h = v.queues.get(&q.name);
        let _ = writeln!(
            o,
            "{:<20} {:>8} {:>8} {:>9.1} {:>10}  {}",
            q.name,
            q.queued,
            q.running,
            h.map_or(0.0, |h| h.rate),
            q.oldest_queued_secs
                .map(format_secs)
                .unwrap_or_else(|| "-".into()),
            h.map(|h| sparkline(h.waits.iter().copied(), 1.0))
                .unwrap_or_default()
        );
    }
    if s.queues.is_empty() {
        let _ = writeln!(o, "(no queues)");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "RECENT FAILURES");
    if s.recent_failures.is_empty() {
        let _ = writeln!(o, "(none)");
    }
    for f in &s.recent_failures {
        let _ = writeln!(
            o,
            "  job {:<8} {:<16} {}  {}",
            f.id,
            f.queue,
            f.finished_at.as_deref().unwrap_or("-"),
            f.error.as_deref().unwrap_or("").replace('\n', " ")
        );
    }
    // Lines wider than the terminal would wrap and scroll the screen.
    o.lines()
        .map(|l| {
            let mut l: String = l.chars().take(width).collect();
            l.push('\n');
            l
        })
        .collect()
}

/// The terminal in raw mode on the alternate screen, restored when dropped.
struct Screen {
    saved: Option<nix::sys::termios::Termios>,
}

impl Screen {
    fn enter() -> Screen {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            raw.local_flags
                .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        let _ = std::io::stdout().write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Screen { saved }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = std::io::stdout().write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

fn terminal_width() -> usize {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize it is given; stdout is a valid descriptor.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        120
    }
}

/// Run `steward top` until `q` (or Ctrl-C), or for `count` refreshes.
pub async fn run(client: &Client, every: Duration, count: Option<u64>) -> Result<(), Failure> {
    let live = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let mut view = View::default();
    let mut keys = None;
    let _screen = live.then(|| {
        // Keys wait here at most 16 deep; a paste of many waits on the terminal instead.
        let (tx, rx) = tokio::sync::mpsc::channel::<u8>(16);
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut b) {
                if tx.blocking_send(b[0]).is_err() {
                    break;
                }
            }
        });
        keys = Some(rx);
        Screen::enter()
    });
    let mut shown = 0u64;
    loop {
        let status = client.get::<DaemonStatus>("/v1/status").await;
        let now = Instant::now();
        let text = match &status {
            Ok(s) => {
                view.update(s, now);
                render(s, &view, if live { terminal_width() } else { usize::MAX })
            }
            Err(e) => format!("steward: {e}\n"),
        };
        if live {
            let mut screen = String::from("\x1b[H\x1b[2J");
            screen.push_str(&text);
            let _ = write!(
                screen,
                "\nrefreshing every {} — q quits",
                humantime::format_duration(every)
            );
            out::write_bytes(screen.replace('\n', "\r\n").as_bytes())?;
        } else {
            let stamp = crate::time::rfc3339_secs(std::time::SystemTime::now());
            out::print(&format!("--- {stamp}\n{text}"))?;
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return status.map(|_| ()).map_err(Into::into);
        }
        // The next refresh, or at once on a key; q (or Ctrl-C) quits.
        match &mut keys {
            Some(rx) => tokio::select! {
                _ = tokio::time::sleep(every) => {}
                k = rx.recv() => {
                    if matches!(k, Some(b'q' | b'Q' | 3) | None) {
                        return Ok(());
                    }
                }
            },
            None => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_largest() {
        assert_eq!(sparkline([0.0, 1.0, 2.0, 4.0, 8.0], 1.0), "▁▂▃▅█");
        assert_eq!(sparkline([0.0, 0.0], 1.0), "▁▁");
        assert_eq!(sparkline([0.01, 0.0], 1.0), "▁▁");
        assert_eq!(sparkline(Vec::<f64>::new(), 1.0), "");
    }
}
