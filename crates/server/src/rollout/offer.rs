//! The offer: the release an agent is told to install, in the answer to its update check and
//! to its heartbeat on the WebSocket, and the package path it downloads it from.
//!
//! Both the HTTP update check and the WebSocket heartbeat answer through [`offer_for`], so they
//! can never disagree. This module must never offer a release outside the agent's cohort or
//! one that is not newer than what it runs.

use cms_protocol::UpdateInfo;
use cms_protocol::update::package_file_name;

use super::cohort::{self, Candidate};
use crate::db::{Db, DbError};

/// The newest release for `platform` that is newer than `current` and whose rollout includes
/// `agent_id`.
pub async fn offer_for(
    db: &Db,
    agent_id: &str,
    current: &semver::Version,
    platform: &str,
) -> Result<Option<UpdateInfo>, DbError> {
    let releases = db.releases_for_platform(platform).await?;
    let candidates: Vec<Candidate> = releases
        .iter()
        .map(|r| Candidate {
            version: r.version.clone(),
            rollout_percent: r.rollout_percent,
        })
        .collect();
    let picked = cohort::pick_update(agent_id, current, &candidates)
        .and_then(|c| releases.iter().find(|r| r.version == c.version));
    Ok(picked.map(|r| UpdateInfo {
        package_url: package_url(&r.version, &r.platform),
        target: package_file_name(&r.version, &r.platform),
        version: r.version.clone(),
        platform: r.platform.clone(),
        length: u64::try_from(r.length).unwrap_or_default(),
        sha256: r.sha256.clone(),
    }))
}

/// Path of a release package, relative to the server's base URL.
pub fn package_url(version: &str, platform: &str) -> String {
    format!("/api/v1/agent/packages/{version}/{platform}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_url_shape() {
        assert_eq!(
            package_url("1.2.3", "linux-x86_64"),
            "/api/v1/agent/packages/1.2.3/linux-x86_64"
        );
    }
}
