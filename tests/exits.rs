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

#[test]
fn an_unexpected_exit_is_told_with_the_workers_last_lines_on_stderr() {
    let env = Env::new();
    env.write_config(
        "[pool.dies]\ncommand = [\"sh\", \"-c\", \"echo starting; for i in $(seq 1 30); do echo \\\"err line $i\\\" >&2; done; echo 'FATAL: CONVEX_URL is not set' >&2; exit 3\"]\n\
         backoff = { initial = \"30s\", max = \"30s\" }\n\n\
         [pool.silent]\ncommand = [\"sh\", \"-c\", \"exit 4\"]\n\
         backoff = { initial = \"30s\", max = \"30s\" }\n",
    );
    let d = Daemon::start(&env);
    d.wait_log("FATAL: CONVEX_URL is not set POOL=dies");
    let w = wait_for(TIMEOUT, "the tail kept with the last exit", || {
        let w = d.pool("dies").workers.remove(0);
        w.last_exit
            .as_ref()
            .and_then(|e| e.stderr_tail.clone())
            .map(|t| (w, t))
    });
    let (w, tail) = w;
    assert_eq!(tail.len(), 20, "{tail:?}");
    assert_eq!(tail[0], "err line 12");
    assert_eq!(tail[19], "FATAL: CONVEX_URL is not set");
    assert_eq!(w.last_exit.unwrap().code, Some(3));
    // The log line of the exit carries the same lines.
    let log = d.log();
    let told = log
        .lines()
        .skip_while(|l| !l.contains("worker dies/0") || !l.contains("Its last lines on stderr:"))
        .take(21)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(told.contains("exited: exit code 3"), "{log}");
    assert!(told.contains("  | err line 12\n"), "{told}");
    assert!(!told.contains("| err line 11\n"), "{told}");
    assert!(
        told.contains("\n  | FATAL: CONVEX_URL is not set"),
        "{told}"
    );
    // A worker that said nothing says so.
    wait_for(TIMEOUT, "the silent worker's exit told", || {
        d.log()
            .lines()
            .any(|l| l.contains("worker silent/0") && l.contains("It wrote nothing on stderr."))
            .then_some(())
    });
    // `steward status` shows the lines under the worker that is down.
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| FATAL: CONVEX_URL is not set"), "{text}");
    assert!(text.contains("(it wrote nothing on stderr)"), "{text}");
}
