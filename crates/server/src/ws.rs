//! The WebSocket hub: one live connection per agent, and the task that drives each socket.
//!
//! The hub maps agent ids to the sending half of a small channel; each socket task forwards
//! [`ServerEvent`]s from its channel as JSON text frames, pings every [`PING_INTERVAL`] and
//! drops connections that stop answering. A new connection for the same agent replaces the old
//! one; [`Hub::probe`] first lets the caller ask the old one whether it is still alive (the clone
//! check of `api/agent.rs`). Messages from the agent (its heartbeat) go to an [`AgentMessages`] handler, whose
//! answer is sent back on the same socket. This module must never touch the database directly
//! (the handler does) and never block: sends into the hub are `try_send`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use cms_protocol::{AgentMessage, ServerEvent};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the server pings each agent; two silent intervals drop the connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Longest time one frame may take to send before the connection counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting per agent; beyond it new events are dropped (they only say "check now").
const QUEUE_DEPTH: usize = 16;

/// An event in an agent's queue. Shared, not copied: the queue's first block of slots is
/// allocated with the connection and lives as long as it, so a slot must be one pointer (a
/// whole `ServerEvent` per slot cost 4 KB per connected agent), and a broadcast to every
/// agent allocates its event once.
type Queued = Arc<ServerEvent>;

/// Why an event did not reach an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The agent holds no live WebSocket.
    #[error("agent has no live WebSocket")]
    NotConnected,
    /// The agent's queue is full (it is not reading).
    #[error("agent's event queue is full")]
    QueueFull,
}

#[derive(Debug)]
struct Slot {
    connection_id: u64,
    sender: mpsc::Sender<Queued>,
    /// Asks the socket task to ping and to answer once the agent sends anything back.
    probes: mpsc::Sender<oneshot::Sender<()>>,
}

/// Live WebSocket connections by agent id (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Hub {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    next_id: Arc<AtomicU64>,
}

/// A connection's registration: its id and the events addressed to it.
#[derive(Debug)]
pub struct Registration {
    /// Distinguishes this connection from a later one of the same agent.
    pub connection_id: u64,
    /// Events to forward to the socket; closes when a newer connection replaces this one.
    pub events: mpsc::Receiver<Queued>,
    /// Liveness probes ([`Hub::probe`]) for the socket task.
    pub probes: mpsc::Receiver<oneshot::Sender<()>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // The map stays consistent under every operation, so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection for `agent_id`, replacing (and so closing) any older one.
    pub fn register(&self, agent_id: &str) -> Registration {
        let connection_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, events) = mpsc::channel(QUEUE_DEPTH);
        let (probe_sender, probes) = mpsc::channel(1);
        let old = self.lock().insert(
            agent_id.to_owned(),
            Slot {
                connection_id,
                sender,
                probes: probe_sender,
            },
        );
        if old.is_some() {
            tracing::info!(agent_id, "new WebSocket replaces the previous one");
        }
        Registration {
            connection_id,
            events,
            probes,
        }
    }

    /// Pings `agent_id`'s live connection here, if it has one: the receiver fires when the
    /// agent answers (any frame). A clone check waits on it for a short bound.
    pub fn probe(&self, agent_id: &str) -> Option<oneshot::Receiver<()>> {
        let slots = self.lock();
        let slot = slots
            .get(agent_id)
            .filter(|slot| !slot.sender.is_closed())?;
        let (answer, answered) = oneshot::channel();
        slot.probes.try_send(answer).ok()?;
        Some(answered)
    }

    /// Removes `agent_id`'s connection if it is still `connection_id` (not a newer one).
    pub fn unregister(&self, agent_id: &str, connection_id: u64) {
        let mut slots = self.lock();
        if slots
            .get(agent_id)
            .is_some_and(|slot| slot.connection_id == connection_id)
        {
            slots.remove(agent_id);
        }
    }

    /// Closes `agent_id`'s connection, if it holds one here (its socket task sends a close
    /// frame and ends); `true` when there was one.
    pub fn disconnect(&self, agent_id: &str) -> bool {
        self.lock().remove(agent_id).is_some()
    }

    /// Whether `agent_id` holds a live connection.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.lock()
            .get(agent_id)
            .is_some_and(|slot| !slot.sender.is_closed())
    }

    /// Queues `event` for one agent.
    pub fn notify(&self, agent_id: &str, event: ServerEvent) -> Result<(), NotifyError> {
        let slots = self.lock();
        let slot = slots.get(agent_id).ok_or(NotifyError::NotConnected)?;
        slot.sender.try_send(Arc::new(event)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotifyError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => NotifyError::NotConnected,
        })
    }

    /// Queues `event` for every connected agent; returns how many it was queued for.
    pub fn broadcast(&self, event: &ServerEvent) -> usize {
        let shared = Arc::new(event.clone());
        let slots = self.lock();
        slots
            .values()
            .filter(|slot| slot.sender.try_send(Arc::clone(&shared)).is_ok())
            .count()
    }

    /// Ids of the agents holding a live connection.
    pub fn connected_ids(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, slot)| !slot.sender.is_closed())
            .map(|(agent_id, _)| agent_id.clone())
            .collect()
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the server does when an agent's socket opens, speaks and closes.
pub trait AgentMessages: Send + Sync {
    /// The socket `connection_id` of `agent_id` is registered in the hub.
    fn opened(&self, agent_id: &str, connection_id: u64) -> impl Future<Output = ()> + Send;

    /// Handles one message of `agent_id`; the answer, if any, is sent back on its socket.
    fn handle(
        &self,
        agent_id: &str,
        message: AgentMessage,
    ) -> impl Future<Output = Option<ServerEvent>> + Send;

    /// The socket `connection_id` is gone from the hub (`shutdown`: the server is stopping).
    fn closed(
        &self,
        agent_id: &str,
        connection_id: u64,
        shutdown: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// Why a socket loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    /// Replaced by a newer connection, or closed by [`Hub::disconnect`].
    Removed,
    Dead,
    Shutdown,
}

/// Drives one agent's socket until it closes, dies, is replaced or the server stops.
pub async fn run_socket(
    socket: WebSocket,
    agent_id: String,
    hub: Hub,
    messages: impl AgentMessages,
    shutdown: CancellationToken,
) {
    let Registration {
        connection_id,
        mut events,
        mut probes,
    } = hub.register(&agent_id);
    tracing::info!(agent_id, connection_id, "agent WebSocket connected");
    messages.opened(&agent_id, connection_id).await;
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut silent_intervals = 0u32;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let end = loop {
        tokio::select! {
            () = shutdown.cancelled() => break End::Shutdown,
            event = events.recv() => {
                let Some(event) = event else { break End::Removed };
                if !send_event(&mut sink, &agent_id, &event).await {
                    break End::Dead;
                }
            }
            Some(answer) = probes.recv() => {
                waiting.push(answer);
                if !send_frame(&mut sink, Message::Ping(Default::default())).await {
                    break End::Dead;
                }
            }
            _ = ping.tick() => {
                silent_intervals += 1;
                let ping = Message::Ping(Default::default());
                if silent_intervals >= 2 || !send_frame(&mut sink, ping).await {
                    break End::Dead;
                }
            }
            frame = stream.next() => {
                silent_intervals = 0;
                if frame.as_ref().is_some_and(|frame| frame.is_ok()) {
                    for answer in waiting.drain(..) {
                        let _ = answer.send(()); // the asker may have stopped waiting
                    }
                }
                let message = match on_frame(&agent_id, frame) {
                    Frame::End(end) => break end,
                    Frame::Message(message) => message,
                    Frame::Nothing => continue,
                };
                let Some(answer) = messages.handle(&agent_id, message).await else { continue };
                if !send_event(&mut sink, &agent_id, &answer).await {
                    break End::Dead;
                }
            }
        }
    };
    hub.unregister(&agent_id, connection_id);
    if matches!(end, End::Shutdown | End::Removed) {
        let _ = send_frame(&mut sink, Message::Close(None)).await;
    }
    tracing::info!(agent_id, connection_id, reason = ?end, "agent WebSocket closed");
    messages
        .closed(&agent_id, connection_id, end == End::Shutdown)
        .await;
}

/// What one frame from the agent amounts to.
#[derive(Debug)]
enum Frame {
    /// The connection is over.
    End(End),
    /// A message for the handler.
    Message(AgentMessage),
    /// Nothing to do (a pong, or a text frame this server does not know).
    Nothing,
}

/// Decodes one frame from the agent.
fn on_frame(agent_id: &str, frame: Option<Result<Message, axum::Error>>) -> Frame {
    match frame {
        Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
            Ok(message) => Frame::Message(message),
            Err(error) => {
                // A newer agent's message: ignored, as agents ignore unknown events.
                tracing::debug!(agent_id, len = text.len(), %error, "ignoring unknown message from agent");
                Frame::Nothing
            }
        },
        Some(Ok(Message::Close(_))) | None => Frame::End(End::ClientClosed),
        Some(Err(error)) => {
            tracing::debug!(agent_id, %error, "WebSocket read failed");
            Frame::End(End::Dead)
        }
        Some(Ok(_)) => Frame::Nothing,
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

async fn send_frame(sink: &mut Sink, frame: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, sink.send(frame)).await,
        Ok(Ok(()))
    )
}

async fn send_event(sink: &mut Sink, agent_id: &str, event: &ServerEvent) -> bool {
    let text = match serde_json::to_string(event) {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(agent_id, %error, "cannot serialize event");
            return true;
        }
    };
    tracing::debug!(agent_id, ?event, "sending event");
    send_frame(sink, Message::Text(text.into())).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cms_protocol::UpdateRequired;

    fn event() -> ServerEvent {
        ServerEvent::UpdateRequired(UpdateRequired::default())
    }

    #[test]
    fn notify_reaches_the_registered_connection() {
        let hub = Hub::new();
        assert_eq!(hub.notify("a", event()), Err(NotifyError::NotConnected));
        let mut reg = hub.register("a");
        assert!(hub.is_connected("a"));
        hub.notify("a", event()).unwrap();
        assert_eq!(*reg.events.try_recv().unwrap(), event());
    }

    #[test]
    fn a_new_connection_replaces_the_old_one() {
        let hub = Hub::new();
        let mut old = hub.register("a");
        let mut new = hub.register("a");
        assert!(old.events.try_recv().is_err());
        assert!(old.events.is_closed());
        // The old connection's late unregister must not remove the new one.
        hub.unregister("a", old.connection_id);
        assert!(hub.is_connected("a"));
        hub.notify("a", event()).unwrap();
        assert_eq!(*new.events.try_recv().unwrap(), event());
        hub.unregister("a", new.connection_id);
        assert!(!hub.is_connected("a"));
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn a_probe_reaches_the_socket_task() {
        let hub = Hub::new();
        assert!(hub.probe("a").is_none());
        let mut registration = hub.register("a");
        let answered = hub.probe("a").unwrap();
        registration.probes.recv().await.unwrap().send(()).unwrap();
        answered.await.unwrap();
    }

    #[test]
    fn disconnect_closes_the_connection() {
        let hub = Hub::new();
        let registration = hub.register("a");
        assert!(hub.disconnect("a"));
        assert!(registration.events.is_closed());
        assert!(!hub.is_connected("a"));
        assert!(!hub.disconnect("a"));
    }

    #[test]
    fn broadcast_counts_and_full_queues() {
        let hub = Hub::new();
        let _a = hub.register("a");
        let _b = hub.register("b");
        assert_eq!(hub.broadcast(&event()), 2);
        let mut ids = hub.connected_ids();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        for _ in 1..QUEUE_DEPTH {
            hub.notify("a", event()).unwrap();
        }
        assert_eq!(hub.notify("a", event()), Err(NotifyError::QueueFull));
    }
}
