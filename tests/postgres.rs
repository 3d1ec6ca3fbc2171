//! The PostgreSQL journal through the real binary: daemons on one database, each with
//! its own state directory and host name.

use std::time::Duration;

use crate::helper::pg::{Cluster, count, sql};
use crate::helper::*;

/// `[journal]` for `pg`, and `[daemon] host`.
fn journal_config(pg: &Cluster, host: &str) -> String {
    format!(
        "host = \"{host}\"\nshutdown_timeout = \"20s\"\n\n[journal]\nbackend = \"postgres\"\nurl = \"{}\"\n",
        pg.url()
    )
}

#[test]
fn jobs_run_on_postgres_and_jobs_submitted_in_sql_are_picked_up() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.write_config_with_daemon(&journal_config(&pg, "vm-1"), &jobs_config(2, "", ""));
    let d = Daemon::start(&env);
    let journal = d.status().journal.expect("journal status");
    assert!(
        journal.path.contains("PostgreSQL schema steward"),
        "{journal:?}"
    );
    let id = d.submit("q", r#"{"sleep": 0.1}"#, &[]);
    let j = d.wait_job(id, "succeeded", TIMEOUT);
    assert_eq!(j.history.len(), 1);
    assert!(
        j.history[0]
            .worker
            .as_deref()
            .unwrap_or("")
            .contains("on vm-1"),
        "{:?}",
        j.history
    );
    // A job added by another program, inside its own transaction, is found by the
    // workers within the second's sweep.
    let from_sql: i64 = sql(&pg, "SELECT steward.submit('q', '{\"from\": \"sql\"}')")[0].get(0);
    let j = d.wait_job(from_sql, "succeeded", Duration::from_secs(10));
    assert_eq!(j.payload["from"], "sql");
    // Failures retry and end as the SQLite journal's do.
    let f = d.submit("q", r#"{"fail": "always"}"#, &["--max-attempts", "2"]);
    let j = d.wait_job(f, "failed", TIMEOUT);
    assert_eq!(j.attempts, 2);
    // Listing, cancel and retry work the same way.
    let later = d.submit("q", "{}", &["--delay", "1h"]);
    let out = d.cli(&["jobs", "--state", "queued", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("jobs --json");
    assert!(
        listed.to_string().contains(&format!("\"id\":{later}")),
        "{listed}"
    );
    assert!(d.cli(&["cancel", &later.to_string()]).status.success());
    d.wait_job(later, "cancelled", TIMEOUT);
    assert!(d.cli(&["retry", &later.to_string()]).status.success());
    d.wait_job(later, "succeeded", TIMEOUT);
}

#[test]
fn three_daemons_on_one_database_run_each_job_once() {
    let Some(pg) = Cluster::start() else { return };
    let envs: Vec<Env> = (0..3).map(|_| Env::new()).collect();
    let mut daemons = Vec::new();
    for (i, env) in envs.iter().enumerate() {
        env.write_config_with_daemon(
            &journal_config(&pg, &format!("vm-{i}")),
            &jobs_config(2, "", "concurrency = 4\n"),
        );
        daemons.push(Daemon::start(env));
    }
    sql(
        &pg,
        "SELECT steward.submit('q', jsonb_build_object('n', i)) FROM generate_series(1, 3000) i",
    );
    wait_for(Duration::from_secs(120), "3000 jobs succeeded", || {
        (count(
            &pg,
            "SELECT count(*) FROM steward.jobs_all WHERE state = 'succeeded'",
        ) == 3000)
            .then_some(())
    });
    // Each job ran once: one attempt each, and none twice.
    assert_eq!(count(&pg, "SELECT count(*) FROM steward.attempts"), 3000);
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM steward.attempts WHERE outcome IS DISTINCT FROM 'succeeded'"
        ),
        0
    );
    // Every host took part.
    let hosts = count(&pg, "SELECT count(DISTINCT host) FROM steward.attempts");
    assert_eq!(hosts, 3, "not every daemon took jobs");
}

#[test]
fn a_killed_daemons_jobs_are_rescued_by_another_host() {
    let Some(pg) = Cluster::start() else { return };
    let (a_env, b_env) = (Env::new(), Env::new());
    // Only vm-a serves the queue at first.
    a_env.write_config_with_daemon(&journal_config(&pg, "vm-a"), &jobs_config(2, "", ""));
    let mut a = Daemon::start(&a_env);
    let ids: Vec<i64> = (0..2)
        .map(|_| a.submit("q", r#"{"sleep": 600}"#, &[]))
        .collect();
    wait_for(TIMEOUT, "both jobs running on vm-a", || {
        (count(
            &pg,
            "SELECT count(*) FROM steward.jobs_all WHERE state = 'running' AND lease_host = 'vm-a'",
        ) == 2)
            .then_some(())
    });
    a.signal("KILL");
    a.wait_exit(TIMEOUT);
    let killed = std::time::Instant::now();
    // Another host comes up; once vm-a's lease has run out (30 s), it takes the jobs back.
    b_env.write_config_with_daemon(&journal_config(&pg, "vm-b"), &jobs_config(2, "", ""));
    let b = Daemon::start(&b_env);
    for id in &ids {
        wait_for(Duration::from_secs(60), "the job running on vm-b", || {
            b.try_job(*id)
                .filter(|j| j.state == "running" && j.attempts == 2)
        });
    }
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(20),
        "rescued after {took:?}, before the lease ran out"
    );
    assert!(
        took <= Duration::from_secs(50),
        "rescued only after {took:?} (ttl 30 s + 10 s)"
    );
    assert!(
        b.log()
            .contains("whose lease in the shared journal expired"),
        "{}",
        b.log()
    );
    let j = b.job(ids[0]);
    assert_eq!(j.interruptions, 1);
    assert_eq!(j.history[0].outcome.as_deref(), Some("interrupted"));
}

#[test]
fn a_restart_on_the_same_host_takes_its_jobs_back_at_once() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.write_config_with_daemon(&journal_config(&pg, "vm-r"), &jobs_config(1, "", ""));
    let mut d = Daemon::start(&env);
    let id = d.submit("q", r#"{"sleep": 600}"#, &[]);
    d.wait_job(id, "running", TIMEOUT);
    d.signal("KILL");
    d.wait_exit(TIMEOUT);
    let t0 = std::time::Instant::now();
    let d = Daemon::start(&env);
    let j = wait_for(TIMEOUT, "the job running again", || {
        d.try_job(id)
            .filter(|j| j.state == "running" && j.attempts == 2)
    });
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_eq!(j.interruptions, 1);
}

#[test]
fn a_wrong_backend_setting_is_refused_with_its_position() {
    let env = Env::new();
    for (journal, says) in [
        ("backend = \"mysql\"\n", "is not a backend"),
        ("backend = \"postgres\"\n", "needs the database"),
        (
            "backend = \"postgres\"\nurl = \"x\"\nurl_file = \"/f\"\n",
            "not both",
        ),
        (
            "backend = \"postgres\"\nurl = \"x\"\nschema = \"Bad-Name\"\n",
            "schema must be",
        ),
        ("url = \"postgres://x\"\n", "is for backend = \"postgres\""),
    ] {
        env.write_config(&format!("[journal]\n{journal}"));
        let out = env.run(&["check-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{journal}: {err}");
        assert!(err.contains(says), "{journal}: {err}");
        assert!(
            err.contains("steward.toml:"),
            "{journal}: no position in {err}"
        );
    }
}

#[test]
fn an_unreachable_database_refuses_submits_and_supervision_goes_on() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    env.write_config_with_daemon(
        &format!(
            "host = \"vm-x\"\n\n[journal]\nbackend = \"postgres\"\nurl = \"host={} port=5 user=u password=secret\"\n",
            dir.path().display()
        ),
        &jobs_config(1, "", ""),
    );
    let d = Daemon::start(&env);
    d.running_pids("w");
    let out = d.cli(&["submit", "q", "{}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a submit was accepted: {err}");
    assert!(err.contains("out of reach"), "{err}");
    let journal = d.status().journal.expect("journal status");
    let error = journal.error.clone().unwrap_or_default();
    assert!(error.contains("out of reach"), "{journal:?}");
    assert!(!d.log().contains("secret"), "the password was logged");
    // The idle worker asks every second; the refusal is said once, not every time.
    std::thread::sleep(Duration::from_secs(4));
    let log = d.log();
    assert_eq!(
        log.matches("take jobs from the journal").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_database_restart_loses_nothing_and_refuses_submits_meanwhile() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.write_config_with_daemon(&journal_config(&pg, "vm-p"), &jobs_config(1, "", ""));
    let d = Daemon::start(&env);
    let before = d.submit("q", "{}", &[]);
    d.wait_job(before, "succeeded", TIMEOUT);
    // A job that ends while the database is down.
    let during = d.submit("q", r#"{"sleep": 2}"#, &[]);
    d.wait_job(during, "running", TIMEOUT);
    pg.stop();
    let out = d.cli(&["submit", "q", "{}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a submit was accepted while the database was down"
    );
    assert!(err.contains("out of reach"), "{err}");
    wait_for(TIMEOUT, "the status to say so", || {
        d.status()
            .journal
            .and_then(|j| j.error)
            .filter(|e| e.contains("out of reach"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(pg.start_again(), "the cluster did not come back");
    // Back within the reconnect backoff; the completion kept meanwhile is written.
    d.wait_job(during, "succeeded", Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "submits accepted again", || {
        d.cli(&["submit", "q", "{}"]).status.success().then_some(())
    });
    assert!(d.status().journal.and_then(|j| j.error).is_none());
    assert!(d.log().contains("reachable again"), "{}", d.log());
    assert!(
        d.log().contains("taking jobs from the journal again"),
        "{}",
        d.log()
    );
}

/// A TCP port that forwards to the cluster's socket until it is cut: then every
/// connection through it is closed and new ones are refused (a host cut off from the
/// database while the database and the other hosts go on).
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set: the next connection that sends `COMMIT` loses its client side right after,
    /// before the server's answer can come back (then the flag is clear again).
    at_commit: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start(to: std::path::PathBuf) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let at_commit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        let commit_flag = at_commit.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::os::unix::net::UnixStream::connect(&to) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                for (mut from, mut to, f, commit) in [
                    (
                        Box::new(client) as Box<dyn ReadWrite>,
                        Box::new(s2) as Box<dyn ReadWrite>,
                        flag.clone(),
                        Some(commit_flag.clone()),
                    ),
                    (Box::new(server), Box::new(c2), flag.clone(), None),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            let _ = from.timeout(Duration::from_millis(100));
                            if f.load(Ordering::SeqCst) {
                                from.close();
                                to.close();
                                return;
                            }
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) => {
                                    to.close();
                                    return;
                                }
                                Ok(n) => {
                                    if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                        return;
                                    }
                                    let committing = buf[..n].windows(6).any(|w| w == b"COMMIT");
                                    if committing
                                        && commit
                                            .as_ref()
                                            .is_some_and(|c| c.swap(false, Ordering::SeqCst))
                                    {
                                        // The client never hears the answer; the server
                                        // still reads the COMMIT and carries it out.
                                        from.close();
                                        std::thread::sleep(Duration::from_secs(1));
                                        to.close();
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => {
                                    to.close();
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            at_commit,
        }
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn cut_at_next_commit(&self) {
        self.at_commit
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

trait ReadWrite: std::io::Read + std::io::Write + Send {
    fn timeout(&self, d: Duration) -> std::io::Result<()>;
    fn close(&self);
}

impl ReadWrite for std::net::TcpStream {
    fn timeout(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl ReadWrite for std::os::unix::net::UnixStream {
    fn timeout(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

#[test]
fn a_daemon_cut_off_from_the_database_stops_its_jobs_before_another_host_takes_them() {
    let Some(pg) = Cluster::start() else { return };
    let proxy = Proxy::start(pg.socket());
    let (a_env, b_env) = (Env::new(), Env::new());
    a_env.write_config_with_daemon(
        &format!(
            "host = \"vm-a\"\nshutdown_timeout = \"20s\"\n\n[journal]\nbackend = \"postgres\"\nurl = \"{}\"\n",
            proxy.url()
        ),
        &jobs_config(2, "", ""),
    );
    let a = Daemon::start(&a_env);
    let ids: Vec<i64> = (0..2)
        .map(|_| a.submit("q", r#"{"sleep": 600}"#, &[]))
        .collect();
    for id in &ids {
        a.wait_job(*id, "running", TIMEOUT);
    }
    let workers = a.running_pids("w");
    b_env.write_config_with_daemon(&journal_config(&pg, "vm-b"), &jobs_config(2, "", ""));
    let b = Daemon::start(&b_env);
    proxy.cut();
    let t0 = std::time::Instant::now();
    // vm-a stops what it holds on its own...
    wait_for(Duration::from_secs(40), "vm-a's workers killed", || {
        workers.iter().all(|p| !alive(*p)).then_some(())
    });
    let killed = t0.elapsed();
    assert!(
        a.log().contains("cannot renew this host's lease"),
        "{}",
        a.log()
    );
    // ... before vm-b takes the jobs back (its lease runs out 30 s after its last renewal).
    for id in &ids {
        wait_for(Duration::from_secs(60), "the job running on vm-b", || {
            b.try_job(*id)
                .filter(|j| j.state == "running" && j.attempts == 2)
        });
    }
    let rescued = t0.elapsed();
    assert!(
        killed < rescued,
        "vm-a's workers died {killed:?} after the cut, vm-b took the jobs at {rescued:?}"
    );
    // vm-a took nothing meanwhile and still supervises: its workers are back.
    assert_eq!(a.running_pids("w").len(), 2);
    let started_on_b = count(
        &pg,
        "SELECT count(*) FROM steward.attempts WHERE attempt = 2 AND host = 'vm-b'",
    );
    assert_eq!(started_on_b, 2);
    let on_a_after_cut = count(
        &pg,
        "SELECT count(*) FROM steward.attempts WHERE host = 'vm-a' AND attempt > 1",
    );
    assert_eq!(on_a_after_cut, 0, "vm-a took jobs while cut off");
}

#[test]
fn a_daemon_paused_past_its_lease_has_its_late_completions_rejected() {
    let Some(pg) = Cluster::start() else { return };
    let (a_env, b_env) = (Env::new(), Env::new());
    a_env.write_config_with_daemon(&journal_config(&pg, "vm-a"), &jobs_config(1, "", ""));
    let a = Daemon::start(&a_env);
    // Attempt 1's worker keeps running while its daemon is paused and says `done` at
    // 8 s; attempt 2 takes 20 s.
    let id = a.submit("q", r#"{"sleep_first": 8, "sleep": 20}"#, &[]);
    a.wait_job(id, "running", TIMEOUT);
    b_env.write_config_with_daemon(&journal_config(&pg, "vm-b"), &jobs_config(1, "", ""));
    let b = Daemon::start(&b_env);
    a.signal("STOP");
    // vm-b takes the job back once vm-a's lease has run out.
    wait_for(Duration::from_secs(60), "attempt 2 running on vm-b", || {
        b.try_job(id)
            .filter(|j| j.state == "running" && j.attempts == 2)
    });
    a.signal("CONT");
    // vm-a reads its worker's late `done` and writes it: rejected by the token, while
    // attempt 2 runs on.
    wait_for(TIMEOUT, "vm-a to take jobs again", || {
        a.log().contains("taking jobs again").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let j = b.job(id);
    assert_eq!(
        (j.state.as_str(), j.attempts),
        ("running", 2),
        "{:?}",
        j.history
    );
    let j = b.wait_job(id, "succeeded", Duration::from_secs(40));
    let ok = count(
        &pg,
        &format!(
            "SELECT count(*) FROM steward.attempts WHERE job_id = {id} AND outcome = 'succeeded'"
        ),
    );
    assert_eq!(ok, 1, "the job completed twice: {:?}", j.history);
    assert_eq!(j.history[0].outcome.as_deref(), Some("interrupted"));
    assert!(
        j.history[1]
            .worker
            .as_deref()
            .unwrap_or("")
            .contains("vm-b")
    );
}

#[test]
fn jobs_added_elsewhere_wake_idle_workers_and_a_killed_listener_is_replaced() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    let port = free_port();
    env.write_config_with_daemon(
        &journal_config(&pg, "vm-l"),
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
            jobs_config(1, "", "")
        ),
    );
    let d = Daemon::start(&env);
    d.running_pids("w");
    let wakeups = || {
        http_get(port, "/metrics")
            .map(|(_, body)| metric(&body, "steward_journal_wakeups_total"))
            .unwrap_or(0.0)
    };
    let picked_up = |id: i64| -> f64 {
        let j = d.wait_job(id, "succeeded", TIMEOUT);
        sql(
            &pg,
            &format!(
                "SELECT extract(epoch FROM a.started_at - j.created_at)::float8 FROM steward.attempts a
                 JOIN steward.jobs_all j ON j.id = a.job_id WHERE j.id = {} AND a.attempt = 1",
                j.id
            ),
        )[0]
        .get(0)
    };
    let mut waits = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let id: i64 = sql(&pg, "SELECT steward.submit('q', '{}')")[0].get(0);
        waits.push(picked_up(id));
    }
    eprintln!("picked up after {waits:?} s");
    let heard = wakeups();
    assert!(
        heard >= 5.0,
        "{heard} notices heard for 5 jobs added in SQL"
    );
    // The listening connection is killed: it is replaced, and notices flow again.
    let killed = count(
        &pg,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
    );
    assert_eq!(killed, 1);
    wait_for(TIMEOUT, "the listener replaced", || {
        d.log().contains("listening again").then_some(())
    });
    wait_for(TIMEOUT, "a LISTEN connection again", || {
        (count(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
        ) == 1)
            .then_some(())
    });
    let id: i64 = sql(&pg, "SELECT steward.submit('q', '{}')")[0].get(0);
    picked_up(id);
    assert!(
        wakeups() > heard,
        "no notice heard after the listener was replaced"
    );
}

#[test]
fn an_sqlite_journals_unfinished_jobs_move_to_postgres_once() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    let queue = "retry_backoff = { initial = \"1h\", max = \"1h\", jitter = 0.0 }\n";
    env.write_config(&jobs_config(1, queue, ""));
    let mut d = Daemon::start(&env);
    let done = d.submit("q", "{}", &[]);
    d.wait_job(done, "succeeded", TIMEOUT);
    let failed_once = d.submit("q", r#"{"fail": "not yet"}"#, &["--max-attempts", "3"]);
    wait_for(TIMEOUT, "the first attempt failed", || {
        d.try_job(failed_once)
            .filter(|j| j.attempts == 1 && j.state == "queued")
    });
    let later = d.submit(
        "q",
        r#"{"n": "later"}"#,
        &["--delay", "1h", "--priority", "7"],
    );
    let keyed = d.submit("q", "{}", &["--delay", "1h", "--key", "k1"]);
    let running = d.submit("q", r#"{"sleep_first": 600}"#, &[]);
    d.wait_job(running, "running", TIMEOUT);
    // Not while a daemon holds the journal.
    env.write_config_with_daemon(&journal_config(&pg, "vm-m"), &jobs_config(1, queue, ""));
    let out = env.run(&["migrate-journal"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop it first"), "{err}");
    d.signal("KILL");
    d.wait_exit(TIMEOUT);
    // Another host made the shared journal, and a job with the same key is queued there.
    let other = Env::new();
    other.write_config_with_daemon(&journal_config(&pg, "vm-o"), &jobs_config(1, queue, ""));
    drop(Daemon::start(&other));
    sql(
        &pg,
        "SELECT steward.submit('q', '{}', run_at => now() + interval '1 hour', unique_key => 'k1')",
    );
    let out = env.run(&["migrate-journal", "--dry-run"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("4 jobs would move"), "{said}");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM steward.jobs_all"),
        1,
        "a dry run moved jobs"
    );
    let out = env.run(&["migrate-journal"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("3 jobs moved"), "{said}");
    assert!(said.contains(&format!("1 stayed behind because a queued or running job there has the same unique key (ids here: {keyed})")), "{said}");
    assert!(said.contains("1 finished jobs stay in"), "{said}");
    // Again: nothing moves twice.
    let out = env.run(&["migrate-journal"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("0 jobs moved") && said.contains("3 were moved by an earlier run"),
        "{said}"
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM steward.jobs_all"), 4);
    let moved = |old: i64| -> i64 {
        count(
            &pg,
            &format!("SELECT job_id FROM steward.imported WHERE source_id = {old}"),
        )
    };
    // The delayed job keeps its time and priority; the failed one its attempt.
    let row = &sql(
        &pg,
        &format!(
            "SELECT state, priority, (run_at > now() + interval '50 minutes') FROM steward.jobs_all WHERE id = {}",
            moved(later)
        ),
    )[0];
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, bool>(2)
        ),
        ("scheduled".to_string(), 7, true)
    );
    let row = &sql(
        &pg,
        &format!(
            "SELECT j.state, j.attempts, a.outcome, a.error FROM steward.jobs_all j JOIN steward.attempts a ON a.job_id = j.id WHERE j.id = {}",
            moved(failed_once)
        ),
    )[0];
    assert_eq!(row.get::<_, String>(0), "scheduled");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("failed"));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("not yet"));
    // The interrupted job is queued again, its attempt closed as a start would close it,
    // and a daemon on the shared journal runs it to the end.
    let d = Daemon::start(&env);
    let j = d.wait_job(moved(running), "succeeded", TIMEOUT);
    assert_eq!(j.interruptions, 1);
    assert_eq!(j.attempts, 2);
    assert_eq!(j.history[0].outcome.as_deref(), Some("interrupted"));
    assert_eq!(j.payload["sleep_first"], 600);
    // The SQLite journal was not changed.
    let db = rusqlite::Connection::open(env.path("state/journal.db")).unwrap();
    let state = |id: i64| -> String {
        db.query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(state(running), "running");
    assert_eq!(state(later), "queued");
    assert_eq!(state(done), "succeeded");
}

#[test]
fn a_submit_whose_commit_went_unanswered_is_reported_uncertain_not_refused() {
    let Some(pg) = Cluster::start() else { return };
    let proxy = Proxy::start(pg.socket());
    let env = Env::new();
    // No pool takes `q`: the only transactions on the connection are submits.
    env.write_config_with_daemon(
        &format!(
            "host = \"vm-u\"\nshutdown_timeout = \"20s\"\n\n[journal]\nbackend = \"postgres\"\nurl = \"{}\"\n",
            proxy.url()
        ),
        "[queue.q]\n",
    );
    let d = Daemon::start(&env);
    proxy.cut_at_next_commit();
    let out = d.cli(&["submit", "q", r#"{"n": 1}"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("whether its 1 jobs were stored is not known"),
        "{err}"
    );
    // It was stored: refusing it would have had the caller submit it twice.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM steward.job_data WHERE payload = '{\"n\": 1}'"
        ),
        1
    );
    // The daemon connects again and takes submits.
    let id = wait_for(TIMEOUT, "a submit accepted again", || {
        let out = d.cli(&["submit", "q", r#"{"n": 2}"#]);
        out.status
            .success()
            .then(|| {
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<i64>()
                    .ok()
            })
            .flatten()
    });
    assert!(id > 0);
    assert_eq!(count(&pg, "SELECT count(*) FROM steward.jobs_all"), 2);
}
