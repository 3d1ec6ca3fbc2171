//! Starting on a damaged journal (`--accept-damaged-journal`) and putting a backup in
//! place (`steward restore`): the files found are moved aside, never overwritten, and
//! what can still be read is copied into a new journal.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::schema;

/// The journal's files, as they are moved aside together.
pub(super) const FILES: [&str; 4] = [
    "journal.db",
    "journal.db-wal",
    "journal.db-shm",
    super::damage::STATE_FILE,
];

/// Move the journal's files in `dir` into a new `<dir>/<prefix>-<UTC time>/` and return
/// that directory.
pub(super) fn set_aside(dir: &Path, prefix: &str) -> Result<PathBuf, String> {
    let stamp: String = crate::time::rfc3339_secs(std::time::SystemTime::now())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut aside = dir.join(format!("{prefix}-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = dir.join(format!("{prefix}-{stamp}-{n}"));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&aside)
        .map_err(|e| format!("cannot create {}: {e}", aside.display()))?;
    for name in FILES {
        let from = dir.join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name)).map_err(|e| {
                format!("cannot move {} to {}: {e}", from.display(), aside.display())
            })?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    Ok(aside)
}

/// What a salvage copied.
#[derive(Debug, Default)]
pub(super) struct Salvaged {
    pub jobs: u64,
    /// Id ranges of jobs that could not be read.
    pub unreadable: Vec<(i64, i64)>,
    /// Queued or running jobs whose payload could not be read, now failed.
    pub payload_lost: u64,
    /// Why nothing at all could be read, if so.
    pub nothing: Option<String>,
}

impl Salvaged {
    pub fn describe(&self) -> String {
        if let Some(why) = &self.nothing {
            return format!("no job could be read from it ({why})");
        }
        let mut s = format!("{} jobs were read from it", self.jobs);
        if self.payload_lost > 0 {
            s.push_str(&format!(
                "; {} queued or running jobs lost their payload and are now failed",
                self.payload_lost
            ));
        }
        if !self.unreadable.is_empty() {
            let ranges: Vec<String> = self
                .unreadable
                .iter()
                .take(10)
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}–{b}")
                    }
                })
                .collect();
            s.push_str(&format!(
                "; jobs with ids {}{} could not be read",
                ranges.join(", "),
                if self.unreadable.len() > 10 {
                    ", …"
                } else {
                    ""
                }
            ));
        }
        s
    }
}

/// Copy what can be read of the journal in `aside` into a new journal at `dest` (which
/// must not exist). The files in `aside` are left as they are: SQLite reads a copy.
pub(super) fn salvage(aside: &Path, dest: &Path) -> Result<Salvaged, String> {
    let scratch = aside.join("salvage");
    std::fs::create_dir(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let result = salvage_from_copy(aside, &scratch, dest);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn salvage_from_copy(aside: &Path, scratch: &Path, dest: &Path) -> Result<Salvaged, String> {
    for name in ["journal.db", "journal.db-wal"] {
        let from = aside.join(name);
        if from.exists() {
            std::fs::copy(&from, scratch.join(name))
                .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
        }
    }
    let mut out = Connection::open(dest)
        .map_err(|e| format!("cannot create the new journal {}: {e}", dest.display()))?;
    out.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .map_err(|e| format!("cannot configure {}: {e}", dest.display()))?;
    schema::migrate(&mut out)?;
    let src = scratch.join("journal.db");
    if !src.exists() {
        return Ok(Salvaged {
            nothing: Some("journal.db is missing".into()),
            ..Salvaged::default()
        });
    }
    let mut old = match Connection::open(&src) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Salvaged {
                nothing: Some(e.to_string()),
                ..Salvaged::default()
            });
        }
    };
    // A journal of an earlier version is brought to this one first (on the copy).
    let version: Result<i64, _> = old.query_row("PRAGMA user_version", [], |r| r.get(0));
    match version {
        Err(e) => {
            return Ok(Salvaged {
                nothing: Some(e.to_string()),
                ..Salvaged::default()
            });
        }
        Ok(0) => {
            return Ok(Salvaged {
                nothing: Some("it holds no journal tables".into()),
                ..Salvaged::default()
            });
        }
        Ok(v) if v < schema::VERSION => {
            if let Err(e) = schema::migrate(&mut old) {
                return Ok(Salvaged {
                    nothing: Some(e),
                    ..Salvaged::default()
                });
            }
        }
        Ok(_) => schema::migrate(&mut old)?,
    }
    drop(old);
    out.execute("ATTACH DATABASE ?1 AS old", [src.to_string_lossy()])
        .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let mut salvaged = Salvaged::default();
    for (table, key) in [
        ("jobs", "id"),
        ("job_data", "job_id"),
        ("attempts", "job_id"),
    ] {
        let lost = copy_table(&out, table, key);
        if table == "jobs" {
            salvaged.unreadable = lost;
        }
    }
    // A job whose payload was lost cannot run: it fails, with the reason.
    salvaged.payload_lost = out
        .execute(
            "UPDATE jobs SET state = 'failed', delayed = 0, finished_at = ?1, updated_at = ?1,
                 error = 'its payload was lost with a damaged part of the job journal'
             WHERE state IN ('queued', 'running')
               AND NOT EXISTS (SELECT 1 FROM job_data d WHERE d.job_id = jobs.id)",
            [crate::time::now_ms()],
        )
        .map_err(|e| format!("cannot finish the new journal {}: {e}", dest.display()))?
        as u64;
    // Every job has its data row (listings join it): a lost payload reads as null.
    out.execute_batch(
        "INSERT INTO job_data (job_id, payload)
             SELECT id, 'null' FROM jobs
             WHERE NOT EXISTS (SELECT 1 FROM job_data d WHERE d.job_id = jobs.id);
         INSERT OR IGNORE INTO job_keys (queue, key, job_id)
             SELECT queue, unique_key, id FROM jobs
             WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
         DETACH DATABASE old;
         PRAGMA synchronous = FULL;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .map_err(|e| format!("cannot finish the new journal {}: {e}", dest.display()))?;
    salvaged.jobs = out
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get::<_, i64>(0))
        .map_err(|e| format!("cannot count jobs in {}: {e}", dest.display()))?
        .max(0) as u64;
    Ok(salvaged)
}

/// Reads that may fail before the rest of a table is given up as unreadable (a damaged
/// interior page makes every range below it fail, down to single ids).
const MAX_FAILED_READS: u32 = 100_000;

/// Copy the rows of `old.<table>` into `main.<table>` by ranges of `key`; a range that
/// cannot be read is split until the unreadable part is found. Returns those parts.
fn copy_table(conn: &Connection, table: &str, key: &str) -> Vec<(i64, i64)> {
    let sql = format!(
        "INSERT OR IGNORE INTO main.{table} SELECT * FROM old.{table} WHERE {key} BETWEEN ?1 AND ?2"
    );
    let bounds: Option<(i64, i64)> = conn
        .query_row(
            &format!("SELECT min({key}), max({key}) FROM old.{table}"),
            [],
            |r| Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?)),
        )
        // Unknown when even that cannot be read: every id a job can have.
        .unwrap_or(Some((1, i64::MAX)));
    let Some(range) = bounds else {
        return Vec::new();
    };
    let mut unreadable: Vec<(i64, i64)> = Vec::new();
    let mut todo = vec![range];
    let mut failures = 0;
    while let Some((lo, hi)) = todo.pop() {
        if conn.execute(&sql, [lo, hi]).is_ok() {
            continue;
        }
        failures += 1;
        if lo == hi || failures > MAX_FAILED_READS {
            match unreadable.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(lo) => last.1 = hi,
                _ => unreadable.push((lo, hi)),
            }
            continue;
        }
        let mid = ((i128::from(lo) + i128::from(hi)) / 2) as i64;
        // Upper half first on the stack, so ranges are found in ascending order.
        todo.push((mid + 1, hi));
        todo.push((lo, mid));
    }
    unreadable
}
