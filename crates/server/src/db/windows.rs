//! Maintenance windows of groups. Queries only; the rules (what a window looks like, when it
//! is open, the audit) are in `crate::rollout::window`.

use super::{Db, DbError};

/// A group's stored windows: their text forms, one per line, and the clock they are read on.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredWindows {
    /// The group.
    pub agent_group: String,
    /// The windows, one per line.
    pub windows: String,
    /// `utc` or `agent`.
    pub clock: String,
}

impl Db {
    /// Sets `group`'s windows, replacing any it had.
    pub async fn set_group_windows(
        &self,
        group: &str,
        windows: &str,
        clock: &str,
        now: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO group_windows (agent_group, windows, clock, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (agent_group) \
             DO UPDATE SET windows = excluded.windows, clock = excluded.clock, \
             updated_at = excluded.updated_at",
        )
        .bind(group)
        .bind(windows)
        .bind(clock)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes `group`'s windows; `false` when it had none.
    pub async fn clear_group_windows(&self, group: &str) -> Result<bool, DbError> {
        let result = sqlx::query("DELETE FROM group_windows WHERE agent_group = $1")
            .bind(group)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Every group's windows, by group name.
    pub async fn all_group_windows(&self) -> Result<Vec<StoredWindows>, DbError> {
        Ok(sqlx::query_as::<_, StoredWindows>(
            "SELECT agent_group, windows, clock FROM group_windows ORDER BY agent_group",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
