//! Queries of the operator dashboard's fleet and error pages: counts, the searched and sorted
//! agent list, one agent's page, version history and error groups.

use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::{AgentRow, Db, DbError};

/// Agents counted by a column's value.
pub type Tally = Vec<(String, i64)>;

/// The fleet's counts for the dashboard's cards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetCounts {
    /// Agents registered.
    pub total: i64,
    /// Agents seen since the online cutoff or connected to a live replica.
    pub online: i64,
    /// The others seen since the missing cutoff.
    pub offline: i64,
    /// Agents neither connected nor seen since the missing cutoff.
    pub missing: i64,
    /// Agents an operator revoked: counted apart, in none of the other counts.
    pub revoked: i64,
    /// Agents by state.
    pub by_state: Tally,
    /// Agents by version.
    pub by_version: Tally,
    /// Agents by platform.
    pub by_platform: Tally,
}

/// Column the agent list is sorted by; each has an index `(column, agent_id)`, and with the
/// state filter `(state, column, agent_id)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentSort {
    /// Machine name.
    #[default]
    Hostname,
    /// Latest contact.
    LastSeen,
    /// Reported version.
    Version,
    /// Reported state.
    State,
    /// Platform.
    Platform,
}

impl AgentSort {
    fn column(self) -> &'static str {
        match self {
            AgentSort::Hostname => "hostname",
            AgentSort::LastSeen => "last_seen",
            AgentSort::Version => "version",
            AgentSort::State => "state",
            AgentSort::Platform => "platform",
        }
    }
}

/// What the agent list shows: a search, an optional state, a sort and a bounded offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSearch {
    /// Part of the hostname or agent id (case-insensitive); empty for all.
    pub text: String,
    /// Only agents in this state.
    pub state: Option<String>,
    /// Only agents in this group.
    pub group: Option<String>,
    /// Only agents that reported this release (and this step of it, when given).
    pub update: Option<UpdateFilter>,
    /// Sort column.
    pub sort: AgentSort,
    /// Newest / largest first.
    pub descending: bool,
    /// Rows to skip (bounded by the caller).
    pub offset: i64,
    /// Rows wanted.
    pub limit: i64,
}

/// Agents that reported a release: its `version` and `platform`, and `step` (one of the
/// update steps, checked by the caller) when only those that reached it are wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateFilter {
    /// The release version.
    pub version: String,
    /// Its platform.
    pub platform: String,
    /// A step of the update (`failed`, `rolled_back`, ...).
    pub step: Option<String>,
}

/// An agent's latest report of a release's update (of one step of it, when filtered), with the
/// reason of a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LatestUpdate {
    /// The agent.
    #[serde(skip)]
    pub agent_id: String,
    /// Its latest step.
    pub step: String,
    /// The update step that failed, for `failed`.
    pub failed_step: Option<String>,
    /// What the agent said (why it failed or rolled back).
    pub detail: Option<String>,
    /// When (the agent's clock, RFC 3339).
    pub created_at: String,
}

/// A reason agents gave for a release's failures and rollbacks, with how many gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FailureReason {
    /// `failed` or `rolled_back`.
    pub step: String,
    /// The update step that failed, for `failed`.
    pub failed_step: Option<String>,
    /// What the agents said.
    pub detail: Option<String>,
    /// Agents that gave it.
    pub agents: i64,
}

/// One agent row of the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FleetAgent {
    /// What the operator listing shows of it.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub agent: AgentRow,
    /// Registration time (RFC 3339).
    pub registered_at: String,
    /// Name of the enrollment token that enrolled it, when one did.
    pub enrolled_by: Option<String>,
    /// When its current credential was issued (RFC 3339); older rows: registration time.
    pub credential_at: Option<String>,
    /// Its group (`default` unless the agent or an operator gave one).
    #[sqlx(rename = "agent_group")]
    #[serde(rename = "group")]
    pub group: String,
    /// Metrics of the latest heartbeat (JSON text), if any.
    #[serde(skip)]
    pub metrics: Option<String>,
}

/// A version an agent ran, with when it was first seen running it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct VersionSeen {
    /// The version.
    pub version: String,
    /// First heartbeat with it (RFC 3339).
    pub first_seen: String,
}

/// Error reports of one kind and message signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ErrorGroup {
    /// Report kind.
    pub kind: String,
    /// Message with ids, hex strings and numbers stripped.
    pub signature: String,
    /// Reports in the group.
    pub count: i64,
    /// Agents that sent one.
    pub agents: i64,
    /// Earliest report (agent's clock, RFC 3339).
    pub first_seen: String,
    /// Latest report (agent's clock, RFC 3339).
    pub last_seen: String,
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The `WHERE` clause of `search` (empty for the whole fleet, so the count and the sort use
/// the indexes alone) and the values its placeholders `$1`, `$2` bind, in order.
fn filter(search: &AgentSearch) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if !search.text.is_empty() {
        values.push(like_pattern(&search.text));
        clauses.push(
            "(LOWER(hostname) LIKE $1 ESCAPE '\\' OR agent_id LIKE $1 ESCAPE '\\')".to_owned(),
        );
    }
    if let Some(state) = &search.state {
        values.push(state.clone());
        clauses.push(format!("state = ${}", values.len()));
    }
    if let Some(group) = &search.group {
        values.push(group.clone());
        clauses.push(format!("agent_group = ${}", values.len()));
    }
    if let Some(update) = &search.update {
        values.push(update.version.clone());
        values.push(update.platform.clone());
        let (version, platform) = (values.len() - 1, values.len());
        let step = update.step.as_ref().map_or(String::new(), |step| {
            values.push(step.clone());
            format!(" AND u.step = ${}", values.len())
        });
        clauses.push(format!(
            "agent_id IN (SELECT u.agent_id FROM update_events u WHERE u.version = ${version} \
             AND u.platform = ${platform} AND u.verified = 1{step})"
        ));
    }
    if clauses.is_empty() {
        return (String::new(), values);
    }
    (format!("WHERE {}", clauses.join(" AND ")), values)
}

impl Db {
    /// The fleet's counts: online is seen since `online_since` or connected to a replica whose
    /// lease runs past `now` (as `GET /api/v1/agents` says), missing is neither and not seen
    /// since `missing_before` (stored-format timestamps).
    pub async fn fleet_counts(
        &self,
        online_since: &str,
        missing_before: &str,
        now: &str,
    ) -> Result<FleetCounts, DbError> {
        let (total, online, missing, revoked) = sqlx::query_as::<_, (i64, i64, i64, i64)>(
            "SELECT CAST(COALESCE(SUM(CASE WHEN a.revoked_at IS NULL THEN 1 ELSE 0 END), 0) \
                 AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN a.revoked_at IS NULL AND (a.last_seen >= $1 \
                 OR k.agent_id IS NOT NULL) THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN a.revoked_at IS NULL AND a.last_seen < $2 \
                 AND k.agent_id IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN a.revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) \
                 AS BIGINT) \
             FROM agents a LEFT JOIN (SELECT DISTINCT c.agent_id FROM agent_connections c \
                 JOIN replicas r ON r.replica_id = c.replica_id WHERE r.lease_until > $3) k \
                 ON k.agent_id = a.agent_id",
        )
        .bind(online_since)
        .bind(missing_before)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(FleetCounts {
            total,
            online,
            offline: total - online - missing,
            missing,
            revoked,
            by_state: self.tally("state").await?,
            by_version: self.tally("version").await?,
            by_platform: self.tally("platform").await?,
        })
    }

    /// Agents counted by `column` (one of the indexed ones), largest group first.
    async fn tally(&self, column: &'static str) -> Result<Tally, DbError> {
        let sql = format!(
            "SELECT {column}, COUNT(*) FROM agents WHERE revoked_at IS NULL GROUP BY {column} \
             ORDER BY COUNT(*) DESC, {column} LIMIT 100"
        );
        // Audited: `column` is one of the fixed names above, never request data.
        Ok(sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?)
    }

    /// One page of the searched, sorted agent list, and how many agents match in all.
    pub async fn search_agents(
        &self,
        search: &AgentSearch,
    ) -> Result<(Vec<FleetAgent>, i64), DbError> {
        // Audited: the SQL is put together from constant text and the fixed column names of
        // `AgentSort`; every value is bound.
        let (filter, values) = filter(search);
        let mut count = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM agents {filter}"
        )));
        for value in &values {
            count = count.bind(value.as_str());
        }
        let (total,) = count.fetch_one(&self.pool).await?;
        let direction = if search.descending { "DESC" } else { "ASC" };
        let column = search.sort.column();
        let (limit, offset) = (values.len() + 1, values.len() + 2);
        let sql = format!(
            "SELECT agent_id, hostname, platform, version, state, last_seen, network, revoked_at, \
             registered_at, enrolled_by, credential_at, agent_group, metrics FROM agents {filter} \
             ORDER BY {column} {direction}, agent_id {direction} LIMIT ${limit} OFFSET ${offset}"
        );
        let mut page = sqlx::query_as::<_, FleetAgent>(AssertSqlSafe(sql));
        for value in &values {
            page = page.bind(value.as_str());
        }
        let rows = page
            .bind(search.limit)
            .bind(search.offset)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows, total))
    }

    /// One agent's row, if registered.
    pub async fn fleet_agent(&self, agent_id: &str) -> Result<Option<FleetAgent>, DbError> {
        let row = sqlx::query_as::<_, FleetAgent>(
            "SELECT agent_id, hostname, platform, version, state, last_seen, network, revoked_at, \
             registered_at, enrolled_by, credential_at, agent_group, metrics FROM agents \
             WHERE agent_id = $1",
        )
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// The versions an agent ran, oldest first.
    pub async fn version_history(&self, agent_id: &str) -> Result<Vec<VersionSeen>, DbError> {
        Ok(sqlx::query_as::<_, VersionSeen>(
            "SELECT version, first_seen FROM agent_versions WHERE agent_id = $1 \
             ORDER BY first_seen LIMIT 100",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The latest report of the release `filter` names (of its step, when it names one) of
    /// each of `agent_ids` that made one.
    pub async fn latest_updates(
        &self,
        filter: &UpdateFilter,
        agent_ids: &[&str],
    ) -> Result<Vec<LatestUpdate>, DbError> {
        if agent_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (4..agent_ids.len() + 4).map(|i| format!("${i}")).collect();
        // Audited: only numbered placeholders are put in; every value is bound. '' stands for
        // every step: a step name is never empty.
        let sql = format!(
            "SELECT agent_id, step, failed_step, detail, created_at FROM update_events \
             WHERE version = $1 AND platform = $2 AND verified = 1 AND ($3 = '' OR step = $3) \
             AND agent_id IN ({}) ORDER BY agent_id, created_at DESC, received_at DESC",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, LatestUpdate>(AssertSqlSafe(sql))
            .bind(&filter.version)
            .bind(&filter.platform)
            .bind(filter.step.as_deref().unwrap_or_default());
        for agent_id in agent_ids {
            query = query.bind(*agent_id);
        }
        let mut rows = query.fetch_all(&self.pool).await?;
        rows.dedup_by(|later, first| later.agent_id == first.agent_id);
        Ok(rows)
    }

    /// The most given reasons of a release's failures and rollbacks (at most `limit`), each
    /// agent counted once per reason.
    pub async fn failure_reasons(
        &self,
        (version, platform): (&str, &str),
        limit: i64,
    ) -> Result<Vec<FailureReason>, DbError> {
        Ok(sqlx::query_as::<_, FailureReason>(
            "SELECT step, failed_step, detail, COUNT(DISTINCT agent_id) AS agents \
             FROM update_events WHERE version = $1 AND platform = $2 AND verified = 1 \
             AND step IN ('failed', 'rolled_back') GROUP BY step, failed_step, detail \
             ORDER BY COUNT(DISTINCT agent_id) DESC, step LIMIT $3",
        )
        .bind(version)
        .bind(platform)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Error reports grouped by kind and signature, largest group first (at most `limit`).
    pub async fn error_groups(&self, limit: i64) -> Result<Vec<ErrorGroup>, DbError> {
        Ok(sqlx::query_as::<_, ErrorGroup>(
            "SELECT kind, COALESCE(signature, message) AS signature, COUNT(*) AS count, \
             COUNT(DISTINCT agent_id) AS agents, MIN(created_at) AS first_seen, \
             MAX(created_at) AS last_seen FROM error_reports \
             GROUP BY kind, COALESCE(signature, message) \
             ORDER BY COUNT(*) DESC, MAX(created_at) DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_binds_what_it_names() {
        let mut search = AgentSearch::default();
        assert_eq!(filter(&search), (String::new(), vec![]));
        search.state = Some("IDLE".into());
        assert_eq!(
            filter(&search),
            ("WHERE state = $1".into(), vec!["IDLE".into()])
        );
        search.text = "Web".into();
        let (sql, values) = filter(&search);
        assert!(
            sql.starts_with("WHERE (LOWER(hostname) LIKE $1") && sql.ends_with("AND state = $2")
        );
        assert_eq!(values, ["%web%", "IDLE"]);
        search.update = Some(UpdateFilter {
            version: "2.0.0".into(),
            platform: "linux-x86_64".into(),
            step: Some("failed".into()),
        });
        let (sql, values) = filter(&search);
        assert!(
            sql.ends_with("u.version = $3 AND u.platform = $4 AND u.verified = 1 AND u.step = $5)"),
            "{sql}"
        );
        assert_eq!(values, ["%web%", "IDLE", "2.0.0", "linux-x86_64", "failed"]);
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("Web"), "%web%");
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
