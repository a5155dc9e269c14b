//! Update progress from the agents: the reports of kind `update_progress` in an error batch
//! are stored as update events (not errors), published on the live feed, and a failure or a
//! rollback runs the release's halt rule. Older agents' `update_failed` and
//! `update_rolled_back` error reports run the halt rule too (the funnel counts them from the
//! error reports). Offers are facts the server records: a progress event is verified, and
//! counts, only when the server offered that published release to the agent on the platform
//! it registered with (`crate::rollout::offer`); `healthy` counts only once the agent's own
//! heartbeats or registration report the version (`crate::db` counts that). Other events are
//! stored unverified for the agent's page: they never reach the live feed, the funnel or the
//! halt rule. This module must never trust a platform or agent id from a body: the agent's
//! registration says which.

use std::collections::BTreeSet;

use cms_protocol::{ErrorReport, UpdateProgress, UpdateStep};
use serde_json::Value;

use crate::clock;
use crate::db::{Db, DbError, NewUpdateEvent};
use crate::events::live::{LiveEvent, LiveFeed};
use crate::logtext::Untrusted;
use crate::rollout::control;

/// Error kinds by which older agents tell that an update failed or was rolled back.
const LEGACY_FAILURE_KINDS: [&str; 2] = ["update_failed", "update_rolled_back"];

/// Splits a batch into update progress and error reports (in their order).
pub fn split(reports: Vec<ErrorReport>) -> (Vec<(ErrorReport, UpdateProgress)>, Vec<ErrorReport>) {
    let mut progress = Vec::new();
    let mut errors = Vec::new();
    for report in reports {
        match UpdateProgress::from_report(&report) {
            Some(step) => progress.push((report, step)),
            None => errors.push(report),
        }
    }
    (progress, errors)
}

/// The version an older agent's failure report is about (`details.version`, else the message
/// `update to X.Y.Z ...`).
fn legacy_failure_version(report: &ErrorReport) -> Option<String> {
    if !LEGACY_FAILURE_KINDS.contains(&report.kind.as_str()) {
        return None;
    }
    if let Some(Value::String(version)) = report.details.get("version") {
        return Some(version.clone());
    }
    let rest = report.message.strip_prefix("update to ")?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// Stores `progress`, publishes each new event, and runs the halt rule of each release that
/// got a failure or rollback (by `progress`, or by the error reports `errors`).
pub async fn record(
    db: &Db,
    live: &LiveFeed,
    agent_id: &str,
    progress: &[(ErrorReport, UpdateProgress)],
    errors: &[ErrorReport],
) -> Result<u32, DbError> {
    let Some(agent) = db.fleet_agent(agent_id).await? else {
        return Ok(0);
    };
    let offered: BTreeSet<String> = if progress.is_empty() {
        BTreeSet::new()
    } else {
        db.offered_versions(agent_id, &agent.agent.platform)
            .await?
            .into_iter()
            .collect()
    };
    let events: Vec<NewUpdateEvent<'_>> = progress
        .iter()
        .map(|(report, step)| NewUpdateEvent {
            event_id: &report.report_id,
            version: &step.version,
            platform: &agent.agent.platform,
            step: step.step.name(),
            failed_step: step.failed_step.as_deref(),
            detail: &report.message,
            created_at: &report.created_at,
            verified: offered.contains(&step.version),
        })
        .collect();
    let stored = if events.is_empty() {
        Vec::new()
    } else {
        db.insert_update_events(agent_id, &events, &clock::now())
            .await?
    };
    let mut failing: BTreeSet<String> = errors.iter().filter_map(legacy_failure_version).collect();
    for event in &stored {
        if !event.verified {
            tracing::info!(
                agent_id,
                version = %Untrusted(event.version),
                step = event.step,
                "update progress for a release never offered to this agent kept unverified"
            );
            continue;
        }
        tracing::info!(
            agent_id,
            version = event.version,
            step = event.step,
            "update progress"
        );
        live.publish(LiveEvent::UpdateProgress {
            agent_id: agent_id.to_owned(),
            version: event.version.to_owned(),
            step: event.step.to_owned(),
        });
        let failure = [UpdateStep::Failed.name(), UpdateStep::RolledBack.name()];
        if failure.contains(&event.step) {
            failing.insert(event.version.to_owned());
        }
    }
    for version in failing {
        if control::check_halt(db, &version, &agent.agent.platform).await? {
            live.publish(LiveEvent::RolloutChanged {
                version,
                platform: agent.agent.platform.clone(),
            });
        }
    }
    Ok(u32::try_from(stored.len()).unwrap_or(u32::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn report(kind: &str, message: &str, details: Value) -> ErrorReport {
        ErrorReport {
            report_id: "r".into(),
            kind: kind.into(),
            message: message.into(),
            agent_version: "1.0.0".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            details,
        }
    }

    #[test]
    fn older_agents_failures_name_their_version() {
        let failed = report(
            "update_failed",
            "x",
            serde_json::json!({"version": "2.0.0"}),
        );
        assert_eq!(legacy_failure_version(&failed).as_deref(), Some("2.0.0"));
        let rolled = report(
            "update_rolled_back",
            "update to 3.0.0 was rolled back: dead",
            Value::Null,
        );
        assert_eq!(legacy_failure_version(&rolled).as_deref(), Some("3.0.0"));
        let other = report("status_report_failed", "update to 3.0.0", Value::Null);
        assert_eq!(legacy_failure_version(&other), None);
    }

    #[test]
    fn progress_reports_are_split_from_errors() {
        let step = UpdateProgress {
            version: "2.0.0".into(),
            platform: "linux-x86_64".into(),
            step: UpdateStep::Healthy,
            failed_step: None,
            transfer: None,
            transfer_bytes: None,
            reason: None,
        };
        let progress = report(
            cms_protocol::UPDATE_PROGRESS_KIND,
            "healthy",
            serde_json::to_value(&step).unwrap(),
        );
        let error = report("update_failed", "boom", Value::Null);
        let (steps, errors) = split(vec![progress, error.clone()]);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].1, step);
        assert_eq!(errors, vec![error]);
    }
}
