//! The retention policy of what agents and operators leave behind: error reports, update
//! events and the audit log, how long and how many are kept.
//!
//! Error reports and update events are bounded per agent (enforced as each batch is stored,
//! see `intake/errors.rs`); a new agent's share starts at `new_agent` ([`NEW_AGENT_KEPT`] by
//! default) and grows to the
//! full per-agent count over [`ALLOWANCE_RAMP`], so registering many fresh agents does not
//! multiply what one source can store. Age bounds for all three, and the total count of error
//! reports, are enforced by a sweep at start and every [`SWEEP_INTERVAL`]. The oldest go
//! first. This module must never delete anything else, and never hold the database for one
//! long statement (the sweeps delete in chunks).

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
/// Default age of the oldest update event kept.
pub const DEFAULT_EVENT_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default number of update events kept per agent.
pub const DEFAULT_EVENTS_PER_AGENT: i64 = 200;
/// Default age of the oldest audit entry kept.
pub const DEFAULT_AUDIT_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Reports (and events) a just-registered agent may keep, by default.
pub const NEW_AGENT_KEPT: i64 = 50;
/// Age at which an agent may keep the full per-agent count.
pub const ALLOWANCE_RAMP: Duration = Duration::from_secs(7 * 24 * 3600);

/// What is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Reports received longer ago are deleted.
    pub max_age: Duration,
    /// Beyond this many reports the oldest are deleted.
    pub max_total: i64,
    /// Beyond this many reports of one agent its oldest are deleted.
    pub per_agent: i64,
    /// Update events received longer ago are deleted.
    pub event_max_age: Duration,
    /// Beyond this many update events of one agent its oldest are deleted.
    pub events_per_agent: i64,
    /// Audit entries older than this are deleted.
    pub audit_max_age: Duration,
    /// Reports (and events) a just-registered agent keeps; grows to the per-agent counts.
    pub new_agent: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            max_age: DEFAULT_MAX_AGE,
            max_total: DEFAULT_MAX_TOTAL,
            per_agent: DEFAULT_PER_AGENT,
            event_max_age: DEFAULT_EVENT_MAX_AGE,
            events_per_agent: DEFAULT_EVENTS_PER_AGENT,
            audit_max_age: DEFAULT_AUDIT_MAX_AGE,
            new_agent: NEW_AGENT_KEPT,
        }
    }
}

/// What an agent registered `age` ago may keep of a per-agent count `full`: from `start` at
/// registration up to `full` at [`ALLOWANCE_RAMP`], in proportion.
pub fn allowance(full: i64, start: i64, age: Duration) -> i64 {
    let start = start.clamp(1, full.max(1));
    let ramp = ALLOWANCE_RAMP.as_secs_f64();
    let share = (age.as_secs_f64() / ramp).clamp(0.0, 1.0);
    // Both ends are small integers, so the product fits and truncation is the intent.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let grown = start + ((full - start) as f64 * share) as i64;
    grown.clamp(1, full.max(1))
}

/// The time `age` before now, in the stored format (the distant past if out of range).
fn cutoff(age: Duration) -> String {
    let now = time::OffsetDateTime::now_utc();
    let age = time::Duration::try_from(age).unwrap_or(time::Duration::MAX);
    now.checked_sub(age)
        .map_or_else(|| "0000".to_owned(), clock::format_utc)
}

/// Enforces the age and total bounds of error reports once.
pub async fn sweep(db: &Db, policy: &RetentionPolicy) -> Result<RetentionSweep, DbError> {
    db.sweep_error_reports(&cutoff(policy.max_age), policy.max_total)
        .await
}

/// Enforces the age bounds of update events and the audit log once; returns how many of each
/// were deleted.
pub async fn sweep_events(db: &Db, policy: &RetentionPolicy) -> Result<(u64, u64), DbError> {
    let events = db
        .sweep_update_events(&cutoff(policy.event_max_age))
        .await?;
    let audit = db.sweep_audit(&cutoff(policy.audit_max_age)).await?;
    Ok((events, audit))
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
        match sweep_events(&db, &policy).await {
            Ok((0, 0)) => {}
            Ok((events, audit)) => tracing::info!(
                events,
                audit,
                "old update events and audit entries deleted by the retention policy"
            ),
            Err(error) => tracing::error!(%error, "update event and audit retention sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_agent_starts_small_and_grows_to_the_full_count() {
        assert_eq!(allowance(1_000, 50, Duration::ZERO), 50);
        let half = allowance(1_000, 50, ALLOWANCE_RAMP / 2);
        assert!(half > 50 && half < 1_000, "{half}");
        assert_eq!(allowance(1_000, 50, ALLOWANCE_RAMP * 3), 1_000);
        let small = allowance(10, 50, Duration::ZERO);
        assert_eq!(small, 10, "never above the full count");
        assert_eq!(allowance(1, 0, Duration::ZERO), 1);
    }
}
