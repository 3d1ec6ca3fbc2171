//! The job routes of the control API over TCP (`[api] listen`), for programs on other
//! machines: submit (one job or a batch), get, list, cancel and retry; not status,
//! reload or restart, which stay on the local socket. Every request must carry
//! `Authorization: Bearer <token>` with one of the tokens in `[api] tokens_file`,
//! compared in constant time; tokens are never logged. The listener serves plain HTTP:
//! put it behind a TLS-terminating proxy (or on a private network).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State as AxState};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::{State, cancel, get_job, list_jobs, retry, submit, submit_batch};
use crate::api::ApiError;
use crate::config::Config;
use crate::supervisor::policy::RateLimit;

/// Tokens in a tokens file, at most.
pub const MAX_TOKENS: usize = 1000;
/// The shortest and longest token accepted.
pub const TOKEN_BYTES: (usize, usize) = (16, 1024);
/// Connections at once, at most (and no more than an eighth of the descriptors).
const MAX_CONNECTIONS: usize = 256;
/// How soon a listener that could not start is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// Refused requests logged per second, at most (the rest are counted).
const REFUSALS_LOGGED: u32 = 5;

/// Read the tokens of `path`: one per line, blank lines and `#` comments skipped.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the API tokens file {}: {e}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.len() < TOKEN_BYTES.0 || t.len() > TOKEN_BYTES.1 || t.contains(char::is_whitespace) {
            return Err(format!(
                "{}:{}: a token must be {} to {} bytes without spaces (e.g. `openssl rand -hex 32`)",
                path.display(),
                n + 1,
                TOKEN_BYTES.0,
                TOKEN_BYTES.1
            ));
        }
        tokens.push(t.to_string());
    }
    if tokens.is_empty() || tokens.len() > MAX_TOKENS {
        return Err(format!(
            "the API tokens file {} must hold 1 to {MAX_TOKENS} tokens",
            path.display()
        ));
    }
    Ok(tokens)
}

/// Whether `given` is one of `tokens`, looking at every token whichever matches.
fn known(tokens: &[String], given: &str) -> bool {
    let hit = tokens.iter().fold(subtle::Choice::from(0), |acc, t| {
        acc | t.as_bytes().ct_eq(given.as_bytes())
    });
    bool::from(hit)
}

struct Guard {
    tokens: Vec<String>,
    refusals: Mutex<(RateLimit, Instant)>,
}

async fn authorize(AxState(guard): AxState<Arc<Guard>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let why = match given {
        Some(t) if known(&guard.tokens, t.trim()) => return next.run(req).await,
        Some(_) => "a bearer token that is not in [api] tokens_file",
        None => "no `Authorization: Bearer <token>` header",
    };
    if let Ok(mut r) = guard.refusals.lock() {
        let now = Instant::now();
        if r.0.allow(now) {
            tracing::warn!(
                "refused an API request ({} {}): {why}",
                req.method(),
                req.uri().path()
            );
        }
        if now.saturating_duration_since(r.1) >= Duration::from_secs(10) {
            let n = r.0.take_suppressed();
            if n > 0 {
                tracing::warn!(
                    "refused {n} more API requests in the last 10s without logging each"
                );
            }
            r.1 = now;
        }
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(ApiError {
            error: format!("{why}: send one of the tokens of the daemon's [api] tokens_file"),
        }),
    )
        .into_response()
}

/// Serve the job routes on `[api] listen` while it is set; rebinds when it changes.
pub(crate) async fn run(mut config: watch::Receiver<Arc<Config>>, state: State) {
    loop {
        let (addr, tokens_file): (Option<SocketAddr>, _) = {
            let c = config.borrow();
            (c.api.listen, c.api.tokens_file.clone())
        };
        let (Some(addr), Some(tokens_file)) = (addr, tokens_file) else {
            if config.changed().await.is_err() {
                return;
            }
            continue;
        };
        let started = match read_tokens(&tokens_file) {
            Ok(tokens) => tokio::net::TcpListener::bind(addr)
                .await
                .map(|l| (l, tokens))
                .map_err(|e| format!("cannot listen on {addr} for the job API: {e}")),
            Err(e) => Err(e),
        };
        let (listener, tokens) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(
                    "{e}; the job API is unavailable until this works (trying again every {}s). Supervision goes on.",
                    RETRY.as_secs()
                );
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    r = config.changed() => if r.is_err() { return },
                }
                continue;
            }
        };
        tracing::info!(
            "serving the job API on http://{addr} ({} tokens)",
            tokens.len()
        );
        let guard = Arc::new(Guard {
            tokens,
            refusals: Mutex::new((
                RateLimit::new(REFUSALS_LOGGED, Instant::now()),
                Instant::now(),
            )),
        });
        let app = Router::new()
            .route("/v1/jobs", post(submit).get(list_jobs))
            .route("/v1/jobs/batch", post(submit_batch))
            .route("/v1/jobs/{id}", get(get_job))
            .route("/v1/jobs/{id}/cancel", post(cancel))
            .route("/v1/jobs/{id}/retry", post(retry))
            .fallback(super::not_found)
            .method_not_allowed_fallback(super::method_not_allowed)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(guard, authorize));
        let mut rx = config.clone();
        let current = (addr, tokens_file.clone());
        let stop = async move {
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                let c = rx.borrow();
                if (c.api.listen, c.api.tokens_file.clone())
                    != (Some(current.0), Some(current.1.clone()))
                {
                    return;
                }
            }
        };
        let max = crate::server::max_connections(MAX_CONNECTIONS, 8);
        crate::server::serve(listener, app, max, stop).await;
        if config.has_changed().is_err() {
            return;
        }
        let _ = config.borrow_and_update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_bounded_and_matched_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(
            &p,
            "# ops\n\n0123456789abcdef\n  fedcba9876543210fedcba  \n",
        )
        .unwrap();
        let t = read_tokens(&p).unwrap();
        assert_eq!(t.len(), 2);
        assert!(known(&t, "0123456789abcdef"));
        assert!(known(&t, "fedcba9876543210fedcba"));
        assert!(!known(&t, "0123456789abcde"));
        assert!(!known(&t, "0123456789abcdef0"));
        assert!(!known(&t, ""));
        std::fs::write(&p, "short\n").unwrap();
        assert!(
            read_tokens(&p)
                .unwrap_err()
                .contains(":1: a token must be 16")
        );
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(read_tokens(&p).unwrap_err().contains("1 to 1000 tokens"));
    }
}
