//! `steward bench`: scenarios measured against a private daemon in a temporary directory.
//!
//! Each run of each scenario starts its own daemon on a fresh journal (nothing of the
//! host's steward is touched), uses the built-in `bench-worker` or `/bin/true` as workers,
//! and keeps the default durability (`synchronous = "full"`). Results are medians over
//! several runs with min–max, because machines are noisy.

mod clients;
mod postgres;
mod probes;
pub mod worker;

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde::Serialize;
use serde_json::json;

use crate::api::{BatchResponse, DaemonStatus, SubmitResponse};
use crate::control::client::Client;
use crate::error::Failure;
use worker::now_us;

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// What the target asks, e.g. ">= 20000".
    pub target: String,
    pub met: Option<bool>,
    pub runs: usize,
    pub note: String,
}

struct Sizes {
    runs: usize,
    protocol_jobs: usize,
    exec_jobs: usize,
    cli_submits: usize,
    latency_secs: f64,
    respawns: usize,
    restart_queued: usize,
    list_rows: usize,
    output_lines: usize,
    delayed_jobs: usize,
    due_jobs: usize,
    pg_jobs: usize,
    pg_sql_jobs: usize,
    rescue_runs: usize,
    probed_workers: u32,
    probe_window_secs: f64,
}

const FULL: Sizes = Sizes {
    runs: 3,
    protocol_jobs: 100_000,
    exec_jobs: 5_000,
    cli_submits: 500,
    latency_secs: 3.0,
    respawns: 20,
    restart_queued: 100_000,
    list_rows: 1_000_000,
    output_lines: 1_000_000,
    delayed_jobs: 100_000,
    due_jobs: 20_000,
    pg_jobs: 100_000,
    pg_sql_jobs: 100_000,
    rescue_runs: 3,
    probed_workers: 1000,
    probe_window_secs: 20.0,
};

const QUICK: Sizes = Sizes {
    runs: 2,
    protocol_jobs: 5_000,
    exec_jobs: 300,
    cli_submits: 50,
    latency_secs: 1.0,
    respawns: 5,
    restart_queued: 10_000,
    list_rows: 20_000,
    output_lines: 100_000,
    delayed_jobs: 10_000,
    due_jobs: 2_000,
    pg_jobs: 1_000,
    pg_sql_jobs: 10_000,
    rescue_runs: 1,
    probed_workers: 100,
    probe_window_secs: 3.0,
};

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!("bench: {e}"))
}

/// A private daemon in a temporary directory.
struct Bed {
    dir: PathBuf,
    exe: PathBuf,
    daemon: Option<Child>,
    /// Instants at which READY=1 arrived (the socket is drained by a thread, as a
    /// service manager would).
    ready: std::sync::mpsc::Receiver<Instant>,
    /// Instants at which WATCHDOG=1 arrived.
    pings: std::sync::mpsc::Receiver<Instant>,
}

impl Bed {
    fn new(exe: &Path) -> Result<Bed, Failure> {
        let dir = std::env::temp_dir().join(format!(
            "steward-bench-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let notify = UnixDatagram::bind(dir.join("notify.sock")).map_err(fail)?;
        let (tx, ready) = std::sync::mpsc::channel();
        let (ping_tx, pings) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.lines().any(|l| l == "WATCHDOG=1") {
                    let _ = ping_tx.send(Instant::now());
                }
                if text.lines().any(|l| l == "READY=1") && tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        });
        Ok(Bed {
            dir,
            exe: exe.to_path_buf(),
            daemon: None,
            ready,
            pings,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("s.sock")
    }

    fn write_config(&self, body: &str) -> Result<(), Failure> {
        self.write_config_with_daemon("", body)
    }

    /// The config, with `daemon_extra` lines in its `[daemon]` table.
    fn write_config_with_daemon(&self, daemon_extra: &str, body: &str) -> Result<(), Failure> {
        let text = format!(
            "[daemon]\nstate_dir = \"state\"\nsocket = \"s.sock\"\nshutdown_timeout = \"10s\"\n{daemon_extra}\n{body}"
        );
        std::fs::write(self.dir.join("steward.toml"), text).map_err(fail)
    }

    fn worker_pool(
        &self,
        name: &str,
        queue: &str,
        instances: u32,
        concurrency: u32,
        extra: &str,
    ) -> String {
        format!(
            "[pool.{name}]\ncommand = [\"{}\", \"bench-worker\"]\ninstances = {instances}\nqueues = [\"{queue}\"]\nconcurrency = {concurrency}\n{extra}\n",
            self.exe.display()
        )
    }

    /// Start the daemon; returns how long until READY=1.
    fn start(&mut self, env: &[(&str, String)]) -> Result<Duration, Failure> {
        while self.ready.try_recv().is_ok() {}
        let log = std::fs::File::create(self.dir.join("daemon.log")).map_err(fail)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("daemon")
            .arg("--config")
            .arg(self.dir.join("steward.toml"))
            .args(["--log-format", "text"])
            .env("NOTIFY_SOCKET", self.dir.join("notify.sock"))
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let t0 = Instant::now();
        self.daemon = Some(cmd.spawn().map_err(fail)?);
        while t0.elapsed() < Duration::from_secs(60) {
            if let Ok(at) = self.ready.recv_timeout(Duration::from_millis(100)) {
                return Ok(at.duration_since(t0));
            }
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(|d| d.try_wait()) {
                return Err(fail(format!(
                    "the daemon exited during start ({status}); see {}",
                    self.dir.join("daemon.log").display()
                )));
            }
        }
        Err(fail("the daemon did not send READY=1 within 60s"))
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().map(|d| d.id()).unwrap_or(0)
    }

    fn kill9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = d.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// CPU time the daemon has used so far, all threads (from /proc).
    fn cpu(&self) -> Duration {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64;
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                // Fields after the command name, which may hold spaces: utime and stime
                // are the 14th and 15th of the whole line.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let user: f64 = f.get(11)?.parse().ok()?;
                let system: f64 = f.get(12)?.parse().ok()?;
                Some(Duration::from_secs_f64((user + system) / ticks))
            })
            .unwrap_or_default()
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn journal_bytes(&self) -> u64 {
        ["journal.db", "journal.db-wal"]
            .iter()
            .map(|f| {
                std::fs::metadata(self.dir.join("state").join(f))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn status(c: &Client) -> Result<DaemonStatus, Failure> {
    c.get("/v1/status").await.map_err(fail)
}

async fn succeeded(c: &Client, queue: &str) -> Result<u64, Failure> {
    let q: Vec<crate::api::QueueStatus> = c.get("/v1/queues").await.map_err(fail)?;
    Ok(q.iter()
        .find(|q| q.name == queue)
        .map(|q| q.succeeded)
        .unwrap_or(0))
}

async fn wait_succeeded(c: &Client, queue: &str, n: u64, limit: Duration) -> Result<(), Failure> {
    let t0 = Instant::now();
    while succeeded(c, queue).await? < n {
        if t0.elapsed() > limit {
            return Err(fail(format!(
                "jobs in {queue} did not all succeed within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn submit_batches(
    c: &Client,
    queue: &str,
    n: usize,
    payload: serde_json::Value,
) -> Result<(), Failure> {
    submit_jobs(c, n, json!({"queue": queue, "payload": payload})).await
}

/// Submit `n` copies of `job` (a submit request) in batches of 2,000.
async fn submit_jobs(c: &Client, n: usize, job: serde_json::Value) -> Result<(), Failure> {
    let mut left = n;
    while left > 0 {
        let k = left.min(2000);
        let jobs: Vec<serde_json::Value> = (0..k).map(|_| job.clone()).collect();
        let _: BatchResponse = c
            .call(
                Method::POST,
                "/v1/jobs/batch",
                Some(&json!({ "jobs": jobs })),
            )
            .await
            .map_err(fail)?;
        left -= k;
    }
    Ok(())
}

/// Milliseconds from `sent[id]` (µs since the epoch) to the arrival of job `id` in the
/// bench worker's log at `recv` (lines "ID µs"), sorted.
fn latencies(
    recv: &Path,
    sent: &std::collections::HashMap<i64, u128>,
) -> Result<Vec<f64>, Failure> {
    let text = std::fs::read_to_string(recv).map_err(fail)?;
    let mut lat: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id: i64 = f.next()?.parse().ok()?;
            let at: u128 = f.next()?.parse().ok()?;
            let from = *sent.get(&id)?;
            Some(at.saturating_sub(from) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sort `values` and return their median (0 when there are none).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn summarize(
    scenario: &str,
    unit: &str,
    mut values: Vec<f64>,
    target: &str,
    met: impl Fn(f64) -> bool,
    note: String,
) -> Outcome {
    let median = median(&mut values);
    Outcome {
        scenario: scenario.to_string(),
        unit: unit.to_string(),
        median,
        min: values.first().copied().unwrap_or(0.0),
        max: values.last().copied().unwrap_or(0.0),
        target: target.to_string(),
        met: (!target.is_empty()).then(|| met(median)),
        runs: values.len(),
        note,
    }
}

/// 1. Protocol workers: submit trivial jobs in batches, time until all succeeded.
async fn protocol_throughput(exe: &Path, s: &Sizes) -> Result<Throughput, Failure> {
    let mut t = Throughput::default();
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        bed.write_config(&format!(
            "[queue.b]\n\n{}",
            bed.worker_pool("w", "b", 4, 8, "")
        ))?;
        bed.start(&[])?;
        let c = Client::new(&bed.socket());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        let cpu0 = bed.cpu();
        submit_batches(&c, "b", s.protocol_jobs, json!({})).await?;
        wait_succeeded(&c, "b", s.protocol_jobs as u64, Duration::from_secs(600)).await?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = bed.cpu().saturating_sub(cpu0);
        t.rates.push(s.protocol_jobs as f64 / secs);
        t.cpu_us
            .push(cpu.as_secs_f64() * 1e6 / s.protocol_jobs as f64);
        t.sizes
            .push(bed.journal_bytes() as f64 / s.protocol_jobs as f64);
        bed.stop();
    }
    Ok(t)
}

#[derive(Default)]
struct Throughput {
    rates: Vec<f64>,
    /// CPU time of the daemon (all its threads, not the workers) per job, in µs.
    cpu_us: Vec<f64>,
    /// Journal bytes per job at the end.
    sizes: Vec<f64>,
}

/// 2. Exec pool: jobs of /bin/true, 8 at once.
async fn exec_throughput(exe: &Path, s: &Sizes) -> Result<Vec<f64>, Failure> {
    let mut rates = Vec::new();
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        bed.write_config("[queue.e]\n\n[pool.t]\nmode = \"exec\"\ncommand = [\"/bin/true\"]\nqueues = [\"e\"]\ninstances = 8\n")?;
        bed.start(&[])?;
        let c = Client::new(&bed.socket());
        let t0 = Instant::now();
        submit_batches(&c, "e", s.exec_jobs, json!({})).await?;
        wait_succeeded(&c, "e", s.exec_jobs as u64, Duration::from_secs(600)).await?;
        rates.push(s.exec_jobs as f64 / t0.elapsed().as_secs_f64());
        bed.stop();
    }
    Ok(rates)
}

/// What scenario 3 measured, per run.
#[derive(Default)]
struct CliSubmits {
    /// `steward submit` processes per second.
    rates: Vec<f64>,
    /// `/bin/true` started the same way just before: what this machine allows.
    true_rates: Vec<f64>,
    /// Median time of the daemon's answer to one submit, in ms, sent from this process at
    /// the pace the CLI kept: the part of a submit that is not starting a process.
    answers_ms: Vec<f64>,
}

/// 3. `steward submit`, one process per job, sequential.
async fn cli_submits(exe: &Path, s: &Sizes) -> Result<CliSubmits, Failure> {
    let mut m = CliSubmits::default();
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        bed.write_config("[queue.c]\n")?;
        bed.start(&[])?;
        let t0 = Instant::now();
        for _ in 0..s.cli_submits {
            Command::new("/bin/true")
                .stdout(Stdio::null())
                .status()
                .map_err(fail)?;
        }
        m.true_rates
            .push(s.cli_submits as f64 / t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        for i in 0..s.cli_submits {
            let st = Command::new(exe)
                .args(["submit", "c", &format!("{{\"n\":{i}}}"), "--socket"])
                .arg(bed.socket())
                .stdout(Stdio::null())
                .status()
                .map_err(fail)?;
            if !st.success() {
                return Err(fail("steward submit failed"));
            }
        }
        let took = t0.elapsed();
        m.rates.push(s.cli_submits as f64 / took.as_secs_f64());
        // The same submits again, from this process at the same pace: the daemon sees the
        // same pauses between them (which decide how long the disk takes to flush), and
        // the time no longer includes starting a process.
        let every = took / s.cli_submits as u32;
        let c = Client::new(&bed.socket());
        let mut answers: Vec<f64> = Vec::with_capacity(s.cli_submits);
        let t0 = Instant::now();
        for i in 0..s.cli_submits {
            if let Some(wait) = (t0 + every * i as u32).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let sent = Instant::now();
            let _: SubmitResponse = c
                .call(
                    Method::POST,
                    "/v1/jobs",
                    Some(&json!({"queue": "c", "payload": {"n": i}})),
                )
                .await
                .map_err(fail)?;
            answers.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        m.answers_ms.push(median(&mut answers));
        bed.stop();
    }
    Ok(m)
}

/// 4. Dispatch latency at 200 jobs/s: submit answered → worker has the job.
async fn dispatch_latency(exe: &Path, s: &Sizes) -> Result<(Vec<f64>, Vec<f64>), Failure> {
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        let recv = bed.dir.join("recv.log");
        // Workers get only their pool's env (and a clean base), not the daemon's.
        bed.write_config(&format!(
            "[queue.l]\n\n{}",
            bed.worker_pool(
                "w",
                "l",
                4,
                8,
                &format!("env = {{ STEWARD_BENCH_RECV = \"{}\" }}", recv.display())
            )
        ))?;
        bed.start(&[])?;
        let c = Client::new(&bed.socket());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = (200.0 * s.latency_secs) as usize;
        let mut answered = std::collections::HashMap::new();
        let t0 = Instant::now();
        for i in 0..n {
            let due = t0 + Duration::from_millis(5 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let r: SubmitResponse = c
                .call(
                    Method::POST,
                    "/v1/jobs",
                    Some(&json!({"queue": "l", "payload": {}})),
                )
                .await
                .map_err(fail)?;
            answered.insert(r.id, now_us());
        }
        wait_succeeded(&c, "l", n as u64, Duration::from_secs(60)).await?;
        let lat = latencies(&recv, &answered)?;
        p50s.push(percentile(&lat, 0.5));
        p99s.push(percentile(&lat, 0.99));
        bed.stop();
    }
    Ok((p50s, p99s))
}

/// 5. Worker killed → replacement started (backoff initial 0).
async fn respawn(exe: &Path, s: &Sizes) -> Result<Vec<f64>, Failure> {
    let mut medians = Vec::new();
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        let starts = bed.dir.join("starts.log");
        bed.write_config(&format!(
            "[queue.r]\n\n{}",
            bed.worker_pool(
                "w",
                "r",
                1,
                1,
                &format!(
                    "backoff = {{ initial = \"0\", max = \"0\", jitter = 0.0 }}\nstable_after = \"100ms\"\n\
                     env = {{ STEWARD_BENCH_START = \"{}\" }}",
                    starts.display()
                )
            )
        ))?;
        bed.start(&[])?;
        let mut deltas = Vec::new();
        for _ in 0..s.respawns {
            let lines = |p: &Path| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            let t = Instant::now();
            let mut before = lines(&starts);
            while before.is_empty() && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                before = lines(&starts);
            }
            let pid: i32 = before
                .last()
                .and_then(|l| l.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| fail("no worker start recorded"))?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let killed = now_us();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .map_err(fail)?;
            let t = Instant::now();
            loop {
                let now = lines(&starts);
                if now.len() > before.len() {
                    let started: u128 = now
                        .last()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(killed);
                    deltas.push(started.saturating_sub(killed) as f64 / 1000.0);
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    return Err(fail("the killed worker was not replaced within 10s"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        deltas.sort_by(|a, b| a.total_cmp(b));
        medians.push(percentile(&deltas, 0.5));
        bed.stop();
    }
    Ok(medians)
}

/// 6 and 7. kill -9 with many queued and 8 running → READY=1; RSS idle and loaded.
async fn restart_and_rss(
    exe: &Path,
    s: &Sizes,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>), Failure> {
    let (mut ready, mut reclaimed, mut rss_idle, mut rss_loaded) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        bed.write_config(&format!(
            "[queue.k]\n\n{}\n[queue.x]\n\n[pool.t]\nmode = \"exec\"\ncommand = [\"/bin/true\"]\nqueues = [\"x\"]\ninstances = 8\n",
            bed.worker_pool("w", "k", 8, 1, "")
        ))?;
        bed.start(&[])?;
        let c = Client::new(&bed.socket());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        rss_idle.push(bed.rss_kib() as f64 / 1024.0);
        submit_batches(&c, "k", 8, json!({"sleep_ms": 600_000})).await?;
        let t = Instant::now();
        loop {
            let st = status(&c).await?;
            if st.queues.iter().find(|q| q.name == "k").map(|q| q.running) == Some(8) {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(fail("8 jobs did not start"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        submit_batches(&c, "k", s.restart_queued, json!({})).await?;
        bed.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        ready.push(bed.start(&[])?.as_secs_f64() * 1000.0);
        let log = std::fs::read_to_string(bed.dir.join("daemon.log")).unwrap_or_default();
        let n = log
            .lines()
            .find_map(|l| {
                l.split("reclaimed ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        reclaimed.push(n);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        rss_loaded.push(bed.rss_kib() as f64 / 1024.0);
        bed.kill9();
    }
    Ok((ready, reclaimed, rss_idle, rss_loaded))
}

/// 8. `steward jobs --limit 50` against a journal with many rows.
async fn list_cost(exe: &Path, s: &Sizes) -> Result<Vec<f64>, Failure> {
    let mut bed = Bed::new(exe)?;
    bed.write_config("[queue.m]\n")?;
    bed.start(&[])?;
    let c = Client::new(&bed.socket());
    submit_batches(&c, "m", s.list_rows, json!({"n": 1})).await?;
    let mut times = Vec::new();
    for _ in 0..s.runs.max(5) {
        let t0 = Instant::now();
        let st = Command::new(exe)
            .args(["jobs", "--limit", "50", "--socket"])
            .arg(bed.socket())
            .stdout(Stdio::null())
            .status()
            .map_err(fail)?;
        if !st.success() {
            return Err(fail("steward jobs failed"));
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    bed.stop();
    Ok(times)
}

/// Scenario 11: the daemon's resident memory after one worker wrote invalid lines as fast
/// as it could for 10 s without reading its socket; and the longest watchdog gap meanwhile.
async fn garbage_flood(exe: &Path, s: &Sizes) -> Result<(Vec<f64>, Vec<f64>), Failure> {
    let (mut rss, mut gaps) = (Vec::new(), Vec::new());
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        bed.write_config(&format!(
            "[queue.f]\n\n{}",
            bed.worker_pool("w", "f", 1, 1, "env = { STEWARD_BENCH_FLOOD = \"10\" }")
        ))?;
        bed.start(&[("WATCHDOG_USEC", "200000".to_string())])?;
        let t0 = Instant::now();
        let (mut last, mut worst) = (Instant::now(), Duration::ZERO);
        while t0.elapsed() < Duration::from_secs(10) {
            if bed.pings.try_recv().is_ok() {
                worst = worst.max(last.elapsed());
                last = Instant::now();
                while bed.pings.try_recv().is_ok() {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rss.push(bed.rss_kib() as f64 / 1024.0);
        gaps.push(worst.as_secs_f64() * 1000.0);
        bed.stop();
    }
    Ok((rss, gaps))
}

/// Scenario 10: the dispatch rate of due jobs alone, and with many jobs of a higher
/// priority delayed by an hour waiting in the same queue.
async fn delayed_dispatch(exe: &Path, s: &Sizes) -> Result<(Vec<f64>, Vec<f64>), Failure> {
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for _ in 0..s.runs {
        for delayed in [0, s.delayed_jobs] {
            let mut bed = Bed::new(exe)?;
            bed.write_config(&format!(
                "[queue.d]\n\n{}",
                bed.worker_pool("w", "d", 4, 8, "")
            ))?;
            bed.start(&[])?;
            let c = Client::new(&bed.socket());
            submit_jobs(
                &c,
                delayed,
                json!({"queue": "d", "payload": {}, "priority": 100, "delay_ms": 3_600_000}),
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = Instant::now();
            submit_jobs(&c, s.due_jobs, json!({"queue": "d", "payload": {}})).await?;
            wait_succeeded(&c, "d", s.due_jobs as u64, Duration::from_secs(900)).await?;
            let rate = s.due_jobs as f64 / t0.elapsed().as_secs_f64();
            if delayed == 0 {
                alone.push(rate);
            } else {
                beside.push(rate);
            }
            bed.stop();
        }
    }
    Ok((alone, beside))
}

/// Scenario 9, worker output: one worker prints lines of 90 bytes as fast as it can; lines per
/// second until the last is in the log file, every line checked to be there.
async fn worker_output(exe: &Path, s: &Sizes) -> Result<Vec<f64>, Failure> {
    // Printed by the worker after its last line; not in its command, which is logged.
    const END: &str = "steward-bench-output-end POOL=out";
    let mut rates = Vec::new();
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        let line = "x".repeat(89);
        bed.write_config(&format!(
            "[pool.out]\nstable_after = \"100ms\"\n\
             command = [\"sh\", \"-c\", \"yes {line} | head -n {}; printf 'steward-bench-%s-end\\\\n' output; exec sleep 1000\"]\n",
            s.output_lines
        ))?;
        let log = bed.dir.join("daemon.log");
        let t0 = Instant::now();
        bed.start(&[])?;
        let mut seen = false;
        while t0.elapsed() < Duration::from_secs(300) {
            if tail(&log, 4096).contains(END) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = t0.elapsed();
        if !seen {
            return Err(fail(
                "the worker's output did not reach the log within 300 s",
            ));
        }
        let text = std::fs::read_to_string(&log).map_err(fail)?;
        let mine = format!("{line} POOL=out");
        let lines = text.lines().filter(|l| l.contains(&mine)).count();
        if lines != s.output_lines {
            return Err(fail(format!(
                "{lines} of the worker's {} lines reached the log",
                s.output_lines
            )));
        }
        rates.push(s.output_lines as f64 / took.as_secs_f64());
        bed.stop();
    }
    Ok(rates)
}

/// The last `n` bytes of a file, as text.
fn tail(path: &Path, n: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The rows of scenarios 12–15 (the PostgreSQL journal) that are wanted.
async fn postgres_rows(
    exe: &Path,
    cluster: &crate::journal::postgres::cluster::Cluster,
    s: &Sizes,
    want: &dyn Fn(u8) -> bool,
    progress: &dyn Fn(&str),
    out: &mut Vec<Outcome>,
) -> Result<(), Failure> {
    if want(12) {
        progress("12. PostgreSQL journal: throughput");
        let (one, three) = postgres::throughput(exe, cluster, s).await?;
        let mut base = one.clone();
        let base = median(&mut base);
        out.push(summarize(
            &format!(
                "12. PostgreSQL journal: {} jobs, 1 daemon, 6 workers × 16",
                s.pg_jobs
            ),
            "jobs/s",
            one,
            ">= 25000",
            |m| m >= 25_000.0,
            String::new(),
        ));
        let row = summarize(
            "12. the same on 3 daemons, 2 workers × 16 each",
            "jobs/s",
            three,
            ">= 1 daemon",
            |m| m >= base,
            String::new(),
        );
        let note = format!(
            "{:.0} % of 1 daemon's rate",
            if base > 0.0 {
                100.0 * row.median / base
            } else {
                0.0
            }
        );
        out.push(Outcome { note, ..row });
    }
    if want(13) {
        progress("13. PostgreSQL journal: dispatch latency");
        let (p50, p99) = postgres::latency(exe, cluster, s).await?;
        out.push(summarize(
            "13. PostgreSQL: SQL submit → worker has it, 50 jobs/s, p50",
            "ms",
            p50,
            "<= 10",
            |m| m <= 10.0,
            String::new(),
        ));
        out.push(summarize(
            "13. the same, p99",
            "ms",
            p99,
            "",
            |_| true,
            "report".into(),
        ));
    }
    if want(14) {
        progress("14. PostgreSQL journal: rescue after kill -9 (about 30 s a run)");
        let v = postgres::rescue(exe, cluster, s).await?;
        let limit =
            (crate::journal::postgres::store::HOST_TTL + Duration::from_secs(10)).as_secs_f64();
        out.push(summarize(
            "14. PostgreSQL: kill -9 of a host holding 8 jobs → all rescued",
            "s",
            v,
            &format!("<= {limit:.0}"),
            |m| m <= limit,
            String::new(),
        ));
    }
    if want(15) {
        progress("15. PostgreSQL journal: submits in SQL");
        let v = postgres::sql_submits(cluster, s).await?;
        out.push(summarize(
            &format!(
                "15. PostgreSQL: {} jobs by steward.submit, 1,000 a statement",
                s.pg_sql_jobs
            ),
            "jobs/s",
            v,
            ">= 10000",
            |m| m >= 10_000.0,
            String::new(),
        ));
    }
    Ok(())
}

pub fn run(quick: bool, json_out: bool, only: &[u8]) -> Result<(), Failure> {
    let want = |n: u8| only.is_empty() || only.contains(&n);
    let exe = std::env::current_exe().map_err(fail)?;
    let s = if quick { &QUICK } else { &FULL };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    let mut out = Vec::new();
    let progress = |name: &str| {
        if !json_out {
            eprintln!("running: {name}");
        }
    };
    rt.block_on(async {
        let mut sizes = Vec::new();
        if want(1) || want(8) {
            progress("1. protocol throughput");
            let t = protocol_throughput(&exe, s).await?;
            sizes = t.sizes;
            let mut cpu = t.cpu_us;
            let name = format!(
                "1. protocol workers, {} jobs, 4 workers × concurrency 8",
                s.protocol_jobs
            );
            out.push(summarize(
                &name,
                "jobs/s",
                t.rates,
                ">= 20000",
                |m| m >= 20_000.0,
                format!("daemon CPU {:.0} µs per job (median)", median(&mut cpu)),
            ));
        }
        if want(2) {
            progress("2. exec throughput");
            let name = format!("2. exec pool, {} jobs of /bin/true, 8 at once", s.exec_jobs);
            let v = exec_throughput(&exe, s).await?;
            out.push(summarize(
                &name,
                "jobs/s",
                v,
                ">= 1200",
                |m| m >= 1200.0,
                String::new(),
            ));
        }
        if want(3) {
            progress("3. CLI submits");
            let name = format!(
                "3. steward submit CLI, {} sequential processes",
                s.cli_submits
            );
            let mut m = cli_submits(&exe, s).await?;
            let bare = median(&mut m.true_rates);
            let row = summarize(
                &name,
                "submits/s",
                m.rates,
                ">= 500",
                |m| m >= 500.0,
                String::new(),
            );
            let note = format!(
                "/bin/true started the same way: {bare:.0}/s (median); submits ran at {:.0} % of that",
                if bare > 0.0 { 100.0 * row.median / bare } else { 0.0 }
            );
            let each = if row.median > 0.0 { 1e3 / row.median } else { 0.0 };
            out.push(Outcome { note, ..row });
            out.push(summarize(
                "3. the daemon's answer to each, at the same pace",
                "ms",
                m.answers_ms,
                "",
                |_| true,
                format!("of {each:.2} ms per CLI submit; the rest is mostly the client process: starting, running and exiting it"),
            ));
        }
        if want(4) {
            progress("4. dispatch latency");
            let (p50, p99) = dispatch_latency(&exe, s).await?;
            out.push(summarize(
                "4. dispatch latency at 200 jobs/s, p50",
                "ms",
                p50,
                "<= 1",
                |m| m <= 1.0,
                String::new(),
            ));
            out.push(summarize(
                "4. dispatch latency at 200 jobs/s, p99",
                "ms",
                p99,
                "<= 5",
                |m| m <= 5.0,
                String::new(),
            ));
        }
        if want(5) {
            progress("5. respawn");
            let name = format!(
                "5. worker killed → replacement started (median of {})",
                s.respawns
            );
            let v = respawn(&exe, s).await?;
            out.push(summarize(
                &name,
                "ms",
                v,
                "<= 5",
                |m| m <= 5.0,
                String::new(),
            ));
        }
        if want(6) || want(7) {
            progress("6. restart after kill -9, 7. RSS");
            let (ready, reclaimed, idle, loaded) = restart_and_rss(&exe, s).await?;
            let name = format!(
                "6. kill -9 with {} queued + 8 running → READY=1",
                s.restart_queued
            );
            out.push(summarize(
                &name,
                "ms",
                ready,
                "<= 300",
                |m| m <= 300.0,
                String::new(),
            ));
            out.push(summarize(
                "6. jobs reclaimed at that restart",
                "jobs",
                reclaimed,
                "= 8",
                |m| m == 8.0,
                String::new(),
            ));
            out.push(summarize(
                "7. daemon RSS idle, 2 pools",
                "MiB",
                idle,
                "<= 10",
                |m| m <= 10.0,
                String::new(),
            ));
            let name = format!("7. daemon RSS with {} queued", s.restart_queued);
            out.push(summarize(
                &name,
                "MiB",
                loaded,
                "<= 30",
                |m| m <= 30.0,
                String::new(),
            ));
        }
        if want(8) {
            let note = "report".to_string();
            out.push(summarize(
                "8. journal bytes per finished job (scenario 1)",
                "bytes",
                sizes,
                "",
                |_| true,
                note,
            ));
            progress("8. steward jobs --limit 50");
            let name = format!(
                "8. steward jobs --limit 50 with {} rows (whole command)",
                s.list_rows
            );
            let v = list_cost(&exe, s).await?;
            out.push(summarize(
                &name,
                "ms",
                v,
                "<= 20",
                |m| m <= 20.0,
                String::new(),
            ));
        }
        if want(10) {
            progress("10. dispatch with delayed jobs waiting");
            let (mut alone, beside) = delayed_dispatch(&exe, s).await?;
            let base = median(&mut alone);
            out.push(summarize(
                &format!("10. dispatch of {} due jobs, nothing else queued", s.due_jobs),
                "jobs/s",
                alone,
                "",
                |_| true,
                "report".into(),
            ));
            let name = format!(
                "10. the same beside {} jobs delayed 1 h at a higher priority",
                s.delayed_jobs
            );
            let row = summarize(
                &name,
                "jobs/s",
                beside,
                ">= 90 %",
                |m| m >= 0.9 * base,
                String::new(),
            );
            let note = format!(
                "{:.0} % of the rate without them",
                if base > 0.0 { 100.0 * row.median / base } else { 0.0 }
            );
            out.push(Outcome { note, ..row });
        }
        if want(11) {
            progress("11. a garbage flood from one worker");
            let (rss, gaps) = garbage_flood(&exe, s).await?;
            out.push(summarize(
                "11. daemon RSS after one worker wrote garbage for 10 s",
                "MiB",
                rss,
                "<= 64",
                |m| m <= 64.0,
                String::new(),
            ));
            out.push(summarize(
                "11. longest watchdog gap meanwhile (pings every 100 ms)",
                "ms",
                gaps,
                "< 1000",
                |m| m < 1000.0,
                String::new(),
            ));
        }
        let pg_wanted = [12, 13, 14, 15].into_iter().any(want);
        let cluster = if pg_wanted {
            match crate::journal::postgres::cluster::Cluster::start_with(&[]) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("skipped: 12–15, the PostgreSQL journal: {e}");
                    None
                }
            }
        } else {
            None
        };
        if let Some(cluster) = &cluster {
            postgres_rows(&exe, cluster, s, &want, &progress, &mut out).await?;
        }
        if want(16) {
            progress("16. health probes");
            let mut p = probes::probed_workers(&exe, s).await?;
            let base = median(&mut p.cpu_without);
            for (cpu, rate, server, target) in [
                (&mut p.kept_cpu, &mut p.kept_rate, "a server that keeps connections", true),
                (&mut p.fresh_cpu, &mut p.fresh_rate, "a server that closes each (a new connection per probe)", false),
            ] {
                let cost: Vec<f64> = cpu.iter().map(|c| c - base).collect();
                out.push(summarize(
                    &format!(
                        "16. {} workers probed over HTTP every 1 s, {server}: daemon CPU for it",
                        s.probed_workers
                    ),
                    "% core",
                    cost,
                    if target { "<= 5" } else { "" },
                    |m| !target || m <= 5.0,
                    format!(
                        "{:.0} probes/s answered; daemon CPU {:.2} % with probes, {base:.2} % without (medians)",
                        median(rate),
                        median(cpu)
                    ),
                ));
            }
        }
        for (n, lang) in [(17, clients::Lang::Python), (18, clients::Lang::Node)] {
            if !want(n) {
                continue;
            }
            progress(&format!("{n}. {} library workers", lang.name()));
            let name = format!(
                "{n}. {} library workers, no-op handler, {} jobs, 4 × 8",
                lang.name(),
                s.protocol_jobs
            );
            match clients::library_throughput(&exe, s, lang).await? {
                Ok(v) => out.push(summarize(
                    &name,
                    "jobs/s",
                    v,
                    "",
                    |_| true,
                    "compare with scenario 1 (the bare protocol)".into(),
                )),
                Err(why) => {
                    if !json_out {
                        eprintln!("skipped {n}: {why}");
                    }
                }
            }
        }
        if want(9) {
            progress("9. worker output");
            let name = format!(
                "9. worker output: {} lines of 90 bytes into a file, none lost",
                s.output_lines
            );
            let v = worker_output(&exe, s).await?;
            out.push(summarize(
                &name,
                "lines/s",
                v,
                ">= 500000",
                |m| m >= 500_000.0,
                String::new(),
            ));
        }
        Ok::<(), Failure>(())
    })?;
    if json_out {
        return crate::stdout::line(&serde_json::to_string_pretty(&out).map_err(fail)?);
    }
    let mut table = format!(
        "{:<66} {:>12} {:>23} {:>10} {:>4}\n",
        "scenario", "median", "min–max", "target", ""
    );
    for o in &out {
        let f = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        let _ = writeln!(
            table,
            "{:<66} {:>12} {:>23} {:>10} {:>4}",
            o.scenario,
            format!("{} {}", f(o.median), o.unit),
            format!("{}–{}", f(o.min), f(o.max)),
            o.target,
            match o.met {
                Some(true) => "ok",
                Some(false) => "MISS",
                None => "",
            }
        );
        if !o.note.is_empty() && o.note != "report" {
            let _ = writeln!(table, "    {}", o.note);
        }
    }
    let _ = writeln!(
        table,
        "({} runs each; {} cores; synchronous = full)",
        s.runs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    crate::stdout::print(&table)
}
