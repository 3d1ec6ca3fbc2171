//! Exec pools: one process per job, payload on stdin, exit code as the outcome.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helper::*;

fn exec_config(instances: u32, extra: &str) -> String {
    format!(
        "[queue.q]\nretry_backoff = {{ initial = \"100ms\", max = \"1s\", jitter = 0.0 }}\n\n\
         [pool.x]\nmode = \"exec\"\ncommand = [\"python3\", \"{}/tests/workers/exec_job.py\"]\n\
         queues = [\"q\"]\ninstances = {instances}\nstop_timeout = \"1s\"\n{extra}\n",
        env!("CARGO_MANIFEST_DIR")
    )
}

crate::on_both_journals! {
    fn five_hundred_shell_jobs_each_recorded_once(env) {
        let out = env.path("out.txt");
        env.write_config(&format!(
            "[queue.q]\n\n[pool.sh]\nmode = \"exec\"\ncommand = [\"sh\", \"-c\", \"read x; echo \\\"$x\\\" >> {}\"]\nqueues = [\"q\"]\ninstances = 8\n",
            out.display()
        ));
        let d = Daemon::start(&env);
        let jobs: Vec<serde_json::Value> = (0..500)
            .map(|i| json!({"queue": "q", "payload": {"n": i}}))
            .collect();
        let r: steward::control::api::BatchResponse = d
            .api("POST", "/v1/jobs/batch", Some(json!({ "jobs": jobs })))
            .unwrap();
        assert_eq!(r.jobs.len(), 500);
        wait_for(Duration::from_secs(120), "500 succeeded", || {
            let s = d.try_status()?;
            let q = s.queues.iter().find(|q| q.name == "q")?;
            (q.succeeded == 500).then_some(())
        });
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for l in std::fs::read_to_string(&out).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            *seen.entry(v["n"].as_i64().unwrap()).or_default() += 1;
        }
        assert_eq!(seen.len(), 500);
        assert!(
            seen.values().all(|n| *n == 1),
            "a payload was recorded twice"
        );
    }
}

crate::on_both_journals! {
    fn exit_codes_signals_results_and_output(env) {
        env.write_config(&exec_config(4, "no_retry_exit_codes = [3]"));
        let d = Daemon::start(&env);
        let ok = d.submit(
            "q",
            r#"{"print": ["working", "{\"thumbs\": 3}"], "stderr": "a warning"}"#,
            &[],
        );
        let plain = d.submit("q", r#"{"print": ["done, no JSON here"]}"#, &[]);
        let one = d.submit(
            "q",
            r#"{"exit": 1, "stderr": "no such file"}"#,
            &["--max-attempts", "2"],
        );
        let tempfail = d.submit("q", r#"{"exit": 75}"#, &["--max-attempts", "2"]);
        let config = d.submit("q", r#"{"exit": 78}"#, &[]);
        let listed = d.submit("q", r#"{"exit": 3}"#, &[]);
        let crash = d.submit("q", r#"{"signal": 11}"#, &["--max-attempts", "10"]);

        let j = d.wait_job(ok, "succeeded", TIMEOUT);
        assert_eq!(j.result, Some(json!({"thumbs": 3})));
        let a = &j.history[0];
        assert!(a.stdout.as_deref().unwrap().contains("working\n"), "{a:?}");
        assert!(a.stderr.as_deref().unwrap().contains("a warning"), "{a:?}");
        assert!(
            a.pid.is_some_and(|p| p > 0) && a.worker.as_deref().unwrap().starts_with("x/"),
            "{a:?}"
        );
        assert_eq!(d.wait_job(plain, "succeeded", TIMEOUT).result, None);

        let j = d.wait_job(one, "failed", TIMEOUT);
        assert_eq!(j.attempts, 2, "exit 1 is retried");
        assert!(
            j.history[0]
                .error
                .as_deref()
                .unwrap()
                .contains("exited with code 1: no such file"),
            "{:?}",
            j.history
        );
        assert_eq!(
            d.wait_job(tempfail, "failed", TIMEOUT).attempts,
            2,
            "exit 75 is retried"
        );
        let j = d.wait_job(config, "failed", TIMEOUT);
        assert_eq!(j.attempts, 1, "exit 78 fails at once");
        assert_eq!(
            d.wait_job(listed, "failed", TIMEOUT).attempts,
            1,
            "no_retry_exit_codes fail at once"
        );
        let j = d.wait_job(crash, "failed", TIMEOUT);
        assert_eq!(j.crashes, 3);
        assert!(j.error.unwrap().starts_with("quarantined"));
        assert!(
            j.history[0].error.as_deref().unwrap().contains("SIGSEGV"),
            "{:?}",
            j.history
        );

        // `steward job` shows the captured output.
        let out = d.cli(&["job", &ok.to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("stdout (last 2 lines)") && text.contains("working"),
            "{text}"
        );
    }
}

crate::on_both_journals! {
    fn a_timeout_stops_the_whole_process_group(env) {
        env.write_config(&exec_config(2, ""));
        let d = Daemon::start(&env);
        let gc = env.path("gc.pid");
        let me = env.path("me.pid");
        let id = d.submit(
            "q",
            &json!({"sleep": 60, "grandchild": gc, "pidfile": me}).to_string(),
            &["--timeout", "1s", "--max-attempts", "1"],
        );
        let grandchild = wait_for(TIMEOUT, "grandchild pid", || read_pid(&gc));
        let job_pid = wait_for(TIMEOUT, "job pid", || read_pid(&me));
        let t0 = Instant::now();
        let j = d.wait_job(id, "failed", TIMEOUT);
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(j.history[0].outcome.as_deref(), Some("timeout"));
        wait_for(Duration::from_secs(5), "the group is gone", || {
            (!alive(grandchild) && !alive(job_pid)).then_some(())
        });
        // Cancel stops a running job process the same way.
        let id = d.submit("q", r#"{"sleep": 60}"#, &[]);
        wait_for(TIMEOUT, "running", || d.holder(id));
        let out = d.cli(&["cancel", &id.to_string()]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("sent SIGTERM to the process group"),
            "{:?}",
            out
        );
        let j = d.wait_job(id, "cancelled", TIMEOUT);
        assert_eq!(j.history[0].outcome.as_deref(), Some("cancelled"));
    }
}

crate::on_both_journals! {
    fn a_killed_daemon_takes_its_job_processes_and_the_jobs_complete_later(env) {
        env.write_config(&exec_config(4, ""));
        let mut d = Daemon::start(&env);
        let out = env.path("out.txt");
        let ids: Vec<i64> = (0..12)
            .map(|n| {
                d.submit(
                    "q",
                    &json!({"sleep": 1.5, "append": out, "n": n}).to_string(),
                    &[],
                )
            })
            .collect();
        let pids: Vec<i32> = wait_for(TIMEOUT, "4 job processes", || {
            let p: Vec<i32> = d.try_status()?.pools[0]
                .workers
                .iter()
                .filter_map(|w| w.pid)
                .collect();
            (p.len() == 4).then_some(p)
        });
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        wait_for(Duration::from_secs(5), "job processes gone", || {
            pids.iter().all(|p| !alive(*p)).then_some(())
        });

        let d = Daemon::start(&env);
        for id in &ids {
            d.wait_job(*id, "succeeded", Duration::from_secs(60));
        }
        let interrupted = ids
            .iter()
            .filter(|id| {
                d.job(**id)
                    .history
                    .iter()
                    .any(|a| a.outcome.as_deref() == Some("interrupted"))
            })
            .count();
        assert_eq!(
            interrupted, 4,
            "the 4 running jobs were interrupted and run again"
        );
    }
}

crate::on_both_journals! {
    fn exec_output_goes_to_the_log_with_job_fields(env) {
        env.write_config(&exec_config(1, ""));
        let d = Daemon::spawn(&env, &[], &["--log-format", "json"]);
        d.wait_running();
        let id = d.submit(
            "q",
            r#"{"print": ["hello from the job"], "stderr": "and from stderr"}"#,
            &[],
        );
        d.wait_job(id, "succeeded", TIMEOUT);
        wait_for(TIMEOUT, "job output in the log", || {
            let recs: Vec<serde_json::Value> = d
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|v: &serde_json::Value| v["JOB_ID"] == id && v["POOL"] == "x")
                .collect();
            let out = recs
                .iter()
                .any(|r| r["message"] == "hello from the job" && r["STREAM"] == "stdout");
            let err = recs
                .iter()
                .any(|r| r["message"] == "and from stderr" && r["STREAM"] == "stderr");
            (out && err).then_some(())
        });
    }
}

#[test]
fn exec_config_mistakes_are_named() {
    let env = Env::new();
    std::fs::write(
        env.config_path(),
        "[queue.q]\n\n[pool.x]\nmode = \"exec\"\ncommand = [\"true\"]\n\n[pool.y]\nmode = \"batch\"\ncommand = [\"true\"]\n\n[pool.z]\nmode = \"exec\"\ncommand = [\"true\"]\nqueues = [\"q\"]\nconcurrency = 2\n",
    )
    .unwrap();
    let out = env.run(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        err.contains("exec pool `x` takes jobs, so it needs queues"),
        "{err}"
    );
    assert!(err.contains("mode = \"batch\" is not a pool mode"), "{err}");
    assert!(
        err.contains("`concurrency` does not apply to exec pool `z`"),
        "{err}"
    );
}

#[test]
fn switching_a_pool_to_exec_mode_stops_its_workers() {
    let env = Env::new();
    env.write_config("[queue.q]\n\n[pool.x]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\nstable_after = \"100ms\"\n");
    let d = Daemon::start(&env);
    let old = d.running_pids("x");
    env.write_config(&exec_config(2, ""));
    d.signal("HUP");
    wait_for(TIMEOUT, "old workers gone", || {
        old.iter().all(|p| !alive(*p)).then_some(())
    });
    let id = d.submit("q", r#"{"print": ["{\"ok\": 1}"]}"#, &[]);
    assert_eq!(
        d.wait_job(id, "succeeded", TIMEOUT).result,
        Some(json!({"ok": 1}))
    );
    assert_eq!(d.pool("x").mode, "exec");
}
