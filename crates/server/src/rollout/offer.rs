//! The offer: the release an agent is told to install, in the answer to its update check and
//! to its heartbeat on the WebSocket, and the package path it downloads it from.
//!
//! A group's own rollout percentage of a release (`cms-server rollout set --group`) overrides
//! the release's for that group's agents; the cohort stays the agent's own. Outside its group's
//! maintenance windows ([`super::window`]) an agent is offered nothing, and an offer carries the
//! windows so the agent checks them again before it starts.
//!
//! Both the HTTP update check and the WebSocket heartbeat answer through [`offer_for`], so they
//! can never disagree. Every offer is recorded (per agent and release, [`record`]; the release
//! watcher's pushes too): update progress counts for a release only from agents that were
//! offered it (`crate::intake::progress`). This module must never offer a release outside the
//! agent's cohort or one that is not newer than what it runs, and never offer one unrecorded.

use cms_protocol::UpdateInfo;
use cms_protocol::update::package_file_name;

use super::cohort::{self, Candidate};
use super::{inflight, pin, window};
use crate::clock;
use crate::db::{Db, DbError, ReleaseRow};

pub use crate::db::OfferVia;

/// What the agent asking for an update is running, and how it asks.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// Its id.
    pub agent_id: &'a str,
    /// The version it runs.
    pub current: &'a semver::Version,
    /// Its platform.
    pub platform: &'a str,
    /// Minutes its clock is ahead of UTC, when it says (for windows on the agent's clock).
    pub utc_offset_minutes: Option<i32>,
}

/// The newest release for the asker's platform that is newer than what it runs and whose
/// rollout includes it, while its group's maintenance window is open; recorded as offered to it
/// `via` the answer it goes out in.
pub async fn offer_for(
    db: &Db,
    asker: Asker<'_>,
    via: OfferVia,
) -> Result<Option<UpdateInfo>, DbError> {
    let Asker {
        agent_id,
        current,
        platform,
        utc_offset_minutes,
    } = asker;
    let rules = db.group_rules(agent_id, platform).await?;
    let windows = rules
        .as_ref()
        .and_then(|r| r.windows.as_ref())
        .map(window::from_stored);
    if !window::is_open(windows.as_ref(), utc_offset_minutes) {
        tracing::debug!(agent_id, "no offer: outside the group's maintenance window");
        return Ok(None);
    }
    let releases = db.releases_for_platform(platform).await?;
    let group = rules.as_ref().map(|r| r.group.as_str());
    let (picked, rollback) = match rules.as_ref().and_then(|r| r.pin.as_ref()) {
        Some(pinned) => {
            let (release, rollback) = pin::pinned_offer(pinned, current, &releases).unzip();
            (release, rollback.flatten().map(Box::new))
        }
        None => {
            let by = (platform, group);
            (
                pick_by_rollout(db, agent_id, current, by, &releases).await?,
                None,
            )
        }
    };
    let Some(release) = picked else {
        return Ok(None);
    };
    if !inflight::admits(db, release, agent_id, group).await? {
        return Ok(None);
    }
    record(db, &[agent_id], &release.version, &release.platform, via).await?;
    let picked = Some(release);
    Ok(picked.map(|r| UpdateInfo {
        package_url: package_url(&r.version, &r.platform),
        target: package_file_name(&r.version, &r.platform),
        version: r.version.clone(),
        platform: r.platform.clone(),
        length: u64::try_from(r.length).unwrap_or_default(),
        sha256: r.sha256.clone(),
        window: windows,
        rollback,
        urgent: r.urgent,
    }))
}

/// The newest release newer than `current` whose rollout (the group's own percentage, else the
/// release's) includes the agent; never one superseded by a newer release offered to the whole
/// fleet (a group held back from that one is not offered the older one instead).
async fn pick_by_rollout<'a>(
    db: &Db,
    agent_id: &str,
    current: &semver::Version,
    (platform, group): (&str, Option<&str>),
    releases: &'a [ReleaseRow],
) -> Result<Option<&'a ReleaseRow>, DbError> {
    let overrides = match group {
        Some(group) => db.group_rollouts(platform, group).await?,
        None => Vec::new(),
    };
    let offered: Vec<(String, i64)> = releases
        .iter()
        .map(|r| (r.version.clone(), r.rollout_percent))
        .collect();
    let candidates: Vec<Candidate> = releases
        .iter()
        .filter(|r| !cohort::is_superseded(&r.version, &offered))
        .map(|r| Candidate {
            version: r.version.clone(),
            rollout_percent: group_percent(&overrides, &r.version).unwrap_or(r.rollout_percent),
        })
        .collect();
    Ok(cohort::pick_update(agent_id, current, &candidates)
        .and_then(|c| releases.iter().find(|r| r.version == c.version)))
}

/// A group's own percentage of `version`, overriding the release's for that group.
fn group_percent(overrides: &[(String, i64)], version: &str) -> Option<i64> {
    overrides
        .iter()
        .find(|(v, _)| v == version)
        .map(|(_, percent)| *percent)
}

/// Records that `version` on `platform` was offered to `agent_ids` `via` an answer or a push.
pub async fn record(
    db: &Db,
    agent_ids: &[&str],
    version: &str,
    platform: &str,
    via: OfferVia,
) -> Result<(), DbError> {
    if agent_ids.is_empty() {
        return Ok(());
    }
    db.record_offers(agent_ids, version, platform, via, &clock::now())
        .await?;
    tracing::debug!(
        agents = agent_ids.len(),
        version,
        platform,
        via = via.name(),
        "update offer recorded"
    );
    Ok(())
}

/// Path of a release package, relative to the server's base URL.
pub fn package_url(version: &str, platform: &str) -> String {
    format!("/api/v1/agent/packages/{version}/{platform}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_percentage_overrides_the_releases() {
        let overrides = [("2.0.0".to_owned(), 100), ("3.0.0".to_owned(), 0)];
        assert_eq!(group_percent(&overrides, "2.0.0"), Some(100));
        assert_eq!(group_percent(&overrides, "3.0.0"), Some(0));
        assert_eq!(group_percent(&overrides, "4.0.0"), None);
    }

    #[test]
    fn package_url_shape() {
        assert_eq!(
            package_url("1.2.3", "linux-x86_64"),
            "/api/v1/agent/packages/1.2.3/linux-x86_64"
        );
    }
}
