//! Work that must happen once, not once per replica: it runs under a PostgreSQL advisory lock
//! (`pg_advisory_lock` to wait for the replica doing it, `pg_try_advisory_lock` to leave it to
//! that replica), keyed by name and schema. On SQLite the lock is a no-op: one server runs.
//!
//! Schema migrations at start need nothing here: sqlx's migrator already holds an advisory lock
//! while it applies them. This module must never hold a lock across waiting on the network for
//! an agent, only around database and file work.

use std::future::Future;

use crate::db::{Db, DbError};

/// Signing the release metadata (TUF targets, snapshot, timestamp): `release publish` and the
/// replicas' timestamp renewal write the same files in the shared store.
pub const METADATA_SIGNING: &str = "cms-server:tuf-signing";

/// Runs `work` holding the lock `name`, after waiting for any replica that holds it.
pub async fn exclusively<T, E: From<DbError>>(
    db: &Db,
    name: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let lock = db.advisory_lock(name).await?;
    let result = work.await;
    lock.release().await?;
    result
}

/// Runs `work` holding the lock `name` unless another replica holds it (`None`: that replica
/// is doing the work).
pub async fn unless_taken<T, E: From<DbError>>(
    db: &Db,
    name: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<Option<T>, E> {
    let Some(lock) = db.try_advisory_lock(name).await? else {
        tracing::debug!(
            lock = name,
            "another replica holds the lock; leaving the work to it"
        );
        return Ok(None);
    };
    let result = work.await;
    lock.release().await?;
    result.map(Some)
}
