//! The control socket: HTTP/1.1 + JSON over a Unix stream socket.
//!
//! `curl --unix-socket /run/steward/steward.sock http://localhost/v1/status` works; the
//! `steward` client commands use the same routes. Handlers hold no state of their own:
//! each request is passed to the supervisor loop, which owns all live state, and its
//! answer is sent back.

pub mod api;
pub mod client;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use api::{ApiError, Message, Reply, Request, RequestTx};

/// Bind the control socket at `path` with mode 0660 (owner and group may connect).
///
/// A leftover socket file from a daemon that died is removed; a socket that still
/// answers means another daemon is running, which is an error.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another steward is already listening on {} (stop it first, or set [daemon] socket to another path)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serve the API until the task is dropped.
pub async fn serve(listener: UnixListener, tx: RequestTx) -> io::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/reload", post(reload))
        .route("/v1/pools/{pool}/restart", post(restart))
        .fallback(not_found)
        .with_state(tx);
    axum::serve(listener, app).await
}

async fn ask(tx: &RequestTx, req: Request) -> Result<Reply, Response> {
    let (reply_tx, reply_rx) = oneshot::channel();
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "steward is shutting down".to_string(),
        )
    };
    tx.send((req, reply_tx)).await.map_err(|_| unavailable())?;
    reply_rx.await.map_err(|_| unavailable())
}

fn error(code: StatusCode, msg: String) -> Response {
    (code, Json(ApiError { error: msg })).into_response()
}

fn unexpected() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unexpected reply from the supervisor".into(),
    )
}

async fn status(State(tx): State<RequestTx>) -> Response {
    match ask(&tx, Request::Status).await {
        Ok(Reply::Status(s)) => Json(*s).into_response(),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

async fn reload(State(tx): State<RequestTx>) -> Response {
    match ask(&tx, Request::Reload).await {
        Ok(Reply::Reload(r)) if r.ok => Json(r).into_response(),
        Ok(Reply::Reload(r)) => (StatusCode::UNPROCESSABLE_ENTITY, Json(r)).into_response(),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

async fn restart(State(tx): State<RequestTx>, UrlPath(pool): UrlPath<String>) -> Response {
    match ask(&tx, Request::RestartPool(pool)).await {
        Ok(Reply::Restart(Ok(message))) => {
            (StatusCode::ACCEPTED, Json(Message { message })).into_response()
        }
        Ok(Reply::Restart(Err(e))) => error(StatusCode::NOT_FOUND, e),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route; see `steward --help` for what the API offers".into(),
    )
}
