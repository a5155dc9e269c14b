//! Queries that keep agent-written and audit tables bounded: update events per agent and by
//! age, an agent's version history, the audit log by age. (Error reports have theirs in
//! `errors.rs`.) Deletes go in chunks so no statement holds the database for long: every sweep,
//! error reports' too, runs through [`Db::delete_in_chunks`].

use super::{Db, DbError};

/// Rows one delete statement removes at most, so no sweep holds the writer for long.
const DELETE_CHUNK: i64 = 5_000;

impl Db {
    /// When the agent registered (RFC 3339), if it exists.
    pub async fn agent_registered_at(&self, agent_id: &str) -> Result<Option<String>, DbError> {
        Ok(
            sqlx::query_scalar::<_, String>("SELECT registered_at FROM agents WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Deletes the agent's update events beyond its newest `keep`; returns how many.
    pub async fn trim_update_events(&self, agent_id: &str, keep: i64) -> Result<u64, DbError> {
        let cut = sqlx::query_as::<_, (String, String)>(
            "SELECT received_at, event_id FROM update_events WHERE agent_id = $1 \
             ORDER BY received_at DESC, event_id DESC LIMIT 1 OFFSET $2",
        )
        .bind(agent_id)
        .bind(keep.max(1) - 1)
        .fetch_optional(&self.pool)
        .await?;
        let Some((received_at, event_id)) = cut else {
            return Ok(0);
        };
        let deleted = sqlx::query(
            "DELETE FROM update_events WHERE agent_id = $1 \
             AND (received_at, event_id) < ($2, $3)",
        )
        .bind(agent_id)
        .bind(received_at)
        .bind(event_id)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// Deletes update events received before `oldest_kept`; returns how many.
    pub async fn sweep_update_events(&self, oldest_kept: &str) -> Result<u64, DbError> {
        self.delete_in_chunks(
            "DELETE FROM update_events WHERE (agent_id, event_id) IN (SELECT agent_id, event_id \
             FROM update_events WHERE received_at < $1 LIMIT $2)",
            &[oldest_kept],
        )
        .await
    }

    /// Deletes audit entries older than `oldest_kept`; returns how many.
    pub async fn sweep_audit(&self, oldest_kept: &str) -> Result<u64, DbError> {
        self.delete_in_chunks(
            "DELETE FROM audit_log WHERE audit_id IN (SELECT audit_id FROM audit_log \
             WHERE at < $1 LIMIT $2)",
            &[oldest_kept],
        )
        .await
    }

    /// Keeps the agent's `keep` most recently first-seen versions and, whatever their age,
    /// the published ones; returns how many were deleted.
    pub async fn trim_version_history(&self, agent_id: &str, keep: i64) -> Result<u64, DbError> {
        let cut = sqlx::query_as::<_, (String, String)>(
            "SELECT first_seen, version FROM agent_versions WHERE agent_id = $1 \
             ORDER BY first_seen DESC, version DESC LIMIT 1 OFFSET $2",
        )
        .bind(agent_id)
        .bind(keep.max(1) - 1)
        .fetch_optional(&self.pool)
        .await?;
        let Some((first_seen, version)) = cut else {
            return Ok(0);
        };
        let deleted = sqlx::query(
            "DELETE FROM agent_versions WHERE agent_id = $1 \
             AND (first_seen, version) < ($2, $3) \
             AND version NOT IN (SELECT version FROM releases)",
        )
        .bind(agent_id)
        .bind(first_seen)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// Runs `statement` (binding `$1`.. to `binds`, the next parameter to the chunk size) until
    /// it deletes less than a chunk; returns the total.
    pub(super) async fn delete_in_chunks(
        &self,
        statement: &'static str,
        binds: &[&str],
    ) -> Result<u64, DbError> {
        let mut total = 0;
        loop {
            let mut query = sqlx::query(statement);
            for value in binds {
                query = query.bind(*value);
            }
            let deleted = query
                .bind(DELETE_CHUNK)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < DELETE_CHUNK.unsigned_abs() {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}
