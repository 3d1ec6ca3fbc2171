//! Health probes of a worker: an HTTP GET or a TCP connect, each bounded by a timeout,
//! run here; a command (`exec`) is started by the supervisor, which reaps every child,
//! and judged here by [`exec_outcome`]. What a run of results means is
//! `supervisor::health`'s.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One probe, with the worker's own values (`{port}`, `{instance}`) filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port/path`: success is a status from 200 to 399 (redirects are not
    /// followed).
    Http(String),
    /// `host:port`: success is an accepted connection.
    Tcp(String),
    /// A command (program and arguments): success is exit code 0.
    Exec(Vec<String>),
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// What happened, for the operator: `HTTP 200`, `connection refused`, `timed out
    /// after 5s`, `exit code 1`…
    pub detail: String,
    /// The first bytes of a failing answer's body.
    pub snippet: Option<String>,
    pub latency: Duration,
}

/// The most of a failing answer kept.
pub const SNIPPET: usize = 256;
/// The most of an HTTP answer read (status line, headers and the start of the body).
const HTTP_READ: usize = 16 * 1024;

/// Run `target` once, giving up after `timeout`.
pub async fn run(target: &Target, timeout: Duration) -> Outcome {
    let t0 = Instant::now();
    let result = tokio::time::timeout(timeout, attempt(target)).await;
    let latency = t0.elapsed();
    match result {
        Ok(Ok((ok, detail, snippet))) => Outcome {
            ok,
            detail,
            snippet,
            latency,
        },
        Ok(Err(detail)) => Outcome {
            ok: false,
            detail,
            snippet: None,
            latency,
        },
        Err(_) => Outcome {
            ok: false,
            detail: format!("no answer within {}", humantime::format_duration(timeout)),
            snippet: None,
            latency,
        },
    }
}

type Found = (bool, String, Option<String>);

async fn attempt(target: &Target) -> Result<Found, String> {
    match target {
        Target::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map(|_| (true, "connected".to_string(), None))
            .map_err(|e| format!("cannot connect to {addr}: {e}")),
        Target::Http(url) => http_get(url).await,
        Target::Exec(_) => Err("a command probe is started by the supervisor".into()),
    }
}

/// What an `exec` probe found: its exit, whether it was killed for running past
/// `timeout`, and the start of what it wrote (kept when it failed).
pub fn exec_outcome(
    exit: crate::model::Exit,
    timed_out: Option<Duration>,
    output: &[u8],
    latency: Duration,
) -> Outcome {
    use crate::model::Exit;
    let ok = timed_out.is_none() && exit == Exit::Code(0);
    let detail = match timed_out {
        Some(t) => format!("no answer within {}", humantime::format_duration(t)),
        None => crate::model::describe_exit(exit),
    };
    let text = String::from_utf8_lossy(&output[..output.len().min(SNIPPET)]);
    let snippet = (!ok && !text.trim().is_empty()).then(|| text.trim().to_string());
    Outcome {
        ok,
        detail,
        snippet,
        latency,
    }
}

/// `http://host[:port]/path` split into the address to connect to, the Host header and
/// the path.
pub fn split_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL (https is not probed: probe the port with tcp, or the plain port behind the TLS)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} has no host (or has user information)"));
    }
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        || authority.ends_with(']') && authority.contains("]:")
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_string(), path.to_string()))
}

/// Whether an answer's status line says 2xx or 3xx.
fn passing(answer: &[u8]) -> bool {
    answer.starts_with(b"HTTP/")
        && matches!(answer.iter().position(|b| *b == b' '), Some(i) if matches!(answer.get(i + 1), Some(b'2' | b'3')))
}

async fn http_get(url: &str) -> Result<Found, String> {
    let (addr, host, path) = split_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(addr.as_str())
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: steward-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        let head_done = answer.windows(4).position(|w| w == b"\r\n\r\n");
        // A passing answer's body is not kept: its head is all that is needed.
        if answer.len() >= HTTP_READ
            || head_done.is_some_and(|h| answer.len() >= h + 4 + SNIPPET || passing(&answer))
        {
            break;
        }
    }
    // Closed with a reset: the probe has what it needs, and neither side keeps the
    // connection in TIME_WAIT (1,000 probes a second would hold 60,000 such sockets).
    let _ = stream.set_zero_linger();
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split("\r\n")
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "the answer is not HTTP".to_string())?;
    let ok = (200..400).contains(&status);
    let snippet = (!ok).then(|| {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        body.chars().take(SNIPPET).collect::<String>()
    });
    Ok((
        ok,
        format!("HTTP {status}"),
        snippet.filter(|s| !s.is_empty()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8081/health").unwrap(),
            (
                "127.0.0.1:8081".into(),
                "127.0.0.1:8081".into(),
                "/health".into()
            )
        );
        assert_eq!(
            split_url("http://example/").unwrap().0,
            "example:80".to_string()
        );
        assert_eq!(split_url("http://[::1]:9000").unwrap().2, "/");
        assert!(passing(b"HTTP/1.1 204 No Content\r\n"));
        assert!(passing(b"HTTP/1.0 302 Found\r\n"));
        assert!(!passing(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!passing(b"SSH-2.0-OpenSSH 2"));
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn a_command_probe_passes_on_exit_code_0_only_and_keeps_what_a_failure_wrote() {
        use crate::model::Exit;
        let ms = Duration::from_millis(3);
        let ok = exec_outcome(Exit::Code(0), None, b"fine\n", ms);
        assert!(ok.ok);
        assert_eq!((ok.detail.as_str(), ok.snippet), ("exit code 0", None));
        let bad = exec_outcome(Exit::Code(2), None, "x".repeat(1000).as_bytes(), ms);
        assert!(!bad.ok);
        assert_eq!(bad.detail, "exit code 2");
        assert_eq!(bad.snippet.unwrap().len(), SNIPPET);
        let hung = exec_outcome(
            Exit::Signal(9),
            Some(Duration::from_secs(5)),
            b"",
            Duration::from_secs(5),
        );
        assert!(!hung.ok);
        assert_eq!(
            (hung.detail.as_str(), hung.snippet),
            ("no answer within 5s", None)
        );
        // Exit 0 after its time was up still fails: it was killed for it.
        assert!(!exec_outcome(Exit::Code(0), Some(ms), b"", ms).ok);
    }

    #[tokio::test]
    async fn probes_say_what_they_found() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 8\r\n\r\ndb is up");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let url = Target::Http(format!("http://127.0.0.1:{port}/health"));
        let ok = run(&url, Duration::from_secs(5)).await;
        assert!(ok.ok, "{ok:?}");
        assert_eq!(ok.detail, "HTTP 200");
        let bad = run(&url, Duration::from_secs(5)).await;
        assert!(!bad.ok);
        assert_eq!(bad.detail, "HTTP 503");
        assert_eq!(bad.snippet.as_deref(), Some("db is up"));
        // Nobody listens any more.
        let gone = run(
            &Target::Tcp(format!("127.0.0.1:{port}")),
            Duration::from_secs(5),
        )
        .await;
        assert!(!gone.ok);
        assert!(gone.detail.contains("cannot connect"), "{gone:?}");
        // A server that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let t0 = Instant::now();
        let hung = run(
            &Target::Http(format!("http://127.0.0.1:{port}/")),
            Duration::from_millis(300),
        )
        .await;
        assert!(!hung.ok);
        assert!(hung.detail.contains("no answer within"), "{hung:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(silent);
    }
}
