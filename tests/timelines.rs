//! The timelines of real deployments, not only busy back-to-back runs: workers idle for
//! longer than every timeout, a daemon paused longer than a lease, a burst after silence.

use std::time::Duration;

use crate::helper::*;

/// Lines of the daemon's log that say it killed a worker.
fn kills(d: &Daemon) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains("killing it"))
        .map(str::to_string)
        .collect()
}

crate::on_both_journals! {
    fn a_worker_idle_for_longer_than_its_lease_takes_its_next_job(env) {
        env.write_config(&jobs_config(1, "lease = \"2s\"", ""));
        let d = Daemon::start(&env);
        d.running_pids("w");
        // The worker says nothing while idle; that is allowed.
        std::thread::sleep(Duration::from_secs(5));
        let id = d.submit("q", r#"{"sleep": 0.2}"#, &[]);
        let j = d.wait_job(id, "succeeded", TIMEOUT);
        assert_eq!(j.attempts, 1, "{j:?}\n{}", d.log());
        assert_eq!(j.history[0].outcome.as_deref(), Some("succeeded"));
        assert!(kills(&d).is_empty(), "{:?}", kills(&d));
        // Idle again, then a burst after the silence.
        std::thread::sleep(Duration::from_secs(3));
        let ids: Vec<i64> = (0..5).map(|_| d.submit("q", "{}", &[])).collect();
        for id in ids {
            let j = d.wait_job(id, "succeeded", TIMEOUT);
            assert_eq!(j.attempts, 1, "{j:?}");
        }
        assert!(kills(&d).is_empty(), "{:?}", kills(&d));
    }
}

crate::on_both_journals! {
    fn a_second_job_reaches_a_worker_busy_with_a_long_one(env) {
        env.write_config(&jobs_config(1, "lease = \"2s\"", "concurrency = 2"));
        let d = Daemon::start(&env);
        d.running_pids("w");
        std::thread::sleep(Duration::from_secs(3));
        // A long job that heartbeats once a second (inside its 2 s lease) ...
        let long = d.submit("q", r#"{"sleep": 6, "beat": 1}"#, &[]);
        wait_for(TIMEOUT, "long job held", || d.holder(long));
        std::thread::sleep(Duration::from_millis(2500));
        // ... and, well into it, a second one.
        let short = d.submit("q", r#"{"sleep": 0.5, "beat": 1}"#, &[]);
        let s = d.wait_job(short, "succeeded", TIMEOUT);
        assert_eq!(s.attempts, 1, "{s:?}");
        let l = d.wait_job(long, "succeeded", TIMEOUT);
        assert_eq!(l.attempts, 1, "{l:?}\n{}", d.log());
        assert!(kills(&d).is_empty(), "{:?}", kills(&d));
    }
}

#[test]
fn a_silent_worker_holding_a_job_still_expires_with_concurrency() {
    // The fix for idle workers must not make a hung one immortal.
    let env = Env::new();
    env.write_config(&jobs_config(1, "lease = \"2s\"", "concurrency = 2"));
    let d = Daemon::start(&env);
    d.running_pids("w");
    let silent = d.submit("q", r#"{"sleep_first": 60, "silent": true}"#, &[]);
    wait_for(TIMEOUT, "silent job held", || d.holder(silent));
    let j = d.wait_job(silent, "succeeded", TIMEOUT);
    assert_eq!(j.history[0].outcome.as_deref(), Some("hung"), "{j:?}");
    assert!(!kills(&d).is_empty());
}

crate::on_both_journals! {
    fn a_daemon_paused_longer_than_a_lease_does_not_kill_heartbeating_workers(env) {
        env.write_config(&jobs_config(2, "lease = \"2s\"", ""));
        let d = Daemon::start(&env);
        d.running_pids("w");
        let ids = [
            d.submit("q", r#"{"sleep": 20}"#, &[]),
            d.submit("q", r#"{"sleep": 20}"#, &[]),
        ];
        for id in ids {
            wait_for(TIMEOUT, "job held", || d.holder(id));
        }
        // Paused (as by a VM pause or a long stall) for twice the lease, three times over,
        // while both workers heartbeat into their sockets.
        for _ in 0..3 {
            d.signal("STOP");
            std::thread::sleep(Duration::from_secs(4));
            d.signal("CONT");
            std::thread::sleep(Duration::from_millis(700));
        }
        for id in ids {
            let j = d.wait_job(id, "succeeded", Duration::from_secs(40));
            assert_eq!(j.attempts, 1, "{j:?}\n{}", d.log());
        }
        assert!(kills(&d).is_empty(), "{:?}", kills(&d));
    }
}

crate::on_both_journals! {
    fn a_slow_start_during_a_daemon_pause_is_not_a_start_timeout(env) {
        env.write_config(&jobs_config(
            3,
            "",
            "start_timeout = \"5s\"\nenv = { TEST_READY_DELAY = \"1\" }",
        ));
        let d = Daemon::start(&env);
        // The workers say `ready` after a second (more on a loaded machine), while the
        // daemon is paused past their 5 s.
        d.signal("STOP");
        std::thread::sleep(Duration::from_secs(8));
        d.signal("CONT");
        let pids = d.running_pids("w");
        assert_eq!(pids.len(), 3);
        let s = d.pool("w");
        assert!(
            s.workers.iter().all(|w| w.restarts == 0),
            "{s:?}\n{}",
            d.log()
        );
        assert!(kills(&d).is_empty(), "{:?}", kills(&d));
    }
}

crate::on_both_journals! {
    fn far_future_times_and_huge_durations_are_refused_and_the_daemon_lives(env) {
        env.write_config(&jobs_config(1, "", ""));
        let d = Daemon::start(&env);
        d.running_pids("w");
        for args in [
            ["--timeout", "10000y"],
            ["--delay", "10000y"],
            ["--timeout", "101years"],
        ] {
            let out = d.cli(&["submit", "q", "{}", args[0], args[1]]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} was accepted");
            assert!(err.contains("at most 100 years"), "{args:?}: {err}");
        }
        for body in [
            serde_json::json!({"queue": "q", "timeout_ms": 250_000_000_000_000u64}),
            serde_json::json!({"queue": "q", "delay_ms": u64::MAX}),
            serde_json::json!({"queue": "q", "run_at": "9999-12-31T23:59:59Z"}),
            serde_json::json!({"queue": "q", "max_attempts": 4_000_000_000u64}),
        ] {
            let r = d.api::<serde_json::Value>("POST", "/v1/jobs", Some(body.clone()));
            let e = r.expect_err(&format!("{body} was accepted"));
            assert!(e.contains("at most"), "{body}: {e}");
        }
        // The longest allowed values are kept, shown and run.
        let id = d.submit("q", "{}", &["--timeout", "100years"]);
        let later = d.submit("q", "{}", &["--delay", "100years"]);
        assert_eq!(d.wait_job(id, "succeeded", TIMEOUT).attempts, 1);
        let j = d.job(later);
        assert_eq!(j.state, "queued");
        assert!(j.run_at.starts_with("21"), "{}", j.run_at);
        let out = d.cli(&["jobs"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(d.status().state, "running");
    }
}

#[test]
fn absurd_values_already_in_the_journal_do_not_crash_the_daemon() {
    // As a journal written before durations were bounded may hold them.
    let env = Env::new();
    env.write_config("[queue.q]\n");
    let mut d = Daemon::start(&env);
    let soon = d.submit("q", "{}", &[]);
    let never = d.submit("q", "{}", &[]);
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success());
    let db = rusqlite::Connection::open(env.path("state/journal.db")).unwrap();
    db.execute(
        "UPDATE jobs SET timeout_ms = ?1 WHERE id = ?2",
        rusqlite::params![i64::MAX, soon],
    )
    .unwrap();
    db.execute(
        // As migration 6 and every write leave a job that is not due: flagged delayed.
        "UPDATE jobs SET run_at = ?1, delayed = 1 WHERE id = ?2",
        rusqlite::params![i64::MAX, never],
    )
    .unwrap();
    drop(db);
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    let j = d.wait_job(soon, "succeeded", TIMEOUT);
    assert_eq!(j.attempts, 1);
    let n = d.job(never);
    assert_eq!(n.state, "queued");
    assert_eq!(n.run_at, "9999-12-31T23:59:59.999Z");
    let out = d.cli(&["jobs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.status().state, "running");
}
