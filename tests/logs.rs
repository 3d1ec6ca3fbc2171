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
