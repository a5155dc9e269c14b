//! The halt history of each release: every automatic halt, and who resumed it why. Queries
//! only; `crate::rollout::control` writes and reads it.

use serde::Serialize;

use super::{Db, DbError};

/// One halt of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaltRecord {
    /// When the halt rule paused the release.
    pub halted_at: String,
    /// The funnel's numbers at the halt.
    pub why: String,
    /// When an operator resumed it (`None`: still halted).
    pub resumed_at: Option<String>,
    /// Who resumed it.
    pub resumed_by: Option<String>,
    /// The reason they gave.
    pub reason: Option<String>,
}

type HaltTuple = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl Db {
    /// Records a halt of a release at `halted_at`.
    pub async fn record_halt(
        &self,
        (version, platform): (&str, &str),
        halted_at: &str,
        why: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO rollout_halts (version, platform, halted_at, why) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (version, platform, halted_at) DO NOTHING",
        )
        .bind(version)
        .bind(platform)
        .bind(halted_at)
        .bind(why)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the release's open halts as resumed at `now` by `actor` for `reason`.
    pub async fn resume_halts(
        &self,
        (version, platform): (&str, &str),
        now: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE rollout_halts SET resumed_at = $1, resumed_by = $2, reason = $3 \
             WHERE version = $4 AND platform = $5 AND resumed_at IS NULL",
        )
        .bind(now)
        .bind(actor)
        .bind(reason)
        .bind(version)
        .bind(platform)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The release's halts, newest first (at most `limit`).
    pub async fn halts(
        &self,
        (version, platform): (&str, &str),
        limit: i64,
    ) -> Result<Vec<HaltRecord>, DbError> {
        let rows = sqlx::query_as::<_, HaltTuple>(
            "SELECT halted_at, why, resumed_at, resumed_by, reason FROM rollout_halts \
             WHERE version = $1 AND platform = $2 ORDER BY halted_at DESC LIMIT $3",
        )
        .bind(version)
        .bind(platform)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(halted_at, why, resumed_at, resumed_by, reason)| HaltRecord {
                    halted_at,
                    why,
                    resumed_at,
                    resumed_by,
                    reason,
                },
            )
            .collect())
    }
}
