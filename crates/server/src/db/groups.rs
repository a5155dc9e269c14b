//! Agent groups: which group each agent is in and who set it. Queries only; the rules (valid
//! names, the operator's assignment winning, the audit) are in `crate::rollout::group`.

use super::{Db, DbError};

impl Db {
    /// Puts the agent in the group it reported, unless an operator assigned one; `true` when
    /// that changed its group.
    pub async fn set_reported_group(&self, agent_id: &str, group: &str) -> Result<bool, DbError> {
        let result = sqlx::query(
            "UPDATE agents SET agent_group = $1 \
             WHERE agent_id = $2 AND group_by_operator = 0 AND agent_group <> $1",
        )
        .bind(group)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Puts the agent in `group` as an operator's assignment; `false` for an unknown agent.
    pub async fn set_operator_group(&self, agent_id: &str, group: &str) -> Result<bool, DbError> {
        let result = sqlx::query(
            "UPDATE agents SET agent_group = $1, group_by_operator = 1 WHERE agent_id = $2",
        )
        .bind(group)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Agents per group, largest first (at most `limit` groups).
    pub async fn group_sizes(&self, limit: i64) -> Result<Vec<(String, i64)>, DbError> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT agent_group, COUNT(*) FROM agents GROUP BY agent_group \
             ORDER BY COUNT(*) DESC, agent_group LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Db {
    /// The agent's group, if registered.
    pub async fn agent_group(&self, agent_id: &str) -> Result<Option<String>, DbError> {
        let row =
            sqlx::query_as::<_, (String,)>("SELECT agent_group FROM agents WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(group,)| group))
    }

    /// Sets `group`'s own rollout percentage of a release; `false` when no such release is
    /// published.
    pub async fn set_group_rollout(
        &self,
        version: &str,
        platform: &str,
        group: &str,
        percent: i64,
    ) -> Result<bool, DbError> {
        let result = sqlx::query(
            "INSERT INTO group_rollouts (version, platform, agent_group, rollout_percent) \
             SELECT version, platform, $3, $4 FROM releases WHERE version = $1 AND platform = $2 \
             ON CONFLICT (platform, agent_group, version) \
             DO UPDATE SET rollout_percent = excluded.rollout_percent",
        )
        .bind(version)
        .bind(platform)
        .bind(group)
        .bind(percent)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// `group`'s own percentages of the releases for `platform`: `(version, percent)`, read as
    /// 0 while the release is paused.
    pub async fn group_rollouts(
        &self,
        platform: &str,
        group: &str,
    ) -> Result<Vec<(String, i64)>, DbError> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT g.version, CASE WHEN r.paused = 0 THEN g.rollout_percent ELSE 0 END \
             FROM group_rollouts g JOIN releases r \
             ON r.version = g.version AND r.platform = g.platform \
             WHERE g.platform = $1 AND g.agent_group = $2",
        )
        .bind(platform)
        .bind(group)
        .fetch_all(&self.pool)
        .await?)
    }
}
