//! Worker output: one log record per line, with fields, priorities and long lines split.

use crate::helper::*;

#[test]
fn worker_lines_are_logged_with_fields() {
    let env = Env::new();
    env.write_config(
        "[pool.talker]\ncommand = [\"sh\", \"-c\", \"echo hello-out; echo '<3>bad thing' >&2; head -c 40000 /dev/zero | tr '\\\\0' x; echo; sleep 1000\"]\n",
    );
    let d = Daemon::spawn(&env, &[], &["--log-format", "json"]);
    d.wait_running();
    let pid = d.running_pids("talker")[0];
    wait_for(TIMEOUT, "worker lines in the log", || {
        let log = d.log();
        (log.contains("hello-out")
            && log.contains("bad thing")
            && log.matches("xxxxxxxxxx").count() > 0)
            .then_some(())
    });
    // The long line arrives in pieces; give the pump a moment to emit the last one.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let records: Vec<serde_json::Value> = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["POOL"] == "talker" && v["STREAM"].is_string())
        .collect();
    let out = records
        .iter()
        .find(|r| r["message"] == "hello-out")
        .expect("stdout line");
    assert_eq!(out["STREAM"], "stdout");
    assert_eq!(out["INSTANCE"], 0);
    assert_eq!(out["WORKER_PID"], pid);
    assert_eq!(out["level"], "INFO");
    let err = records
        .iter()
        .find(|r| r["message"] == "bad thing")
        .expect("stderr line, prefix stripped");
    assert_eq!(err["STREAM"], "stderr");
    assert_eq!(err["level"], "ERROR");
    let pieces: Vec<usize> = records
        .iter()
        .filter_map(|r| r["message"].as_str())
        .filter(|m| m.starts_with("xxx"))
        .map(|m| m.len())
        .collect();
    assert_eq!(pieces.iter().sum::<usize>(), 40000, "{pieces:?}");
    assert_eq!(pieces, vec![16384, 16384, 7232]);
}

#[test]
fn job_events_carry_job_queue_and_attempt_fields() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::spawn(&env, &[], &["--log-format", "json"]);
    d.wait_running();
    let id = d.submit("q", r#"{"sleep": 0.2}"#, &[]);
    d.wait_job(id, "succeeded", TIMEOUT);
    let records: Vec<serde_json::Value> = wait_for(TIMEOUT, "job records", || {
        let r: Vec<serde_json::Value> = d
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["JOB_ID"] == id)
            .collect();
        r.iter()
            .any(|v| v["message"].as_str().unwrap_or("").contains("succeeded"))
            .then_some(r)
    });
    let msgs: Vec<&str> = records
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(msgs.iter().any(|m| m.contains("submitted")), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("started on worker w/0")),
        "{msgs:?}"
    );
    let started = records
        .iter()
        .find(|r| r["message"].as_str().unwrap().contains("started"))
        .unwrap();
    assert_eq!(started["QUEUE"], "q");
    assert_eq!(started["ATTEMPT"], 1);
    let done = records
        .iter()
        .find(|r| r["message"].as_str().unwrap().contains("succeeded"))
        .unwrap();
    assert_eq!(done["ATTEMPT"], 1);
    // The worker's own output while it held the job is attributed to the job.
    let out = records
        .iter()
        .find(|r| r["message"] == format!("working on job {id}"))
        .expect("worker output with JOB_ID");
    assert_eq!(out["STREAM"], "stdout");
    assert_eq!(out["POOL"], "w");
}
