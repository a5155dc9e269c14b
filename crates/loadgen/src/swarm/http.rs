//! One simulated agent's connections: a keep-alive HTTP/1.1 connection (what the agent's
//! `reqwest` pool keeps for its heartbeats) and the TCP dial both it and the WebSocket use.
//!
//! A keep-alive connection that the server closed is reopened once per request, as a pooled
//! client does; any other failure is returned to the caller to be counted, never hidden.

use std::io;
use std::net::{IpAddr, SocketAddr};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

/// Why one exchange with the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// What the OS said (EMFILE means the open-file limit is too low).
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// What a `GET` brought back.
#[derive(Debug)]
pub struct Fetched {
    /// The answer's status.
    pub status: StatusCode,
    /// Its `Retry-After`, in seconds, when it has one.
    pub retry_after: Option<u64>,
    /// Bytes of its body.
    pub bytes: u64,
    /// The body itself when it was kept (empty otherwise).
    pub body: Bytes,
}

/// Where an agent connects to, and from.
#[derive(Debug, Clone, Copy)]
pub struct Dialer {
    /// The server.
    pub server: SocketAddr,
    /// The local address to connect from (`None`: the OS picks).
    pub source: Option<IpAddr>,
}

impl Dialer {
    /// A new TCP connection with Nagle's algorithm off, as `reqwest` and the agent use.
    pub async fn connect(&self) -> Result<TcpStream, ExchangeError> {
        let connect = async {
            let socket = match self.server {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(ip) = self.source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(self.server).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        };
        connect.await.map_err(|source| ExchangeError::Connect {
            server: self.server,
            source,
        })
    }
}

/// A keep-alive HTTP/1.1 connection, opened on first use.
#[derive(Debug)]
pub struct HttpConnection {
    dialer: Dialer,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConnection {
    /// A connection to `dialer.server`; nothing is opened yet.
    pub fn new(dialer: Dialer) -> Self {
        HttpConnection {
            dialer,
            sender: None,
        }
    }

    /// `POST path` with a JSON body (and a bearer token when given); the status and body.
    pub async fn post_json(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let reused = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        match self.post_once(path, token, body.clone()).await {
            Err(ExchangeError::Http(err)) if reused => {
                tracing::debug!(error = %err, "kept-alive connection failed; reopening once");
                self.post_once(path, token, body).await
            }
            outcome => outcome,
        }
    }

    async fn post_once(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let mut request = Request::post(path)
            .header(HOST, self.dialer.server.to_string())
            .header(CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body))?;
        let response = self.send(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// `GET path` with a bearer token. The body is read to its end as it streams in and kept
    /// only when `keep_body` (a package is counted, then discarded: nothing goes to disk).
    pub async fn get(
        &mut self,
        path: &str,
        token: &str,
        keep_body: bool,
    ) -> Result<Fetched, ExchangeError> {
        let request = Request::get(path)
            .header(HOST, self.dialer.server.to_string())
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))?;
        let response = self.send(request).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let mut body = response.into_body();
        let (mut bytes, mut kept) = (0, Vec::new());
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                bytes += data.len() as u64;
                if keep_body {
                    kept.extend_from_slice(data);
                }
            }
        }
        Ok(Fetched {
            status,
            retry_after,
            bytes,
            body: Bytes::from(kept),
        })
    }

    /// Sends `request` on the kept-alive connection (opened first when there is none); the
    /// connection is kept for the next request once the caller has read the body.
    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ExchangeError> {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.open().await?,
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        self.sender = Some(sender);
        Ok(response)
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, ExchangeError> {
        let stream = self.dialer.connect().await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended");
            }
        });
        Ok(sender)
    }
}
