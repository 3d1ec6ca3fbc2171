//! Scenario 16: what health probes cost the daemon. Many workers (`sleep`, so that the
//! workers themselves cost nothing) are probed over HTTP every second against a small
//! server in the bench process, which counts the probes it answers; the daemon's CPU over
//! a window is compared with the same pool without probes. The server keeps connections
//! open between requests (as Node's `http`, Go's `net/http` and most others do), and
//! then closes each after its answer, so that every probe needs a new connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Bed, Sizes, fail, status};
use crate::control::client::Client;
use crate::error::Failure;

/// The runs: the daemon's CPU in % of one core, and the probes answered per second,
/// against the server that keeps connections (`kept_`) and the one that closes them
/// (`fresh_`).
pub(super) struct Probed {
    pub kept_cpu: Vec<f64>,
    pub kept_rate: Vec<f64>,
    pub fresh_cpu: Vec<f64>,
    pub fresh_rate: Vec<f64>,
    pub cpu_without: Vec<f64>,
}

/// Answer every request with 200, counting them; with `keep`, every request of a
/// connection until the client ends it, else one and close.
async fn serve(listener: tokio::net::TcpListener, served: Arc<AtomicU64>, keep: bool) {
    let answer: &'static [u8] = if keep {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    };
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let served = served.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                if s.write_all(answer).await.is_err() {
                    return;
                }
                served.fetch_add(1, Ordering::Relaxed);
                if !keep {
                    return;
                }
            }
        });
    }
}

/// The daemon's CPU (% of one core) over `window`, once `workers` run.
async fn measure(
    bed: &Bed,
    workers: u32,
    window: Duration,
    served: &AtomicU64,
) -> Result<(f64, f64), Failure> {
    let c = Client::new(&bed.socket());
    let t0 = Instant::now();
    loop {
        let st = status(&c).await?;
        let running: u32 = st.pools.iter().map(|p| p.running).sum();
        if running == workers {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(fail(format!(
                "only {running} of {workers} workers running after 120s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the start: every worker is on its steady interval.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, n0, w0) = (bed.cpu(), served.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    let (cpu1, n1, w1) = (bed.cpu(), served.load(Ordering::Relaxed), Instant::now());
    let secs = w1.duration_since(w0).as_secs_f64();
    let cpu = 100.0 * cpu1.saturating_sub(cpu0).as_secs_f64() / secs;
    Ok((cpu, (n1 - n0) as f64 / secs))
}

pub(super) async fn probed_workers(exe: &std::path::Path, s: &Sizes) -> Result<Probed, Failure> {
    let mut ports = Vec::new();
    let served = Arc::new(AtomicU64::new(0));
    let mut servers = Vec::new();
    for keep in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(fail)?;
        ports.push(listener.local_addr().map_err(fail)?.port());
        servers.push(tokio::spawn(serve(listener, served.clone(), keep)));
    }
    let mut out = Probed {
        kept_cpu: Vec::new(),
        kept_rate: Vec::new(),
        fresh_cpu: Vec::new(),
        fresh_rate: Vec::new(),
        cpu_without: Vec::new(),
    };
    let n = s.probed_workers;
    let window = Duration::from_secs_f64(s.probe_window_secs);
    for _ in 0..s.runs {
        for server in [Some(ports[0]), Some(ports[1]), None] {
            let mut bed = Bed::new(exe)?;
            let health = match server {
                Some(port) => format!(
                    "[pool.p.health]\nhttp = \"http://127.0.0.1:{port}/health\"\ninterval = \"1s\"\n"
                ),
                None => String::new(),
            };
            bed.write_config(&format!(
                "[pool.p]\ncommand = [\"sleep\", \"3600\"]\ninstances = {n}\nstable_after = \"1s\"\n{health}"
            ))?;
            bed.start(&[])?;
            let (cpu, rate) = measure(&bed, n, window, &served).await?;
            match server {
                Some(p) if p == ports[0] => {
                    out.kept_cpu.push(cpu);
                    out.kept_rate.push(rate);
                }
                Some(_) => {
                    out.fresh_cpu.push(cpu);
                    out.fresh_rate.push(rate);
                }
                None => out.cpu_without.push(cpu),
            }
            bed.stop();
        }
    }
    for server in servers {
        server.abort();
    }
    Ok(out)
}
