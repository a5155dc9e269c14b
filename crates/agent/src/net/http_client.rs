//! `HttpClient`: the agent's calls to the backend (register, status, update check, errors) and
//! the package download.
//!
//! Every call has a timeout; the credential travels only in the `Authorization` header and is
//! never logged. Downloads stream to disk, resume a partial file with an HTTP Range request and
//! never write a byte past the expected length (an endless response is an attack, not a file).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use cms_protocol::{
    BUILD_VERSION, ErrorBatch, ErrorBatchResponse, ErrorReport, RegisterRequest, RegisterResponse,
    StatusReport, UpdateCheckResponse, UpdateInfo, paths,
};
use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::core::config::Credentials;
use crate::net::endpoint;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const ERROR_CALL_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait after a 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest wait a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest error body quoted in a message.
const MAX_QUOTED_BODY: usize = 300;

/// What went wrong in one exchange with the backend.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The call needs a credential and the agent has not registered yet.
    #[error("not registered with the server yet")]
    NotRegistered,
    /// The server does not (or no longer) accept this agent's credential.
    #[error("the server rejected this agent's credential ({what})")]
    Unauthorized {
        /// Which call.
        what: &'static str,
    },
    /// The server is throttling this agent; the same call may succeed after `retry_after`.
    #[error("{what}: the server asks to slow down; retry in {} s", retry_after.as_secs())]
    RateLimited {
        /// Which call.
        what: &'static str,
        /// How long to wait (the server's `Retry-After`, bounded).
        retry_after: Duration,
    },
    /// The server answered with an unexpected status.
    #[error("{what}: server answered {status}: {body}")]
    Status {
        /// Which call.
        what: &'static str,
        /// The status code.
        status: StatusCode,
        /// The start of the body, for the operator.
        body: String,
    },
    /// The server could not be reached or the exchange broke off.
    #[error("{what}: cannot reach the server: {source}")]
    Transport {
        /// Which call.
        what: &'static str,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The server sent more bytes than the expected (signed) length.
    #[error("download of {url} exceeded the expected {expected} bytes; discarded")]
    TooLong {
        /// What was downloaded.
        url: String,
        /// The length the download must not exceed.
        expected: u64,
    },
    /// The server closed the download early; the partial file is kept for a resume.
    #[error("download of {url} stopped at {received} of {expected} bytes; will resume")]
    Incomplete {
        /// What was downloaded.
        url: String,
        /// Bytes on disk now.
        received: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// The download target could not be written.
    #[error("cannot write download to {path}: {source}")]
    Io {
        /// The target file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// The agent's HTTP side of the backend API.
#[derive(Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    base: Url,
    credentials: RwLock<Option<Credentials>>,
}

impl HttpClient {
    /// A client for the backend at `base` (already checked by `parse_server_url`).
    pub fn new(base: Url) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            .user_agent(format!("cms-agent/{BUILD_VERSION}"))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|source| HttpError::Transport {
                what: "client setup",
                source,
            })?;
        Ok(HttpClient {
            client,
            base,
            credentials: RwLock::new(None),
        })
    }

    /// The underlying client, for fetches that share its TLS settings (signed metadata).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The backend base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Uses `credentials` for every later call.
    pub fn set_credentials(&self, credentials: Credentials) {
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Some(credentials);
    }

    /// Forgets a credential the server rejected.
    pub fn clear_credentials(&self) {
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether calls that need a credential can be made.
    pub fn is_registered(&self) -> bool {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The current bearer token, for the WebSocket handshake.
    pub fn bearer_token(&self) -> Option<String> {
        let credentials = self.credentials.read().unwrap_or_else(|p| p.into_inner());
        credentials.as_ref().map(|c| c.agent_token.clone())
    }

    /// Enrolls this machine; the caller stores the returned identity.
    pub async fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse, HttpError> {
        let what = "register";
        let builder = self
            .client
            .post(endpoint(&self.base, paths::REGISTER))
            .json(request);
        json_of(what, send(what, builder.timeout(CALL_TIMEOUT)).await?).await
    }

    /// Sends the heartbeat.
    pub async fn send_status(&self, report: &StatusReport) -> Result<(), HttpError> {
        let what = "status";
        let builder = self.authed(self.client.post(endpoint(&self.base, paths::STATUS)))?;
        send(what, builder.json(report).timeout(CALL_TIMEOUT))
            .await
            .map(drop)
    }

    /// Asks whether a newer release is waiting for this agent.
    pub async fn check_for_update(
        &self,
        version: &str,
        platform: &str,
    ) -> Result<Option<UpdateInfo>, HttpError> {
        let what = "update check";
        let builder = self.authed(self.client.get(endpoint(&self.base, paths::UPDATE_CHECK)))?;
        let query = [("version", version), ("platform", platform)];
        let response = send(what, builder.query(&query).timeout(CALL_TIMEOUT)).await?;
        Ok(json_of::<UpdateCheckResponse>(what, response).await?.update)
    }

    /// Posts error reports; the server stores each `report_id` once.
    pub async fn report_errors(
        &self,
        reports: &[ErrorReport],
    ) -> Result<ErrorBatchResponse, HttpError> {
        let what = "error report";
        let batch = ErrorBatch {
            reports: reports.to_vec(),
        };
        let builder = self.authed(self.client.post(endpoint(&self.base, paths::ERRORS)))?;
        json_of(
            what,
            send(what, builder.json(&batch).timeout(ERROR_CALL_TIMEOUT)).await?,
        )
        .await
    }

    /// Downloads `url` (absolute, or relative to the base) to `target`, resuming a partial file;
    /// fails without keeping the file if the server sends more than `expected_len` bytes.
    pub async fn download_file(
        &self,
        url: &str,
        target: &Path,
        expected_len: u64,
    ) -> Result<u64, HttpError> {
        let url = self.resolve(url);
        let mut received = partial_len(target, expected_len).await?;
        if received == expected_len {
            return Ok(received);
        }
        let mut builder = self.authed(self.client.get(&url))?;
        if received > 0 {
            builder = builder.header(header::RANGE, format!("bytes={received}-"));
        }
        let response = send("download", builder).await?;
        let append = received > 0 && response.status() == StatusCode::PARTIAL_CONTENT;
        if !append {
            received = 0;
        }
        let mut file = open_target(target, append).await?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| HttpError::Transport {
                what: "download",
                source,
            })?;
            received += chunk.len() as u64;
            if received > expected_len {
                drop(file);
                let _ = tokio::fs::remove_file(target).await;
                return Err(HttpError::TooLong {
                    url,
                    expected: expected_len,
                });
            }
            file.write_all(&chunk)
                .await
                .map_err(|source| io_err(target, source))?;
        }
        file.sync_all()
            .await
            .map_err(|source| io_err(target, source))?;
        if received < expected_len {
            return Err(HttpError::Incomplete {
                url,
                received,
                expected: expected_len,
            });
        }
        Ok(received)
    }

    fn resolve(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            endpoint(&self.base, url)
        }
    }

    fn authed(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, HttpError> {
        let token = self.bearer_token().ok_or(HttpError::NotRegistered)?;
        Ok(builder.bearer_auth(token))
    }
}

/// Length of a partial download worth resuming; anything longer than expected starts over.
async fn partial_len(target: &Path, expected_len: u64) -> Result<u64, HttpError> {
    match tokio::fs::metadata(target).await {
        Ok(meta) if meta.len() <= expected_len => Ok(meta.len()),
        Ok(_) => {
            tokio::fs::remove_file(target)
                .await
                .map_err(|source| io_err(target, source))?;
            Ok(0)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(io_err(target, source)),
    }
}

async fn open_target(target: &Path, append: bool) -> Result<tokio::fs::File, HttpError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.create(true).write(true);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    options
        .open(target)
        .await
        .map_err(|source| io_err(target, source))
}

fn io_err(path: &Path, source: io::Error) -> HttpError {
    HttpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

async fn send(
    what: &'static str,
    builder: reqwest::RequestBuilder,
) -> Result<reqwest::Response, HttpError> {
    let response = builder
        .send()
        .await
        .map_err(|source| HttpError::Transport { what, source })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(HttpError::Unauthorized { what });
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = retry_after(response.headers().get(header::RETRY_AFTER));
        return Err(HttpError::RateLimited { what, retry_after });
    }
    let mut body = response.text().await.unwrap_or_default();
    body.truncate(body.floor_char_boundary(MAX_QUOTED_BODY));
    Err(HttpError::Status { what, status, body })
}

/// The wait a `Retry-After: SECONDS` header asks for, within [`MAX_RETRY_AFTER`] (the HTTP-date
/// form, which this server never sends, counts as absent).
fn retry_after(header: Option<&header::HeaderValue>) -> Duration {
    header
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}

async fn json_of<T: DeserializeOwned>(
    what: &'static str,
    response: reqwest::Response,
) -> Result<T, HttpError> {
    response
        .json()
        .await
        .map_err(|source| HttpError::Transport { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_and_bounded() {
        let value = |text: &str| header::HeaderValue::from_str(text).unwrap();
        assert_eq!(retry_after(Some(&value("7"))), Duration::from_secs(7));
        assert_eq!(retry_after(Some(&value("999999"))), MAX_RETRY_AFTER);
        let date = value("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(retry_after(Some(&date)), DEFAULT_RETRY_AFTER);
        assert_eq!(retry_after(None), DEFAULT_RETRY_AFTER);
    }
}
