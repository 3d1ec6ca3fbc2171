//! Hostile load: one worker flooding steward must not exhaust it, starve its loop or
//! hold up the other pools.

use std::time::{Duration, Instant};

use crate::helper::*;

/// The daemon's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One flood at a time: each measures its daemon's watchdog gaps on 2 cores, and three
/// floods at once would measure each other.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Flood for 10 s with `mode` from `floods` workers beside a pool running ordinary jobs;
/// check the bounds.
fn flood(mode: &str, read: bool, floods: u32) {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    env.write_config(&format!(
        "{}\n[queue.noise]\n\n[pool.flood]\ncommand = [\"python3\", \"{}/tests/workers/flood.py\"]\n\
         queues = [\"noise\"]\ninstances = {floods}\n\
         env = {{ FLOOD = \"{mode}\", FLOOD_READ = \"{}\", FLOOD_FOR = \"10\" }}\n",
        jobs_config(2, "", ""),
        env!("CARGO_MANIFEST_DIR"),
        if read { "1" } else { "0" },
    ));
    let notify = NotifySocket::bind(env.path("notify.sock"));
    let path = notify.path.display().to_string();
    let d = Daemon::spawn(
        &env,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")],
        &["--log-format", "text"],
    );
    d.wait_running();
    d.running_pids("w");
    let t0 = Instant::now();
    let mut status_worst = Duration::ZERO;
    let mut done = 0;
    // While the flood goes on: jobs of the other pool, and status, all along.
    while t0.elapsed() < Duration::from_secs(10) {
        let id = d.submit("q", "{}", &[]);
        let asked = Instant::now();
        assert!(d.try_status().is_some(), "status did not answer");
        status_worst = status_worst.max(asked.elapsed());
        d.wait_job(id, "succeeded", Duration::from_secs(5));
        done += 1;
    }
    let pings: Vec<Instant> = notify
        .with_line("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= t0)
        .collect();
    let worst_gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX);
    let rss_mib = peak_rss_kib(d.pid()) / 1024;
    eprintln!(
        "{mode} (reading: {read}): {done} jobs, status at most {status_worst:?}, watchdog gap at most {worst_gap:?}, peak RSS {rss_mib} MiB"
    );
    assert!(
        pings.len() > 20,
        "only {} watchdog pings in 10 s",
        pings.len()
    );
    assert!(
        worst_gap < Duration::from_secs(1),
        "watchdog gap of {worst_gap:?}"
    );
    assert!(
        status_worst < Duration::from_secs(1),
        "status took {status_worst:?}"
    );
    assert!(done >= 10, "only {done} jobs of the other pool in 10 s");
    assert!(rss_mib < 64, "peak RSS {rss_mib} MiB");
    if mode == "garbage" {
        // Answered and logged at most 10 a second, the rest counted.
        let log = d.log();
        let logged = log.matches("invalid line ignored").count();
        assert!(logged <= 250, "{logged} invalid lines logged one by one");
        wait_for(TIMEOUT, "the count of the lines left out", || {
            d.log()
                .contains("more invalid lines in the last 10s")
                .then_some(())
        });
    }
}

#[test]
fn a_garbage_flood_from_a_worker_that_never_reads() {
    flood("garbage", false, 1);
}

#[test]
fn a_garbage_flood_from_a_worker_that_reads() {
    flood("garbage", true, 1);
}

#[test]
fn a_heartbeat_flood_from_three_workers() {
    flood("heartbeat", false, 3);
}

/// Heartbeats written by `yes`: the socket never runs dry, so a reader that only stops
/// when it does would hold a runtime thread for the whole flood.
#[test]
fn a_heartbeat_flood_faster_than_steward_can_read() {
    flood("heartbeat-yes", false, 3);
}

/// The test's own limit on open files raised to its hard limit (it opens hundreds).
fn raise_own_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// `steward daemon` on `env`'s config with at most `nofile` open files, once it answers.
fn limited_daemon(env: &Env, nofile: u32) -> KillOnDrop {
    let log = std::fs::File::create(env.path("daemon.log")).unwrap();
    let child = std::process::Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg(bin())
        .args(["daemon", "--log-format", "text", "--config"])
        .arg(env.config_path())
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prlimit (util-linux)");
    let child = KillOnDrop(child);
    wait_for(TIMEOUT, "the daemon running", || {
        cli(env, &["status"]).status.success().then_some(())
    });
    child
}

/// `steward <args>` against `env`'s daemon (the CLI runs without the daemon's limit).
fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .arg("--socket")
        .arg(env.socket())
        .output()
        .unwrap()
}

/// Children of `parent` running `sleep 1000`.
fn sleepers(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd == b"sleep\x001000\x00" {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(parent) {
                out.push(pid);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn idle_connections_cannot_take_the_descriptors_supervision_needs() {
    raise_own_limit();
    let env = Env::new();
    let port = free_port();
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[queue.e]\n\n\
         [pool.x]\nmode = \"exec\"\nqueues = [\"e\"]\ninstances = 2\n\
         command = [\"sh\", \"-c\", \"sleep 0.3; echo '{{\\\"ok\\\": true}}'\"]\n\n\
         [pool.p]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\nstable_after = \"100ms\"\n\
         backoff = {{ initial = \"100ms\", max = \"100ms\" }}\n"
    ));
    let child = limited_daemon(&env, 256);
    let daemon = child.0.id() as i32;
    let cli = |args: &[&str]| cli(&env, args);
    // Jobs that become due while the connections below are held.
    let ids: Vec<String> = (0..6)
        .map(|_| {
            let out = cli(&["submit", "e", "{}", "--delay", "2s"]);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    // 150 idle TCP connections to the monitoring listener, 150 to the control socket:
    // well over what either accepts at once, within what their backlogs (128) hold.
    let tcp: Vec<_> = (0..150)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let unix: Vec<_> = (0..150)
        .map(|_| std::os::unix::net::UnixStream::connect(env.socket()).unwrap())
        .collect();
    let held_since = Instant::now();
    // A killed worker comes back.
    let before = wait_for(TIMEOUT, "two workers", || {
        let s = sleepers(daemon);
        (s.len() == 2).then_some(s)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[0]),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for(TIMEOUT, "the killed worker replaced", || {
        let s = sleepers(daemon);
        (s.len() == 2 && !s.contains(&before[0])).then_some(())
    });
    // The control socket is full of idle clients: the CLI says so instead of hanging.
    let t0 = Instant::now();
    let out = cli(&["status", "--request-timeout", "2s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("did not answer within 2s"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The daemon ends idle connections by itself.
    let mut first = unix.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    use std::io::Read;
    let n = first.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an idle connection was not closed");
    assert!(
        held_since.elapsed() < Duration::from_secs(15),
        "closed after {:?}",
        held_since.elapsed()
    );
    // Once the clients go, everything answers again, and every job ran once.
    drop(tcp);
    drop(first);
    wait_for(TIMEOUT, "status answers", || {
        cli(&["status"]).status.success().then_some(())
    });
    for id in ids {
        let j = wait_for(TIMEOUT, "the job done", || {
            let out = cli(&["job", &id, "--json"]);
            let j: steward::control::api::JobView = serde_json::from_slice(&out.stdout).ok()?;
            (j.state == "succeeded").then_some(j)
        });
        assert_eq!(j.tries, 1, "{j:?}");
    }
    let (code, body) = wait_for(TIMEOUT, "/health", || http_get(port, "/health"));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_process_that_cannot_be_started_for_want_of_descriptors_costs_its_job_nothing() {
    let env = Env::new();
    env.write_config(
        "[queue.e]\nmax_attempts = 2\n\n[pool.x]\nmode = \"exec\"\nqueues = [\"e\"]\ninstances = 8\n\
         command = [\"sh\", \"-c\", \"sleep 0.3; echo '{\\\"ok\\\": true}'\"]\n",
    );
    // Room for the daemon and a few job processes, not eight.
    let _child = limited_daemon(&env, 28);
    let cli = |args: &[&str]| cli(&env, args);
    let jobs: Vec<serde_json::Value> = (0..24).map(|_| serde_json::json!({"queue": "e"})).collect();
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(env.socket())
        .args([
            "-d",
            &serde_json::json!({ "jobs": jobs }).to_string(),
            "http://localhost/v1/jobs/batch",
        ])
        .output();
    let ids: Vec<i64> = match out {
        Ok(o) if o.status.success() => {
            let r: steward::control::api::BatchResponse =
                serde_json::from_slice(&o.stdout).unwrap();
            r.jobs.iter().map(|j| j.id).collect()
        }
        _ => (0..24)
            .map(|_| {
                let o = cli(&["submit", "e", "{}"]);
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            })
            .collect(),
    };
    for id in ids {
        let j = wait_for(Duration::from_secs(60), "the job done", || {
            let out = cli(&["job", &id.to_string(), "--json"]);
            let j: steward::control::api::JobView = serde_json::from_slice(&out.stdout).ok()?;
            (j.state == "succeeded" || j.state == "failed").then_some(j)
        });
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.tries, 1, "{j:?}");
    }
    let log = std::fs::read_to_string(env.path("daemon.log")).unwrap();
    assert!(
        log.contains("goes back to its queue without using an attempt"),
        "the limit was never hit, so this test tested nothing:\n{log}"
    );
}
