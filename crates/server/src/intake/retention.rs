//! The retention policy of error reports: how long and how many are kept.
//!
//! Three bounds: per agent (enforced as each batch is stored, see
//! `Db::insert_error_reports`), by age and by total count (enforced by a sweep at start and
//! every [`SWEEP_INTERVAL`]). The oldest reports go first. This module must never delete
//! anything but error reports, and never hold the database for one long statement (the sweep
//! deletes in chunks).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::db::{Db, DbError, RetentionSweep};

/// How often the age and count bounds are enforced.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// Default age of the oldest report kept.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default number of reports kept in total.
pub const DEFAULT_MAX_TOTAL: i64 = 1_000_000;
/// Default number of reports kept per agent.
pub const DEFAULT_PER_AGENT: i64 = 1_000;

/// What is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Reports received longer ago are deleted.
    pub max_age: Duration,
    /// Beyond this many reports the oldest are deleted.
    pub max_total: i64,
    /// Beyond this many reports of one agent its oldest are deleted.
    pub per_agent: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            max_age: DEFAULT_MAX_AGE,
            max_total: DEFAULT_MAX_TOTAL,
            per_agent: DEFAULT_PER_AGENT,
        }
    }
}

/// Enforces the age and total bounds once.
pub async fn sweep(db: &Db, policy: &RetentionPolicy) -> Result<RetentionSweep, DbError> {
    let now = time::OffsetDateTime::now_utc();
    let age = time::Duration::try_from(policy.max_age).unwrap_or(time::Duration::MAX);
    let oldest_kept = now
        .checked_sub(age)
        .map_or_else(|| "0000".to_owned(), clock::format_utc);
    db.sweep_error_reports(&oldest_kept, policy.max_total).await
}

/// Sweeps at start and every `interval` until `stop`.
pub async fn run(db: Db, policy: RetentionPolicy, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match sweep(&db, &policy).await {
            Ok(swept) if swept == RetentionSweep::default() => {}
            Ok(swept) => tracing::info!(
                expired = swept.expired,
                over_count = swept.over_count,
                "old error reports deleted by the retention policy"
            ),
            Err(error) => tracing::error!(%error, "error report retention sweep failed"),
        }
    }
}
