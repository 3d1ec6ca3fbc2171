//! Why a worker exited: its own exit codes (`exit_codes`).

use std::time::Duration;

use crate::helper::*;

#[test]
fn a_pools_own_exit_codes_park_the_worker_or_restart_it_as_planned() {
    let env = Env::new();
    env.write_config(
        "[pool.misconfigured]\ncommand = [\"sh\", \"-c\", \"exit 158\"]\n\
         exit_codes = { 158 = \"config-error\" }\n\
         backoff = { initial = \"100ms\", max = \"200ms\" }\n\n\
         [pool.tempfail]\ncommand = [\"sh\", \"-c\", \"sleep 0.2; exit 75\"]\n\
         exit_codes = { 75 = \"restart\" }\nstable_after = \"5s\"\n\
         backoff = { initial = \"100ms\", max = \"200ms\" }\n",
    );
    let d = Daemon::start(&env);
    let w = wait_for(TIMEOUT, "the misconfigured worker parked", || {
        let w = d.pool("misconfigured").workers.remove(0);
        (w.state == "failed").then_some(w)
    });
    assert_eq!(w.restarts, 0, "{w:?}");
    assert!(
        w.reason
            .as_deref()
            .unwrap_or("")
            .contains("configuration error (exit code 158, as exit_codes says)"),
        "{w:?}"
    );
    // Restarted again and again, each quick, yet never counted as unstable.
    let w = wait_for(Duration::from_secs(15), "several planned restarts", || {
        let w = d.pool("tempfail").workers.remove(0);
        (w.restarts >= 3).then_some(w)
    });
    assert_eq!(w.unstable_exits, 0, "{w:?}");
    assert_ne!(w.state, "crash-looping");
}

#[test]
fn exit_codes_mistakes_are_named() {
    let env = Env::new();
    env.write_config(
        "[pool.a]\ncommand = [\"sh\"]\nexit_codes = { 0 = \"restart\", 300 = \"restart\", 3 = \"ignore\" }\n",
    );
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"0\" is not an exit code from 1 to 255"),
        "{err}"
    );
    assert!(err.contains("\"300\" is not an exit code"), "{err}");
    assert!(err.contains("= \"ignore\": use \"config-error\""), "{err}");
}
