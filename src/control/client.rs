//! A small HTTP/1.1 client for the control socket, used by the CLI commands.

use std::io;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::ApiError;

/// How long a client waits for one answer.
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
}

pub struct Client {
    socket: PathBuf,
}

pub struct RawResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send one request and return the raw answer, whatever its status. A daemon that
    /// does not answer within [`TIMEOUT`] is reported, not waited for forever.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        match tokio::time::timeout(TIMEOUT, self.raw_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Protocol {
                path: self.socket.clone(),
                detail: format!(
                    "no answer within {}s; steward may be stuck (see journalctl -u steward; systemctl restart steward)",
                    TIMEOUT.as_secs()
                ),
            }),
        }
    }

    async fn raw_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                    path: self.socket.clone(),
                },
                _ => ClientError::Unavailable {
                    path: self.socket.clone(),
                    source: e,
                },
            })?;
        let proto = |detail: String| ClientError::Protocol {
            path: self.socket.clone(),
            detail,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| proto(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        Ok(RawResponse { status, body })
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
            let message = serde_json::from_slice::<ApiError>(&res.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("steward answered {}", res.status));
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
