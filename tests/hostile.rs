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

/// Flood for 10 s with `mode` from `floods` workers beside a pool running ordinary jobs;
/// check the bounds.
fn flood(mode: &str, read: bool, floods: u32) {
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
