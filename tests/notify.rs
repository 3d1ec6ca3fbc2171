//! sd_notify: READY=1 after the pools are spawned, STATUS=, and a watchdog that only
//! pings while the loop turns.

use std::time::{Duration, Instant};

use crate::helper::*;

#[test]
fn ready_status_and_watchdog() {
    let env = Env::new();
    env.write_config(
        "[pool.w]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\nstable_after = \"200ms\"\n",
    );
    let notify = NotifySocket::bind(env.path("notify.sock"));
    let path = notify.path.display().to_string();
    let d = Daemon::spawn(
        &env,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")],
        &["--log-format", "text"],
    );

    let ready_at = wait_for(TIMEOUT, "READY=1", || {
        notify.with_line("READY=1").first().copied()
    });
    // When READY=1 was sent, the socket answered and both workers had been spawned.
    let s = d.status();
    assert_eq!(s.pools[0].workers.len(), 2);
    assert!(s.pools[0].workers.iter().all(|w| w.pid.is_some()), "{s:?}");
    assert!(
        notify.all().iter().any(|(_, m)| m
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.contains("workers up"))),
        "{:?}",
        notify.all()
    );
    let _ = ready_at;

    // Pings about every 200 ms.
    std::thread::sleep(Duration::from_secs(2));
    let pings = notify.with_line("WATCHDOG=1");
    let recent: Vec<Instant> = pings
        .iter()
        .copied()
        .filter(|t| t.elapsed() < Duration::from_millis(2000))
        .collect();
    assert!(
        (6..=14).contains(&recent.len()),
        "expected ~10 pings in 2 s, got {}",
        recent.len()
    );

    // A stopped loop stops pinging.
    d.signal("STOP");
    std::thread::sleep(Duration::from_millis(300));
    let before = notify.with_line("WATCHDOG=1").len();
    std::thread::sleep(Duration::from_millis(1200));
    let after = notify.with_line("WATCHDOG=1").len();
    assert_eq!(before, after, "pings arrived while the daemon was stopped");
    d.signal("CONT");
    wait_for(TIMEOUT, "pings resume", || {
        (notify.with_line("WATCHDOG=1").len() > after).then_some(())
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
