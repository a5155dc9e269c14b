//! `WSClient`: the WebSocket over which the backend pushes events to the agent.
//!
//! It stays connected while the agent runs, reconnecting with exponential backoff and full
//! jitter (so a fleet does not reconnect in lockstep after a server restart), and hands each
//! decoded [`ServerEvent`] to the agent through a channel. It must never act on an event itself.

use std::time::Duration;

use cms_protocol::{ServerEvent, WS_MAX_MESSAGE_BYTES, WS_READ_BUFFER_BYTES, paths};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::net::proxy::{ProxyError, ProxyUrl, connect_tunnel};
use crate::net::{Transport, backoff, endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The server pings every 30 s; three missed pings mean the connection is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Why one connection attempt or session ended.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The URL or credential cannot form a handshake request.
    #[error("cannot build the WebSocket request: {0}")]
    Request(String),
    /// The proxy would not open a tunnel.
    #[error("websocket: {0}")]
    Proxy(#[from] ProxyError),
    /// The handshake or the connection failed.
    #[error("websocket: {0}")]
    Socket(#[from] tungstenite::Error),
    /// The handshake did not finish, or the server went silent, for too long.
    #[error("websocket silent for {0:?}")]
    Timeout(Duration),
}

/// Keeps the agent's WebSocket open and forwards server events.
pub struct WSClient {
    url: String,
    tls: Option<Connector>,
    proxy: Option<ProxyUrl>,
    max_backoff: Duration,
}

impl std::fmt::Debug for WSClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WSClient")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl WSClient {
    /// A client for the backend at `base` (`http` becomes `ws`, `https` becomes `wss`), with
    /// the same trust and route as the HTTP client.
    pub fn new(base: &Url, max_backoff: Duration, transport: &Transport) -> Result<Self, WsError> {
        let (scheme, tls) = match base.scheme() {
            "https" => ("wss", Some(Connector::Rustls(transport.tls.clone()))),
            _ => ("ws", None),
        };
        let proxy = transport
            .route
            .proxy_for(base.host_str().unwrap_or_default())
            .cloned();
        let rest = base.as_str().split_once(':').map_or("", |(_, rest)| rest);
        let ws_base =
            Url::parse(&format!("{scheme}:{rest}")).map_err(|e| WsError::Request(e.to_string()))?;
        Ok(WSClient {
            url: endpoint(&ws_base, paths::WEBSOCKET),
            tls,
            proxy,
            max_backoff,
        })
    }

    /// Connects, forwards events to `events` and reconnects until `cancel`; then closes cleanly.
    /// `token` is asked anew at each attempt, so a re-registration is picked up.
    pub async fn run(
        &self,
        token: impl Fn() -> Option<String>,
        events: mpsc::Sender<ServerEvent>,
        cancel: CancellationToken,
    ) {
        let mut failures: u32 = 0;
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = self.connect(token()) => outcome,
            };
            match outcome {
                Ok(socket) => {
                    tracing::info!(url = %self.url, "websocket connected");
                    failures = 0;
                    match session(socket, &events, &cancel).await {
                        Ok(()) => tracing::info!("websocket closed"),
                        Err(err) => tracing::warn!(error = %err, "websocket session ended"),
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %err, failures, "websocket connect failed");
                }
            }
            let delay = backoff(failures, self.max_backoff);
            tracing::debug!(
                retry_in_ms = delay.as_millis() as u64,
                "websocket reconnect scheduled"
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self, token: Option<String>) -> Result<Socket, WsError> {
        let request = self.request(token.as_deref())?;
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .max_message_size(Some(WS_MAX_MESSAGE_BYTES))
            .max_frame_size(Some(WS_MAX_MESSAGE_BYTES));
        let handshake = async {
            let Some(proxy) = &self.proxy else {
                return Ok(tokio_tungstenite::connect_async_tls_with_config(
                    request,
                    Some(config),
                    false,
                    self.tls.clone(),
                )
                .await?);
            };
            let stream =
                connect_tunnel(proxy, &target_authority(&request)?, CONNECT_TIMEOUT).await?;
            Ok::<_, WsError>(
                tokio_tungstenite::client_async_tls_with_config(
                    request,
                    stream,
                    Some(config),
                    self.tls.clone(),
                )
                .await?,
            )
        };
        let (socket, _response) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| WsError::Timeout(CONNECT_TIMEOUT))??;
        Ok(socket)
    }

    fn request(&self, token: Option<&str>) -> Result<Request, WsError> {
        let token = token.ok_or_else(|| WsError::Request("not registered yet".into()))?;
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| WsError::Request(e.to_string()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| WsError::Request("credential is not a valid header value".into()))?;
        value.set_sensitive(true);
        request.headers_mut().insert("authorization", value);
        Ok(request)
    }
}

/// `host:port` of the WebSocket server, for the proxy's `CONNECT`.
fn target_authority(request: &Request) -> Result<String, WsError> {
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or_else(|| WsError::Request("no host in the WebSocket URL".into()))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    Ok(format!("{host}:{port}"))
}

/// Reads until the server closes, the connection dies or `cancel`; forwards decoded events.
async fn session(
    mut socket: Socket,
    events: &mpsc::Sender<ServerEvent>,
    cancel: &CancellationToken,
) -> Result<(), WsError> {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return close(socket).await,
            next = tokio::time::timeout(IDLE_TIMEOUT, socket.next()) => next,
        };
        match next.map_err(|_| WsError::Timeout(IDLE_TIMEOUT))? {
            None | Some(Ok(Message::Close(_))) => return Ok(()),
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(Message::Text(text))) => forward(text.as_str(), events).await,
            Some(Ok(_)) => {} // pings are answered by tungstenite itself
        }
    }
}

async fn forward(text: &str, events: &mpsc::Sender<ServerEvent>) {
    match serde_json::from_str::<ServerEvent>(text) {
        Ok(event) => {
            tracing::info!(?event, "server event received");
            if events.send(event).await.is_err() {
                tracing::debug!("agent no longer listens for events");
            }
        }
        Err(err) => tracing::warn!(error = %err, "ignoring an unknown server event"),
    }
}

/// Says goodbye so the server drops the agent from its hub at once instead of at a timeout.
async fn close(mut socket: Socket) -> Result<(), WsError> {
    match tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await {
        Ok(Ok(())) => tracing::info!("websocket disconnected"),
        Ok(Err(err)) => tracing::debug!(error = %err, "websocket close failed"),
        Err(_) => tracing::debug!("websocket close was not acknowledged in time"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proxy::ProxySetting;

    #[test]
    fn http_base_maps_to_ws_and_keeps_its_prefix() {
        let base = Url::parse("http://127.0.0.1:9/cms").unwrap();
        let transport = Transport::new(&base, None, Some(&ProxySetting::Direct)).unwrap();
        let client = WSClient::new(&base, Duration::from_secs(5), &transport).unwrap();
        assert_eq!(client.url, "ws://127.0.0.1:9/cms/api/v1/agent/ws");
    }
}
