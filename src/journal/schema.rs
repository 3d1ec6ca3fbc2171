//! The journal's schema, versioned with `PRAGMA user_version`.
//!
//! Hot rows are kept small: `jobs` holds what dispatch needs, the payload and result
//! live in `job_data`, and the attempt history in `attempts`. Partial indexes cover only
//! queued and running jobs, so dispatch cost does not grow with the number of finished
//! jobs kept for inspection.

use rusqlite::Connection;

/// Each entry upgrades the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
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
