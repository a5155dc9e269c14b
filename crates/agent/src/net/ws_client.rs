//! `WSClient`: the WebSocket over which the backend pushes events to the agent, and over which
//! the agent sends its heartbeat while it is up.
//!
//! It stays connected while the agent runs, reconnecting with exponential backoff and full
//! jitter (so a fleet does not reconnect in lockstep after a server restart), and hands each
//! decoded [`ServerEvent`] to the agent through a channel. [`WsLink`] is the sending side: a
//! heartbeat given to it travels on the live socket and returns once the server acknowledged
//! it, or fails at once when no socket is up (the caller then uses HTTP). It must never act on
//! an event itself.

use std::time::Duration;

use cms_protocol::{
    AgentMessage, HeartbeatAck, ServerEvent, StatusReport, WS_MAX_MESSAGE_BYTES,
    WS_READ_BUFFER_BYTES, paths,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use std::sync::Arc;

use crate::net::proxy::{ProxyError, ProxyUrl, Route, connect_tunnel};
use crate::net::servers::ServerList;
use crate::net::{Transport, backoff, endpoint, server_text};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The server pings every 30 s; three missed pings mean the connection is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for the server's answer to a heartbeat before the agent falls back to HTTP.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest part of a refused event's error quoted in the log (it may quote the server's text).
const MAX_QUOTED_ERROR: usize = 300;
/// Longest time one frame may take to send.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// No socket is up to carry a message (or it closed before the answer came).
    #[error("websocket not connected")]
    NotConnected,
    /// A message could not be encoded.
    #[error("cannot encode a websocket message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A message for the live socket and where its answer goes.
#[derive(Debug)]
struct Outgoing {
    message: AgentMessage,
    answer: oneshot::Sender<HeartbeatAck>,
}

/// The sending side of the agent's WebSocket (cheap to clone): empty while no socket is up.
#[derive(Debug, Clone)]
pub struct WsLink {
    current: watch::Sender<Option<mpsc::Sender<Outgoing>>>,
}

impl Default for WsLink {
    fn default() -> Self {
        WsLink {
            current: watch::Sender::new(None),
        }
    }
}

impl WsLink {
    /// Whether a socket is up right now.
    pub fn is_up(&self) -> bool {
        self.current.borrow().is_some()
    }

    /// Waits up to `limit` for a socket to be up; `true` when one is.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let mut changes = self.current.subscribe();
        let up = tokio::time::timeout(limit, changes.wait_for(Option::is_some)).await;
        matches!(up, Ok(Ok(_)))
    }

    /// Sends `report` on the live socket and waits for the server's acknowledgement.
    pub async fn heartbeat(&self, report: &StatusReport) -> Result<HeartbeatAck, WsError> {
        let sender = self.current.borrow().clone().ok_or(WsError::NotConnected)?;
        let (answer, acked) = oneshot::channel();
        let outgoing = Outgoing {
            message: AgentMessage::Heartbeat(report.clone()),
            answer,
        };
        sender
            .send(outgoing)
            .await
            .map_err(|_| WsError::NotConnected)?;
        match tokio::time::timeout(ACK_TIMEOUT, acked).await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(_)) => Err(WsError::NotConnected),
            Err(_) => Err(WsError::Timeout(ACK_TIMEOUT)),
        }
    }

    /// Opens the link for one session; the receiver is that session's queue.
    fn open(&self) -> mpsc::Receiver<Outgoing> {
        let (sender, queue) = mpsc::channel(1);
        self.current.send_replace(Some(sender));
        queue
    }

    /// Closes the link when a session ends: waiting heartbeats fail and go over HTTP.
    fn close(&self) {
        self.current.send_replace(None);
    }
}

/// Keeps the agent's WebSocket open and forwards server events.
pub struct WSClient {
    servers: Arc<ServerList>,
    tls: Arc<rustls::ClientConfig>,
    route: Route,
    max_backoff: Duration,
    link: WsLink,
    /// The bearer token of the last handshake refused as a clone (409, another live agent
    /// holds the identity), for the agent to register anew.
    conflict: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for WSClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WSClient")
            .field("servers", &self.servers)
            .field("route", &self.route.label())
            .finish()
    }
}

/// Where one connection attempt goes.
struct Target {
    url: String,
    tls: Option<Connector>,
    proxy: Option<ProxyUrl>,
}

impl WSClient {
    /// A client for the backend's `servers` (`http` becomes `ws`, `https` becomes `wss`), with
    /// the same trust and route as the HTTP client; it connects to the server in use and moves
    /// the list on when that one cannot be reached.
    pub fn new(servers: Arc<ServerList>, max_backoff: Duration, transport: &Transport) -> Self {
        WSClient {
            servers,
            tls: transport.tls.clone(),
            route: transport.route.clone(),
            max_backoff,
            link: WsLink::default(),
            conflict: watch::Sender::new(None),
        }
    }

    /// The sending side, for heartbeats.
    pub fn link(&self) -> WsLink {
        self.link.clone()
    }

    /// Tells of each handshake refused because another live agent holds this identity: the
    /// token it presented.
    pub fn identity_conflicts(&self) -> watch::Receiver<Option<String>> {
        self.conflict.subscribe()
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
            let base = self.servers.current();
            let presented = token();
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = self.connect(&base, presented.clone()) => outcome,
            };
            match outcome {
                Ok((socket, url)) => {
                    tracing::info!(%url, "websocket connected");
                    failures = 0;
                    let queue = self.link.open();
                    let ended = session(socket, queue, &events, &cancel).await;
                    self.link.close();
                    match ended {
                        Ok(()) => tracing::info!("websocket closed"),
                        Err(err) => tracing::warn!(error = %err, "websocket session ended"),
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(server = %base, error = %err, failures, "websocket connect failed");
                    if err.server_unreachable() {
                        self.servers.failed(&base);
                    }
                    if err.is_identity_conflict() {
                        self.conflict.send_replace(presented);
                    }
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

    /// The WebSocket URL, TLS and proxy for the server at `base`.
    fn target(&self, base: &Url) -> Result<Target, WsError> {
        let (scheme, tls) = match base.scheme() {
            "https" => ("wss", Some(Connector::Rustls(self.tls.clone()))),
            _ => ("ws", None),
        };
        let proxy = self
            .route
            .proxy_for(base.host_str().unwrap_or_default())
            .cloned();
        let rest = base.as_str().split_once(':').map_or("", |(_, rest)| rest);
        let ws_base =
            Url::parse(&format!("{scheme}:{rest}")).map_err(|e| WsError::Request(e.to_string()))?;
        Ok(Target {
            url: endpoint(&ws_base, paths::WEBSOCKET),
            tls,
            proxy,
        })
    }

    async fn connect(
        &self,
        base: &Url,
        token: Option<String>,
    ) -> Result<(Socket, String), WsError> {
        let target = self.target(base)?;
        let request = request(&target.url, token.as_deref())?;
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .max_message_size(Some(WS_MAX_MESSAGE_BYTES))
            .max_frame_size(Some(WS_MAX_MESSAGE_BYTES));
        let handshake = async {
            let Some(proxy) = &target.proxy else {
                return Ok(tokio_tungstenite::connect_async_tls_with_config(
                    request,
                    Some(config),
                    false,
                    target.tls.clone(),
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
                    target.tls.clone(),
                )
                .await?,
            )
        };
        let (socket, _response) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| WsError::Timeout(CONNECT_TIMEOUT))??;
        Ok((socket, target.url))
    }
}

impl WsError {
    /// Whether the server refused the handshake because another live agent holds this
    /// identity (409).
    fn is_identity_conflict(&self) -> bool {
        matches!(self, WsError::Socket(tungstenite::Error::Http(response))
            if response.status() == tungstenite::http::StatusCode::CONFLICT)
    }

    /// Whether the server itself is out of reach (refused, reset, silent, or a balancer with no
    /// server behind it), so that another server of the list should be tried.
    fn server_unreachable(&self) -> bool {
        match self {
            WsError::Timeout(_) | WsError::Socket(tungstenite::Error::Io(_)) => true,
            WsError::Socket(tungstenite::Error::Http(response)) => {
                response.status().is_server_error()
            }
            _ => false,
        }
    }
}

/// The handshake request to `url` with the agent's bearer token.
fn request(url: &str, token: Option<&str>) -> Result<Request, WsError> {
    let token = token.ok_or_else(|| WsError::Request("not registered yet".into()))?;
    let mut request = url
        .into_client_request()
        .map_err(|e| WsError::Request(e.to_string()))?;
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| WsError::Request("credential is not a valid header value".into()))?;
    value.set_sensitive(true);
    request.headers_mut().insert("authorization", value);
    Ok(request)
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

/// One turn of a session: what woke it up.
enum Step {
    Cancelled,
    Frame(Option<Result<Message, tungstenite::Error>>),
    Send(Outgoing),
}

/// Reads until the server closes, the connection dies or `cancel`; forwards decoded events
/// and sends what the link queues, handing each acknowledgement to the heartbeat waiting for it.
async fn session(
    mut socket: Socket,
    mut queue: mpsc::Receiver<Outgoing>,
    events: &mpsc::Sender<ServerEvent>,
    cancel: &CancellationToken,
) -> Result<(), WsError> {
    let mut waiting: Option<oneshot::Sender<HeartbeatAck>> = None;
    loop {
        let step = tokio::select! {
            _ = cancel.cancelled() => Step::Cancelled,
            next = tokio::time::timeout(IDLE_TIMEOUT, socket.next()) => {
                Step::Frame(next.map_err(|_| WsError::Timeout(IDLE_TIMEOUT))?)
            }
            Some(outgoing) = queue.recv() => Step::Send(outgoing),
        };
        match step {
            Step::Cancelled => return close(socket).await,
            Step::Send(outgoing) => {
                send(&mut socket, &outgoing.message).await?;
                waiting = Some(outgoing.answer);
            }
            Step::Frame(None | Some(Ok(Message::Close(_)))) => return Ok(()),
            Step::Frame(Some(Err(err))) => return Err(err.into()),
            Step::Frame(Some(Ok(Message::Text(text)))) => {
                forward(text.as_str(), &mut waiting, events).await;
            }
            Step::Frame(Some(Ok(_))) => {} // pings are answered by tungstenite itself
        }
    }
}

async fn send(socket: &mut Socket, message: &AgentMessage) -> Result<(), WsError> {
    let text = serde_json::to_string(message)?;
    tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into())))
        .await
        .map_err(|_| WsError::Timeout(SEND_TIMEOUT))??;
    Ok(())
}

/// Hands an event to the agent; an acknowledgement also completes the waiting heartbeat.
async fn forward(
    text: &str,
    waiting: &mut Option<oneshot::Sender<HeartbeatAck>>,
    events: &mpsc::Sender<ServerEvent>,
) {
    let event = match serde_json::from_str::<ServerEvent>(text) {
        Ok(event) => event,
        Err(err) => {
            let error = server_text(&err.to_string(), MAX_QUOTED_ERROR);
            tracing::warn!(%error, "ignoring an unknown server event");
            return;
        }
    };
    if let ServerEvent::HeartbeatAck(ack) = &event {
        tracing::debug!(update = ?ack.update.as_ref().map(|u| &u.version), "heartbeat acknowledged");
        if let Some(answer) = waiting.take() {
            let _ = answer.send(ack.clone());
        }
        // Never wait on a busy agent for an answer the next heartbeat repeats anyway.
        if events.try_send(event).is_err() {
            tracing::debug!("agent busy; heartbeat answer not forwarded");
        }
        return;
    }
    tracing::info!(?event, "server event received");
    if events.send(event).await.is_err() {
        tracing::debug!("agent no longer listens for events");
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
        let servers = Arc::new(ServerList::single(base.clone()));
        let client = WSClient::new(servers, Duration::from_secs(5), &transport);
        let target = client.target(&base).unwrap();
        assert_eq!(target.url, "ws://127.0.0.1:9/cms/api/v1/agent/ws");
        assert!(target.tls.is_none());
        let secure = Url::parse("https://cms.example.com").unwrap();
        let target = client.target(&secure).unwrap();
        assert_eq!(target.url, "wss://cms.example.com/api/v1/agent/ws");
        assert!(target.tls.is_some());
    }
}
