//! Heartbeats: an agent's state, version and metrics stored, and the dashboards told when its
//! state or version changed (over HTTP and over the WebSocket alike).
//!
//! An agent's version history keeps its [`VERSIONS_KEPT`] most recent versions and every
//! published one, so an agent reporting a new version on each heartbeat cannot grow it.
//!
//! This module must never publish a live event for a heartbeat that changed nothing the
//! dashboard shows.

use crate::clock;
use crate::db::{Db, DbError, Heartbeat};
use crate::events::live::{LiveEvent, LiveFeed};

/// Versions kept in an agent's history besides the published ones.
pub const VERSIONS_KEPT: i64 = 20;

/// Stores `heartbeat` of `agent_id` and publishes [`LiveEvent::AgentChanged`] when its state or
/// version differs from what was stored; `false` (nothing stored) when the agent is unknown or
/// was revoked.
pub async fn record(
    db: &Db,
    live: &LiveFeed,
    agent_id: &str,
    heartbeat: &Heartbeat<'_>,
) -> Result<bool, DbError> {
    let Some((state, version)) = db.update_status(agent_id, heartbeat, &clock::now()).await? else {
        return Ok(false);
    };
    if version != heartbeat.version {
        let trimmed = db.trim_version_history(agent_id, VERSIONS_KEPT).await?;
        if trimmed > 0 {
            tracing::debug!(agent_id, trimmed, "old versions left the agent's history");
        }
    }
    if state != heartbeat.state || version != heartbeat.version {
        live.publish(LiveEvent::AgentChanged {
            agent_id: agent_id.to_owned(),
            state: heartbeat.state.to_owned(),
            version: heartbeat.version.to_owned(),
        });
    }
    Ok(true)
}
