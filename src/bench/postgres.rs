//! The scenarios of the PostgreSQL journal (12–15), on one private cluster (default
//! settings: fsync and synchronous_commit on), each run on a schema of its own.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::Client as Db;

use super::worker::now_us;
use super::{Bed, Sizes, fail, latencies, percentile, submit_batches};
use crate::control::client::Client;
use crate::error::Failure;
use crate::journal::postgres::cluster::Cluster;
use crate::journal::postgres::{connect, schema};

/// A daemon on `cluster`'s schema `schema`, host `host`, with `pools`.
fn pg_bed(
    exe: &std::path::Path,
    cluster: &Cluster,
    schema: &str,
    host: &str,
    pools: impl FnOnce(&Bed) -> String,
) -> Result<Bed, Failure> {
    let mut bed = Bed::new(exe)?;
    let body = pools(&bed);
    bed.write_config_with_daemon(
        &format!("host = \"{host}\"\n"),
        &format!(
            "[journal]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n\n{body}",
            cluster.url()
        ),
    )?;
    bed.start(&[])?;
    Ok(bed)
}

/// Wait until `query` (one boolean) says false, asking every 20 ms.
async fn until_false(db: &Db, query: &str, limit: Duration, what: &str) -> Result<(), Failure> {
    until_false_every(db, query, Duration::from_millis(20), limit, what).await
}

async fn until_false_every(
    db: &Db,
    query: &str,
    every: Duration,
    limit: Duration,
    what: &str,
) -> Result<(), Failure> {
    let t0 = Instant::now();
    while db
        .query_one(query, &[])
        .await
        .map_err(fail)?
        .get::<_, bool>(0)
    {
        if t0.elapsed() > limit {
            return Err(fail(format!("{what} within {} s", limit.as_secs())));
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// Scenario 12: protocol workers taking trivial jobs, on 1 daemon and then on 3 with the
/// same slots in all (96: 6 workers × 16, or 2 × 16 on each), jobs submitted in batches
/// through the first; the end is read from the database (the daemons' own counts lag by
/// up to a second).
pub(super) async fn throughput(
    exe: &std::path::Path,
    cluster: &Cluster,
    s: &Sizes,
) -> Result<(Vec<f64>, Vec<f64>), Failure> {
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for run in 0..s.runs {
        for (daemons, workers) in [(1usize, 6u32), (3, 2)] {
            let schema = format!("bench_{run}_{daemons}");
            let mut beds = Vec::new();
            for i in 0..daemons {
                beds.push(pg_bed(exe, cluster, &schema, &format!("bench-{i}"), |b| {
                    format!("[queue.b]\n\n{}", b.worker_pool("w", "b", workers, 16, ""))
                })?);
            }
            let c = Client::new(&beds[0].socket());
            tokio::time::sleep(Duration::from_millis(300)).await;
            let db = connect(&cluster.url()).await.map_err(fail)?;
            let t0 = Instant::now();
            submit_batches(&c, "b", s.pg_jobs, json!({})).await?;
            // Asked of the partial indexes of unfinished jobs, every 100 ms: mid-run the
            // head of the dispatch index is full of dead entries and each question
            // takes about 3 ms of the server's time, which every 20 ms was a tenth of
            // the work the run measures.
            let open = format!(
                "SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE state = 'queued' AND queue = 'b')
                     OR EXISTS (SELECT 1 FROM {schema}.jobs WHERE state = 'running')
                     OR EXISTS (SELECT 1 FROM {schema}.jobs WHERE state = 'scheduled')"
            );
            until_false_every(
                &db,
                &open,
                Duration::from_millis(100),
                Duration::from_secs(600),
                "the PostgreSQL jobs did not all finish",
            )
            .await?;
            let rate = s.pg_jobs as f64 / t0.elapsed().as_secs_f64();
            if daemons == 1 {
                one.push(rate);
            } else {
                three.push(rate);
            }
            for b in &mut beds {
                b.stop();
            }
        }
    }
    Ok((one, three))
}

/// Scenario 13: dispatch latency at light load, jobs added by another program with
/// `steward.submit` in SQL (so the daemon hears of them by NOTIFY): from the moment the
/// submitting transaction's commit returns to the moment a worker has the job. 50 jobs
/// a second, one at a time. p50 and p99 of each run.
pub(super) async fn latency(
    exe: &std::path::Path,
    cluster: &Cluster,
    s: &Sizes,
) -> Result<(Vec<f64>, Vec<f64>), Failure> {
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for run in 0..s.runs {
        let schema = format!("bench_latency_{run}");
        let mut recv = std::path::PathBuf::new();
        let mut bed = pg_bed(exe, cluster, &schema, "bench-l", |b| {
            recv = b.dir.join("recv.log");
            format!(
                "[queue.l]\n\n{}",
                b.worker_pool(
                    "w",
                    "l",
                    4,
                    8,
                    &format!("env = {{ STEWARD_BENCH_RECV = \"{}\" }}", recv.display())
                )
            )
        })?;
        let db = connect(&cluster.url()).await.map_err(fail)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = (100.0 * s.latency_secs) as usize;
        let submit = format!("SELECT {schema}.submit('l', '{{}}')");
        let mut committed = std::collections::HashMap::new();
        let t0 = Instant::now();
        for i in 0..n {
            let due = t0 + Duration::from_millis(20 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let id: i64 = db
                .query_one(submit.as_str(), &[])
                .await
                .map_err(fail)?
                .get(0);
            committed.insert(id, now_us());
        }
        until_false(
            &db,
            &format!("SELECT EXISTS (SELECT 1 FROM {schema}.jobs_all WHERE state <> 'succeeded')"),
            Duration::from_secs(60),
            "the latency jobs did not all succeed",
        )
        .await?;
        let lat = latencies(&recv, &committed)?;
        if lat.len() != n {
            return Err(fail(format!(
                "{} of {n} latency jobs were seen by a worker",
                lat.len()
            )));
        }
        p50s.push(percentile(&lat, 0.5));
        p99s.push(percentile(&lat, 0.99));
        bed.stop();
    }
    Ok((p50s, p99s))
}

/// Scenario 14: a host killed with `kill -9` while its workers hold 8 jobs, and another
/// host on the same journal: seconds from the kill until none of the 8 is held by the
/// dead host any more (each back in the queue, or running on the other host).
pub(super) async fn rescue(
    exe: &std::path::Path,
    cluster: &Cluster,
    s: &Sizes,
) -> Result<Vec<f64>, Failure> {
    let mut took = Vec::new();
    for run in 0..s.rescue_runs {
        let schema = format!("bench_rescue_{run}");
        // The jobs' queue is served by the host to be killed only, so the rescued jobs
        // wait in the queue and the other host's rescue is all that is measured.
        let mut a = pg_bed(exe, cluster, &schema, "bench-a", |b| {
            format!(
                "[queue.r]\n\n[queue.other]\n\n{}",
                b.worker_pool("w", "r", 1, 8, "")
            )
        })?;
        let b = pg_bed(exe, cluster, &schema, "bench-b", |b| {
            format!(
                "[queue.r]\n\n[queue.other]\n\n{}",
                b.worker_pool("w", "other", 1, 8, "")
            )
        })?;
        let c = Client::new(&a.socket());
        submit_batches(&c, "r", 8, json!({"sleep_ms": 3_600_000})).await?;
        let db = connect(&cluster.url()).await.map_err(fail)?;
        let held = format!(
            "SELECT count(*) < 8 FROM {schema}.jobs WHERE state = 'running' AND lease_host = 'bench-a'"
        );
        if let Err(e) = until_false(
            &db,
            &held,
            Duration::from_secs(30),
            "the 8 jobs were not all running",
        )
        .await
        {
            return Err(fail(format!(
                "{e} (jobs by state and host: {}); see {}",
                states(&db, &schema).await,
                a.dir.join("daemon.log").display()
            )));
        }
        // The kill comes right after the host registered, so its lease has nearly all
        // its time left: the longest a rescue can take.
        let t0 = Instant::now();
        a.kill9();
        let still = format!(
            "SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE state = 'running' AND lease_host = 'bench-a')"
        );
        until_false(
            &db,
            &still,
            Duration::from_secs(120),
            "the dead host's jobs were not rescued",
        )
        .await?;
        took.push(t0.elapsed().as_secs_f64());
        drop(b);
    }
    Ok(took)
}

/// Scenario 15: jobs added with `steward.submit` in SQL, 1,000 in each statement, by
/// one connection, each statement its own transaction: jobs per second.
pub(super) async fn sql_submits(cluster: &Cluster, s: &Sizes) -> Result<Vec<f64>, Failure> {
    let mut rates = Vec::new();
    for run in 0..s.runs {
        let name = format!("bench_submit_{run}");
        let mut db = connect(&cluster.url()).await.map_err(fail)?;
        schema::migrate(&mut db, &name).await.map_err(fail)?;
        let per_call = 1_000usize;
        let calls = s.pg_sql_jobs.div_ceil(per_call);
        let stmt = db
            .prepare(&format!(
                "SELECT {name}.submit('s', jsonb_build_object('n', i)) FROM generate_series(1, $1) i"
            ))
            .await
            .map_err(fail)?;
        let t0 = Instant::now();
        for _ in 0..calls {
            db.query(&stmt, &[&(per_call as i32)]).await.map_err(fail)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let stored: i64 = db
            .query_one(&format!("SELECT count(*) FROM {name}.jobs_all"), &[])
            .await
            .map_err(fail)?
            .get(0);
        if stored != (calls * per_call) as i64 {
            return Err(fail(format!(
                "{stored} jobs stored of {} submitted in SQL",
                calls * per_call
            )));
        }
        rates.push((calls * per_call) as f64 / secs);
    }
    Ok(rates)
}

/// Jobs by state and host, for a message.
async fn states(db: &Db, schema: &str) -> String {
    let q = format!(
        "SELECT state || ' ' || coalesce(lease_host, '-') || ' ' || count(*) FROM {schema}.jobs_all GROUP BY state, lease_host"
    );
    match db.query(&q, &[]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => e.to_string(),
    }
}
