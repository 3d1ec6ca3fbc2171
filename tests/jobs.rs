//! Jobs: the worker protocol, leases, retries, reclaim, and a journal that loses nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helper::*;

const LONG: Duration = Duration::from_secs(60);

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

crate::on_both_journals! {
    fn round_trip_with_the_example_workers(env) {
        env.write_config(&format!(
            "[queue.py]\n[queue.sh]\n[queue.js]\n\n\
             [pool.python]\ncommand = [\"python3\", \"{}\"]\nqueues = [\"py\"]\n\n\
             [pool.bash]\ncommand = [\"bash\", \"{}\"]\nqueues = [\"sh\"]\n\n\
             [pool.node]\ncommand = [\"node\", \"{}\"]\nqueues = [\"js\"]\n",
            example("workers/worker.py"),
            example("workers/worker.sh"),
            example("workers/worker.js")
        ));
        let d = Daemon::start(&env);
        let py = d.submit("py", r#"{"seconds": 0.3, "name": "py"}"#, &[]);
        let sh = d.submit("sh", r#"{"name": "sh"}"#, &[]);
        let js = d.submit("js", r#"{"seconds": 0.3, "name": "js"}"#, &[]);
        let j = d.wait_job(py, "succeeded", TIMEOUT);
        assert_eq!(j.result.as_ref().unwrap()["echo"]["name"], "py");
        assert_eq!(j.result.as_ref().unwrap()["worker"], "python/0");
        let j = d.wait_job(sh, "succeeded", TIMEOUT);
        assert_eq!(j.result.as_ref().unwrap()["shell"], "bash");
        assert_eq!(j.result.as_ref().unwrap()["worker"], "bash/0");
        let j = d.wait_job(js, "succeeded", TIMEOUT);
        assert_eq!(j.result.as_ref().unwrap()["echo"]["name"], "js");
        // A failure reported by the bash worker is permanent (it says retry: false).
        let f = d.submit("sh", r#"{"please": "fail"}"#, &[]);
        let j = d.wait_job(f, "failed", TIMEOUT);
        assert_eq!(j.history.len(), 1);
        assert_eq!(j.history[0].outcome.as_deref(), Some("failed"));
        // `--wait` exits 0 for success, non-zero for failure, and prints the result.
        let out = d.cli(&["submit", "py", "{}", "--wait"]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"echo\""));
        let out = d.cli(&[
            "submit",
            "py",
            r#"{"fail": "no", "retry": false}"#,
            "--wait",
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("failed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

crate::on_both_journals! {
    fn a_thousand_jobs_each_run_exactly_once(env) {
        env.write_config(&jobs_config(4, "", ""));
        let d = Daemon::start(&env);
        let out = env.path("out.txt");
        let jobs: Vec<serde_json::Value> = (0..1000)
            .map(|i| json!({"queue": "q", "payload": {"append": out, "n": i}}))
            .collect();
        let r: steward::control::api::BatchResponse = d
            .api("POST", "/v1/jobs/batch", Some(json!({ "jobs": jobs })))
            .unwrap();
        assert_eq!(r.jobs.len(), 1000);
        let ids: Vec<i64> = r.jobs.iter().map(|j| j.id).collect();
        wait_for(LONG, "1000 lines", || {
            (lines(&out).len() >= 1000).then_some(())
        });
        wait_for(TIMEOUT, "all succeeded", || {
            let s = d.try_status()?;
            let q = s.queues.iter().find(|q| q.name == "q")?;
            (q.succeeded == 1000 && q.queued == 0 && q.running == 0).then_some(())
        });
        let mut seen: HashMap<i64, usize> = HashMap::new();
        let mut pids = std::collections::HashSet::new();
        for l in lines(&out) {
            let mut f = l.split_whitespace();
            let id: i64 = f.next().unwrap().parse().unwrap();
            *seen.entry(id).or_default() += 1;
            pids.insert(f.nth(1).unwrap().to_string());
        }
        for id in &ids {
            assert_eq!(
                seen.get(id),
                Some(&1),
                "job {id} ran {:?} times",
                seen.get(id)
            );
        }
        assert_eq!(seen.len(), 1000);
        assert_eq!(pids.len(), 4, "work was not spread over the 4 workers");
        let list = d.cli(&["jobs", "--state", "succeeded", "--limit", "2000", "--json"]);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(v.len(), 1000);
    }
}

crate::on_both_journals! {
    fn a_crashed_worker_s_job_runs_again_elsewhere(env) {
        env.write_config(&jobs_config(2, "", ""));
        let d = Daemon::start(&env);
        d.running_pids("w");
        let id = d.submit("q", r#"{"sleep_first": 60}"#, &[]);
        let (worker, pid) = wait_for(TIMEOUT, "job held", || d.holder(id));
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        let j = d.wait_job(id, "succeeded", TIMEOUT);
        assert_eq!(j.attempts, 2);
        assert_eq!(j.crashes, 1);
        assert_eq!(j.history[0].outcome.as_deref(), Some("crashed"));
        assert!(
            j.history[0].error.as_deref().unwrap().contains("SIGKILL"),
            "{:?}",
            j.history[0]
        );
        assert_eq!(j.history[1].outcome.as_deref(), Some("succeeded"));
        assert_ne!(
            j.history[1].worker.as_deref(),
            Some(worker.as_str()),
            "attempt 2 should run on the other worker"
        );
        assert_eq!(j.result.unwrap()["attempt"], 2);
    }
}

crate::on_both_journals! {
    fn a_hung_worker_is_killed_after_its_lease(env) {
        env.write_config(&jobs_config(2, "lease = \"1s\"", ""));
        let d = Daemon::start(&env);
        d.running_pids("w");
        let id = d.submit("q", r#"{"sleep_first": 60}"#, &[]);
        let (_, pid) = wait_for(TIMEOUT, "job held", || d.holder(id));
        let t0 = Instant::now();
        std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        let j = d.wait_job(id, "succeeded", TIMEOUT);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "reclaimed before the lease ran out: {took:?}"
        );
        assert_eq!(j.history[0].outcome.as_deref(), Some("hung"));
        assert!(!alive(pid), "the hung worker must be killed");
        assert!(
            d.log()
                .contains("sent nothing for 1.0s (lease); killing it"),
            "{}",
            d.log()
        );
    }
}

crate::on_both_journals! {
    fn nothing_is_lost_when_the_daemon_is_killed(env) {
        env.write_config(&jobs_config(4, "", ""));
        let mut d = Daemon::start(&env);
        let out = env.path("out.txt");
        let ids: Vec<i64> = (0..40)
            .map(|_| d.submit("q", &json!({"sleep": 0.3, "append": out}).to_string(), &[]))
            .collect();
        wait_for(TIMEOUT, "some done, some running", || {
            let s = d.try_status()?;
            let q = s.queues.iter().find(|q| q.name == "q")?;
            (q.succeeded >= 4 && q.running >= 2).then_some(())
        });
        let workers: Vec<i32> = d.status().pools[0]
            .workers
            .iter()
            .filter_map(|w| w.pid)
            .collect();
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        wait_for(TIMEOUT, "workers gone", || {
            workers.iter().all(|p| !alive(*p)).then_some(())
        });

        let d = Daemon::start(&env);
        assert!(d.log().contains("reclaimed"), "{}", d.log());
        for id in &ids {
            d.wait_job(*id, "succeeded", LONG);
        }
        let mut runs: HashMap<i64, usize> = HashMap::new();
        for l in lines(&out) {
            *runs
                .entry(l.split_whitespace().next().unwrap().parse().unwrap())
                .or_default() += 1;
        }
        let mut interrupted = 0;
        for id in &ids {
            let j = d.job(*id);
            let n = runs.get(id).copied().unwrap_or(0);
            assert!(n >= 1, "job {id} never ran");
            let int = j
                .history
                .iter()
                .filter(|a| a.outcome.as_deref() == Some("interrupted"))
                .count();
            interrupted += int;
            // A repeat is only ever an interrupted attempt, and it shows in the history.
            assert!(
                n <= 1 + int,
                "job {id} ran {n} times with {int} interruptions: {:?}",
                j.history
            );
            assert_eq!(j.tries, 1, "interruptions must not use up attempts: {j:?}");
            assert_eq!(
                j.history.last().unwrap().outcome.as_deref(),
                Some("succeeded")
            );
        }
        assert!(
            interrupted >= 2,
            "expected the running jobs to show as interrupted"
        );
    }
}

crate::on_both_journals! {
    fn done_for_a_job_the_worker_does_not_hold_is_rejected(env) {
        env.write_config(&jobs_config(2, "", ""));
        let d = Daemon::start(&env);
        d.running_pids("w");
        let a = d.submit("q", r#"{"sleep": 2, "result": "real"}"#, &[]);
        wait_for(TIMEOUT, "a held", || d.holder(a));
        let b = d.submit("q", &json!({"bogus_done": a}).to_string(), &[]);
        d.wait_job(b, "succeeded", TIMEOUT);
        let j = d.job(a);
        assert_eq!(j.state, "running", "a forged done must not finish job {a}");
        d.wait_log(&format!(
            "`done` for job {a}, which this worker does not hold; ignored"
        ));
        let j = d.wait_job(a, "succeeded", TIMEOUT);
        assert_eq!(j.result, Some(json!("real")));
        assert_eq!(j.attempts, 1);
        // The worker was told.
        d.wait_log("steward error: `done` for job");
    }
}

crate::on_both_journals! {
    fn retries_back_off_then_fail_and_timeouts_cancel_then_kill(env) {
        env.write_config(&jobs_config(
            2,
            "max_attempts = 3\nretry_backoff = { initial = \"300ms\", max = \"10s\", multiplier = 2.0, jitter = 0.0 }",
            "",
        ));
        let d = Daemon::start(&env);
        let retried = d.submit("q", r#"{"fail": "flaky"}"#, &[]);
        let permanent = d.submit("q", r#"{"fail": "broken", "retry": false}"#, &[]);
        let polite = d.submit(
            "q",
            r#"{"sleep": 60}"#,
            &["--timeout", "1s", "--max-attempts", "1"],
        );
        let stubborn = d.submit(
            "q",
            r#"{"sleep": 60, "ignore_cancel": true}"#,
            &["--timeout", "1s", "--max-attempts", "1"],
        );

        let j = d.wait_job(permanent, "failed", TIMEOUT);
        assert_eq!(j.attempts, 1);
        assert!(j.error.unwrap().contains("permanent failure: broken"));

        let j = d.wait_job(polite, "failed", TIMEOUT);
        assert_eq!(j.history[0].outcome.as_deref(), Some("timeout"));
        assert!(
            j.history[0]
                .error
                .as_deref()
                .unwrap()
                .contains("gave up after cancel"),
            "{:?}",
            j.history
        );

        let j = d.wait_job(retried, "failed", TIMEOUT);
        assert_eq!(j.attempts, 3);
        assert!(
            j.error
                .as_deref()
                .unwrap()
                .contains("failed after 3 of 3 attempts; last error: flaky"),
            "{:?}",
            j.error
        );
        let t = |s: &Option<String>| humantime::parse_rfc3339(s.as_deref().unwrap()).unwrap();
        let gap1 = t(&j.history[1].started_at)
            .duration_since(t(&j.history[0].ended_at))
            .unwrap();
        let gap2 = t(&j.history[2].started_at)
            .duration_since(t(&j.history[1].ended_at))
            .unwrap();
        assert!(
            gap1 >= Duration::from_millis(280) && gap1 < Duration::from_secs(3),
            "{gap1:?}"
        );
        assert!(
            gap2 >= Duration::from_millis(580) && gap2 < Duration::from_secs(4),
            "{gap2:?}"
        );

        // The stubborn one ignores cancel: killed after the 10 s grace.
        let (_, pid) = wait_for(TIMEOUT, "stubborn held", || {
            d.holder(stubborn).or_else(|| {
                d.try_job(stubborn)
                    .filter(|j| j.state != "running")
                    .map(|_| ("gone".into(), 0))
            })
        });
        let j = d.wait_job(stubborn, "failed", Duration::from_secs(30));
        assert_eq!(j.history[0].outcome.as_deref(), Some("timeout"));
        assert!(
            j.history[0]
                .error
                .as_deref()
                .unwrap()
                .contains("did not give up"),
            "{:?}",
            j.history
        );
        if pid > 0 {
            assert!(!alive(pid), "the worker that ignored cancel must be killed");
        }
    }
}

crate::on_both_journals! {
    fn a_poison_job_is_quarantined_and_others_keep_flowing(env) {
        env.write_config(&jobs_config(2, "max_attempts = 20", ""));
        let d = Daemon::start(&env);
        let poison = d.submit("q", r#"{"exit": 1}"#, &[]);
        let others: Vec<i64> = (0..20)
            .map(|_| d.submit("q", r#"{"sleep": 0.05}"#, &[]))
            .collect();
        let j = d.wait_job(poison, "failed", LONG);
        assert_eq!(j.crashes, 3);
        assert_eq!(j.attempts, 3);
        assert!(j.error.unwrap().starts_with("quarantined"));
        for id in others {
            d.wait_job(id, "succeeded", LONG);
        }
    }
}

crate::on_both_journals! {
    fn bad_submissions_store_nothing_and_scheduling_rules_hold(env) {
        env.write_config(&jobs_config(1, "max_payload = \"1KiB\"", ""));
        let d = Daemon::start(&env);
        let out = d.cli(&["submit", "q", "{not json"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
        let big = json!({"blob": "x".repeat(2000)}).to_string();
        let out = d.cli(&["submit", "q", &big]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("accepts at most 1024 bytes (max_payload)"),
            "{err}"
        );
        let out = d.cli(&["submit", "nope", "{}"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unknown queue `nope`; configured queues: q")
        );
        let out = d.cli(&["submit", "q", "{}", "--delay", "soon"]);
        assert!(!out.status.success());
        let out = d.cli(&["job", "424242"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no job with id 424242"));
        let list = d.cli(&["jobs", "--json"]);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
        assert!(v.is_empty(), "nothing may be stored: {v:?}");

        // Unique key: a second submit returns the first job.
        d.running_pids("w");
        let blocker = d.submit("q", r#"{"sleep": 1.5}"#, &[]);
        wait_for(TIMEOUT, "blocker held", || d.holder(blocker));
        let k1 = d.submit("q", "{}", &["--key", "report-7"]);
        let out = d.cli(&["submit", "q", "{}", "--key", "report-7"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), k1.to_string());
        assert!(String::from_utf8_lossy(&out.stderr).contains("already queued or running"));

        // Keys in a batch: one held by a queued job, one new twice, and none.
        let held = d.submit("q", "{}", &["--delay", "1h", "--key", "held-1"]);
        let r: steward::control::api::BatchResponse = d
            .api(
                "POST",
                "/v1/jobs/batch",
                Some(json!({ "jobs": [
                    {"queue": "q", "payload": {}, "key": "held-1"},
                    {"queue": "q", "payload": {}, "key": "new-1"},
                    {"queue": "q", "payload": {}, "key": "new-1"},
                    {"queue": "q", "payload": {}},
                ]})),
            )
            .unwrap();
        let got: Vec<(i64, bool)> = r.jobs.iter().map(|j| (j.id, j.existing)).collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], (held, true), "{got:?}");
        assert!(!got[1].1 && got[1].0 != held, "{got:?}");
        assert_eq!(got[2], (got[1].0, true), "{got:?}");
        assert!(!got[3].1 && got[3].0 != got[1].0 && got[3].0 != held, "{got:?}");
        assert_eq!(d.job(got[1].0).key.as_deref(), Some("new-1"));
        let out = d.cli(&["cancel", &held.to_string()]);
        assert!(out.status.success());

        // Priorities: submitted while the only worker is busy, run highest first.
        let order = env.path("order.txt");
        let low = d.submit(
            "q",
            &json!({"append": order}).to_string(),
            &["--priority", "0"],
        );
        let high = d.submit(
            "q",
            &json!({"append": order}).to_string(),
            &["--priority", "5"],
        );
        let mid = d.submit(
            "q",
            &json!({"append": order}).to_string(),
            &["--priority", "1"],
        );
        for id in [low, high, mid] {
            d.wait_job(id, "succeeded", TIMEOUT);
        }
        let ran: Vec<i64> = lines(&order)
            .iter()
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ran, vec![high, mid, low]);

        // The key is free again once its job has finished.
        d.wait_job(k1, "succeeded", TIMEOUT);
        let k2 = d.submit("q", "{}", &["--key", "report-7"]);
        assert_ne!(k2, k1, "a finished job still held its key");

        // A delayed job waits.
        let t0 = Instant::now();
        let delayed = d.submit("q", "{}", &["--delay", "2s"]);
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(d.job(delayed).state, "queued", "dispatched before its time");
        d.wait_job(delayed, "succeeded", TIMEOUT);
        assert!(t0.elapsed() >= Duration::from_secs(2));
    }
}

crate::on_both_journals! {
    fn cancel_and_retry(env) {
        env.write_config(&jobs_config(1, "", ""));
        let d = Daemon::start(&env);
        d.running_pids("w");
        let running = d.submit("q", r#"{"sleep": 60}"#, &[]);
        wait_for(TIMEOUT, "held", || d.holder(running));
        let queued = d.submit("q", "{}", &[]);
        let out = d.cli(&["cancel", &queued.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(d.job(queued).state, "cancelled");
        let out = d.cli(&["cancel", &running.to_string()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("asked it to stop"));
        let j = d.wait_job(running, "cancelled", TIMEOUT);
        assert_eq!(j.history[0].outcome.as_deref(), Some("cancelled"));
        let out = d.cli(&["cancel", &running.to_string()]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("already cancelled"));
        let out = d.cli(&["retry", &queued.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.wait_job(queued, "succeeded", TIMEOUT);
        let out = d.cli(&["retry", &queued.to_string()]);
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("only failed or cancelled jobs can be retried")
        );
    }
}

#[test]
fn malformed_and_oversized_lines_are_answered_and_the_daemon_lives() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    let id = d.submit("q", r#"{"garbage": true, "huge": true}"#, &[]);
    d.wait_job(id, "succeeded", TIMEOUT);
    d.wait_log("invalid line ignored: not a valid protocol message");
    d.wait_log("invalid line ignored: line longer than 16 MiB ignored");
    d.wait_log("steward error: invalid line ignored");
    assert_eq!(d.status().state, "running");
}

#[test]
fn a_protocol_worker_that_never_says_ready_is_restarted() {
    let env = Env::new();
    env.write_config(
        "[queue.q]\n\n[pool.mute]\ncommand = [\"sleep\", \"1000\"]\nqueues = [\"q\"]\nstart_timeout = \"1s\"\n\
         backoff = { initial = \"100ms\", max = \"100ms\" }\n",
    );
    let d = Daemon::start(&env);
    let first = wait_for(TIMEOUT, "pid", || d.try_status()?.pools[0].workers[0].pid);
    assert_eq!(d.pool("mute").workers[0].state, "starting");
    let id = d.submit("q", "{}", &[]);
    d.wait_log("did not send {\"type\":\"ready\"} within 1.0s (start_timeout); killing it");
    let w = wait_for(TIMEOUT, "restarted", || {
        let w = d.try_status()?.pools[0].workers[0].clone();
        (w.restarts >= 1 && w.pid.is_some() && w.pid != Some(first)).then_some(w)
    });
    assert!(!alive(first));
    assert!(
        w.unstable_exits >= 1,
        "never ready is an unstable run: {w:?}"
    );
    // No job is ever sent to a worker that is not ready.
    assert_eq!(d.job(id).state, "queued");
}
