//! The API's JSON views, built from the journal's records.

use crate::api::{AttemptView, JobView};
use crate::model::{AttemptRecord, JobRecord};
use crate::time::rfc3339_ms;

/// Stored JSON text as a value (text that is not JSON, which no version writes, is shown
/// as a string rather than lost).
fn json(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

pub fn job(r: JobRecord) -> JobView {
    JobView {
        id: r.id,
        queue: r.queue,
        state: r.state.as_str().to_string(),
        priority: r.priority,
        payload: r.payload.map(json).unwrap_or(serde_json::Value::Null),
        result: r.result.map(|t| {
            if r.result_cut {
                serde_json::Value::String(t)
            } else {
                json(t)
            }
        }),
        error: r.error,
        attempts: r.attempts,
        tries: r.tries,
        max_attempts: r.max_attempts,
        crashes: r.crashes,
        interruptions: r.interruptions,
        key: r.key,
        created_at: rfc3339_ms(r.created_ms),
        run_at: rfc3339_ms(r.run_at_ms),
        finished_at: r.finished_ms.map(rfc3339_ms),
        worker: r.worker,
        progress: r.progress,
        progress_message: r.progress_message,
        history: r.history.into_iter().map(attempt).collect(),
    }
}

fn attempt(a: AttemptRecord) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        worker: a.worker,
        pid: a.pid,
        started_at: a.started_ms.map(rfc3339_ms),
        ended_at: a.ended_ms.map(rfc3339_ms),
        outcome: a.outcome,
        error: a.error,
        stdout: a.stdout,
        stderr: a.stderr,
    }
}
