//! The live feed: what changed on this server, for the dashboard's event stream (SSE).
//!
//! Handlers publish a [`LiveEvent`] when an agent registers, changes state or version, reports
//! update progress, or a rollout changes; every open dashboard receives it and reloads what it
//! shows. Events are hints, never data an operator could not read from the API: a dashboard
//! that falls behind skips them (the channel is bounded) and reloads anyway. This module must
//! never block a publisher.

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for a slow dashboard before it skips ahead.
const FEED_CAPACITY: usize = 256;

/// Something an open dashboard should show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A new agent registered.
    AgentRegistered {
        /// Its id.
        agent_id: String,
    },
    /// An agent's state or version changed.
    AgentChanged {
        /// Its id.
        agent_id: String,
        /// Its state now.
        state: String,
        /// Its version now.
        version: String,
    },
    /// An agent reported a step of an update.
    UpdateProgress {
        /// Its id.
        agent_id: String,
        /// The release version.
        version: String,
        /// The step name.
        step: String,
    },
    /// A rollout was changed by an operator or halted by its threshold.
    RolloutChanged {
        /// The release version.
        version: String,
        /// Its platform.
        platform: String,
    },
    /// An agent sent error reports.
    ErrorsReported {
        /// Its id.
        agent_id: String,
    },
}

impl LiveEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::AgentRegistered { .. } => "agent_registered",
            LiveEvent::AgentChanged { .. } => "agent_changed",
            LiveEvent::UpdateProgress { .. } => "update_progress",
            LiveEvent::RolloutChanged { .. } => "rollout_changed",
            LiveEvent::ErrorsReported { .. } => "errors_reported",
        }
    }
}

/// The sending end of the feed (cheap to clone).
#[derive(Debug, Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<LiveEvent>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed {
            sender: broadcast::channel(FEED_CAPACITY).0,
        }
    }
}

impl LiveFeed {
    /// Sends `event` to every open dashboard (none listening is fine).
    pub fn publish(&self, event: LiveEvent) {
        let _ = self.sender.send(event);
    }

    /// A new listener, receiving events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_get_events_published_after_they_subscribed() {
        let feed = LiveFeed::default();
        feed.publish(LiveEvent::AgentRegistered {
            agent_id: "early".into(),
        });
        let mut listener = feed.subscribe();
        let event = LiveEvent::RolloutChanged {
            version: "2.0.0".into(),
            platform: "linux-x86_64".into(),
        };
        feed.publish(event.clone());
        assert_eq!(listener.recv().await.unwrap(), event);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], event.name());
    }
}
