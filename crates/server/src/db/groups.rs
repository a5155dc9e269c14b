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
