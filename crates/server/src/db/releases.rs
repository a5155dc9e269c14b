//! Rows of the `releases` table: publishing, the update check, downloads, the listing.

use serde::Serialize;

use super::{Db, DbError, split_page};

/// A release row as the update check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRow {
    /// Version string.
    pub version: String,
    /// Platform.
    pub platform: String,
    /// Package length in bytes.
    pub length: i64,
    /// Lower-case hex SHA-256 of the package.
    pub sha256: String,
    /// Share of the fleet that may see it.
    pub rollout_percent: i64,
    /// At most this many agents between offered and done at once (`None`: no cap).
    pub max_in_flight: Option<i64>,
    /// An offer without an end step after this many seconds is stuck.
    pub stuck_after_secs: i64,
    /// Published `--urgent`: agents on a metered connection take it at once.
    pub urgent: bool,
}

type ReleaseTuple = (String, String, i64, String, i64, Option<i64>, i64, i64);

fn release_row(
    (version, platform, length, sha256, rollout_percent, max_in_flight, stuck_after_secs, urgent): ReleaseTuple,
) -> ReleaseRow {
    ReleaseRow {
        version,
        platform,
        length,
        sha256,
        rollout_percent,
        max_in_flight,
        stuck_after_secs,
        urgent: urgent != 0,
    }
}

/// A published release with everything the operator listing shows (`GET /api/v1/releases`).
///
/// Serializes as a superset of `cms_protocol::ReleaseSummary`, so clients of that type read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseRecord {
    /// Version string.
    pub version: String,
    /// Platform.
    pub platform: String,
    /// When it was published (RFC 3339, UTC).
    pub published_at: String,
    /// Package length in bytes.
    pub length: i64,
    /// Lower-case hex SHA-256 of the package.
    pub sha256: String,
    /// Share of the fleet that may see it.
    pub rollout_percent: i64,
    /// Published `--urgent`: taken even on a metered connection.
    pub urgent: bool,
}

/// Where a page of the release listing starts: after this key, newest publication first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseKey {
    /// Publication time of the last release of the previous page.
    pub published_at: String,
    /// Its platform.
    pub platform: String,
    /// Its version.
    pub version: String,
}

impl Default for ReleaseKey {
    fn default() -> Self {
        ReleaseKey {
            published_at: "9999".to_owned(),
            platform: String::new(),
            version: String::new(),
        }
    }
}

impl ReleaseRecord {
    /// The key the next page starts after.
    pub fn key(&self) -> ReleaseKey {
        ReleaseKey {
            published_at: self.published_at.clone(),
            platform: self.platform.clone(),
            version: self.version.clone(),
        }
    }
}

/// A release row about to be inserted by `release publish`.
#[derive(Debug, Clone)]
pub struct NewRelease<'a> {
    /// Canonical version string.
    pub version: &'a str,
    /// Platform.
    pub platform: &'a str,
    /// Package path relative to the data directory, `/`-separated.
    pub package_path: &'a str,
    /// Package length in bytes.
    pub length: i64,
    /// Lower-case hex SHA-256 of the package.
    pub sha256: &'a str,
    /// Share of the fleet that may see it (0..=100).
    pub rollout_percent: i64,
    /// Publication time (RFC 3339, UTC).
    pub published_at: &'a str,
    /// `release publish --urgent`.
    pub urgent: bool,
}

/// Where a release's package lies, as the download route needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRow {
    /// Path relative to the data directory, `/`-separated.
    pub package_path: String,
    /// Length recorded at publication.
    pub length: i64,
}

/// An uncommitted change to a release row (inserted, or its rollout changed): it becomes
/// visible to the server on [`PendingRelease::commit`] and vanishes when dropped uncommitted.
#[derive(Debug)]
pub struct PendingRelease {
    pub(super) tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl PendingRelease {
    /// Makes the release visible.
    pub async fn commit(self) -> Result<(), DbError> {
        self.tx.commit().await?;
        Ok(())
    }
}

type RecordTuple = (String, String, String, i64, String, i64, i64);

fn record(
    (version, platform, published_at, length, sha256, rollout_percent, urgent): RecordTuple,
) -> ReleaseRecord {
    ReleaseRecord {
        version,
        platform,
        published_at,
        length,
        sha256,
        rollout_percent,
        urgent: urgent != 0,
    }
}

impl Db {
    /// Every published release, newest publication first (what the signed targets list).
    pub async fn list_releases(&self) -> Result<Vec<ReleaseRecord>, DbError> {
        let rows = sqlx::query_as::<_, RecordTuple>(
            "SELECT version, platform, published_at, length, sha256, rollout_percent, \
             urgent FROM releases ORDER BY published_at DESC, platform DESC, version DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(record).collect())
    }

    /// One page of releases, newest publication first, starting after `after`; `true` when
    /// more follow.
    pub async fn list_releases_page(
        &self,
        after: &ReleaseKey,
        limit: i64,
    ) -> Result<(Vec<ReleaseRecord>, bool), DbError> {
        let rows = sqlx::query_as::<_, RecordTuple>(
            "SELECT version, platform, published_at, length, sha256, rollout_percent, \
             urgent FROM releases WHERE (published_at, platform, version) < ($1, $2, $3) \
             ORDER BY published_at DESC, platform DESC, version DESC LIMIT $4",
        )
        .bind(after.published_at.as_str())
        .bind(after.platform.as_str())
        .bind(after.version.as_str())
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(split_page(rows.into_iter().map(record).collect(), limit))
    }

    /// Number of release rows: a cheap change detector for the release watcher.
    pub async fn count_releases(&self) -> Result<i64, DbError> {
        let (count,) = sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM releases")
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }

    /// Number of release rows and the sum of their rollouts: a cheap change detector for the
    /// release watcher of a server without replicas (a new release or a rollout change moves it).
    pub async fn releases_fingerprint(&self) -> Result<(i64, i64), DbError> {
        let row = sqlx::query_as::<_, (i64, i64)>(
            "SELECT COUNT(*), CAST(COALESCE(SUM(rollout_percent), 0) AS BIGINT) FROM releases",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }

    /// Inserts a release row inside a transaction that the caller commits once the package
    /// file is in place. [`DbError::Duplicate`] when (version, platform) already exists.
    pub async fn begin_release(&self, release: &NewRelease<'_>) -> Result<PendingRelease, DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO releases (version, platform, published_at, package_path, length, \
             sha256, rollout_percent, urgent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(release.version)
        .bind(release.platform)
        .bind(release.published_at)
        .bind(release.package_path)
        .bind(release.length)
        .bind(release.sha256)
        .bind(release.rollout_percent)
        .bind(i64::from(release.urgent))
        .execute(&mut *tx)
        .await?;
        Ok(PendingRelease { tx })
    }

    /// The package of one release, if it was published.
    pub async fn release_package(
        &self,
        version: &str,
        platform: &str,
    ) -> Result<Option<PackageRow>, DbError> {
        let row = sqlx::query_as::<_, (String, i64)>(
            "SELECT package_path, length FROM releases WHERE version = $1 AND platform = $2",
        )
        .bind(version)
        .bind(platform)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(package_path, length)| PackageRow {
            package_path,
            length,
        }))
    }

    /// Releases published for one platform; a paused rollout is offered to nobody.
    pub async fn releases_for_platform(&self, platform: &str) -> Result<Vec<ReleaseRow>, DbError> {
        let rows = sqlx::query_as::<_, ReleaseTuple>(
            "SELECT version, platform, length, sha256, \
             CASE WHEN paused = 0 THEN rollout_percent ELSE 0 END, max_in_flight, \
             stuck_after_secs, urgent FROM releases WHERE platform = $1",
        )
        .bind(platform)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(release_row).collect())
    }
}
