//! A small HTTP/1.1 client for the control socket, used by the CLI commands.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ApiError;

/// How long a client waits for one answer, unless told otherwise (`--request-timeout`).
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a request failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon is not there (no socket, or nobody listening).
    #[error(
        "cannot reach steward at {path}: {source} (is steward running? systemctl status steward)"
    )]
    Unavailable { path: PathBuf, source: io::Error },
    #[error(
        "permission denied on {path}: add your user to group steward (sudo usermod -aG steward $USER, then log in again) or use sudo"
    )]
    PermissionDenied { path: PathBuf },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        status: StatusCode,
        message: String,
        body: Bytes,
    },
    #[error("talking to steward at {path} failed: {detail}")]
    Protocol { path: PathBuf, detail: String },
    /// No answer in time (the daemon stuck or overloaded, or its socket's backlog full).
    #[error(
        "steward at {path} did not answer within {}s: it may be stuck or overloaded (see systemctl status steward and journalctl -u steward); --request-timeout sets how long to wait",
        after.as_secs_f64()
    )]
    Timeout {
        path: PathBuf,
        after: std::time::Duration,
    },
}

pub struct Client {
    socket: PathBuf,
    timeout: std::time::Duration,
}

pub struct RawResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Self::with_timeout(socket, TIMEOUT)
    }

    /// A client that waits at most `timeout` for each answer.
    pub fn with_timeout(socket: &Path, timeout: std::time::Duration) -> Client {
        Client {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    /// Send one request and return the raw answer, whatever its status. A daemon that
    /// does not answer within the client's timeout is reported, not waited for forever:
    /// the exchange runs on a thread of its own, since connecting to a socket whose
    /// backlog is full blocks however the socket is set up.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (socket, timeout, path) = (self.socket.clone(), self.timeout, path.to_string());
        let worker = std::thread::Builder::new()
            .name("steward-request".into())
            .spawn(move || {
                let _ = tx.send(exchange(&socket, timeout, method, &path, body));
            });
        if worker.is_err() {
            return Err(ClientError::Protocol {
                path: self.socket.clone(),
                detail: "cannot start a thread for the request".into(),
            });
        }
        rx.recv_timeout(self.timeout)
            .unwrap_or(Err(ClientError::Timeout {
                path: self.socket.clone(),
                after: self.timeout,
            }))
    }

    /// Send a request and decode a successful JSON answer; an error status becomes
    /// [`ClientError::Api`] with the daemon's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::Protocol {
                path: self.socket.clone(),
                detail: e.to_string(),
            })?),
            None => None,
        };
        let res = self.raw(method, path, body).await?;
        if !res.status.is_success() {
            let message = api_message(res.status, &res.body);
            return Err(ClientError::Api {
                status: res.status,
                message,
                body: res.body,
            });
        }
        serde_json::from_slice(&res.body).map_err(|e| ClientError::Protocol {
            path: self.socket.clone(),
            detail: format!("unexpected answer: {e}"),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }
}

/// The daemon's words for a refusal: its `{"error": …}`, or else whatever text it sent.
fn api_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("steward answered {status} without saying why; see journalctl -u steward")
    } else {
        let mut shown: String = text.chars().take(500).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        format!("steward answered {status}: {shown}")
    }
}

/// One request and its answer, blocking, on a connection of its own.
fn exchange(
    socket: &Path,
    timeout: std::time::Duration,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<RawResponse, ClientError> {
    // One request per connection, blocking: a CLI process makes one call at a time,
    // and this is measurably cheaper to start than an async HTTP stack.
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: socket.to_path_buf(),
        },
        _ => ClientError::Unavailable {
            path: socket.to_path_buf(),
            source: e,
        },
    })?;
    let proto = |detail: String| ClientError::Protocol {
        path: socket.to_path_buf(),
        detail,
    };
    let timed_out = |e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout {
                path: socket.to_path_buf(),
                after: timeout,
            }
        } else {
            proto(e.to_string())
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| proto(e.to_string()))?;
    let body = body.unwrap_or_default();
    let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
    request.extend_from_slice(&body);
    // The daemon may refuse a request (a body over its limit) and close before it has
    // read all of it: the write then fails, but its answer is there to be read.
    let sent = stream.write_all(&request);
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    match (sent, read) {
        (Err(e), _) if answer.is_empty() => Err(timed_out(e)),
        (_, Err(e)) if answer.is_empty() => Err(timed_out(e)),
        _ => parse_response(&answer).map_err(proto),
    }
}

/// Split an HTTP/1.1 answer read to the end of the connection into status and body
/// (plain, with content-length, or chunked).
fn parse_response(raw: &[u8]) -> Result<RawResponse, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "the answer ended before its headers did".to_string())?;
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| "unreadable headers".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("unexpected status line `{status_line}`"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| "the answer ended before its body did".to_string())?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse {
        status: code,
        body: Bytes::from(body),
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| "a chunk ended early".to_string())?;
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap_or("");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| "a chunk ended early".to_string())?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_daemons_words() {
        let s = StatusCode::PAYLOAD_TOO_LARGE;
        assert_eq!(api_message(s, br#"{"error":"too big"}"#), "too big");
        assert_eq!(
            api_message(s, b"length limit exceeded\n"),
            "steward answered 413 Payload Too Large: length limit exceeded"
        );
        assert!(api_message(s, b"").contains("without saying why"));
        let long = "x".repeat(2000);
        assert!(api_message(s, long.as_bytes()).chars().count() < 600);
    }

    #[test]
    fn parses_length_chunked_and_truncated_answers() {
        let r =
            parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 8\r\n\r\n{\"id\":1}").unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(&r.body[..], b"{\"id\":1}");
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(&r.body[..], b"{\"a\":1}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
