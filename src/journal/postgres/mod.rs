//! The PostgreSQL journal, for many hosts sharing one queue (`[journal] backend =
//! "postgres"`).
//!
//! Here: connecting with errors that say what to fix, each daemon run's lease on its host
//! row, and `submit` as an SQL function so that any program can enqueue inside its own
//! transaction. [`schema`] holds the tables and their migrations, [`leases`] the fenced
//! claims, completions and the rescue of an expired host's jobs, and [`store`] the
//! [`JobStore`](super::JobStore) the daemon uses.

pub mod import;
pub mod leases;
pub mod schema;
pub mod store;
mod upkeep;

pub mod cluster;

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// A PostgreSQL error as an operator reads it: the server's message, detail and hint,
/// or the client's own error with its cause.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_string();
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Where a connection string points, for messages (never the password).
fn target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(the user's database)");
    format!("{host}:{port}, database {db}")
}

/// Connect to the database at `url` (a `postgres://` URL or `key=value` pairs); the
/// connection's task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| {
        format!("the PostgreSQL URL is not valid ({e}); see the [journal] url or url_file")
    })?;
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        format!(
            "cannot connect to PostgreSQL at {}: {}",
            target(&config),
            describe(&e)
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("the connection to PostgreSQL ended: {}", describe(&e));
        }
    });
    Ok(client)
}

/// Register this daemon run (`run_id`) of `host` with a lease of `ttl` on the
/// database's clock. Earlier runs of the same host end now: their jobs may be rescued at
/// once, and a duplicate daemon that took the same host name loses its lease (it fences
/// itself when it cannot renew).
pub async fn register(
    client: &mut Client,
    schema: &str,
    host: &str,
    run_id: &str,
    boot_id: &str,
    ttl: Duration,
) -> Result<(), String> {
    let err = |e: tokio_postgres::Error| format!("cannot register host {host}: {}", describe(&e));
    let tx = client.transaction().await.map_err(err)?;
    tx.execute(
        &format!(
            "UPDATE {schema}.hosts SET lease_expires_at = now()
             WHERE host = $1 AND run_id <> $2 AND lease_expires_at > now()"
        ),
        &[&host, &run_id],
    )
    .await
    .map_err(err)?;
    tx.execute(
        &format!(
            "INSERT INTO {schema}.hosts (run_id, host, boot_id, pid, version, lease_expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))"
        ),
        &[
            &run_id,
            &host,
            &boot_id,
            &(std::process::id() as i32),
            &env!("CARGO_PKG_VERSION"),
            &ttl.as_secs_f64(),
        ],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// Renew run `run_id`'s lease for `ttl`: `false` when it had expired already. An expired
/// lease is never revived (others may have rescued its jobs): the run must stop its
/// attempts and register again under a new run id.
pub async fn renew(
    client: &Client,
    schema: &str,
    run_id: &str,
    ttl: Duration,
) -> Result<bool, String> {
    let n = client
        .execute(
            &format!(
                "UPDATE {schema}.hosts SET lease_expires_at = now() + make_interval(secs => $2)
                 WHERE run_id = $1 AND lease_expires_at > now()"
            ),
            &[&run_id, &ttl.as_secs_f64()],
        )
        .await
        .map_err(|e| format!("cannot renew the lease of run {run_id}: {}", describe(&e)))?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::cluster::Cluster;
    use super::schema::{MigrateError, VERSION, migrate};
    use super::*;

    const S: &str = "steward";

    #[tokio::test]
    async fn three_daemons_starting_together_create_the_schema_once() {
        let Some(pg) = Cluster::start() else { return };
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(connect(&pg.url()).await.unwrap());
        }
        let runs = clients.iter_mut().map(|c| migrate(c, S));
        let mut found: Vec<i32> = futures_join(runs)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        found.sort();
        assert_eq!(found, vec![0, VERSION, VERSION]);
        assert_eq!(migrate(&mut clients[0], S).await.unwrap(), VERSION);
    }

    /// Run the futures at once (all polled together, each on the same task).
    async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut handles: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
        let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (h, o) in handles.iter_mut().zip(out.iter_mut()) {
                if o.is_none() {
                    match h.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *o = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }

    #[tokio::test]
    async fn a_schema_made_by_a_newer_steward_is_refused_and_left_alone() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = connect(&pg.url()).await.unwrap();
        migrate(&mut c, S).await.unwrap();
        let newer = (VERSION + 1).to_string();
        c.execute(
            "UPDATE steward.meta SET value = $1 WHERE name = 'schema_version'",
            &[&newer],
        )
        .await
        .unwrap();
        let e = migrate(&mut c, S).await.unwrap_err();
        assert!(matches!(e, MigrateError::Newer { .. }), "{e}");
        assert!(e.to_string().contains("upgrade steward"), "{e}");
        let row = c
            .query_one(
                "SELECT value FROM steward.meta WHERE name = 'schema_version'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), newer);
    }

    #[tokio::test]
    async fn finished_jobs_of_an_older_schema_move_out_of_the_hot_table() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = connect(&pg.url()).await.unwrap();
        // Version 3 kept every job in `jobs`.
        assert_eq!(
            super::schema::migrate_to_for_test(&mut c, S, 3)
                .await
                .unwrap(),
            0
        );
        c.batch_execute(
            "INSERT INTO steward.jobs (queue, state, run_at, finished_at, max_attempts, unique_key)
             VALUES ('q', 'queued', now(), NULL, 3, 'k'), ('q', 'running', now(), NULL, 3, NULL),
                    ('q', 'succeeded', now(), now(), 3, 'k'), ('q', 'failed', now(), now(), 3, NULL),
                    ('q', 'cancelled', now(), now(), 3, NULL), ('q', 'scheduled', now(), NULL, 3, NULL);
             INSERT INTO steward.job_data (job_id, payload) SELECT id, '{}' FROM steward.jobs;",
        )
        .await
        .unwrap();
        assert_eq!(migrate(&mut c, S).await.unwrap(), 3);
        let states = |table: &str| {
            let q = format!("SELECT string_agg(state, ',' ORDER BY id) FROM steward.{table}");
            let c = &c;
            async move { c.query_one(&q, &[]).await.unwrap().get::<_, String>(0) }
        };
        assert_eq!(states("jobs").await, "queued,running,scheduled");
        assert_eq!(states("jobs_done").await, "succeeded,failed,cancelled");
        assert_eq!(
            states("jobs_all").await.split(',').count(),
            6,
            "a job was lost moving"
        );
        // Each table takes only its own states; new ids go on after the old ones.
        let e = c
            .execute(
                "INSERT INTO steward.jobs (queue, state, run_at, max_attempts) VALUES ('q', 'failed', now(), 3)",
                &[],
            )
            .await
            .unwrap_err();
        assert!(describe(&e).contains("jobs_unfinished"), "{}", describe(&e));
        let id: i64 = c
            .query_one("SELECT steward.submit('q', '{}')", &[])
            .await
            .unwrap()
            .get(0);
        assert!(id > 6, "{id}");
    }

    #[tokio::test]
    async fn a_role_without_privileges_is_told_what_to_grant() {
        let Some(pg) = Cluster::start() else { return };
        let c = connect(&pg.url()).await.unwrap();
        c.batch_execute("CREATE ROLE app LOGIN; REVOKE CREATE ON DATABASE postgres FROM PUBLIC")
            .await
            .unwrap();
        let mut app = connect(&format!("{} user=app", pg.url())).await.unwrap();
        let e = migrate(&mut app, S).await.unwrap_err();
        assert!(matches!(e, MigrateError::Privileges { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("CREATE SCHEMA steward AUTHORIZATION"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn wrong_urls_and_unreachable_servers_are_named_without_the_password() {
        let e = connect("postgres://u:secret@[bad").await.unwrap_err();
        assert!(e.contains("URL is not valid"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = connect(&format!(
            "host={} port=5 user=u password=secret dbname=jobs",
            dir.path().display()
        ))
        .await
        .unwrap_err();
        assert!(e.contains("cannot connect to PostgreSQL at"), "{e}");
        assert!(e.contains("database jobs"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[tokio::test]
    async fn a_job_submitted_from_sql_exists_only_if_its_transaction_commits() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = connect(&pg.url()).await.unwrap();
        migrate(&mut c, S).await.unwrap();
        let tx = c.transaction().await.unwrap();
        tx.query_one("SELECT steward.submit('mail', '{\"to\": \"a\"}')", &[])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM steward.jobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        let id: i64 = c
            .query_one("SELECT steward.submit('mail', '{\"to\": \"b\"}')", &[])
            .await
            .unwrap()
            .get(0);
        let row = c
            .query_one(
                "SELECT j.state, j.max_attempts, d.payload::text FROM steward.jobs j
                 JOIN steward.job_data d ON d.job_id = j.id WHERE j.id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "queued");
        assert_eq!(row.get::<_, i32>(1), 3);
        assert_eq!(row.get::<_, String>(2), "{\"to\": \"b\"}");
    }

    #[tokio::test]
    async fn sql_submits_are_bounded_with_clear_errors_and_keys_are_unique() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = connect(&pg.url()).await.unwrap();
        migrate(&mut c, S).await.unwrap();
        for (call, says) in [
            ("steward.submit('', '{}')", "queue must be 1 to 64"),
            ("steward.submit('a b', '{}')", "queue must be 1 to 64"),
            ("steward.submit('q', NULL)", "payload must be a JSON value"),
            (
                "steward.submit('q', '{}', max_attempts => 0)",
                "max_attempts must be 1 to 1000000",
            ),
            (
                "steward.submit('q', '{}', run_at => now() + interval '101 years')",
                "at most 100 years",
            ),
            (
                "steward.submit('q', '{}', unique_key => repeat('k', 257))",
                "unique_key must be 1 to 256",
            ),
        ] {
            let e = c
                .query_one(&format!("SELECT {call}"), &[])
                .await
                .unwrap_err();
            assert!(describe(&e).contains(says), "{call}: {}", describe(&e));
        }
        let n: i64 = c
            .query_one("SELECT count(*) FROM steward.jobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "a refused submit stored something");
        let first: i64 = c
            .query_one("SELECT steward.submit('q', '1', unique_key => 'k')", &[])
            .await
            .unwrap()
            .get(0);
        let again: i64 = c
            .query_one("SELECT steward.submit('q', '2', unique_key => 'k')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(first, again);
        let later: i64 = c
            .query_one(
                "SELECT steward.submit('q', '3', run_at => now() + interval '1 hour')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let state: String = c
            .query_one("SELECT state FROM steward.jobs WHERE id = $1", &[&later])
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "scheduled");
    }

    #[tokio::test]
    async fn a_host_lease_renews_until_it_expires_and_a_restart_ends_the_earlier_run() {
        let Some(pg) = Cluster::start() else { return };
        let mut c = connect(&pg.url()).await.unwrap();
        migrate(&mut c, S).await.unwrap();
        let ttl = Duration::from_millis(300);
        register(&mut c, S, "vm-7", "run-1", "boot-a", ttl)
            .await
            .unwrap();
        assert!(renew(&c, S, "run-1", ttl).await.unwrap());
        // Not renewed within its ttl: expired, and never revived.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!renew(&c, S, "run-1", ttl).await.unwrap());
        // A new run of the same host ends a live earlier one at once.
        let long = Duration::from_secs(30);
        register(&mut c, S, "vm-7", "run-2", "boot-a", long)
            .await
            .unwrap();
        register(&mut c, S, "vm-7", "run-3", "boot-a", long)
            .await
            .unwrap();
        assert!(!renew(&c, S, "run-2", long).await.unwrap());
        assert!(renew(&c, S, "run-3", long).await.unwrap());
        // Another host is untouched.
        register(&mut c, S, "vm-8", "run-4", "boot-b", long)
            .await
            .unwrap();
        assert!(renew(&c, S, "run-3", long).await.unwrap());
    }
}
