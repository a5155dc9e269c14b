//! The offers the server made: which release it told which agent to install, and how. Queries
//! only; `crate::rollout::offer` records them and `crate::intake::progress` asks them.

use super::{Db, DbError};

/// How an offer went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferVia {
    /// The answer to `GET /api/v1/agent/update`.
    Check,
    /// The answer to a heartbeat on the WebSocket.
    Heartbeat,
    /// An `agent:update_required` push from the release watcher.
    Push,
}

impl OfferVia {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            OfferVia::Check => "check",
            OfferVia::Heartbeat => "heartbeat",
            OfferVia::Push => "push",
        }
    }
}

impl Db {
    /// Records that `version` on `platform` was offered to each of `agent_ids` (the first
    /// offer of a release to an agent is kept).
    pub async fn record_offers(
        &self,
        agent_ids: &[&str],
        version: &str,
        platform: &str,
        via: OfferVia,
        now: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for agent_id in agent_ids {
            sqlx::query(
                "INSERT INTO update_offers (agent_id, version, platform, via, first_offered_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (agent_id, version, platform) DO NOTHING",
            )
            .bind(*agent_id)
            .bind(version)
            .bind(platform)
            .bind(via.name())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The versions published for `platform` that the server offered to `agent_id`.
    pub async fn offered_versions(
        &self,
        agent_id: &str,
        platform: &str,
    ) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query_as::<_, (String,)>(
            "SELECT o.version FROM update_offers o JOIN releases r \
             ON r.version = o.version AND r.platform = o.platform \
             WHERE o.agent_id = $1 AND o.platform = $2",
        )
        .bind(agent_id)
        .bind(platform)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }
}
