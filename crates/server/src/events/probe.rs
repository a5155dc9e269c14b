//! The clone check: is the socket that already holds an identity alive, on this replica or on
//! another one?
//!
//! A WebSocket handshake whose identity holds a socket here pings it ([`Hub::probe`]); one whose
//! identity's socket another live replica holds (the connection records) asks that replica over
//! the event bus ([`ClusterEvent::ProbeAgent`]) to ping it, and the holder answers
//! ([`ClusterEvent::ProbeAnswered`]) whether the socket answered within [`CLONE_PROBE`]. The
//! asker waits at most [`CLONE_PROBE`] + [`BUS_MARGIN`]: no answer (the bus lost a message, the
//! holder died) counts as a dead socket, so the newcomer is let in, as it always is when the
//! old socket is silent. On SQLite (one replica, no bus) only the local check runs.
//!
//! This module must never hold a handshake longer than that bound, keep a pending probe nobody
//! waits for, or put anything but ids in a bus payload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{ClusterEvent, EventBus};
use crate::ws::Hub;

/// How long the live connection of an identity has to answer a ping before a second one takes
/// its place.
pub const CLONE_PROBE: Duration = Duration::from_secs(5);
/// What the asker allows the bus on top of [`CLONE_PROBE`] (two notifications).
pub const BUS_MARGIN: Duration = Duration::from_secs(3);

/// The probes this replica sent to others and waits on, by probe id (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<bool>>>>,
}

/// One probe waited on; dropping it forgets it (an answer after that is ignored).
#[derive(Debug)]
pub struct Pending {
    probes: Probes,
    /// The id the answer carries.
    pub probe_id: String,
    answer: Option<oneshot::Receiver<bool>>,
}

impl Probes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<bool>>> {
        // A map of senders stays consistent under every operation.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting for the answer to a new probe.
    pub fn begin(&self) -> Pending {
        let probe_id = uuid::Uuid::new_v4().to_string();
        let (sender, answer) = oneshot::channel();
        self.lock().insert(probe_id.clone(), sender);
        Pending {
            probes: self.clone(),
            probe_id,
            answer: Some(answer),
        }
    }

    /// The holder's answer to `probe_id` arrived (ignored when nobody waits any more).
    pub fn settle(&self, probe_id: &str, alive: bool) {
        if let Some(sender) = self.lock().remove(probe_id) {
            let _ = sender.send(alive); // the asker may have given up meanwhile
        }
    }

    /// Probes waited on now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no probe is waited on.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Pending {
    /// Whether the holder said the socket answered, within `bound`; `false` without an answer.
    pub async fn alive_within(mut self, bound: Duration) -> bool {
        let Some(answer) = self.answer.take() else {
            return false;
        };
        matches!(tokio::time::timeout(bound, answer).await, Ok(Ok(true)))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.probes.lock().remove(&self.probe_id);
    }
}

/// Whether `agent_id`'s socket on this replica answers a ping within [`CLONE_PROBE`]; `None`
/// when this replica holds none.
pub async fn socket_here_answers(hub: &Hub, agent_id: &str) -> Option<bool> {
    let answered = hub.probe(agent_id)?;
    Some(matches!(
        tokio::time::timeout(CLONE_PROBE, answered).await,
        Ok(Ok(()))
    ))
}

/// The holder's side of [`ClusterEvent::ProbeAgent`]: pings `agent_id`'s socket here and tells
/// `origin` whether it answered (no socket here: not alive).
pub async fn answer_probe(
    hub: Hub,
    bus: EventBus,
    agent_id: String,
    origin: String,
    probe_id: String,
) {
    let alive = socket_here_answers(&hub, &agent_id).await.unwrap_or(false);
    tracing::info!(agent_id, alive, "clone check from another replica answered");
    let answer = ClusterEvent::ProbeAnswered {
        origin,
        probe_id,
        alive,
    };
    if let Err(error) = bus.publish(&answer).await {
        // The asker lets the newcomer in once its wait ends.
        tracing::warn!(agent_id, %error, "cannot answer another replica's clone check");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_reaches_its_probe_and_a_late_one_is_ignored() {
        let probes = Probes::default();
        let alive = probes.begin();
        let dead = probes.begin();
        assert_eq!(probes.len(), 2);
        probes.settle(&alive.probe_id, true);
        probes.settle(&dead.probe_id, false);
        probes.settle("unknown", true);
        assert!(alive.alive_within(Duration::from_secs(1)).await);
        assert!(!dead.alive_within(Duration::from_secs(1)).await);
        assert!(probes.is_empty());

        let silent = probes.begin();
        let id = silent.probe_id.clone();
        assert!(!silent.alive_within(Duration::from_millis(10)).await);
        assert!(probes.is_empty(), "a probe given up is forgotten");
        probes.settle(&id, true);
    }

    #[tokio::test]
    async fn a_socket_here_is_pinged_and_none_is_not_alive() {
        let hub = Hub::new();
        assert_eq!(socket_here_answers(&hub, "a").await, None);
        let mut registration = hub.register("a");
        let answering = tokio::spawn(async move {
            let answer = registration.probes.recv().await.unwrap();
            answer.send(()).unwrap();
            registration
        });
        assert_eq!(socket_here_answers(&hub, "a").await, Some(true));
        drop(answering.await.unwrap());
    }
}
