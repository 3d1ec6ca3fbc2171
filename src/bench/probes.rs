//! Scenario 16: what health probes cost the daemon. Many workers (`sleep`, so that the
//! workers themselves cost nothing) are probed over HTTP every second against a small
//! server in the bench process, which counts the probes it answers; the daemon's CPU over
//! a window is compared with the same pool without probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Bed, Sizes, fail, status};
use crate::control::client::Client;
use crate::error::Failure;

/// One run: the daemon's CPU in % of one core, and the probes answered per second.
pub(super) struct Probed {
    pub cpu_with: Vec<f64>,
    pub cpu_without: Vec<f64>,
    pub probes_per_sec: Vec<f64>,
}

/// Answer every request with 200, counting them.
async fn serve(listener: tokio::net::TcpListener, served: Arc<AtomicU64>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let served = served.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            if s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                served.fetch_add(1, Ordering::Relaxed);
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(fail)?;
    let port = listener.local_addr().map_err(fail)?.port();
    let served = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn(serve(listener, served.clone()));
    let mut out = Probed {
        cpu_with: Vec::new(),
        cpu_without: Vec::new(),
        probes_per_sec: Vec::new(),
    };
    let n = s.probed_workers;
    let window = Duration::from_secs_f64(s.probe_window_secs);
    for _ in 0..s.runs {
        for probed in [true, false] {
            let mut bed = Bed::new(exe)?;
            let health = if probed {
                format!(
                    "[pool.p.health]\nhttp = \"http://127.0.0.1:{port}/health\"\ninterval = \"1s\"\n"
                )
            } else {
                String::new()
            };
            bed.write_config(&format!(
                "[pool.p]\ncommand = [\"sleep\", \"3600\"]\ninstances = {n}\nstable_after = \"1s\"\n{health}"
            ))?;
            bed.start(&[])?;
            let (cpu, rate) = measure(&bed, n, window, &served).await?;
            if probed {
                out.cpu_with.push(cpu);
                out.probes_per_sec.push(rate);
            } else {
                out.cpu_without.push(cpu);
            }
            bed.stop();
        }
    }
    server.abort();
    Ok(out)
}
