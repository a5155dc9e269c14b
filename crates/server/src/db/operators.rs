//! Rows of `operator_tokens` (hashed operator credentials with their role) and `audit_log`.

use cms_protocol::{AuditEntry, OperatorRole, OperatorToken};

use super::{Db, DbError, split_page};

/// Most tokens one listing returns (tokens are made by hand; this is a safety bound).
const MAX_TOKENS_LISTED: i64 = 10_000;

/// A stored operator token as authentication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorTokenRow {
    /// Its unique name.
    pub name: String,
    /// Its role.
    pub role: OperatorRole,
    /// SHA-256 hex of the token.
    pub token_hash: String,
    /// Last use, if any (RFC 3339).
    pub last_used_at: Option<String>,
}

/// An audit entry to write.
#[derive(Debug, Clone)]
pub struct NewAuditEntry<'a> {
    /// Token name, or `cli:USER`.
    pub actor: &'a str,
    /// Such as `agent.check_update`.
    pub action: &'a str,
    /// What it was done to.
    pub target: Option<&'a str>,
    /// `ok`, `denied` or `refused`.
    pub outcome: &'a str,
    /// Peer address, or `local`.
    pub source: &'a str,
}

/// Where a page of the audit log starts: after this (at, audit_id), newest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditKey {
    /// Time of the last entry of the previous page.
    pub at: String,
    /// Its id.
    pub audit_id: String,
}

impl Default for AuditKey {
    fn default() -> Self {
        AuditKey {
            at: "9999".to_owned(),
            audit_id: String::new(),
        }
    }
}

impl Db {
    /// Stores a new token; [`DbError::Duplicate`] when the name is taken.
    pub async fn insert_operator_token(
        &self,
        name: &str,
        role: OperatorRole,
        token_hash: &str,
        now: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO operator_tokens (name, role, token_hash, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(role.name())
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token with this hash, if any.
    pub async fn operator_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<OperatorTokenRow>, DbError> {
        let row = sqlx::query_as::<_, (String, String, String, Option<String>)>(
            "SELECT name, role, token_hash, last_used_at FROM operator_tokens \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some((name, role, token_hash, last_used_at)) = row else {
            return Ok(None);
        };
        // A row with a role this build does not know grants nothing.
        let Ok(role) = role.parse() else {
            tracing::warn!(name, role, "operator token with an unknown role ignored");
            return Ok(None);
        };
        Ok(Some(OperatorTokenRow {
            name,
            role,
            token_hash,
            last_used_at,
        }))
    }

    /// Records a use of the token `name`.
    pub async fn touch_operator_token(&self, name: &str, now: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE operator_tokens SET last_used_at = $1 WHERE name = $2")
            .bind(now)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every token, by name, without hashes.
    pub async fn list_operator_tokens(&self) -> Result<Vec<OperatorToken>, DbError> {
        let rows = sqlx::query_as::<_, (String, String, String, Option<String>)>(
            "SELECT name, role, created_at, last_used_at FROM operator_tokens \
             ORDER BY name LIMIT $1",
        )
        .bind(MAX_TOKENS_LISTED)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, role, created_at, last_used_at)| {
                Some(OperatorToken {
                    role: role.parse().ok()?,
                    name,
                    created_at,
                    last_used_at,
                })
            })
            .collect())
    }

    /// Deletes the token `name`; whether it existed.
    pub async fn delete_operator_token(&self, name: &str) -> Result<bool, DbError> {
        let result = sqlx::query("DELETE FROM operator_tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Writes the entry under `audit_id`, or, when that row exists, counts one more on it
    /// (`repeats`, `last_at`); returns the row's count, 1 for a new row. One statement, so
    /// concurrent denials never race into rows of their own.
    pub async fn count_audit(
        &self,
        audit_id: &str,
        entry: &NewAuditEntry<'_>,
        now: &str,
    ) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "INSERT INTO audit_log (audit_id, at, actor, action, target, outcome, source) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (audit_id) DO UPDATE \
             SET repeats = audit_log.repeats + 1, last_at = excluded.at RETURNING repeats",
        )
        .bind(audit_id)
        .bind(now)
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.outcome)
        .bind(entry.source)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Appends one audit entry.
    pub async fn insert_audit(&self, entry: &NewAuditEntry<'_>, now: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO audit_log (audit_id, at, actor, action, target, outcome, source) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(now)
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.outcome)
        .bind(entry.source)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One page of the audit log, newest first, starting after `after`; `true` when more
    /// follow.
    pub async fn list_audit(
        &self,
        after: &AuditKey,
        limit: i64,
    ) -> Result<(Vec<AuditEntry>, bool), DbError> {
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            i64,
            Option<String>,
        );
        let rows = sqlx::query_as::<_, Row>(
            "SELECT audit_id, at, actor, action, target, outcome, source, repeats, last_at \
             FROM audit_log WHERE (at, audit_id) < ($1, $2) \
             ORDER BY at DESC, audit_id DESC LIMIT $3",
        )
        .bind(after.at.as_str())
        .bind(after.audit_id.as_str())
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let entries = rows
            .into_iter()
            .map(
                |(audit_id, at, actor, action, target, outcome, source, repeats, last_at)| {
                    AuditEntry {
                        audit_id,
                        at,
                        actor,
                        action,
                        target,
                        outcome,
                        source,
                        repeats: repeats.max(1).unsigned_abs(),
                        last_at,
                    }
                },
            )
            .collect();
        Ok(split_page(entries, limit))
    }
}
