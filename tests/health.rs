//! Health probes of workers that serve HTTP: unhealthy workers restarted (or marked), a
//! frozen one found by its probe's timeout, and no restart storms.

use std::time::Duration;

use crate::helper::*;

fn service(env: &Env, instances: u32, port: u16, health: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:{}\"\n\n\
         [pool.web]\ncommand = [\"python3\", \"{}/tests/workers/http_service.py\", \"{}\"]\n\
         instances = {instances}\nport_base = {port}\nenv = {{ PORT = \"{{port}}\" }}\n\
         stable_after = \"300ms\"\nstop_timeout = \"1s\"\n\
         backoff = {{ initial = \"200ms\", max = \"1s\" }}\n\n\
         [pool.web.health]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ninterval = \"200ms\"\n\
         timeout = \"500ms\"\nfailures = 3\n{health}\n",
        free_port(),
        env!("CARGO_MANIFEST_DIR"),
        env.dir.path().display()
    )
}

/// A few ports in a row that nothing listens on (the probe's {port} = base + instance).
fn free_ports() -> u16 {
    loop {
        let base = free_port();
        if base < 65_000
            && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

#[test]
fn an_unhealthy_worker_is_restarted_and_a_frozen_one_is_found_by_its_timeout() {
    let env = Env::new();
    env.write_config(&service(&env, 1, free_ports(), ""));
    let d = Daemon::start(&env);
    let w = wait_for(TIMEOUT, "a passing probe", || {
        let w = d.pool("web").workers.remove(0);
        let ok = w.health.as_ref().is_some_and(|h| h.ok);
        ok.then_some(w)
    });
    assert_eq!(w.state, "running");
    assert_eq!(w.health.unwrap().detail, "HTTP 200");
    // Its dependency goes down: after three failed probes it is restarted.
    std::fs::write(env.path("sick-0"), "").unwrap();
    d.wait_log("worker web/0 is unhealthy: 3 health probes in a row failed (last: HTTP 503: db down); restarting it");
    let w = wait_for(TIMEOUT, "the worker restarted", || {
        let w = d.pool("web").workers.remove(0);
        (w.restarts >= 1 && w.pid.is_some()).then_some(w)
    });
    // Counted as an unstable exit: the next restarts back off.
    assert!(w.unstable_exits >= 1, "{w:?}");
    // Its probe fails still, so the new worker is not ready (ready = "health").
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(d.pool("web").workers[0].state, "starting");
    std::fs::remove_file(env.path("sick-0")).unwrap();
    // A frozen worker: the kernel still takes the connection, nothing answers.
    let pid = healthy_pid(&d);
    freeze_until_replaced(&d, pid);
    let metrics = http_get_metrics(&d);
    assert!(
        metric(
            &metrics,
            "steward_health_checks_total{pool=\"web\",result=\"fail\"}"
        ) >= 6.0
    );
    assert!(
        metric(
            &metrics,
            "steward_health_checks_total{pool=\"web\",result=\"pass\"}"
        ) >= 1.0
    );
}

#[test]
fn a_connection_the_service_keeps_carries_the_probes_and_a_freeze_behind_it_is_found() {
    let env = Env::new();
    let config = service(&env, 1, free_ports(), "").replace(
        "env = { PORT = \"{port}\" }",
        "env = { PORT = \"{port}\", KEEP_ALIVE = \"1\" }",
    );
    env.write_config(&config);
    let d = Daemon::start(&env);
    let pid = healthy_pid(&d);
    // Probes every 200 ms for 3 s: some 15 of them, on one connection.
    std::thread::sleep(Duration::from_secs(3));
    let passed = metric(
        &http_get_metrics(&d),
        "steward_health_checks_total{pool=\"web\",result=\"pass\"}",
    );
    let connections = std::fs::read_to_string(env.path("connections-0"))
        .unwrap()
        .lines()
        .count();
    assert!(passed >= 10.0, "{passed} probes passed");
    assert!(
        connections <= 2,
        "{connections} connections for {passed} probes"
    );
    // Frozen with the connection open: the kernel still takes the request, nothing
    // answers, and the probe's timeout finds it as on a new connection.
    freeze_until_replaced(&d, pid);
}

/// The pid of pool web's worker once it runs and its last probe passed.
fn healthy_pid(d: &Daemon) -> i32 {
    wait_for(TIMEOUT, "a running worker whose probe passed", || {
        let w = d.pool("web").workers.remove(0);
        w.health
            .as_ref()
            .filter(|h| h.ok && w.state == "running")
            .and(w.pid)
    })
}

/// SIGSTOP the worker `pid`: the kernel still takes the connection and the request,
/// nothing answers, so its probes time out and it is replaced.
fn freeze_until_replaced(d: &Daemon, pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    d.wait_log("(last: no answer within 500ms); restarting it");
    wait_for(TIMEOUT, "a new worker in its place", || {
        let w = d.pool("web").workers.remove(0);
        (w.pid.is_some_and(|p| p != pid) && w.state == "running").then_some(())
    });
    assert!(!alive(pid), "the frozen worker is still there");
}

fn http_get_metrics(d: &Daemon) -> String {
    http_get(http_port(d), "/metrics").expect("/metrics").1
}

/// The `[http]` port of the daemon's configuration.
fn http_port(d: &Daemon) -> u16 {
    let text = std::fs::read_to_string(&d.config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .expect("[http] listen")
}

#[test]
fn marked_workers_stay_and_a_pool_mostly_down_is_not_restarted() {
    let env = Env::new();
    env.write_config(&service(&env, 2, free_ports(), "on_failure = \"mark\""));
    let d = Daemon::start(&env);
    wait_for(TIMEOUT, "passing probes", || {
        d.pool("web")
            .workers
            .iter()
            .all(|w| w.health.as_ref().is_some_and(|h| h.ok))
            .then_some(())
    });
    std::fs::write(env.path("sick-1"), "").unwrap();
    let w = wait_for(TIMEOUT, "worker 1 unhealthy", || {
        let w = d.pool("web").workers.remove(1);
        (w.state == "unhealthy").then_some(w)
    });
    assert_eq!(w.restarts, 0);
    assert_eq!(w.health.as_ref().unwrap().body.as_deref(), Some("db down"));
    assert!(
        d.status().status_line.contains("1 unhealthy"),
        "{}",
        d.status().status_line
    );
    std::fs::remove_file(env.path("sick-1")).unwrap();
    d.wait_log("worker web/1 is healthy again (HTTP 200)");
    // Restarting pools: when both of two go unhealthy at once, the second is left
    // running (a dependency they share is probably down).
    env.write_config(&service(&env, 2, free_ports(), ""));
    assert!(d.cli(&["reload"]).status.success());
    wait_for(Duration::from_secs(30), "the new workers probed", || {
        let p = d.pool("web");
        p.workers
            .iter()
            .all(|w| w.restarts >= 1 && w.health.as_ref().is_some_and(|h| h.ok))
            .then_some(())
    });
    std::fs::write(env.path("sick-0"), "").unwrap();
    std::fs::write(env.path("sick-1"), "").unwrap();
    d.wait_log("left running:");
    std::thread::sleep(Duration::from_secs(3));
    let log = d.log();
    let restarted = log
        .lines()
        .filter(|l| l.contains("is unhealthy") && l.contains("restarting it"))
        .count();
    assert_eq!(restarted, 1, "{log}");
    let (code, body) = http_get_health(&d);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unhealthy workers"), "{body}");
}

fn http_get_health(d: &Daemon) -> (u16, String) {
    http_get(http_port(d), "/health").expect("/health")
}

#[test]
fn the_example_service_runs_as_it_is() {
    let env = Env::new();
    let dir = format!("{}/examples/service", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(format!("{dir}/steward.toml")).unwrap();
    let base = free_ports();
    let pools = text[text.find("[pool.web]").unwrap()..]
        .replace("\"server.js\"", &format!("\"{dir}/server.js\""))
        .replace("\"app.env\"", &format!("\"{dir}/app.env\""))
        .replace("\"-app.local.env\"", &format!("\"-{dir}/app.local.env\""))
        .replace("port_base = 8081", &format!("port_base = {base}"));
    env.write_config(&pools);
    let out = env.run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut d = Daemon::start(&env);
    wait_for(TIMEOUT, "three healthy instances", || {
        let p = d.pool("web");
        (p.workers.len() == 3
            && p.workers
                .iter()
                .all(|w| w.state == "running" && w.health.as_ref().is_some_and(|h| h.ok)))
        .then_some(())
    });
    let (code, body) = http_get(base + 1, "/").expect("instance 1 answers");
    assert_eq!(code, 200);
    assert!(body.contains("\"instance\":\"1\""), "{body}");
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success());
    assert!(d.log().contains("SIGTERM: finishing"), "{}", d.log());
}

#[test]
fn a_command_probe_passes_on_exit_0_fails_with_what_it_said_and_is_killed_past_its_timeout() {
    let env = Env::new();
    let dir = env.dir.path().display().to_string();
    // The check fails while sick-N exists (saying why), hangs while hang-N exists.
    let check = format!(
        "if [ -e {dir}/hang-$STEWARD_INSTANCE ]; then exec sleep 3600; fi; \
         if [ -e {dir}/sick-$STEWARD_INSTANCE ]; then echo \"queue is stuck\"; exit 2; fi; \
         echo ok >> {dir}/checked-$STEWARD_WORKER_PID"
    );
    env.write_config(&format!(
        "[pool.svc]\ncommand = [\"sleep\", \"3600\"]\nstable_after = \"300ms\"\nstop_timeout = \"1s\"\n\
         backoff = {{ initial = \"200ms\", max = \"1s\" }}\n\n\
         [pool.svc.health]\nexec = [\"sh\", \"-c\", {check:?}]\ninterval = \"300ms\"\n\
         timeout = \"500ms\"\nfailures = 2\n"
    ));
    let d = Daemon::start(&env);
    // Ready at its first passing probe (ready = "health" is the default with a block).
    let w = wait_for(TIMEOUT, "running", || {
        let w = d.pool("svc").workers.remove(0);
        (w.state == "running").then_some(w)
    });
    assert_eq!(w.health.as_ref().unwrap().detail, "exit code 0", "{w:?}");
    let first = w.pid.unwrap();
    // The probe ran with the worker's pid in its environment.
    assert!(env.path(&format!("checked-{first}")).exists());
    std::fs::write(env.path("sick-0"), "").unwrap();
    d.wait_log("worker svc/0 is unhealthy: 2 health probes in a row failed (last: exit code 2: queue is stuck); restarting it");
    std::fs::remove_file(env.path("sick-0")).unwrap();
    let second = wait_for(TIMEOUT, "a new worker running", || {
        let w = d.pool("svc").workers.remove(0);
        w.pid.filter(|p| *p != first && w.state == "running")
    });
    // A probe that hangs is killed at its timeout, and counts as a failure.
    std::fs::write(env.path("hang-0"), "").unwrap();
    d.wait_log("(last: no answer within 500ms); restarting it");
    std::fs::remove_file(env.path("hang-0")).unwrap();
    wait_for(TIMEOUT, "a third worker running", || {
        let w = d.pool("svc").workers.remove(0);
        w.pid.filter(|p| *p != second && w.state == "running")
    });
    // No probe process is left over: every hung `sleep 3600` of a probe was killed.
    let probes_left = || {
        let me = d.pid();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1));
                ppid == Some(&me.to_string()) && {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    cmd.starts_with(b"sleep\0") && Some(*p) != d.pool("svc").workers[0].pid
                }
            })
            .count()
    };
    wait_for(TIMEOUT, "no hung probe left", || {
        (probes_left() == 0).then_some(())
    });
}
