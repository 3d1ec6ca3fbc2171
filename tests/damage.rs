//! A damaged journal is never taken silently: each kind of damage made while steward is
//! stopped is refused at start with what to do, `--accept-damaged-journal` keeps the
//! damaged files aside, and damage found while running stops submits, not supervision.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::helper::*;

/// Jobs in the journal before it is damaged (as in the report that asked for this).
const JOBS: usize = 220;

/// A journal of [`JOBS`] queued jobs in 11 transactions, left by a daemon stopped
/// cleanly (`kill = false`) or killed with SIGKILL. No pool takes the jobs.
fn journal_with_jobs(env: &Env, kill: bool) {
    journal_with(env, kill, 600);
}

/// The same with payloads of about `pad` bytes.
fn journal_with(env: &Env, kill: bool, pad: usize) {
    env.write_config("[queue.q]\nmax_payload = \"64KiB\"\n");
    let mut d = Daemon::start(env);
    for batch in 0..11 {
        let jobs: Vec<_> = (0..JOBS / 11)
            .map(|i| json!({"queue": "q", "payload": {"batch": batch, "i": i, "pad": "x".repeat(pad)}}))
            .collect();
        d.api::<serde_json::Value>("POST", "/v1/jobs/batch", Some(json!({ "jobs": jobs })))
            .expect("batch");
    }
    if kill {
        d.signal("KILL");
    } else {
        d.signal("TERM");
    }
    d.wait_exit(TIMEOUT);
    let wal = env.path("state/journal.db-wal");
    if kill {
        assert!(wal.exists(), "a killed daemon leaves its log");
    }
}

/// The bytes of every file in the state directory, by name (to show nothing was touched).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter(|e| e.file_name() != "journal.lock")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Start the daemon on the damaged journal: it must refuse, exit 65, say what it found
/// and what to do, and leave the files as they were.
fn refused(env: &Env, what: &str) -> String {
    let state = env.path("state");
    let before = files(&state);
    let mut d = Daemon::spawn(env, &[], &["--log-format", "text"]);
    let status = d.wait_exit(TIMEOUT);
    let log = d.log();
    assert_eq!(status.code(), Some(65), "{log}");
    assert!(log.contains("is damaged"), "{log}");
    assert!(log.contains(what), "expected {what:?} in: {log}");
    assert!(
        log.contains("steward restore") && log.contains("--accept-damaged-journal"),
        "{log}"
    );
    // The data is as it was (the index journal.db-shm is derived from the log, and SQLite
    // may rebuild it when it reads a log it was not told about).
    let data = |f: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        f.iter()
            .filter(|(n, b)| n != "journal.db-shm" && !(n == "journal.db-wal" && b.is_empty()))
            .cloned()
            .collect()
    };
    assert!(
        data(&files(&state)) == data(&before),
        "the damaged files were changed"
    );
    log
}

/// Start with `--accept-damaged-journal`: it runs, and the damaged files are kept in a
/// `damaged-*` directory exactly as they were. Returns the daemon and that directory.
fn accepted(env: &Env) -> (Daemon, PathBuf) {
    let state = env.path("state");
    let before = files(&state);
    let d = Daemon::spawn(
        env,
        &[],
        &["--log-format", "text", "--accept-damaged-journal"],
    );
    d.wait_running();
    d.wait_log("was damaged");
    let aside: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("damaged-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        files(&aside[0]) == before,
        "the damaged files were not kept as they were"
    );
    (d, aside[0].clone())
}

fn queued(d: &Daemon) -> u64 {
    let s = d.status();
    s.queues.iter().map(|q| q.queued).sum()
}

fn flip(path: &Path, at: usize, n: usize) {
    let mut b = std::fs::read(path).unwrap();
    for x in &mut b[at..at + n] {
        *x ^= 0xa5;
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn an_emptied_database_file_is_refused() {
    let env = Env::new();
    journal_with_jobs(&env, false);
    std::fs::write(env.path("state/journal.db"), b"").unwrap();
    refused(&env, "journal.db is empty, but the journal held 220 jobs");
    let (d, _) = accepted(&env);
    assert_eq!(queued(&d), 0);
    // Once accepted, the new journal takes jobs again.
    d.submit("q", "{}", &[]);
}

#[test]
fn a_log_deleted_after_a_kill_is_refused() {
    let env = Env::new();
    journal_with_jobs(&env, true);
    std::fs::remove_file(env.path("state/journal.db-wal")).unwrap();
    refused(&env, "journal.db-wal is missing");
}

#[test]
fn a_log_with_a_garbage_header_is_refused() {
    let env = Env::new();
    journal_with_jobs(&env, true);
    let wal = env.path("state/journal.db-wal");
    let mut b = std::fs::read(&wal).unwrap();
    b[..32].copy_from_slice(b"this is not a write-ahead log :)");
    std::fs::write(&wal, b).unwrap();
    refused(&env, "header of the write-ahead log");
}

#[test]
fn a_log_cut_in_half_is_refused() {
    let env = Env::new();
    journal_with_jobs(&env, true);
    let wal = env.path("state/journal.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refused(&env, "frames were committed");
}

#[test]
fn a_log_with_flipped_bytes_is_refused_then_accepted_with_what_can_be_read() {
    let env = Env::new();
    journal_with_jobs(&env, true);
    let wal = env.path("state/journal.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len() as usize;
    flip(&wal, len / 2, 64);
    refused(&env, "of the write-ahead log journal.db-wal is damaged");
    let (d, _) = accepted(&env);
    // What SQLite can read: the commits before the damage.
    let left = queued(&d);
    assert!(left < JOBS as u64, "{left}");
    d.submit("q", "{}", &[]);
}

#[test]
fn a_corrupted_page_is_refused_then_accepted_with_the_rest_of_the_jobs() {
    let env = Env::new();
    journal_with_jobs(&env, false);
    let db = env.path("state/journal.db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    let pages = len / 4096;
    assert!(pages > 8, "{pages} pages");
    // One page in the middle, overwritten.
    let mut b = std::fs::read(&db).unwrap();
    let page = pages / 2;
    b[page * 4096..(page + 1) * 4096].fill(0xff);
    std::fs::write(&db, b).unwrap();
    refused(&env, "integrity check");
    let (d, _) = accepted(&env);
    let log = d.log();
    let read: u64 = log
        .split(" jobs were read from it")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of jobs read: {log}"));
    // Most jobs survive the loss of one page; those whose payload was on it failed, with
    // the reason; and the journal is whole again.
    let s = d.status();
    let (left, failed): (u64, u64) = s
        .queues
        .iter()
        .fold((0, 0), |(q, f), s| (q + s.queued, f + s.failed));
    assert!(
        read > JOBS as u64 / 2 && read <= JOBS as u64,
        "{read}: {log}"
    );
    assert_eq!(left + failed, read, "{log}");
    if failed > 0 {
        let out = d.cli(&["jobs", "--state", "failed", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("payload was lost"), "{text}");
    }
    let health = d
        .api::<serde_json::Value>("GET", "/v1/status", None)
        .unwrap();
    assert!(health["journal"]["error"].is_null(), "{health}");
    d.submit("q", "{}", &[]);
}

#[test]
fn a_damaged_page_under_a_live_log_is_refused_and_the_log_left_alone() {
    let env = Env::new();
    // 4 MiB of payloads: the log was checkpointed into journal.db on the way.
    journal_with(&env, true, 20_000);
    let db = env.path("state/journal.db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    assert!(len >= 256 * 4096, "{len}");
    let mut b = std::fs::read(&db).unwrap();
    let page = len / 4096 / 2;
    b[page * 4096..(page + 1) * 4096].fill(0xff);
    std::fs::write(&db, b).unwrap();
    // `refused` checks that journal.db and its log are byte for byte as they were.
    refused(&env, "integrity check");
}

#[test]
fn a_journal_closed_cleanly_or_killed_starts_without_complaint() {
    let env = Env::new();
    journal_with_jobs(&env, true);
    let d = Daemon::start(&env);
    assert_eq!(queued(&d), JOBS as u64);
    assert!(!d.log().contains("damaged"), "{}", d.log());
    drop(d);
    // After that SIGKILL (from the drop) and a clean stop, the same.
    let mut d = Daemon::start(&env);
    assert_eq!(queued(&d), JOBS as u64);
    d.signal("TERM");
    d.wait_exit(TIMEOUT);
    let d = Daemon::start(&env);
    assert_eq!(queued(&d), JOBS as u64);
    assert!(!d.log().contains("damaged"), "{}", d.log());
}

#[test]
fn restore_puts_a_backup_in_place_and_keeps_what_it_replaced() {
    let env = Env::new();
    env.write_config("[queue.q]\n");
    let mut d = Daemon::start(&env);
    for _ in 0..3 {
        d.submit("q", "{}", &[]);
    }
    let copy = env.path("copy.db");
    assert!(
        env.run(&["backup", copy.to_str().unwrap()])
            .status
            .success()
    );
    d.submit("q", "{}", &[]);
    // Not while the daemon runs.
    let out = env.run(&["restore", copy.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop it first"), "{err}");
    d.signal("TERM");
    d.wait_exit(TIMEOUT);
    // Damage the journal; restore the backup; start.
    std::fs::write(env.path("state/journal.db"), b"").unwrap();
    let out = env.run(&["restore", copy.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("3 jobs") && text.contains("replaced-"),
        "{text}"
    );
    let d = Daemon::start(&env);
    assert_eq!(queued(&d), 3);
    assert!(!d.log().contains("damaged"), "{}", d.log());
    // A file that is not a journal is not restored.
    std::fs::write(env.path("junk.db"), b"junk").unwrap();
    drop(d);
    let out = env.run(&["restore", env.path("junk.db").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be restored"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn damage_found_while_running_stops_submits_and_not_supervision() {
    let env = Env::new();
    let port = free_port();
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[queue.q]\nmax_payload = \"64KiB\"\n\n[pool.keep]\ncommand = [\"sleep\", \"600\"]\n"
    ));
    let d = Daemon::start(&env);
    // Payloads spread over many pages, written through to the database file.
    let pad = "y".repeat(20_000);
    let ids: Vec<i64> = (0..10)
        .flat_map(|b| {
            let jobs: Vec<_> = (0..30)
                .map(|i| json!({"queue": "q", "payload": {"b": b, "i": i, "pad": pad}}))
                .collect();
            let r: serde_json::Value = d
                .api("POST", "/v1/jobs/batch", Some(json!({ "jobs": jobs })))
                .expect("batch");
            r["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let worker = d.running_pids("keep");
    let db = env.path("state/journal.db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    // Garbage over the middle half of the file, under the running daemon.
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::options().write(true).open(&db).unwrap();
        f.seek(std::io::SeekFrom::Start((len / 4) as u64)).unwrap();
        f.write_all(&vec![0xff; len / 2]).unwrap();
    }
    // Reading payloads finds the damage.
    let found = ids.iter().any(|id| {
        d.api::<serde_json::Value>("GET", &format!("/v1/jobs/{id}?payload=true"), None)
            .is_err_and(|e| e.contains("damaged"))
    });
    assert!(found, "no read found the damage");
    let (code, body) = http_get(port, "/health").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("damaged"), "{body}");
    let out = d.cli(&["submit", "q", "{}"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("damaged") && err.contains("accepts no new jobs"),
        "{err}"
    );
    // Supervision goes on: the pool's worker is the same, and the daemon answers.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(d.running_pids("keep"), worker);
    assert!(d.status().status_line.contains("JOURNAL DAMAGED"));
}
