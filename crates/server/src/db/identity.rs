//! Rows of agent identities an operator manages: an agent's revocation, its credential's
//! rotation (the proposed credential, its promotion, the operator's request), and the
//! `enrollment_tokens` table (stored hashed, with expiry, use count, group and revocation).
//!
//! Queries only: whether a token may still enrol, and who may revoke what, is decided in
//! `access/`.

use super::{Db, DbError};

/// What revoking an agent found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The agent was revoked now.
    Revoked,
    /// It was revoked before; nothing changed.
    AlreadyRevoked,
    /// No agent has this id.
    Unknown,
}

/// A new enrollment token row.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken<'a> {
    /// Unique name.
    pub name: &'a str,
    /// SHA-256 hex of the token.
    pub token_hash: &'a str,
    /// Expiry (RFC 3339), if any.
    pub expires_at: Option<&'a str>,
    /// Registrations allowed, if limited.
    pub max_uses: Option<i64>,
    /// The group its agents join, if any.
    pub group: Option<&'a str>,
}

/// An enrollment token as listed (never its hash, except for the constant-time check).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct EnrollmentTokenRow {
    /// Unique name.
    pub name: String,
    /// SHA-256 hex of the token (never serialized).
    #[serde(skip)]
    pub token_hash: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Expiry (RFC 3339), if any.
    pub expires_at: Option<String>,
    /// Registrations allowed, if limited.
    pub max_uses: Option<i64>,
    /// Registrations made with it.
    pub uses: i64,
    /// The group its agents join, if any.
    #[sqlx(rename = "group_name")]
    pub group: Option<String>,
    /// Revocation time (RFC 3339), if revoked.
    pub revoked_at: Option<String>,
}

const TOKEN_COLUMNS: &str =
    "name, token_hash, created_at, expires_at, max_uses, uses, group_name, revoked_at";

impl Db {
    /// Revokes `agent_id` at `now` and forgets its connection records, so no replica counts it
    /// connected any more.
    pub async fn revoke_agent(&self, agent_id: &str, now: &str) -> Result<Revocation, DbError> {
        let revoked = sqlx::query(
            "UPDATE agents SET revoked_at = $1 WHERE agent_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(agent_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM agent_connections WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        if revoked > 0 {
            return Ok(Revocation::Revoked);
        }
        Ok(if self.agent_exists(agent_id).await? {
            Revocation::AlreadyRevoked
        } else {
            Revocation::Unknown
        })
    }

    /// Records `token_hash` as the credential `agent_id` proposes to use next (replacing an
    /// earlier proposal that was never used).
    pub async fn propose_credential(
        &self,
        agent_id: &str,
        token_hash: &str,
    ) -> Result<(), DbError> {
        sqlx::query("UPDATE agents SET pending_token_hash = $1 WHERE agent_id = $2")
            .bind(token_hash)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The proposed credential `token_hash` was used: it becomes the only one, issued at `now`.
    pub async fn promote_credential(
        &self,
        agent_id: &str,
        token_hash: &str,
        now: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE agents SET token_hash = pending_token_hash, pending_token_hash = NULL, \
             credential_at = $1, rotate_requested_at = NULL \
             WHERE agent_id = $2 AND pending_token_hash = $3",
        )
        .bind(now)
        .bind(agent_id)
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Asks that `agent_id` rotate its credential at its next heartbeat; `false` for an
    /// unknown agent.
    pub async fn request_rotation(&self, agent_id: &str, now: &str) -> Result<bool, DbError> {
        let asked = sqlx::query("UPDATE agents SET rotate_requested_at = $1 WHERE agent_id = $2")
            .bind(now)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(asked.rows_affected() > 0)
    }

    /// When `agent_id`'s credential was issued (its registration for older rows) and whether an
    /// operator asked for a rotation.
    pub async fn credential_age(&self, agent_id: &str) -> Result<Option<(String, bool)>, DbError> {
        let row = sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT COALESCE(credential_at, registered_at), rotate_requested_at FROM agents \
             WHERE agent_id = $1",
        )
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(issued, requested)| (issued, requested.is_some())))
    }

    /// Stores a new enrollment token created at `now`.
    pub async fn insert_enrollment_token(
        &self,
        token: &NewEnrollmentToken<'_>,
        now: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (name, token_hash, created_at, expires_at, max_uses, \
             group_name) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.name)
        .bind(token.token_hash)
        .bind(now)
        .bind(token.expires_at)
        .bind(token.max_uses)
        .bind(token.group)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every enrollment token, by name.
    pub async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRow>, DbError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY name");
        Ok(
            sqlx::query_as::<_, EnrollmentTokenRow>(sqlx::AssertSqlSafe(sql))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The enrollment token with this hash, if any.
    pub async fn enrollment_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<EnrollmentTokenRow>, DbError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE token_hash = $1");
        Ok(
            sqlx::query_as::<_, EnrollmentTokenRow>(sqlx::AssertSqlSafe(sql))
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Counts one registration with the token `name` if it is still usable at `now` (not
    /// revoked, not expired, uses left), in one statement so two registrations cannot take the
    /// last use twice; `false` when it was not usable.
    pub async fn take_enrollment_use(&self, name: &str, now: &str) -> Result<bool, DbError> {
        let taken = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1 WHERE name = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2) AND (max_uses IS NULL OR uses < max_uses)",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() > 0)
    }

    /// Marks the token `name` revoked at `now`; `false` when no unrevoked token has that name.
    pub async fn revoke_enrollment_token(&self, name: &str, now: &str) -> Result<bool, DbError> {
        let revoked = sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(revoked.rows_affected() > 0)
    }
}
