//! Which release an agent should move to: version comparison and staged-rollout cohorts.
//!
//! Pure functions only: this module must never do I/O, so every rule here is unit tested.

use semver::Version;
use sha2::{Digest, Sha256};

use crate::release::parse_version;

/// A release as the update check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Version string as published.
    pub version: String,
    /// Share of the fleet (0..=100) that may see this release.
    pub rollout_percent: i64,
}

/// The agent's rollout cohort in `0..100`: the first 4 bytes of SHA-256(agent_id), read as a
/// big-endian `u32`, modulo 100. Stable for an agent, uniform across the fleet.
pub fn cohort(agent_id: &str) -> u32 {
    let digest = Sha256::digest(agent_id.as_bytes());
    let mut first = [0u8; 4];
    first.copy_from_slice(&digest[..4]);
    u32::from_be_bytes(first) % 100
}

/// Whether a release rolled out to `rollout_percent` percent of the fleet includes this agent.
pub fn in_rollout(agent_id: &str, rollout_percent: i64) -> bool {
    i64::from(cohort(agent_id)) < rollout_percent
}

/// The newest candidate strictly newer than `current` whose rollout includes the agent.
///
/// Candidates with versions that do not parse are skipped.
pub fn pick_update<'a>(
    agent_id: &str,
    current: &Version,
    candidates: &'a [Candidate],
) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter_map(|c| parse_version(&c.version).map(|v| (v, c)))
        .filter(|(v, c)| v > current && in_rollout(agent_id, c.rollout_percent))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, c)| c)
}

/// Whether `version` is superseded among `releases` (`(version, rollout_percent)` of one
/// platform, 0 for a paused one): a newer one is offered to the whole fleet, so this one is
/// offered to nobody.
pub fn is_superseded(version: &str, releases: &[(String, i64)]) -> bool {
    let Some(version) = parse_version(version) else {
        return false;
    };
    releases.iter().any(|(other, percent)| {
        *percent >= 100 && parse_version(other).is_some_and(|other| other > version)
    })
}

/// Whether a newly published release should be pushed to an agent: its rollout includes the
/// agent and the agent's last reported version is older (or unreadable, so the check decides).
pub fn should_notify(
    agent_id: &str,
    agent_version: &str,
    release: &Version,
    rollout_percent: i64,
) -> bool {
    in_rollout(agent_id, rollout_percent)
        && parse_version(agent_version).is_none_or(|current| &current < release)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        parse_version(text).unwrap()
    }

    fn cand(version: &str, rollout_percent: i64) -> Candidate {
        Candidate {
            version: version.into(),
            rollout_percent,
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(v("1.0.0") > v("1.0.0-rc.1"));
        assert_eq!(v("v1.2.3"), v("1.2.3"));
        assert!(parse_version("1.2").is_none());
        assert!(parse_version("x.y.z").is_none());
    }

    #[test]
    fn cohort_is_stable_and_in_range() {
        let ids = ["a", "b", "00000000-0000-4000-8000-000000000000", ""];
        for id in ids {
            assert!(cohort(id) < 100);
            assert_eq!(cohort(id), cohort(id));
        }
        // SHA-256("a") starts with ca978112 -> 0xca978112 % 100.
        assert_eq!(cohort("a"), 0xca97_8112_u32 % 100);
    }

    #[test]
    fn rollout_bounds() {
        for i in 0..200 {
            let id = format!("agent-{i}");
            assert!(in_rollout(&id, 100));
            assert!(!in_rollout(&id, 0));
        }
    }

    #[test]
    fn rollout_share_is_roughly_the_percentage() {
        let inside = (0..10_000)
            .filter(|i| in_rollout(&format!("agent-{i}"), 25))
            .count();
        assert!((2_000..3_000).contains(&inside), "{inside}");
    }

    #[test]
    fn picks_newest_strictly_newer_release_in_cohort() {
        let candidates = [cand("1.0.0", 100), cand("1.2.0", 100), cand("1.1.0", 100)];
        let picked = pick_update("x", &v("1.0.0"), &candidates).unwrap();
        assert_eq!(picked.version, "1.2.0");
        assert!(pick_update("x", &v("1.2.0"), &candidates).is_none());
        assert!(pick_update("x", &v("2.0.0"), &candidates).is_none());
    }

    #[test]
    fn notifies_older_agents_in_the_cohort_only() {
        let release = v("1.2.0");
        assert!(should_notify("x", "1.1.0", &release, 100));
        assert!(should_notify("x", "garbage", &release, 100));
        assert!(!should_notify("x", "1.2.0", &release, 100));
        assert!(!should_notify("x", "1.3.0", &release, 100));
        assert!(!should_notify("x", "1.1.0", &release, 0));
    }

    #[test]
    fn a_release_is_superseded_by_a_newer_one_offered_to_everyone() {
        let list = |items: &[(&str, i64)]| -> Vec<(String, i64)> {
            items.iter().map(|(v, p)| ((*v).to_owned(), *p)).collect()
        };
        assert!(is_superseded(
            "1.5.0",
            &list(&[("1.5.0", 100), ("2.0.0", 100)])
        ));
        assert!(!is_superseded(
            "1.5.0",
            &list(&[("1.5.0", 100), ("2.0.0", 50)])
        ));
        assert!(!is_superseded(
            "2.0.0",
            &list(&[("1.5.0", 100), ("2.0.0", 100)])
        ));
        assert!(!is_superseded("1.5.0", &list(&[("2.0.0", 0)])), "paused");
    }

    #[test]
    fn skips_releases_outside_the_cohort_and_unparsable() {
        let candidates = [cand("1.1.0", 100), cand("1.2.0", 0), cand("bogus", 100)];
        let picked = pick_update("x", &v("1.0.0"), &candidates).unwrap();
        assert_eq!(picked.version, "1.1.0");
    }
}
