//! The worker libraries (clients/python, clients/node) against the real daemon: jobs
//! done, heartbeats keeping a short lease, progress seen by `steward job`, failures,
//! cancel, a crash reclaimed, and a drain on stop.

use std::time::{Duration, Instant};

use crate::helper::*;

fn worker(lang: &str) -> (String, String) {
    let dir = env!("CARGO_MANIFEST_DIR");
    match lang {
        "python" => (
            "python3".into(),
            format!("{dir}/tests/workers/lib_worker.py"),
        ),
        _ => ("node".into(), format!("{dir}/tests/workers/lib_worker.js")),
    }
}

fn config(lang: &str) -> String {
    let (program, script) = worker(lang);
    // A lease far shorter than the jobs: only the library's heartbeats keep them.
    format!(
        "[queue.q]\nlease = \"1500ms\"\nretry_backoff = {{ initial = \"100ms\", max = \"1s\", jitter = 0.0 }}\n\n\
         [pool.w]\ncommand = [\"{program}\", \"{script}\"]\nqueues = [\"q\"]\nconcurrency = 2\n\
         stable_after = \"500ms\"\nbackoff = {{ initial = \"100ms\", max = \"500ms\" }}\n"
    )
}

fn holder_pid(d: &Daemon, id: i64) -> i32 {
    wait_for(TIMEOUT, &format!("job {id} held"), || d.holder(id)).1
}

fn library_against_the_daemon(lang: &str) {
    let env = Env::new();
    env.write_config(&config(lang));
    let mut d = Daemon::start(&env);
    d.wait_running();
    // Idle for longer than the lease first: an idle worker holds nothing to renew.
    std::thread::sleep(Duration::from_millis(3500));

    // Heartbeats: 4 s of silence from the handler under a 1.5 s lease (alone on its
    // worker: any line of the worker renews the leases of all it holds).
    let quiet = d.submit("q", r#"{"quiet": 4}"#, &[]);
    let j = d.wait_job(quiet, "succeeded", TIMEOUT);
    assert_eq!(j.tries, 1, "the quiet job was not kept alive: {j:?}");
    assert_eq!(j.history.len(), 1, "{:?}", j.history);
    assert_eq!(j.result.as_ref().unwrap()["attempt"], 1);
    // Progress, seen while it runs.
    let steps = d.submit("q", r#"{"steps": 6, "step": 0.5}"#, &[]);
    let seen = wait_for(TIMEOUT, "progress of the job", || {
        let j = d.try_job(steps)?;
        (j.state == "running" && j.progress.is_some_and(|p| p > 0.0 && p < 1.0)).then_some(j)
    });
    assert!(
        seen.progress_message
            .as_deref()
            .is_some_and(|m| m.starts_with("step ") && m.ends_with(" of 6")),
        "{seen:?}"
    );
    let shown = String::from_utf8_lossy(&d.cli(&["job", &steps.to_string()]).stdout).to_string();
    assert!(
        shown.contains("progress:") && shown.contains("of 6"),
        "{shown}"
    );
    d.wait_job(steps, "succeeded", TIMEOUT);

    // Failures: an exception may be retried; Fail(retry=false) is final.
    let raised = d.submit("q", r#"{"raise": "boom"}"#, &["--max-attempts", "1"]);
    let j = d.wait_job(raised, "failed", TIMEOUT);
    assert!(j.error.as_deref().unwrap_or("").contains("boom"), "{j:?}");
    let permanent = d.submit(
        "q",
        r#"{"fail": "nope", "retry": false}"#,
        &["--max-attempts", "5"],
    );
    let j = d.wait_job(permanent, "failed", TIMEOUT);
    assert_eq!(j.tries, 1, "{j:?}");
    assert_eq!(j.history[0].error.as_deref(), Some("nope"), "{j:?}");

    // A cancel reaches the handler: the job ends at once and its worker lives on.
    let long = d.submit("q", r#"{"quiet": 60}"#, &[]);
    let pid = holder_pid(&d, long);
    let t0 = Instant::now();
    let out = d.cli(&["cancel", &long.to_string()]);
    assert!(out.status.success(), "{out:?}");
    d.wait_job(long, "cancelled", TIMEOUT);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the cancel took {:?} (the worker was killed, not told?)",
        t0.elapsed()
    );
    assert!(alive(pid), "the worker died on a cancel");

    // A crash: the job is reclaimed and runs again on the restarted worker.
    let crash = d.submit("q", r#"{"quiet": 60}"#, &[]);
    let pid = holder_pid(&d, crash);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let again = wait_for(TIMEOUT, "the job running again", || {
        let j = d.try_job(crash)?;
        (j.state == "running" && j.history.len() == 2).then_some(j)
    });
    assert_eq!(
        again.history[0].outcome.as_deref(),
        Some("crashed"),
        "{again:?}"
    );
    assert_ne!(holder_pid(&d, crash), pid);
    d.cli(&["cancel", &crash.to_string()]);
    d.wait_job(crash, "cancelled", TIMEOUT);

    // A stop drains: the running job finishes before the worker goes.
    let drained = d.submit("q", r#"{"steps": 4, "step": 0.5}"#, &[]);
    d.wait_job(drained, "running", TIMEOUT);
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success());
    let d = Daemon::start(&env);
    let j = d.wait_job(drained, "succeeded", TIMEOUT);
    assert_eq!(j.tries, 1, "{j:?}");
    assert_eq!(j.interruptions, 0, "{j:?}");
}

#[test]
fn python_library_against_the_daemon() {
    library_against_the_daemon("python");
}

#[test]
fn node_library_against_the_daemon() {
    library_against_the_daemon("node");
}
