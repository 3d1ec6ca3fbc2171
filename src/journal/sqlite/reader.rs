//! Reads for the CLI and API, on a read-only connection of their own (WAL lets them run
//! beside the writer without waiting for it).

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params_from_iter};

use super::{JobFilter, JournalError, Overview, Page, Reply, Stats};
use crate::jobs::JobState;
use crate::journal::{LIST_TEXT, PAGE_BYTES};
use crate::model::{AttemptRecord, JobRecord};

enum Req {
    Overview(Vec<String>, i64, Reply<Overview>),
    List(JobFilter, Reply<Page>),
    Get(i64, Reply<JobRecord>),
}

#[derive(Clone)]
pub struct Reader {
    tx: mpsc::Sender<Req>,
}

const COLUMNS: &str = "j.id, j.queue, j.state, j.priority, d.payload, d.result, j.error, j.attempts, j.tries, j.max_attempts,
     j.crashes, j.interruptions, j.unique_key, j.created_at, j.run_at, j.finished_at, j.worker, j.progress, j.progress_message";

fn job_from_row(r: &Row) -> rusqlite::Result<JobRecord> {
    let state: String = r.get(2)?;
    let state = JobState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unknown job state {state:?}").into(),
        )
    })?;
    Ok(JobRecord {
        id: r.get(0)?,
        queue: r.get(1)?,
        state,
        priority: r.get(3)?,
        payload: r.get(4)?,
        result: r.get(5)?,
        result_cut: false,
        error: r.get(6)?,
        attempts: r.get(7)?,
        tries: r.get(8)?,
        max_attempts: r.get(9)?,
        crashes: r.get(10)?,
        interruptions: r.get(11)?,
        key: r.get(12)?,
        created_ms: r.get(13)?,
        run_at_ms: r.get(14)?,
        finished_ms: r.get(15)?,
        worker: r.get(16)?,
        progress: r.get(17)?,
        progress_message: r.get(18)?,
        history: Vec::new(),
    })
}

/// A failed read: damage is recorded (it turns `/health` unhealthy and stops submits);
/// anything else is a read error, said as such.
fn read_err(e: rusqlite::Error, path: &Path, stats: &Mutex<Stats>) -> JournalError {
    let err = match super::writer::map_err(e, path) {
        JournalError::Io { path, detail } => JournalError::Read { path, detail },
        other => other,
    };
    Stats::damage(stats, &err);
    err
}

impl Reader {
    pub fn start(path: &Path, stats: Arc<Mutex<Stats>>) -> Result<Reader, String> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            format!(
                "cannot open the job journal {} for reading: {e}",
                path.display()
            )
        })?;
        let _ = conn.execute_batch("PRAGMA busy_timeout = 5000;");
        let path = path.to_path_buf();
        let map_reader_err = move |e, path: &Path| read_err(e, path, &stats);
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name("steward-reader".into())
            .spawn(move || {
                while let Ok(req) = rx.recv() {
                    match req {
                        Req::Overview(queues, now, reply) => {
                            reply(
                                overview(&conn, &queues, now).map_err(|e| map_reader_err(e, &path)),
                            );
                        }
                        Req::List(f, reply) => {
                            reply(list(&conn, &f).map_err(|e| map_reader_err(e, &path)));
                        }
                        Req::Get(id, reply) => {
                            reply(match get(&conn, id) {
                                Ok(Some(j)) => Ok(j),
                                Ok(None) => Err(JournalError::NotFound(id)),
                                Err(e) => Err(map_reader_err(e, &path)),
                            });
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the journal reader: {e}"))?;
        Ok(Reader { tx })
    }

    fn ask(&self, req: Req) {
        if let Err(mpsc::SendError(req)) = self.tx.send(req) {
            let reply = match req {
                Req::Overview(_, _, reply) => return reply(Err(JournalError::Closed)),
                Req::List(_, reply) => return reply(Err(JournalError::Closed)),
                Req::Get(_, reply) => reply,
            };
            reply(Err(JournalError::Closed));
        }
    }

    pub fn overview(&self, queues: Vec<String>, now_ms: i64, reply: Reply<Overview>) {
        self.ask(Req::Overview(queues, now_ms, reply));
    }

    pub fn list(&self, filter: JobFilter, reply: Reply<Page>) {
        self.ask(Req::List(filter, reply));
    }

    pub fn get(&self, id: i64, reply: Reply<JobRecord>) {
        self.ask(Req::Get(id, reply));
    }
}

/// Each query rides an index: `jobs_finished` for the last hour, `jobs_dispatch` for the
/// job waiting longest, `jobs_failed` for the latest failures.
fn overview(conn: &Connection, queues: &[String], now: i64) -> rusqlite::Result<Overview> {
    let mut o = Overview::default();
    let hour_ago = now - 3_600_000;
    for q in queues {
        let mut counts = (0u64, 0u64);
        for (state, slot) in [("succeeded", &mut counts.0), ("failed", &mut counts.1)] {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM jobs WHERE queue = ?1 AND state = ?2 AND finished_at >= ?3")?
                .query_row(rusqlite::params![q, state, hour_ago], |r| r.get(0))?;
            *slot = n.max(0) as u64;
        }
        o.last_hour.insert(q.clone(), counts);
        // Waiting counts from when a job became due: a job delayed until tomorrow is not
        // waiting today.
        if let Some(t) = super::due_longest(conn, q, now)? {
            o.oldest_queued.insert(q.clone(), t);
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, queue, error, finished_at FROM jobs WHERE state = 'failed' ORDER BY id DESC LIMIT 5",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    o.recent_failures = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(o)
}

fn list(conn: &Connection, f: &JobFilter) -> rusqlite::Result<Page> {
    let (sql, args) = list_sql(f);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args.iter()))?;
    let (mut jobs, mut bytes) = (Vec::new(), 0usize);
    while let Some(r) = rows.next()? {
        let texts: [Option<String>; 3] = [r.get(4)?, r.get(5)?, r.get(6)?];
        let size: usize = texts.iter().flatten().map(String::len).sum::<usize>() + 256;
        if jobs.len() >= f.limit.max(1) || (!jobs.is_empty() && bytes + size > PAGE_BYTES) {
            let next = jobs.last().map(|j: &JobRecord| j.id);
            return Ok((jobs, next));
        }
        bytes += size;
        let mut job = job_from_row(r)?;
        let [_, result, error] = texts;
        if result.as_ref().is_some_and(|t| t.len() > LIST_TEXT) {
            job.result = result.map(|t| crate::journal::shorten(t, job.id));
            job.result_cut = true;
        }
        job.error = error.map(|t| {
            if t.len() > LIST_TEXT {
                crate::journal::shorten(t, job.id)
            } else {
                t
            }
        });
        jobs.push(job);
    }
    Ok((jobs, None))
}

/// The listing's query, newest first. Every state filter rides a partial index, so its
/// cost follows the jobs in that state, not the whole journal.
fn list_sql(f: &JobFilter) -> (String, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let mut cond = String::new();
    if !f.queues.is_empty() {
        let mut marks = Vec::new();
        for q in &f.queues {
            args.push(q.clone());
            marks.push(format!("?{}", args.len()));
        }
        cond.push_str(&format!(" AND j.queue IN ({})", marks.join(", ")));
    }
    if let Some(t) = f.since_ms {
        args.push(t.to_string());
        cond.push_str(&format!(
            " AND j.created_at >= CAST(?{} AS INTEGER)",
            args.len()
        ));
    }
    if let Some(t) = f.until_ms {
        args.push(t.to_string());
        cond.push_str(&format!(
            " AND j.created_at < CAST(?{} AS INTEGER)",
            args.len()
        ));
    }
    if let Some(b) = f.before {
        args.push(b.to_string());
        cond.push_str(&format!(" AND j.id < CAST(?{} AS INTEGER)", args.len()));
    }
    let queue = cond.as_str();
    // One more than asked for, to know whether another page follows.
    let limit = f.limit.max(1) + 1;
    let columns = if f.payloads {
        COLUMNS.to_string()
    } else {
        COLUMNS.replace("d.payload", "NULL")
    };
    let sql = match f.state {
        // Queued jobs are indexed for dispatch (due ones) and by run time (delayed ones),
        // not by id: SQLite would rather walk the whole table in id order than sort them,
        // so it is told to read both indexes.
        Some(JobState::Queued) => format!(
            "SELECT * FROM (
                 SELECT {columns} FROM jobs j INDEXED BY jobs_dispatch JOIN job_data d ON d.job_id = j.id
                 WHERE j.state = 'queued' AND j.delayed = 0{queue}
                 UNION ALL
                 SELECT {columns} FROM jobs j INDEXED BY jobs_delayed JOIN job_data d ON d.job_id = j.id
                 WHERE j.state = 'queued' AND j.delayed = 1{queue})
             ORDER BY 1 DESC LIMIT {limit}"
        ),
        // A literal, not a parameter: only then can SQLite use the partial indexes. The
        // states are a fixed set of plain words.
        Some(s) => format!(
            "SELECT {columns} FROM jobs j JOIN job_data d ON d.job_id = j.id
             WHERE j.state = '{}'{queue} ORDER BY j.id DESC LIMIT {limit}",
            s.as_str()
        ),
        None if !queue.is_empty() => format!(
            "SELECT {columns} FROM jobs j JOIN job_data d ON d.job_id = j.id
             WHERE 1{queue} ORDER BY j.id DESC LIMIT {limit}"
        ),
        None => format!(
            "SELECT {columns} FROM jobs j JOIN job_data d ON d.job_id = j.id
             ORDER BY j.id DESC LIMIT {limit}"
        ),
    };
    (sql, args)
}

fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<JobRecord>> {
    let sql =
        format!("SELECT {COLUMNS} FROM jobs j JOIN job_data d ON d.job_id = j.id WHERE j.id = ?1");
    let Some(mut job) = conn
        .prepare_cached(&sql)?
        .query_row([id], job_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    job.history = attempts(conn, id)?;
    Ok(Some(job))
}

/// Job `id`'s attempts, in order.
pub(super) fn attempts(conn: &Connection, id: i64) -> rusqlite::Result<Vec<AttemptRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, worker, pid, started_at, ended_at, outcome, error, stdout_tail, stderr_tail
         FROM attempts WHERE job_id = ?1 ORDER BY attempt",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(AttemptRecord {
            attempt: r.get(0)?,
            worker: r.get(1)?,
            pid: r.get(2)?,
            started_ms: r.get(3)?,
            ended_ms: r.get(4)?,
            outcome: r.get(5)?,
            error: r.get(6)?,
            stdout: r.get(7)?,
            stderr: r.get(8)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_is_listed_from_its_own_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        for (state, index) in [
            (JobState::Queued, "jobs_dispatch"),
            (JobState::Queued, "jobs_delayed"),
            (JobState::Running, "jobs_running"),
            (JobState::Failed, "jobs_failed"),
            (JobState::Cancelled, "jobs_cancelled"),
        ] {
            for (queue, before) in [(None, None), (Some("q".to_string()), Some(1000))] {
                let (sql, args) = list_sql(&JobFilter {
                    queues: queue.into_iter().collect(),
                    since_ms: None,
                    until_ms: None,
                    state: Some(state),
                    limit: 50,
                    before,
                    payloads: false,
                });
                let plan =
                    super::super::schema::query_plan(&conn, &sql, params_from_iter(args.iter()))
                        .join("; ");
                assert!(plan.contains(index), "{state:?}: {plan}");
            }
        }
    }
}
