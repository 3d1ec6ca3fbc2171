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

/// A kept connection is used for at most this long, then a new one is opened: the
/// server's accepting of connections is probed at least once a minute.
pub const KEEP_AT_MOST: Duration = Duration::from_secs(60);

/// One worker's probes: its target, parsed once, and for HTTP the connection kept
/// between probes while the server allows it (`keep_alive`).
pub struct Prober {
    target: Target,
    http: Option<Http>,
}

struct Http {
    addr: String,
    request: Vec<u8>,
    keep_alive: bool,
    kept: Option<Kept>,
    answer: Vec<u8>,
}

/// A connection; closed with a reset when dropped, so that neither side keeps it in
/// TIME_WAIT (1,000 probes a second on new connections would hold 60,000 such sockets).
struct Kept {
    stream: tokio::net::TcpStream,
    opened: Instant,
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = self.stream.set_zero_linger();
    }
}

/// How an exchange on a connection ended without an answer to judge.
enum Broke {
    /// Nothing came back: on a kept connection, the server had closed it.
    Unanswered(String),
    Failed(String),
}

impl Prober {
    /// A prober of `target`; an HTTP target that does not parse fails every probe
    /// with the reason (the configuration checks it first).
    pub fn new(target: Target, keep_alive: bool) -> Prober {
        let http = match &target {
            Target::Http(url) => split_url(url).ok().map(|(addr, host, path)| Http {
                addr,
                request: request(&host, &path, keep_alive),
                keep_alive,
                kept: None,
                answer: Vec::with_capacity(1024),
            }),
            _ => None,
        };
        Prober { target, http }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether a connection is kept for the next probe.
    #[cfg(test)]
    fn holds_connection(&self) -> bool {
        self.http.as_ref().is_some_and(|h| h.kept.is_some())
    }

    /// Probe once, giving up after `timeout`.
    pub async fn run(&mut self, timeout: Duration) -> Outcome {
        let t0 = Instant::now();
        let result = match (&self.target, &mut self.http) {
            (Target::Http(_), Some(h)) => tokio::time::timeout(timeout, h.probe()).await,
            (Target::Http(url), None) => Ok(split_url(url).map(|_| (false, String::new(), None))),
            (Target::Tcp(addr), _) => tokio::time::timeout(timeout, tcp(addr)).await,
            (Target::Exec(_), _) => Ok(Err("a command probe is started by the supervisor".into())),
        };
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
            // The connection of a probe cut short was dropped with it.
            Err(_) => Outcome {
                ok: false,
                detail: format!("no answer within {}", humantime::format_duration(timeout)),
                snippet: None,
                latency,
            },
        }
    }
}

type Found = (bool, String, Option<String>);

/// The GET of a probe; without `keep_alive` it asks the server to close the connection.
fn request(host: &str, path: &str, keep_alive: bool) -> Vec<u8> {
    let close = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: steward-health\r\n{close}\r\n")
        .into_bytes()
}

async fn tcp(addr: &str) -> Result<Found, String> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(|_| (true, "connected".to_string(), None))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

impl Http {
    /// One GET: on the kept connection if there is one young enough (and on a new one
    /// if the server had closed it), else on a new one. Only a connection whose answer
    /// passed, was whole and leaves it open is kept.
    async fn probe(&mut self) -> Result<Found, String> {
        if let Some(mut k) = self.kept.take() {
            if k.opened.elapsed() < KEEP_AT_MOST {
                match exchange(&mut k.stream, &self.request, &mut self.answer).await {
                    Ok((found, reusable)) => {
                        if found.0 && reusable {
                            self.kept = Some(k);
                        }
                        return Ok(found);
                    }
                    Err(Broke::Unanswered(_)) => {}
                    Err(Broke::Failed(why)) => return Err(why),
                }
            }
        }
        let stream = tokio::net::TcpStream::connect(self.addr.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let mut k = Kept {
            stream,
            opened: Instant::now(),
        };
        match exchange(&mut k.stream, &self.request, &mut self.answer).await {
            Ok((found, reusable)) => {
                if found.0 && reusable && self.keep_alive {
                    self.kept = Some(k);
                }
                Ok(found)
            }
            Err(Broke::Unanswered(why) | Broke::Failed(why)) => Err(why),
        }
    }
}

/// What a probe needs of an answer's head.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    status: Option<u16>,
    /// HTTP/1.1 without `Connection: close`, with a `Content-Length` and no
    /// `Transfer-Encoding`: the connection can carry the next probe once the body is read.
    reusable_length: Option<usize>,
}

fn head(bytes: &[u8]) -> Head {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .starts_with("HTTP/")
        .then(|| status_line.split(' ').nth(1).and_then(|c| c.parse().ok()))
        .flatten();
    let (mut length, mut close, mut coded) = (None, !status_line.starts_with("HTTP/1.1 "), false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value.to_ascii_lowercase().contains("close");
        }
    }
    Head {
        status,
        reusable_length: length.filter(|n| !close && !coded && *n <= HTTP_READ),
    }
}

/// Send `request` on `stream` and read the answer into `answer`: what it says, and
/// whether the connection can carry another request.
async fn exchange(
    stream: &mut tokio::net::TcpStream,
    request: &[u8],
    answer: &mut Vec<u8>,
) -> Result<(Found, bool), Broke> {
    answer.clear();
    stream
        .write_all(request)
        .await
        .map_err(|e| Broke::Unanswered(format!("cannot send the request: {e}")))?;
    let mut chunk = [0u8; 4096];
    let mut reusable = false;
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if answer.is_empty() => {
                return Err(Broke::Unanswered(format!("cannot read the answer: {e}")));
            }
            Err(e) => return Err(Broke::Failed(format!("cannot read the answer: {e}"))),
        };
        if n == 0 {
            if answer.is_empty() {
                return Err(Broke::Unanswered(
                    "the server closed the connection without answering".into(),
                ));
            }
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() >= HTTP_READ {
            break;
        }
        let Some(h) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let facts = head(&answer[..h]);
        if !facts.status.is_some_and(|s| (200..400).contains(&s)) {
            // A failing answer: enough of its body for the snippet.
            if answer.len() >= h + 4 + SNIPPET
                || facts
                    .reusable_length
                    .is_some_and(|l| answer.len() >= h + 4 + l)
            {
                break;
            }
            continue;
        }
        // A passing answer: its head is all that is needed, and its whole body (when
        // its length is known) leaves the connection ready for the next request.
        match facts.reusable_length {
            Some(l) if answer.len() < h + 4 + l => continue,
            Some(l) => {
                reusable = answer.len() == h + 4 + l;
                break;
            }
            None => break,
        }
    }
    let text = String::from_utf8_lossy(answer);
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(answer.len());
    let Some(status) = head(&answer[..head_end]).status else {
        return Err(Broke::Failed("the answer is not HTTP".to_string()));
    };
    let ok = (200..400).contains(&status);
    let snippet = (!ok).then(|| {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        body.chars().take(SNIPPET).collect::<String>()
    });
    Ok((
        (
            ok,
            format!("HTTP {status}"),
            snippet.filter(|s| !s.is_empty()),
        ),
        reusable && ok,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        assert_eq!(head(b"HTTP/1.1 204 No Content").status, Some(204));
        assert_eq!(head(b"HTTP/1.0 302 Found").status, Some(302));
        assert_eq!(head(b"SSH-2.0-OpenSSH 2").status, None);
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn only_a_whole_http_1_1_answer_of_known_length_leaves_the_connection_open() {
        let kept = |h: &str| head(h.as_bytes()).reusable_length;
        assert_eq!(kept("HTTP/1.1 200 OK\r\nContent-Length: 2"), Some(2));
        assert_eq!(kept("HTTP/1.1 200 OK\r\ncontent-length:  0 "), Some(0));
        assert_eq!(
            kept("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Close"),
            None
        );
        assert_eq!(kept("HTTP/1.0 200 OK\r\nContent-Length: 2"), None);
        assert_eq!(kept("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"), None);
        assert_eq!(kept("HTTP/1.1 200 OK"), None);
        assert_eq!(kept("HTTP/1.1 200 OK\r\nContent-Length: 99999999"), None);
        assert_eq!(kept("HTTP/1.1 200 OK\r\nContent-Length: x"), None);
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
        let mut prober = Prober::new(url, true);
        let ok = prober.run(Duration::from_secs(5)).await;
        assert!(ok.ok, "{ok:?}");
        assert_eq!(ok.detail, "HTTP 200");
        let bad = prober.run(Duration::from_secs(5)).await;
        assert!(!bad.ok);
        assert_eq!(bad.detail, "HTTP 503");
        assert_eq!(bad.snippet.as_deref(), Some("db is up"));
        // Nobody listens any more.
        let gone = Prober::new(Target::Tcp(format!("127.0.0.1:{port}")), true)
            .run(Duration::from_secs(5))
            .await;
        assert!(!gone.ok);
        assert!(gone.detail.contains("cannot connect"), "{gone:?}");
        // A server that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let t0 = Instant::now();
        let mut prober = Prober::new(Target::Http(format!("http://127.0.0.1:{port}/")), true);
        let hung = prober.run(Duration::from_millis(300)).await;
        assert!(!hung.ok);
        assert!(hung.detail.contains("no answer within"), "{hung:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!prober.holds_connection());
        drop(silent);
    }

    /// A server answering every request of a connection with `status`, until the
    /// connection ends or `per_connection` answers were given (then it closes it without
    /// saying so, as a server's idle timeout does); counts connections and answers.
    async fn keeping_server(
        per_connection: usize,
        status: &'static str,
    ) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (conns, answers) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, a) = (conns.clone(), answers.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let a = a.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    for _ in 0..per_connection {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        }
                        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        (port, conns, answers)
    }

    #[tokio::test]
    async fn a_connection_the_server_keeps_carries_the_next_probes() {
        let t = Duration::from_secs(5);
        let (port, conns, answers) = keeping_server(usize::MAX, "200 OK").await;
        let url = Target::Http(format!("http://127.0.0.1:{port}/health"));
        let mut kept = Prober::new(url.clone(), true);
        for _ in 0..5 {
            let o = kept.run(t).await;
            assert!(o.ok, "{o:?}");
        }
        assert!(kept.holds_connection());
        assert_eq!(
            (conns.load(Ordering::SeqCst), answers.load(Ordering::SeqCst)),
            (1, 5)
        );
        // keep_alive = false: a connection each.
        let mut fresh = Prober::new(url, false);
        for _ in 0..3 {
            assert!(fresh.run(t).await.ok);
        }
        assert!(!fresh.holds_connection());
        assert_eq!(conns.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_replaced_without_a_failure() {
        let t = Duration::from_secs(5);
        // Each connection answers twice, then the server drops it unannounced.
        let (port, conns, answers) = keeping_server(2, "200 OK").await;
        let mut p = Prober::new(Target::Http(format!("http://127.0.0.1:{port}/")), true);
        for i in 0..6 {
            let o = p.run(t).await;
            assert!(o.ok, "probe {i}: {o:?}");
            // Give the server's close time to arrive at some of the probes, not all.
            if i % 2 == 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_eq!(
            (conns.load(Ordering::SeqCst), answers.load(Ordering::SeqCst)),
            (3, 6)
        );
    }

    #[tokio::test]
    async fn a_failing_answer_is_never_followed_on_the_same_connection() {
        let t = Duration::from_secs(5);
        let (port, conns, _) = keeping_server(usize::MAX, "503 Service Unavailable").await;
        let mut p = Prober::new(Target::Http(format!("http://127.0.0.1:{port}/")), true);
        for _ in 0..3 {
            let o = p.run(t).await;
            assert!(!o.ok);
            assert_eq!(o.detail, "HTTP 503");
            assert_eq!(o.snippet.as_deref(), Some("ok"));
        }
        assert!(!p.holds_connection());
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }
}
