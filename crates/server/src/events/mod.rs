//! The event bus between replicas: PostgreSQL `NOTIFY` to send, `LISTEN` (sqlx `PgListener`)
//! to receive.
//!
//! Every replica (and `release publish`) sends [`ClusterEvent`]s on one channel per database
//! schema; every replica listens and hands what arrives to a [`Dispatcher`]: a release
//! published or a rollout changed wakes the release watcher, which re-reads the releases table
//! and pushes to the agents this replica holds; a check-update addressed to this replica goes
//! to the agent's socket; an agent's revocation closes its socket wherever it is held; a clone
//! check addressed to this replica pings the socket it holds and answers whether it is alive
//! ([`crate::events::probe`]), and the answer settles the asker's wait; a
//! dashboard's live event ([`live`], sent by [`relay`]) goes to the
//! dashboards open on the other replicas. A payload carries ids (and, for live events, the
//! names of a state, version or step) only: the receiver reads the rows. When the
//! listening connection was lost (notifications sent meanwhile are gone), the watcher re-reads
//! everything once the listener is back; beyond that, the heartbeat answer offers a release to
//! any agent that missed its push. On SQLite there is one server and no bus: the watcher polls.
//! This module must never carry anything but ids and names in a payload, and never block the
//! hub.

pub mod live;
pub mod probe;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use cms_protocol::{ServerEvent, UpdateRequired};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::probe::Probes;
use crate::db::{Db, DbError};
use crate::events::live::{LiveEvent, LiveFeed};
use crate::ws::Hub;

/// Longest channel name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_CHANNEL_BYTES: usize = 63;
/// Pause before the listener tries to connect again, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What one replica tells the others; ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// `release publish` committed a release.
    ReleasePublished {
        /// Its version.
        version: String,
        /// Its platform.
        platform: String,
    },
    /// A release's rollout percentage changed.
    RolloutChanged {
        /// Its version.
        version: String,
        /// Its platform.
        platform: String,
    },
    /// An operator asked, through another replica, that one agent check for updates now.
    CheckUpdate {
        /// The agent.
        agent_id: String,
        /// The replica that holds its WebSocket.
        replica_id: String,
    },
    /// An operator revoked an agent: whichever replica holds its socket closes it.
    AgentRevoked {
        /// The agent.
        agent_id: String,
    },
    /// The clone check: a second connection presents `agent_id` at `origin`, whose socket
    /// `replica_id` holds; that replica pings it and answers with [`ClusterEvent::ProbeAnswered`].
    ProbeAgent {
        /// The agent.
        agent_id: String,
        /// The replica that holds its socket.
        replica_id: String,
        /// The replica that asks.
        origin: String,
        /// Names the answer.
        probe_id: String,
    },
    /// The answer to [`ClusterEvent::ProbeAgent`]: whether the socket answered its ping in time.
    ProbeAnswered {
        /// The replica that asked.
        origin: String,
        /// The probe answered.
        probe_id: String,
        /// The socket answered.
        alive: bool,
    },
    /// Something a dashboard shows changed on the replica `origin`.
    Live {
        /// The replica that published it (it has shown it already).
        origin: String,
        /// What changed.
        change: LiveEvent,
    },
}

impl ClusterEvent {
    /// The notification payload.
    pub fn payload(&self) -> String {
        // Serializing a plain enum of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Sends events to every replica (cheap to clone).
#[derive(Debug, Clone)]
pub struct EventBus {
    db: Db,
    /// `None` on SQLite: there is no other replica to tell.
    channel: Option<String>,
}

impl EventBus {
    /// The bus of the database `db` works in.
    pub async fn new(db: &Db) -> Result<Self, DbError> {
        let channel = db
            .current_schema()
            .await?
            .map(|schema| channel_for(&schema));
        Ok(EventBus {
            db: db.clone(),
            channel,
        })
    }

    /// The PostgreSQL channel, when there is one.
    pub fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    /// Sends `event` to every replica; `false` when there is no bus (SQLite).
    pub async fn publish(&self, event: &ClusterEvent) -> Result<bool, DbError> {
        let Some(channel) = &self.channel else {
            return Ok(false);
        };
        self.db.notify(channel, &event.payload()).await?;
        tracing::debug!(?event, "event sent to the replicas");
        Ok(true)
    }
}

/// The channel of one schema: `cms_events:SCHEMA`, cut to what PostgreSQL keeps.
pub fn channel_for(schema: &str) -> String {
    let mut channel = format!("cms_events:{schema}");
    let mut end = MAX_CHANNEL_BYTES.min(channel.len());
    while !channel.is_char_boundary(end) {
        end -= 1;
    }
    channel.truncate(end);
    channel
}

/// Where the events that reach this replica go.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    /// This replica's id: check-updates for other replicas are not ours.
    pub replica_id: Arc<str>,
    /// The agents connected here.
    pub hub: Hub,
    /// Wakes the release watcher for a re-read.
    pub releases_changed: Arc<Notify>,
    /// The dashboards open here.
    pub live: LiveFeed,
    /// The clone checks this replica waits on.
    pub probes: Probes,
    /// The bus, to answer the other replicas' clone checks.
    pub bus: EventBus,
}

impl Dispatcher {
    fn dispatch(&self, event: ClusterEvent) {
        match event {
            ClusterEvent::ReleasePublished { .. } | ClusterEvent::RolloutChanged { .. } => {
                tracing::debug!(?event, "releases changed; the watcher re-reads them");
                self.releases_changed.notify_one();
            }
            ClusterEvent::CheckUpdate {
                agent_id,
                replica_id,
            } if *replica_id == *self.replica_id => {
                let event = ServerEvent::UpdateRequired(UpdateRequired::default());
                match self.hub.notify(&agent_id, event) {
                    Ok(()) => tracing::info!(agent_id, "update check requested by another replica"),
                    Err(error) => {
                        tracing::info!(agent_id, %error, "update check from another replica not delivered");
                    }
                }
            }
            ClusterEvent::CheckUpdate { .. } => {}
            ClusterEvent::AgentRevoked { agent_id } => {
                if self.hub.disconnect(&agent_id) {
                    tracing::info!(agent_id, "revoked agent's WebSocket closed");
                }
            }
            ClusterEvent::ProbeAgent {
                agent_id,
                replica_id,
                origin,
                probe_id,
            } if *replica_id == *self.replica_id => {
                let (hub, bus) = (self.hub.clone(), self.bus.clone());
                tokio::spawn(probe::answer_probe(hub, bus, agent_id, origin, probe_id));
            }
            ClusterEvent::ProbeAgent { .. } => {}
            ClusterEvent::ProbeAnswered {
                origin,
                probe_id,
                alive,
            } if *origin == *self.replica_id => self.probes.settle(&probe_id, alive),
            ClusterEvent::ProbeAnswered { .. } => {}
            ClusterEvent::Live { origin, change } if *origin != *self.replica_id => {
                self.live.publish_here(change);
            }
            ClusterEvent::Live { .. } => {}
        }
    }

    /// After the listener (re)connected: notifications may have been missed, read everything.
    fn resync(&self) {
        self.releases_changed.notify_one();
    }
}

/// Listens on `channel` until `stop`, reconnecting with backoff; see the module docs.
pub async fn listen(url: String, channel: String, dispatcher: Dispatcher, stop: CancellationToken) {
    let mut retry = FIRST_RETRY;
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = subscribe(&url, &channel) => connected,
        };
        match connected {
            Ok(mut listener) => {
                tracing::info!(channel, "listening for events of the other replicas");
                retry = FIRST_RETRY;
                dispatcher.resync();
                if let Err(error) = receive(&mut listener, &dispatcher, &stop).await {
                    tracing::warn!(%error, "event listener failed; reconnecting");
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_ms = retry.as_millis() as u64, "cannot listen for events; retrying")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

async fn subscribe(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Hands notifications to `dispatcher` until `stop` (`Ok`) or an error the listener cannot
/// get over by itself.
async fn receive(
    listener: &mut PgListener,
    dispatcher: &Dispatcher,
    stop: &CancellationToken,
) -> Result<(), sqlx::Error> {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = listener.try_recv() => next?,
        };
        let Some(notification) = next else {
            tracing::warn!("event listener lost its connection and reconnected; re-reading");
            dispatcher.resync();
            continue;
        };
        match serde_json::from_str::<ClusterEvent>(notification.payload()) {
            Ok(event) => dispatcher.dispatch(event),
            Err(error) => {
                // A newer replica's event during a rolling upgrade: ignored.
                tracing::debug!(%error, "ignoring an unknown event");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_ids_only_and_parse_back() {
        let event = ClusterEvent::CheckUpdate {
            agent_id: "a1".into(),
            replica_id: "r1".into(),
        };
        let payload = event.payload();
        assert_eq!(
            payload,
            r#"{"event":"check_update","agent_id":"a1","replica_id":"r1"}"#
        );
        assert_eq!(
            serde_json::from_str::<ClusterEvent>(&payload).unwrap(),
            event
        );
    }

    #[test]
    fn channel_names_fit_postgres() {
        assert_eq!(channel_for("public"), "cms_events:public");
        let long = channel_for(&"é".repeat(60));
        assert!(long.len() <= MAX_CHANNEL_BYTES);
        assert!(long.starts_with("cms_events:"));
    }

    /// A dispatcher of the replica `me` over `hub`, with a bus on a throwaway SQLite store.
    async fn dispatcher(hub: Hub) -> (Dispatcher, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_for_command(dir.path(), None).await.unwrap();
        let dispatcher = Dispatcher {
            replica_id: "me".into(),
            hub,
            releases_changed: Arc::new(Notify::new()),
            live: LiveFeed::default(),
            probes: Probes::default(),
            bus: EventBus::new(&db).await.unwrap(),
        };
        (dispatcher, dir)
    }

    #[tokio::test]
    async fn check_updates_for_other_replicas_are_not_delivered_here() {
        let hub = Hub::new();
        let mut registration = hub.register("a1");
        let (dispatcher, _dir) = dispatcher(hub.clone()).await;
        dispatcher.dispatch(ClusterEvent::CheckUpdate {
            agent_id: "a1".into(),
            replica_id: "other".into(),
        });
        assert!(registration.events.try_recv().is_err());
        dispatcher.dispatch(ClusterEvent::CheckUpdate {
            agent_id: "a1".into(),
            replica_id: "me".into(),
        });
        assert_eq!(
            *registration.events.try_recv().unwrap(),
            ServerEvent::UpdateRequired(UpdateRequired::default())
        );
    }

    #[tokio::test]
    async fn clone_check_answers_settle_the_probes_of_this_replica_only() {
        let (dispatcher, _dir) = dispatcher(Hub::new()).await;
        let ours = dispatcher.probes.begin();
        let answer = |origin: &str, probe_id: &str| ClusterEvent::ProbeAnswered {
            origin: origin.into(),
            probe_id: probe_id.into(),
            alive: true,
        };
        let parsed: ClusterEvent =
            serde_json::from_str(&answer("other", &ours.probe_id).payload()).unwrap();
        dispatcher.dispatch(parsed);
        assert_eq!(dispatcher.probes.len(), 1, "another replica's answer");
        dispatcher.dispatch(answer("me", &ours.probe_id));
        assert!(ours.alive_within(std::time::Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn live_events_of_other_replicas_reach_the_dashboards_here_once() {
        let (dispatcher, _dir) = dispatcher(Hub::new()).await;
        let mut dashboard = dispatcher.live.subscribe();
        let live = |origin: &str, agent_id: &str| ClusterEvent::Live {
            origin: origin.into(),
            change: LiveEvent::AgentRegistered {
                agent_id: agent_id.into(),
            },
        };
        let echo = live("me", "shown-already");
        let parsed: ClusterEvent = serde_json::from_str(&echo.payload()).unwrap();
        assert_eq!(parsed, echo);
        dispatcher.dispatch(parsed);
        dispatcher.dispatch(live("other", "new"));
        let LiveEvent::AgentRegistered { agent_id } = dashboard.recv().await.unwrap() else {
            panic!("not the registration");
        };
        assert_eq!(agent_id, "new");
        assert!(dashboard.try_recv().is_err());
    }
}
