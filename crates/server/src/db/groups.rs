//! Agent groups: which group each agent is in and who set it. Queries only; the rules (valid
//! names, the operator's assignment winning, the audit) are in `crate::rollout::group`.

use super::{Db, DbError, StoredPin, StoredWindows};

impl Db {
    /// Puts the agent in the group it reported, unless an operator assigned one; `true` when
    /// that changed its group. Read first: a heartbeat almost always reports the group the
    /// agent is in, and an `UPDATE` that changes nothing still takes SQLite's write lock.
    pub async fn set_reported_group(&self, agent_id: &str, group: &str) -> Result<bool, DbError> {
        let unchanged = sqlx::query_as::<_, (i64,)>(
            "SELECT 1 FROM agents WHERE agent_id = $1 \
             AND (group_by_operator <> 0 OR agent_group = $2)",
        )
        .bind(agent_id)
        .bind(group)
        .fetch_optional(&self.pool)
        .await?;
        if unchanged.is_some() {
            return Ok(false);
        }
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

    /// Sets `group`'s own halt rule for a release (a `None` keeps what it had, or leaves that
    /// number to the release's rule); `false` when no such release is published.
    pub async fn set_group_halt_rule(
        &self,
        version: &str,
        platform: &str,
        group: &str,
        (percent, min_attempts): (Option<i64>, Option<i64>),
    ) -> Result<bool, DbError> {
        let result = sqlx::query(
            "INSERT INTO group_halt_rules \
             (version, platform, agent_group, halt_percent, halt_min_attempts) \
             SELECT version, platform, $3, $4, $5 FROM releases \
             WHERE version = $1 AND platform = $2 \
             ON CONFLICT (platform, agent_group, version) DO UPDATE SET \
             halt_percent = COALESCE(excluded.halt_percent, group_halt_rules.halt_percent), \
             halt_min_attempts = \
                 COALESCE(excluded.halt_min_attempts, group_halt_rules.halt_min_attempts)",
        )
        .bind(version)
        .bind(platform)
        .bind(group)
        .bind(percent)
        .bind(min_attempts)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Sets `group`'s own cap of updates in flight for a release (0 removes it); `false` when
    /// no such release is published.
    pub async fn set_group_in_flight(
        &self,
        version: &str,
        platform: &str,
        group: &str,
        cap: i64,
    ) -> Result<bool, DbError> {
        let published = sqlx::query_as::<_, (i64,)>(
            "SELECT 1 FROM releases WHERE version = $1 AND platform = $2",
        )
        .bind(version)
        .bind(platform)
        .fetch_optional(&self.pool)
        .await?
        .is_some();
        if !published {
            return Ok(false);
        }
        let sql = if cap == 0 {
            "DELETE FROM group_in_flight \
             WHERE version = $1 AND platform = $2 AND agent_group = $3"
        } else {
            "INSERT INTO group_in_flight (version, platform, agent_group, max_in_flight) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (platform, agent_group, version) \
             DO UPDATE SET max_in_flight = excluded.max_in_flight"
        };
        let mut query = sqlx::query(sql).bind(version).bind(platform).bind(group);
        if cap != 0 {
            query = query.bind(cap);
        }
        query.execute(&self.pool).await?;
        Ok(true)
    }

    /// The groups with their own cap of updates in flight for a release: `(group, cap)`.
    pub async fn group_in_flight_caps(
        &self,
        version: &str,
        platform: &str,
    ) -> Result<Vec<(String, i64)>, DbError> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT agent_group, max_in_flight FROM group_in_flight \
             WHERE version = $1 AND platform = $2 ORDER BY agent_group",
        )
        .bind(version)
        .bind(platform)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The groups with their own halt rule for a release: `(group, percent, min_attempts)`,
    /// a `None` meaning the release's.
    pub async fn group_halt_rules(
        &self,
        version: &str,
        platform: &str,
    ) -> Result<Vec<(String, Option<i64>, Option<i64>)>, DbError> {
        Ok(sqlx::query_as::<_, (String, Option<i64>, Option<i64>)>(
            "SELECT agent_group, halt_percent, halt_min_attempts FROM group_halt_rules \
             WHERE version = $1 AND platform = $2 ORDER BY agent_group",
        )
        .bind(version)
        .bind(platform)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The groups a release concerns: those of the agents it was offered to and those with
    /// their own percentage, halt rule or in-flight cap for it, by name (at most `limit`).
    pub async fn release_groups(
        &self,
        version: &str,
        platform: &str,
        limit: i64,
    ) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query_as::<_, (String,)>(
            "SELECT agent_group FROM ( \
               SELECT a.agent_group FROM update_offers o JOIN agents a ON a.agent_id = o.agent_id \
               WHERE o.version = $1 AND o.platform = $2 \
               UNION SELECT agent_group FROM group_rollouts WHERE version = $1 AND platform = $2 \
               UNION SELECT agent_group FROM group_halt_rules WHERE version = $1 AND platform = $2 \
               UNION SELECT agent_group FROM group_in_flight WHERE version = $1 AND platform = $2 \
             ) AS g ORDER BY agent_group LIMIT $3",
        )
        .bind(version)
        .bind(platform)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(group,)| group).collect())
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

/// What decides an agent's offer besides the releases: its group, the group's maintenance
/// windows and its pin on the agent's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRules {
    /// The agent's group.
    pub group: String,
    /// The group's windows, if it has any.
    pub windows: Option<StoredWindows>,
    /// The group's pin on the platform asked about, if any.
    pub pin: Option<StoredPin>,
}

type RulesRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl Db {
    /// The agent's group with its windows and its pin on `platform`, in one query (the offer
    /// runs on every heartbeat); `None` for an unknown agent.
    pub async fn group_rules(
        &self,
        agent_id: &str,
        platform: &str,
    ) -> Result<Option<GroupRules>, DbError> {
        let row = sqlx::query_as::<_, RulesRow>(
            "SELECT a.agent_group, w.windows, w.clock, p.version, p.rollback FROM agents a \
             LEFT JOIN group_windows w ON w.agent_group = a.agent_group \
             LEFT JOIN group_pins p ON p.agent_group = a.agent_group AND p.platform = $2 \
             WHERE a.agent_id = $1",
        )
        .bind(agent_id)
        .bind(platform)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(group, windows, clock, version, rollback)| {
            let windows = windows.zip(clock).map(|(windows, clock)| StoredWindows {
                agent_group: group.clone(),
                windows,
                clock,
            });
            let pin = version.map(|version| StoredPin {
                agent_group: group.clone(),
                platform: platform.to_owned(),
                version,
                rollback,
            });
            GroupRules {
                group,
                windows,
                pin,
            }
        }))
    }
}
