//! The journal's schema, versioned with `PRAGMA user_version`.
//!
//! Hot rows are kept small: `jobs` holds what dispatch needs, the payload and result
//! live in `job_data`, and the attempt history in `attempts`. Partial indexes cover only
//! queued and running jobs, so dispatch cost does not grow with the number of finished
//! jobs kept for inspection.

use rusqlite::Connection;

/// Each entry upgrades the schema from version `index` to `index + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    r#"
    CREATE TABLE jobs (
        id              INTEGER PRIMARY KEY,
        queue           TEXT    NOT NULL,
        state           TEXT    NOT NULL,
        priority        INTEGER NOT NULL DEFAULT 0,
        run_at          INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        finished_at     INTEGER,
        attempts        INTEGER NOT NULL DEFAULT 0,
        tries           INTEGER NOT NULL DEFAULT 0,
        crashes         INTEGER NOT NULL DEFAULT 0,
        interruptions   INTEGER NOT NULL DEFAULT 0,
        max_attempts    INTEGER NOT NULL,
        timeout_ms      INTEGER,
        unique_key      TEXT,
        lease_token     INTEGER NOT NULL DEFAULT 0,
        worker          TEXT,
        run_id          TEXT,
        error           TEXT,
        progress        REAL,
        progress_message TEXT
    );
    CREATE INDEX jobs_dispatch ON jobs(queue, priority DESC, run_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_due ON jobs(queue, run_at) WHERE state = 'queued';
    CREATE INDEX jobs_running ON jobs(queue) WHERE state = 'running';
    CREATE UNIQUE INDEX jobs_unique ON jobs(queue, unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
    CREATE INDEX jobs_finished ON jobs(queue, state, finished_at)
        WHERE state IN ('succeeded', 'failed', 'cancelled');
    CREATE INDEX jobs_state ON jobs(state, id);
    CREATE TABLE job_data (
        job_id  INTEGER PRIMARY KEY,
        payload TEXT NOT NULL,
        result  TEXT
    );
    CREATE TABLE attempts (
        job_id     INTEGER NOT NULL,
        attempt    INTEGER NOT NULL,
        worker     TEXT,
        pid        INTEGER,
        started_at INTEGER,
        ended_at   INTEGER,
        outcome    TEXT,
        error      TEXT,
                PRIMARY KEY (job_id, attempt)
    ) WITHOUT ROWID;
    "#,
    // 2: the last output of exec-pool job processes, kept with each attempt
    r#"
    ALTER TABLE attempts ADD COLUMN stdout_tail TEXT;
    ALTER TABLE attempts ADD COLUMN stderr_tail TEXT;
    "#,
    // 3: unique keys in a table of their own. A partial index with `IS NOT NULL` on
    // `jobs` made SQLite re-prepare every statement that compares a jobs column with a
    // parameter whenever the parameter changed, which was most of the writer's work.
    r#"
    CREATE TABLE job_keys (
        queue  TEXT    NOT NULL,
        key    TEXT    NOT NULL,
        job_id INTEGER NOT NULL,
        PRIMARY KEY (queue, key)
    ) WITHOUT ROWID;
    INSERT INTO job_keys (queue, key, job_id)
        SELECT queue, unique_key, id FROM jobs
        WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
        DROP INDEX IF EXISTS jobs_unique;
    DROP INDEX IF EXISTS jobs_running;
    "#,
    // 4: the index of finished jobs keyed on `finished_at IS NOT NULL` (set exactly when a
    // job reaches a final state). With `state IN (...)` SQLite built a temporary table on
    // every change of a job's state to evaluate the index condition, which doubled the
    // cost of claiming and finishing a job. Queries comparing `finished_at` still use it.
    r#"
    DROP INDEX IF EXISTS jobs_finished;
    CREATE INDEX jobs_finished ON jobs(queue, state, finished_at) WHERE finished_at IS NOT NULL;
    "#,
    // 5: fewer indexes to write for each job. `jobs_state` (state, id) changed three times
    // in each job's life, five b-tree operations, for the sake of listings, and `jobs_due`
    // (queue, run_at) twice, for the next delayed job. Each state now has one partial
    // index: queued jobs jobs_dispatch (see `earliest_run_at` for run times), running
    // jobs (found again at start) jobs_running, and failed and cancelled jobs, the ones
    // searched for among many, one each that is written only when a job ends that way.
    r#"
    DROP INDEX IF EXISTS jobs_state;
    DROP INDEX IF EXISTS jobs_due;
    CREATE INDEX jobs_running ON jobs(id) WHERE state = 'running';
    CREATE INDEX jobs_failed ON jobs(id) WHERE state = 'failed';
    CREATE INDEX jobs_cancelled ON jobs(id) WHERE state = 'cancelled';
    "#,
    // 6: queued jobs that are not due yet wait apart. `delayed = 1` keeps them out of
    // jobs_dispatch, so a claim never walks past future jobs (100,000 jobs delayed at a
    // higher priority made every claim read them all), and in jobs_delayed, by run time,
    // until a claim finds them due and clears the flag.
    r#"
    ALTER TABLE jobs ADD COLUMN delayed INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET delayed = 1
        WHERE state = 'queued' AND run_at > CAST(strftime('%s', 'now') AS INTEGER) * 1000;
    DROP INDEX IF EXISTS jobs_dispatch;
    CREATE INDEX jobs_dispatch ON jobs(queue, priority DESC, run_at, id)
        WHERE state = 'queued' AND delayed = 0;
    CREATE INDEX jobs_delayed ON jobs(queue, run_at) WHERE state = 'queued' AND delayed = 1;
    "#,
    // Leases name their owner: the daemon run (`jobs.run_id`, there since the start) on
    // a host, and when they were taken. Each run has a row with its own lease, renewed
    // while it lives; jobs are reclaimed because their owner is gone, not because they
    // are `running` when a daemon starts.
    r#"
    CREATE TABLE runs (
        run_id           TEXT    PRIMARY KEY,
        host             TEXT    NOT NULL,
        boot_id          TEXT,
        pid              INTEGER,
        started_at       INTEGER NOT NULL,
        lease_expires_at INTEGER NOT NULL,
        stopped_at       INTEGER
    );
    ALTER TABLE jobs ADD COLUMN lease_host TEXT;
    ALTER TABLE jobs ADD COLUMN claimed_at INTEGER;
    "#,
];

pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the schema up to date. A journal written by a newer steward is refused rather
/// than misread.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("cannot read the journal's schema version: {e}"))?;
    if version > VERSION {
        return Err(format!(
            "the journal has schema version {version}, newer than this steward understands ({VERSION}); install the newer steward again, or restore a backup"
        ));
    }
    if version == 0 {
        // Must be set before the first table exists to take effect.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(|e| format!("cannot set auto_vacuum: {e}"))?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| format!("cannot start migration {}: {e}", i + 1))?;
        tx.execute_batch(sql)
            .map_err(|e| format!("journal migration {} failed: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(|e| format!("cannot record schema version {}: {e}", i + 1))?;
        tx.commit()
            .map_err(|e| format!("cannot commit migration {}: {e}", i + 1))?;
    }
    Ok(())
}

/// The steps of SQLite's plan for `sql`, for tests that check which index a query uses.
#[cfg(test)]
pub(super) fn query_plan(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = stmt.query_map(params, |r| r.get::<_, String>(3)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        query_plan(conn, sql, []).join("; ")
    }

    #[test]
    fn listings_find_their_jobs_without_an_index_on_every_state() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for gone in ["jobs_state", "jobs_due"] {
            assert!(!indexes.iter().any(|n| n == gone), "{indexes:?}");
        }
        for (sql, index) in [
            // status: the latest failures, and the job due longest in each queue
            (
                "SELECT id FROM jobs WHERE state = 'failed' ORDER BY id DESC LIMIT 5",
                "jobs_failed",
            ),
            // the earliest run time within one priority is one seek
            (
                "SELECT min(run_at) FROM jobs INDEXED BY jobs_dispatch
                 WHERE state = 'queued' AND delayed = 0 AND queue = 'q' AND priority = 0 AND run_at > 1 AND run_at <= 5",
                "jobs_dispatch (queue=? AND priority=? AND run_at>? AND run_at<?)",
            ),
            // steward jobs --state cancelled --queue q
            (
                "SELECT j.id FROM jobs j WHERE j.queue = 'q' AND j.state = 'cancelled' ORDER BY j.id DESC LIMIT 50",
                "jobs_cancelled",
            ),
        ] {
            let p = plan(&conn, sql);
            assert!(p.contains(index), "{sql}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
    }

    #[test]
    fn upgrades_a_version_3_journal_and_keeps_its_jobs_findable() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO jobs (queue, state, run_at, created_at, updated_at, finished_at, max_attempts)
             VALUES ('q', 'succeeded', 1, 1, 5, 5, 3), ('q', 'queued', 1, 1, 1, NULL, 3);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        let index_sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'jobs_finished'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(index_sql.contains("finished_at IS NOT NULL"), "{index_sql}");
        // Retention and the last-hour counts still ride the index.
        for sql in [
            "SELECT id FROM jobs WHERE queue = 'q' AND state = 'succeeded' AND finished_at < 10",
            "SELECT id FROM jobs WHERE queue = 'q' AND state IN ('failed', 'cancelled') AND finished_at < 10",
            "SELECT count(*) FROM jobs WHERE queue = 'q' AND state = 'succeeded' AND finished_at >= 0",
        ] {
            assert!(
                plan(&conn, sql).contains("jobs_finished"),
                "{sql}: {}",
                plan(&conn, sql)
            );
        }
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE queue = 'q' AND state = 'succeeded' AND finished_at >= 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}
