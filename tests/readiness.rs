//! Readiness without steward's protocol: workers that speak sd_notify themselves
//! (`ready = "notify"`, `watchdog`) and workers that are ready once their health probe
//! passes (`ready = "health"`, `start_period`).

use std::time::{Duration, Instant};

use crate::helper::*;

fn notify_pool(extra: &str, env_extra: &str) -> String {
    format!(
        "[pool.svc]\ncommand = [\"python3\", \"{}/tests/workers/notify_service.py\", \"{{dir}}\"]\n\
         ready = \"notify\"\nstable_after = \"300ms\"\nstop_timeout = \"2s\"\n\
         backoff = {{ initial = \"200ms\", max = \"1s\" }}\n\
         env = {{ {env_extra} }}\n{extra}\n",
        env!("CARGO_MANIFEST_DIR"),
    )
}

fn config(env: &Env, text: &str) {
    env.write_config(&text.replace("{dir}", &env.dir.path().display().to_string()));
}

/// How long the worker had been up when it was first seen running.
fn uptime_when_running(d: &Daemon) -> f64 {
    wait_for(TIMEOUT, "the worker running", || {
        let w = d.pool("svc").workers.remove(0);
        (w.state == "running").then_some(w.uptime_secs.unwrap_or(0.0))
    })
}

#[test]
fn a_notify_worker_is_running_at_ready_and_shows_its_status() {
    let env = Env::new();
    config(&env, &notify_pool("", "READY_AFTER = \"2\""));
    let d = Daemon::start(&env);
    // Up longer than stable_after, yet not running: it has not said READY=1.
    let w = wait_for(TIMEOUT, "a worker up 1s", || {
        let w = d.pool("svc").workers.remove(0);
        (w.uptime_secs.unwrap_or(0.0) >= 1.0).then_some(w)
    });
    assert_eq!(w.state, "starting", "{w:?}");
    assert_eq!(w.status.as_deref(), Some("starting"));
    let out = env.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("waiting for READY=1 on its NOTIFY_SOCKET"),
        "{text}"
    );
    let up = uptime_when_running(&d);
    assert!(up >= 1.9, "running after {up}s, before its READY=1");
    d.wait_log("worker svc/0 is running");
    wait_for(TIMEOUT, "STATUS=serving shown", || {
        let w = d.pool("svc").workers.remove(0);
        (w.status.as_deref() == Some("serving")).then_some(())
    });
    // Its own socket under the runtime directory; steward's own never leaks.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("NOTIFY_SOCKET="))
        .expect("the worker printed its NOTIFY_SOCKET");
    let path = line.split("NOTIFY_SOCKET=").nth(1).unwrap();
    let path = path.split_whitespace().next().unwrap();
    let dir = env.socket().parent().unwrap().join("notify");
    assert!(path.starts_with(dir.to_str().unwrap()), "{path}");
    assert!(std::path::Path::new(path).exists());
    assert!(
        !log.contains("WATCHDOG_USEC=1"),
        "no watchdog, no WATCHDOG_USEC"
    );
    // The socket goes with the run.
    let pid = d.pool("svc").workers[0].pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(TIMEOUT, "the old run's socket removed", || {
        (!std::path::Path::new(path).exists()).then_some(())
    });
}

#[test]
fn a_worker_that_stops_pinging_its_watchdog_is_killed_as_hung_and_a_trigger_too() {
    let env = Env::new();
    config(&env, &notify_pool("watchdog = \"1s\"", ""));
    let d = Daemon::start(&env);
    uptime_when_running(&d);
    let first = d.pool("svc").workers[0].pid.unwrap();
    assert!(d.log().contains("WATCHDOG_USEC=1000000"), "{}", d.log());
    // Pinging every third of the period keeps it alive well past the period.
    std::thread::sleep(Duration::from_millis(3000));
    let w = d.pool("svc").workers.remove(0);
    assert_eq!((w.pid, w.restarts), (Some(first), 0), "{w:?}");
    // Its loop is stuck, the process lives on: the watchdog finds it.
    std::fs::write(env.path("hang-0"), "").unwrap();
    d.wait_log(&format!(
        "worker svc/0 (pid {first}) sent no WATCHDOG=1 for 1.0s (watchdog): it is taken as hung; killing it"
    ));
    std::fs::remove_file(env.path("hang-0")).unwrap();
    let second = wait_for(TIMEOUT, "a new worker running", || {
        let w = d.pool("svc").workers.remove(0);
        w.pid.filter(|p| w.state == "running" && *p != first)
    });
    assert!(!alive(first));
    std::fs::write(env.path("trigger-0"), "").unwrap();
    d.wait_log(&format!(
        "worker svc/0 (pid {second}) sent WATCHDOG=trigger; killing it"
    ));
    let w = wait_for(TIMEOUT, "killed and started again", || {
        let w = d.pool("svc").workers.remove(0);
        (w.restarts >= 2).then_some(w)
    });
    let exit = w.last_exit.unwrap();
    assert_eq!(exit.signal.as_deref(), Some("SIGKILL"), "{exit:?}");
    // The status of a run that is over is not shown as the new one's.
    assert_ne!(w.status.as_deref(), Some("serving"), "{:?}", w.state);
}

#[test]
fn an_exit_after_stopping_is_intentional_and_does_not_back_off() {
    let env = Env::new();
    config(&env, &notify_pool("", ""));
    let d = Daemon::start(&env);
    uptime_when_running(&d);
    std::fs::write(env.path("stop-0"), "").unwrap();
    d.wait_log("worker svc/0 says it is stopping (STOPPING=1)");
    d.wait_log("exited: exit code 3 (it had sent STOPPING=1) after");
    std::fs::remove_file(env.path("stop-0")).unwrap();
    let w = wait_for(TIMEOUT, "restarted", || {
        let w = d.pool("svc").workers.remove(0);
        (w.restarts >= 1 && w.state == "running").then_some(w)
    });
    assert_eq!(w.unstable_exits, 0, "{w:?}");
    assert!(!d.log().contains("crash-looping"), "{}", d.log());
}

#[test]
fn ready_from_outside_the_process_group_is_ignored_and_extend_timeout_is_honoured() {
    let env = Env::new();
    // Ready at 2.5s with a start timeout of 1s: only the extension lets it live; the
    // forged READY=1 at once must not make it running.
    config(
        &env,
        &notify_pool(
            "start_timeout = \"1s\"",
            "READY_AFTER = \"2.5\", FORGE = \"1\", EXTEND_USEC = \"4000000\"",
        ),
    );
    let d = Daemon::start(&env);
    let t0 = Instant::now();
    let up = uptime_when_running(&d);
    assert!(up >= 2.4, "running after {up}s: the forged READY=1 counted");
    let w = d.pool("svc").workers.remove(0);
    assert_eq!(w.restarts, 0, "killed at its start timeout: {w:?}");
    assert_ne!(w.status.as_deref(), Some("forged"));
    d.wait_log("worker svc/0 asks for 4.0s more (EXTEND_TIMEOUT_USEC)");
    d.wait_log(
        "notify messages of worker svc/0 ignored in the last 10s: 1 from processes outside its process group",
    );
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[test]
fn ready_from_a_child_in_the_group_counts_and_silence_is_a_start_timeout() {
    let env = Env::new();
    config(&env, &notify_pool("", "CHILD_READY = \"1\""));
    let d = Daemon::start(&env);
    uptime_when_running(&d);
    drop(d);
    // Never READY=1 within start_timeout: killed, logged with the reason, restarted.
    let env = Env::new();
    config(
        &env,
        &notify_pool("start_timeout = \"1s\"", "READY_AFTER = \"30\""),
    );
    let d = Daemon::start(&env);
    d.wait_log("did not send READY=1 on its NOTIFY_SOCKET within 1.0s (start_timeout); killing it");
    wait_for(TIMEOUT, "restarted with backoff", || {
        let w = d.pool("svc").workers.remove(0);
        (w.restarts >= 1 && w.unstable_exits >= 1).then_some(())
    });
}

fn http_pool(port: u16, listen_after: &str, extra: &str, health_extra: &str) -> String {
    format!(
        "[pool.web]\ncommand = [\"python3\", \"{}/tests/workers/http_service.py\", \"{{dir}}\"]\n\
         port_base = {port}\nenv = {{ PORT = \"{{port}}\", LISTEN_AFTER = \"{listen_after}\" }}\n\
         stable_after = \"300ms\"\nstop_timeout = \"1s\"\n{extra}\n\
         [pool.web.health]\nhttp = \"http://127.0.0.1:{{port}}/health\"\n\
         failures = 1\n{health_extra}\n",
        env!("CARGO_MANIFEST_DIR"),
    )
}

#[test]
fn a_worker_with_a_health_block_is_ready_at_its_first_passing_probe_after_a_slow_start() {
    let env = Env::new();
    // It listens after 4.5s: the probes at 2s and 4s fail, and with failures = 1 either
    // would restart it if the start period did not keep them from counting. The pass
    // comes at the start period's pace (2s), not at the 30s interval.
    config(
        &env,
        &http_pool(free_port(), "4.5", "", "interval = \"30s\""),
    );
    let d = Daemon::start(&env);
    let w = wait_for(TIMEOUT, "a worker up 1s", || {
        let w = d.pool("web").workers.remove(0);
        (w.uptime_secs.unwrap_or(0.0) >= 1.0).then_some(w)
    });
    assert_eq!(w.state, "starting", "{w:?}");
    assert_eq!(d.pool("web").ready, "health");
    let up = wait_for(TIMEOUT, "the worker running", || {
        let w = d.pool("web").workers.remove(0);
        (w.state == "running").then_some(w)
    });
    let uptime = up.uptime_secs.unwrap();
    assert!((4.4..12.0).contains(&uptime), "running after {uptime}s");
    assert_eq!(up.restarts, 0, "{up:?}");
    assert!(up.health.as_ref().is_some_and(|h| h.ok), "{up:?}");
    d.wait_log("worker web/0 is running");
}

#[test]
fn a_worker_whose_probe_never_passes_within_its_start_timeout_is_killed_and_backs_off() {
    let env = Env::new();
    config(
        &env,
        &http_pool(
            free_port(),
            "60",
            "start_timeout = \"3s\"\nbackoff = { initial = \"200ms\", max = \"1s\" }",
            "interval = \"30s\"",
        ),
    );
    let d = Daemon::start(&env);
    d.wait_log("passed no health probe within 3.0s (start_timeout); killing it");
    wait_for(TIMEOUT, "restarted as an unstable exit", || {
        let w = d.pool("web").workers.remove(0);
        (w.restarts >= 1 && w.unstable_exits >= 1).then_some(())
    });
}

#[test]
fn ready_stable_with_probes_keeps_todays_start_and_probes_count_after_the_start_period() {
    let env = Env::new();
    // Running at stable_after; the probes of its first 2s do not count, later ones do.
    config(
        &env,
        &http_pool(
            free_port(),
            "60",
            "ready = \"stable\"",
            "interval = \"500ms\"\nstart_period = \"2s\"",
        ),
    );
    let d = Daemon::start(&env);
    let w = wait_for(TIMEOUT, "the worker running", || {
        let w = d.pool("web").workers.remove(0);
        (w.state == "running").then_some(w)
    });
    assert!(w.uptime_secs.unwrap() < 2.0, "{w:?}");
    d.wait_log("worker web/0 is unhealthy: 1 health probes in a row failed");
    let exit = wait_for(TIMEOUT, "the health restart's exit", || {
        d.pool("web").workers.remove(0).last_exit
    });
    assert!(
        exit.ran_secs >= 2.0,
        "restarted {}s in, within its start period",
        exit.ran_secs
    );
}

#[test]
fn check_config_refuses_readiness_that_cannot_work_at_its_position() {
    let env = Env::new();
    let cases = [
        (
            "[pool.a]\ncommand = [\"true\"]\nready = \"soon\"\n",
            3,
            "ready = \"soon\": use \"notify\"",
        ),
        (
            "[pool.a]\ncommand = [\"true\"]\nready = \"health\"\n",
            3,
            "ready = \"health\" needs a [pool.a.health] block",
        ),
        (
            "[pool.a]\ncommand = [\"true\"]\nready = \"protocol\"\n",
            3,
            "ready = \"protocol\" needs a pool that takes jobs",
        ),
        (
            "[queue.q]\n[pool.a]\ncommand = [\"true\"]\nqueues = [\"q\"]\nready = \"stable\"\n",
            5,
            "ready = \"stable\" does not fit pool `a`",
        ),
        (
            "[queue.q]\n[pool.a]\ncommand = [\"true\"]\nmode = \"exec\"\nqueues = [\"q\"]\nwatchdog = \"10s\"\n",
            2,
            "`watchdog` applies to worker pools",
        ),
        (
            "[pool.a]\ncommand = [\"true\"]\nwatchdog = \"10ms\"\n",
            1,
            "watchdog must be at least 100ms",
        ),
        (
            "[pool.a]\ncommand = [\"true\"]\n[pool.a.health]\nexec = [\"true\"]\ntcp = \"127.0.0.1:1\"\n",
            3,
            "has more than one of http, tcp and exec",
        ),
        (
            "[pool.a]\ncommand = [\"true\"]\n[pool.a.health]\ntcp = \"127.0.0.1:1\"\nkeep_alive = false\n",
            5,
            "pool.a.health.keep_alive is for http probes only",
        ),
        (
            "[pool.a]\ncommand = [\"true\"]\n[pool.a.health]\nexec = []\n",
            4,
            "pool.a.health.exec is empty",
        ),
        (
            "[pool.a]\ncommand = [\"true\"]\n[pool.a.health]\nexec = [\"./no-such-check\"]\n",
            4,
            "does not exist or is not executable",
        ),
    ];
    for (text, line, needle) in cases {
        std::fs::write(env.config_path(), text).unwrap();
        let out = env.run(&["check-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}\n{err}");
        assert!(
            err.contains(&format!("steward.toml:{line}:")) && err.contains(needle),
            "{text}\n{err}"
        );
    }
    // A socket path too long to leave room for the workers' notify sockets.
    let long = "d".repeat(80);
    std::fs::write(
        env.config_path(),
        format!("[daemon]\nsocket = \"/tmp/{long}/s.sock\"\n[pool.a]\ncommand = [\"true\"]\nready = \"notify\"\n"),
    )
    .unwrap();
    let out = env.run(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("a path too long for Unix sockets"), "{err}");
}
