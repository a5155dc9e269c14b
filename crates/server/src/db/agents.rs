//! Rows of the `agents` table: registration, heartbeats, the operator listing.

use super::{Db, DbError, split_page};

/// A new agent row, written at registration.
#[derive(Debug, Clone)]
pub struct NewAgent<'a> {
    /// Generated id.
    pub agent_id: &'a str,
    /// SHA-256 hex of the bearer token.
    pub token_hash: &'a str,
    /// Reported machine name.
    pub hostname: &'a str,
    /// Reported platform.
    pub platform: &'a str,
    /// Reported agent version.
    pub version: &'a str,
    /// Initial state name.
    pub state: &'a str,
    /// Name of the enrollment token that admitted it, if one did.
    pub enrolled_by: Option<&'a str>,
}

/// What the database knows of a presented agent credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCredential {
    /// The agent it belongs to.
    pub agent_id: String,
    /// The stored hash that matched (compared again in constant time by the caller).
    pub token_hash: String,
    /// Whether an operator revoked the agent.
    pub revoked: bool,
    /// Whether it matched the proposed credential of a rotation, not the current one.
    pub pending: bool,
}

/// An agent row as the operator listing needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct AgentRow {
    /// Stable id.
    pub agent_id: String,
    /// Machine name.
    pub hostname: String,
    /// Platform.
    pub platform: String,
    /// Latest reported version.
    pub version: String,
    /// Latest reported state.
    pub state: String,
    /// Latest contact (RFC 3339).
    pub last_seen: String,
    /// How it reaches the backend, from its latest heartbeat (older agents do not say).
    pub network: Option<String>,
    /// When an operator revoked it (RFC 3339); absent while its credential is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// Where a page of the agent listing starts: after this (hostname, agent_id).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentKey {
    /// Hostname of the last agent of the previous page.
    pub hostname: String,
    /// Its id.
    pub agent_id: String,
}

impl AgentRow {
    /// The key the next page starts after.
    pub fn key(&self) -> AgentKey {
        AgentKey {
            hostname: self.hostname.clone(),
            agent_id: self.agent_id.clone(),
        }
    }
}

type AgentTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// What a heartbeat stores.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat<'a> {
    /// Reported version.
    pub version: &'a str,
    /// Reported state name.
    pub state: &'a str,
    /// Reported metrics as JSON text.
    pub metrics_json: &'a str,
    /// The agent's network route, when it reported one.
    pub network: Option<&'a str>,
}

/// Adds `version` to the agent's version history (once).
async fn record_version<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Any>,
    agent_id: &str,
    version: &str,
    now: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO agent_versions (agent_id, version, first_seen) VALUES ($1, $2, $3) \
         ON CONFLICT (agent_id, version) DO NOTHING",
    )
    .bind(agent_id)
    .bind(version)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}

impl Db {
    /// Inserts a newly registered agent.
    pub async fn insert_agent(&self, agent: &NewAgent<'_>, now: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO agents (agent_id, token_hash, hostname, platform, version, state, \
             registered_at, last_seen, credential_at, enrolled_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8)",
        )
        .bind(agent.agent_id)
        .bind(agent.token_hash)
        .bind(agent.hostname)
        .bind(agent.platform)
        .bind(agent.version)
        .bind(agent.state)
        .bind(now)
        .bind(agent.enrolled_by)
        .execute(&mut *tx)
        .await?;
        record_version(&mut *tx, agent.agent_id, agent.version, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Looks up an agent by its token hash.
    pub async fn agent_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<AgentCredential>, DbError> {
        let row = sqlx::query_as::<_, (String, String, Option<String>, Option<String>)>(
            "SELECT agent_id, token_hash, revoked_at, pending_token_hash FROM agents \
             WHERE token_hash = $1 OR pending_token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(agent_id, current, revoked_at, pending_hash)| {
            let pending = current != token_hash && pending_hash.as_deref() == Some(token_hash);
            AgentCredential {
                agent_id,
                token_hash: if pending {
                    pending_hash.unwrap_or_default()
                } else {
                    current
                },
                revoked: revoked_at.is_some(),
                pending,
            }
        }))
    }

    /// Whether an agent with this id is registered.
    pub async fn agent_exists(&self, agent_id: &str) -> Result<bool, DbError> {
        let row = sqlx::query_as::<_, (String,)>("SELECT agent_id FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The platform an agent registered with.
    pub async fn agent_platform(&self, agent_id: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query_as::<_, (String,)>("SELECT platform FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(platform,)| platform))
    }

    /// Records a heartbeat: version, state, metrics (JSON text) and last contact, and the
    /// version in the agent's history when it is new. Returns the state and version stored
    /// before, `None` for an unknown or revoked agent (nothing is stored for it).
    ///
    /// Three short statements rather than one read-then-write transaction: on SQLite, two
    /// such transactions meeting would fail one of them at once ("database is locked")
    /// instead of waiting. Two heartbeats of one agent never overlap, and the history insert
    /// is idempotent. The status goes through the relaxed pool (it only says the agent was
    /// there, and the next heartbeat says it again); a new version's history entry does not.
    pub async fn update_status(
        &self,
        agent_id: &str,
        heartbeat: &Heartbeat<'_>,
        now: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        let before = sqlx::query_as::<_, (String, String)>(
            "SELECT state, version FROM agents WHERE agent_id = $1 AND revoked_at IS NULL",
        )
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        if before.is_none() {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE agents SET version = $1, state = $2, network = $3, last_seen = $4, \
             metrics = $5 WHERE agent_id = $6",
        )
        .bind(heartbeat.version)
        .bind(heartbeat.state)
        .bind(heartbeat.network)
        .bind(now)
        .bind(heartbeat.metrics_json)
        .bind(agent_id)
        .execute(self.relaxed())
        .await?;
        if before
            .as_ref()
            .is_some_and(|(_, version)| version != heartbeat.version)
        {
            record_version(&self.pool, agent_id, heartbeat.version, now).await?;
        }
        Ok(before)
    }

    /// Records a contact without new status (through the relaxed pool, like a heartbeat's).
    pub async fn touch(&self, agent_id: &str, now: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE agents SET last_seen = $1 WHERE agent_id = $2")
            .bind(now)
            .bind(agent_id)
            .execute(self.relaxed())
            .await?;
        Ok(())
    }

    /// One page of agents ordered by hostname then id, starting after `after` (the start when
    /// its fields are empty); `true` when more follow.
    pub async fn list_agents(
        &self,
        after: &AgentKey,
        limit: i64,
    ) -> Result<(Vec<AgentRow>, bool), DbError> {
        let rows = sqlx::query_as::<_, AgentTuple>(
            "SELECT agent_id, hostname, platform, version, state, last_seen, network, revoked_at \
             FROM agents WHERE (hostname, agent_id) > ($1, $2) ORDER BY hostname, agent_id LIMIT $3",
        )
        .bind(after.hostname.as_str())
        .bind(after.agent_id.as_str())
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let rows = rows
            .into_iter()
            .map(
                |(agent_id, hostname, platform, version, state, last_seen, network, revoked_at)| {
                    AgentRow {
                        agent_id,
                        hostname,
                        platform,
                        version,
                        state,
                        last_seen,
                        network,
                        revoked_at,
                    }
                },
            )
            .collect();
        Ok(split_page(rows, limit))
    }

    /// `(agent_id, version)` of every agent registered for `platform`.
    pub async fn agents_on_platform(
        &self,
        platform: &str,
    ) -> Result<Vec<(String, String, String)>, DbError> {
        let rows = sqlx::query_as::<_, (String, String, String)>(
            "SELECT agent_id, version, agent_group FROM agents WHERE platform = $1",
        )
        .bind(platform)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
