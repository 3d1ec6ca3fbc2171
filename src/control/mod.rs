//! The control socket: HTTP/1.1 + JSON over a Unix stream socket.
//!
//! `curl --unix-socket /run/steward/steward.sock http://localhost/v1/status` works; the
//! `steward` client commands use the same routes. Handlers hold no state of their own:
//! each request is passed to the supervisor loop, which owns all live state, and its
//! answer is sent back.

/// The JSON contract of the socket (see [`crate::api`]), where clients find it.
pub mod api {
    pub use crate::api::*;
}
pub mod client;
pub(crate) mod remote;
mod views;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path as UrlPath, Query, State as AxState};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};

use crate::api::{
    ApiError, BatchRequest, BatchResponse, JobList, Message, SubmitRequest, SubmitResponse,
};
use crate::config::Config;
use crate::jobs::JobState;
use crate::journal::{JobFilter, Journal, JournalError, NewJob, now_ms};
use crate::supervisor;
use crate::supervisor::{Reply, Request, RequestTx};

/// What every handler may use.
#[derive(Clone)]
pub(crate) struct State {
    /// Requests that need the supervisor loop (status, reload, restart, cancel).
    pub(crate) requests: RequestTx,
    /// Submits and reads go to the journal directly.
    pub(crate) journal: Journal,
    /// The current configuration (queues, limits), updated on reload.
    pub(crate) config: watch::Receiver<Arc<Config>>,
    pub(crate) supervisor: supervisor::Handle,
}

/// Bind the control socket at `path` with mode 0660 (owner and group may connect).
///
/// A leftover socket file from a daemon that died is removed; a socket that still
/// answers means another daemon is running, which is an error.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, String> {
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

/// Control connections at once, at most (and no more than a quarter of the descriptors).
const MAX_CONNECTIONS: usize = 128;

/// Serve the API until the task is dropped.
pub(crate) async fn serve(listener: UnixListener, state: State) -> io::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/reload", post(reload))
        .route("/v1/pools/{pool}/restart", post(restart))
        .route("/v1/pools/{pool}/stop", post(stop_pool))
        .route("/v1/pools/{pool}/start", post(start_pool))
        .route("/v1/pools/{pool}/scale", post(scale_pool))
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/queues", get(queues))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/retry", post(retry));
    #[cfg(debug_assertions)]
    let app = app.route("/v1/debug/stall", post(stall));
    let app = app
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Submits read their bodies themselves, with limits that follow the queues.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    let max = crate::server::max_connections(MAX_CONNECTIONS, 4);
    crate::server::serve(listener, app, max, std::future::pending()).await;
    Ok(())
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

async fn status(AxState(st): AxState<State>) -> Response {
    match ask(&st.requests, Request::Status).await {
        Ok(Reply::Status(mut s)) => {
            // Figures the loop does not keep come from the journal's reader.
            let now = now_ms();
            let queues: Vec<String> = s.queues.iter().map(|q| q.name.clone()).collect();
            if let Ok(o) = st.journal.overview(queues, now).await {
                for q in &mut s.queues {
                    if let Some((ok, failed)) = o.last_hour.get(&q.name) {
                        q.succeeded_last_hour = *ok;
                        q.failed_last_hour = *failed;
                    }
                    q.oldest_queued_secs = o
                        .oldest_queued
                        .get(&q.name)
                        .map(|t| ((now - t).max(0) as f64) / 1000.0);
                }
                s.recent_failures = o
                    .recent_failures
                    .into_iter()
                    .map(|(id, queue, error, at)| api::FailureView {
                        id,
                        queue,
                        error,
                        finished_at: at.map(crate::time::rfc3339_ms),
                    })
                    .collect();
            }
            Json(*s).into_response()
        }
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

async fn reload(AxState(st): AxState<State>) -> Response {
    match ask(&st.requests, Request::Reload).await {
        Ok(Reply::Reload(r)) if r.ok => Json(r).into_response(),
        Ok(Reply::Reload(r)) => (StatusCode::UNPROCESSABLE_ENTITY, Json(r)).into_response(),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

/// Debug builds only: `POST /v1/debug/stall?ms=N` blocks the supervision loop for N ms
/// (at most 60 s), so tests can see what stops when the loop stops and what goes on.
#[cfg(debug_assertions)]
async fn stall(AxState(st): AxState<State>, Query(q): Query<StallParams>) -> Response {
    let d = std::time::Duration::from_millis(q.ms.min(60_000));
    match ask(&st.requests, Request::Stall(d)).await {
        Ok(Reply::Stalling) => (
            StatusCode::ACCEPTED,
            Json(Message {
                message: format!("the supervision loop is blocked for {} ms", d.as_millis()),
            }),
        )
            .into_response(),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

#[cfg(debug_assertions)]
#[derive(Debug, Deserialize)]
struct StallParams {
    ms: u64,
}

async fn restart(AxState(st): AxState<State>, UrlPath(pool): UrlPath<String>) -> Response {
    match ask(&st.requests, Request::RestartPool(pool)).await {
        Ok(Reply::Restart(Ok(message))) => {
            (StatusCode::ACCEPTED, Json(Message { message })).into_response()
        }
        Ok(Reply::Restart(Err(e))) => error(StatusCode::NOT_FOUND, e),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

async fn operate(st: &State, pool: String, action: supervisor::PoolAction) -> Response {
    match ask(&st.requests, Request::Pool(pool, action)).await {
        Ok(Reply::Pool(Ok(message))) => {
            (StatusCode::ACCEPTED, Json(Message { message })).into_response()
        }
        Ok(Reply::Pool(Err(e))) if e.starts_with("no pool named") => {
            error(StatusCode::NOT_FOUND, e)
        }
        Ok(Reply::Pool(Err(e))) => error(StatusCode::BAD_REQUEST, e),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

async fn stop_pool(AxState(st): AxState<State>, UrlPath(pool): UrlPath<String>) -> Response {
    operate(&st, pool, supervisor::PoolAction::Stop).await
}

async fn start_pool(AxState(st): AxState<State>, UrlPath(pool): UrlPath<String>) -> Response {
    operate(&st, pool, supervisor::PoolAction::Start).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleRequest {
    instances: u32,
}

async fn scale_pool(
    AxState(st): AxState<State>,
    UrlPath(pool): UrlPath<String>,
    body: Body,
) -> Response {
    let body = match read_body(body, 4096, "a scale request").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: ScaleRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(msg) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{msg}; send {{\"instances\": N}}"),
            );
        }
    };
    operate(&st, pool, supervisor::PoolAction::Scale(req.instances)).await
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such route: {method} {}; the control API is described in the README (\"Control API\")",
            uri.path()
        ),
    )
}

/// The methods each route takes, for the answer to a wrong one.
fn allowed_methods(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "status"] | ["v1", "queues"] => "GET",
        ["v1", "jobs"] => "GET (list) and POST (submit)",
        ["v1", "jobs", "batch"] | ["v1", "reload"] => "POST",
        ["v1", "jobs", _] => "GET",
        _ => "POST",
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}: it takes {}",
            uri.path(),
            allowed_methods(uri.path())
        ),
    )
}

/// A job id from the path; anything but a number is answered with a message.
struct JobId(i64);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let UrlPath(raw) = UrlPath::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
        raw.parse().map(JobId).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("`{raw}` is not a job id: job ids are whole numbers, e.g. /v1/jobs/42"),
            )
        })
    }
}

/// Jobs in one batch, at most.
pub(crate) const MAX_BATCH_JOBS: usize = 10_000;
/// A batch's body may be this large even when every queue takes small payloads.
const MIN_BATCH_BODY: usize = 64 * 1024 * 1024;

/// The largest body of one submit: twice the largest payload any queue accepts (JSON may
/// be written with more spaces and escapes than steward keeps), plus 1 MiB for the rest.
pub(crate) fn submit_body_limit(config: &Config) -> usize {
    let payload = config
        .queues
        .values()
        .map(|q| q.max_payload)
        .max()
        .unwrap_or(1024 * 1024);
    usize::try_from(payload.saturating_mul(2))
        .unwrap_or(usize::MAX)
        .saturating_add(1024 * 1024)
}

/// The largest body of a batch: 64 MiB, or one submit's limit if that is larger.
pub(crate) fn batch_body_limit(config: &Config) -> usize {
    submit_body_limit(config).max(MIN_BATCH_BODY)
}

/// Read a request body of at most `limit` bytes; a larger one is refused with 413
/// without reading it whole.
async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, Response> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than {limit} bytes, the most {what} may have with the queues configured (it follows the largest max_payload); nothing was stored"
                    ),
                ))
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ))
            }
        }
    }
}

fn journal_error(e: JournalError) -> Response {
    let code = match e {
        JournalError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
        JournalError::Io { .. }
        | JournalError::Read { .. }
        | JournalError::Damaged { .. }
        | JournalError::Refused(_)
        | JournalError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        // Not 503: a client that repeats what was refused would repeat a submit that may
        // have been stored.
        JournalError::Uncertain(_) => StatusCode::GATEWAY_TIMEOUT,
        JournalError::NotFound(_) => StatusCode::NOT_FOUND,
        JournalError::Invalid(_) => StatusCode::CONFLICT,
    };
    error(code, e.to_string())
}

use crate::config::MAX_ATTEMPTS;

/// Check a submit request against the configuration and turn it into a journal row.
pub(crate) fn new_job(
    r: SubmitRequest,
    config: &Config,
    now: i64,
) -> Result<NewJob, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let Some(q) = config.queues.get(&r.queue) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "unknown queue `{}`; configured queues: {}",
                r.queue,
                config.queue_names()
            ),
        ));
    };
    let payload = serde_json::to_string(&r.payload)
        .map_err(|e| bad(format!("payload cannot be encoded: {e}")))?;
    if payload.len() as u64 > q.max_payload {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "payload is {} bytes; queue `{}` accepts at most {} bytes (max_payload)",
                payload.len(),
                q.name,
                q.max_payload
            ),
        ));
    }
    let max_ms = crate::time::MAX_DURATION.as_millis() as u64;
    let max_text = crate::time::MAX_DURATION_TEXT;
    let latest = crate::time::ms_after(now, crate::time::MAX_DURATION);
    let run_at_ms = match (&r.run_at, r.delay_ms) {
        (Some(_), Some(_)) => {
            return Err(bad("give either a delay or a run_at time, not both".into()));
        }
        (Some(t), None) => {
            let at = humantime::parse_rfc3339_weak(t).map_err(|e| {
                bad(format!(
                    "run_at `{t}` is not a time ({e}); write e.g. 2026-11-23T18:00:00Z"
                ))
            })?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            if ms > latest {
                return Err(bad(format!(
                    "run_at `{t}` is too far ahead: a job may be delayed at most {max_text}"
                )));
            }
            ms
        }
        (None, Some(d)) if d > max_ms => {
            return Err(bad(format!(
                "delay_ms = {d} is too long: a job may be delayed at most {max_text} ({max_ms} ms)"
            )));
        }
        (None, Some(d)) => crate::time::ms_after(now, std::time::Duration::from_millis(d)),
        (None, None) => now,
    };
    if let Some(t) = r.timeout_ms
        && t > max_ms
    {
        return Err(bad(format!(
            "timeout_ms = {t} is too long: an attempt's time limit is at most {max_text} ({max_ms} ms); 0 means none"
        )));
    }
    match r.max_attempts {
        Some(0) => return Err(bad("max_attempts must be at least 1".into())),
        Some(n) if n > MAX_ATTEMPTS => {
            return Err(bad(format!(
                "max_attempts = {n} is too many: at most {MAX_ATTEMPTS}"
            )));
        }
        _ => {}
    }
    if let Some(k) = &r.key
        && (k.is_empty() || k.len() > 256)
    {
        return Err(bad("key must be 1 to 256 bytes".into()));
    }
    Ok(NewJob {
        queue: r.queue,
        payload,
        priority: r.priority,
        run_at_ms,
        max_attempts: r.max_attempts.unwrap_or(q.max_attempts),
        timeout_ms: r.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        key: r.key,
    })
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

async fn submit(AxState(st): AxState<State>, body: Body) -> Response {
    let config = st.config.borrow().clone();
    let body = match read_body(body, submit_body_limit(&config), "a submit").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: SubmitRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let job = match new_job(req, &config, now_ms()) {
        Ok(j) => j,
        Err((code, msg)) => return error(code, msg),
    };
    let queue = job.queue.clone();
    match st.journal.submit_wait(vec![job]).await {
        Ok(v) => match v.first() {
            Some(s) => {
                if !s.existing {
                    st.supervisor.jobs_added(&queue, s.run_at_ms);
                    if st.supervisor.log_submit(1) {
                        tracing::info!(JOB_ID = s.id, QUEUE = %queue, "job {} submitted to queue {queue}", s.id);
                    }
                }
                let code = if s.existing {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                (
                    code,
                    Json(SubmitResponse {
                        id: s.id,
                        existing: s.existing,
                    }),
                )
                    .into_response()
            }
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the journal returned no id".into(),
            ),
        },
        Err(e) => journal_error(e),
    }
}

async fn submit_batch(AxState(st): AxState<State>, body: Body) -> Response {
    let config = st.config.borrow().clone();
    let body = match read_body(body, batch_body_limit(&config), "a batch").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: BatchRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    if req.jobs.len() > MAX_BATCH_JOBS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the batch has {} jobs; a batch holds at most {MAX_BATCH_JOBS}: split it; nothing was stored",
                req.jobs.len()
            ),
        );
    }
    let now = now_ms();
    let mut jobs = Vec::with_capacity(req.jobs.len());
    for (i, r) in req.jobs.into_iter().enumerate() {
        match new_job(r, &config, now) {
            Ok(j) => jobs.push(j),
            Err((code, msg)) => {
                return error(
                    code,
                    format!("job {i} of the batch: {msg}; nothing was stored"),
                );
            }
        }
    }
    let queues: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
    match st.journal.submit_wait(jobs).await {
        Ok(v) => {
            let mut earliest: std::collections::HashMap<&str, i64> =
                std::collections::HashMap::new();
            for (s, q) in v.iter().zip(&queues) {
                if !s.existing {
                    let e = earliest.entry(q.as_str()).or_insert(s.run_at_ms);
                    *e = (*e).min(s.run_at_ms);
                }
            }
            for (q, t) in earliest {
                st.supervisor.jobs_added(q, t);
            }
            log_batch(&st, &v, &queues);
            let jobs = v
                .iter()
                .map(|s| SubmitResponse {
                    id: s.id,
                    existing: s.existing,
                })
                .collect();
            (StatusCode::CREATED, Json(BatchResponse { jobs })).into_response()
        }
        Err(e) => journal_error(e),
    }
}

/// One line for a whole batch: how many jobs it added, which ids, which queues.
fn log_batch(st: &State, stored: &[crate::journal::Submitted], queues: &[String]) {
    let added: Vec<(i64, &str)> = stored
        .iter()
        .zip(queues)
        .filter(|(s, _)| !s.existing)
        .map(|(s, q)| (s.id, q.as_str()))
        .collect();
    let (Some(first), Some(last)) = (
        added.iter().map(|(id, _)| *id).min(),
        added.iter().map(|(id, _)| *id).max(),
    ) else {
        return;
    };
    if !st.supervisor.log_submit(added.len() as u64) {
        return;
    }
    let names: std::collections::BTreeSet<&str> = added.iter().map(|(_, q)| *q).collect();
    let names: Vec<&str> = names.into_iter().collect();
    let to = match names.as_slice() {
        [one] => format!("queue {one}"),
        many => format!("queues {}", many.join(", ")),
    };
    let existing = stored.len() - added.len();
    let also = if existing > 0 {
        format!("; {existing} were already there under their unique key")
    } else {
        String::new()
    };
    tracing::info!(
        FIRST_JOB_ID = first,
        LAST_JOB_ID = last,
        JOBS = added.len(),
        "batch of {} jobs submitted (ids {first}–{last}) to {to}{also}",
        added.len()
    );
}

#[derive(Debug, Deserialize)]
struct ListParams {
    /// One queue, or several separated by commas.
    queue: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    since: Option<String>,
    /// Only jobs created before this time (RFC 3339).
    until: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    /// Only jobs older than this id: the `next` of the previous page.
    before: Option<i64>,
    /// Include payloads (left out by default: lists are for looking around).
    payload: Option<bool>,
}

async fn list_jobs(
    AxState(st): AxState<State>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let p = match params {
        Ok(Query(p)) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; the parameters are queue (one, or several separated by commas), state, since and until (RFC 3339 times of creation), limit (1 to 10000), before (a job id) and payload (true or false), e.g. ?state=failed&limit=20",
                    e.body_text()
                ),
            );
        }
    };
    let state = match p.state.as_deref() {
        None => None,
        Some(s) => match JobState::parse(s) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown state `{s}`; states are queued, running, succeeded, failed, cancelled"
                    ),
                );
            }
        },
    };
    let mut times = [None, None];
    for (slot, (name, value)) in times
        .iter_mut()
        .zip([("since", &p.since), ("until", &p.until)])
    {
        if let Some(v) = value {
            match crate::time::parse_rfc3339_ms(v) {
                Some(ms) => *slot = Some(ms),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{name} = `{v}` is not an RFC 3339 time, e.g. 2026-12-03T10:00:00Z"
                        ),
                    );
                }
            }
        }
    }
    let queues: Vec<String> = p
        .queue
        .iter()
        .flat_map(|q| q.split(','))
        .filter(|q| !q.is_empty())
        .take(1000)
        .map(str::to_string)
        .collect();
    let filter = JobFilter {
        queues,
        since_ms: times[0],
        until_ms: times[1],
        state,
        limit: p.limit.unwrap_or(50).clamp(1, 10_000),
        before: p.before,
        payloads: p.payload.unwrap_or(false),
    };
    match st.journal.list(filter).await {
        Ok((jobs, next)) => Json(JobList {
            jobs: jobs.into_iter().map(views::job).collect(),
            next,
        })
        .into_response(),
        Err(e) => journal_error(e),
    }
}

/// Job counts per queue and state, from the journal's in-memory counts (cheap enough to
/// poll often).
async fn queues(AxState(st): AxState<State>) -> Response {
    let mut q: Vec<api::QueueStatus> = st
        .journal
        .stats()
        .queues
        .into_iter()
        .map(|(name, counts)| api::QueueStatus::new(name, counts))
        .collect();
    q.sort_by(|a, b| a.name.cmp(&b.name));
    Json(q).into_response()
}

async fn get_job(AxState(st): AxState<State>, JobId(id): JobId) -> Response {
    match st.journal.get(id).await {
        Ok(job) => Json(views::job(job)).into_response(),
        Err(e) => journal_error(e),
    }
}

async fn cancel(AxState(st): AxState<State>, JobId(id): JobId) -> Response {
    match ask(&st.requests, Request::Cancel(id)).await {
        Ok(Reply::Cancel(Ok(message))) => Json(Message { message }).into_response(),
        Ok(Reply::Cancel(Err(e))) if e.starts_with("no job") => error(StatusCode::NOT_FOUND, e),
        Ok(Reply::Cancel(Err(e))) => error(StatusCode::CONFLICT, e),
        Ok(_) => unexpected(),
        Err(r) => r,
    }
}

async fn retry(AxState(st): AxState<State>, JobId(id): JobId) -> Response {
    match st.journal.retry_wait(id).await {
        Ok(s) => {
            let queue = st
                .journal
                .get(id)
                .await
                .map(|j| j.queue)
                .unwrap_or_default();
            st.supervisor.jobs_added(&queue, s.run_at_ms);
            tracing::info!(JOB_ID = id, QUEUE = %queue, "job {id} queued again by steward retry");
            Json(Message {
                message: format!("job {id} is queued again"),
            })
            .into_response()
        }
        Err(e) => journal_error(e),
    }
}
