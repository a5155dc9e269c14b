//! The database: connection pool, schema migrations and every query the server runs.
//!
//! One code path through `sqlx::AnyPool` serves SQLite (the default, `DIR/cms-server.db`) and
//! PostgreSQL (`--database-url postgres://...`). Queries use portable SQL with `$N` placeholders,
//! which both backends accept. This module must never hold HTTP types or business rules (who may
//! do what, which release fits): it stores and loads rows.

mod cluster;

use std::path::Path;
use std::time::Duration;

use cms_protocol::StoredError;
use serde::Serialize;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE: &str = "cms-server.db";

/// Schema migrations embedded at build time from `crates/server/migrations`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A failure of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The data directory could not be created or resolved.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Connecting to the database failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row with the same unique key already exists.
    #[error("already stored: {0}")]
    Duplicate(#[source] sqlx::Error),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => DbError::Duplicate(error),
            _ => DbError::Query(error),
        }
    }
}

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A new agent row, written at registration.
#[derive(Debug, Clone)]
pub struct NewAgent<'a> {
    /// Generated id.
    pub agent_id: &'a str,
    /// SHA-256 hex of the bearer token.
    pub token_hash: &'a str,
    /// Reported machine name.
    pub hostname: &'a str,
    /// Reported platform.
    pub platform: &'a str,
    /// Reported agent version.
    pub version: &'a str,
    /// Initial state name.
    pub state: &'a str,
}

/// An agent row as the operator listing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// Stable id.
    pub agent_id: String,
    /// Machine name.
    pub hostname: String,
    /// Platform.
    pub platform: String,
    /// Latest reported version.
    pub version: String,
    /// Latest reported state.
    pub state: String,
    /// Latest contact (RFC 3339).
    pub last_seen: String,
}

/// One error report to store.
#[derive(Debug, Clone)]
pub struct NewErrorReport<'a> {
    /// Id chosen by the agent.
    pub report: &'a cms_protocol::ErrorReport,
    /// `details` serialized as JSON text, `None` when absent.
    pub details_json: Option<String>,
}

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
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl PendingRelease {
    /// Makes the release visible.
    pub async fn commit(self) -> Result<(), DbError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// The server's database handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// Builds the `sqlite://` URL for `DIR/cms-server.db`, creating `DIR` when missing.
pub fn sqlite_url_for_dir(data_dir: &Path) -> Result<String, DbError> {
    let io_err = |source| DbError::DataDir {
        path: data_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io_err)?;
    let dir = std::fs::canonicalize(data_dir).map_err(io_err)?;
    let file = dir.join(SQLITE_FILE);
    Ok(format!(
        "sqlite://{}?mode=rwc",
        escape_path(&file.to_string_lossy())
    ))
}

/// Percent-encodes the characters that would end or alter the path part of a SQLite URL.
fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            ' ' => out.push_str("%20"),
            other => out.push(other),
        }
    }
    out
}

fn backend_of(url: &str) -> Backend {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

impl Db {
    /// Connects to `url` (SQLite or PostgreSQL) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url);
        let max_connections = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(DbError::Connect)?;
        let db = Db { pool, backend };
        if backend == Backend::Sqlite {
            // Persistent in the database file: readers do not block the writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&db.pool)
                .await?;
        }
        MIGRATOR.run(&db.pool).await?;
        Ok(db)
    }

    /// Which backend this handle talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every pooled connection (at shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// `SELECT 1`: whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Inserts a newly registered agent.
    pub async fn insert_agent(&self, agent: &NewAgent<'_>, now: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO agents (agent_id, token_hash, hostname, platform, version, state, \
             registered_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(agent.agent_id)
        .bind(agent.token_hash)
        .bind(agent.hostname)
        .bind(agent.platform)
        .bind(agent.version)
        .bind(agent.state)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Looks up an agent by its token hash: `(agent_id, token_hash)`.
    pub async fn agent_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        let row = sqlx::query_as::<_, (String, String)>(
            "SELECT agent_id, token_hash FROM agents WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Whether an agent with this id is registered.
    pub async fn agent_exists(&self, agent_id: &str) -> Result<bool, DbError> {
        let row = sqlx::query_as::<_, (String,)>("SELECT agent_id FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The platform an agent registered with.
    pub async fn agent_platform(&self, agent_id: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query_as::<_, (String,)>("SELECT platform FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(platform,)| platform))
    }

    /// Records a heartbeat: version, state and last contact.
    pub async fn update_status(
        &self,
        agent_id: &str,
        version: &str,
        state: &str,
        now: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE agents SET version = $1, state = $2, last_seen = $3 WHERE agent_id = $4",
        )
        .bind(version)
        .bind(state)
        .bind(now)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a contact without new status.
    pub async fn touch(&self, agent_id: &str, now: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE agents SET last_seen = $1 WHERE agent_id = $2")
            .bind(now)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every agent, ordered by hostname then id.
    pub async fn list_agents(&self) -> Result<Vec<AgentRow>, DbError> {
        let rows = sqlx::query_as::<_, (String, String, String, String, String, String)>(
            "SELECT agent_id, hostname, platform, version, state, last_seen FROM agents \
             ORDER BY hostname, agent_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(agent_id, hostname, platform, version, state, last_seen)| AgentRow {
                    agent_id,
                    hostname,
                    platform,
                    version,
                    state,
                    last_seen,
                },
            )
            .collect())
    }

    /// Stores a batch of reports in one transaction; returns how many were new.
    pub async fn insert_error_reports(
        &self,
        agent_id: &str,
        reports: &[NewErrorReport<'_>],
        now: &str,
    ) -> Result<u32, DbError> {
        let mut tx = self.pool.begin().await?;
        let mut stored = 0u32;
        for new in reports {
            let r = new.report;
            let result = sqlx::query(
                "INSERT INTO error_reports (report_id, agent_id, kind, message, agent_version, \
                 details, created_at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (report_id) DO NOTHING",
            )
            .bind(r.report_id.as_str())
            .bind(agent_id)
            .bind(r.kind.as_str())
            .bind(r.message.as_str())
            .bind(r.agent_version.as_str())
            .bind(new.details_json.clone())
            .bind(r.created_at.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if result.rows_affected() > 0 {
                stored += 1;
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Stored error reports, newest first, optionally for one agent, at most `limit`.
    pub async fn list_errors(
        &self,
        agent_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredError>, DbError> {
        type Row = (String, String, String, String, String);
        let rows = match agent_id {
            Some(agent_id) => {
                sqlx::query_as::<_, Row>(
                    "SELECT report_id, agent_id, kind, message, created_at FROM error_reports \
                     WHERE agent_id = $1 \
                     ORDER BY received_at DESC, created_at DESC, report_id LIMIT $2",
                )
                .bind(agent_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as::<_, Row>(
                    "SELECT report_id, agent_id, kind, message, created_at FROM error_reports \
                     ORDER BY received_at DESC, created_at DESC, report_id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(
                |(report_id, agent_id, kind, message, created_at)| StoredError {
                    report_id,
                    agent_id,
                    kind,
                    message,
                    created_at,
                },
            )
            .collect())
    }

    /// Every published release, newest publication first.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseRecord>, DbError> {
        type Row = (String, String, String, i64, String, i64);
        let rows = sqlx::query_as::<_, Row>(
            "SELECT version, platform, published_at, length, sha256, rollout_percent \
             FROM releases ORDER BY published_at DESC, platform, version",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(version, platform, published_at, length, sha256, rollout_percent)| {
                    ReleaseRecord {
                        version,
                        platform,
                        published_at,
                        length,
                        sha256,
                        rollout_percent,
                    }
                },
            )
            .collect())
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
             sha256, rollout_percent) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(release.version)
        .bind(release.platform)
        .bind(release.published_at)
        .bind(release.package_path)
        .bind(release.length)
        .bind(release.sha256)
        .bind(release.rollout_percent)
        .execute(&mut *tx)
        .await?;
        Ok(PendingRelease { tx })
    }

    /// Changes a release's rollout inside a transaction the caller commits; `None` when no
    /// such release is published.
    pub async fn begin_rollout(
        &self,
        version: &str,
        platform: &str,
        rollout_percent: i64,
    ) -> Result<Option<PendingRelease>, DbError> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE releases SET rollout_percent = $1 WHERE version = $2 AND platform = $3",
        )
        .bind(rollout_percent)
        .bind(version)
        .bind(platform)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok((changed > 0).then_some(PendingRelease { tx }))
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

    /// `(agent_id, version)` of every agent registered for `platform`.
    pub async fn agents_on_platform(
        &self,
        platform: &str,
    ) -> Result<Vec<(String, String)>, DbError> {
        let rows = sqlx::query_as::<_, (String, String)>(
            "SELECT agent_id, version FROM agents WHERE platform = $1",
        )
        .bind(platform)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Releases published for one platform.
    pub async fn releases_for_platform(&self, platform: &str) -> Result<Vec<ReleaseRow>, DbError> {
        let rows = sqlx::query_as::<_, (String, String, i64, String, i64)>(
            "SELECT version, platform, length, sha256, rollout_percent FROM releases \
             WHERE platform = $1",
        )
        .bind(platform)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(version, platform, length, sha256, rollout_percent)| ReleaseRow {
                    version,
                    platform,
                    length,
                    sha256,
                    rollout_percent,
                },
            )
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_url_escapes_special_characters() {
        assert_eq!(escape_path("/a b/c?d#e%f"), "/a%20b/c%3Fd%23e%25f");
    }

    #[test]
    fn backend_detection() {
        assert_eq!(backend_of("postgres://u@h/d"), Backend::Postgres);
        assert_eq!(backend_of("postgresql://u@h/d"), Backend::Postgres);
        assert_eq!(backend_of("sqlite:///tmp/x.db"), Backend::Sqlite);
    }

    #[tokio::test]
    async fn sqlite_round_trip_in_a_temp_dir() {
        let dir = std::env::temp_dir().join(format!("cms-server-db-test-{}", uuid::Uuid::new_v4()));
        let url = sqlite_url_for_dir(&dir).unwrap();
        let db = Db::connect(&url).await.unwrap();
        db.ping().await.unwrap();
        let agent = NewAgent {
            agent_id: "a1",
            token_hash: "h1",
            hostname: "host",
            platform: "linux-x86_64",
            version: "1.0.0",
            state: "STARTING",
        };
        db.insert_agent(&agent, &crate::clock::now()).await.unwrap();
        let found = db.agent_by_token_hash("h1").await.unwrap();
        assert_eq!(found, Some(("a1".into(), "h1".into())));
        assert!(db.agent_exists("a1").await.unwrap());
        assert!(
            db.releases_for_platform("linux-x86_64")
                .await
                .unwrap()
                .is_empty()
        );
        let release = NewRelease {
            version: "1.1.0",
            platform: "linux-x86_64",
            package_path: "packages/p.zip",
            length: 10,
            sha256: "ab",
            rollout_percent: 100,
            published_at: &crate::clock::now(),
        };
        db.begin_release(&release)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        assert_eq!(db.count_releases().await.unwrap(), 1);
        let again = db.begin_release(&release).await.unwrap_err();
        assert!(matches!(again, DbError::Duplicate(_)), "{again:?}");
        let dropped = NewRelease {
            version: "1.2.0",
            ..release.clone()
        };
        drop(db.begin_release(&dropped).await.unwrap());
        assert_eq!(
            db.count_releases().await.unwrap(),
            1,
            "uncommitted row vanishes"
        );
        let package = db.release_package("1.1.0", "linux-x86_64").await.unwrap();
        assert_eq!(package.unwrap().package_path, "packages/p.zip");
        assert_eq!(
            db.release_package("1.2.0", "linux-x86_64").await.unwrap(),
            None
        );
        let agents = db.agents_on_platform("linux-x86_64").await.unwrap();
        assert_eq!(agents, vec![("a1".to_owned(), "1.0.0".to_owned())]);
        db.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
