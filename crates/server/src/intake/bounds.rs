//! Bounds on every field of an agent's report that the server stores (docs/protocol.md,
//! "Limits"): what is clipped and what is refused, before anything is stored or logged.
//!
//! Update progress is refused (left out of the batch) when its `version` is not SemVer or is
//! longer than [`MAX_VERSION`] bytes, because the funnel and the halt rule count by version; a
//! `failed_step` that is not one of [`FAILED_STEPS`] is stored as `unknown`. Any report's
//! `details` longer than [`MAX_DETAILS`] bytes as JSON is replaced by a JSON string holding
//! its first [`MAX_DETAILS`] bytes (a progress report's message, stored as its detail, is cut
//! to as many). This module must never let a stored field grow with what
//! an agent sends.

use cms_protocol::{ErrorReport, UPDATE_PROGRESS_KIND, UpdateProgress};
use serde_json::Value;

use crate::logtext::clip;

/// Longest version accepted in update progress.
pub const MAX_VERSION: usize = 64;
/// Longest `details` kept, as JSON text.
pub const MAX_DETAILS: usize = 4 * 1024;
/// The update steps a failure may name (docs/protocol.md, "update_progress").
pub const FAILED_STEPS: [&str; 6] = [
    "starting",
    "downloading",
    "verifying",
    "extracting_updater",
    "preparing_shutdown",
    "handing_over",
];
/// What a `failed_step` outside [`FAILED_STEPS`] is stored as.
pub const UNKNOWN_STEP: &str = "unknown";

/// Why a report was left out of its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Update progress whose version is not SemVer of at most [`MAX_VERSION`] bytes.
    #[error("update progress version is not SemVer of at most {MAX_VERSION} bytes")]
    Version,
}

/// Bounds `report` in place, or says why it must be left out.
pub fn bound_report(report: &mut ErrorReport) -> Result<(), Refused> {
    if report.kind == UPDATE_PROGRESS_KIND {
        bound_progress(report)?;
    }
    clip_details(&mut report.details);
    Ok(())
}

/// Checks the progress in `report.details` and rewrites it with only the fields it knows.
fn bound_progress(report: &mut ErrorReport) -> Result<(), Refused> {
    let Some(mut progress) = UpdateProgress::from_report(report) else {
        // Not readable as progress: stored as an ordinary report (see `progress::split`).
        return Ok(());
    };
    if !is_version(&progress.version) {
        return Err(Refused::Version);
    }
    progress.platform = clip(&progress.platform, MAX_VERSION).to_owned();
    if let Some(step) = &mut progress.failed_step
        && !FAILED_STEPS.contains(&step.as_str())
    {
        UNKNOWN_STEP.clone_into(step);
    }
    if let Ok(details) = serde_json::to_value(&progress) {
        report.details = details;
    }
    let end = clip(&report.message, MAX_DETAILS).len();
    report.message.truncate(end);
    Ok(())
}

/// Whether `text` is a SemVer version of at most [`MAX_VERSION`] bytes.
pub fn is_version(text: &str) -> bool {
    text.len() <= MAX_VERSION && semver::Version::parse(text).is_ok()
}

fn clip_details(details: &mut Value) {
    if details.is_null() {
        return;
    }
    let text = details.to_string();
    if text.len() > MAX_DETAILS {
        *details = Value::String(clip(&text, MAX_DETAILS).to_owned());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn progress(details: Value) -> ErrorReport {
        ErrorReport {
            report_id: "r".into(),
            kind: UPDATE_PROGRESS_KIND.into(),
            message: "m".into(),
            agent_version: "1.0.0".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            details,
        }
    }

    #[test]
    fn progress_versions_must_be_short_semver() {
        let ok = json!({"version": "2.0.0-rc.1", "platform": "linux-x86_64", "step": "healthy"});
        assert_eq!(bound_report(&mut progress(ok)), Ok(()));
        for bad in ["2.0", "<script>", &format!("1.0.0-{}", "a".repeat(64))] {
            let details = json!({"version": bad, "platform": "linux-x86_64", "step": "healthy"});
            assert_eq!(
                bound_report(&mut progress(details)),
                Err(Refused::Version),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_failed_steps_and_extra_fields_are_not_kept() {
        let mut report = progress(json!({
            "version": "2.0.0", "platform": "linux-x86_64", "step": "failed",
            "failed_step": "x".repeat(5000), "junk": "y".repeat(100_000),
        }));
        bound_report(&mut report).unwrap();
        assert_eq!(report.details["failed_step"], UNKNOWN_STEP);
        assert!(report.details.get("junk").is_none());
        let mut known = progress(json!({
            "version": "2.0.0", "platform": "linux-x86_64", "step": "failed",
            "failed_step": "verifying",
        }));
        bound_report(&mut known).unwrap();
        assert_eq!(known.details["failed_step"], "verifying");
    }

    #[test]
    fn large_details_are_clipped() {
        let mut report = progress(Value::Null);
        report.kind = "crash".into();
        report.details = json!({"blob": "z".repeat(100_000)});
        bound_report(&mut report).unwrap();
        assert!(report.details.to_string().len() <= MAX_DETAILS + 64);
    }
}
