//! The worker protocol, version 1: newline-delimited JSON over an inherited Unix stream
//! socket whose descriptor number is in `STEWARD_FD`.
//!
//! This module is the wire format only: parsing what workers send and writing what
//! steward sends. It never panics on input; every malformed line becomes an error message
//! that is logged and sent back to the worker.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest line accepted from a worker (a `done` with a large result included).
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest error kept from a `fail` (and from an exec job's stderr): it is stored with the
/// job and its attempt, shown by `steward status` and logged.
pub const MAX_ERROR: usize = 4096;
/// Longest progress message kept.
pub const MAX_MESSAGE: usize = 1024;

/// `text` cut to at most `max` bytes (at a character boundary), saying so.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let marker = format!("… [truncated: {total} bytes in all]");
    let mut cut = max.saturating_sub(marker.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&marker);
    text
}

/// A message from a worker.
#[derive(Debug)]
pub enum FromWorker {
    /// The worker is ready for jobs. No job is sent before it.
    Ready,
    /// Nothing to report; renews the leases the worker holds (as every line does).
    Heartbeat,
    Progress {
        id: i64,
        progress: Option<f64>,
        message: Option<String>,
    },
    Done {
        id: i64,
        /// The result as the worker wrote it (valid JSON).
        result: Option<Box<RawValue>>,
    },
    Fail {
        id: i64,
        error: Option<String>,
        /// Whether another attempt may succeed (default true).
        retry: bool,
    },
}

/// The wire shape: one flat object, so that the result can stay raw JSON.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    id: Option<i64>,
    progress: Option<f64>,
    message: Option<String>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<String>,
    retry: Option<bool>,
}

/// Parse one line (without its newline).
pub fn parse(line: &[u8]) -> Result<FromWorker, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the line is not valid UTF-8".to_string())?;
    if text.trim().is_empty() {
        return Err("empty line".into());
    }
    let w: Wire =
        serde_json::from_str(text).map_err(|e| format!("not a valid protocol message: {e}"))?;
    let Some(kind) = w.kind else {
        return Err("the message has no \"type\" field; expected {\"type\":\"ready\"}, heartbeat, progress, done or fail".into());
    };
    let id = |w: &Wire| {
        w.id.ok_or_else(|| format!("a \"{kind}\" message needs the job's \"id\""))
    };
    Ok(match kind {
        "ready" => FromWorker::Ready,
        "heartbeat" => FromWorker::Heartbeat,
        "progress" => FromWorker::Progress {
            id: id(&w)?,
            progress: w.progress,
            message: w.message.map(|m| truncate(m, MAX_MESSAGE)),
        },
        "done" => FromWorker::Done {
            id: id(&w)?,
            result: w.result.map(|r| r.to_owned()),
        },
        "fail" => FromWorker::Fail {
            id: id(&w)?,
            error: w.error.map(|e| truncate(e, MAX_ERROR)),
            retry: w.retry.unwrap_or(true),
        },
        other => {
            return Err(format!(
                "unknown message type \"{other}\"; expected ready, heartbeat, progress, done or fail"
            ));
        }
    })
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{"type":"job",...}` with the payload embedded as stored (it is valid JSON).
pub fn job_line(
    id: i64,
    queue: &str,
    attempt: u32,
    payload: &str,
    deadline: Option<&str>,
) -> String {
    let deadline = deadline.map(quote).unwrap_or_else(|| "null".into());
    format!(
        "{{\"type\":\"job\",\"id\":{id},\"queue\":{},\"attempt\":{attempt},\"payload\":{payload},\"deadline\":{deadline}}}\n",
        quote(queue)
    )
}

pub fn cancel_line(id: i64) -> String {
    format!("{{\"type\":\"cancel\",\"id\":{id}}}\n")
}

pub fn drain_line() -> String {
    "{\"type\":\"drain\"}\n".to_string()
}

/// Sent when steward rejects something the worker said.
pub fn error_line(message: &str) -> String {
    format!("{{\"type\":\"error\",\"message\":{}}}\n", quote(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_message() {
        assert!(matches!(
            parse(br#"{"type":"ready"}"#),
            Ok(FromWorker::Ready)
        ));
        assert!(matches!(
            parse(br#"{"type":"heartbeat","extra":1}"#),
            Ok(FromWorker::Heartbeat)
        ));
        match parse(br#"{"type":"progress","id":4,"progress":0.5,"message":"half"}"#) {
            Ok(FromWorker::Progress {
                id: 4,
                progress: Some(p),
                message: Some(m),
            }) => {
                assert_eq!(p, 0.5);
                assert_eq!(m, "half");
            }
            other => panic!("{other:?}"),
        }
        match parse(br#"{"type":"done","id":42,"result":{"a":[1,2]}}"#) {
            Ok(FromWorker::Done {
                id: 42,
                result: Some(r),
            }) => assert_eq!(r.get(), r#"{"a":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        match parse(br#"{"type":"fail","id":1,"error":"x"}"#) {
            Ok(FromWorker::Fail {
                id: 1, retry: true, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(br#"{"type":"fail","id":1,"retry":false}"#),
            Ok(FromWorker::Fail { retry: false, .. })
        ));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(
            parse(b"not json")
                .unwrap_err()
                .contains("not a valid protocol message")
        );
        assert!(
            parse(br#"{"type":"dance"}"#)
                .unwrap_err()
                .contains("unknown message type")
        );
        assert!(parse(br#"{"id":1}"#).unwrap_err().contains("no \"type\""));
        assert!(parse(br#"{"type":"done"}"#).is_err());
        assert!(parse(b"\xff\xfe").unwrap_err().contains("UTF-8"));
        assert!(parse(b"  ").is_err());
    }

    #[test]
    fn long_texts_are_cut_and_say_so() {
        assert_eq!(truncate("short".into(), 10), "short");
        let long = "é".repeat(5000);
        let cut = truncate(long, MAX_ERROR);
        assert!(cut.len() <= MAX_ERROR, "{}", cut.len());
        assert!(cut.ends_with("… [truncated: 10000 bytes in all]"), "{cut}");
        let line = format!(
            r#"{{"type":"fail","id":1,"error":"{}"}}"#,
            "x".repeat(100_000)
        );
        match parse(line.as_bytes()) {
            Ok(FromWorker::Fail { error: Some(e), .. }) => assert!(e.len() <= MAX_ERROR),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lines_are_json() {
        let l = job_line(7, "q", 2, r#"{"x":"y"}"#, Some("2026-01-01T00:00:00Z"));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["payload"]["x"], "y");
        assert_eq!(v["attempt"], 2);
        assert!(l.ends_with('\n'));
        let e: serde_json::Value = serde_json::from_str(&error_line("bad \"x\"\n")).unwrap();
        assert_eq!(e["message"], "bad \"x\"\n");
    }
}
