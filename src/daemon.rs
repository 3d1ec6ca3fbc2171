//! `steward daemon`: load the configuration, bind the control socket, run the supervisor.

use std::path::Path;

use tokio::sync::mpsc;

use crate::config::{self, Environment};
use crate::control;
use crate::error::Failure;
use crate::notify::Notifier;
use crate::process;
use crate::supervisor::Supervisor;

/// Run the daemon until it is stopped. Returns only once every worker is gone.
pub fn run(config_path: &Path) -> Result<(), Failure> {
    let env = Environment::from_process();
    let config = config::load(config_path, &env).map_err(Failure::Config)?;
    if let Err(e) = process::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({e}); orphans of workers will not be reaped by steward"
        );
    }
    std::fs::create_dir_all(&config.daemon.state_dir).map_err(|e| {
        Failure::Failed(format!(
            "cannot create the state directory {}: {e} (set [daemon] state_dir to a writable directory)",
            config.daemon.state_dir.display()
        ))
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("steward")
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let socket = config.daemon.socket.clone();
        let listener = control::bind(&socket).map_err(Failure::Failed)?;
        let (req_tx, req_rx) = mpsc::channel(64);
        let server = tokio::spawn(control::serve(listener, req_tx));
        let supervisor = Supervisor::new(config, env, Notifier::from_env())
            .map_err(|e| Failure::Failed(format!("cannot start the supervisor: {e}")))?;
        let result = supervisor.run(req_rx).await;
        server.abort();
        let _ = std::fs::remove_file(&socket);
        result.map_err(|e| Failure::Failed(format!("supervisor error: {e}")))
    })
}
