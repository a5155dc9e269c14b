//! The signed release metadata: a repository of The Update Framework (TUF) kept in
//! `DIR/tuf/`, through awslabs' `tough`.
//!
//! Four ed25519 keys (root, targets, snapshot, timestamp) are created on first use in
//! `DIR/tuf/keys/` (0600) next to a self-signed `root.json` in `DIR/tuf/metadata/`. Every
//! publish (and every refresh before the timestamp runs out) re-signs targets, snapshot and
//! timestamp at one new version, listing every published package with its length, SHA-256 and
//! (in `custom`) its version and platform. The root uses consistent snapshots, so every file but
//! `timestamp.json` is written once under a versioned name and `timestamp.json` is replaced last
//! by a rename: a client reading during a publish sees the old set or the new one, never a mix.
//!
//! This module must never put key material in a log line or an error, never overwrite a key,
//! and never sign without holding [`SigningLock`] (the publisher and the serving process both
//! sign).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use cms_protocol::update::{package_file_name, target_custom};
use serde_json::json;
use tough::editor::RepositoryEditor;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed, Target, Timestamp};
use tough::sign::{Sign, parse_keypair};

/// Folder of the repository inside the server's data directory.
pub const TUF_DIR: &str = "tuf";
/// Folder of the served metadata inside [`TUF_DIR`].
pub const METADATA_DIR: &str = "metadata";
/// Default life of `timestamp.json`: an agent that cannot get a newer one within this time
/// refuses updates (the freeze-attack bound). The serving process re-signs well before.
pub const DEFAULT_TIMESTAMP_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Life of targets and snapshot metadata (re-signed with every timestamp refresh).
const TARGETS_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Life of the root; this reference server does not rotate its root key.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Versions of snapshot/targets kept on disk for clients that read just before a re-sign.
const KEPT_VERSIONS: u64 = 5;
const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];

/// Why the metadata could not be created or signed.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// A file of the repository could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the OS said.
        source: io::Error,
    },
    /// A key could not be generated or read (the message never holds key bytes).
    #[error("signing key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Building, signing or parsing metadata failed.
    #[error("TUF metadata: {0}")]
    Metadata(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TufError + '_ {
    move |source| TufError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn metadata_err(error: impl std::fmt::Display) -> TufError {
    TufError::Metadata(error.to_string())
}

/// One published package as the targets metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    /// Release version.
    pub version: String,
    /// Platform.
    pub platform: String,
    /// Package length in bytes.
    pub length: u64,
    /// Lower-case hex SHA-256 of the package.
    pub sha256: String,
}

/// Held while signing; released on drop (another publisher or the server's refresher waits).
#[derive(Debug)]
pub struct SigningLock {
    _file: File,
}

/// The repository in `DIR/tuf`.
#[derive(Debug, Clone)]
pub struct Repository {
    dir: PathBuf,
}

impl Repository {
    /// The repository of the server data directory `data_dir` (nothing is touched yet).
    pub fn new(data_dir: &Path) -> Self {
        Repository {
            dir: data_dir.join(TUF_DIR),
        }
    }

    /// Where the served metadata files lie.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join(METADATA_DIR)
    }

    fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    fn key_path(&self, role: RoleType) -> PathBuf {
        self.keys_dir().join(format!("{role}.pk8"))
    }

    fn root_path(&self) -> PathBuf {
        self.metadata_dir().join("root.json")
    }

    /// Waits for, then takes, the repository's signing lock (blocking).
    pub fn lock(&self) -> Result<SigningLock, TufError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join("signing.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(SigningLock { _file: file })
    }

    /// Creates the keys and the self-signed root if they do not exist yet.
    pub async fn ensure_root(&self, _lock: &SigningLock) -> Result<(), TufError> {
        if self.root_path().is_file() {
            return Ok(());
        }
        let keys_dir = self.keys_dir();
        fs::create_dir_all(&keys_dir).map_err(io_err(&keys_dir))?;
        restrict_dir(&keys_dir).map_err(io_err(&keys_dir))?;
        for role in ROLES {
            create_key_if_missing(&self.key_path(role))?;
        }
        let root = self.build_root().await?;
        let keys = self.key_sources();
        let holder = KeyHolder::Root(root.clone());
        let signed = SignedRole::new(root, &holder, &keys, &SystemRandom::new())
            .await
            .map_err(metadata_err)?;
        let metadata_dir = self.metadata_dir();
        fs::create_dir_all(&metadata_dir).map_err(io_err(&metadata_dir))?;
        write_atomically(&metadata_dir.join("1.root.json"), signed.buffer())?;
        write_atomically(&self.root_path(), signed.buffer())?;
        tracing::info!(dir = %self.dir.display(), "created TUF keys and root metadata");
        Ok(())
    }

    async fn build_root(&self) -> Result<Root, TufError> {
        let mut root = Root {
            spec_version: "1.0.0".to_owned(),
            consistent_snapshot: true,
            version: NonZeroU64::MIN,
            expires: expiry(ROOT_LIFETIME)?,
            keys: HashMap::new(),
            roles: HashMap::new(),
            _extra: HashMap::new(),
        };
        for role in ROLES {
            let key = read_key(&self.key_path(role))?.tuf_key();
            let key_id = key.key_id().map_err(metadata_err)?;
            root.keys.insert(key_id.clone(), key);
            root.roles.insert(
                role,
                RoleKeys {
                    keyids: vec![key_id],
                    threshold: NonZeroU64::MIN,
                    _extra: HashMap::new(),
                },
            );
        }
        Ok(root)
    }

    fn key_sources(&self) -> Vec<Box<dyn KeySource>> {
        ROLES
            .iter()
            .map(|role| {
                Box::new(LocalKeySource {
                    path: self.key_path(*role),
                }) as Box<dyn KeySource>
            })
            .collect()
    }

    /// Signs a new version of targets, snapshot and timestamp listing exactly `targets`;
    /// returns that version.
    pub async fn sign(
        &self,
        lock: &SigningLock,
        targets: &[TargetEntry],
        timestamp_lifetime: Duration,
    ) -> Result<NonZeroU64, TufError> {
        self.ensure_root(lock).await?;
        let version = self.next_version()?;
        let mut editor = RepositoryEditor::new(self.root_path())
            .await
            .map_err(metadata_err)?;
        for entry in targets {
            let name = package_file_name(&entry.version, &entry.platform);
            editor
                .add_target(name.as_str(), target_of(entry)?)
                .map_err(metadata_err)?;
        }
        let (long, short) = (expiry(TARGETS_LIFETIME)?, expiry(timestamp_lifetime)?);
        editor
            .targets_version(version)
            .map_err(metadata_err)?
            .targets_expires(long)
            .map_err(metadata_err)?
            .snapshot_version(version)
            .snapshot_expires(long)
            .timestamp_version(version)
            .timestamp_expires(short);
        let signed = editor
            .sign(&self.key_sources())
            .await
            .map_err(metadata_err)?;
        self.install(&signed).await?;
        self.prune(version.get());
        tracing::info!(
            version = version.get(),
            targets = targets.len(),
            "signed release metadata"
        );
        Ok(version)
    }

    /// The version of the current `timestamp.json` (all roles share it), if any.
    fn current_version(&self) -> Result<Option<NonZeroU64>, TufError> {
        Ok(self.current_timestamp()?.map(|t| t.signed.version))
    }

    fn next_version(&self) -> Result<NonZeroU64, TufError> {
        Ok(self
            .current_version()?
            .and_then(|v| v.checked_add(1))
            .unwrap_or(NonZeroU64::MIN))
    }

    fn current_timestamp(&self) -> Result<Option<Signed<Timestamp>>, TufError> {
        let path = self.metadata_dir().join("timestamp.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| metadata_err(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// When the current `timestamp.json` stops being trusted; `None` before the first publish.
    pub fn timestamp_expires(&self) -> Result<Option<jiff::Timestamp>, TufError> {
        Ok(self.current_timestamp()?.map(|t| t.signed.expires))
    }

    /// Writes the signed set to a staging folder, then moves the versioned files into place and
    /// `timestamp.json` last.
    async fn install(
        &self,
        signed: &tough::editor::signed::SignedRepository,
    ) -> Result<(), TufError> {
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        signed.write(staging.path()).await.map_err(metadata_err)?;
        let target_dir = self.metadata_dir();
        let mut names: Vec<String> = fs::read_dir(staging.path())
            .map_err(io_err(staging.path()))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        // Versioned files first, the timestamp (which points at them) last.
        names.sort_by_key(|name| name == "timestamp.json");
        for name in names {
            let destination = target_dir.join(&name);
            if name.ends_with(".root.json") && destination.exists() {
                continue;
            }
            let source = staging.path().join(&name);
            File::open(&source)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&source))?;
            fs::rename(&source, &destination).map_err(io_err(&destination))?;
        }
        let timestamp = target_dir.join("timestamp.json");
        super::sync_parent(&timestamp).map_err(io_err(&target_dir))
    }

    /// Removes snapshot/targets files more than [`KEPT_VERSIONS`] behind `current`.
    fn prune(&self, current: u64) {
        let Ok(entries) = fs::read_dir(self.metadata_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = ["snapshot", "targets"].iter().any(|role| {
                name.strip_suffix(&format!(".{role}.json"))
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v + KEPT_VERSIONS <= current)
            });
            if old && let Err(error) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, %error, "cannot prune old metadata");
            }
        }
    }
}

fn target_of(entry: &TargetEntry) -> Result<Target, TufError> {
    let value = json!({
        "length": entry.length,
        "hashes": { "sha256": entry.sha256 },
        "custom": {
            target_custom::VERSION: entry.version,
            target_custom::PLATFORM: entry.platform,
        },
    });
    serde_json::from_value(value).map_err(metadata_err)
}

fn expiry(lifetime: Duration) -> Result<jiff::Timestamp, TufError> {
    let span = jiff::SignedDuration::try_from(lifetime).map_err(metadata_err)?;
    jiff::Timestamp::now()
        .checked_add(span)
        .map_err(metadata_err)
}

fn read_key(path: &Path) -> Result<impl Sign, TufError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    parse_keypair(&bytes).map_err(|_| TufError::Key {
        path: path.display().to_string(),
        reason: "not an ed25519 PKCS#8 key".to_owned(),
    })
}

/// Creates a new ed25519 key at `path` (0600, never overwriting); keeps an existing one.
fn create_key_if_missing(path: &Path) -> Result<(), TufError> {
    if path.exists() {
        return Ok(());
    }
    let document =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| TufError::Key {
            path: path.display().to_string(),
            reason: "the system random generator failed".to_owned(),
        })?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    owner_only(&mut options);
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(document.as_ref())
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TufError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(io_err(path))?;
    super::archive::make_world_readable(temp.as_file()).map_err(io_err(path))?;
    temp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

#[cfg(unix)]
fn owner_only(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn owner_only(_options: &mut OpenOptions) {}

#[cfg(unix)]
fn restrict_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tough::{FilesystemTransport, RepositoryLoader, TargetName};

    fn entry(version: &str) -> TargetEntry {
        TargetEntry {
            version: version.to_owned(),
            platform: "linux-x86_64".to_owned(),
            length: 42,
            sha256: "ab".repeat(32),
        }
    }

    async fn load(repo: &Repository, datastore: &Path) -> tough::Repository {
        let root = fs::read(repo.metadata_dir().join("1.root.json")).unwrap();
        let url = url::Url::from_directory_path(repo.metadata_dir()).unwrap();
        RepositoryLoader::new(&root, url.clone(), url)
            .transport(FilesystemTransport)
            .datastore(datastore)
            .load()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn signed_metadata_verifies_and_versions_advance() {
        let dir = tempfile::tempdir().unwrap();
        let datastore = tempfile::tempdir().unwrap();
        let repo = Repository::new(dir.path());
        let lock = repo.lock().unwrap();
        let first = [entry("1.0.0")];
        let v1 = repo.sign(&lock, &first, DEFAULT_TIMESTAMP_LIFETIME).await;
        assert_eq!(v1.unwrap().get(), 1);
        let loaded = load(&repo, datastore.path()).await;
        let name = TargetName::new("cms_agent-1.0.0-linux-x86_64.zip").unwrap();
        let target = loaded.targets().signed.targets.get(&name).unwrap();
        assert_eq!(target.length, 42);
        assert_eq!(target.custom["version"], "1.0.0");

        for _ in 0..KEPT_VERSIONS + 2 {
            repo.sign(
                &lock,
                &[entry("1.0.0"), entry("2.0.0")],
                DEFAULT_TIMESTAMP_LIFETIME,
            )
            .await
            .unwrap();
        }
        let loaded = load(&repo, datastore.path()).await;
        assert_eq!(loaded.timestamp().signed.version.get(), KEPT_VERSIONS + 3);
        assert_eq!(loaded.targets().signed.targets.len(), 2);
        assert!(
            !repo.metadata_dir().join("1.targets.json").exists(),
            "pruned"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = fs::metadata(repo.key_path(RoleType::Timestamp)).unwrap();
            assert_eq!(key.permissions().mode() & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn keys_and_root_are_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(dir.path());
        let lock = repo.lock().unwrap();
        repo.ensure_root(&lock).await.unwrap();
        let key = fs::read(repo.key_path(RoleType::Root)).unwrap();
        let root = fs::read(repo.root_path()).unwrap();
        repo.ensure_root(&lock).await.unwrap();
        assert_eq!(fs::read(repo.key_path(RoleType::Root)).unwrap(), key);
        assert_eq!(fs::read(repo.root_path()).unwrap(), root);
        assert_eq!(repo.timestamp_expires().unwrap(), None);
    }
}
