//! Worker output: one log record per line, with fields, priorities and long lines split.

use std::time::{Duration, Instant};

use crate::helper::*;

/// How long the log output may make no progress before worker lines are dropped.
const STALL: Duration = Duration::from_secs(5);

#[test]
fn worker_lines_are_logged_with_fields() {
    let env = Env::new();
    env.write_config(
        "[pool.talker]\ncommand = [\"sh\", \"-c\", \"echo hello-out; echo '<3>bad thing' >&2; head -c 40000 /dev/zero | tr '\\\\0' x; echo; sleep 1000\"]\n",
    );
    let d = Daemon::spawn(&env, &[], &["--log-format", "json"]);
    d.wait_running();
    let pid = d.running_pids("talker")[0];
    // The long line arrives in pieces: wait for all three.
    let long_pieces = |log: &str| {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with("xxx")))
            .count()
    };
    wait_for(TIMEOUT, "worker lines in the log", || {
        let log = d.log();
        (log.contains("hello-out") && log.contains("bad thing") && long_pieces(&log) >= 3)
            .then_some(())
    });
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

fn app_logger() -> String {
    format!("{}/tests/workers/app_logger.py", env!("CARGO_MANIFEST_DIR"))
}

/// The worker records of `pool` in the daemon's JSON log.
fn records(d: &Daemon, pool: &str) -> Vec<serde_json::Value> {
    d.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["POOL"] == pool && v["STREAM"].is_string())
        .collect()
}

fn record<'a>(records: &'a [serde_json::Value], message: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["message"] == message)
        .unwrap_or_else(|| panic!("no record {message:?} in {records:#?}"))
}

#[test]
fn json_lines_of_pino_and_structlog_become_messages_priorities_and_fields() {
    let env = Env::new();
    let w = app_logger();
    env.write_config(&format!(
        "[pool.pino]\ncommand = [\"python3\", \"{w}\", \"--style\", \"pino\"]\n\n\
         [pool.structlog]\ncommand = [\"python3\", \"{w}\", \"--style\", \"structlog\"]\n\n\
         [pool.raw]\nlog_format = \"text\"\ncommand = [\"python3\", \"{w}\", \"--style\", \"pino\"]\n\n\
         [pool.pretty]\ncommand = [\"python3\", \"{w}\", \"--style\", \"pretty\"]\n\n\
         [pool.words]\nlog_level_from_text = true\ncommand = [\"python3\", \"{w}\", \"--style\", \"text\"]\n\n\
         [pool.nowords]\ncommand = [\"python3\", \"{w}\", \"--style\", \"text\"]\n"
    ));
    let d = Daemon::spawn(&env, &[], &["--log-format", "json"]);
    d.wait_running();
    wait_for(TIMEOUT, "every pool's lines", || {
        [
            ("pino", 4),
            ("structlog", 3),
            ("raw", 4),
            ("pretty", 1),
            ("words", 3),
            ("nowords", 3),
        ]
        .iter()
        .all(|(pool, n)| records(&d, pool).len() >= *n)
        .then_some(())
    });

    // pino: msg, numeric levels, scalar keys as APP_ fields, objects left out.
    let pino = records(&d, "pino");
    for (msg, priority) in [
        ("listening #1", 6),
        ("slow upstream #1", 4),
        ("upload failed #1", 3),
        ("out of disk #1", 2),
    ] {
        let r = record(&pino, msg);
        assert_eq!(r["priority"], priority, "{r}");
        assert_eq!(r["APP_REQID"], "r-1", "{r}");
        assert_eq!(r["APP_ATTEMPT"], "2", "{r}");
        assert_eq!(r["APP_OK"], "false", "{r}");
        assert_eq!(r["APP_HOSTNAME"], "vm-7", "{r}");
        assert_eq!(r["STREAM"], "stdout");
        assert!(r.get("APP_NESTED").is_none(), "{r}");
        assert!(
            r.get("APP_MSG").is_none() && r.get("APP_LEVEL").is_none(),
            "{r}"
        );
    }
    assert_eq!(record(&pino, "upload failed #1")["level"], "ERROR");

    // structlog: event, level names, on stderr.
    let sl = records(&d, "structlog");
    for (event, priority) in [
        ("cache warm #1", 6),
        ("cache miss #1", 4),
        ("cache down #1", 3),
    ] {
        let r = record(&sl, event);
        assert_eq!(r["priority"], priority, "{r}");
        assert_eq!(r["APP_LOGGER"], "app.cache");
        assert_eq!(r["APP_KEY"], "user:1");
        assert_eq!(r["STREAM"], "stderr");
    }

    // log_format = "text": the line as it was, at info.
    let raw = records(&d, "raw");
    assert!(raw.iter().all(|r| r["priority"] == 6), "{raw:#?}");
    assert!(
        raw.iter()
            .any(|r| r["message"].as_str().unwrap().starts_with("{\"time\"")),
        "{raw:#?}"
    );

    // Colours removed (steward's output is not a terminal).
    let pretty = records(&d, "pretty");
    record(&pretty, "[10:00:00.000] ERROR (4242): pretty failure #1");

    // Level words only with log_level_from_text.
    let words = records(&d, "words");
    assert_eq!(record(&words, "ERROR: text failure #1")["priority"], 3);
    assert_eq!(record(&words, "WARN text warning #1")["priority"], 4);
    assert_eq!(record(&words, "plain text #1")["priority"], 6);
    let nowords = records(&d, "nowords");
    assert_eq!(record(&nowords, "ERROR: text failure #1")["priority"], 6);
}

#[test]
fn a_reload_changes_how_lines_are_read_without_restarting_workers() {
    let env = Env::new();
    let w = app_logger();
    let config = |extra: &str| {
        format!(
            "[pool.app]\n{extra}command = [\"python3\", \"{w}\", \"--style\", \"text\", \"--every\", \"0.2\"]\n"
        )
    };
    env.write_config(&config(""));
    let d = Daemon::spawn(&env, &[], &["--log-format", "json"]);
    d.wait_running();
    let pid = d.running_pids("app")[0];
    let priority_of = |n: u32| {
        records(&d, "app")
            .into_iter()
            .find(|r| r["message"] == format!("ERROR: text failure #{n}"))
            .map(|r| r["priority"].as_u64().unwrap())
    };
    wait_for(TIMEOUT, "a first line", || priority_of(1));
    assert_eq!(priority_of(1), Some(6));
    env.write_config(&config("log_level_from_text = true\n"));
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("log settings of app (applied to running workers)"),
        "{said}"
    );
    // Some line after the reload has its level read from its text.
    let later = wait_for(TIMEOUT, "a line read with the new rule", || {
        let log = records(&d, "app");
        log.iter()
            .filter(|r| {
                r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("ERROR: text failure"))
            })
            .find(|r| r["priority"] == 3)
            .cloned()
    });
    assert_eq!(later["WORKER_PID"], pid, "the worker was restarted");
    assert_eq!(d.running_pids("app"), vec![pid]);
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

#[test]
fn routine_job_lines_keep_to_their_budget_and_problems_are_always_logged() {
    let env = Env::new();
    // 4 lines a second, 40 in the bucket: the start and success of 20 jobs.
    let port = free_port();
    env.write_config(&format!(
        "[log]\nmax_job_lines = 4\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        jobs_config(2, "", "")
    ));
    let d = Daemon::spawn(&env, &[], &["--log-format", "json"]);
    d.wait_running();
    let jobs: Vec<serde_json::Value> = (0..100)
        .map(|_| serde_json::json!({"queue": "q", "payload": {}}))
        .collect();
    let r: steward::control::api::BatchResponse = d
        .api(
            "POST",
            "/v1/jobs/batch",
            Some(serde_json::json!({ "jobs": jobs })),
        )
        .unwrap();
    let ids: Vec<i64> = r.jobs.iter().map(|j| j.id).collect();
    for id in &ids {
        d.wait_job(*id, "succeeded", TIMEOUT);
    }
    // The bucket is empty now; a permanent failure is logged all the same.
    let failing = d.submit("q", r#"{"fail": "no such file", "retry": false}"#, &[]);
    d.wait_job(failing, "failed", TIMEOUT);
    let records = |d: &Daemon| -> Vec<serde_json::Value> {
        d.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let ours = |r: &serde_json::Value| {
        r["JOB_ID"]
            .as_i64()
            .is_some_and(|id| id == failing || ids.contains(&id))
    };
    let says =
        |r: &serde_json::Value, needle: &str| r["message"].as_str().unwrap_or("").contains(needle);
    // A job's end is logged just after the journal records it: wait for the lines.
    wait_for(TIMEOUT, "the failure in the log", || {
        records(&d)
            .into_iter()
            .find(|r| r["JOB_ID"] == failing && r["level"] == "ERROR" && says(r, "failed"))
    });
    // What was left out is counted in one line every ten seconds: wait until every one of
    // the 101 starts is either logged or counted.
    let all = wait_for(TIMEOUT, "the report of left-out lines", || {
        let all = records(&d);
        let logged = all
            .iter()
            .filter(|r| ours(r) && says(r, "started on worker"))
            .count() as u64;
        let counted: u64 = all
            .iter()
            .filter_map(|r| r["SKIPPED_STARTS"].as_u64())
            .sum();
        (logged + counted >= 101).then_some(all)
    });
    let ids_with = |needle: &str| -> Vec<i64> {
        let mut v: Vec<i64> = all
            .iter()
            .filter(|r| ours(r) && says(r, needle))
            .filter_map(|r| r["JOB_ID"].as_i64())
            .collect();
        v.sort();
        v
    };
    let started = ids_with("started on worker");
    // The batch took one line of the 40 in the full bucket, which leaves 19 starts,
    // plus 2 a second refilled while the jobs ran (a few seconds here; the bound leaves
    // room for a slow machine).
    let batch: Vec<&serde_json::Value> = all
        .iter()
        .filter(|r| r["JOBS"] == 100 && says(r, "batch of 100 jobs submitted"))
        .collect();
    assert_eq!(batch.len(), 1, "one line for the batch");
    assert_eq!(batch[0]["FIRST_JOB_ID"], ids[0]);
    assert_eq!(batch[0]["LAST_JOB_ID"], ids[99]);
    assert!(
        (19..=70).contains(&started.len()),
        "{} of 101 starts logged",
        started.len()
    );
    let reports: Vec<&serde_json::Value> = all
        .iter()
        .filter(|r| r["SKIPPED_STARTS"].is_u64())
        .collect();
    let counted: u64 = reports
        .iter()
        .filter_map(|r| r["SKIPPED_STARTS"].as_u64())
        .sum();
    assert_eq!(counted + started.len() as u64, 101, "{reports:?}");
    // /metrics counts what the report lines counted.
    let submits: u64 = reports
        .iter()
        .filter_map(|r| r["SKIPPED_SUBMITS"].as_u64())
        .sum();
    let (_, text) = http_get(port, "/metrics").expect("/metrics");
    for (line, want) in [("started", counted), ("submitted", submits)] {
        let name = format!("steward_job_lines_skipped_total{{line=\"{line}\"}}");
        assert!(text.contains(&format!("\n{name} ")), "no {name}: {text}");
        assert_eq!(metric(&text, &name), want as f64, "{text}");
    }
    let message = reports[0]["message"].as_str().unwrap_or("");
    assert!(message.contains("log.max_job_lines = 4"), "{message}");
    let mut started_ok = started.clone();
    started_ok.retain(|id| *id != failing);
    assert_eq!(
        started_ok,
        ids_with("succeeded"),
        "each job whose start is logged has its success logged"
    );
}

/// Two processes that keep both cores busy while they live.
struct Burners(Vec<std::process::Child>);

impl Burners {
    fn start() -> Burners {
        Burners(
            (0..2)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_burst_of_worker_output_into_a_file_loses_nothing() {
    const LINES: usize = 200_000;
    let env = Env::new();
    // Three workers each print 200,000 lines of 90 bytes as fast as they can.
    env.write_config(&format!(
        "[pool.burst]\ninstances = 3\nstable_after = \"100ms\"\n\
         command = [\"sh\", \"-c\", \"yes \\\"$STEWARD_INSTANCE$(printf %089d 0)\\\" | head -n {LINES}; exec sleep 1000\"]\n"
    ));
    let _burners = Burners::start();
    let d = Daemon::start(&env);
    let count = |log: &str, i: usize| {
        let needle = format!("{i}{} POOL=burst INSTANCE={i} ", "0".repeat(89));
        log.lines().filter(|l| l.contains(&needle)).count()
    };
    wait_for_or(
        Duration::from_secs(120),
        "every line of the three workers in the log",
        || {
            let log = d.log();
            format!("{:?}", (0..3).map(|i| count(&log, i)).collect::<Vec<_>>())
        },
        || {
            let log = d.log();
            (0..3).all(|i| count(&log, i) >= LINES).then_some(())
        },
    );
    let log = d.log();
    for i in 0..3 {
        assert_eq!(count(&log, i), LINES, "worker {i}");
    }
    assert!(!log.contains("dropped"), "lines were dropped");
}

#[test]
fn a_stalled_log_output_never_stalls_supervision_and_drops_are_counted() {
    let env = Env::new();
    let port = free_port();
    // The last error line the alarm worker wrote.
    let alarms = env.path("alarms");
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{}\n\
         [pool.flood]\nstable_after = \"100ms\"\ncommand = [\"sh\", \"-c\", \"yes flooding the log\"]\n\n\
         [pool.quiet]\ncommand = [\"sleep\", \"1000\"]\nstable_after = \"100ms\"\n\n\
         [pool.alarm]\nstable_after = \"100ms\"\ncommand = [\"python3\", \"{w}\", \"--style\", \"alarm\", \"--every\", \"0.2\", \"--count-file\", \"{alarms}\"]\n",
        jobs_config(1, "", ""),
        alarms = alarms.display(),
        w = app_logger(),
    ));
    // stderr is a pipe that nobody reads until the end.
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["daemon", "--log-format", "text", "--config"])
        .arg(env.config_path())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(writer);
    let _child = KillOnDrop(cmd.spawn().unwrap());
    let socket = env.socket();
    let status = || {
        let out = std::process::Command::new(bin())
            .args(["status", "--json", "--socket"])
            .arg(&socket)
            .output()
            .ok()?;
        serde_json::from_slice::<steward::control::api::DaemonStatus>(&out.stdout).ok()
    };
    wait_for(TIMEOUT, "daemon running", || {
        status().filter(|s| s.state == "running").map(|_| ())
    });
    // Well past the point where the output counts as stalled.
    std::thread::sleep(STALL + Duration::from_secs(2));
    // Supervision goes on: status answers at once, a job runs, a killed worker returns.
    let t0 = Instant::now();
    let s = status().expect("status answers");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        t0.elapsed()
    );
    let quiet = s.pools.iter().find(|p| p.name == "quiet").unwrap().workers[0]
        .pid
        .unwrap();
    let out = std::process::Command::new(bin())
        .args(["submit", "q", "{}", "--wait", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(quiet),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for(TIMEOUT, "the killed worker replaced", || {
        let p = status()?.pools.into_iter().find(|p| p.name == "quiet")?;
        (p.workers[0].pid != Some(quiet) && p.workers[0].state == "running").then_some(())
    });
    // What could not be written is counted.
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics");
    assert!(
        metric(
            &metrics,
            "steward_log_lines_dropped_total{source=\"worker\"}"
        ) > 0.0,
        "{metrics}"
    );
    // Error lines are never dropped: every alarm written while the output was stalled
    // comes out once it moves again, and so does the report of the drops.
    let written: u32 = std::fs::read_to_string(&alarms)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("the alarm worker wrote");
    // 10 KB a second, more than the room a stalled output leaves over.
    assert!(written >= 200, "only {written} alarms in the stall");
    let drain = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let end = Instant::now() + TIMEOUT;
        let mut missing: std::collections::BTreeSet<u32> = (1..=written).collect();
        let mut reported = false;
        let mut carry = String::new();
        while Instant::now() < end {
            use std::io::Read;
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            carry.push_str(&String::from_utf8_lossy(&seen));
            seen.clear();
            let cut = carry.rfind('\n').map_or(0, |i| i + 1);
            for line in carry[..cut].lines() {
                reported |= line.contains("lines of this worker's output were dropped");
                if let Some(rest) = line.split(" ERROR alarm ").nth(1)
                    && let Some(n) = rest.split(' ').next().and_then(|n| n.parse::<u32>().ok())
                {
                    missing.remove(&n);
                }
            }
            carry.drain(..cut);
            if reported && missing.is_empty() {
                return Ok(());
            }
        }
        Err(format!(
            "reported: {reported}; alarms missing: {} of {written} (first {:?})",
            missing.len(),
            missing.iter().next()
        ))
    });
    drain.join().unwrap().unwrap();
}
