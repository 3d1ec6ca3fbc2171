//! Reload: a broken file changes nothing; a valid one touches only what changed.

use crate::helper::*;

const POOLS: &str = "[pool.a]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\nstable_after = \"200ms\"\n\n\
                     [pool.b]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\nstable_after = \"200ms\"\n";

#[test]
fn broken_config_keeps_everything_and_changed_pool_restarts_alone() {
    let env = Env::new();
    env.write_config(POOLS);
    let d = Daemon::start(&env);
    let a0 = d.running_pids("a");
    let b0 = d.running_pids("b");

    // A broken file: errors logged with positions, nothing touched.
    env.write_config(&format!(
        "{POOLS}\n[pool.c]\ncommand = [\"sleep\"]\ninstances = -1\n"
    ));
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let line = text.lines().position(|l| l == "instances = -1").unwrap() + 1;
    let pos = format!("{}:{line}:13: ", env.config_path().display());
    d.signal("HUP");
    d.wait_log("reload failed: 1 error in");
    let log = d.log();
    assert!(log.contains(&pos), "{pos} not in:\n{log}");
    let s = d.status();
    assert!(!s.last_reload.as_ref().unwrap().ok);
    assert!(
        s.status_line.starts_with("reload failed"),
        "{}",
        s.status_line
    );
    assert_eq!(d.running_pids("a"), a0);
    assert_eq!(d.running_pids("b"), b0);
    assert!(s.pools.iter().all(|p| p.name != "c"));

    // `steward reload` reports the failure too, with exit code 78.
    let out = env.run(&["reload"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pos));

    // Change pool b only: b's workers are replaced one at a time, a's stay.
    env.write_config(&POOLS.replace(
        "[pool.b]\ncommand = [\"sleep\", \"1000\"]",
        "[pool.b]\ncommand = [\"sleep\", \"1001\"]",
    ));
    let out = env.run(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("changed b (rolling restart)"));
    let b1 = wait_for(TIMEOUT, "b restarted", || {
        let p = d.try_status()?.pools.into_iter().find(|p| p.name == "b")?;
        let done = !p.rolling
            && p.workers
                .iter()
                .all(|w| w.state == "running" && w.generation == 2);
        done.then(|| p.workers.iter().filter_map(|w| w.pid).collect::<Vec<_>>())
    });
    assert!(b1.iter().all(|p| !b0.contains(p)), "{b0:?} -> {b1:?}");
    assert_eq!(d.running_pids("a"), a0, "pool a must be untouched");
    // One at a time: the log shows b/0 running again before b/1 is stopped.
    let log = d.log();
    let b0_running = log.rfind("worker b/0 is running").unwrap();
    let b1_stop = log.find("stopping worker b/1").unwrap();
    assert!(
        b0_running < b1_stop,
        "b/1 stopped before b/0 was running again\n{log}"
    );

    // Scale a up, remove b, add c.
    env.write_config(
        "[pool.a]\ncommand = [\"sleep\", \"1000\"]\ninstances = 3\nstable_after = \"200ms\"\n\n\
         [pool.c]\ncommand = [\"sleep\", \"1000\"]\nstable_after = \"200ms\"\n",
    );
    d.signal("HUP");
    let a2 = d.running_pids("a");
    assert_eq!(
        &a2[..2],
        &a0[..],
        "scaling must not restart existing workers"
    );
    d.running_pids("c");
    wait_for(TIMEOUT, "pool b removed", || {
        d.try_status()?
            .pools
            .iter()
            .all(|p| p.name != "b")
            .then_some(())
    });
    for p in b1 {
        assert!(!alive(p), "worker {p} of removed pool b is still alive");
    }
}

#[test]
fn restart_command_waits_for_a_rolling_restart() {
    let env = Env::new();
    env.write_config(
        "[pool.a]\ncommand = [\"sleep\", \"1000\"]\ninstances = 3\nstable_after = \"200ms\"\n",
    );
    let d = Daemon::start(&env);
    let before = d.running_pids("a");
    let out = env.run(&["restart", "a"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("pool a restarted: 3/3 workers running"),
        "{text}"
    );
    let after = d.running_pids("a");
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );
}
