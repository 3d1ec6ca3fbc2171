//! sd_notify: READY=1 after the pools are spawned, STATUS=, and a watchdog that only
//! pings while the loop turns.

use std::time::{Duration, Instant};

use crate::helper::*;

#[test]
fn ready_status_and_watchdog() {
    let env = Env::new();
    let port = free_port();
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [pool.w]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\nstable_after = \"200ms\"\n"
    ));
    let notify = NotifySocket::bind_watching(env.path("notify.sock"), env.socket());
    let path = notify.path.display().to_string();
    let d = Daemon::spawn(
        &env,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")],
        &["--log-format", "text"],
    );

    let ready = wait_for(TIMEOUT, "READY=1", || {
        notify
            .all_received()
            .into_iter()
            .find(|m| m.text.lines().any(|l| l == "READY=1"))
    });
    // READY=1 came after the control socket was bound and both workers were started.
    assert!(
        ready.watched_existed,
        "READY=1 before the control socket existed"
    );
    // The kernel's start time of each worker process is before READY=1 arrived.
    let pids = d.status().pools[0]
        .workers
        .iter()
        .map(|w| w.pid)
        .collect::<Vec<_>>();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        let pid = pid.expect("a worker without a pid at READY=1");
        let started = process_start(pid).expect("worker start time");
        assert!(
            started <= ready.boot,
            "worker {pid} started {:?} after READY=1",
            started - ready.boot
        );
    }
    let log = d.log();
    let line = log.find("steward is ready").expect("ready line");
    assert!(
        log.find("started worker w/0").unwrap() < line
            && log.find("started worker w/1").unwrap() < line,
        "{log}"
    );
    assert!(
        ready
            .text
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.contains("workers up")),
        "{}",
        ready.text
    );

    // Pings about every 200 ms.
    let count_since = |t: Instant| {
        notify
            .with_line("WATCHDOG=1")
            .into_iter()
            .filter(|p| *p >= t)
            .count()
    };
    let t0 = Instant::now();
    wait_for(TIMEOUT, "a few pings", || {
        (count_since(t0) >= 5).then_some(())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "5 pings took {:?}",
        t0.elapsed()
    );

    // The loop blocked, the rest of the daemon running: the pings stop, and the health
    // listener (which does not wait on the loop) sees how long it has not turned.
    let (code, body) = unix_http(&d.socket, "POST", "/v1/debug/stall?ms=2500", b"");
    assert_eq!(code, 202, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let quiet = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        count_since(quiet),
        0,
        "pings arrived while the loop was blocked"
    );
    let (_, body) = http_get(port, "/health/live").expect("the health listener answers");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        health["loop_last_turn_ms"].as_u64().unwrap() >= 1000,
        "the listener does not see the loop stopped: {body}"
    );
    // Once it turns again, so do the pings.
    let back = Instant::now();
    wait_for(TIMEOUT, "pings resume", || {
        (count_since(back) >= 3).then_some(())
    });
    wait_for(TIMEOUT, "live again", || {
        (http_get(port, "/health/live")?.0 == 200).then_some(())
    });

    // The worker environment does not carry the daemon's systemd variables.
    let pid = d.running_pids("w")[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("NOTIFY_SOCKET="),
        "worker inherited NOTIFY_SOCKET"
    );
    assert!(
        !environ.contains("WATCHDOG_USEC="),
        "worker inherited WATCHDOG_USEC"
    );
    assert!(environ.contains("STEWARD_POOL=w\0"), "{environ}");
    assert!(environ.contains("STEWARD_INSTANCE=0\0") || environ.contains("STEWARD_INSTANCE=1\0"));
}

#[test]
fn stopping_and_reloading_are_announced() {
    let env = Env::new();
    env.write_config("[pool.w]\ncommand = [\"sleep\", \"1000\"]\n");
    let notify = NotifySocket::bind(env.path("notify.sock"));
    let path = notify.path.display().to_string();
    let mut d = Daemon::spawn(&env, &[("NOTIFY_SOCKET", &path)], &["--log-format", "text"]);
    wait_for(TIMEOUT, "READY=1", || {
        notify.with_line("READY=1").first().copied()
    });
    d.signal("HUP");
    wait_for(TIMEOUT, "RELOADING=1", || {
        notify.with_line("RELOADING=1").first().copied()
    });
    let reloading = notify
        .all()
        .into_iter()
        .find(|(_, m)| m.contains("RELOADING=1"))
        .unwrap()
        .1;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    wait_for(TIMEOUT, "READY=1 after reload", || {
        (notify.with_line("READY=1").len() >= 2).then_some(())
    });
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success());
    assert!(!notify.with_line("STOPPING=1").is_empty());
    // The stop budget (20 s in the test config) is announced when stopping begins.
    let extend = notify
        .all()
        .into_iter()
        .find_map(|(_, m)| {
            m.lines()
                .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC=").map(str::to_string))
        })
        .expect("EXTEND_TIMEOUT_USEC");
    let usec: u64 = extend.parse().unwrap();
    assert!(usec >= 20_000_000, "{usec}");
}

#[test]
fn the_control_socket_is_for_owner_and_group() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write_config("");
    let _d = Daemon::start(&env);
    let mode = std::fs::metadata(env.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
}

#[test]
fn an_unread_notify_socket_does_not_stall_the_daemon() {
    // The kernel queues only a few datagrams for a socket nobody reads; a blocking send
    // would then freeze the supervisor loop.
    let env = Env::new();
    env.write_config("[pool.w]\ncommand = [\"sleep\", \"1000\"]\nstable_after = \"100ms\"\n");
    let path = env.path("deaf.sock");
    let _deaf = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let d = Daemon::spawn(
        &env,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "20000"),
        ],
        &["--log-format", "text"],
    );
    d.wait_running();
    std::thread::sleep(Duration::from_secs(2));
    let pid = d.running_pids("w")[0];
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_for(
        TIMEOUT,
        "worker replaced while notifications are blocked",
        || {
            let w = d.try_status()?.pools[0].workers[0].clone();
            (w.pid.is_some() && w.pid != Some(pid)).then_some(())
        },
    );
}

#[test]
fn workers_get_a_clean_environment_unless_they_inherit() {
    let env = Env::new();
    let dir = env.dir.path().display().to_string();
    let pool = |name: &str, extra: &str| {
        format!(
            "[pool.{name}]\ncommand = [\"sh\", \"-c\", \"env > {dir}/env.$STEWARD_POOL; exec sleep 1000\"]\n\
             env = {{ FROM_POOL = \"yes\" }}\n{extra}\n"
        )
    };
    env.write_config(&format!(
        "{}{}",
        pool("clean", ""),
        pool("all", "inherit_env = true")
    ));
    let _d = Daemon::start_with(
        &env,
        &[
            ("CREDENTIALS_DIRECTORY", "/run/credentials/steward.service"),
            ("INVOCATION_ID", "0123456789abcdef"),
            ("DATABASE_PASSWORD", "hunter2"),
            ("LANG", "C.UTF-8"),
            ("TZ", "UTC"),
        ],
    );
    let vars = |name: &str| -> Vec<String> {
        let text = wait_for(TIMEOUT, "the worker's environment", || {
            std::fs::read_to_string(env.path(&format!("env.{name}")))
                .ok()
                .filter(|t| t.contains("STEWARD_POOL"))
        });
        text.lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
            .collect()
    };
    let clean = vars("clean");
    for want in [
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "FROM_POOL",
        "STEWARD_POOL",
        "STEWARD_SOCKET",
    ] {
        assert!(clean.iter().any(|k| k == want), "no {want} in {clean:?}");
    }
    for not in [
        "CREDENTIALS_DIRECTORY",
        "INVOCATION_ID",
        "DATABASE_PASSWORD",
        "STEWARD_LOG",
    ] {
        assert!(!clean.iter().any(|k| k == not), "{not} in {clean:?}");
    }
    let all = vars("all");
    for want in ["DATABASE_PASSWORD", "INVOCATION_ID", "FROM_POOL"] {
        assert!(all.iter().any(|k| k == want), "no {want} in {all:?}");
    }
    assert!(!all.iter().any(|k| k == "CREDENTIALS_DIRECTORY"), "{all:?}");
}
