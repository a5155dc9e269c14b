//! Rows of `operator_sessions`: the dashboard's browser sessions.

use cms_protocol::OperatorRole;

use super::{Db, DbError, OperatorTokenRow};

impl Db {
    /// Stores a session (by the hashes of its id and of the token that opened it).
    pub async fn insert_session(
        &self,
        session_hash: &str,
        token_hash: &str,
        now: &str,
        expires_at: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO operator_sessions (session_hash, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(session_hash)
        .bind(token_hash)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token of an unexpired session whose token still exists.
    pub async fn session_operator(
        &self,
        session_hash: &str,
        now: &str,
    ) -> Result<Option<OperatorTokenRow>, DbError> {
        let row = sqlx::query_as::<_, (String, String, String, Option<String>)>(
            "SELECT t.name, t.role, t.token_hash, t.last_used_at FROM operator_sessions s \
             JOIN operator_tokens t ON t.token_hash = s.token_hash \
             WHERE s.session_hash = $1 AND s.expires_at > $2",
        )
        .bind(session_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(name, role, token_hash, last_used_at)| {
            let role = role.parse::<OperatorRole>().ok()?;
            Some(OperatorTokenRow {
                name,
                role,
                token_hash,
                last_used_at,
            })
        }))
    }

    /// Ends a session.
    pub async fn delete_session(&self, session_hash: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM operator_sessions WHERE session_hash = $1")
            .bind(session_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes expired sessions and those of revoked tokens; returns how many.
    pub async fn sweep_sessions(&self, now: &str) -> Result<u64, DbError> {
        let result = sqlx::query(
            "DELETE FROM operator_sessions WHERE expires_at <= $1 OR token_hash NOT IN \
             (SELECT token_hash FROM operator_tokens)",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}
