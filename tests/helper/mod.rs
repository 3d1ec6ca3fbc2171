//! Fixtures for integration tests: a real `steward daemon` in a temporary directory,
//! bounded waits, and process inspection.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use steward::control::api::{DaemonStatus, PoolStatus};

/// Throw-away PostgreSQL clusters (the same the unit tests and the bench use).
pub mod pg {
    pub use steward::testing::Cluster;

    /// Run `query` on `pg` (its own connection) and return its rows.
    pub fn sql(pg: &Cluster, query: &str) -> Vec<tokio_postgres::Row> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.query(query, &[]).await.unwrap()
        })
    }

    /// The one number `query` gives.
    pub fn count(pg: &Cluster, query: &str) -> i64 {
        sql(pg, query)[0].get(0)
    }
}

/// Tests of the job journal, run once on each backend: `name::sqlite` and
/// `name::postgres` (skipped, saying so, where no PostgreSQL server is installed).
#[macro_export]
macro_rules! on_both_journals {
    ($(fn $name:ident($env:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($env: $crate::helper::Env) $body

            #[test]
            fn sqlite() {
                run($crate::helper::Env::new())
            }

            #[test]
            fn postgres() {
                let Some(pg) = $crate::helper::pg::Cluster::start() else {
                    return;
                };
                run($crate::helper::Env::on_postgres(pg))
            }
        }
    )*};
}

/// The one bound for "this should happen soon": generous, because CI machines are noisy.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_steward")
}

/// Poll `f` every 20 ms until it returns `Some`, or panic with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// As [`wait_for`], with `context()` (e.g. the daemon's log) in the panic message.
pub fn wait_for_or<T>(
    limit: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!(
                "timed out after {limit:?} waiting for: {what}\n{}",
                context()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A temporary directory with a config file in it.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Set: the daemon keeps its jobs in this cluster (`[journal] backend = "postgres"`)
    /// instead of SQLite, in a schema of this environment's own.
    pub pg: Option<pg::Cluster>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("st")
                .tempdir_in("/tmp")
                .expect("tempdir"),
            pg: None,
        }
    }

    /// An environment whose daemon keeps its jobs in `cluster`.
    pub fn on_postgres(cluster: pg::Cluster) -> Env {
        Env {
            pg: Some(cluster),
            ..Env::new()
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("steward.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("s.sock")
    }

    /// Write the config: a [daemon] section pointing into the temp dir, then `pools`.
    pub fn write_config(&self, pools: &str) {
        self.write_config_with_daemon("shutdown_timeout = \"20s\"\n", pools);
    }

    pub fn write_config_with_daemon(&self, daemon_extra: &str, pools: &str) {
        let journal = match &self.pg {
            Some(pg) => format!(
                "[journal]\nbackend = \"postgres\"\nurl = \"{}\"\n\n",
                pg.url()
            ),
            None => String::new(),
        };
        let text = format!(
            "[daemon]\nstate_dir = \"state\"\nsocket = \"s.sock\"\n{daemon_extra}\n{journal}{pools}"
        );
        fs::write(self.config_path(), text).expect("write config");
    }

    /// `steward <args> --config <file>`, run to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env_remove("STEWARD_SOCKET")
            .output()
            .expect("run steward")
    }
}

/// One datagram received on a fake `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// CLOCK_BOOTTIME when it arrived, comparable with process start times in /proc.
    pub boot: Duration,
    pub text: String,
    /// Whether the watched path (if any) existed when it arrived.
    pub watched_existed: bool,
}

/// Datagrams received on a fake `NOTIFY_SOCKET`.
pub struct NotifySocket {
    pub path: PathBuf,
    pub messages: Arc<Mutex<Vec<Received>>>,
}

/// The time since boot (CLOCK_BOOTTIME) from /proc/uptime, to 10 ms: the clock and the
/// resolution of process start times in /proc/PID/stat.
fn boot_clock() -> Duration {
    let text = fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("uptime");
    Duration::from_millis((secs * 1000.0).round() as u64)
}

impl NotifySocket {
    pub fn bind(path: PathBuf) -> NotifySocket {
        Self::bind_watching(path, PathBuf::new())
    }

    /// Also note, for each datagram, whether `watch` existed when it arrived.
    pub fn bind_watching(path: PathBuf, watch: PathBuf) -> NotifySocket {
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let r = Received {
                            at: Instant::now(),
                            boot: boot_clock(),
                            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                            watched_existed: !watch.as_os_str().is_empty() && watch.exists(),
                        };
                        m.lock().expect("lock").push(r);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        if Arc::strong_count(&m) == 1 {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        NotifySocket { path, messages }
    }

    pub fn all_received(&self) -> Vec<Received> {
        self.messages.lock().expect("lock").clone()
    }

    pub fn all(&self) -> Vec<(Instant, String)> {
        self.all_received()
            .into_iter()
            .map(|r| (r.at, r.text))
            .collect()
    }

    /// Messages that contain `needle` as one of their `KEY=VALUE` lines.
    pub fn with_line(&self, needle: &str) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == needle))
            .map(|(t, _)| t)
            .collect()
    }
}

/// When process `pid` started, on CLOCK_BOOTTIME (to the kernel's clock tick).
pub fn process_start(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 (starttime); `rest` starts at field 3.
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(Duration::from_nanos(
        ticks * (1_000_000_000 / per_sec as u64),
    ))
}

/// A child process that is killed (and reaped) when the test is done with it, even when
/// the test fails first.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `steward daemon`.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    /// Start the daemon on `env`'s config and wait until it answers on its socket.
    pub fn start(env: &Env) -> Daemon {
        Self::start_with(env, &[])
    }

    pub fn start_with(env: &Env, vars: &[(&str, &str)]) -> Daemon {
        let d = Self::spawn(env, vars, &["--log-format", "text"]);
        d.wait_running();
        d
    }

    /// Start without waiting.
    pub fn spawn(env: &Env, vars: &[(&str, &str)], extra: &[&str]) -> Daemon {
        let mut n = 0;
        let log = loop {
            let p = env.path(&format!("daemon.{n}.log"));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("daemon")
            .arg("--config")
            .arg(env.config_path())
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env("STEWARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn steward daemon");
        Daemon {
            child,
            log,
            socket: env.socket(),
            config: env.config_path(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str) {
        wait_for(
            TIMEOUT,
            &format!("daemon log line containing {needle:?}"),
            || self.log().contains(needle).then_some(()),
        );
    }

    pub fn try_status(&self) -> Option<DaemonStatus> {
        let out = Command::new(bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> DaemonStatus {
        wait_for(TIMEOUT, "steward status --json", || self.try_status())
    }

    pub fn pool(&self, name: &str) -> PoolStatus {
        self.status()
            .pools
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pool {name} in status"))
    }

    pub fn wait_running(&self) {
        wait_for(TIMEOUT, "daemon state running", || {
            self.try_status()
                .filter(|s| s.state == "running")
                .map(|_| ())
        });
    }

    /// Wait until every worker of `pool` is running; return their pids by instance.
    pub fn running_pids(&self, pool: &str) -> Vec<i32> {
        wait_for(TIMEOUT, &format!("all workers of {pool} running"), || {
            let p = self
                .try_status()?
                .pools
                .into_iter()
                .find(|p| p.name == pool)?;
            let ok = p.workers.len() as u32 == p.instances
                && p.workers.iter().all(|w| w.state == "running");
            ok.then(|| p.workers.iter().filter_map(|w| w.pid).collect())
        })
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig])
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -s {sig} failed");
    }

    /// Wait for the daemon to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_for(limit, "daemon exit", || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The test worker speaking the protocol (tests/workers/test_worker.py).
pub fn test_worker() -> String {
    format!(
        "{}/tests/workers/test_worker.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub fn example(path: &str) -> String {
    format!("{}/examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A queue `q` and a pool `w` of `instances` test workers taking its jobs.
pub fn jobs_config(instances: u32, queue_extra: &str, pool_extra: &str) -> String {
    let backoff = if queue_extra.contains("retry_backoff") {
        ""
    } else {
        "retry_backoff = { initial = \"100ms\", max = \"1s\", jitter = 0.0 }\n"
    };
    format!(
        "[queue.q]\n{backoff}{queue_extra}\n\n\
         [pool.w]\ncommand = [\"python3\", \"{}\"]\ninstances = {instances}\nqueues = [\"q\"]\n\
         backoff = {{ initial = \"100ms\", max = \"500ms\" }}\nstable_after = \"500ms\"\n{pool_extra}\n",
        test_worker()
    )
}

impl Daemon {
    /// `steward <args> --socket <socket>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run steward")
    }

    /// Submit through the CLI; returns the job id.
    pub fn submit(&self, queue: &str, payload: &str, extra: &[&str]) -> i64 {
        let mut args = vec!["submit", queue, payload];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("job id on stdout")
    }

    pub fn try_job(&self, id: i64) -> Option<steward::control::api::JobView> {
        let out = self.cli(&["job", &id.to_string(), "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn job(&self, id: i64) -> steward::control::api::JobView {
        wait_for(TIMEOUT, &format!("job {id}"), || self.try_job(id))
    }

    /// Wait until job `id` is in `state`.
    pub fn wait_job(
        &self,
        id: i64,
        state: &str,
        limit: Duration,
    ) -> steward::control::api::JobView {
        wait_for(limit, &format!("job {id} {state}"), || {
            self.try_job(id).filter(|j| j.state == state)
        })
    }

    /// Call the control API directly.
    pub fn api<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = steward::control::client::Client::new(&self.socket);
        let method = hyper::Method::from_bytes(method.as_bytes()).expect("method");
        rt.block_on(client.call::<T>(method, path, body.as_ref()))
            .map_err(|e| e.to_string())
    }

    /// Who holds job `id` right now: (pool/instance, pid).
    pub fn holder(&self, id: i64) -> Option<(String, i32)> {
        let s = self.try_status()?;
        for p in s.pools {
            for w in p.workers {
                if w.jobs.contains(&id) {
                    return Some((format!("{}/{}", p.name, w.instance), w.pid?));
                }
            }
        }
        None
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over plain HTTP/1.0: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, None, "")
}

/// `method path` over TCP with an optional bearer token and a JSON body: (status, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The value of the sample `name` (with its labels, e.g. `x_total{a="b"}`) in a Prometheus
/// text exposition, if there is such a sample.
pub fn try_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// The value of the sample `name`; a missing sample fails the test.
pub fn metric(text: &str, name: &str) -> f64 {
    try_metric(text, name).unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{text}"))
}

/// One HTTP/1.1 request on a Unix socket: (status code, body as text).
pub fn unix_http(socket: &Path, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    // The daemon may answer (and close) before it has read a body it refuses.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
