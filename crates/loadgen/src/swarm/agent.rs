//! One simulated agent: register, hold a WebSocket, heartbeat on a timer, note pushes.
//!
//! It behaves like a real agent on the wire (same requests, same bodies, a WebSocket that
//! answers pings, reconnection after a drop) but never acts on a push by itself: the bench
//! measures how fast notifications arrive, and starts the downloads a push would cause with an
//! explicit order (see [`super::download`]), run beside the heartbeats. Heartbeats go on the WebSocket, timed
//! from the frame sent to the server's answer, and over HTTP while the socket is down, as the
//! agent does; with [`HeartbeatRoute::Http`] they always go over a keep-alive HTTP connection,
//! as agents before the WebSocket heartbeat did. It must never hide a failure: every failed
//! heartbeat (an unanswered one included) and dropped WebSocket is counted in the
//! [`Recorder`](super::record::Recorder).

use std::sync::Arc;
use std::time::Duration;

use cms_protocol::{
    AgentMessage, AgentState, Metrics, RegisterRequest, RegisterResponse, ServerEvent,
    StatusReport, UpdateRequired, WS_READ_BUFFER_BYTES, paths,
};
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use hyper::body::Bytes;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::http::{Dialer, ExchangeError, HttpConnection};
use super::{HeartbeatRoute, Shared};

/// Pause before reopening a WebSocket the server dropped.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Registration and WebSocket handshake of one agent; a server that stops answering (out of
/// file descriptors, say) fails the setup instead of hanging the step.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

type Socket = WebSocketStream<TcpStream>;

/// Why an agent could not be set up (reported once per `grow`).
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("registration answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("registration answer is not a RegisterResponse: {0}")]
    Answer(#[from] serde_json::Error),
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("registration and WebSocket not done within {0:?}")]
    TimedOut(Duration),
}

/// One agent of the fleet, before it runs.
#[derive(Debug)]
pub struct SimulatedAgent {
    shared: Arc<Shared>,
    index: usize,
    dialer: Dialer,
}

/// A registered agent's identity and open connections.
struct Session {
    token: String,
    http: HttpConnection,
    /// When the heartbeat waiting for its answer on the WebSocket was sent.
    unanswered: Option<Instant>,
}

impl SimulatedAgent {
    /// Agent number `index` of the fleet.
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        let dialer = Dialer {
            server: shared.settings.server,
            source: shared.source_ip(index),
        };
        SimulatedAgent {
            shared,
            index,
            dialer,
        }
    }

    /// Sets up (reporting the outcome on `ready`), then runs until `stop`.
    pub async fn run(self, ready: oneshot::Sender<Result<(), String>>, stop: CancellationToken) {
        // Subscribed before the setup is reported, so no order given after `grow` is missed.
        let mut orders = self.shared.download_orders.subscribe();
        let setup = {
            // The semaphore is never closed, so a failed acquire cannot happen; go on anyway.
            let _slot = self.shared.setup_slots.acquire().await;
            match tokio::time::timeout(SETUP_TIMEOUT, self.set_up()).await {
                Ok(result) => result,
                Err(_) => Err(SetupError::TimedOut(SETUP_TIMEOUT)),
            }
        };
        let (mut session, socket) = match setup {
            Ok(set_up) => {
                let _ = ready.send(Ok(()));
                set_up
            }
            Err(err) => {
                let _ = ready.send(Err(err.to_string()));
                return;
            }
        };
        self.shared.recorder.ws_up();
        if self.shared.settings.heartbeat_route == HeartbeatRoute::WebSocket {
            // One connection per agent: the registration's HTTP connection is closed.
            session.http = HttpConnection::new(self.dialer);
        }
        let mut socket = Some(socket);
        // The last push: the download order starts the check within the spread it asked for.
        let mut last_push = UpdateRequired::default();
        let mut next_heartbeat =
            Instant::now() + self.shared.settings.heartbeat.mul_f64(fastrand::f64());
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(next_heartbeat) => {
                    self.heartbeat(&mut session, &mut socket).await;
                    next_heartbeat += jittered(self.shared.settings.heartbeat);
                }
                Ok(()) = orders.changed() => {
                    let download = super::download::run(
                        self.shared.clone(),
                        self.dialer,
                        session.token.clone(),
                        last_push.check_delay(fastrand::f64()).unwrap_or_default(),
                        stop.child_token(),
                    );
                    tokio::spawn(download);
                }
                frame = next_frame(&mut socket) => match frame {
                    Frame::Push(push) => {
                        let version = push.version.as_deref().unwrap_or("");
                        self.shared.recorder.push_received(version, push.spread_secs);
                        last_push = push;
                    }
                    Frame::Answer => {
                        if let Some(sent) = session.unanswered.take() {
                            self.shared.recorder.heartbeat_ok(sent.elapsed());
                        }
                    }
                    Frame::Ignored => {}
                    Frame::Gone => {
                        self.shared.recorder.ws_down(true);
                        if session.unanswered.take().is_some() {
                            self.shared.recorder.heartbeat_failed();
                        }
                        socket = self.reconnect(&session.token, &stop).await;
                    }
                },
            }
        }
        if let Some(mut socket) = socket {
            self.shared.recorder.ws_down(false);
            let _ = socket.close(None).await;
        }
    }

    async fn set_up(&self) -> Result<(Session, Socket), SetupError> {
        let mut http = HttpConnection::new(self.dialer);
        let request = RegisterRequest {
            hostname: format!("loadgen-{:06}", self.index),
            platform: self.shared.settings.platform.clone(),
            version: self.shared.settings.agent_version.clone(),
            enrollment_token: None,
            group: None,
        };
        let body = Bytes::from(serde_json::to_vec(&request)?);
        let (status, body) = http.post_json(paths::REGISTER, None, body).await?;
        if status != StatusCode::OK {
            return Err(SetupError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let identity: RegisterResponse = serde_json::from_slice(&body)?;
        let socket = self.open_socket(&identity.agent_token).await?;
        let session = Session {
            token: identity.agent_token,
            http,
            unanswered: None,
        };
        Ok((session, socket))
    }

    async fn open_socket(&self, token: &str) -> Result<Socket, SetupError> {
        let stream = self.dialer.connect().await?;
        let url = format!("ws://{}{}", self.dialer.server, paths::WEBSOCKET);
        let mut request = url.into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|err| tungstenite::Error::HttpFormat(err.into()))?;
        request.headers_mut().insert("authorization", bearer);
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .write_buffer_size(0);
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(socket)
    }

    /// Reopens the WebSocket after a drop, retrying every [`RECONNECT_DELAY`] until `stop`.
    async fn reconnect(&self, token: &str, stop: &CancellationToken) -> Option<Socket> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
            match self.open_socket(token).await {
                Ok(socket) => {
                    self.shared.recorder.ws_up();
                    return Some(socket);
                }
                Err(err) => tracing::debug!(agent = self.index, error = %err, "reconnect failed"),
            }
        }
    }

    /// One heartbeat: on the WebSocket (its answer arrives as a frame) unless the fleet posts
    /// over HTTP or the socket is down. A heartbeat still unanswered when the next is due failed.
    async fn heartbeat(&self, session: &mut Session, socket: &mut Option<Socket>) {
        let report = StatusReport {
            state: AgentState::Idle,
            version: self.shared.settings.agent_version.clone(),
            metrics: Metrics::default(),
            network: None,
            group: None,
            utc_offset_minutes: None,
        };
        if session.unanswered.take().is_some() {
            self.shared.recorder.heartbeat_failed();
        }
        let on_socket = self.shared.settings.heartbeat_route == HeartbeatRoute::WebSocket;
        match socket.as_mut() {
            Some(live) if on_socket => self.heartbeat_on_socket(session, live, report).await,
            _ => self.heartbeat_over_http(session, &report).await,
        }
    }

    async fn heartbeat_on_socket(
        &self,
        session: &mut Session,
        socket: &mut Socket,
        report: StatusReport,
    ) {
        let Ok(text) = serde_json::to_string(&AgentMessage::Heartbeat(report)) else {
            self.shared.recorder.heartbeat_failed();
            return;
        };
        let started = Instant::now();
        match socket.send(Message::Text(text.into())).await {
            Ok(()) => session.unanswered = Some(started),
            Err(err) => {
                tracing::warn!(agent = self.index, error = %err, "heartbeat on the WebSocket failed");
                self.shared.recorder.heartbeat_failed();
            }
        }
    }

    /// One `POST /api/v1/agent/status`, timed from sending to the answer.
    async fn heartbeat_over_http(&self, session: &mut Session, report: &StatusReport) {
        let Ok(body) = serde_json::to_vec(report) else {
            self.shared.recorder.heartbeat_failed();
            return;
        };
        let started = Instant::now();
        let outcome = session
            .http
            .post_json(paths::STATUS, Some(&session.token), Bytes::from(body))
            .await;
        match outcome {
            Ok((StatusCode::NO_CONTENT, _)) => self.shared.recorder.heartbeat_ok(started.elapsed()),
            Ok((status, _)) => {
                tracing::warn!(agent = self.index, %status, "heartbeat refused");
                self.shared.recorder.heartbeat_failed();
            }
            Err(err) => {
                tracing::warn!(agent = self.index, error = %err, "heartbeat failed");
                self.shared.recorder.heartbeat_failed();
            }
        }
    }
}

/// What the WebSocket delivered.
enum Frame {
    /// `agent:update_required` (the release version when the server named one, and the spread).
    Push(UpdateRequired),
    /// The server's answer to a heartbeat sent on the socket.
    Answer,
    /// Anything else the agent ignores (pings are answered by tungstenite while reading).
    Ignored,
    /// The socket is gone (closed by the server, or the connection broke).
    Gone,
}

/// Waits for the next frame; without a socket (reconnecting) it never completes.
async fn next_frame(socket: &mut Option<Socket>) -> Frame {
    let Some(live) = socket.as_mut() else {
        return std::future::pending().await;
    };
    match live.next().await {
        Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
            Ok(ServerEvent::UpdateRequired(event)) => Frame::Push(event),
            Ok(ServerEvent::HeartbeatAck(_)) => Frame::Answer,
            Err(_) => Frame::Ignored,
        },
        Some(Ok(Message::Close(_)) | Err(_)) | None => {
            *socket = None;
            Frame::Gone
        }
        Some(Ok(_)) => Frame::Ignored,
    }
}

/// `every` +/- 10 %, as the agent's own timers.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.9 + fastrand::f64() * 0.2)
}
