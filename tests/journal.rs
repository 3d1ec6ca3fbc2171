//! The journal under pressure: retention, a full disk, and a graceful stop that drains.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helper::*;

crate::on_both_journals! {
    fn finished_jobs_are_pruned_after_their_retention(env) {
        env.write_config(&jobs_config(
            1,
            "retention_succeeded = \"1s\"\nretention_failed = \"1h\"",
            "",
        ));
        let d = Daemon::start(&env);
        let ok = d.submit("q", "{}", &[]);
        let bad = d.submit("q", r#"{"fail": "x", "retry": false}"#, &[]);
        d.wait_job(ok, "succeeded", TIMEOUT);
        d.wait_job(bad, "failed", TIMEOUT);
        wait_for(Duration::from_secs(10), "succeeded job pruned", || {
            let out = d.cli(&["job", &ok.to_string()]);
            String::from_utf8_lossy(&out.stderr)
                .contains("no job with id")
                .then_some(())
        });
        // The failed job has a longer retention and stays.
        assert_eq!(d.job(bad).state, "failed");
        d.wait_log("deleted 1 finished jobs past their retention");
        if let Some(pg) = &env.pg {
            // Its payload and history went with it.
            for table in ["job_data", "attempts"] {
                let left = pg::count(pg, &format!(
                    "SELECT count(*) FROM steward.{table} t WHERE NOT EXISTS (SELECT 1 FROM steward.jobs_all j WHERE j.id = t.job_id)"));
                assert_eq!(left, 0, "rows of pruned jobs left in {table}");
            }
            assert_eq!(pg::count(pg, "SELECT count(*) FROM steward.job_data"), 1);
        }
    }
}

/// A small tmpfs as the state directory, unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root: this test must run as root (CI does)"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn a_full_disk_refuses_submits_and_keeps_everything_else() {
    let env = Env::new();
    let state = env.path("state");
    let _disk = SmallDisk::mount(state.clone(), "2m");
    // Room to give back once the disk is full.
    std::fs::write(state.join("ballast"), vec![0u8; 512 * 1024]).unwrap();
    env.write_config(&format!(
        "[queue.q]\nmax_payload = \"256KiB\"\n\n[queue.idle]\n\n[pool.sleeper]\ncommand = [\"sleep\", \"1000\"]\n\n\
         [pool.w]\ncommand = [\"python3\", \"{}\"]\nqueues = [\"idle\"]\n",
        test_worker()
    ));
    let d = Daemon::start(&env);
    let sleeper = d.running_pids("sleeper");
    let blob = json!({"blob": "x".repeat(100 * 1024)}).to_string();
    let mut accepted = Vec::new();
    let mut refusal = None;
    for _ in 0..100 {
        let out = d.cli(&["submit", "q", &blob]);
        if out.status.success() {
            accepted.push(
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<i64>()
                    .unwrap(),
            );
        } else {
            refusal = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refusal = refusal.expect("the disk never filled up");
    assert!(refusal.contains("is full: free some space"), "{refusal}");
    assert!(!accepted.is_empty());
    // The daemon lives, supervises, and says what is wrong.
    let s = d.status();
    assert_eq!(s.state, "running");
    assert!(
        s.journal
            .as_ref()
            .unwrap()
            .error
            .as_deref()
            .unwrap_or("")
            .contains("full"),
        "{:?}",
        s.journal
    );
    assert!(
        s.status_line.contains("JOURNAL WRITE FAILING"),
        "{}",
        s.status_line
    );
    assert_eq!(d.running_pids("sleeper"), sleeper);
    // Everything accepted before is intact.
    for id in &accepted {
        let j = d.job(*id);
        assert_eq!(j.state, "queued");
        assert_eq!(j.payload["blob"].as_str().unwrap().len(), 100 * 1024);
    }
    // Free space: submits work again.
    std::fs::remove_file(state.join("ballast")).unwrap();
    let id = d.submit("q", "{}", &[]);
    assert_eq!(d.job(id).state, "queued");
    let s = d.status();
    assert!(s.journal.unwrap().error.is_none());
}

#[test]
fn a_graceful_stop_drains_then_requeues_what_is_left() {
    let env = Env::new();
    env.write_config_with_daemon(
        "shutdown_timeout = \"4s\"\n",
        &jobs_config(2, "", "stop_timeout = \"1s\""),
    );
    let mut d = Daemon::start(&env);
    d.running_pids("w");
    let short = d.submit("q", r#"{"sleep": 1.5}"#, &[]);
    let long = d.submit("q", r#"{"sleep": 60}"#, &[]);
    wait_for(TIMEOUT, "both held", || {
        (d.holder(short).is_some() && d.holder(long).is_some()).then_some(())
    });
    let t0 = Instant::now();
    d.signal("TERM");
    assert!(d.wait_exit(TIMEOUT).success(), "{}", d.log());
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    let log = d.log();
    assert!(log.contains("draining worker"), "{log}");

    // Start again without workers taking jobs, and look at the journal.
    env.write_config("[queue.q]\n");
    let d = Daemon::start(&env);
    let s = d.job(short);
    assert_eq!(
        s.state, "succeeded",
        "the short job should finish during the drain: {s:?}"
    );
    let l = d.job(long);
    assert_eq!(
        l.state, "queued",
        "the long job goes back to its queue: {l:?}"
    );
    assert_eq!(l.history[0].outcome.as_deref(), Some("interrupted"));
    assert_eq!(l.tries, 0);
}

#[test]
fn backup_while_running_is_a_consistent_copy() {
    let env = Env::new();
    env.write_config(&jobs_config(2, "", ""));
    let d = Daemon::start(&env);
    let ids: Vec<i64> = (0..30)
        .map(|i| d.submit("q", &json!({"sleep": 0.02, "i": i}).to_string(), &[]))
        .collect();
    // Back up while jobs are being written.
    let dest = env.path("copy.db");
    let out = env.run(&["backup", dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("30 jobs") && text.contains("integrity checked"),
        "{text}"
    );
    // The copy opens and holds every job submitted before it.
    let copy = rusqlite::Connection::open(&dest).unwrap();
    let n: i64 = copy
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 30);
    // An existing file is not overwritten without --force.
    let out = env.run(&["backup", dest.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("exists; choose another name or pass --force")
    );
    for id in ids {
        d.wait_job(id, "succeeded", TIMEOUT);
    }
    let out = env.run(&["backup", dest.to_str().unwrap(), "--force"]);
    assert!(out.status.success());
    let copy = rusqlite::Connection::open(&dest).unwrap();
    let ok: i64 = copy
        .query_row(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ok, 30);
}

#[test]
fn a_backup_is_no_more_readable_than_the_journal() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write_config("[queue.q]\n");
    let d = Daemon::start(&env);
    d.submit("q", r#"{"secret": "s3cr3t"}"#, &[]);
    let journal = env.path("state/journal.db");
    for mode in [0o600, 0o640] {
        std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(mode)).unwrap();
        let dest = env.path(&format!("copy-{mode:o}.db"));
        let out = env.run(&["backup", dest.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "copy mode {got:o} for a journal of {mode:o}");
    }
}

#[test]
fn a_second_daemon_is_refused_even_when_the_lock_file_is_gone() {
    let env = Env::new();
    env.write_config(&jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    let id = d.submit("q", r#"{"sleep": 30}"#, &[]);
    wait_for(TIMEOUT, "job held", || d.holder(id));
    std::fs::remove_file(env.path("state/journal.lock")).unwrap();
    // Another daemon on the same state directory, with a socket of its own.
    let other = Env::new();
    std::fs::write(
        other.config_path(),
        format!(
            "[daemon]\nstate_dir = \"{}\"\nsocket = \"s.sock\"\n\n{}",
            env.path("state").display(),
            jobs_config(1, "", "")
        ),
    )
    .unwrap();
    let mut second = Daemon::spawn(&other, &[], &["--log-format", "text"]);
    let log = second.log.clone();
    let exited = wait_for_or(
        TIMEOUT,
        "the second daemon to refuse the journal",
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || second.child.try_wait().ok().flatten(),
    );
    assert!(!exited.success());
    let err = second.log();
    assert!(
        err.contains("another steward is using the journal"),
        "{err}"
    );
    // The first one's job was left alone.
    assert_eq!(d.job(id).attempts, 1);
    assert_eq!(d.holder(id).map(|(w, _)| w), Some("w/0".to_string()));
}

#[test]
fn journal_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write_config("[queue.q]\n");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // A daemon started with the loosest umask there is.
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "umask 000; exec \"$0\" daemon --log-format text --config \"$1\"",
        ])
        .arg(bin())
        .arg(env.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    wait_for(TIMEOUT, "the socket", || {
        env.socket().exists().then_some(())
    });
    let out = env.run(&["submit", "q", r#"{"secret": "s3cr3t"}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&env.path("state")), 0o700);
    for f in [
        "journal.db",
        "journal.db-wal",
        "journal.db-shm",
        "journal.lock",
    ] {
        assert_eq!(mode(&env.path(&format!("state/{f}"))), 0o600, "{f}");
    }
    drop(child);
    // A journal left readable by anyone (an older version, a loose umask) is tightened.
    std::fs::set_permissions(
        env.path("state/journal.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let d = Daemon::start(&env);
    assert_eq!(mode(&env.path("state/journal.db")), 0o640);
    drop(d);
}

#[test]
fn a_run_s_lease_is_renewed_while_its_loop_turns_and_ends_with_it() {
    let env = Env::new();
    env.write_config("[queue.q]\n");
    let mut d = Daemon::start(&env);
    let db = rusqlite::Connection::open_with_flags(
        env.path("state/journal.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let lease = || -> (i64, Option<i64>) {
        db.query_row(
            "SELECT lease_expires_at, stopped_at FROM runs ORDER BY started_at DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let (first, stopped) = lease();
    assert_eq!(stopped, None);
    // Renewed every 10 s while the loop turns.
    let renewed = wait_for(Duration::from_secs(25), "a renewal", || {
        let (now, _) = lease();
        (now > first).then_some(now)
    });
    // A loop that does not turn does not renew, though every other thread runs.
    let (code, _) = unix_http(&d.socket, "POST", "/v1/debug/stall?ms=12000", b"");
    assert_eq!(code, 202);
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(lease().0, renewed, "renewed while the loop was blocked");
    wait_for(Duration::from_secs(25), "a renewal after the stall", || {
        (lease().0 > renewed).then_some(())
    });
    // A clean stop ends the lease.
    d.signal("TERM");
    d.wait_exit(TIMEOUT);
    let (expires, stopped) = lease();
    assert_eq!(stopped, Some(expires));
}
