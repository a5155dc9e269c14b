//! The agent's reports of an update's progress, which the dashboard's rollout funnel counts.
//!
//! A progress event travels as an [`ErrorReport`] of kind [`UPDATE_PROGRESS_KIND`] on the
//! error-report endpoint, with an [`UpdateProgress`] as its `details`: so it is buffered on
//! disk while the server is unreachable, re-sent, and stored once per `report_id` exactly like
//! an error report (docs/protocol.md, "Update progress"). The server files these apart from the
//! errors. This module holds the names and shapes only.

use serde::{Deserialize, Serialize};

use crate::ErrorReport;

/// `kind` of an error report that carries an [`UpdateProgress`] in its `details`.
pub const UPDATE_PROGRESS_KIND: &str = "update_progress";

/// How far one update attempt has come, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStep {
    /// The agent received the offer and starts the update.
    Offered,
    /// The package download started.
    Downloading,
    /// The package passed its length, SHA-256, signature and version checks.
    Verified,
    /// The updater was launched; the old agent shuts down.
    HandedOver,
    /// The new version runs and was verified by the updater.
    Healthy,
    /// The agent turned the offer down (this version was rolled back here before).
    Refused,
    /// The attempt failed before the hand-over; `failed_step` says where.
    Failed,
    /// The new version failed its health check and the old one runs again.
    RolledBack,
    /// The agent put the offer off (`reason` says why, e.g. a metered connection) and takes it
    /// at a later offer; not an attempt in flight, not a failure.
    Deferred,
}

impl UpdateStep {
    /// Every step, in funnel order (the successful path first, then the outcomes that end it).
    pub const ALL: [UpdateStep; 9] = [
        UpdateStep::Offered,
        UpdateStep::Downloading,
        UpdateStep::Verified,
        UpdateStep::HandedOver,
        UpdateStep::Healthy,
        UpdateStep::Refused,
        UpdateStep::Failed,
        UpdateStep::RolledBack,
        UpdateStep::Deferred,
    ];

    /// The name on the wire and in the database.
    pub const fn name(self) -> &'static str {
        match self {
            UpdateStep::Offered => "offered",
            UpdateStep::Downloading => "downloading",
            UpdateStep::Verified => "verified",
            UpdateStep::HandedOver => "handed_over",
            UpdateStep::Healthy => "healthy",
            UpdateStep::Refused => "refused",
            UpdateStep::Failed => "failed",
            UpdateStep::RolledBack => "rolled_back",
            UpdateStep::Deferred => "deferred",
        }
    }

    /// The step named `name`, if any.
    pub fn from_name(name: &str) -> Option<UpdateStep> {
        UpdateStep::ALL.into_iter().find(|step| step.name() == name)
    }
}

/// The `details` of an [`UPDATE_PROGRESS_KIND`] report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgress {
    /// The version being installed.
    pub version: String,
    /// The agent's platform.
    pub platform: String,
    /// The step reached.
    pub step: UpdateStep,
    /// For [`UpdateStep::Failed`]: the update step that failed (`downloading`, `verifying`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// For [`UpdateStep::Verified`]: how the package came (`delta` or `full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// With `transfer`: the bytes that transfer is (the delta's or the package's length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_bytes: Option<u64>,
    /// For [`UpdateStep::Deferred`]: why the agent put the offer off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeferReason>,
}

/// Why an agent put an offer off ([`UpdateStep::Deferred`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferReason {
    /// The connection is metered (`cms_agent --metered`) and the release is not urgent.
    Metered,
}

/// How a package reached the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transfer {
    /// Rebuilt from a signed delta and the installed files.
    Delta,
    /// Downloaded whole.
    Full,
}

impl UpdateProgress {
    /// The progress carried by `report`, when it is an update progress report.
    pub fn from_report(report: &ErrorReport) -> Option<UpdateProgress> {
        if report.kind != UPDATE_PROGRESS_KIND {
            return None;
        }
        serde_json::from_value(report.details.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for step in UpdateStep::ALL {
            assert_eq!(UpdateStep::from_name(step.name()), Some(step));
            let json = serde_json::to_value(step).unwrap();
            assert_eq!(json, serde_json::Value::from(step.name()));
        }
        assert_eq!(UpdateStep::from_name("bogus"), None);
    }

    #[test]
    fn progress_is_read_from_its_report_only() {
        let progress = UpdateProgress {
            version: "2.0.0".into(),
            platform: "linux-x86_64".into(),
            step: UpdateStep::Failed,
            failed_step: Some("verifying".into()),
            transfer: None,
            transfer_bytes: None,
            reason: None,
        };
        let mut report = ErrorReport {
            report_id: "r1".into(),
            kind: UPDATE_PROGRESS_KIND.into(),
            message: "update to 2.0.0: failed".into(),
            agent_version: "1.0.0".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            details: serde_json::to_value(&progress).unwrap(),
        };
        assert_eq!(UpdateProgress::from_report(&report), Some(progress));
        report.kind = "update_failed".into();
        assert_eq!(UpdateProgress::from_report(&report), None);
        report.kind = UPDATE_PROGRESS_KIND.into();
        report.details = serde_json::json!({"version": 1});
        assert_eq!(UpdateProgress::from_report(&report), None);
    }
}
