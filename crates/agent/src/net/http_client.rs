//! `HttpClient`: the agent's calls to the backend (register, status, update check, errors) and
//! the package download.
//!
//! Every call has a timeout; the credential travels only in the `Authorization` header and is
//! never logged. Every answer is read with a cap: JSON bodies up to [`MAX_JSON_BODY`], error
//! bodies only as far as they are quoted, so a hostile or broken backend cannot make the agent
//! buffer an endless body. Downloads stream to disk, resume a partial file with an HTTP Range
//! request and never write a byte past the expected length (an endless response is an attack,
//! not a file), at most as fast as a [`Throttle`] lets them when one is given. A `503` with
//! `Retry-After` (the server's download budget is full) and a `429` come back as errors that
//! say how long to wait; waiting is the caller's decision.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cms_platform::fs::open_no_follow;
use cms_protocol::{
    BUILD_VERSION, ErrorBatch, ErrorBatchResponse, ErrorReport, NewCredential, RegisterRequest,
    RegisterResponse, StatusReport, UpdateCheckResponse, UpdateInfo, paths,
};
use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::net::proxy::Route;
use crate::net::servers::ServerList;
use crate::net::throttle::Throttle;
use crate::net::tls;
use crate::net::{
    Credentials, Transport, UrlError, endpoint, error_chain, parse_server_url, server_text,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const ERROR_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A kept-alive connection idle longer than this is not reused: the server closes one idle for
/// 10 s (its `--header-read-timeout-secs`), and a request sent on it just then is lost with
/// "connection closed before message completed".
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait after a 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest wait a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest error body quoted in a message (in characters, control characters escaped).
const MAX_QUOTED_BODY: usize = 300;
/// Largest JSON answer the agent reads (they are a few hundred bytes).
pub const MAX_JSON_BODY: usize = 1024 * 1024;

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
    /// An operator revoked this agent (410): it must not register again by itself.
    #[error("{what}: an operator revoked this agent on the server")]
    Revoked {
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
    /// The server is busy (503 with `Retry-After`: for a download, its download budget is
    /// full); the same call may succeed after `retry_after`.
    #[error("{what}: the server is busy; retry in {} s", retry_after.as_secs())]
    Busy {
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
    #[error("{what}: cannot reach the server: {}", error_chain(source))]
    Transport {
        /// Which call.
        what: &'static str,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The server's answer is larger than the agent reads.
    #[error("{what}: the server's answer is larger than {limit} bytes; refused")]
    TooLarge {
        /// Which call.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The server's answer is not what the API describes.
    #[error("{what}: the server's answer is not valid: {reason}")]
    BadAnswer {
        /// Which call.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
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
    /// A package URL the agent will not fetch (plain http to another machine, or no URL).
    #[error("refusing to download {url}: {source}")]
    RefusedUrl {
        /// The URL as offered.
        url: String,
        /// Why.
        source: UrlError,
    },
    /// The proxy setting cannot be given to the HTTP client.
    #[error("cannot use proxy {proxy}: {source}")]
    Proxy {
        /// The proxy, without credentials.
        proxy: String,
        /// What the HTTP client said.
        source: reqwest::Error,
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

impl HttpError {
    /// How long the server asked to wait before the same call (429, or 503 with
    /// `Retry-After`); `None` for every other error.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::RateLimited { retry_after, .. } | HttpError::Busy { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// The problem on the way to the backend, in words, when this error is one an operator
    /// must fix there (a refused certificate, a proxy that wants other credentials); `None`
    /// for everything else (the server down, a bad answer).
    pub fn network_problem(&self) -> Option<String> {
        match self {
            HttpError::Transport { source, .. } => {
                if let Some(problem) = tls::certificate_problem(source) {
                    return Some(format!("TLS: {problem}"));
                }
                let chain = error_chain(source);
                if chain.contains("proxy authorization required") {
                    Some(PROXY_AUTH_PROBLEM.to_owned())
                } else if chain.contains("tunnel error") {
                    Some(PROXY_TUNNEL_PROBLEM.to_owned())
                } else {
                    None
                }
            }
            HttpError::Status { status, .. }
                if *status == StatusCode::PROXY_AUTHENTICATION_REQUIRED =>
            {
                Some(PROXY_AUTH_PROBLEM.to_owned())
            }
            _ => None,
        }
    }
}

/// What a 407 from the proxy means for the operator.
const PROXY_AUTH_PROBLEM: &str = "proxy refused the credentials (407 Proxy Authentication Required); check the user and password given with --proxy";
/// What any other refused `CONNECT` means (some proxies answer a wrong password with 401).
const PROXY_TUNNEL_PROBLEM: &str = "proxy refused the tunnel to the server: check the user and password given with --proxy, and that the proxy allows CONNECT to the server's port";

/// The agent's HTTP side of the backend API.
#[derive(Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    servers: Arc<ServerList>,
    credentials: RwLock<Option<Credentials>>,
    /// Fired by the first call the server answers "revoked" (410).
    revoked: CancellationToken,
}

impl HttpClient {
    /// A client for the backend at `base` (already checked by `parse_server_url`), trusting
    /// and routing as `transport` says; it never looks at proxy settings of its own.
    pub fn new(base: Url, transport: &Transport) -> Result<Self, HttpError> {
        Self::with_servers(Arc::new(ServerList::single(base)), transport)
    }

    /// A client for a backend of several servers: calls go to the one in use, and one that
    /// cannot be reached makes the list move on to the next.
    pub fn with_servers(
        servers: Arc<ServerList>,
        transport: &Transport,
    ) -> Result<Self, HttpError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(format!("cms-agent/{BUILD_VERSION}"))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tls_backend_preconfigured((*transport.tls).clone())
            .no_proxy();
        if let Some(proxy) = client_proxy(&transport.route)? {
            builder = builder.proxy(proxy);
        }
        let client = builder.build().map_err(|source| HttpError::Transport {
            what: "client setup",
            source,
        })?;
        Ok(HttpClient {
            client,
            servers,
            credentials: RwLock::new(None),
            revoked: CancellationToken::new(),
        })
    }

    /// The underlying client, for fetches that share its TLS settings (signed metadata).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends one call to the server in use (`path` below its base); a server that cannot be
    /// reached or does not answer in time makes the list move on, for the next call.
    async fn call(
        &self,
        what: &'static str,
        path: &str,
        request: impl FnOnce(String) -> Result<reqwest::RequestBuilder, HttpError>,
    ) -> Result<reqwest::Response, HttpError> {
        let base = self.servers.current();
        let result = send(what, request(endpoint(&base, path))?).await;
        if let Err(HttpError::Transport { source, .. }) = &result
            && (source.is_connect() || source.is_timeout())
        {
            self.servers.failed(&base);
        }
        if let Err(HttpError::Revoked { .. }) = &result {
            self.revoked.cancel();
        }
        result
    }

    /// Fires once the server answered any call with "this agent was revoked".
    pub fn revoked(&self) -> &CancellationToken {
        &self.revoked
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
        let response = self
            .call(what, paths::REGISTER, |url| {
                Ok(self.client.post(url).json(request).timeout(CALL_TIMEOUT))
            })
            .await?;
        json_of(what, response).await
    }

    /// Proposes `agent_token` as this agent's next credential (rotation); the current one keeps
    /// working until the new one is used.
    pub async fn propose_credential(&self, agent_token: &str) -> Result<(), HttpError> {
        let body = NewCredential {
            agent_token: agent_token.to_owned(),
        };
        self.call("credential rotation", paths::CREDENTIAL, |url| {
            Ok(self
                .authed(self.client.post(url))?
                .json(&body)
                .timeout(CALL_TIMEOUT))
        })
        .await
        .map(drop)
    }

    /// Sends the heartbeat.
    pub async fn send_status(&self, report: &StatusReport) -> Result<(), HttpError> {
        self.call("status", paths::STATUS, |url| {
            Ok(self
                .authed(self.client.post(url))?
                .json(report)
                .timeout(CALL_TIMEOUT))
        })
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
        let offset = cms_platform::clock::local_utc_offset_minutes().map(|m| m.to_string());
        let mut query = vec![("version", version), ("platform", platform)];
        if let Some(offset) = offset.as_deref() {
            query.push(("utc_offset_minutes", offset));
        }
        let response = self
            .call(what, paths::UPDATE_CHECK, |url| {
                Ok(self
                    .authed(self.client.get(url))?
                    .query(&query)
                    .timeout(CALL_TIMEOUT))
            })
            .await?;
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
        let response = self
            .call(what, paths::ERRORS, |url| {
                let builder = self.authed(self.client.post(url))?;
                Ok(builder.json(&batch).timeout(ERROR_CALL_TIMEOUT))
            })
            .await?;
        json_of(what, response).await
    }

    /// Downloads `url` (absolute, or relative to the base) to `target`, resuming a partial file,
    /// no faster than `throttle` lets it; fails without keeping the file if the server sends
    /// more than `expected_len` bytes.
    pub async fn download_file(
        &self,
        url: &str,
        target: &Path,
        expected_len: u64,
        mut throttle: Option<&mut Throttle>,
    ) -> Result<u64, HttpError> {
        let url = self.resolve(url)?;
        let mut received = partial_len(target, expected_len).await?;
        if received == expected_len {
            return Ok(received);
        }
        let mut builder = self.client.get(url.as_str());
        if self.servers.is_backend(&url) {
            builder = self.authed(builder)?;
        }
        let url = url.to_string();
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
            if let Some(throttle) = throttle.as_deref_mut() {
                throttle.pass(chunk.len()).await;
            }
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

    /// An absolute package URL (a mirror's) or one relative to the base; either way https,
    /// or http to loopback only, as for the server itself.
    fn resolve(&self, url: &str) -> Result<Url, HttpError> {
        let absolute = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            endpoint(&self.servers.current(), url)
        };
        parse_server_url(&absolute).map_err(|source| HttpError::RefusedUrl {
            url: url.to_owned(),
            source,
        })
    }

    fn authed(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, HttpError> {
        let token = self.bearer_token().ok_or(HttpError::NotRegistered)?;
        Ok(builder.bearer_auth(token))
    }
}

/// The proxy for the HTTP client, with its Basic credentials and bypass list.
fn client_proxy(route: &Route) -> Result<Option<reqwest::Proxy>, HttpError> {
    let Route::Proxy { proxy, bypass, .. } = route else {
        return Ok(None);
    };
    let mut client_proxy =
        reqwest::Proxy::all(proxy.url().as_str()).map_err(|source| HttpError::Proxy {
            proxy: proxy.url().to_string(),
            source,
        })?;
    if let Some((user, password)) = proxy.credentials() {
        client_proxy = client_proxy.basic_auth(user, password);
    }
    Ok(Some(
        client_proxy.no_proxy(reqwest::NoProxy::from_string(bypass)),
    ))
}

/// Length of a partial download worth resuming; anything longer than expected starts over.
async fn partial_len(target: &Path, expected_len: u64) -> Result<u64, HttpError> {
    match tokio::fs::symlink_metadata(target).await {
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

/// The download's file in `updates/`, never opened through a link at its name.
async fn open_target(target: &Path, append: bool) -> Result<tokio::fs::File, HttpError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    let owned = target.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || open_no_follow(&owned, &mut options))
        .await
        .map_err(|e| io_err(target, io::Error::other(e)))?;
    opened
        .map(tokio::fs::File::from_std)
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
    if status == StatusCode::GONE {
        return Err(HttpError::Revoked { what });
    }
    let asked_wait = response.headers().get(header::RETRY_AFTER);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = retry_after(asked_wait);
        return Err(HttpError::RateLimited { what, retry_after });
    }
    if status == StatusCode::SERVICE_UNAVAILABLE
        && let Some(retry_after) = retry_after_secs(asked_wait)
    {
        return Err(HttpError::Busy { what, retry_after });
    }
    let (quoted, _) = read_capped(response, MAX_QUOTED_BODY)
        .await
        .unwrap_or_default();
    let body = server_text(&String::from_utf8_lossy(&quoted), MAX_QUOTED_BODY);
    Err(HttpError::Status { what, status, body })
}

/// The wait a `Retry-After: SECONDS` header asks for, within [`MAX_RETRY_AFTER`] (the HTTP-date
/// form, which this server never sends, counts as absent).
fn retry_after(header: Option<&header::HeaderValue>) -> Duration {
    retry_after_secs(header).unwrap_or(DEFAULT_RETRY_AFTER)
}

/// A `Retry-After: SECONDS` header's wait, within [`MAX_RETRY_AFTER`]; `None` when absent or
/// in another form.
fn retry_after_secs(header: Option<&header::HeaderValue>) -> Option<Duration> {
    header
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

async fn json_of<T: DeserializeOwned>(
    what: &'static str,
    response: reqwest::Response,
) -> Result<T, HttpError> {
    let too_large = HttpError::TooLarge {
        what,
        limit: MAX_JSON_BODY,
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JSON_BODY as u64)
    {
        return Err(too_large);
    }
    let (body, complete) = read_capped(response, MAX_JSON_BODY)
        .await
        .map_err(|source| HttpError::Transport { what, source })?;
    if !complete {
        return Err(too_large);
    }
    serde_json::from_slice(&body).map_err(|e| HttpError::BadAnswer {
        what,
        reason: server_text(&e.to_string(), MAX_QUOTED_BODY),
    })
}

/// Reads at most about `limit` bytes of the body (one chunk past it at most); `true` when that
/// was the whole body. The rest is never read: the connection is dropped with the response.
async fn read_capped(
    response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk?);
        if body.len() > limit {
            return Ok((body, false));
        }
    }
    Ok((body, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proxy::ProxySetting;
    use tokio::io::AsyncReadExt;

    fn registered_client(base: &str) -> HttpClient {
        let base = Url::parse(base).unwrap();
        let transport = Transport::new(&base, None, Some(&ProxySetting::Direct)).unwrap();
        let client = HttpClient::new(base, &transport).unwrap();
        client.set_credentials(Credentials {
            agent_id: "a".into(),
            agent_token: "agent-secret-token".into(),
        });
        client
    }

    /// A one-request HTTP server on loopback that answers `body` and returns the request head.
    async fn serve_once(body: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        serve_answer("200 OK", "", body).await
    }

    /// A one-request HTTP server answering `status` with the `headers` lines and `body`.
    async fn serve_answer(
        status: &'static str,
        headers: &'static str,
        body: &'static [u8],
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/package.zip", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(socket.read_u8().await.unwrap());
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.write_all(body).await.unwrap();
            String::from_utf8_lossy(&head).into_owned()
        });
        (url, served)
    }

    #[tokio::test]
    async fn the_credential_never_goes_to_another_origin() {
        let (mirror_url, served) = serve_once(b"package").await;
        let client = registered_client("http://127.0.0.1:9"); // the backend: another origin
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.zip");
        let received = client
            .download_file(&mirror_url, &target, 7, None)
            .await
            .unwrap();
        assert_eq!(received, 7);
        let head = served.await.unwrap().to_ascii_lowercase();
        assert!(!head.contains("authorization"), "{head}");
    }

    #[tokio::test]
    async fn the_backend_itself_gets_the_credential() {
        let (package_url, served) = serve_once(b"package").await;
        let base = package_url.trim_end_matches("/package.zip");
        let client = registered_client(base);
        let dir = tempfile::tempdir().unwrap();
        client
            .download_file("/package.zip", &dir.path().join("p.zip"), 7, None)
            .await
            .unwrap();
        let head = served.await.unwrap().to_ascii_lowercase();
        assert!(
            head.contains("authorization: bearer agent-secret-token"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn plain_http_to_another_machine_is_refused_before_connecting() {
        let client = registered_client("https://backend.example");
        let dir = tempfile::tempdir().unwrap();
        let err = client
            .download_file(
                "http://mirror.example/p.zip",
                &dir.path().join("p.zip"),
                1,
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::RefusedUrl { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_busy_download_says_how_long_to_wait_and_writes_nothing() {
        let error =
            br#"{"error": "the server is sending 2 packages at once, its most; retry shortly"}"#;
        let (url, _served) = serve_answer(
            "503 Service Unavailable",
            "Retry-After: 2\r\nContent-Type: application/json\r\n",
            error,
        )
        .await;
        let client = registered_client("http://127.0.0.1:9");
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.zip");
        let err = client
            .download_file(&url, &target, 7, None)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Busy { .. }), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        assert!(!target.exists(), "nothing written for a refusal");
    }

    #[tokio::test]
    async fn a_throttled_download_arrives_whole() {
        let (url, _served) = serve_once(b"package").await;
        let client = registered_client("http://127.0.0.1:9");
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.zip");
        let mut throttle = Throttle::new(1);
        let received = client
            .download_file(&url, &target, 7, Some(&mut throttle))
            .await
            .unwrap();
        assert_eq!(received, 7);
        assert_eq!(std::fs::read(&target).unwrap(), b"package");
    }

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
