//! The live feed: what changed in the backend, for the dashboard's event stream (SSE).
//!
//! Handlers publish a [`LiveEvent`] when an agent registers, changes state or version, reports
//! update progress, or a rollout changes; every open dashboard receives it and reloads what it
//! shows. With replicas on PostgreSQL, a feed made by [`LiveFeed::relayed`] also hands each
//! event to a relay task that sends it to the other replicas over the event bus
//! ([`crate::events`]), so a dashboard on one replica sees the agents of all. Events are hints,
//! never data an operator could not read from the API: a dashboard (or the relay) that falls
//! behind skips them (the channels are bounded) and reloads anyway. Open feeds are capped per
//! operator token and in total ([`FeedLimits`]), so streams cannot take the connection budget
//! from the agents. This module must never block a publisher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

/// Events kept for a slow dashboard before it skips ahead.
const FEED_CAPACITY: usize = 256;
/// Events waiting for the relay to the other replicas before new ones are dropped.
const RELAY_CAPACITY: usize = 1024;

/// Something an open dashboard should show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// An agent was offered a release longer ago than its stuck timeout and reported no end
    /// step: it is stuck (and no longer counted in flight).
    UpdateStuck {
        /// Its id.
        agent_id: String,
        /// The release version.
        version: String,
        /// Its platform.
        platform: String,
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
            LiveEvent::UpdateStuck { .. } => "update_stuck",
        }
    }
}

/// The sending end of the feed (cheap to clone).
#[derive(Debug, Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<LiveEvent>,
    /// To the relay task, when there are other replicas to tell.
    relay: Option<mpsc::Sender<LiveEvent>>,
}

impl Default for LiveFeed {
    /// A feed of this server alone (SQLite: there is no other replica).
    fn default() -> Self {
        LiveFeed {
            sender: broadcast::channel(FEED_CAPACITY).0,
            relay: None,
        }
    }
}

impl LiveFeed {
    /// A feed whose events also go to the returned receiver, for the relay to the other
    /// replicas.
    pub fn relayed() -> (Self, mpsc::Receiver<LiveEvent>) {
        let (relay, events) = mpsc::channel(RELAY_CAPACITY);
        let feed = LiveFeed {
            relay: Some(relay),
            ..LiveFeed::default()
        };
        (feed, events)
    }

    /// Sends `event` to every open dashboard here (none listening is fine) and, when relayed,
    /// to the other replicas.
    pub fn publish(&self, event: LiveEvent) {
        if let Some(relay) = &self.relay
            && relay.try_send(event.clone()).is_err()
        {
            tracing::debug!(?event, "live event not relayed: the relay is behind");
        }
        self.publish_here(event);
    }

    /// Sends `event`, which another replica published, to the open dashboards here only.
    pub fn publish_here(&self, event: LiveEvent) {
        let _ = self.sender.send(event);
    }

    /// A new listener, receiving events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.sender.subscribe()
    }
}

/// Live feeds open at most at once, in total.
pub const MAX_FEEDS: usize = 64;
/// Live feeds one operator token holds at most.
pub const MAX_FEEDS_PER_TOKEN: usize = 4;

/// Why a live feed was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeedRefusal {
    /// The server holds its maximum of feeds.
    #[error("the server holds its maximum of {MAX_FEEDS} live feeds; retry later")]
    Full,
    /// This token holds its maximum.
    #[error("this token holds its maximum of {MAX_FEEDS_PER_TOKEN} live feeds; close one")]
    TokenFull,
}

/// Open live feeds, per operator token and in total.
#[derive(Debug, Default)]
pub struct FeedLimits {
    open: Mutex<HashMap<String, usize>>,
}

/// One open feed; dropping it frees its place.
#[derive(Debug)]
pub struct FeedSlot {
    limits: Arc<FeedLimits>,
    token: String,
}

impl FeedLimits {
    /// Opens a feed for the token named `token`, or says why not.
    pub fn admit(self: &Arc<Self>, token: &str) -> Result<FeedSlot, FeedRefusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.values().sum::<usize>() >= MAX_FEEDS {
            return Err(FeedRefusal::Full);
        }
        let held = open.entry(token.to_owned()).or_default();
        if *held >= MAX_FEEDS_PER_TOKEN {
            return Err(FeedRefusal::TokenFull);
        }
        *held += 1;
        Ok(FeedSlot {
            limits: Arc::clone(self),
            token: token.to_owned(),
        })
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(&self.token) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.token);
            }
        }
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

    #[tokio::test]
    async fn a_relayed_feed_hands_its_own_events_on_and_not_those_of_others() {
        let (feed, mut relayed) = LiveFeed::relayed();
        let mut listener = feed.subscribe();
        let mine = LiveEvent::AgentRegistered {
            agent_id: "here".into(),
        };
        let theirs = LiveEvent::AgentRegistered {
            agent_id: "there".into(),
        };
        feed.publish(mine.clone());
        feed.publish_here(theirs.clone());
        assert_eq!(relayed.recv().await.unwrap(), mine);
        assert!(relayed.try_recv().is_err());
        assert_eq!(listener.recv().await.unwrap(), mine);
        assert_eq!(listener.recv().await.unwrap(), theirs);
    }
}
