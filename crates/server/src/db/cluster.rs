//! Queries of the replicas: their leases, which replica holds which agent's WebSocket,
//! PostgreSQL notifications and advisory locks.
//!
//! Timestamps are compared as text (the fixed-width format of `crate::clock`), so every
//! replica's clock must be kept in sync (NTP) to well within the lease. This module must never
//! decide what a lease is worth or what an event means: it stores and loads rows.

use std::collections::HashSet;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AssertSqlSafe};

use super::{Backend, Db, DbError, PendingRelease};

/// A PostgreSQL advisory lock held on its own pooled connection (a no-op on SQLite, where one
/// server runs). Give it back with [`AdvisoryLock::release`]; dropped without that, its
/// connection is closed, which ends the session and so frees the lock too.
#[derive(Debug)]
pub struct AdvisoryLock {
    conn: Option<PoolConnection<Any>>,
    name: &'static str,
}

impl AdvisoryLock {
    /// Unlocks and returns the connection to the pool.
    pub async fn release(mut self) -> Result<(), DbError> {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query(UNLOCK)
                .bind(self.name)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                conn.close_on_drop();
            }
            unlocked?;
        }
        Ok(())
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

// The key hashes the name with the schema, so backends in different schemas do not collide.
const LOCK: &str = "SELECT pg_advisory_lock(hashtext($1 || ':' || current_schema()))::text";
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext($1 || ':' || current_schema()))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext($1 || ':' || current_schema()))::text";

impl Db {
    /// Inserts or renews this replica's lease.
    pub async fn renew_replica(
        &self,
        replica_id: &str,
        now: &str,
        lease_until: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO replicas (replica_id, started_at, lease_until) VALUES ($1, $2, $3) \
             ON CONFLICT (replica_id) DO UPDATE SET lease_until = excluded.lease_until",
        )
        .bind(replica_id)
        .bind(now)
        .bind(lease_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a replica and the connections it recorded (at its shutdown).
    pub async fn remove_replica(&self, replica_id: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM agent_connections WHERE replica_id = $1")
            .bind(replica_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE replica_id = $1")
            .bind(replica_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets replicas whose lease ended before `before`, and the connections of replicas
    /// that are gone; returns how many connections went.
    pub async fn remove_dead_replicas(&self, before: &str) -> Result<u64, DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM replicas WHERE lease_until < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query(
            "DELETE FROM agent_connections WHERE replica_id NOT IN \
             (SELECT replica_id FROM replicas)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// Records that `replica_id` holds `agent_id`'s WebSocket (replacing any older record).
    pub async fn record_connection(
        &self,
        agent_id: &str,
        replica_id: &str,
        connection_id: u64,
        now: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO agent_connections (agent_id, replica_id, connection_id, connected_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (agent_id) DO UPDATE SET \
             replica_id = excluded.replica_id, connection_id = excluded.connection_id, \
             connected_at = excluded.connected_at",
        )
        .bind(agent_id)
        .bind(replica_id)
        .bind(stored_id(connection_id))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the record of one connection, unless a newer one replaced it.
    pub async fn forget_connection(
        &self,
        agent_id: &str,
        replica_id: &str,
        connection_id: u64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "DELETE FROM agent_connections WHERE agent_id = $1 AND replica_id = $2 \
             AND connection_id = $3",
        )
        .bind(agent_id)
        .bind(replica_id)
        .bind(stored_id(connection_id))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The replica holding `agent_id`'s WebSocket, if its lease runs past `now`.
    pub async fn connection_holder(
        &self,
        agent_id: &str,
        now: &str,
    ) -> Result<Option<String>, DbError> {
        let row = sqlx::query_as::<_, (String,)>(
            "SELECT c.replica_id FROM agent_connections c \
             JOIN replicas r ON r.replica_id = c.replica_id \
             WHERE c.agent_id = $1 AND r.lease_until > $2",
        )
        .bind(agent_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(replica_id,)| replica_id))
    }

    /// Those of `agent_ids` whose WebSocket a replica with a lease past `now` holds.
    pub async fn connected_among(
        &self,
        agent_ids: &[&str],
        now: &str,
    ) -> Result<HashSet<String>, DbError> {
        if agent_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let placeholders: Vec<String> = (2..agent_ids.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT c.agent_id FROM agent_connections c \
             JOIN replicas r ON r.replica_id = c.replica_id \
             WHERE r.lease_until > $1 AND c.agent_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String,)>(AssertSqlSafe(sql)).bind(now);
        for agent_id in agent_ids {
            query = query.bind(*agent_id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(agent_id,)| agent_id).collect())
    }

    /// PostgreSQL: the schema this pool works in (its `search_path`), so that backends in
    /// different schemas of one database keep their events and locks apart; `None` on SQLite.
    pub async fn current_schema(&self) -> Result<Option<String>, DbError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let (schema,) = sqlx::query_as::<_, (String,)>("SELECT current_schema()::text")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(schema))
    }

    /// PostgreSQL: sends `payload` on `channel` to every listener (at commit, inside a
    /// transaction).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), DbError> {
        sqlx::query("SELECT pg_notify($1, $2)::text")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl PendingRelease {
    /// PostgreSQL: sends `payload` on `channel` when (and only if) the release commits.
    pub async fn notify_on_commit(&mut self, channel: &str, payload: &str) -> Result<(), DbError> {
        sqlx::query("SELECT pg_notify($1, $2)::text")
            .bind(channel)
            .bind(payload)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}

impl Db {
    /// Takes the advisory lock `name`, waiting for the replica that holds it.
    pub async fn advisory_lock(&self, name: &'static str) -> Result<AdvisoryLock, DbError> {
        let Some(mut conn) = self.lock_connection().await? else {
            return Ok(AdvisoryLock { conn: None, name });
        };
        sqlx::query(LOCK).bind(name).execute(&mut *conn).await?;
        Ok(AdvisoryLock {
            conn: Some(conn),
            name,
        })
    }

    /// Takes the advisory lock `name` if no replica holds it; `None` when one does.
    pub async fn try_advisory_lock(
        &self,
        name: &'static str,
    ) -> Result<Option<AdvisoryLock>, DbError> {
        let Some(mut conn) = self.lock_connection().await? else {
            return Ok(Some(AdvisoryLock { conn: None, name }));
        };
        let (taken,) = sqlx::query_as::<_, (bool,)>(TRY_LOCK)
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        Ok(taken.then_some(AdvisoryLock {
            conn: Some(conn),
            name,
        }))
    }

    /// A connection of its own for a session-level lock; `None` on SQLite.
    async fn lock_connection(&self) -> Result<Option<PoolConnection<Any>>, DbError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        Ok(Some(self.pool.acquire().await?))
    }
}

/// Connection ids are counters; the column is a signed 64-bit integer.
fn stored_id(connection_id: u64) -> i64 {
    i64::try_from(connection_id).unwrap_or(i64::MAX)
}
