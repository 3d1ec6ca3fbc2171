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

crate::on_both_journals! {
    fn payloads_up_to_the_queue_s_max_payload_are_accepted(env) {
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
}

crate::on_both_journals! {
    fn every_refusal_is_json_with_a_message(env) {
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
}

crate::on_both_journals! {
    fn big_rows_are_bounded_in_lists_errors_and_results(env) {
        env.write_config(&format!(
            "[queue.held]\nmax_payload = \"2MiB\"\n\n[queue.q]\nmax_payload = \"1KiB\"\n\n\
             [pool.w]\ncommand = [\"python3\", \"{}\"]\nqueues = [\"q\"]\n",
            test_worker()
        ));
        let d = Daemon::start(&env);
        // 30 jobs of 1 MiB each that nobody takes.
        let blob = "x".repeat(1024 * 1024);
        let jobs: Vec<_> = (0..30)
            .map(|i| json!({"queue": "held", "payload": {"i": i, "blob": blob}}))
            .collect();
        let r: steward::control::api::BatchResponse = d
            .api("POST", "/v1/jobs/batch", Some(json!({ "jobs": jobs })))
            .unwrap();
        let mut ids: Vec<i64> = r.jobs.iter().map(|j| j.id).collect();
        // A listing leaves payloads out unless asked for.
        let (code, body) = unix_http(&d.socket, "GET", "/v1/jobs?limit=10000", b"");
        assert_eq!(code, 200);
        assert!(body.len() < 100_000, "{} bytes", body.len());
        assert!(!body.contains("\"payload\""));
        // Asked for, a page holds at most 8 MiB of them, and says where the next one starts.
        let mut seen = Vec::new();
        let mut path = "/v1/jobs?limit=10000&payload=true".to_string();
        loop {
            let (code, body) = unix_http(&d.socket, "GET", &path, b"");
            assert_eq!(code, 200);
            assert!(
                body.len() < 9 * 1024 * 1024 + 200_000,
                "a page of {} bytes",
                body.len()
            );
            let page: steward::control::api::JobList = serde_json::from_str(&body).unwrap();
            assert!(
                page.jobs
                    .iter()
                    .all(|j| j.payload["blob"].as_str() == Some(blob.as_str()))
            );
            seen.extend(page.jobs.iter().map(|j| j.id));
            match page.next {
                Some(n) => path = format!("/v1/jobs?limit=10000&payload=true&before={n}"),
                None => break,
            }
        }
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids, "every job exactly once over the pages");
        // A 15 MiB error is kept as 4 KiB, saying how long it was.
        let failed = d.submit("q", r#"{"fail_bytes": 15728640}"#, &[]);
        let j = d.wait_job(failed, "failed", TIMEOUT);
        let e = j.error.unwrap();
        assert!(e.len() < 4500, "an error of {} bytes kept", e.len());
        assert!(
            e.contains("truncated: 15728640 bytes in all"),
            "{}",
            &e[e.len() - 80..]
        );
        let (_, status) = unix_http(&d.socket, "GET", "/v1/status", b"");
        assert!(status.len() < 100_000, "status of {} bytes", status.len());
        // A result over the queue's max_payload is not kept; the job still succeeds.
        let big = d.submit("q", r#"{"result_bytes": 10000}"#, &[]);
        let j = d.wait_job(big, "succeeded", TIMEOUT);
        let kept = j.result.unwrap()["steward"].as_str().unwrap().to_string();
        assert!(kept.contains("10002 bytes was not kept"), "{kept}");
    }
}

crate::on_both_journals! {
    fn the_job_api_over_tcp_needs_a_token_and_serves_only_job_routes(env) {
        let port = free_port();
        let good = "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c";
        std::fs::write(env.path("tokens"), format!("# remote submitters\n{good}\n")).unwrap();
        env.write_config(&format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntokens_file = \"tokens\"\n\n{}",
            jobs_config(1, "", "")
        ));
        let d = Daemon::start(&env);
        d.wait_log("serving the job API");
        let submit = |token: Option<&str>| {
            http_request(
                port,
                "POST",
                "/v1/jobs",
                token,
                r#"{"queue": "q", "payload": {"n": 1}}"#,
            )
            .expect("an answer")
        };
        // No token, a wrong one: 401 with a reason, and the wrong token is not logged.
        let (code, body) = submit(None);
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
        let wrong = "00000000000000000000000000000000";
        let (code, body) = submit(Some(wrong));
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("not in [api] tokens_file"), "{body}");
        // The refusal reaches the log after the answer: wait for it.
        d.wait_log("refused an API request (POST /v1/jobs)");
        assert!(!d.log().contains(wrong), "the wrong token was logged");
        // Nothing was stored by the refused requests.
        let (_, list) = http_request(port, "GET", "/v1/jobs", Some(good), "").unwrap();
        assert!(!list.contains("\"id\""), "{list}");
        // The right token: the job is stored and runs.
        let (code, body) = submit(Some(good));
        assert_eq!(code, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = v["id"].as_i64().expect("an id");
        d.wait_job(id, "succeeded", TIMEOUT);
        let (code, body) =
            http_request(port, "GET", &format!("/v1/jobs/{id}"), Some(good), "").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("succeeded"), "{body}");
        // Status, reload and restart stay on the local socket.
        for (method, path) in [
            ("GET", "/v1/status"),
            ("POST", "/v1/reload"),
            ("POST", "/v1/pools/w/restart"),
        ] {
            let (code, _) = http_request(port, method, path, Some(good), "").unwrap();
            assert_eq!(code, 404, "{method} {path}");
        }
        assert!(!d.log().contains(good), "a token was logged");
    }
}

#[test]
fn an_api_listener_without_tokens_is_refused_at_its_position() {
    let env = Env::new();
    env.write_config("[api]\nlisten = \"127.0.0.1:9\"\n");
    let out = env.run(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("steward.toml:7:10: api.listen"), "{err}");
    assert!(err.contains("api.listen needs api.tokens_file"), "{err}");
}
