//! Pins: a group's agents on a platform are offered exactly one published release, and nothing
//! else (`cms-server group pin`, audited as `group.pin`; `group unpin`, `group.unpin`).
//!
//! A pin to a version older than the newest published one for the platform is a server-ordered
//! rollback: the agents go down to it through the normal verified path (download, TUF
//! verification, updater, health check). Agents never install an older version on their own, so
//! such a pin carries a rollback statement signed by the root key
//! (`crate::release::rollback`), which the agent checks against the root it pinned; the pin is
//! refused without the root key. The online keys and the database together cannot make one:
//! docs/SECURITY.md has the argument. This module must never store a pin to an unpublished
//! release, nor an older pin without its statement.

use std::path::Path;
use std::time::Duration;

use cms_protocol::RollbackStatement;
use tough::schema::RoleType;

use super::group::checked;
use crate::access::{self, Actor};
use crate::clock;
use crate::db::{Db, DbError, ReleaseRow, StoredPin};
use crate::release::parse_version;
use crate::release::rollback;
use crate::release::tuf::{Repository, TufError};

/// The audit log's names of pinning and unpinning.
pub const PIN: &str = "group.pin";
/// See [`PIN`].
pub const UNPIN: &str = "group.unpin";

/// Why a pin was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A group name or version that breaks the rules.
    #[error("{0}")]
    Invalid(String),
    /// No such release is published.
    #[error("no release {version} is published for {platform}")]
    UnknownRelease {
        /// The version asked for.
        version: String,
        /// The platform asked for.
        platform: String,
    },
    /// An older version without the root key to sign its rollback statement.
    #[error(
        "{version} is older than the newest release for {platform} ({newest}): pinning to it \
         rolls agents back, which needs the root key: give --root-key-dir (the offline root key \
         folder)"
    )]
    NeedsRootKey {
        /// The version asked for.
        version: String,
        /// The platform.
        platform: String,
        /// The newest published version.
        newest: String,
    },
    /// `unpin` of a group without a pin.
    #[error("group {group} has no pin for {platform}")]
    NoPin {
        /// The group.
        group: String,
        /// The platform.
        platform: String,
    },
    /// Signing the rollback statement failed (a wrong key is refused here).
    #[error(transparent)]
    Signing(#[from] TufError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl PinError {
    /// Whether retrying cannot help (exit 2, HTTP 4xx).
    pub fn is_refusal(&self) -> bool {
        match self {
            PinError::Database(_) => false,
            PinError::Signing(error) => error.is_refusal(),
            _ => true,
        }
    }
}

/// What `group pin` was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct PinRequest<'a> {
    /// The group.
    pub group: &'a str,
    /// The published version its agents are to run.
    pub version: &'a str,
    /// The platform.
    pub platform: &'a str,
    /// The root key folder, for a rollback (else the data directory's own root key, if the
    /// root is still online).
    pub root_key_dir: Option<&'a Path>,
    /// How long the rollback statement allows going back.
    pub rollback_lifetime: Duration,
}

/// Pins the group as `actor`; audited either way. Returns the pin as stored.
pub async fn pin(
    db: &Db,
    repository: &Repository,
    actor: &Actor,
    request: PinRequest<'_>,
) -> Result<StoredPin, PinError> {
    let PinRequest {
        group,
        version,
        platform,
        ..
    } = request;
    let target = format!("{group} -> {version} ({platform})");
    let result = pin_unaudited(db, repository, request).await;
    let failed = |e: &PinError| matches!(e, PinError::Database(_));
    access::audit_result(db, actor, (PIN, &target), &result, failed).await;
    if let Ok(stored) = &result {
        tracing::info!(
            actor = actor.name,
            group,
            version,
            platform,
            rollback = stored.rollback.is_some(),
            "group pinned"
        );
    }
    result
}

/// Removes the group's pin on `platform` as `actor`; audited either way.
pub async fn unpin(db: &Db, actor: &Actor, group: &str, platform: &str) -> Result<(), PinError> {
    let target = format!("{group} ({platform})");
    let result = async {
        let group = checked(group).map_err(|e| PinError::Invalid(e.to_string()))?;
        if db.clear_group_pin(group, platform).await? {
            Ok(())
        } else {
            Err(PinError::NoPin {
                group: group.to_owned(),
                platform: platform.to_owned(),
            })
        }
    }
    .await;
    let failed = |e: &PinError| matches!(e, PinError::Database(_));
    access::audit_result(db, actor, (UNPIN, &target), &result, failed).await;
    if result.is_ok() {
        tracing::info!(actor = actor.name, group, platform, "group unpinned");
    }
    result
}

async fn pin_unaudited(
    db: &Db,
    repository: &Repository,
    request: PinRequest<'_>,
) -> Result<StoredPin, PinError> {
    let group = checked(request.group).map_err(|e| PinError::Invalid(e.to_string()))?;
    let (version, platform) = (request.version, request.platform);
    let releases = db.releases_for_platform(platform).await?;
    if !releases.iter().any(|r| r.version == version) {
        return Err(PinError::UnknownRelease {
            version: version.to_owned(),
            platform: platform.to_owned(),
        });
    }
    let rollback = match newer_release(&releases, version) {
        None => None,
        Some(newest) => Some(sign_rollback(repository, request, newest).await?),
    };
    let stored = StoredPin {
        agent_group: group.to_owned(),
        platform: platform.to_owned(),
        version: version.to_owned(),
        rollback: rollback
            .map(|statement| serde_json::to_string(&statement))
            .transpose()
            .map_err(|e| PinError::Invalid(e.to_string()))?,
    };
    db.set_group_pin(&stored, &clock::now()).await?;
    Ok(stored)
}

/// The newest published version, when it is newer than `version` (the pin is then a rollback).
fn newer_release<'a>(releases: &'a [ReleaseRow], version: &str) -> Option<&'a str> {
    let pinned = parse_version(version)?;
    releases
        .iter()
        .filter_map(|r| parse_version(&r.version).map(|v| (v, r.version.as_str())))
        .filter(|(v, _)| *v > pinned)
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, text)| text)
}

async fn sign_rollback(
    repository: &Repository,
    request: PinRequest<'_>,
    newest: &str,
) -> Result<RollbackStatement, PinError> {
    let key = match request.root_key_dir {
        Some(dir) => crate::release::tuf_keys::key_file(dir, RoleType::Root),
        None => repository.key_path(RoleType::Root),
    };
    if !key.is_file() {
        return Err(PinError::NeedsRootKey {
            version: request.version.to_owned(),
            platform: request.platform.to_owned(),
            newest: newest.to_owned(),
        });
    }
    let statement = rollback::sign(
        repository,
        &key,
        request.version,
        request.platform,
        request.rollback_lifetime,
    )
    .await?;
    Ok(statement)
}

/// The release a pinned agent running `current` is offered, with the rollback statement when
/// it is older than `current`; `None` when it runs the pinned version (or that release is gone).
pub fn pinned_offer<'a>(
    pin: &StoredPin,
    current: &semver::Version,
    releases: &'a [ReleaseRow],
) -> Option<(&'a ReleaseRow, Option<RollbackStatement>)> {
    let pinned = parse_version(&pin.version)?;
    if pinned == *current {
        return None;
    }
    let release = releases.iter().find(|r| r.version == pin.version)?;
    let rollback = if pinned < *current {
        // A statement that does not parse is offered as none: the agent then refuses.
        pin.rollback
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
    } else {
        None
    };
    Some((release, rollback))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(version: &str) -> ReleaseRow {
        ReleaseRow {
            urgent: false,
            version: version.into(),
            platform: "linux-x86_64".into(),
            length: 1,
            sha256: String::new(),
            rollout_percent: 0,
            max_in_flight: None,
            stuck_after_secs: 1800,
        }
    }

    fn pin(version: &str, rollback: Option<&str>) -> StoredPin {
        StoredPin {
            agent_group: "canary".into(),
            platform: "linux-x86_64".into(),
            version: version.into(),
            rollback: rollback.map(str::to_owned),
        }
    }

    #[test]
    fn a_pin_is_a_rollback_only_below_the_newest_release() {
        let releases = [row("1.0.0"), row("2.0.0"), row("1.5.0")];
        assert_eq!(newer_release(&releases, "1.0.0"), Some("2.0.0"));
        assert_eq!(newer_release(&releases, "2.0.0"), None);
    }

    #[test]
    fn a_pinned_agent_is_offered_the_pin_only_and_the_statement_only_going_down() {
        let releases = [row("1.0.0"), row("2.0.0")];
        let statement = r#"{"signed":{"_type":"cms-rollback","version":"1.0.0","platform":"linux-x86_64","expires":"2030-01-01T00:00:00Z"},"signatures":[]}"#;
        let down = pin("1.0.0", Some(statement));
        let v = |text: &str| parse_version(text).unwrap();
        let (release, rollback) = pinned_offer(&down, &v("2.0.0"), &releases).unwrap();
        assert_eq!(release.version, "1.0.0");
        assert_eq!(rollback.unwrap().signed.version, "1.0.0");
        assert!(pinned_offer(&down, &v("1.0.0"), &releases).is_none());
        let (_, rollback) = pinned_offer(&down, &v("0.9.0"), &releases).unwrap();
        assert!(rollback.is_none(), "going up needs no statement");
        let garbled = pin("1.0.0", Some("{"));
        let (_, rollback) = pinned_offer(&garbled, &v("2.0.0"), &releases).unwrap();
        assert!(rollback.is_none());
        assert!(pinned_offer(&pin("3.0.0", None), &v("2.0.0"), &releases).is_none());
    }
}
