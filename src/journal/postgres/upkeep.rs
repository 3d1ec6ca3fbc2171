//! Keeping the hot table fast: every claim leaves a dead entry at the head of the
//! dispatch index, and a claim walks past every dead entry that VACUUM has not yet
//! removed. Autovacuum looks at a table at most once a minute (`autovacuum_naptime`);
//! at thousands of claims a second the head of the index grows by tens of thousands
//! of dead entries meanwhile, and each claim slows down with it. So each daemon looks at
//! the server's statistics of its tables every [`LOOK_EVERY`] while it claims jobs, and
//! vacuums a table itself once it holds [`VACUUM_AFTER`] dead rows and nobody has
//! vacuumed it in the last [`LOOK_EVERY`], on a connection of its own (claims go on
//! meanwhile). The statistics are the server's, so three daemons on one schema vacuum
//! it as often as one would; `SKIP_LOCKED` skips a table another daemon is vacuuming.
//!
//! Tables are also analyzed once they have changed by as many rows as they hold: the
//! claim and completion statements are prepared once per connection, and a plan made
//! while the tables were small (a sequential scan of `job_data`, say) is kept until the
//! statistics change; after a burst into fresh tables that plan would cost a scan of
//! every row for each claim until autovacuum's next look.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{connect, describe};

/// Dead rows in a table before a daemon vacuums it.
pub const VACUUM_AFTER: i64 = 5_000;
/// How often a daemon that claims jobs looks at the statistics, and the shortest time
/// between two VACUUMs of a table by any daemon.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);
/// Rows changed before a table is analyzed again: at least this many, and at least as
/// many as it holds.
const ANALYZE_AFTER: i64 = 1_000;

/// The tables whose statistics are watched.
const TABLES: [&str; 4] = ["jobs", "jobs_done", "job_data", "attempts"];

/// Run until the daemon ends: look every [`LOOK_EVERY`] while `claimed` grows.
pub async fn vacuum_when_due(url: String, schema: String, claimed: Arc<AtomicU64>) {
    let mut seen = claimed.load(Ordering::Relaxed);
    let mut client: Option<Client> = None;
    let mut warned = false;
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let now = claimed.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&url).await.ok();
        }
        let Some(c) = &client else { continue };
        let due = match due(c, &schema).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("cannot read the statistics of {schema}: {}", describe(&e));
                continue;
            }
        };
        for (table, vacuum, analyze) in due {
            let sql = match (vacuum, analyze) {
                (true, true) => format!("VACUUM (ANALYZE, SKIP_LOCKED) {schema}.{table}"),
                (true, false) => format!("VACUUM (SKIP_LOCKED) {schema}.{table}"),
                (false, true) => format!("ANALYZE (SKIP_LOCKED) {schema}.{table}"),
                (false, false) => continue,
            };
            let t0 = Instant::now();
            match c.batch_execute(&sql).await {
                Ok(()) => tracing::debug!("{sql}: {} ms", t0.elapsed().as_millis()),
                Err(e) if !warned && e.as_db_error().is_some() => {
                    warned = true;
                    tracing::warn!(
                        "cannot VACUUM or ANALYZE {schema}.{table} ({}); claims slow down as dead rows pile up until autovacuum gets to them. Let steward's role own its schema's tables",
                        describe(&e)
                    );
                }
                Err(_) => {}
            }
        }
    }
}

/// Which of the tables need a VACUUM and which an ANALYZE, by the server's statistics.
async fn due(c: &Client, schema: &str) -> Result<Vec<(String, bool, bool)>, tokio_postgres::Error> {
    let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    let rows = c
        .query(
            "SELECT relname::text,
                 n_dead_tup >= $3
                     AND coalesce(greatest(last_vacuum, last_autovacuum), 'epoch') < now() - make_interval(secs => $4),
                 n_mod_since_analyze >= greatest($5, n_live_tup)
             FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY($2)",
            &[
                &schema,
                &tables,
                &VACUUM_AFTER,
                &LOOK_EVERY.as_secs_f64(),
                &ANALYZE_AFTER,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
