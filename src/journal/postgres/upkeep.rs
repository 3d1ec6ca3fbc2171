//! Keeping the hot table fast: every claim leaves a dead entry at the head of the
//! dispatch index, and a claim walks past every dead entry that VACUUM has not yet
//! removed. Autovacuum looks at a table at most once a minute (`autovacuum_naptime`);
//! at thousands of claims a second the head of the index grows by tens of thousands
//! of dead entries meanwhile, and each claim slows down with it. So each daemon
//! vacuums `jobs` itself once it has claimed [`VACUUM_AFTER`] jobs, at most every
//! [`VACUUM_EVERY`], on a connection of its own (claims go on meanwhile).
//! `SKIP_LOCKED` lets a daemon skip the round when another one is vacuuming.
//!
//! The same round runs ANALYZE: the claim and completion statements are prepared once
//! per connection, and a plan made while the tables were small (a sequential scan of
//! `job_data`, say) is kept until the statistics change; after a burst into fresh
//! tables that plan would cost a scan of every row for each claim until autovacuum's
//! next look.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{connect, describe};

/// Jobs claimed by this daemon since its last VACUUM before it runs the next.
pub const VACUUM_AFTER: u64 = 5_000;
/// The shortest time between two rounds of one daemon.
pub const VACUUM_EVERY: Duration = Duration::from_secs(2);

/// Run until the daemon ends: VACUUM `<schema>.jobs` whenever `claimed` has grown by
/// [`VACUUM_AFTER`] since the last round.
pub async fn vacuum_when_due(url: String, schema: String, claimed: Arc<AtomicU64>) {
    let mut done_at = 0;
    let mut client = None;
    let mut warned = false;
    loop {
        tokio::time::sleep(VACUUM_EVERY).await;
        let now = claimed.load(Ordering::Relaxed);
        if now.saturating_sub(done_at) < VACUUM_AFTER {
            continue;
        }
        if client
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            client = connect(&url).await.ok();
        }
        let Some(c) = &client else { continue };
        let t0 = Instant::now();
        match c
            .batch_execute(&format!(
                "VACUUM (ANALYZE, SKIP_LOCKED) {schema}.jobs, {schema}.job_data, {schema}.attempts"
            ))
            .await
        {
            Ok(()) => {
                tracing::debug!(
                    "vacuumed {schema}.jobs after {} claims in {} ms",
                    now - done_at,
                    t0.elapsed().as_millis()
                );
                done_at = now;
            }
            Err(e) if !warned && e.as_db_error().is_some() => {
                warned = true;
                done_at = now;
                tracing::warn!(
                    "cannot VACUUM {schema}.jobs ({}); claims slow down as dead rows pile up until autovacuum gets to them. Let steward's role own its schema's tables",
                    describe(&e)
                );
            }
            Err(_) => done_at = now,
        }
    }
}
