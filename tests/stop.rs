//! Stopping: stop signal to the process group, SIGKILL after stop_timeout, nothing left
//! behind; and a daemon killed with SIGKILL takes its workers with it.

use std::time::{Duration, Instant};

use crate::helper::*;

#[test]
fn sigterm_stops_every_worker_and_escalates() {
    let env = Env::new();
    let dir = env.dir.path().display().to_string();
    env.write_config(&format!(
        "[pool.polite]\n\
         command = [\"sh\", \"-c\", \"sh -c 'trap \\\"\\\" TERM; exec sleep 1000' & echo $! > {dir}/grandchild.$STEWARD_INSTANCE; trap 'echo term > {dir}/term.$STEWARD_INSTANCE; exit 0' TERM; while :; do sleep 0.05; done\"]\n\
         instances = 2\nstable_after = \"100ms\"\n\n\
         [pool.stubborn]\n\
         command = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\n\
         stable_after = \"100ms\"\nstop_timeout = \"1s\"\n"
    ));
    let mut d = Daemon::start(&env);
    let mut pids = d.running_pids("polite");
    pids.extend(d.running_pids("stubborn"));
    let grandchildren: Vec<i32> = (0..2)
        .map(|i| {
            wait_for(TIMEOUT, "grandchild pid file", || {
                read_pid(&env.path(&format!("grandchild.{i}")))
            })
        })
        .collect();
    assert!(grandchildren.iter().all(|p| alive(*p)));

    let t0 = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(TIMEOUT);
    let took = t0.elapsed();
    assert!(
        status.success(),
        "daemon exit status {status:?}\n{}",
        d.log()
    );
    // The stubborn worker ignores SIGTERM: it holds the stop for its stop_timeout (1 s).
    assert!(
        took >= Duration::from_millis(900),
        "stopped too early: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    for i in 0..2 {
        assert!(
            env.path(&format!("term.{i}")).exists(),
            "polite worker {i} did not get SIGTERM"
        );
    }
    let log = d.log();
    assert!(
        log.contains("worker stubborn/0") && log.contains("sending SIGKILL to its process group"),
        "{log}"
    );
    for p in pids.iter().chain(&grandchildren) {
        assert!(!alive(*p), "process {p} survived the stop\n{log}");
    }
    assert!(!env.socket().exists(), "the socket file is removed on exit");
}

#[test]
fn second_sigterm_kills_at_once() {
    let env = Env::new();
    env.write_config("[pool.stubborn]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\nstop_timeout = \"60s\"\n");
    let mut d = Daemon::start(&env);
    let pid = wait_for(TIMEOUT, "pid", || d.try_status()?.pools[0].workers[0].pid);
    d.signal("TERM");
    d.wait_log("stopping worker stubborn/0");
    let t0 = Instant::now();
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "second SIGTERM took {:?}",
        t0.elapsed()
    );
    assert!(!alive(pid));
}

#[test]
fn workers_die_with_a_killed_daemon() {
    let env = Env::new();
    env.write_config("[pool.w]\ncommand = [\"sleep\", \"1000\"]\ninstances = 3\n");
    let mut d = Daemon::start(&env);
    let pids: Vec<i32> = wait_for(TIMEOUT, "3 pids", || {
        let p: Vec<i32> = d.try_status()?.pools[0]
            .workers
            .iter()
            .filter_map(|w| w.pid)
            .collect();
        (p.len() == 3).then_some(p)
    });
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let t0 = Instant::now();
    wait_for(Duration::from_secs(5), "workers gone", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "workers outlived the daemon by {:?}",
        t0.elapsed()
    );
}

#[test]
fn no_zombies_after_many_exits() {
    let env = Env::new();
    env.write_config(
        "[pool.flappy]\ncommand = [\"sh\", \"-c\", \"sleep 0.01\"]\ninstances = 3\n\
         backoff = { initial = \"10ms\", max = \"10ms\", jitter = 0.0 }\n",
    );
    let d = Daemon::start(&env);
    wait_for(TIMEOUT, "30 restarts", || {
        let s = d.try_status()?;
        (s.pools[0].workers.iter().map(|w| w.restarts).sum::<u64>() >= 30).then_some(())
    });
    // The pool keeps flapping, so a child that exited a moment ago may not be reaped
    // yet when we look: a zombie counts only if it is still there 1.5 s later (the loop
    // reaps on SIGCHLD, and once a second as a safety net).
    let first = zombies_of(d.pid());
    std::thread::sleep(Duration::from_millis(1500));
    let lasting: Vec<i32> = zombies_of(d.pid())
        .into_iter()
        .filter(|p| first.contains(p))
        .collect();
    assert!(
        lasting.is_empty(),
        "zombie children of steward left unreaped for over 1.5 s: {lasting:?}"
    );
}

fn zombies_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        if f.first() == Some(&"Z") && f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn second_sigterm_kills_exec_jobs_too() {
    let env = Env::new();
    let dir = env.dir.path().display().to_string();
    env.write_config(&format!(
        "[queue.q]\n\n[pool.x]\nmode = \"exec\"\nqueues = [\"q\"]\nstop_timeout = \"60s\"\n\
         command = [\"sh\", \"-c\", \"echo $$ > {dir}/job.pid; trap '' TERM; while :; do sleep 0.05; done\"]\n"
    ));
    let mut d = Daemon::start(&env);
    d.submit("q", "{}", &[]);
    let pid = wait_for(TIMEOUT, "job pid", || read_pid(&env.path("job.pid")));
    d.signal("TERM");
    d.wait_log("stopping: sent SIGTERM to the process group of job");
    let t0 = Instant::now();
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success(), "{}", d.log());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "second SIGTERM took {:?}",
        t0.elapsed()
    );
    assert!(!alive(pid), "the job process survived the forced stop");
    // Killed by the forced stop itself, not left for the last-resort exit.
    assert!(!d.log().contains("exiting anyway"), "{}", d.log());
}

#[test]
fn kill_mode_main_lets_a_worker_finish_what_its_children_run() {
    for (mode, finishes) in [("main", true), ("group", false)] {
        let env = Env::new();
        let out = env.path("done");
        env.write_config(&format!(
            "[pool.w]\ncommand = [\"python3\", \"{}/tests/workers/parent_with_child.py\", \"{}\"]\n\
             kill_mode = \"{mode}\"\nstop_timeout = \"10s\"\n",
            env!("CARGO_MANIFEST_DIR"),
            out.display()
        ));
        let mut d = Daemon::start(&env);
        let started = env.path("done.started");
        wait_for(TIMEOUT, "the worker and its child started", || {
            started.exists().then_some(())
        });
        d.signal("TERM");
        assert!(d.wait_exit(TIMEOUT).success());
        assert_eq!(
            out.exists(),
            finishes,
            "kill_mode = {mode}: the child's work {} finished",
            if out.exists() { "was" } else { "was not" }
        );
        if mode == "main" {
            assert!(d.log().contains("to its main process only"), "{}", d.log());
        }
    }
}

#[test]
fn a_worker_past_its_max_lifetime_is_restarted_gracefully_one_at_a_time() {
    let env = Env::new();
    env.write_config(
        "[pool.leaky]\ncommand = [\"sh\", \"-c\", \"sleep 600\"]\ninstances = 2\n\
         max_lifetime = \"2s\"\nstable_after = \"200ms\"\n",
    );
    let d = Daemon::start(&env);
    let first: Vec<i32> = d.running_pids("leaky");
    let p = wait_for(Duration::from_secs(20), "both workers replaced", || {
        let p = d.pool("leaky");
        p.workers
            .iter()
            .all(|w| w.restarts >= 1 && w.state == "running")
            .then_some(p)
    });
    for w in &p.workers {
        assert_eq!(w.unstable_exits, 0, "{w:?}");
        assert!(!first.contains(&w.pid.unwrap()), "{w:?}");
    }
    let log = d.log();
    assert!(
        log.contains(
            "worker leaky/0 has run for its max_lifetime (2.0s): restarting it gracefully"
        ) || log.contains("worker leaky/1 has run for its max_lifetime (2.0s)"),
        "{log}"
    );
    // Never both down at once: each replacement waited for the previous one to run.
    let mut down = 0i32;
    let mut most = 0;
    for l in log.lines() {
        if l.contains("has run for its max_lifetime") {
            down += 1;
        } else if l.contains("worker leaky/") && l.contains("is running") {
            down = (down - 1).max(0);
        }
        most = most.max(down);
    }
    assert_eq!(most, 1, "{log}");
}
