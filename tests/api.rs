//! The control API at its edges: body limits that follow the configuration, and
//! refusals that always say why in the daemon's own words.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helper::*;

fn big_config() -> String {
    format!(
        "[queue.big]\nmax_payload = \"16MiB\"\n\n[queue.small]\n\n\
         [pool.w]\ncommand = [\"python3\", \"{}\"]\nqueues = [\"big\", \"small\"]\n",
        test_worker()
    )
}

/// `steward submit QUEUE -` with `payload` on stdin.
fn submit_stdin(d: &Daemon, queue: &str, payload: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(["submit", queue, "-", "--socket"])
        .arg(&d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn payloads_up_to_the_queue_s_max_payload_are_accepted() {
    let env = Env::new();
    env.write_config(&big_config());
    let d = Daemon::start(&env);
    // 3 MiB: beyond the 2 MiB an HTTP framework allows by default.
    let blob = "x".repeat(3 * 1024 * 1024);
    let payload = json!({ "result": blob.len(), "blob": blob }).to_string();
    let out = submit_stdin(&d, "big", payload.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let j = d.wait_job(id, "succeeded", TIMEOUT);
    assert_eq!(j.payload["blob"].as_str().unwrap().len(), 3 * 1024 * 1024);
    // A batch of three such jobs, in one request.
    let jobs: Vec<_> = (0..3)
        .map(|i| json!({"queue": "big", "payload": {"i": i, "blob": blob}}))
        .collect();
    let r: steward::control::api::BatchResponse = d
        .api("POST", "/v1/jobs/batch", Some(json!({ "jobs": jobs })))
        .unwrap();
    assert_eq!(r.jobs.len(), 3);
    // Over the queue's limit: refused with the limit named; the small queue keeps its own.
    let over = json!({ "blob": "x".repeat(17 * 1024 * 1024) }).to_string();
    let out = submit_stdin(&d, "big", over.as_bytes());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("accepts at most 16777216 bytes (max_payload)"),
        "{err}"
    );
    let out = submit_stdin(&d, "small", payload.as_bytes());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("accepts at most 1048576 bytes (max_payload)"),
        "{err}"
    );
    // A body larger than any queue could take is refused before it is read whole.
    let huge = vec![b' '; 40 * 1024 * 1024];
    let (code, body) = unix_http(&d.socket, "POST", "/v1/jobs", &huge);
    assert_eq!(code, 413, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("the request body is larger than"),
        "{body}"
    );
    assert_eq!(d.status().state, "running");
}

#[test]
fn every_refusal_is_json_with_a_message() {
    let env = Env::new();
    env.write_config(&big_config());
    let d = Daemon::start(&env);
    for (method, path, body, code, words) in [
        ("GET", "/v1/jobs/abc", "", 400, "job id"),
        ("GET", "/v1/jobs?limit=lots", "", 400, "limit"),
        ("GET", "/v1/jobs?state=done", "", 400, "unknown state"),
        ("POST", "/v1/status", "", 405, "GET"),
        ("GET", "/v1/nothing", "", 404, "no such route"),
        ("POST", "/v1/jobs", "{", 400, "invalid request body"),
        (
            "POST",
            "/v1/jobs",
            r#"{"queue": "big", "colour": 1}"#,
            400,
            "unknown field",
        ),
        (
            "POST",
            "/v1/jobs/999999/cancel",
            "",
            404,
            "no job with id 999999",
        ),
        ("POST", "/v1/jobs/x/retry", "", 400, "job id"),
    ] {
        let (got, text) = unix_http(&d.socket, method, path, body.as_bytes());
        assert_eq!(got, code, "{method} {path}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text:?}"));
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(words), "{method} {path}: {msg}");
    }
    // The CLI prints the daemon's message, not just a status.
    let out = d.cli(&["cancel", "999999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no job with id 999999"), "{err}");
}
