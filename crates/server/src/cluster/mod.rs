//! This replica among the others: its lease, the agents whose WebSocket it holds (recorded in
//! the database, so every replica answers `online` alike), and where a check-update must go.
//!
//! A replica renews its lease every [`LEASE_RENEWAL`]; a connection counts only while the lease
//! of the replica that recorded it runs, so the agents of a replica that died stop counting as
//! connected within [`LEASE`] even though nobody removed their rows (they reconnect elsewhere and
//! the row moves with them). The clone check across replicas ([`probe`]) asks the replica that
//! holds an identity's socket whether it is alive. The same code runs on SQLite, with one
//! replica. This module must
//! never fail a request or a socket because the database could not record a connection: it logs
//! and the next lease renewal or reconnect repairs it.

pub mod leader;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::db::{Db, DbError};
use crate::events::live::LiveFeed;
use crate::events::{ClusterEvent, EventBus, relay};
use crate::ws::Hub;

use crate::events::probe::{self, BUS_MARGIN, CLONE_PROBE, Probes};

/// How often a replica renews its lease.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(5);
/// How long a lease lasts: several renewals, so a slow database does not drop a live replica.
pub const LEASE: Duration = Duration::from_secs(20);
/// A replica whose lease ended this long ago is removed with its rows.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Where a check-update for an agent without a socket here must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Another live replica holds its socket; the request was sent to it.
    Sent {
        /// That replica.
        replica_id: String,
    },
    /// No live replica holds its socket.
    NotConnected,
}

/// This replica's place in the cluster (cheap to clone).
#[derive(Debug, Clone)]
pub struct Cluster {
    db: Db,
    replica_id: Arc<str>,
    bus: EventBus,
    live: LiveFeed,
    probes: Probes,
}

impl Cluster {
    /// A replica with a new id on `db`; [`Cluster::join`] announces it. With a bus (PostgreSQL)
    /// its dashboards' live feed is relayed to the other replicas by a task started here, which
    /// ends with the last copy of the feed.
    pub fn new(db: Db, bus: EventBus) -> Self {
        let replica_id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let live = if bus.channel().is_some() {
            let (live, events) = LiveFeed::relayed();
            tokio::spawn(relay::relay_live(bus.clone(), replica_id.clone(), events));
            live
        } else {
            LiveFeed::default()
        };
        Cluster {
            db,
            replica_id,
            bus,
            live,
            probes: Probes::default(),
        }
    }

    /// The live feed of the dashboards (relayed to the other replicas when there are any).
    pub fn live(&self) -> &LiveFeed {
        &self.live
    }

    /// This replica's id.
    pub fn replica_id(&self) -> Arc<str> {
        self.replica_id.clone()
    }

    /// The bus to the other replicas.
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// The clone checks this replica sent and waits on (their answers come through the bus).
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// The clone check of a handshake presenting `agent_id`: whether a socket of that identity
    /// answers a ping in time, here (`hub`) or on the live replica that holds it (asked over the
    /// bus, at most [`CLONE_PROBE`] + [`BUS_MARGIN`]). No socket, a silent one or no answer:
    /// `false`, and the newcomer takes the identity's place.
    pub async fn identity_is_live(&self, hub: &Hub, agent_id: &str) -> Result<bool, DbError> {
        if let Some(alive) = probe::socket_here_answers(hub, agent_id).await {
            return Ok(alive);
        }
        if self.bus.channel().is_none() {
            return Ok(false); // one replica: no socket elsewhere
        }
        let holder = self.db.connection_holder(agent_id, &clock::now()).await?;
        let Some(replica_id) = holder.filter(|holder| **holder != *self.replica_id) else {
            return Ok(false);
        };
        let pending = self.probes.begin();
        let event = ClusterEvent::ProbeAgent {
            agent_id: agent_id.to_owned(),
            replica_id: replica_id.clone(),
            origin: self.replica_id.to_string(),
            probe_id: pending.probe_id.clone(),
        };
        if !self.bus.publish(&event).await? {
            return Ok(false);
        }
        let alive = pending.alive_within(CLONE_PROBE + BUS_MARGIN).await;
        tracing::info!(
            agent_id,
            replica_id,
            alive,
            "clone check answered by the replica holding the socket"
        );
        Ok(alive)
    }

    /// Takes a lease and removes what dead replicas left behind.
    pub async fn join(&self) -> Result<(), DbError> {
        self.renew().await?;
        let forgotten = self.forget_dead().await?;
        tracing::info!(replica_id = %self.replica_id, forgotten, "replica joined");
        Ok(())
    }

    /// Renews the lease until `stop`, then leaves (removing this replica's rows).
    pub async fn run_lease(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(LEASE_RENEWAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let renewed = match self.renew().await {
                Ok(()) => self.forget_dead().await.map(drop),
                Err(error) => Err(error),
            };
            match renewed {
                Ok(()) if failing => {
                    tracing::info!("replica lease renewed again");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    tracing::warn!(%error, "cannot renew the replica lease");
                    failing = true;
                }
                Err(error) => tracing::debug!(%error, "replica lease still not renewed"),
            }
        }
        self.leave().await;
    }

    async fn renew(&self) -> Result<(), DbError> {
        let now = clock::now();
        let until = clock::from_now(signed(LEASE));
        self.db.renew_replica(&self.replica_id, &now, &until).await
    }

    async fn forget_dead(&self) -> Result<u64, DbError> {
        let before = clock::from_now(-signed(FORGET_AFTER));
        self.db.remove_dead_replicas(&before).await
    }

    /// Removes this replica and its connections (at shutdown).
    async fn leave(&self) {
        match self.db.remove_replica(&self.replica_id).await {
            Ok(()) => tracing::info!(replica_id = %self.replica_id, "replica left"),
            Err(error) => {
                tracing::warn!(%error, "cannot remove this replica; its lease runs out instead");
            }
        }
    }

    /// Records that this replica holds `agent_id`'s socket `connection_id`.
    pub async fn connected(&self, agent_id: &str, connection_id: u64) {
        let recorded = self
            .db
            .record_connection(agent_id, &self.replica_id, connection_id, &clock::now())
            .await;
        if let Err(error) = recorded {
            tracing::warn!(agent_id, %error, "cannot record the agent's connection");
        }
    }

    /// Removes the record of `connection_id`, unless the agent connected again since.
    pub async fn disconnected(&self, agent_id: &str, connection_id: u64) {
        let forgotten = self
            .db
            .forget_connection(agent_id, &self.replica_id, connection_id)
            .await;
        if let Err(error) = forgotten {
            tracing::warn!(agent_id, %error, "cannot remove the agent's connection record");
        }
    }

    /// Sends a check-update to the live replica that holds `agent_id`'s socket, if another
    /// one does.
    pub async fn route_check_update(&self, agent_id: &str) -> Result<Route, DbError> {
        let holder = self.db.connection_holder(agent_id, &clock::now()).await?;
        let Some(replica_id) = holder.filter(|holder| **holder != *self.replica_id) else {
            return Ok(Route::NotConnected);
        };
        let event = ClusterEvent::CheckUpdate {
            agent_id: agent_id.to_owned(),
            replica_id: replica_id.clone(),
        };
        if self.bus.publish(&event).await? {
            Ok(Route::Sent { replica_id })
        } else {
            Ok(Route::NotConnected)
        }
    }
}

fn signed(duration: Duration) -> time::Duration {
    time::Duration::try_from(duration).unwrap_or(time::Duration::MAX)
}

/// The one online rule every operator view asks: an agent is online while its WebSocket is
/// held by this replica (`held_here`) or by another live one (`connected`, from the connection
/// records), or when it was seen (`last_seen`, RFC 3339) within `offline_after` of `now`.
pub fn is_online(
    connected: bool,
    held_here: bool,
    last_seen: &str,
    offline_after: Duration,
    now: time::OffsetDateTime,
) -> bool {
    connected || held_here || clock::is_within(last_seen, offline_after, now)
}

#[cfg(test)]
mod online_tests {
    use super::*;

    #[test]
    fn a_socket_anywhere_or_a_recent_heartbeat_is_online() {
        let now = time::OffsetDateTime::now_utc();
        let window = Duration::from_secs(90);
        let recent = clock::format_utc(now - time::Duration::seconds(30));
        let old = clock::format_utc(now - time::Duration::seconds(300));
        assert!(is_online(false, false, &recent, window, now));
        assert!(!is_online(false, false, &old, window, now));
        assert!(is_online(true, false, &old, window, now));
        assert!(is_online(false, true, &old, window, now));
        assert!(!is_online(false, false, "not a time", window, now));
    }
}
