//! `cms-server release publish`: package an agent and an updater as a release and record it.
//!
//! Flow: validate the request; refuse a (version, platform) already published; build the zip in
//! a temp file next to its final place (flushed and hashed); then, inside one database
//! transaction, insert the row and rename the file into place. The commit makes the release
//! visible to a running server (which pushes it to agents), so no agent is ever offered a
//! package that is not fully on disk. Releases are immutable: this module must never overwrite
//! a published package or row, and never read the command line or the environment.

pub mod archive;
pub mod delta;
pub mod rollback;
pub mod signing;
pub mod tuf;
pub mod tuf_keys;
pub mod tuf_root;

use std::path::{Path, PathBuf};

use cms_protocol::update::{PackageManifest, executable_names, package_file_name};
use semver::Version;

use crate::access::{self, Actor, Outcome};
use crate::clock;
use crate::cluster::leader;
use crate::db::{self, Db, DbError, NewRelease};
use crate::events::{ClusterEvent, EventBus};

/// Parses `X.Y.Z` (with an optional `-pre`/`+build` suffix, as SemVer 2.0 defines them);
/// `None` for anything else, which is never offered nor counted.
///
/// A leading `v` is accepted, because people type it.
pub fn parse_version(text: &str) -> Option<Version> {
    let text = text.trim();
    let text = text.strip_prefix('v').unwrap_or(text);
    Version::parse(text).ok()
}

/// Platforms a release can be published for.
pub const PLATFORMS: [&str; 2] = ["windows-x86_64", "linux-x86_64"];

/// Folder of the packages inside the data directory.
pub const PACKAGES_DIR: &str = "packages";

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Server data directory (packages go under `DIR/packages`; SQLite lives here by default).
    pub data_dir: PathBuf,
    /// `postgres://...` URL; `None` means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Version, `X.Y.Z` (SemVer 2.0).
    pub version: String,
    /// One of [`PLATFORMS`].
    pub platform: String,
    /// The agent executable.
    pub agent: PathBuf,
    /// The updater executable.
    pub updater: PathBuf,
    /// Share of the fleet (0..=100) that is offered the release at once (0 for a planned
    /// release, whose first stage `rollout::plan::start` opens after the commit).
    pub rollout_percent: u8,
    /// How long the signed `timestamp.json` stays valid (agents refuse older metadata).
    pub timestamp_lifetime: std::time::Duration,
    /// Who publishes, for the audit log.
    pub actor: Actor,
    /// Make deltas from this many of the newest older releases (`--delta-from`, 0: none).
    pub delta_from: usize,
    /// `--urgent`: agents on a metered connection take it at once instead of deferring it.
    pub urgent: bool,
}

/// A release that was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Canonical version.
    pub version: String,
    /// Platform.
    pub platform: String,
    /// Where the package now lies.
    pub package_path: PathBuf,
    /// Package length in bytes.
    pub length: u64,
    /// Lower-case hex SHA-256 of the package.
    pub sha256: String,
    /// Share of the fleet that is offered it.
    pub rollout_percent: u8,
}

/// Why a release was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The version is not SemVer.
    #[error("{0:?} is not a semantic version (expected X.Y.Z)")]
    InvalidVersion(String),
    /// The platform is not one of [`PLATFORMS`].
    #[error("unknown platform {0:?} (expected windows-x86_64 or linux-x86_64)")]
    InvalidPlatform(String),
    /// The rollout is above 100.
    #[error("rollout must be between 0 and 100 percent, got {0}")]
    InvalidRollout(u8),
    /// An input executable is missing or not a regular file.
    #[error("{role} {path}: {reason}")]
    BadInput {
        /// `--agent` or `--updater`.
        role: &'static str,
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The (version, platform) exists: releases are immutable.
    #[error(
        "release {version} for {platform} is already published{note}; releases are immutable, \
         publish a new version instead"
    )]
    AlreadyPublished {
        /// Requested version.
        version: String,
        /// Requested platform.
        platform: String,
        /// Extra detail (an existing version of the same precedence).
        note: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(DbError),
    /// Building the package failed.
    #[error("cannot build the package: {0}")]
    Archive(#[from] archive::ArchiveError),
    /// Creating folders or moving the package into place failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The packaging task panicked or was cancelled.
    #[error("packaging task failed: {0}")]
    Task(String),
    /// The release metadata could not be signed.
    #[error("cannot sign the release metadata: {0}")]
    Signing(#[from] tuf::TufError),
}

impl From<DbError> for PublishError {
    fn from(error: DbError) -> Self {
        PublishError::Database(error)
    }
}

impl PublishError {
    /// Whether the request itself was refused (bad input, already published): retrying the same
    /// command cannot succeed. Other errors (I/O, database) may be transient.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PublishError::InvalidVersion(_)
                | PublishError::InvalidPlatform(_)
                | PublishError::InvalidRollout(_)
                | PublishError::BadInput { .. }
                | PublishError::AlreadyPublished { .. }
        ) || matches!(self, PublishError::Signing(error) if error.is_refusal())
    }
}

/// Path of a package relative to the data directory, `/`-separated (as stored in the database).
pub fn package_rel_path(version: &str, platform: &str) -> String {
    let file = package_file_name(version, platform);
    format!("{PACKAGES_DIR}/{platform}/{version}/{file}")
}

/// Publishes one release (see the module docs).
pub async fn publish(request: PublishRequest) -> Result<Published, PublishError> {
    let version = validate(&request)?;
    let db = Db::open_for_command(&request.data_dir, request.database_url.as_deref())
        .await
        .map_err(PublishError::Database)?;
    let result = leader::exclusively(
        &db,
        leader::METADATA_SIGNING,
        publish_with(&db, &request, &version),
    )
    .await;
    let target = format!("{} {}", request.version.trim(), request.platform);
    let outcome = if result.is_ok() {
        Outcome::Ok
    } else {
        Outcome::Refused
    };
    access::audit(
        &db,
        &request.actor,
        "release.publish",
        Some(&target),
        outcome,
    )
    .await;
    db.close().await;
    result
}

/// On PostgreSQL, every replica hears `event` when (and only if) `pending` commits; a running
/// SQLite server finds the change by polling.
async fn tell_replicas_at_commit(
    db: &Db,
    pending: &mut db::PendingRelease,
    event: &ClusterEvent,
) -> Result<(), DbError> {
    if let Some(channel) = EventBus::new(db).await?.channel() {
        pending.notify_on_commit(channel, &event.payload()).await?;
    }
    Ok(())
}

/// Checks the request; returns the parsed version.
fn validate(request: &PublishRequest) -> Result<Version, PublishError> {
    let version = Version::parse(request.version.trim())
        .map_err(|_| PublishError::InvalidVersion(request.version.clone()))?;
    if !PLATFORMS.contains(&request.platform.as_str()) {
        return Err(PublishError::InvalidPlatform(request.platform.clone()));
    }
    if request.rollout_percent > 100 {
        return Err(PublishError::InvalidRollout(request.rollout_percent));
    }
    check_input("--agent", &request.agent)?;
    check_input("--updater", &request.updater)?;
    Ok(version)
}

fn check_input(role: &'static str, path: &Path) -> Result<(), PublishError> {
    let bad = |reason: String| PublishError::BadInput {
        role,
        path: path.display().to_string(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !metadata.is_file() {
        return Err(bad("not a regular file".into()));
    }
    Ok(())
}

async fn publish_with(
    db: &Db,
    request: &PublishRequest,
    version: &Version,
) -> Result<Published, PublishError> {
    let version_text = version.to_string();
    let platform = request.platform.as_str();
    let repository = tuf::Repository::new(&request.data_dir);
    let lock = lock_repository(&repository).await?;
    refuse_existing(db, &version_text, platform, version).await?;
    let rel_path = package_rel_path(&version_text, platform);
    let final_path = request.data_dir.join(&rel_path);
    let built = build_package(request, &version_text, &final_path).await?;
    let mut targets = signed_targets(db, &request.data_dir).await?;
    targets.push(tuf::TargetEntry {
        version: version_text.clone(),
        platform: platform.to_owned(),
        length: built.length,
        sha256: built.sha256.clone(),
        delta_from: None,
    });
    let new_package = delta::NewPackage {
        data_dir: &request.data_dir,
        version,
        platform,
        path: built.file.path(),
        length: built.length,
    };
    targets.extend(delta::make_for_publish(db, &new_package, request.delta_from).await?);
    // Signed before the row is committed: no agent is offered a release its metadata lacks.
    repository
        .sign(&lock, &targets, request.timestamp_lifetime)
        .await?;
    let length = i64::try_from(built.length).map_err(|_| PublishError::Io {
        path: final_path.display().to_string(),
        source: std::io::Error::other("package larger than 2^63 bytes"),
    })?;
    let published_at = clock::now();
    let rollout_percent = i64::from(request.rollout_percent);
    let row = NewRelease {
        version: &version_text,
        platform,
        package_path: &rel_path,
        length,
        sha256: &built.sha256,
        rollout_percent,
        published_at: &published_at,
        urgent: request.urgent,
    };
    let mut pending = db.begin_release(&row).await.map_err(|error| match error {
        DbError::Duplicate(_) => already_published(&version_text, platform, String::new()),
        other => PublishError::Database(other),
    })?;
    let event = ClusterEvent::ReleasePublished {
        version: version_text.clone(),
        platform: platform.to_owned(),
    };
    tell_replicas_at_commit(db, &mut pending, &event).await?;
    let (byte_length, sha256) = (built.length, built.sha256.clone());
    move_into_place(built, &final_path)?;
    pending.commit().await.map_err(PublishError::Database)?;
    tracing::info!(
        version = %version_text,
        platform,
        length,
        rollout_percent,
        urgent = request.urgent,
        "release published"
    );
    Ok(Published {
        version: version_text,
        platform: platform.to_owned(),
        package_path: final_path,
        length: byte_length,
        sha256,
        rollout_percent: u8::try_from(rollout_percent).unwrap_or(100),
    })
}

/// Re-signs the metadata (same targets, next version) when less than half of `lifetime` is left
/// on the current timestamp; creates the keys and root on a new server. Returns whether it
/// signed.
pub async fn refresh_metadata(
    db: &Db,
    data_dir: &Path,
    lifetime: std::time::Duration,
) -> Result<bool, PublishError> {
    let repository = tuf::Repository::new(data_dir);
    let lock = lock_repository(&repository).await?;
    repository.ensure_root(&lock).await?;
    let Some(expires) = repository.timestamp_expires()? else {
        return Ok(false);
    };
    let left = expires.duration_since(jiff::Timestamp::now());
    let half = jiff::SignedDuration::try_from(lifetime / 2).unwrap_or(jiff::SignedDuration::MAX);
    if left > half {
        return Ok(false);
    }
    let targets = signed_targets(db, data_dir).await?;
    repository.sign(&lock, &targets, lifetime).await?;
    Ok(true)
}

/// Takes the repository's signing lock without blocking the runtime.
pub async fn lock_repository(
    repository: &tuf::Repository,
) -> Result<tuf::SigningLock, PublishError> {
    let repository = repository.clone();
    tokio::task::spawn_blocking(move || repository.lock())
        .await
        .map_err(|e| PublishError::Task(e.to_string()))?
        .map_err(PublishError::from)
}

/// Every committed release, and every delta between two of them, as the targets metadata
/// lists them.
pub async fn signed_targets(
    db: &Db,
    data_dir: &Path,
) -> Result<Vec<tuf::TargetEntry>, PublishError> {
    let releases = db.list_releases().await.map_err(PublishError::Database)?;
    let deltas = delta::signed_deltas(data_dir, &releases);
    Ok(releases
        .into_iter()
        .map(|r| tuf::TargetEntry {
            length: u64::try_from(r.length).unwrap_or_default(),
            version: r.version,
            platform: r.platform,
            sha256: r.sha256,
            delta_from: None,
        })
        .chain(deltas)
        .collect())
}

fn already_published(version: &str, platform: &str, note: String) -> PublishError {
    PublishError::AlreadyPublished {
        version: version.to_owned(),
        platform: platform.to_owned(),
        note,
    }
}

/// Refuses an existing (version, platform), or one of equal SemVer precedence (`1.2.0+a` and
/// `1.2.0+b` could not be told apart by the update check).
async fn refuse_existing(
    db: &Db,
    version_text: &str,
    platform: &str,
    version: &Version,
) -> Result<(), PublishError> {
    let existing = db
        .releases_for_platform(platform)
        .await
        .map_err(PublishError::Database)?;
    for release in existing {
        if release.version == version_text {
            return Err(already_published(version_text, platform, String::new()));
        }
        let same_precedence =
            parse_version(&release.version).is_some_and(|v| v.cmp_precedence(version).is_eq());
        if same_precedence {
            let note = format!(" as {} (same precedence)", release.version);
            return Err(already_published(version_text, platform, note));
        }
    }
    Ok(())
}

/// Builds the zip in a temp file in the final folder (on a blocking thread).
async fn build_package(
    request: &PublishRequest,
    version: &str,
    final_path: &Path,
) -> Result<archive::BuiltPackage, PublishError> {
    let dir = final_path.parent().unwrap_or(&request.data_dir).to_owned();
    std::fs::create_dir_all(&dir).map_err(|source| PublishError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let (agent_name, updater_name) = executable_names(&request.platform);
    let manifest = PackageManifest {
        version: version.to_owned(),
        platform: request.platform.clone(),
        agent: agent_name.to_owned(),
        updater: updater_name.to_owned(),
    };
    let (agent, updater) = (request.agent.clone(), request.updater.clone());
    tokio::task::spawn_blocking(move || {
        let inputs = archive::Inputs {
            agent: &agent,
            updater: &updater,
        };
        archive::build(&dir, &manifest, &inputs)
    })
    .await
    .map_err(|e| PublishError::Task(e.to_string()))?
    .map_err(PublishError::from)
}

/// Renames the finished temp file to `final_path` and makes the rename durable. A file already
/// there has no committed row (the insert above would have failed): it is a leftover of an
/// interrupted publish and is replaced.
fn move_into_place(built: archive::BuiltPackage, final_path: &Path) -> Result<(), PublishError> {
    let io_err = |source| PublishError::Io {
        path: final_path.display().to_string(),
        source,
    };
    built
        .file
        .persist(final_path)
        .map_err(|e| io_err(e.error))?;
    sync_parent(final_path).map_err(io_err)
}

#[cfg(unix)]
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(not(unix))]
pub(crate) fn sync_parent(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn request(dir: &Path) -> PublishRequest {
        std::fs::write(dir.join("agent"), b"agent-bytes").unwrap();
        std::fs::write(dir.join("updater"), b"updater-bytes").unwrap();
        PublishRequest {
            data_dir: dir.join("data"),
            database_url: None,
            version: "1.2.3".into(),
            platform: "linux-x86_64".into(),
            agent: dir.join("agent"),
            updater: dir.join("updater"),
            rollout_percent: 100,
            timestamp_lifetime: tuf::DEFAULT_TIMESTAMP_LIFETIME,
            actor: Actor::command_line("test"),
            delta_from: delta::DEFAULT_DELTA_FROM,
            urgent: false,
        }
    }

    #[test]
    fn rel_path_layout() {
        assert_eq!(
            package_rel_path("1.2.3", "windows-x86_64"),
            "packages/windows-x86_64/1.2.3/cms_agent-1.2.3-windows-x86_64.zip"
        );
    }

    #[test]
    fn validation_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let good = request(dir.path());
        assert!(validate(&good).is_ok());
        let cases = [
            PublishRequest {
                version: "1.2".into(),
                ..good.clone()
            },
            PublishRequest {
                platform: "mac".into(),
                ..good.clone()
            },
            PublishRequest {
                rollout_percent: 101,
                ..good.clone()
            },
            PublishRequest {
                agent: dir.path().join("missing"),
                ..good.clone()
            },
            PublishRequest {
                updater: dir.path().to_owned(),
                ..good.clone()
            },
        ];
        for case in cases {
            let error = validate(&case).unwrap_err();
            assert!(error.is_refusal(), "{error}");
        }
    }

    #[tokio::test]
    async fn publish_twice_is_refused_and_equal_precedence_too() {
        let dir = tempfile::tempdir().unwrap();
        let first = request(dir.path());
        let published = publish(first.clone()).await.unwrap();
        assert!(published.package_path.is_file());
        assert_eq!(
            std::fs::metadata(&published.package_path).unwrap().len(),
            published.length
        );
        let again = publish(first.clone()).await.unwrap_err();
        assert!(
            matches!(again, PublishError::AlreadyPublished { .. }),
            "{again}"
        );
        let build_meta = PublishRequest {
            version: "1.2.3+other".into(),
            ..first.clone()
        };
        let error = publish(build_meta).await.unwrap_err();
        assert!(error.to_string().contains("same precedence"), "{error}");
        let windows = PublishRequest {
            platform: "windows-x86_64".into(),
            ..first
        };
        publish(windows).await.unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(published.package_path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    }
}
