//! The rollout funnel and the automatic halt rule.
//!
//! [`Funnel::from_counts`] turns the per-step counts of distinct agents (from the agents' own
//! progress reports, plus what older agents reveal by their version and error reports) into a
//! funnel whose steps never grow along the way; [`HaltRule`] says when failures and rollbacks
//! have passed a release's threshold. The counts and the rule's two numbers are the store's
//! types (`db` reads and writes them); the rules over them are here. Pure functions only: this
//! module must never do I/O.

use std::collections::BTreeMap;

use serde::Serialize;

pub use crate::db::{HaltRule, StepCounts};

impl StepCounts {
    fn step(&self, name: &str) -> i64 {
        self.reported.get(name).copied().unwrap_or(0)
    }
}

/// One release's funnel on one platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Funnel {
    /// Agents that were offered the release (and did not turn it down at once).
    pub offered: i64,
    /// Agents that started the download.
    pub downloading: i64,
    /// Agents whose package passed verification.
    pub verified: i64,
    /// Agents that handed over to the updater.
    pub handed_over: i64,
    /// Agents that run the new version.
    pub healthy: i64,
    /// Agents that turned the offer down without trying it (an agent that rolled it back and
    /// then declines the re-offers is `rolled_back`, not counted again here).
    pub refused: i64,
    /// Agents whose attempt failed before the hand-over.
    pub failed: i64,
    /// Failures by the step that failed (`legacy` for older agents' error reports).
    pub failed_by_step: BTreeMap<String, i64>,
    /// Agents whose new version failed and that run the old one again.
    pub rolled_back: i64,
    /// Update attempts: agents the release was offered to, one each however often; each is in
    /// exactly one of `ends`, which add up to it.
    pub attempts: i64,
    /// Where each attempt ended.
    pub ends: EndStates,
}

/// Each attempt once, by where it ended (the first that holds, in this order: healthy, rolled
/// back, failed, refused without trying, deferred, in progress).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EndStates {
    /// The new version runs (or ran, before a newer one).
    pub healthy: i64,
    /// The new version failed and the old one runs again.
    pub rolled_back: i64,
    /// The attempt failed before the hand-over (by step: `failed_by_step`).
    pub failed: i64,
    /// The agent turned the offer down without trying (it rolled this version back before).
    pub refused: i64,
    /// The agent put the offer off (a metered connection) and takes it at a later offer: not
    /// in flight, not a failure.
    pub deferred: i64,
    /// No end yet (in flight or stuck).
    pub in_progress: i64,
}

impl EndStates {
    fn from_counts(counts: &BTreeMap<String, i64>) -> EndStates {
        let n = |state: &str| counts.get(state).copied().unwrap_or(0);
        EndStates {
            healthy: n("healthy"),
            rolled_back: n("rolled_back"),
            failed: n("failed"),
            refused: n("refused"),
            deferred: n("deferred"),
            in_progress: n("in_progress"),
        }
    }

    /// All attempts.
    pub fn total(&self) -> i64 {
        self.healthy
            + self.rolled_back
            + self.failed
            + self.refused
            + self.deferred
            + self.in_progress
    }
}

impl Funnel {
    /// The funnel of `counts`: each step counts at least the agents of the steps after it
    /// (an agent that handed over was verified, even when that report is still on its way).
    /// Agents without progress reports (older agents) are added: those on the version and
    /// those whose error reports tell a rollback went through every step to the hand-over,
    /// those whose reports tell a failure were offered.
    pub fn from_counts(counts: &StepCounts) -> Funnel {
        let healthy = counts.healthy_reporting.max(counts.step("healthy"));
        let rolled_back = counts.step("rolled_back");
        let handed_over = counts.step("handed_over").max(healthy + rolled_back);
        let verified = counts.step("verified").max(handed_over);
        let downloading = counts.step("downloading").max(verified);
        let offered = counts.step("offered").max(downloading);
        let legacy_handed_over = counts.silent_on_version + counts.legacy_rolled_back;
        let mut failed_by_step = counts.failed_by_step.clone();
        if counts.legacy_failed > 0 {
            *failed_by_step.entry("legacy".to_owned()).or_default() += counts.legacy_failed;
        }
        Funnel {
            offered: offered + legacy_handed_over + counts.legacy_failed,
            downloading: downloading + legacy_handed_over,
            verified: verified + legacy_handed_over,
            handed_over: handed_over + legacy_handed_over,
            healthy: healthy + counts.silent_on_version,
            refused: counts.end_states.get("refused").copied().unwrap_or(0),
            failed: counts.step("failed") + counts.legacy_failed,
            failed_by_step,
            rolled_back: rolled_back + counts.legacy_rolled_back,
            attempts: counts.end_states.values().sum(),
            ends: EndStates::from_counts(&counts.end_states),
        }
    }

    /// Attempts the halt rule counts: agents that started the update (reported `offered` or a
    /// later step). `attempts` counts every agent offered it, in progress ones too.
    pub fn attempts_started(&self) -> i64 {
        self.offered
    }

    /// Attempts that went wrong: failures and rollbacks.
    pub fn failures(&self) -> i64 {
        self.failed + self.rolled_back
    }
}

impl Default for HaltRule {
    fn default() -> Self {
        HaltRule {
            percent: 5,
            min_attempts: 20,
        }
    }
}

impl HaltRule {
    /// Whether `funnel` has passed the threshold.
    pub fn is_passed(&self, funnel: &Funnel) -> bool {
        let attempts = funnel.attempts_started();
        attempts >= self.min_attempts.max(1) && funnel.failures() * 100 > self.percent * attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(reported: &[(&str, i64)]) -> StepCounts {
        StepCounts {
            reported: reported
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            ..StepCounts::default()
        }
    }

    #[test]
    fn later_steps_fill_in_earlier_ones() {
        let funnel = Funnel::from_counts(&counts(&[("offered", 2), ("healthy", 3)]));
        assert_eq!(
            (funnel.offered, funnel.downloading, funnel.verified),
            (3, 3, 3)
        );
        assert_eq!((funnel.handed_over, funnel.healthy), (3, 3));
    }

    #[test]
    fn outcomes_are_counted_with_their_step() {
        let mut c = counts(&[
            ("offered", 10),
            ("downloading", 9),
            ("verified", 7),
            ("handed_over", 6),
            ("healthy", 4),
            ("refused", 1),
            ("failed", 2),
            ("rolled_back", 2),
        ]);
        c.failed_by_step.insert("verifying".into(), 2);
        c.end_states = [
            ("healthy", 4),
            ("refused", 1),
            ("failed", 2),
            ("rolled_back", 2),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        c.end_states.insert("in_progress".into(), 1);
        let funnel = Funnel::from_counts(&c);
        assert_eq!(funnel.attempts, 10);
        assert_eq!(funnel.ends.total(), funnel.attempts);
        assert_eq!(funnel.ends.in_progress, 1);
        assert_eq!(funnel.offered, 10);
        assert_eq!(funnel.handed_over, 6);
        assert_eq!(
            (funnel.failed, funnel.rolled_back, funnel.refused),
            (2, 2, 1)
        );
        assert_eq!(funnel.failed_by_step["verifying"], 2);
        assert_eq!((funnel.attempts_started(), funnel.failures()), (10, 4));
    }

    #[test]
    fn older_agents_count_by_version_and_error_reports() {
        let c = StepCounts {
            silent_on_version: 5,
            legacy_failed: 2,
            legacy_rolled_back: 1,
            ..StepCounts::default()
        };
        let funnel = Funnel::from_counts(&c);
        assert_eq!(funnel.healthy, 5);
        assert_eq!(funnel.handed_over, 6, "5 healthy + 1 rolled back");
        assert_eq!(funnel.offered, 8, "6 handed over + 2 failed before");
        assert_eq!(funnel.failed_by_step["legacy"], 2);
        assert_eq!(funnel.failures(), 3);
    }

    #[test]
    fn agents_with_and_without_progress_reports_add_up() {
        let mut c = counts(&[("offered", 2), ("healthy", 1), ("failed", 1)]);
        c.healthy_reporting = 1;
        c.legacy_rolled_back = 1;
        let funnel = Funnel::from_counts(&c);
        assert_eq!(
            (funnel.offered, funnel.handed_over, funnel.healthy),
            (3, 2, 1)
        );
        assert_eq!(funnel.failures(), 2);
    }

    #[test]
    fn an_agent_on_the_new_version_counts_once_before_its_healthy_report_arrives() {
        let mut c = counts(&[("offered", 3), ("handed_over", 3)]);
        c.healthy_reporting = 3;
        let funnel = Funnel::from_counts(&c);
        assert_eq!(
            (funnel.handed_over, funnel.healthy, funnel.offered),
            (3, 3, 3)
        );
    }

    #[test]
    fn halt_needs_enough_attempts_and_more_than_the_share() {
        let rule = HaltRule::default();
        let funnel = |offered, failed, rolled_back| Funnel {
            offered,
            failed,
            rolled_back,
            ..Funnel::default()
        };
        assert!(
            !rule.is_passed(&funnel(19, 10, 9)),
            "fewer than 20 attempts"
        );
        assert!(
            !rule.is_passed(&funnel(20, 1, 0)),
            "exactly 5 % is tolerated"
        );
        assert!(rule.is_passed(&funnel(20, 1, 1)), "10 % passes");
        assert!(rule.is_passed(&funnel(100, 3, 3)));
        assert!(!rule.is_passed(&funnel(0, 0, 0)));
        let strict = HaltRule {
            percent: 50,
            min_attempts: 0,
        };
        assert!(!strict.is_passed(&funnel(0, 0, 0)), "no attempt, no halt");
        assert!(strict.is_passed(&funnel(3, 0, 2)));
        assert!(!strict.is_passed(&funnel(4, 1, 1)));
    }
}
