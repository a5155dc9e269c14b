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
    /// offer of a release to an agent is kept). One agent already offered it (every heartbeat
    /// and check after the first offer) is only read: an insert that ends in nothing still
    /// takes SQLite's write lock.
    pub async fn record_offers(
        &self,
        agent_ids: &[&str],
        version: &str,
        platform: &str,
        via: OfferVia,
        now: &str,
    ) -> Result<(), DbError> {
        if let [agent_id] = agent_ids
            && self.offer_recorded(agent_id, version, platform).await?
        {
            return Ok(());
        }
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

    /// Whether `version` on `platform` was offered to `agent_id` already.
    async fn offer_recorded(
        &self,
        agent_id: &str,
        version: &str,
        platform: &str,
    ) -> Result<bool, DbError> {
        const RECORDED: &str = "SELECT 1 FROM update_offers o WHERE o.agent_id = $1 AND o.version = $2 \
             AND o.platform = $3";
        self.offer_found(RECORDED, (agent_id, version, platform))
            .await
    }

    /// Whether `version` on `platform` was offered to `agent_id` already and the agent did
    /// not put that offer off (its latest progress for it is not `deferred`).
    pub async fn offered_not_deferred(
        &self,
        agent_id: &str,
        version: &str,
        platform: &str,
    ) -> Result<bool, DbError> {
        const NOT_DEFERRED: &str = concat!(
            "SELECT 1 FROM update_offers o WHERE o.agent_id = $1 AND o.version = $2 \
             AND o.platform = $3 AND NOT ",
            offer_deferred_now!()
        );
        self.offer_found(NOT_DEFERRED, (agent_id, version, platform))
            .await
    }

    /// Whether `query` (over `update_offers o`, bound to agent, version and platform) finds a
    /// row.
    async fn offer_found(
        &self,
        query: &'static str,
        (agent_id, version, platform): (&str, &str, &str),
    ) -> Result<bool, DbError> {
        let row = sqlx::query_as::<_, (i64,)>(query)
            .bind(agent_id)
            .bind(version)
            .bind(platform)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Agents offered `version` on `platform` (those of `group` only, when given) that reported
    /// no end step for it (healthy, failed, rolled back, refused) and did not put it off
    /// (`deferred`): `(in_flight, stuck)`, stuck being those first offered before `stuck_before`.
    pub async fn offers_in_flight(
        &self,
        (version, platform): (&str, &str),
        group: Option<&str>,
        stuck_before: &str,
    ) -> Result<(i64, i64), DbError> {
        // '' stands for every group: a group name is never empty.
        let group = group.unwrap_or_default();
        let (in_flight, stuck) = sqlx::query_as::<_, (i64, i64)>(concat!(
            "SELECT \
             CAST(COALESCE(SUM(CASE WHEN o.first_offered_at >= $3 THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN o.first_offered_at < $3 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM update_offers o WHERE o.version = $1 AND o.platform = $2 \
             AND NOT EXISTS (SELECT 1 FROM update_events u WHERE u.agent_id = o.agent_id \
                 AND u.version = $1 AND u.platform = $2 \
                 AND u.step IN ('healthy', 'failed', 'rolled_back', 'refused')) \
             AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = o.agent_id \
                 AND a.version = $1) \
             AND ($4 = '' OR EXISTS (SELECT 1 FROM agents g \
                 WHERE g.agent_id = o.agent_id AND g.agent_group = $4)) AND NOT ",
            offer_deferred_now!()
        ))
        .bind(version)
        .bind(platform)
        .bind(stuck_before)
        .bind(group)
        .fetch_one(&self.pool)
        .await?;
        Ok((in_flight, stuck))
    }

    /// Agents first offered `version` on `platform` between `from` (inclusive) and `to`
    /// (exclusive) with no end step and not deferred, for the live feed's stuck notices (at most
    /// 1,000).
    pub async fn offers_without_end(
        &self,
        version: &str,
        platform: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query_as::<_, (String,)>(concat!(
            "SELECT o.agent_id FROM update_offers o \
             WHERE o.version = $1 AND o.platform = $2 \
             AND o.first_offered_at >= $3 AND o.first_offered_at < $4 \
             AND NOT EXISTS (SELECT 1 FROM update_events u WHERE u.agent_id = o.agent_id \
                 AND u.version = $1 AND u.platform = $2 \
                 AND u.step IN ('healthy', 'failed', 'rolled_back', 'refused')) \
             AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = o.agent_id \
                 AND a.version = $1) AND NOT ",
            offer_deferred_now!(),
            " ORDER BY o.first_offered_at LIMIT 1000"
        ))
        .bind(version)
        .bind(platform)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(agent_id,)| agent_id).collect())
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
