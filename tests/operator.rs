//! What operators type first: stop, start and scale a pool; ps; version; logs; cancel
//! and retry several jobs; jobs by pool and by time.

use std::process::Command;
use std::time::Duration;

use crate::helper::*;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(args);
    assert!(out.status.success(), "steward {args:?}: {}", text(&out));
    text(&out)
}

fn wait_running_count(d: &Daemon, pool: &str, n: usize) {
    wait_for(TIMEOUT, &format!("{n} workers of {pool} running"), || {
        let p = d.try_status()?.pools.into_iter().find(|p| p.name == pool)?;
        let running = p.workers.iter().filter(|w| w.state == "running").count();
        (running == n && p.workers.len() == n).then_some(())
    });
}

const PLAIN: &str = "[pool.w]\ncommand = [\"sleep\", \"1000\"]\nstable_after = \"100ms\"\n";

#[test]
fn stop_start_and_scale_hold_across_a_reload_and_a_restart_until_the_config_changes() {
    let env = Env::new();
    env.write_config(&format!("{PLAIN}instances = 2\n"));
    let mut d = Daemon::start(&env);
    wait_running_count(&d, "w", 2);

    let said = ok(&d, &["scale", "w", "3"]);
    assert!(said.contains("scaling pool w 2→3"), "{said}");
    // It waited for the third worker.
    assert!(said.contains("pool w: 3/3 running"), "{said}");
    let p = d.pool("w");
    assert_eq!(p.running, 3, "{p:?}");
    let p = d.pool("w");
    assert_eq!((p.instances, p.configured_instances), (3, 2));
    assert!(
        p.operator
            .as_deref()
            .is_some_and(|o| o.contains("scaled to 3 by the operator")),
        "{:?}",
        p.operator
    );
    let status = ok(&d, &["status"]);
    assert!(status.contains("scaled to 3 by the operator"), "{status}");

    // A reload that leaves the pool as it is keeps the scale.
    ok(&d, &["reload"]);
    std::thread::sleep(Duration::from_millis(500));
    wait_running_count(&d, "w", 3);

    let said = ok(&d, &["stop", "w"]);
    assert!(said.contains("stopping pool w"), "{said}");
    assert!(said.contains("pool w stopped: no workers left"), "{said}");
    assert!(d.pool("w").workers.is_empty());
    let p = d.pool("w");
    assert_eq!(p.instances, 0);
    assert!(
        p.operator
            .as_deref()
            .unwrap()
            .contains("stopped by the operator")
    );
    let ps = ok(&d, &["ps"]);
    assert!(ps.contains("stopped by the operator"), "{ps}");
    let again = ok(&d, &["stop", "w"]);
    assert!(again.contains("already stopped"), "{again}");

    // A restart of the daemon keeps the pool stopped, and the scale.
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success());
    let d = Daemon::start(&env);
    wait_for(TIMEOUT, "the daemon answering", || d.try_status());
    std::thread::sleep(Duration::from_secs(1));
    let p = d.pool("w");
    assert_eq!(p.workers.len(), 0, "a stopped pool came back: {p:?}");
    let said = ok(&d, &["start", "w"]);
    assert!(said.contains("starting pool w: 3 workers"), "{said}");
    wait_running_count(&d, "w", 3);

    // The configuration's instances changed: it wins over the scale.
    env.write_config(&format!("{PLAIN}instances = 1\n"));
    ok(&d, &["reload"]);
    wait_running_count(&d, "w", 1);
    assert!(d.pool("w").operator.is_none());
    d.wait_log("so the operator's scale to 3 no longer applies");
    assert!(!env.path("state/operator.json").exists());

    // Bad input: a clear error, nothing changed.
    let out = d.cli(&["scale", "nope", "2"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no pool named `nope`; configured pools: w"),
        "{}",
        text(&out)
    );
    let out = d.cli(&["scale", "w", "20000"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("20000"), "{}", text(&out));
    let out = d.cli(&["start", "w"]);
    assert!(text(&out).contains("is not stopped"), "{}", text(&out));
    wait_running_count(&d, "w", 1);
}

#[test]
fn stopping_a_protocol_pool_lets_its_running_job_finish() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    d.wait_running();
    let id = d.submit("q", r#"{"sleep": 1.5}"#, &[]);
    d.wait_job(id, "running", TIMEOUT);
    ok(&d, &["stop", "w"]);
    let j = d.wait_job(id, "succeeded", TIMEOUT);
    assert_eq!(j.tries, 1, "{j:?}");
    wait_running_count(&d, "w", 0);
    // Jobs wait in the queue while the pool is stopped, and run once it starts.
    let later = d.submit("q", r#"{"sleep": 0.1}"#, &[]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(d.job(later).state, "queued");
    ok(&d, &["start", "w"]);
    d.wait_job(later, "succeeded", TIMEOUT);
}

#[test]
fn cancel_and_retry_take_several_ids_or_a_confirmed_selection() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    d.wait_running();
    // Nothing runs meanwhile: retried jobs stay queued.
    ok(&d, &["stop", "w"]);
    wait_running_count(&d, "w", 0);
    let ids: Vec<i64> = (0..3)
        .map(|_| d.submit("q", "{}", &["--delay", "1h"]))
        .collect();
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let mut args = vec!["cancel"];
    args.extend(list.iter().map(String::as_str));
    let said = ok(&d, &args);
    assert_eq!(said.lines().count(), 3, "{said}");
    for id in &ids {
        assert_eq!(d.job(*id).state, "cancelled");
    }
    // A finished job among the ids: the others are done, the command fails and says so.
    let out = d.cli(&["retry", &list[0], "999999"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("job 999999"), "{}", text(&out));
    assert_eq!(d.job(ids[0]).state, "queued");

    for _ in 0..15 {
        d.submit("q", "{}", &["--delay", "1h"]);
    }
    let out = d.cli(&["cancel", "--queue", "q", "--state", "queued"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("this would cancel 16 jobs") && said.contains("--yes"),
        "{said}"
    );
    assert_eq!(d.job(ids[0]).state, "queued", "changed without --yes");
    let said = ok(
        &d,
        &["cancel", "--queue", "q", "--state", "queued", "--yes"],
    );
    assert!(said.contains("16 of 16 jobs cancelled"), "{said}");
    let said = ok(&d, &["retry", "--state", "cancelled", "--yes"]);
    assert!(said.contains("18 of 18 jobs queued again"), "{said}");
    let out = d.cli(&["cancel"]);
    assert!(!out.status.success(), "cancel without ids or selection");
}

#[test]
fn jobs_by_pool_by_time_and_n_and_a_job_shows_its_attempts_durations() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    d.wait_running();
    let first = d.submit("q", r#"{"sleep": 0.3}"#, &[]);
    d.wait_job(first, "succeeded", TIMEOUT);
    for _ in 0..3 {
        d.submit("q", "{}", &["--delay", "1h"]);
    }
    let count = |args: &[&str]| {
        let mut a = vec!["jobs", "--json"];
        a.extend_from_slice(args);
        let out = d.cli(&a);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .len()
    };
    assert_eq!(count(&[]), 4);
    assert_eq!(count(&["-n", "2"]), 2);
    assert_eq!(count(&["--pool", "w"]), 4);
    assert_eq!(count(&["--since", "1h"]), 4);
    assert_eq!(count(&["--until", "1h"]), 0);
    assert_eq!(count(&["--since", "2020-01-01T00:00:00Z"]), 4);
    assert_eq!(count(&["--since", "2999-01-01T00:00:00Z"]), 0);
    let out = d.cli(&["jobs", "--pool", "nope"]);
    assert!(
        text(&out).contains("no pool named `nope`"),
        "{}",
        text(&out)
    );
    let out = d.cli(&["jobs", "--since", "last tuesday"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("neither a duration"), "{}", text(&out));
    // Not a terminal: absolute times, and a pointer to the next page.
    let listing = ok(&d, &["jobs", "-n", "2"]);
    assert!(listing.contains("Z "), "{listing}");
    assert!(listing.contains("--before"), "{listing}");
    let shown = ok(&d, &["job", &first.to_string()]);
    assert!(shown.contains("DURATION"), "{shown}");
    let row = shown
        .lines()
        .find(|l| l.contains("succeeded") && l.trim_start().starts_with('1'))
        .unwrap_or_else(|| panic!("{shown}"));
    let secs: f64 = row
        .split_whitespace()
        .find_map(|w| w.strip_suffix('s').and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no duration in {row:?}"));
    assert!((0.25..5.0).contains(&secs), "{row}");
}

#[test]
fn ps_version_and_logs_say_what_they_can() {
    let env = Env::new();
    env.write_config(&format!("{PLAIN}instances = 2\n"));
    let d = Daemon::start(&env);
    wait_running_count(&d, "w", 2);
    let ps = ok(&d, &["ps"]);
    let pids = d.running_pids("w");
    for pid in &pids {
        assert!(ps.contains(&pid.to_string()), "{ps}");
    }
    assert!(ps.starts_with("POOL"), "{ps}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&d.cli(&["ps", "--json"]).stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["pool"], "w");
    let v = ok(&d, &["version"]);
    let want = env!("CARGO_PKG_VERSION");
    assert!(v.contains(&format!("steward {want}")), "{v}");
    assert!(
        v.contains(&format!("daemon  {want} (pid {}", d.pid())),
        "{v}"
    );
    let out = std::process::Command::new(bin())
        .args(["version", "--socket", "/nonexistent/steward.sock"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        text(&out).contains("daemon  not reachable"),
        "{}",
        text(&out)
    );
    // Here (no systemd), logs says where the log goes instead.
    if !std::path::Path::new("/run/systemd/system").exists() {
        let out = d.cli(&["logs", "w"]);
        assert!(!out.status.success());
        assert!(text(&out).contains("standard error"), "{}", text(&out));
    }
}

#[test]
fn top_runs_in_a_real_terminal_until_q_and_prints_plain_blocks_elsewhere() {
    let env = Env::new();
    env.write_config(&jobs_config(2, "", ""));
    let d = Daemon::start(&env);
    d.wait_running();
    let f = d.submit("q", r#"{"fail": "disk on fire", "retry": false}"#, &[]);
    d.wait_job(f, "failed", TIMEOUT);
    for _ in 0..5 {
        d.submit("q", "{}", &[]);
    }

    // Not a terminal: one block per refresh, no escape codes.
    let out = d.cli(&["top", "--count", "2", "--interval", "200ms"]);
    let plain = text(&out);
    assert!(out.status.success(), "{plain}");
    assert_eq!(plain.matches("--- ").count(), 2, "{plain}");
    for want in ["POOL", "QUEUE", "RECENT FAILURES", "disk on fire", "2/2"] {
        assert!(plain.contains(want), "no {want:?} in {plain}");
    }
    assert!(!plain.contains('\x1b'), "escape codes in plain output");

    // A real terminal (tmux, a private server).
    let server = format!("steward-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &server])
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux)")
    };
    let command = format!(
        "{} top --socket {} --interval 300ms",
        bin(),
        env.socket().display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "40",
        &command,
    ]);
    assert!(started.status.success(), "{}", text(&started));
    let pane = wait_for(TIMEOUT, "top on the terminal", || {
        let p =
            String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).to_string();
        (p.contains("RECENT FAILURES") && p.contains("disk on fire") && p.contains("q quits"))
            .then_some(p)
    });
    assert!(pane.contains("steward "), "{pane}");
    assert!(pane.lines().any(|l| l.starts_with("w ")), "{pane}");
    assert!(pane.lines().any(|l| l.starts_with("q ")), "{pane}");
    assert!(pane.contains('▁'), "no sparkline: {pane}");
    // It refreshes: the uptime moves on.
    std::thread::sleep(Duration::from_millis(1500));
    let later =
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).to_string();
    assert_ne!(pane.lines().next(), later.lines().next(), "no refresh");
    tmux(&["send-keys", "-t", "top", "q"]);
    wait_for(TIMEOUT, "top to quit on q", || {
        (!tmux(&["has-session", "-t", "top"]).status.success()).then_some(())
    });
    tmux(&["kill-server"]);
}

#[test]
fn bash_completion_offers_the_configured_pool_and_queue_names() {
    let env = Env::new();
    env.write_config(&format!(
        "{}\n[queue.mail]\n\n[pool.cron]\ncommand = [\"sleep\", \"1000\"]\n",
        jobs_config(1, "", "")
    ));
    let config = env.config_path();
    let complete = |line: &str| {
        let script = format!(
            "source <({bin} completions bash)\n\
             read -ra COMP_WORDS <<<\"$LINE\"\n\
             [[ \"$LINE\" == *' ' ]] && COMP_WORDS+=('')\n\
             COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE=\"$LINE\"; COMP_POINT=${{#LINE}}\n\
             _steward_with_names steward \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             echo \"${{COMPREPLY[*]}}\"",
            bin = bin()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("LINE", line.replace("CONFIG", config.to_str().unwrap()))
            .env(
                "PATH",
                format!(
                    "{}:/usr/bin:/bin",
                    std::path::Path::new(bin()).parent().unwrap().display()
                ),
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("steward --config CONFIG stop "), "cron w");
    assert_eq!(complete("steward --config CONFIG scale c"), "cron");
    assert_eq!(complete("steward --config CONFIG submit "), "mail q");
    assert_eq!(complete("steward --config CONFIG jobs --queue m"), "mail");
    assert_eq!(complete("steward --config CONFIG jobs --pool "), "cron w");
    // Commands still complete as before.
    assert!(complete("steward --config CONFIG st").contains("stop"));
    // A file that cannot be read offers nothing, quietly.
    assert_eq!(complete("steward --config /nonexistent.toml stop "), "");
    let zsh = text(
        &Command::new(bin())
            .args(["completions", "zsh"])
            .output()
            .unwrap(),
    );
    assert!(zsh.contains(":_steward_pools'") && zsh.contains(":_steward_queues'"));
}

#[test]
fn an_exec_pool_stopped_finishes_its_running_jobs_and_takes_no_more_until_started() {
    let env = Env::new();
    env.write_config(&format!(
        "[queue.q]\n\n[pool.x]\nmode = \"exec\"\ncommand = [\"python3\", \"{}/tests/workers/exec_job.py\"]\nqueues = [\"q\"]\ninstances = 2\n",
        env!("CARGO_MANIFEST_DIR")
    ));
    let d = Daemon::start(&env);
    wait_for(TIMEOUT, "the daemon answering", || d.try_status());
    let running: Vec<i64> = (0..2)
        .map(|_| d.submit("q", r#"{"sleep": 1.5}"#, &[]))
        .collect();
    for id in &running {
        d.wait_job(*id, "running", TIMEOUT);
    }
    // --no-wait returns while the jobs run; they finish.
    let said = ok(&d, &["stop", "x", "--no-wait"]);
    assert!(!said.contains("no workers left"), "{said}");
    let waiting = d.submit("q", "{}", &[]);
    for id in &running {
        let j = d.wait_job(*id, "succeeded", TIMEOUT);
        assert_eq!((j.tries, j.interruptions), (1, 0), "{j:?}");
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        d.job(waiting).state,
        "queued",
        "a stopped exec pool took a job"
    );
    assert_eq!(d.pool("x").instances, 0);
    // Scaled to 1 while stopped: it runs one at a time once started.
    ok(&d, &["scale", "x", "1"]);
    assert_eq!(d.job(waiting).state, "queued");
    ok(&d, &["start", "x"]);
    d.wait_job(waiting, "succeeded", TIMEOUT);
    assert_eq!(d.pool("x").instances, 1);
}
