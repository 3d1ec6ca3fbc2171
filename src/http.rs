//! The optional TCP listener for monitoring: `/health`, `/health/live`, `/health/ready`
//! and `/metrics`. Nothing else is served over TCP; job control stays on the Unix socket.
//!
//! Handlers never wait on the supervisor loop: the loop publishes a snapshot once a
//! second and stamps a tick on every turn, and health is judged from those. A stuck loop
//! therefore shows as unhealthy instead of hanging the probe. Failing to bind (port
//! taken, address not on this host) is logged and retried; it never stops supervision.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::journal::Journal;
use crate::metrics::{Gauges, Metrics};

/// The loop counts as turning if it turned within this long (it turns at least once a
/// second).
pub const LOOP_STALE: Duration = Duration::from_secs(5);
const RETRY_BIND: Duration = Duration::from_secs(10);
/// Monitoring connections at once, at most (and no more than an eighth of the
/// descriptors).
const MAX_CONNECTIONS: usize = 64;

/// A pool as health sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolHealth {
    pub name: String,
    pub instances: u32,
    pub running: u32,
    pub crash_looping: u32,
    pub failed: u32,
    /// Why the first failed worker failed.
    #[serde(skip)]
    pub failed_reason: Option<String>,
    /// Workers by state, for the `steward_workers` gauge.
    #[serde(skip)]
    pub states: BTreeMap<String, u64>,
}

/// What the loop publishes once a second.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pools: Vec<PoolHealth>,
    /// Trouble of the daemon itself (processes that cannot be started), for the reasons.
    pub trouble: Vec<String>,
    /// Where each running worker's memory and CPU are read at scrape time (pool,
    /// instance, source): read here, off the supervision loop.
    pub usage: Vec<(String, u32, crate::process::cgroup::UsageSource)>,
}

/// Shared between the loop, the journal writer and the HTTP handlers.
#[derive(Clone)]
pub struct Observed {
    pub metrics: Arc<Metrics>,
    pub snapshot: Arc<Mutex<Snapshot>>,
    /// Milliseconds since `started` at the loop's last turn.
    pub tick: Arc<AtomicU64>,
    pub started: Instant,
}

impl Observed {
    pub fn new(metrics: Arc<Metrics>) -> Observed {
        Observed {
            metrics,
            snapshot: Arc::default(),
            tick: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    /// Called by the loop on every turn.
    pub fn turned(&self) {
        self.tick
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The pools as last published by the loop.
    pub fn pools(&self) -> Vec<PoolHealth> {
        self.snapshot
            .lock()
            .map(|s| s.pools.clone())
            .unwrap_or_default()
    }

    /// The daemon's own trouble as last published by the loop.
    pub fn trouble(&self) -> Vec<String> {
        self.snapshot
            .lock()
            .map(|s| s.trouble.clone())
            .unwrap_or_default()
    }

    fn loop_age(&self) -> Duration {
        let last = Duration::from_millis(self.tick.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The loop turns, the journal takes writes, no pool crash-loops or has failed workers.
    Health,
    /// The loop turns.
    Live,
    /// The loop turns, the journal takes writes, every pool has a running worker.
    Ready,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub reasons: Vec<String>,
    pub loop_last_turn_ms: u64,
    pub journal_error: Option<String>,
    pub pools: Vec<PoolHealth>,
}

/// Judge health from what is known; pure, for tests.
pub fn judge(
    probe: Probe,
    loop_age: Duration,
    journal_error: Option<String>,
    pools: Vec<PoolHealth>,
    trouble: Vec<String>,
) -> HealthReport {
    let mut reasons = Vec::new();
    if probe != Probe::Live {
        reasons.extend(trouble);
    }
    if loop_age > LOOP_STALE {
        reasons.push(format!(
            "the supervisor loop has not turned for {:.1}s",
            loop_age.as_secs_f64()
        ));
    }
    if probe != Probe::Live {
        if let Some(e) = &journal_error {
            reasons.push(e.clone());
        }
        for p in &pools {
            if probe == Probe::Health {
                if p.crash_looping > 0 {
                    reasons.push(format!(
                        "pool {} has {} crash-looping workers",
                        p.name, p.crash_looping
                    ));
                }
                let unhealthy = p.states.get("unhealthy").copied().unwrap_or(0);
                if unhealthy > 0 {
                    reasons.push(format!(
                        "pool {} has {unhealthy} unhealthy workers (their health probes fail)",
                        p.name
                    ));
                }
                if p.failed > 0 {
                    reasons.push(match &p.failed_reason {
                        Some(why) => {
                            format!("pool {} has {} failed workers ({why})", p.name, p.failed)
                        }
                        None => format!("pool {} has {} failed workers", p.name, p.failed),
                    });
                }
            }
            if probe == Probe::Ready && p.instances > 0 && p.running == 0 {
                reasons.push(format!("pool {} has no running worker", p.name));
            }
        }
    }
    HealthReport {
        status: if reasons.is_empty() {
            "ok"
        } else {
            "unhealthy"
        },
        reasons,
        loop_last_turn_ms: loop_age.as_millis() as u64,
        journal_error,
        pools,
    }
}

#[derive(Clone)]
struct AppState {
    observed: Observed,
    journal: Journal,
}

async fn probe(st: &AppState, p: Probe) -> Response {
    let pools = st.observed.pools();
    let report = judge(
        p,
        st.observed.loop_age(),
        st.journal.stats().problem(),
        pools,
        st.observed.trouble(),
    );
    let code = if report.reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn health(State(st): State<AppState>) -> Response {
    probe(&st, Probe::Health).await
}

async fn live(State(st): State<AppState>) -> Response {
    probe(&st, Probe::Live).await
}

async fn ready(State(st): State<AppState>) -> Response {
    probe(&st, Probe::Ready).await
}

async fn metrics(State(st): State<AppState>) -> Response {
    let pools = st.observed.pools();
    let mut g = Gauges::default();
    for p in &pools {
        for (state, n) in &p.states {
            g.workers.push((p.name.clone(), state.clone(), *n));
        }
    }
    for (name, q) in &st.journal.stats().queues {
        for (state, n) in [
            ("queued", q.queued),
            ("running", q.running),
            ("succeeded", q.succeeded),
            ("failed", q.failed),
            ("cancelled", q.cancelled),
        ] {
            g.jobs.push((name.clone(), state.to_string(), n));
        }
    }
    g.jobs.sort();
    // How long the job due longest has waited, per queue (0: none is due). Left out
    // when the journal does not answer within a second: a scrape must not hang on it,
    // least of all while the journal is in trouble (steward_journal_writable says so).
    let mut names: Vec<String> = st.journal.stats().queues.keys().cloned().collect();
    names.sort();
    let now = crate::time::now_ms();
    let overview = tokio::time::timeout(
        Duration::from_secs(1),
        st.journal.overview(names.clone(), now),
    )
    .await;
    if let Ok(Ok(o)) = overview {
        for q in names {
            let secs = o
                .oldest_queued
                .get(&q)
                .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0);
            g.oldest_due.push((q, secs));
        }
    }
    g.log_dropped = crate::logging::dropped();
    g.journal_writable = st.journal.stats().problem().is_none();
    g.loop_age_secs = st.observed.loop_age().as_secs_f64();
    let sources = st
        .observed
        .snapshot
        .lock()
        .map(|s| s.usage.clone())
        .unwrap_or_default();
    for (pool, instance, source) in sources {
        if let Some((memory_bytes, cpu_seconds)) = crate::process::cgroup::read_usage(&source) {
            g.usage.push(crate::metrics::WorkerUsage {
                pool,
                instance,
                memory_bytes,
                cpu_seconds,
            });
        }
    }
    let body = st.observed.metrics.render(&g);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Serve monitoring on `[http] listen`, following configuration changes.
pub async fn run(mut config: watch::Receiver<Arc<Config>>, observed: Observed, journal: Journal) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(AppState { observed, journal });
    loop {
        let addr: Option<SocketAddr> = config.borrow().http.listen;
        let Some(addr) = addr else {
            if config.changed().await.is_err() {
                return;
            }
            continue;
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(
                    "cannot listen on {addr} for /health and /metrics: {e}; they are unavailable until this works (retrying every {}s). Supervision goes on.",
                    RETRY_BIND.as_secs()
                );
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_BIND) => {}
                    r = config.changed() => if r.is_err() { return },
                }
                continue;
            }
        };
        tracing::info!("serving /health and /metrics on http://{addr}");
        let mut rx = config.clone();
        let shutdown = async move {
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                if rx.borrow().http.listen != Some(addr) {
                    return;
                }
            }
        };
        let max = crate::server::max_connections(MAX_CONNECTIONS, 8);
        crate::server::serve(listener, app.clone(), max, shutdown).await;
        // The daemon is stopping (the configuration's sender is gone): so is the listener.
        if config.has_changed().is_err() {
            return;
        }
        // The address changed: loop to bind the new one.
        let _ = config.borrow_and_update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(running: u32, looping: u32, failed: u32) -> PoolHealth {
        PoolHealth {
            name: "web".into(),
            instances: 2,
            running,
            crash_looping: looping,
            failed,
            failed_reason: None,
            states: BTreeMap::new(),
        }
    }

    #[test]
    fn probes() {
        let ok = Duration::from_millis(100);
        assert_eq!(
            judge(Probe::Health, ok, None, vec![pool(2, 0, 0)], vec![]).status,
            "ok"
        );
        let r = judge(Probe::Health, ok, None, vec![pool(1, 1, 0)], vec![]);
        assert_eq!(r.reasons, vec!["pool web has 1 crash-looping workers"]);
        assert_eq!(
            judge(
                Probe::Live,
                ok,
                Some("full".into()),
                vec![pool(0, 2, 0)],
                vec![]
            )
            .status,
            "ok"
        );
        let r = judge(Probe::Ready, ok, None, vec![pool(0, 0, 0)], vec![]);
        assert_eq!(r.reasons, vec!["pool web has no running worker"]);
        assert_eq!(
            judge(Probe::Ready, ok, None, vec![pool(1, 1, 0)], vec![]).status,
            "ok"
        );
        let r = judge(
            Probe::Health,
            ok,
            Some("the disk is full".into()),
            vec![],
            vec![],
        );
        assert_eq!(r.reasons, vec!["the disk is full"]);
        let r = judge(Probe::Live, Duration::from_secs(9), None, vec![], vec![]);
        assert!(r.reasons[0].contains("has not turned for 9.0s"));
    }
}
