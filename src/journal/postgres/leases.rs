//! Claiming, finishing and rescuing jobs in the PostgreSQL journal: the statements that
//! make a lease safe when many hosts share one queue.
//!
//! - A claim takes due jobs with `FOR NO KEY UPDATE SKIP LOCKED`, so daemons claiming at
//!   once never wait for each other or take the same job, and bumps each job's
//!   `lease_token`.
//! - Every later write is fenced on `(id, lease_token, running)`: a write from an attempt
//!   that lost its lease changes nothing.
//! - Jobs held by a run whose host lease expired are rescued by whichever live daemon
//!   gets to the host row first (`SKIP LOCKED` again: no leader), counted as
//!   interruptions as on one host.
//!
//! Retry and quarantine decisions are `jobs::after_attempt`'s, as with SQLite. All times
//! are the database's clock.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement};

use super::describe;
use crate::config::RetryBackoff;
use crate::jobs::{self, Counters, JobState, Next, Outcome};
use crate::journal::{AttemptOutput, Claimed, Finished, Leased};

/// Who takes a lease: the daemon run and its host, and the worker it is for.
#[derive(Clone, Copy)]
pub struct Taker<'a> {
    pub host: &'a str,
    pub run_id: &'a str,
    pub worker: &'a str,
    pub pid: i32,
}

/// Most scheduled jobs made due in one claim (the rest on the next).
const PROMOTE_AT_MOST: i64 = 1000;

fn err(what: &str) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |e| format!("cannot {what} in the PostgreSQL journal: {}", describe(&e))
}

/// The statements every claim and completion runs, prepared once per connection (a
/// statement sent as text costs a second round trip to be parsed each time).
pub struct Hot {
    promote: Statement,
    claim: Statement,
    next_run: Statement,
    succeed: Statement,
}

impl Hot {
    pub async fn prepare(c: &impl GenericClient, schema: &str) -> Result<Hot, String> {
        let e = err("prepare the claim statements");
        // Scheduled jobs whose time has come join the due ones; they wait apart until
        // then, so that a claim never walks past future rows.
        let promote = format!(
            "UPDATE {schema}.jobs SET state = 'queued', updated_at = now() WHERE id IN (
                 SELECT id FROM {schema}.jobs
                 WHERE state = 'scheduled' AND run_at <= now() AND queue = ANY($1)
                 ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        );
        // Each queue's head is read from the dispatch index on its own (`queue = ANY`
        // would sort every queued row of the queues); with several queues, up to `n`
        // rows of each are locked until the commit, and only the first `n` are taken.
        // One statement claims for every worker of the group that asks for the same
        // queues: the jobs, best first, are dealt out in the workers' order, `n` each
        // ($7), so the first worker gets the first jobs as if it had asked alone.
        let claim = format!(
            "WITH r AS (
                 SELECT worker, pid, ord, (sum(n) OVER (ORDER BY ord) - n)::bigint AS lo,
                     (sum(n) OVER (ORDER BY ord))::bigint AS hi
                 FROM unnest($5::text[], $6::integer[], $7::bigint[])
                     WITH ORDINALITY AS r(worker, pid, n, ord)),
             c AS MATERIALIZED (
                 SELECT k.id, k.priority, k.run_at FROM unnest($1::text[]) AS q(name) CROSS JOIN LATERAL (
                     SELECT id, priority, run_at FROM {schema}.jobs
                     WHERE state = 'queued' AND queue = q.name
                     ORDER BY priority DESC, run_at, id
                     LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED) k
                 ORDER BY k.priority DESC, k.run_at, k.id LIMIT $2),
             w AS (
                 SELECT n.id, r.worker, r.pid, r.ord FROM (
                     SELECT id, row_number() OVER (ORDER BY priority DESC, run_at, id) - 1 AS k
                     FROM c) n
                 JOIN r ON n.k >= r.lo AND n.k < r.hi),
             u AS (
                 UPDATE {schema}.jobs j SET state = 'running', attempts = j.attempts + 1,
                     tries = j.tries + 1, lease_token = j.lease_token + 1,
                     lease_host = $3, lease_run = $4, worker = w.worker, claimed_at = now(),
                     updated_at = now(), progress = NULL, progress_message = NULL
                 FROM w WHERE j.id = w.id
                 RETURNING j.id, j.queue, j.attempts, j.lease_token, j.timeout_ms,
                     j.created_at, j.priority, j.run_at, w.worker, w.pid, w.ord),
             a AS (
                 INSERT INTO {schema}.attempts (job_id, attempt, host, worker, pid, started_at)
                 SELECT id, attempts, $3, worker, pid, now() FROM u)
             SELECT u.id, u.queue, u.attempts, u.lease_token, u.timeout_ms,
                 (extract(epoch FROM u.created_at) * 1000)::bigint, d.payload::text, u.ord
             FROM u JOIN {schema}.job_data d ON d.job_id = u.id
             ORDER BY u.ord, u.priority DESC, u.run_at, u.id"
        );
        let next_run = format!(
            "SELECT (extract(epoch FROM min(run_at)) * 1000)::bigint FROM {schema}.jobs
             WHERE state = 'scheduled' AND queue = ANY($1)"
        );
        // Successful ends, many in one statement: fenced on (id, token, running), the
        // rows locked in id order so that two daemons finishing at once cannot deadlock.
        // The finished rows leave `jobs` for `jobs_done`.
        let to_done = super::schema::move_job(
            schema,
            "jobs_done",
            "g",
            &[
                ("state", "'succeeded'"),
                ("finished_at", "now()"),
                ("updated_at", "now()"),
                ("error", "NULL"),
                ("worker", "NULL"),
                ("lease_host", "NULL"),
                ("lease_run", "NULL"),
            ],
        );
        let succeed = format!(
            "WITH f AS (
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS f(id, token, result)),
             l AS (
                 SELECT j.id FROM {schema}.jobs j JOIN f ON f.id = j.id AND f.token = j.lease_token
                 WHERE j.state = 'running' ORDER BY j.id FOR UPDATE OF j),
             g AS (
                 DELETE FROM {schema}.jobs j USING l WHERE j.id = l.id RETURNING j.*),
             m AS ({to_done}),
             u AS (
                 SELECT g.id, g.attempts, (extract(epoch FROM g.run_at) * 1000)::bigint AS run_at_ms
                 FROM g),
             a AS (
                 UPDATE {schema}.attempts t SET ended_at = now(), outcome = 'succeeded', error = NULL
                 FROM u WHERE t.job_id = u.id AND t.attempt = u.attempts),
             d AS (
                 UPDATE {schema}.job_data d SET result = f.result::jsonb
                 FROM u JOIN f ON f.id = u.id WHERE d.job_id = u.id AND f.result IS NOT NULL)
             SELECT id, run_at_ms FROM u"
        );
        Ok(Hot {
            promote: c.prepare(&promote).await.map_err(&e)?,
            claim: c.prepare(&claim).await.map_err(&e)?,
            next_run: c.prepare(&next_run).await.map_err(&e)?,
            succeed: c.prepare(&succeed).await.map_err(&e)?,
        })
    }
}

/// One worker's claim: up to `n` due jobs of `queues` for `taker`.
pub struct ClaimRequest<'a> {
    pub queues: &'a [String],
    pub n: usize,
    pub taker: Taker<'a>,
}

/// Several workers' claims, in order: one statement for the workers that ask for the
/// same queues, the statements sent together (one round trip for all of them). They
/// run one after another on the server, so a job goes to the first request that
/// reaches it.
pub async fn claim_many(
    client: &impl GenericClient,
    hot: &Hot,
    requests: &[ClaimRequest<'_>],
) -> Result<Vec<Claimed>, String> {
    let mut queues: Vec<String> = requests.iter().flat_map(|r| r.queues.to_vec()).collect();
    queues.sort();
    queues.dedup();
    // The requests of each statement, by their queues and their daemon run.
    let mut sets: Vec<Vec<usize>> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let same = |j: &usize| {
            let o = &requests[*j];
            o.queues == r.queues && o.taker.host == r.taker.host && o.taker.run_id == r.taker.run_id
        };
        match sets.iter_mut().find(|set| set.first().is_some_and(same)) {
            Some(set) => set.push(i),
            None => sets.push(vec![i]),
        }
    }
    struct Statement<'a> {
        queues: &'a [String],
        total: i64,
        host: &'a str,
        run_id: &'a str,
        workers: Vec<&'a str>,
        pids: Vec<i32>,
        ns: Vec<i64>,
    }
    let n_of = |r: &ClaimRequest| i64::try_from(r.n).unwrap_or(i64::MAX);
    let statements: Vec<Statement> = sets
        .iter()
        .map(|set| {
            let first = &requests[set[0]];
            Statement {
                queues: first.queues,
                total: set
                    .iter()
                    .fold(0i64, |t, &i| t.saturating_add(n_of(&requests[i]))),
                host: first.taker.host,
                run_id: first.taker.run_id,
                workers: set.iter().map(|&i| requests[i].taker.worker).collect(),
                pids: set.iter().map(|&i| requests[i].taker.pid).collect(),
                ns: set.iter().map(|&i| n_of(&requests[i])).collect(),
            }
        })
        .collect();
    let promote_params: [&(dyn ToSql + Sync); 2] = [&queues, &PROMOTE_AT_MOST];
    let params: Vec<[&(dyn ToSql + Sync); 7]> = statements
        .iter()
        .map(|st| -> [&(dyn ToSql + Sync); 7] {
            [
                &st.queues,
                &st.total,
                &st.host,
                &st.run_id,
                &st.workers,
                &st.pids,
                &st.ns,
            ]
        })
        .collect();
    let (promoted, claimed) = futures_util::future::join(
        client.execute(&hot.promote, &promote_params),
        futures_util::future::join_all(params.iter().map(|p| client.query(&hot.claim, p))),
    )
    .await;
    promoted.map_err(err("make scheduled jobs due"))?;
    let mut out: Vec<Claimed> = requests.iter().map(|_| Claimed::default()).collect();
    for (set, rows) in sets.iter().zip(claimed) {
        for r in rows.map_err(err("claim jobs"))? {
            // The worker's place in its statement, from 1.
            let ord: i64 = r.get(7);
            let Some(&i) = usize::try_from(ord - 1).ok().and_then(|k| set.get(k)) else {
                continue;
            };
            out[i].jobs.push(Leased {
                id: r.get(0),
                queue: r.get(1),
                attempt: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                token: r.get(3),
                timeout_ms: r.get(4),
                created_ms: r.get(5),
                payload: r.get(6),
            });
        }
    }
    Ok(out)
}

/// Successful ends and claims in one transaction sent in one write, `BEGIN` to
/// `COMMIT`, and answered in one round trip. Safe because every statement's answer is
/// checked: after an error PostgreSQL refuses the rest of the transaction and its
/// `COMMIT` rolls back, so an `Err` means nothing of it was applied. (A statement the
/// client refused to send would break that, but none can be: the statements are
/// prepared and their parameters are integers, strings and arrays of them, whose types
/// are fixed here and whose encoding cannot fail. A closed connection sends nothing.)
pub async fn succeed_and_claim(
    client: &Client,
    hot: &Hot,
    done: &[(i64, i64, Option<&str>)],
    requests: &[ClaimRequest<'_>],
) -> Result<(HashMap<i64, i64>, Vec<Claimed>), String> {
    let succeed = async {
        if done.is_empty() {
            Ok(HashMap::new())
        } else {
            succeed_many(client, hot, done).await
        }
    };
    let claim = async {
        if requests.is_empty() {
            Ok(Vec::new())
        } else {
            claim_many(client, hot, requests).await
        }
    };
    // Polled in this order, each sends its statement at its first poll.
    let (begun, applied, claimed, committed) = futures_util::future::join4(
        client.batch_execute("BEGIN"),
        succeed,
        claim,
        client.batch_execute("COMMIT"),
    )
    .await;
    begun.map_err(err("begin a transaction"))?;
    let (applied, claimed) = (applied?, claimed?);
    committed.map_err(err("commit"))?;
    Ok((applied, claimed))
}

/// For each claim that got fewer jobs than it asked for, when the next scheduled job of
/// its queues is due (read after the claims' commit: it changes nothing).
pub async fn note_next_runs(
    client: &impl GenericClient,
    hot: &Hot,
    requests: &[ClaimRequest<'_>],
    claimed: &mut [Claimed],
) -> Result<(), String> {
    for (r, c) in requests.iter().zip(claimed.iter_mut()) {
        if c.jobs.len() < r.n {
            c.next_run_at_ms = client
                .query_one(&hot.next_run, &[&r.queues])
                .await
                .map_err(err("look for scheduled jobs"))?
                .get(0);
        }
    }
    Ok(())
}

/// The ends of successful attempts (`(id, token, result)`), in one statement: what it
/// applied, each job's id with its run time (ms since the epoch); a job missing from
/// the answer had lost its lease.
pub async fn succeed_many(
    client: &impl GenericClient,
    hot: &Hot,
    done: &[(i64, i64, Option<&str>)],
) -> Result<HashMap<i64, i64>, String> {
    let ids: Vec<i64> = done.iter().map(|d| d.0).collect();
    let tokens: Vec<i64> = done.iter().map(|d| d.1).collect();
    let results: Vec<Option<&str>> = done.iter().map(|d| d.2).collect();
    let rows = client
        .query(&hot.succeed, &[&ids, &tokens, &results])
        .await
        .map_err(err("finish jobs"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The state a decision puts a job in, and how many ms from now it runs again.
fn next_state(next: &Next) -> (JobState, Option<i64>) {
    match next {
        Next::Succeeded => (JobState::Succeeded, None),
        Next::Cancelled => (JobState::Cancelled, None),
        Next::Failed { .. } => (JobState::Failed, None),
        Next::Queued { delay } => (
            JobState::Queued,
            Some(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        ),
    }
}

/// Record the end of attempt `attempt` of job `id` (its row locked by the caller, with
/// `counters` as read) and move the job where `jobs::after_attempt` says: its new
/// state, when it runs next (ms since the epoch), and the reason kept with it.
async fn end_attempt(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    id: i64,
    attempt: i32,
    counters: Counters,
    outcome: &Outcome,
    backoff: &RetryBackoff,
) -> Result<(JobState, i64, Option<String>), String> {
    let e = err("end an attempt");
    let (c, next) = jobs::after_attempt(counters, outcome, backoff, rand::random::<f64>());
    let (state, delay_ms) = next_state(&next);
    let reason = match &next {
        Next::Failed { reason } => Some(reason.clone()),
        Next::Succeeded => None,
        _ => outcome.error().map(str::to_string),
    };
    // Due later: it waits apart from due jobs.
    let stored_state = match delay_ms {
        Some(ms) if ms > 0 => "scheduled",
        _ => state.as_str(),
    };
    let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &id,
        &stored_state,
        &to_i32(c.tries),
        &to_i32(c.crashes),
        &to_i32(c.interruptions),
        &delay_ms,
        &reason,
    ];
    let run_at = "CASE WHEN $6::bigint IS NULL THEN run_at
                  ELSE now() + make_interval(secs => $6::bigint / 1000.0) END";
    let sql = if state.is_final() {
        // A final state: the row leaves `jobs` for `jobs_done`.
        let to_done = super::schema::move_job(
            schema,
            "jobs_done",
            "g",
            &[
                ("state", "$2::text"),
                ("tries", "$3::integer"),
                ("crashes", "$4::integer"),
                ("interruptions", "$5::integer"),
                ("run_at", run_at),
                ("finished_at", "now()"),
                ("error", "$7::text"),
                ("updated_at", "now()"),
                ("worker", "NULL"),
                ("lease_host", "NULL"),
                ("lease_run", "NULL"),
            ],
        );
        format!(
            "WITH g AS (DELETE FROM {schema}.jobs WHERE id = $1 RETURNING *)
             {to_done} RETURNING (extract(epoch FROM run_at) * 1000)::bigint"
        )
    } else {
        format!(
            "UPDATE {schema}.jobs SET state = $2, tries = $3, crashes = $4, interruptions = $5,
                 run_at = {run_at}, error = $7, updated_at = now(),
                 worker = NULL, lease_host = NULL, lease_run = NULL
             WHERE id = $1
             RETURNING (extract(epoch FROM run_at) * 1000)::bigint"
        )
    };
    let run_at_ms: i64 = tx.query_one(&sql, &params).await.map_err(&e)?.get(0);
    tx.execute(
        &format!(
            "UPDATE {schema}.attempts SET ended_at = now(), outcome = $3, error = $4
             WHERE job_id = $1 AND attempt = $2"
        ),
        &[&id, &attempt, &outcome.as_str(), &outcome.error()],
    )
    .await
    .map_err(&e)?;
    Ok((state, run_at_ms, reason))
}

/// End an attempt inside the caller's transaction if `token` is still the job's lease;
/// the next state follows `jobs::after_attempt`.
pub async fn finish_in(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    id: i64,
    token: i64,
    outcome: &Outcome,
    backoff: &RetryBackoff,
    output: Option<&AttemptOutput>,
) -> Result<Finished, String> {
    let e = err("finish a job");
    let Some(row) = tx
        .query_opt(
            &format!(
                "SELECT tries, crashes, interruptions, max_attempts, attempts FROM {schema}.jobs
                 WHERE id = $1 AND lease_token = $2 AND state = 'running' FOR NO KEY UPDATE"
            ),
            &[&id, &token],
        )
        .await
        .map_err(&e)?
    else {
        return Ok(Finished::Stale);
    };
    let count = |i: usize| u32::try_from(row.get::<_, i32>(i)).unwrap_or(0);
    let counters = Counters {
        tries: count(0),
        crashes: count(1),
        interruptions: count(2),
        max_attempts: count(3),
    };
    let attempt: i32 = row.get(4);
    let (state, run_at_ms, reason) =
        end_attempt(tx, schema, id, attempt, counters, outcome, backoff).await?;
    if let Outcome::Succeeded { result: Some(r) } = outcome {
        tx.execute(
            &format!("UPDATE {schema}.job_data SET result = $2::text::jsonb WHERE job_id = $1"),
            &[&id, r],
        )
        .await
        .map_err(&e)?;
    }
    if let Some(o) = output {
        tx.execute(
            &format!(
                "UPDATE {schema}.attempts SET worker = COALESCE($3, worker), pid = COALESCE($4, pid),
                     stdout_tail = $5, stderr_tail = $6
                 WHERE job_id = $1 AND attempt = $2"
            ),
            &[&id, &attempt, &o.worker, &o.pid, &o.stdout_tail, &o.stderr_tail],
        )
        .await
        .map_err(&e)?;
    }
    Ok(Finished::Applied {
        state,
        run_at_ms,
        reason,
    })
}

/// A job taken back from a run whose host lease expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescued {
    pub id: i64,
    pub queue: String,
    pub host: String,
    pub now: JobState,
}

/// Take back the jobs of up to 16 runs whose host lease has expired (runs another daemon
/// is rescuing are skipped), and forget those runs.
pub async fn rescue(client: &mut Client, schema: &str) -> Result<Vec<Rescued>, String> {
    // An interruption runs again at once: no backoff applies.
    let backoff = crate::config::QueueSpec::new("").retry_backoff;
    let e = err("rescue the jobs of expired hosts");
    let tx = client.transaction().await.map_err(&e)?;
    let dead = tx
        .query(
            &format!(
                "SELECT run_id, host FROM {schema}.hosts WHERE lease_expires_at < now()
                 ORDER BY lease_expires_at LIMIT 16 FOR UPDATE SKIP LOCKED"
            ),
            &[],
        )
        .await
        .map_err(&e)?;
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let runs: Vec<String> = dead.iter().map(|r| r.get(0)).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT id, queue, tries, crashes, interruptions, max_attempts, attempts, lease_host
                 FROM {schema}.jobs WHERE state = 'running' AND lease_run = ANY($1)
                 ORDER BY id FOR NO KEY UPDATE"
            ),
            &[&runs],
        )
        .await
        .map_err(&e)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.get(0);
        let queue: String = r.get(1);
        let count = |i: usize| u32::try_from(r.get::<_, i32>(i)).unwrap_or(0);
        let counters = Counters {
            tries: count(2),
            crashes: count(3),
            interruptions: count(4),
            max_attempts: count(5),
        };
        let attempt: i32 = r.get(6);
        let host: String = r.get::<_, Option<String>>(7).unwrap_or_default();
        let outcome = Outcome::Interrupted {
            reason: format!("the lease of host {host} expired while the job ran there"),
        };
        let (state, _, _) =
            end_attempt(&tx, schema, id, attempt, counters, &outcome, &backoff).await?;
        out.push(Rescued {
            id,
            queue,
            host,
            now: state,
        });
    }
    tx.execute(
        &format!("DELETE FROM {schema}.hosts WHERE run_id = ANY($1)"),
        &[&runs],
    )
    .await
    .map_err(&e)?;
    tx.commit().await.map_err(&e)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::super::cluster::Cluster;
    use super::super::{connect, register, schema::migrate};
    use super::*;

    const S: &str = "steward";

    fn backoff() -> RetryBackoff {
        RetryBackoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    fn taker<'a>(host: &'a str, run_id: &'a str) -> Taker<'a> {
        Taker {
            host,
            run_id,
            worker: "w/0",
            pid: 1,
        }
    }

    async fn with_jobs(pg: &Cluster, n: usize) -> Client {
        let mut c = connect(&pg.url()).await.unwrap();
        migrate(&mut c, S).await.unwrap();
        c.execute(
            "SELECT steward.submit('q', to_jsonb(i)) FROM generate_series(1, $1::int) i",
            &[&(n as i32)],
        )
        .await
        .unwrap();
        c
    }

    /// Up to `n` jobs of `q` for `t`, with statements prepared for this claim.
    async fn claim_as(c: &Client, q: &[String], n: usize, t: &Taker<'_>) -> Claimed {
        let hot = Hot::prepare(c, S).await.unwrap();
        claim(c, &hot, q, n, t).await.unwrap()
    }

    async fn claim(
        c: &Client,
        hot: &Hot,
        queues: &[String],
        n: usize,
        taker: &Taker<'_>,
    ) -> Result<Claimed, String> {
        let request = ClaimRequest {
            queues,
            n,
            taker: *taker,
        };
        let requests = [request];
        let mut claimed = claim_many(c, hot, &requests).await?;
        note_next_runs(c, hot, &requests, &mut claimed).await?;
        Ok(claimed.pop().unwrap_or_default())
    }

    /// One end in a transaction of its own.
    async fn finish(
        client: &mut Client,
        schema: &str,
        id: i64,
        token: i64,
        outcome: &Outcome,
        backoff: &RetryBackoff,
        output: Option<&AttemptOutput>,
    ) -> Result<Finished, String> {
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        let done = finish_in(&tx, schema, id, token, outcome, backoff, output).await?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(done)
    }

    #[tokio::test]
    async fn daemons_claiming_at_once_never_take_the_same_job() {
        let Some(pg) = Cluster::start() else { return };
        with_jobs(&pg, 300).await;
        let q = vec!["q".to_string()];
        let mut tasks = Vec::new();
        for h in 0..3 {
            let url = pg.url();
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let c = connect(&url).await.unwrap();
                let host = format!("h{h}");
                let mut got = Vec::new();
                loop {
                    let claimed = claim_as(&c, &q, 7, &taker(&host, &host)).await;
                    if claimed.jobs.is_empty() {
                        return got;
                    }
                    got.extend(claimed.jobs.into_iter().map(|j| (j.id, j.token)));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let ids: HashSet<i64> = all.iter().map(|(id, _)| *id).collect();
        assert_eq!(all.len(), 300, "a job was taken twice or not at all");
        assert_eq!(ids.len(), 300);
        assert!(all.iter().all(|(_, token)| *token == 1));
    }

    #[tokio::test]
    async fn a_claim_follows_priority_and_leaves_future_jobs_alone() {
        let Some(pg) = Cluster::start() else { return };
        let c = with_jobs(&pg, 0).await;
        let submit = |sql: &'static str| c.query_one(sql, &[]);
        let low: i64 = submit("SELECT steward.submit('q', '1')")
            .await
            .unwrap()
            .get(0);
        let high: i64 = submit("SELECT steward.submit('q', '2', priority => 5)")
            .await
            .unwrap()
            .get(0);
        submit(
            "SELECT steward.submit('q', '3', priority => 9, run_at => now() + interval '1 hour')",
        )
        .await
        .unwrap();
        let q = vec!["q".to_string()];
        let claimed = claim_as(&c, &q, 10, &taker("h", "r")).await;
        let ids: Vec<i64> = claimed.jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![high, low]);
        assert_eq!(claimed.jobs[0].payload, "2");
        let next = claimed.next_run_at_ms.expect("the scheduled job's time");
        let in_ms = next - crate::time::now_ms();
        assert!((3_500_000..=3_600_000).contains(&in_ms), "{in_ms}");
    }

    #[tokio::test]
    async fn workers_asking_together_share_one_statement_in_their_order() {
        let Some(pg) = Cluster::start() else { return };
        let c = with_jobs(&pg, 0).await;
        let mut ids = Vec::new();
        for p in [1, 5, 3, 9, 7] {
            let sql = format!("SELECT steward.submit('q', '{p}', priority => {p})");
            ids.push((
                p,
                c.query_one(sql.as_str(), &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0),
            ));
        }
        ids.sort_by_key(|(p, _)| -p);
        let best: Vec<i64> = ids.iter().map(|(_, id)| *id).collect();
        c.execute("SELECT steward.submit('other', '0')", &[])
            .await
            .unwrap();
        let hot = Hot::prepare(&c, S).await.unwrap();
        let (q, other) = (vec!["q".to_string()], vec!["other".to_string()]);
        let ask = |queues, n, worker, pid| ClaimRequest {
            queues,
            n,
            taker: Taker {
                host: "h",
                run_id: "r",
                worker,
                pid,
            },
        };
        let requests = [
            ask(&q[..], 2, "w/0", 10),
            ask(&other[..], 5, "x/0", 20),
            ask(&q[..], 2, "w/1", 11),
            ask(&q[..], 4, "w/2", 12),
        ];
        let claimed = claim_many(&c, &hot, &requests).await.unwrap();
        let got = |i: usize| claimed[i].jobs.iter().map(|j| j.id).collect::<Vec<_>>();
        // The best two to the first worker, the next two to the next, the last to the
        // third; the other queue's statement apart.
        assert_eq!(got(0), best[0..2]);
        assert_eq!(got(2), best[2..4]);
        assert_eq!(got(3), best[4..5]);
        assert_eq!(claimed[1].jobs.len(), 1);
        // Each job's row and attempt name its own worker and pid.
        for (i, worker, pid) in [
            (0, "w/0", 10),
            (2, "w/1", 11),
            (3, "w/2", 12),
            (1, "x/0", 20),
        ] {
            for job in &claimed[i].jobs {
                let row = c
                    .query_one(
                        "SELECT j.worker, a.worker, a.pid FROM steward.jobs j
                         JOIN steward.attempts a ON a.job_id = j.id AND a.attempt = j.attempts
                         WHERE j.id = $1 AND j.state = 'running' AND j.lease_run = 'r'",
                        &[&job.id],
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    (
                        row.get::<_, String>(0),
                        row.get::<_, String>(1),
                        row.get::<_, i32>(2)
                    ),
                    (worker.to_string(), worker.to_string(), pid)
                );
            }
        }
    }

    #[tokio::test]
    async fn a_group_sent_in_one_write_applies_all_of_it_or_nothing() {
        let Some(pg) = Cluster::start() else { return };
        let c = with_jobs(&pg, 4).await;
        let hot = Hot::prepare(&c, S).await.unwrap();
        let q = vec!["q".to_string()];
        let jobs = claim(&c, &hot, &q, 2, &taker("h", "r")).await.unwrap().jobs;
        let done = [(jobs[0].id, jobs[0].token, None)];
        // A claim PostgreSQL refuses (a queue name no text can hold) after a success
        // that would apply: the success is rolled back with it.
        let bad = ["q\0".to_string()];
        let ask = |queues| ClaimRequest {
            queues,
            n: 1,
            taker: taker("h", "r"),
        };
        let refused = succeed_and_claim(&c, &hot, &done, &[ask(&q[..]), ask(&bad[..])]).await;
        assert!(refused.is_err(), "{:?}", refused.map(|r| r.0));
        async fn states(c: &Client) -> Vec<(String, i64)> {
            c.query(
                "SELECT state, count(*) FROM steward.jobs_all GROUP BY state ORDER BY state",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect()
        }
        assert_eq!(
            states(&c).await,
            vec![("queued".to_string(), 2), ("running".to_string(), 2)]
        );
        // The connection is fit for the next group, which applies.
        let (applied, claimed) = succeed_and_claim(&c, &hot, &done, &[ask(&q[..])])
            .await
            .unwrap();
        assert!(applied.contains_key(&jobs[0].id));
        assert_eq!(claimed[0].jobs.len(), 1);
        assert_eq!(
            states(&c).await,
            vec![
                ("queued".to_string(), 1),
                ("running".to_string(), 2),
                ("succeeded".to_string(), 1)
            ]
        );
    }

    #[tokio::test]
    async fn many_successes_in_one_statement_are_fenced_one_by_one() {
        let Some(pg) = Cluster::start() else { return };
        let c = with_jobs(&pg, 3).await;
        let hot = Hot::prepare(&c, S).await.unwrap();
        let q = vec!["q".to_string()];
        let jobs = claim(&c, &hot, &q, 3, &taker("h", "r")).await.unwrap().jobs;
        assert_eq!(jobs.len(), 3);
        let (a, b, stale) = (&jobs[0], &jobs[1], &jobs[2]);
        let applied = succeed_many(
            &c,
            &hot,
            &[
                (a.id, a.token, Some("{\"n\":1}")),
                (b.id, b.token, None),
                (stale.id, stale.token - 1, Some("{\"n\":3}")),
            ],
        )
        .await
        .unwrap();
        assert!(applied.contains_key(&a.id) && applied.contains_key(&b.id));
        assert!(
            !applied.contains_key(&stale.id),
            "a stale token was applied"
        );
        let rows = c
            .query(
                "SELECT j.id, j.state, d.result::text, a.outcome FROM steward.jobs_all j
                 JOIN steward.job_data d ON d.job_id = j.id
                 JOIN steward.attempts a ON a.job_id = j.id ORDER BY j.id",
                &[],
            )
            .await
            .unwrap();
        let got: Vec<(i64, String, Option<String>, Option<String>)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let ok = Some("succeeded".to_string());
        assert_eq!(
            got,
            vec![
                (
                    a.id,
                    "succeeded".into(),
                    Some("{\"n\": 1}".into()),
                    ok.clone()
                ),
                (b.id, "succeeded".into(), None, ok),
                (stale.id, "running".into(), None, None),
            ]
        );
        // The same ends again: the jobs are no longer running.
        let again = succeed_many(&c, &hot, &[(a.id, a.token, None)])
            .await
            .unwrap();
        assert!(again.is_empty());
    }

    #[tokio::test]
    async fn writes_are_fenced_by_the_lease_token() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = with_jobs(&pg, 1).await;
        let q = vec!["q".to_string()];
        let job = claim_as(&c, &q, 1, &taker("h", "r")).await.jobs[0].clone();
        let done = Outcome::Succeeded {
            result: Some("{\"ok\":true}".into()),
        };
        // A token of an earlier lease changes nothing.
        let stale = finish(&mut c, S, job.id, job.token - 1, &done, &backoff(), None).await;
        assert!(matches!(stale, Ok(Finished::Stale)), "{stale:?}");
        let ok = finish(&mut c, S, job.id, job.token, &done, &backoff(), None).await;
        assert!(
            matches!(
                ok,
                Ok(Finished::Applied {
                    state: JobState::Succeeded,
                    ..
                })
            ),
            "{ok:?}"
        );
        // The same completion again: the job is no longer running.
        let again = finish(&mut c, S, job.id, job.token, &done, &backoff(), None).await;
        assert!(matches!(again, Ok(Finished::Stale)), "{again:?}");
        let row = c
            .query_one(
                "SELECT j.state, d.result::text, a.outcome FROM steward.jobs_all j
                 JOIN steward.job_data d ON d.job_id = j.id
                 JOIN steward.attempts a ON a.job_id = j.id WHERE j.id = $1",
                &[&job.id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "succeeded");
        assert_eq!(row.get::<_, String>(1), "{\"ok\": true}");
        assert_eq!(row.get::<_, String>(2), "succeeded");
    }

    #[tokio::test]
    async fn a_failure_to_retry_waits_its_backoff_apart_from_due_jobs() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = with_jobs(&pg, 1).await;
        let q = vec!["q".to_string()];
        let job = claim_as(&c, &q, 1, &taker("h", "r")).await.jobs[0].clone();
        let fail = Outcome::Failed {
            error: "boom".into(),
            retry: true,
        };
        let r = finish(&mut c, S, job.id, job.token, &fail, &backoff(), None)
            .await
            .unwrap();
        let Finished::Applied {
            state: JobState::Queued,
            run_at_ms,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        let in_ms = run_at_ms - crate::time::now_ms();
        assert!((55_000..=60_000).contains(&in_ms), "{in_ms}");
        let state: String = c
            .query_one(
                "SELECT state FROM steward.jobs_all WHERE id = $1",
                &[&job.id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "scheduled");
        assert!(claim_as(&c, &q, 1, &taker("h", "r")).await.jobs.is_empty());
    }

    #[tokio::test]
    async fn a_dead_hosts_jobs_are_rescued_once_and_its_late_writes_rejected() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = with_jobs(&pg, 5).await;
        let q = vec!["q".to_string()];
        register(&mut c, S, "vm-7", "run-a", "b", Duration::from_millis(200))
            .await
            .unwrap();
        register(&mut c, S, "vm-8", "run-b", "b", Duration::from_secs(60))
            .await
            .unwrap();
        let held = claim_as(&c, &q, 3, &taker("vm-7", "run-a")).await.jobs;
        let alive = claim_as(&c, &q, 1, &taker("vm-8", "run-b")).await.jobs;
        // Nothing to rescue while every lease is current.
        assert!(rescue(&mut c, S).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut other = connect(&pg.url()).await.unwrap();
        let (a, b) = tokio::join!(rescue(&mut c, S), rescue(&mut other, S));
        let mut rescued = a.unwrap();
        rescued.extend(b.unwrap());
        let mut ids: Vec<i64> = rescued.iter().map(|r| r.id).collect();
        ids.sort();
        let mut want: Vec<i64> = held.iter().map(|j| j.id).collect();
        want.sort();
        assert_eq!(ids, want, "each job rescued exactly once");
        assert!(
            rescued
                .iter()
                .all(|r| r.now == JobState::Queued && r.host == "vm-7")
        );
        // The dead run's late completion is rejected by its token.
        let done = Outcome::Succeeded { result: None };
        let late = finish(
            &mut c,
            S,
            held[0].id,
            held[0].token,
            &done,
            &backoff(),
            None,
        )
        .await;
        assert!(matches!(late, Ok(Finished::Stale)), "{late:?}");
        // The live host's job is untouched, and the rescued ones run again (attempt 2).
        let state: String = c
            .query_one(
                "SELECT state FROM steward.jobs_all WHERE id = $1",
                &[&alive[0].id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "running");
        let again = claim_as(&c, &q, 10, &taker("vm-8", "run-b")).await.jobs;
        let retaken: Vec<&Leased> = again.iter().filter(|j| want.contains(&j.id)).collect();
        assert_eq!(retaken.len(), 3);
        assert!(retaken.iter().all(|j| j.attempt == 2 && j.token == 2));
        // Now that another attempt holds it, the dead run's write is still rejected.
        let late = finish(
            &mut c,
            S,
            held[1].id,
            held[1].token,
            &done,
            &backoff(),
            None,
        )
        .await;
        assert!(matches!(late, Ok(Finished::Stale)), "{late:?}");
        let state: String = c
            .query_one(
                "SELECT state FROM steward.jobs_all WHERE id = $1",
                &[&held[1].id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "running");
        let row = c
            .query_one(
                "SELECT interruptions, tries FROM steward.jobs_all WHERE id = $1",
                &[&held[0].id],
            )
            .await
            .unwrap();
        assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 1));
        let hosts: i64 = c
            .query_one("SELECT count(*) FROM steward.hosts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(hosts, 1, "the dead run is forgotten");
    }
}
