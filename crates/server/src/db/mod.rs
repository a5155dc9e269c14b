//! The database: connection pools, schema migrations and every query the server runs.
//!
//! One code path through `sqlx::AnyPool` serves SQLite (the default, `DIR/cms-server.db`) and
//! PostgreSQL (`--database-url postgres://...`). Queries use portable SQL with `$N` placeholders,
//! which both backends accept. Listings are keyset-paged (each page starts after the last key
//! of the previous one), so a page costs the same at any depth and never more rows than asked.
//!
//! On SQLite the agents' pool has a second, small pool beside it for the writes that only say
//! an agent was there ([`Db::relaxed`]: its last contact and its heartbeat's status): they
//! commit without waiting for the disk (`synchronous=NORMAL`), so the fleet's heartbeats do not
//! queue for a disk flush each. Every other write (registrations, credentials, offers, progress,
//! error reports, the audit log) still waits for the disk, and its flush carries the relaxed
//! writes before it; a power loss can only forget the contacts and statuses since the last such
//! flush, never corrupt the file (WAL). PostgreSQL keeps one pool, every commit durable.
//! This module must never hold HTTP types or business rules (who may do what, which release
//! fits): it stores and loads rows, and must never send a write that an agent or operator
//! relies on through the relaxed pool.

/// SQL condition: the offer `o` (a row of `update_offers`) is deferred now, i.e. the agent's
/// latest verified progress for that release is `deferred` (it put the offer off, e.g. on a
/// metered connection, and takes it at a later offer). Such an offer is neither in flight nor
/// stuck. A literal, so queries `concat!` it.
macro_rules! offer_deferred_now {
    () => {
        "EXISTS (SELECT 1 FROM update_events d WHERE d.agent_id = o.agent_id \
         AND d.version = o.version AND d.platform = o.platform AND d.verified = 1 \
         AND d.step = 'deferred' AND NOT EXISTS (SELECT 1 FROM update_events l \
             WHERE l.agent_id = o.agent_id AND l.version = o.version \
             AND l.platform = o.platform AND l.step <> 'deferred' \
             AND l.received_at >= d.received_at))"
    };
}

mod agents;
mod bounded;
mod cluster;
mod errors;
mod fleet;
mod groups;
mod guard;
mod halts;
mod identity;
mod offers;
mod operators;
mod pins;
mod plans;
mod releases;
mod rollouts;
mod sessions;
mod windows;

pub use agents::{AgentCredential, AgentKey, AgentRow, Heartbeat, NewAgent};
pub use errors::{ErrorKey, NewErrorReport, RetentionSweep};
pub use fleet::{
    AgentSearch, AgentSort, ErrorGroup, FailureReason, FleetAgent, FleetCounts, LatestUpdate,
    Tally, UpdateFilter, VersionSeen,
};
pub use groups::GroupRules;
pub use guard::{DatabaseShed, ShedChunk};
pub use halts::HaltRecord;
pub use identity::{EnrollmentTokenRow, NewEnrollmentToken, Revocation};
pub use offers::OfferVia;
pub use operators::{AuditKey, NewAuditEntry, OperatorTokenRow};
pub use pins::StoredPin;
pub use plans::PlanRow;
pub use releases::{NewRelease, PackageRow, PendingRelease, ReleaseKey, ReleaseRecord, ReleaseRow};
pub use rollouts::{
    HaltRule, NewUpdateEvent, RolloutChange, RolloutRow, StepCounts, UpdateEventRow,
};
pub use windows::StoredWindows;

use std::path::Path;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::files;

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE: &str = "cms-server.db";

/// Schema migrations embedded at build time from `crates/server/migrations`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a query waits for a pooled connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of the agents' relaxed pool on SQLite ([`Db::relaxed`]): one, so its writes
/// queue in the pool, in order, instead of meeting each other at SQLite's write lock (where
/// the loser sleeps in growing steps of up to 100 ms and retries).
const RELAXED_CONNECTIONS: u32 = 1;

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

impl Backend {
    /// The backend of `url`.
    pub fn of(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// Which part of the server a pool serves; each part has its own connections, so operator
/// listings can never take the connections heartbeats need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolUse {
    /// Agent traffic: registration, heartbeats, update checks, error reports.
    Agents,
    /// Operator API, audit log and background jobs (retention, release watcher).
    Operators,
    /// One command-line run (`release publish`, `token ...`, `tuf ...`): on PostgreSQL one
    /// connection holds the signing lock while the publication uses others.
    Command,
}

impl PoolUse {
    /// Connections of this pool on `backend`.
    pub fn max_connections(self, backend: Backend) -> u32 {
        match (self, backend) {
            (PoolUse::Agents, Backend::Sqlite) => 4,
            (PoolUse::Agents, Backend::Postgres) => 16,
            (PoolUse::Operators, Backend::Sqlite) => 3,
            (PoolUse::Operators, Backend::Postgres) => 6,
            (PoolUse::Command, _) => 4,
        }
    }
}

/// The server's database handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// Where the writes that only record an agent's contact go ([`Db::relaxed`]).
    relaxed: AnyPool,
    backend: Backend,
}

/// The database URL of a server: `database_url` when given, else SQLite in `data_dir`.
pub fn database_url(data_dir: &Path, database_url: Option<&str>) -> Result<String, DbError> {
    match database_url {
        Some(url) => Ok(url.to_owned()),
        None => sqlite_url_for_dir(data_dir),
    }
}

/// Builds the `sqlite://` URL for `DIR/cms-server.db`, creating `DIR` (0700) and the database
/// file (0600) when missing and tightening them when others can read them.
pub fn sqlite_url_for_dir(data_dir: &Path) -> Result<String, DbError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| DbError::DataDir { path, source }
    };
    if files::private_dir(data_dir).map_err(io_err(data_dir))? {
        tracing::warn!(dir = %data_dir.display(), "data directory was readable by others; now owner-only (0700)");
    }
    let dir = std::fs::canonicalize(data_dir).map_err(io_err(data_dir))?;
    let file = dir.join(SQLITE_FILE);
    let mut tightened = files::private_file(&file).map_err(io_err(&file))?;
    for suffix in ["-wal", "-shm"] {
        let side = dir.join(format!("{SQLITE_FILE}{suffix}"));
        tightened |= files::restrict_if_present(&side).map_err(io_err(&side))?;
    }
    if tightened {
        tracing::warn!(file = %file.display(), "database was readable by others; now owner-only (0600)");
    }
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

impl Db {
    /// Connects to `url` (SQLite or PostgreSQL) with a pool for `pool_use` and applies pending
    /// migrations.
    pub async fn connect(url: &str, pool_use: PoolUse) -> Result<Self, DbError> {
        let db = Self::attach(url, pool_use).await?;
        if db.backend == Backend::Sqlite {
            // Persistent in the database file: readers do not block the writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&db.pool)
                .await?;
        }
        MIGRATOR.run(&db.pool).await?;
        Ok(db)
    }

    /// Another pool on a database that [`Db::connect`] already migrated.
    pub async fn attach(url: &str, pool_use: PoolUse) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url);
        let pool = AnyPoolOptions::new()
            .max_connections(pool_use.max_connections(backend))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(DbError::Connect)?;
        let relaxed = match (pool_use, backend) {
            (PoolUse::Agents, Backend::Sqlite) => relaxed_sqlite_pool(url).await?,
            _ => pool.clone(),
        };
        Ok(Db {
            pool,
            relaxed,
            backend,
        })
    }

    /// The pool for writes that only record that an agent was there (its last contact, its
    /// heartbeat's status): on SQLite they commit without a disk flush of their own (see the
    /// module docs); elsewhere it is the pool itself.
    pub(crate) fn relaxed(&self) -> &AnyPool {
        &self.relaxed
    }

    /// Opens the database of a server for one command-line run.
    pub async fn open_for_command(
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Self, DbError> {
        let url = self::database_url(data_dir, database_url)?;
        Self::connect(&url, PoolUse::Command).await
    }

    /// Which backend this handle talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every pooled connection (at shutdown).
    pub async fn close(&self) {
        self.relaxed.close().await;
        self.pool.close().await;
    }

    /// `SELECT 1`: whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// The agents' relaxed pool on SQLite: [`RELAXED_CONNECTIONS`] connections to the same file
/// whose commits do not wait for the disk (`synchronous=NORMAL`, safe from corruption in WAL).
async fn relaxed_sqlite_pool(url: &str) -> Result<AnyPool, DbError> {
    AnyPoolOptions::new()
        .max_connections(RELAXED_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::query("PRAGMA synchronous=NORMAL")
                    .execute(connection)
                    .await
                    .map(drop)
            })
        })
        .connect(url)
        .await
        .map_err(DbError::Connect)
}

/// Rows of one page plus whether more follow: queries fetch one row more than asked.
pub(crate) fn split_page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// `PRAGMA synchronous` of a connection of `pool` (1: NORMAL, 2: FULL).
    async fn synchronous(pool: &AnyPool) -> i64 {
        let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .unwrap();
        level
    }

    #[tokio::test]
    async fn on_sqlite_only_the_agents_relaxed_pool_commits_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url_for_dir(dir.path()).unwrap();
        let agents = Db::connect(&url, PoolUse::Agents).await.unwrap();
        assert_eq!(synchronous(agents.relaxed()).await, 1, "relaxed: NORMAL");
        assert_eq!(
            synchronous(&agents.pool).await,
            2,
            "every other write: FULL"
        );
        let operators = Db::attach(&url, PoolUse::Operators).await.unwrap();
        assert_eq!(
            synchronous(operators.relaxed()).await,
            2,
            "no relaxed pool but the agents'"
        );
        agents.close().await;
        operators.close().await;
    }

    #[test]
    fn sqlite_url_escapes_special_characters() {
        assert_eq!(escape_path("/a b/c?d#e%f"), "/a%20b/c%3Fd%23e%25f");
    }

    #[test]
    fn backend_detection() {
        assert_eq!(Backend::of("postgres://u@h/d"), Backend::Postgres);
        assert_eq!(Backend::of("postgresql://u@h/d"), Backend::Postgres);
        assert_eq!(Backend::of("sqlite:///tmp/x.db"), Backend::Sqlite);
    }

    #[test]
    fn pages_are_cut_at_the_limit() {
        assert_eq!(split_page(vec![1, 2, 3], 2), (vec![1, 2], true));
        assert_eq!(split_page(vec![1, 2], 2), (vec![1, 2], false));
    }

    #[cfg(unix)]
    #[test]
    fn database_and_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        sqlite_url_for_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(SQLITE_FILE)), 0o600);
    }

    #[tokio::test]
    async fn sqlite_round_trip_in_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_for_command(dir.path(), None).await.unwrap();
        db.ping().await.unwrap();
        let agent = NewAgent {
            agent_id: "a1",
            token_hash: "h1",
            hostname: "host",
            platform: "linux-x86_64",
            version: "1.0.0",
            state: "STARTING",
            enrolled_by: Some("default"),
        };
        db.insert_agent(&agent, &crate::clock::now()).await.unwrap();
        let found = db.agent_by_token_hash("h1").await.unwrap().unwrap();
        assert_eq!((found.agent_id.as_str(), found.revoked), ("a1", false));
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
            urgent: false,
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
        let expected = ("a1".to_owned(), "1.0.0".to_owned(), "default".to_owned());
        assert_eq!(agents, vec![expected]);
        db.close().await;
    }
}
