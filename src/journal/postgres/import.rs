//! Jobs moved in from another journal (`steward migrate-journal`).
//!
//! Each chunk is one transaction: the jobs, their payloads, their earlier attempts and a
//! row in `imported` for each (source journal, id there) → id here. A job already in
//! `imported` is not moved again, so a move that stopped half-way (or ran twice) can be
//! run again and moves only what is left. A job whose unique key is held by a queued or
//! running job here stays out (the job here stands for it), and is reported.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Client;

use super::describe;
use crate::journal::MovedJob;
use crate::model::JobState;

/// What one chunk did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Imported {
    /// (id in the source, id here) of each job moved.
    pub moved: Vec<(i64, i64)>,
    /// Ids in the source of jobs moved before.
    pub already: Vec<i64>,
    /// Ids in the source of jobs left out because a job here holds their unique key.
    pub key_taken: Vec<i64>,
}

/// Move `jobs` of the journal named `source` into `schema`, in one transaction.
pub async fn import(
    client: &mut Client,
    schema: &str,
    source: &str,
    jobs: &[MovedJob],
) -> Result<Imported, String> {
    let err = |e: tokio_postgres::Error| format!("cannot move jobs in: {}", describe(&e));
    let s = schema;
    let tx = client.transaction().await.map_err(err)?;
    let ids: Vec<i64> = jobs.iter().map(|j| j.source_id).collect();
    let before: BTreeSet<i64> = tx
        .query(
            &format!(
                "SELECT source_id FROM {s}.imported WHERE source = $1 AND source_id = ANY($2)"
            ),
            &[&source, &ids],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let todo: Vec<&MovedJob> = jobs
        .iter()
        .filter(|j| !before.contains(&j.source_id))
        .collect();
    let col_i64 =
        |f: &dyn Fn(&MovedJob) -> i64| -> Vec<i64> { todo.iter().map(|j| f(j)).collect() };
    let col_i32 = |f: &dyn Fn(&MovedJob) -> u32| -> Vec<i32> {
        todo.iter()
            .map(|j| i32::try_from(f(j)).unwrap_or(i32::MAX))
            .collect()
    };
    let source_ids = col_i64(&|j| j.source_id);
    let queues: Vec<&str> = todo.iter().map(|j| j.queue.as_str()).collect();
    let failed: Vec<bool> = todo.iter().map(|j| j.state == JobState::Failed).collect();
    let priorities = col_i64(&|j| j.priority);
    let run_at = col_i64(&|j| j.run_at_ms);
    let created = col_i64(&|j| j.created_ms);
    let attempts = col_i32(&|j| j.attempts);
    let tries = col_i32(&|j| j.tries);
    let crashes = col_i32(&|j| j.crashes);
    let interruptions = col_i32(&|j| j.interruptions);
    let max_attempts = col_i32(&|j| j.max_attempts);
    let timeouts: Vec<Option<i64>> = todo.iter().map(|j| j.timeout_ms).collect();
    let keys: Vec<Option<&str>> = todo.iter().map(|j| j.key.as_deref()).collect();
    let errors: Vec<Option<&str>> = todo.iter().map(|j| j.error.as_deref()).collect();
    let payloads: Vec<&str> = todo.iter().map(|j| j.payload.as_str()).collect();
    let rows = tx
        .query(
            &format!(
                "WITH n AS MATERIALIZED (
                     SELECT nextval('{s}.jobs_id_seq') AS id, u.*
                     FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::bigint[], $5::bigint[],
                                 $6::bigint[], $7::int[], $8::int[], $9::int[], $10::int[], $11::int[],
                                 $12::bigint[], $13::text[], $14::text[], $15::text[])
                         WITH ORDINALITY AS u(source_id, queue, failed, priority, run_at, created,
                             attempts, tries, crashes, interruptions, max_attempts, timeout_ms,
                             unique_key, error, payload, ord)),
                 -- Quarantined jobs arrive finished, in `jobs_done`; the others in `jobs`.
                 l AS (
                     INSERT INTO {s}.jobs (id, queue, state, priority, run_at, created_at,
                         attempts, tries, crashes, interruptions, max_attempts, timeout_ms,
                         unique_key, error)
                     SELECT id, queue,
                         CASE WHEN run_at > (extract(epoch FROM now()) * 1000)::bigint THEN 'scheduled'
                              ELSE 'queued' END,
                         priority, to_timestamp(run_at / 1000.0), to_timestamp(created / 1000.0),
                         attempts, tries, crashes, interruptions, max_attempts, timeout_ms,
                         unique_key, error
                     FROM n WHERE NOT failed ORDER BY ord
                     ON CONFLICT (queue, unique_key)
                         WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')
                         DO NOTHING
                     RETURNING id),
                 f AS (
                     INSERT INTO {s}.jobs_done (id, queue, state, priority, run_at, created_at,
                         updated_at, finished_at, attempts, tries, crashes, interruptions,
                         max_attempts, timeout_ms, unique_key, lease_token, error)
                     SELECT id, queue, 'failed', priority, to_timestamp(run_at / 1000.0),
                         to_timestamp(created / 1000.0), now(), now(), attempts, tries, crashes,
                         interruptions, max_attempts, timeout_ms, unique_key, 0, error
                     FROM n WHERE failed ORDER BY ord
                     RETURNING id),
                 j AS (SELECT id FROM l UNION ALL SELECT id FROM f),
                 d AS (
                     INSERT INTO {s}.job_data (job_id, payload)
                     SELECT n.id, n.payload::jsonb FROM n JOIN j USING (id)),
                 m AS (
                     INSERT INTO {s}.imported (source, source_id, job_id)
                     SELECT $16, n.source_id, n.id FROM n JOIN j USING (id))
                 SELECT n.source_id, n.id FROM n JOIN j USING (id)"
            ),
            &[
                &source_ids,
                &queues,
                &failed,
                &priorities,
                &run_at,
                &created,
                &attempts,
                &tries,
                &crashes,
                &interruptions,
                &max_attempts,
                &timeouts,
                &keys,
                &errors,
                &payloads,
                &source,
            ],
        )
        .await
        .map_err(err)?;
    let moved: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let new_id: HashMap<i64, i64> = moved.iter().copied().collect();
    // Their earlier attempts, so that `steward job ID` shows the whole story.
    let mut a = History::default();
    for j in &todo {
        let Some(&id) = new_id.get(&j.source_id) else {
            continue;
        };
        for h in &j.history {
            a.job.push(id);
            a.attempt.push(i32::try_from(h.attempt).unwrap_or(i32::MAX));
            a.worker.push(h.worker.clone());
            a.pid.push(h.pid);
            a.started.push(h.started_ms);
            a.ended.push(h.ended_ms);
            a.outcome.push(h.outcome.clone());
            a.error.push(h.error.clone());
            a.stdout.push(h.stdout.clone());
            a.stderr.push(h.stderr.clone());
        }
    }
    if !a.job.is_empty() {
        tx.execute(
            &format!(
                "INSERT INTO {s}.attempts (job_id, attempt, worker, pid, started_at, ended_at,
                     outcome, error, stdout_tail, stderr_tail)
                 SELECT job, attempt, worker, pid, to_timestamp(started / 1000.0),
                     to_timestamp(ended / 1000.0), outcome, error, stdout_tail, stderr_tail
                 FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::bigint[],
                             $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[])
                     AS u(job, attempt, worker, pid, started, ended, outcome, error,
                          stdout_tail, stderr_tail)"
            ),
            &[
                &a.job, &a.attempt, &a.worker, &a.pid, &a.started, &a.ended, &a.outcome, &a.error,
                &a.stdout, &a.stderr,
            ],
        )
        .await
        .map_err(err)?;
    }
    // Daemons listening hear of the new jobs at commit.
    let woken: BTreeSet<&str> = todo
        .iter()
        .filter(|j| new_id.contains_key(&j.source_id))
        .map(|j| j.queue.as_str())
        .collect();
    let channel = super::schema::channel(s);
    for q in woken {
        tx.execute("SELECT pg_notify($1, $2)", &[&channel, &q])
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    let key_taken = todo
        .iter()
        .map(|j| j.source_id)
        .filter(|id| !new_id.contains_key(id))
        .collect();
    Ok(Imported {
        moved,
        already: before.into_iter().collect(),
        key_taken,
    })
}

/// Attempt rows, column by column (for `unnest`).
#[derive(Default)]
struct History {
    job: Vec<i64>,
    attempt: Vec<i32>,
    worker: Vec<Option<String>>,
    pid: Vec<Option<i32>>,
    started: Vec<Option<i64>>,
    ended: Vec<Option<i64>>,
    outcome: Vec<Option<String>>,
    error: Vec<Option<String>>,
    stdout: Vec<Option<String>>,
    stderr: Vec<Option<String>>,
}

/// How many of `ids` (of the journal named `source`) were moved into `schema` before;
/// 0 when the schema has no record of moves yet. Reads only.
pub async fn already_moved(
    client: &Client,
    schema: &str,
    source: &str,
    ids: &[i64],
) -> Result<usize, String> {
    let err = |e: tokio_postgres::Error| format!("cannot read {schema}.imported: {}", describe(&e));
    let table = format!("{schema}.imported");
    let exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(err)?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE source = $1 AND source_id = ANY($2)"),
            &[&source, &ids],
        )
        .await
        .map_err(err)?;
    Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
