//! Serving HTTP/1.1 on a listener with the limits a daemon needs against idle, slow or
//! too many clients: the control socket and the monitoring listener both use it.
//!
//! - at most `max_connections` at once; further ones wait in the kernel's backlog (they
//!   cost the daemon no descriptor) until one ends;
//! - a client must send a request's headers within [`HEADER_TIMEOUT`], which also ends a
//!   connection kept idle between requests;
//! - a connection lasts [`CONNECTION_LIFETIME`] at most, body included (a slow body).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

/// Time to send a request's headers, or to start the next one on a kept connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may last.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Connections at most at once: `cap`, and no more than `share` of the descriptors the
/// daemon may open, so that a flood of clients cannot take the ones that supervision
/// (worker pipes and sockets, the journal) needs.
pub fn max_connections(cap: usize, share: u64) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let by_limit = usize::try_from(limit / share.max(1)).unwrap_or(usize::MAX);
    cap.min(by_limit).max(1)
}

/// Serve `app` on `listener` until `stop` resolves (connections already open go on, for
/// at most [`CONNECTION_LIFETIME`]).
pub async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    max_connections: usize,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = &mut stop => return,
        };
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return,
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}
