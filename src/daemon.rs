//! `steward daemon`: load the configuration, open the journal, bind the control socket,
//! run the supervisor; on the way out, let the journal commit its last writes.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::{self, Environment};
use crate::control;
use crate::error::Failure;
use crate::http::Observed;
use crate::journal::{self, OpenError};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::process;
use crate::supervisor::Supervisor;

/// What keeps a journal open until the daemon's last write.
enum Owner {
    Sqlite(journal::sqlite::JournalOwner),
    Postgres(journal::postgres::store::Owner),
}

impl Owner {
    fn close(self) {
        match self {
            Owner::Sqlite(o) => o.close(),
            Owner::Postgres(o) => o.close(),
        }
    }
}

/// Run the daemon until it is stopped. Returns only once every worker is gone and every
/// job state change is committed.
pub fn run(config_path: &Path, accept_damaged: bool) -> Result<(), Failure> {
    let env = Environment::from_process();
    let config = config::load(config_path, &env).map_err(Failure::Config)?;
    let (limit, children) = process::raise_descriptor_limit();
    tracing::debug!("open files: up to {limit} for steward, {children} for its workers");
    if let Err(e) = process::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({e}); orphans of workers will not be reaped by steward"
        );
    }
    // Before any worker exists and before READY=1: the daemon leaves the unit's cgroup
    // for a leaf of its own so that workers can have theirs.
    let cgroups = if config.daemon.cgroups {
        process::cgroup::Tree::set_up()
    } else {
        Err(process::cgroup::Without::Off)
    };
    match &cgroups {
        Ok(t) => tracing::info!(
            "each worker and job process runs in a cgroup of its own under {}/w (controllers: {})",
            t.root.display(),
            t.controller_list()
        ),
        Err(process::cgroup::Without::Failed(why)) => {
            tracing::warn!("workers run without cgroups of their own (process groups only): {why}")
        }
        Err(why) => {
            tracing::info!("workers run in process groups, without cgroups of their own: {why}")
        }
    }
    let run_id = format!("{:016x}", rand::random::<u64>());
    let metrics = Arc::new(Metrics::default());
    let (journal, owner, reclaimed) = match &config.journal.backend {
        config::Backend::Sqlite => {
            let (journal, owner, reclaimed) = journal::sqlite::open(
                &config.daemon.state_dir,
                config.journal.synchronous,
                &run_id,
                metrics.clone(),
                accept_damaged,
            )
            .map_err(|e| match e {
                OpenError::Damaged(e) => Failure::DamagedJournal(e),
                OpenError::Failed(e) => Failure::Failed(e),
            })?;
            (journal, Owner::Sqlite(owner), reclaimed)
        }
        config::Backend::Postgres(pg) => {
            let url = pg.url.read(&env).map_err(Failure::Failed)?;
            let (journal, owner, reclaimed) = journal::postgres::store::open(
                journal::postgres::store::Options {
                    url,
                    schema: pg.schema.clone(),
                    host: pg.host.clone(),
                    run_id: run_id.clone(),
                    boot_id: crate::process::boot_id(),
                    poll_only: pg.poll_only,
                },
                metrics.clone(),
            )
            .map_err(Failure::Failed)?;
            (journal, Owner::Postgres(owner), reclaimed)
        }
    };
    metrics.jobs_reclaimed("daemon_restart", reclaimed.len() as u64);
    for r in &reclaimed {
        tracing::warn!(JOB_ID = r.id, QUEUE = %r.queue, ATTEMPT = r.attempt,
            "job {} was running on {} when steward last stopped; it is {} again",
            r.id, r.worker.as_deref().unwrap_or("a worker"), r.now.as_str());
    }
    if !reclaimed.is_empty() {
        tracing::info!(
            "reclaimed {} jobs interrupted by the previous stop of steward",
            reclaimed.len()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("steward")
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let socket = config.daemon.socket.clone();
        let listener = control::bind(&socket).map_err(Failure::Failed)?;
        let (req_tx, req_rx) = mpsc::channel(256);
        let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
        let observed = Observed::new(metrics);
        let http = tokio::spawn(crate::http::run(
            config_rx.clone(),
            observed.clone(),
            journal.clone(),
        ));
        let supervisor = Supervisor::new(
            config,
            env,
            Notifier::from_env(),
            journal.clone(),
            config_tx,
            observed,
            cgroups,
        )
        .map_err(|e| Failure::Failed(format!("cannot start the supervisor: {e}")))?;
        if let Some(mut wakeups) = journal.take_wakeups() {
            let handle = supervisor.handle();
            tokio::spawn(async move {
                while let Some(queue) = wakeups.recv().await {
                    handle.jobs_added(&queue, 0);
                }
            });
        }
        let state = control::State {
            requests: req_tx,
            journal,
            config: config_rx.clone(),
            supervisor: supervisor.handle(),
        };
        let remote = tokio::spawn(control::remote::run(config_rx.clone(), state.clone()));
        let server = tokio::spawn(control::serve(listener, state));
        let result = supervisor.run(req_rx).await;
        server.abort();
        let _ = server.await;
        http.abort();
        let _ = http.await;
        remote.abort();
        let _ = remote.await;
        let _ = std::fs::remove_file(&socket);
        result.map_err(|e| Failure::Failed(format!("supervisor error: {e}")))
    });
    drop(runtime);
    owner.close();
    result
}
