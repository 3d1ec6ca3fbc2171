//! Restart policies, exponential backoff, crash loops, giving up, and exit 78.

use std::time::{Duration, Instant};

use crate::helper::*;

fn kill9(pid: i32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Kill the worker, then time how long until a new pid shows in the status.
fn time_restart(d: &Daemon, old: i32) -> (Duration, i32) {
    kill9(old);
    let t0 = Instant::now();
    let new = wait_for(TIMEOUT, "a new worker pid", || {
        let w = d
            .try_status()?
            .pools
            .into_iter()
            .next()?
            .workers
            .into_iter()
            .next()?;
        w.pid.filter(|p| *p != old)
    });
    (t0.elapsed(), new)
}

#[test]
fn backoff_grows_per_formula_marks_crash_loop_and_resets_after_stable_run() {
    let env = Env::new();
    env.write_config(
        "[pool.w]\ncommand = [\"sleep\", \"1000\"]\nstable_after = \"2s\"\ncrash_loop_after = 3\n\
         backoff = { initial = \"400ms\", max = \"10s\", multiplier = 2.0, jitter = 0.0, reset_after = \"3s\" }\n",
    );
    let d = Daemon::start(&env);
    let mut pid = wait_for(TIMEOUT, "first pid", || {
        d.try_status()?.pools[0].workers[0].pid
    });
    let mut delays = Vec::new();
    for _ in 0..3 {
        let (dt, new) = time_restart(&d, pid);
        delays.push(dt);
        pid = new;
    }
    // Expected 0.4 s, 0.8 s, 1.6 s (jitter 0). Generous upper bounds: CI is noisy.
    for (dt, expected) in delays.iter().zip([400u64, 800, 1600]) {
        let e = Duration::from_millis(expected);
        assert!(
            *dt >= e.mul_f64(0.9),
            "restart after {dt:?}, expected about {e:?} ({delays:?})"
        );
        assert!(
            *dt < e + Duration::from_millis(1500),
            "restart after {dt:?}, expected about {e:?} ({delays:?})"
        );
    }
    assert!(delays[2] > delays[0] * 2, "{delays:?}");

    // The third unstable exit marks the worker as crash-looping while it backs off.
    kill9(pid);
    let w = wait_for(TIMEOUT, "crash-looping state", || {
        let w = d.try_status()?.pools[0].workers[0].clone();
        (w.state == "crash-looping").then_some(w)
    });
    assert_eq!(w.unstable_exits, 4);
    assert!(w.next_restart_in_secs.is_some());
    assert!(
        w.last_exit
            .as_ref()
            .unwrap()
            .description
            .contains("SIGKILL"),
        "{w:?}"
    );

    // A run longer than reset_after resets the level: the next delay is `initial` again.
    let pid = wait_for(TIMEOUT, "restart after crash loop", || {
        let w = d.try_status()?.pools[0].workers[0].clone();
        (w.state == "running").then_some(w.pid).flatten()
    });
    wait_for(TIMEOUT, "a run longer than reset_after (3 s)", || {
        let w = d.try_status()?.pools[0].workers[0].clone();
        (w.pid == Some(pid) && w.uptime_secs? > 3.2).then_some(())
    });
    let (dt, _) = time_restart(&d, pid);
    assert!(
        dt < Duration::from_millis(400 + 1500),
        "level not reset: restart took {dt:?}"
    );
    let w = d.status().pools[0].workers[0].clone();
    assert!(w.unstable_exits <= 1, "{w:?}");
    assert!(w.restarts >= 5, "{w:?}");
}

#[test]
fn restart_policies_and_exit_78() {
    let env = Env::new();
    let fast = "backoff = { initial = \"100ms\", max = \"100ms\", jitter = 0.0 }\nstable_after = \"50ms\"\n";
    env.write_config(&format!(
        "[pool.never_ok]\ncommand = [\"sh\", \"-c\", \"exit 0\"]\nrestart = \"never\"\n{fast}\n\
         [pool.never_fail]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nrestart = \"never\"\n{fast}\n\
         [pool.onf_ok]\ncommand = [\"sh\", \"-c\", \"sleep 0.2; exit 0\"]\nrestart = \"on-failure\"\n{fast}\n\
         [pool.onf_fail]\ncommand = [\"sh\", \"-c\", \"sleep 0.2; exit 1\"]\nrestart = \"on-failure\"\n{fast}\n\
         [pool.always_ok]\ncommand = [\"sh\", \"-c\", \"sleep 0.2; exit 0\"]\nrestart = \"always\"\n{fast}\n\
         [pool.config_error]\ncommand = [\"sh\", \"-c\", \"sleep 0.1; exit 78\"]\nrestart = \"always\"\n{fast}\n\
         [pool.gives_up]\ncommand = [\"sh\", \"-c\", \"exit 2\"]\ngive_up_after = 3\nstable_after = \"1s\"\n\
         backoff = {{ initial = \"50ms\", max = \"50ms\", jitter = 0.0 }}\n"
    ));
    let d = Daemon::start(&env);
    let worker = |pool: &str| d.pool(pool).workers[0].clone();
    wait_for(TIMEOUT, "policies settle", || {
        let ok = worker("never_ok").state == "stopped"
            && worker("never_fail").state == "failed"
            && worker("onf_ok").state == "stopped"
            && worker("onf_fail").restarts >= 2
            && worker("always_ok").restarts >= 2
            && worker("config_error").state == "failed"
            && worker("gives_up").state == "failed";
        ok.then_some(())
    });
    assert_eq!(worker("never_ok").restarts, 0);
    assert_eq!(worker("never_fail").last_exit.unwrap().code, Some(3));
    assert_eq!(worker("onf_ok").restarts, 0);
    // A clean exit under `always` restarts without raising the backoff level.
    assert_eq!(worker("always_ok").unstable_exits, 0);
    let cfg = worker("config_error");
    assert_eq!(cfg.restarts, 0, "exit 78 must not be restarted");
    assert!(cfg.reason.unwrap().contains("configuration error"));
    let g = worker("gives_up");
    assert_eq!(g.restarts, 2, "{g:?}");
    assert!(g.reason.unwrap().contains("gave up after 3"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(worker("config_error").restarts, 0);
    assert_eq!(worker("never_fail").restarts, 0);
    let text = d.log();
    assert!(
        text.contains("worker config_error/0") && text.contains("configuration error"),
        "{text}"
    );

    // `steward restart` brings a failed worker back.
    let out = env.run(&["restart", "config_error", "--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(TIMEOUT, "restarted after steward restart", || {
        let w = worker("config_error");
        (w.generation == 2 && w.last_exit.is_some() && w.state == "failed").then_some(())
    });
    let out = env.run(&["restart", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pool named `nope`"));
}

#[test]
fn a_worker_that_cannot_start_backs_off() {
    let env = Env::new();
    let script = env.path("w.sh");
    std::fs::write(&script, "#!/bin/sh\nsleep 1000\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.write_config(
        "[pool.w]\ncommand = [\"./w.sh\"]\nbackoff = { initial = \"100ms\", max = \"200ms\" }\n",
    );
    let d = Daemon::start(&env);
    d.running_pids("w");
    // Delete the program: the next start fails at exec, which must count as an unstable exit.
    std::fs::remove_file(&script).unwrap();
    let pid = d.pool("w").workers[0].pid.unwrap();
    kill9(pid);
    let w = wait_for(TIMEOUT, "exec failure recorded", || {
        let w = d.try_status()?.pools[0].workers[0].clone();
        (w.unstable_exits >= 2).then_some(w)
    });
    assert!(
        w.last_exit.unwrap().description.contains("could not start"),
        "{}",
        d.log()
    );
    assert!(d.log().contains("cannot start worker w/0"));
}

/// Make the next process created on this machine (in this pid namespace) get `pid`.
fn next_pid_will_be(pid: i32) {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect(
        "writing /proc/sys/kernel/ns_last_pid needs root (CAP_SYS_ADMIN); this test must run as root (CI does)",
    );
}

#[test]
fn a_reused_pid_does_not_inherit_an_earlier_exit() {
    // An orphan a worker left behind is reaped by steward (its subreaper) under some pid
    // P. If the next worker gets P, it must not be taken for having exited already.
    let env = Env::new();
    let dir = env.dir.path().display().to_string();
    env.write_config(&format!(
        "[pool.maker]\nstable_after = \"100ms\"\nbackoff = {{ initial = \"1ms\", max = \"1ms\", jitter = 0.0 }}\n\
         command = [\"sh\", \"-c\", \"(sh -c 'echo $$ > {dir}/orphan.pid; exec sleep 0.3' &); exec sleep 1000\"]\n\n\
         [pool.victim]\ncommand = [\"sleep\", \"1000\"]\nstable_after = \"100ms\"\n\
         backoff = {{ initial = \"1ms\", max = \"1ms\", jitter = 0.0 }}\n"
    ));
    let d = Daemon::start(&env);
    let signal = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    for attempt in 0..30 {
        let maker = d.running_pids("maker")[0];
        let victim = d.running_pids("victim")[0];
        let orphan = wait_for(TIMEOUT, "orphan pid", || read_pid(&env.path("orphan.pid")));
        // The orphan exits and steward reaps it.
        wait_for(TIMEOUT, "orphan reaped", || {
            (!std::path::Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(50));
        let starts = |log: &str| log.matches("started worker victim/0 (pid ").count();
        let started_before = starts(&d.log());
        next_pid_will_be(orphan);
        signal(victim);
        // No process of our own (a `steward status`) may take the pid before the
        // daemon has restarted the victim (1 ms of backoff).
        std::thread::sleep(Duration::from_millis(300));
        // Counted by starts, not by a new pid: when another process takes the
        // orphan's pid first, the victim may well get its own old pid back.
        wait_for_or(
            TIMEOUT,
            "victim restarted",
            || d.log(),
            || (starts(&d.log()) > started_before).then_some(()),
        );
        let log = d.log();
        let last_start = log
            .rsplit("started worker victim/0 (pid ")
            .next()
            .unwrap_or("");
        if !last_start.starts_with(&format!("{orphan})")) {
            // Another process took the pid first; make a new orphan and try again.
            let _ = std::fs::remove_file(env.path("orphan.pid"));
            signal(maker);
            continue;
        }
        // The victim got the orphan's pid: it runs, and steward knows it runs.
        std::thread::sleep(Duration::from_millis(800));
        let w = d.pool("victim").workers[0].clone();
        assert_eq!(w.pid, Some(orphan), "attempt {attempt}: {w:?}\n{}", d.log());
        assert_eq!(w.state, "running", "{w:?}");
        assert!(alive(orphan));
        return;
    }
    panic!("the reused pid never came up in 30 attempts (a busy machine?)");
}
