//! Observability: /health, /metrics, the status view, following a job.

use std::process::Command;
use std::time::Duration;

use crate::helper::*;

#[test]
fn health_follows_a_crash_looping_pool_and_recovers() {
    let env = Env::new();
    let port = free_port();
    let flag = env.path("healthy");
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [pool.flaky]\ncommand = [\"sh\", \"-c\", \"test -f {} && exec sleep 1000; exit 1\"]\n\
         crash_loop_after = 2\nstable_after = \"300ms\"\nbackoff = {{ initial = \"100ms\", max = \"200ms\" }}\n",
        flag.display()
    ));
    let d = Daemon::start(&env);
    let (code, body) = wait_for(TIMEOUT, "/health 503", || {
        http_get(port, "/health").filter(|(c, _)| *c == 503)
    });
    assert_eq!(code, 503);
    assert!(
        body.contains("pool flaky has 1 crash-looping workers"),
        "{body}"
    );
    let (code, _) = http_get(port, "/health/live").unwrap();
    assert_eq!(code, 200, "liveness only looks at the loop");
    let (code, body) = http_get(port, "/health/ready").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("pool flaky has no running worker"), "{body}");

    std::fs::write(&flag, "").unwrap();
    let (_, body) = wait_for(TIMEOUT, "/health 200", || {
        http_get(port, "/health").filter(|(c, _)| *c == 200)
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(http_get(port, "/health/ready").unwrap().0, 200);
    let (code, _) = http_get(port, "/nope").unwrap();
    assert_eq!(code, 404);
    drop(d);
}

#[test]
fn metrics_validate_and_move_as_jobs_run() {
    let env = Env::new();
    let port = free_port();
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        jobs_config(2, "", "")
    ));
    let d = Daemon::start(&env);
    d.running_pids("w");
    let (_, before) = wait_for(TIMEOUT, "/metrics", || http_get(port, "/metrics"));
    let ok = "steward_jobs_finished_total{queue=\"q\",outcome=\"succeeded\"}";
    // No job has ended: no sample for that label yet (and none made up as 0).
    assert_eq!(try_metric(&before, ok), None, "{before}");
    for _ in 0..5 {
        d.submit("q", r#"{"sleep": 0.05}"#, &[]);
    }
    let fail = d.submit("q", r#"{"fail": "no", "retry": false}"#, &[]);
    d.wait_job(fail, "failed", TIMEOUT);
    // Gauges come from a snapshot the loop publishes once a second.
    let after = wait_for(
        TIMEOUT,
        "5 succeeded and 2 running workers in metrics",
        || {
            http_get(port, "/metrics").map(|(_, b)| b).filter(|b| {
                try_metric(b, ok).is_some_and(|n| n >= 5.0)
                    && try_metric(b, "steward_workers{pool=\"w\",state=\"running\"}") == Some(2.0)
            })
        },
    );
    assert_eq!(
        metric(
            &after,
            "steward_jobs_finished_total{queue=\"q\",outcome=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "steward_jobs{queue=\"q\",state=\"succeeded\"}"),
        5.0
    );
    assert_eq!(
        metric(&after, "steward_workers{pool=\"w\",state=\"running\"}"),
        2.0
    );
    assert!(
        metric(&after, "steward_journal_commits_total")
            > metric(&before, "steward_journal_commits_total")
    );
    assert!(
        metric(
            &after,
            "steward_job_run_duration_seconds_count{queue=\"q\"}"
        ) >= 6.0
    );
    assert!(metric(&after, "steward_job_queue_wait_seconds_count{queue=\"q\"}") >= 6.0);
    assert!(after.contains("steward_jobs_reclaimed_total{reason=\"worker_exit\"} 0"));

    // promtool (Debian package prometheus) checks the exposition format.
    let file = env.path("metrics.txt");
    std::fs::write(&file, &after).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .expect("promtool (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_for_scripts_and_pipes() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    d.running_pids("w");
    let id = d.submit("q", r#"{"fail": "broken thing", "retry": false}"#, &[]);
    d.wait_job(id, "failed", TIMEOUT);
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!text.contains('\x1b'), "escape codes on a pipe:\n{text}");
    assert!(text.contains("pool w 1/1 running"), "{text}");
    assert!(text.contains("recent failures"), "{text}");
    assert!(text.contains("broken thing"), "{text}");
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "version",
        "pid",
        "uptime_secs",
        "config",
        "state",
        "status_line",
        "pools",
        "queues",
        "journal",
        "recent_failures",
    ] {
        assert!(!v[key].is_null(), "status --json lacks {key}: {v}");
    }
    let q = &v["queues"][0];
    assert_eq!(q["failed_last_hour"], 1);
    assert!(q["oldest_queued_secs"].is_null());
    let w = &v["pools"][0]["workers"][0];
    for key in [
        "instance",
        "state",
        "pid",
        "uptime_secs",
        "restarts",
        "jobs",
    ] {
        assert!(!w[key].is_null(), "worker lacks {key}: {w}");
    }
    assert!(
        v["status_line"]
            .as_str()
            .unwrap()
            .contains("1/1 workers up; 0 queued, 0 running; 1 failed/h"),
        "{v}"
    );
    // A job delayed by an hour is queued but not waiting yet.
    d.submit("q", "{}", &["--delay", "1h"]);
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["queues"][0]["queued"], 1, "{v}");
    assert!(v["queues"][0]["oldest_queued_secs"].is_null(), "{v}");
}

/// WAITING counts how long the job due longest has waited; a delayed job is not waiting.
#[test]
fn status_shows_how_long_due_jobs_have_waited() {
    let env = Env::new();
    env.write_config(&format!("{}\n[queue.idle]\n", jobs_config(1, "", "")));
    let d = Daemon::start(&env);
    d.submit("idle", "{}", &["--delay", "1h"]);
    let waiting = |d: &Daemon| {
        let out = d.cli(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let q = v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "idle")
            .cloned()
            .unwrap();
        (
            q["queued"].as_u64().unwrap(),
            q["oldest_queued_secs"].as_f64(),
        )
    };
    assert_eq!(waiting(&d), (1, None));
    d.submit("idle", "{}", &[]);
    let (queued, secs) = wait_for(TIMEOUT, "the due job has waited a second", || {
        let (queued, secs) = waiting(&d);
        secs.is_some_and(|s| s >= 1.0).then_some((queued, secs))
    });
    assert_eq!(queued, 2);
    let secs = secs.expect("a due job is waiting");
    assert!((1.0..60.0).contains(&secs), "waited {secs}s");
}

/// `steward status --json | grep -q running`: the reader may go away before steward has
/// written; that is the reader's choice, so steward exits 0 without a word.
#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    d.running_pids("w");
    let id = d.submit("q", "{}", &[]).to_string();
    let socket = d.socket.to_string_lossy().into_owned();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["jobs"],
        vec!["job", &id],
        vec!["completions", "bash"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(bin())
            .args(&args)
            .args(["--socket", &socket])
            .stdout(writer)
            .output()
            .expect("run steward");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "steward {args:?} into a closed pipe: {:?}\n{stderr}",
            out.status
        );
    }
}

#[test]
fn following_a_job_shows_its_progress() {
    let env = Env::new();
    env.write_config(&format!(
        "[queue.q]\n\n[pool.py]\ncommand = [\"python3\", \"{}\"]\nqueues = [\"q\"]\n",
        example("workers/worker.py")
    ));
    let d = Daemon::start(&env);
    let id = d.submit("q", r#"{"seconds": 2.5}"#, &[]);
    let out = d.cli(&["job", &id.to_string(), "--follow"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("job {id}: running")), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains('%') && l.contains("running")),
        "no progress lines:\n{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"echo\""));
    let out = d.cli(&[
        "submit",
        "q",
        r#"{"fail": "nope", "retry": false}"#,
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_taken_port_is_reported_and_supervision_goes_on() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[pool.s]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = Daemon::start(&env);
    d.wait_log(&format!(
        "cannot listen on 127.0.0.1:{port} for /health and /metrics"
    ));
    d.running_pids("s");
    // A bad address is caught by check-config.
    std::fs::write(env.config_path(), "[http]\nlisten = \"localhost\"\n").unwrap();
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("2:10: http.listen = \"localhost\" is not an address and port")
    );
}

#[test]
fn the_monitoring_listener_says_it_serves_once_and_stops_with_the_daemon() {
    let env = Env::new();
    let port = free_port();
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[pool.s]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let mut d = Daemon::start(&env);
    wait_for(TIMEOUT, "/health answers", || http_get(port, "/health"));
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success());
    let log = d.log();
    let serving = log.matches("serving /health and /metrics").count();
    assert_eq!(serving, 1, "{log}");
    let stopped = log.find("steward stopped").expect("stopped line");
    assert!(
        !log[stopped..].lines().skip(1).any(|l| !l.trim().is_empty()),
        "lines after `steward stopped`:\n{log}"
    );
}

#[test]
fn a_job_shows_its_last_progress_and_consistent_times() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    d.running_pids("w");
    // Three progress reports within a few milliseconds, then done.
    let id = d.submit("q", r#"{"progress": [0.2, 0.5, 0.9]}"#, &[]);
    let j = d.wait_job(id, "succeeded", TIMEOUT);
    assert_eq!(j.progress, Some(0.9), "{j:?}");
    assert_eq!(j.progress_message.as_deref(), Some("step 3"));
    assert!(
        j.run_at >= j.created_at,
        "run at {} before created {}",
        j.run_at,
        j.created_at
    );
    let out = d.cli(&["job", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("progress:  90% step 3\n"), "{text}");
    // Progress held back by the once-a-second limit reaches the journal while the job
    // runs, not only at its end.
    let long = d.submit("q", r#"{"progress": [0.1, 0.3], "sleep": 4}"#, &[]);
    wait_for(
        Duration::from_secs(3),
        "the latest progress of a running job",
        || {
            let j = d.try_job(long)?;
            (j.state == "running" && j.progress == Some(0.3)).then_some(())
        },
    );
    d.wait_job(long, "succeeded", TIMEOUT);
}

#[test]
fn without_cgroups_limits_are_said_not_enforced_and_usage_comes_from_the_process() {
    let env = Env::new();
    let port = free_port();
    // INVOCATION_ID as under systemd: still not the unit's main process (its parent is
    // the test), so the daemon must leave the cgroup it runs in alone.
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [pool.big]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\nstable_after = \"200ms\"\n\n\
         [pool.big.limits]\nmemory_max = \"256M\"\npids_max = 16\n"
    ));
    let d = Daemon::start_with(&env, &[("INVOCATION_ID", "0123456789abcdef")]);
    let pids = d.running_pids("big");
    assert_eq!(pids.len(), 2);
    d.wait_log("pool big: limits not enforced: memory_max (no cgroups), pids_max (no cgroups)");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for pid in &pids {
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert_eq!(theirs, own, "a worker was moved to another cgroup");
    }
    let s = d.status();
    let c = s.cgroups.as_ref().expect("cgroups in status");
    assert!(!c.enabled);
    assert_eq!(c.detail, "not started by systemd as a service");
    let p = d.pool("big");
    assert_eq!(p.limits, vec!["memory_max 256M", "pids_max 16"]);
    assert_eq!(
        p.limits_not_enforced,
        vec!["memory_max (no cgroups)", "pids_max (no cgroups)"]
    );
    for w in &p.workers {
        let m = w.memory_bytes.expect("memory of a running worker");
        // `sleep`'s resident set: more than a page, far less than the limit.
        assert!(m > 4096 && m < 64 << 20, "{m}");
        assert!(w.cpu_secs.is_some());
        assert!(w.cgroup.is_none());
    }
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cgroups  none (process groups only): not started by systemd as a service"),
        "{text}"
    );
    assert!(
        text.contains("limits NOT enforced: memory_max (no cgroups), pids_max (no cgroups)"),
        "{text}"
    );
    let (_, body) = wait_for(TIMEOUT, "/metrics with worker memory", || {
        http_get(port, "/metrics").filter(|(_, b)| b.contains("steward_worker_memory_bytes{"))
    });
    let m = metric(
        &body,
        "steward_worker_memory_bytes{pool=\"big\",instance=\"0\"}",
    );
    assert!(m > 4096.0, "{body}");
    assert!(body.contains("steward_worker_cpu_seconds_total{pool=\"big\",instance=\"1\"}"));
    // check-config says the same of this machine, and still passes.
    let out = env.run(&["check-config"]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits are enforced when steward runs as its systemd unit"),
        "{err}"
    );
}
