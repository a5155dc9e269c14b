//! Groups pinned to a release. Queries only; the rules (which versions may be pinned, the
//! rollback statement an older one needs, the audit) are in `crate::rollout::pin`.

use super::{Db, DbError};

/// A group's pin on one platform.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredPin {
    /// The group.
    pub agent_group: String,
    /// The platform.
    pub platform: String,
    /// The version its agents are offered.
    pub version: String,
    /// The root-signed rollback statement (JSON), for a version older than the newest.
    pub rollback: Option<String>,
}

impl Db {
    /// Pins `group`'s agents on `platform` to `version`, replacing an earlier pin.
    pub async fn set_group_pin(&self, pin: &StoredPin, now: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO group_pins (agent_group, platform, version, rollback, pinned_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_group, platform) \
             DO UPDATE SET version = excluded.version, rollback = excluded.rollback, \
             pinned_at = excluded.pinned_at",
        )
        .bind(&pin.agent_group)
        .bind(&pin.platform)
        .bind(&pin.version)
        .bind(&pin.rollback)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes `group`'s pin on `platform`; `false` when it had none.
    pub async fn clear_group_pin(&self, group: &str, platform: &str) -> Result<bool, DbError> {
        let result = sqlx::query("DELETE FROM group_pins WHERE agent_group = $1 AND platform = $2")
            .bind(group)
            .bind(platform)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Every pin, by group and platform.
    pub async fn all_group_pins(&self) -> Result<Vec<StoredPin>, DbError> {
        Ok(sqlx::query_as::<_, StoredPin>(
            "SELECT agent_group, platform, version, rollback FROM group_pins \
             ORDER BY agent_group, platform",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
