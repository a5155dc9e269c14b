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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cms_protocol::delta::{CUSTOM_DELTA_FROM, delta_target_name};
use cms_protocol::update::{package_file_name, target_custom};
use serde_json::json;
use tough::editor::RepositoryEditor;
use tough::schema::{RoleType, Root, Signed, Target, Timestamp};

use super::tuf_keys::{
    build_root, create_key_if_missing, key_file, key_sources, root_lists_key, sign_root,
};
use crate::files;

/// Folder of the repository inside the server's data directory.
pub const TUF_DIR: &str = "tuf";
/// Folder of the served metadata inside [`TUF_DIR`].
pub const METADATA_DIR: &str = "metadata";
/// Default life of `timestamp.json`: an agent that cannot get a newer one within this time
/// refuses updates (the freeze-attack bound). The serving process re-signs well before.
pub const DEFAULT_TIMESTAMP_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Life of targets and snapshot metadata (re-signed with every timestamp refresh).
const TARGETS_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Life of a root; `cms-server tuf rotate-root` signs a new one before it ends.
pub(crate) const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Versions of snapshot/targets kept on disk for clients that read just before a re-sign.
const KEPT_VERSIONS: u64 = 5;
/// The roles whose keys the serving process holds (the root key may be offline).
pub(crate) const ONLINE_ROLES: [RoleType; 3] =
    [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp];
/// Folder inside `keys/` of online keys being rotated in (see [`Repository::lock`]).
const NEXT_KEYS_DIR: &str = "next";

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
    /// The request cannot be carried out as asked (the text says why and what to do).
    #[error("{0}")]
    Refused(String),
}

impl TufError {
    /// Whether the request itself was refused (what is asked cannot be done as asked).
    pub fn is_refusal(&self) -> bool {
        matches!(self, TufError::Refused(_) | TufError::Key { .. })
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TufError + '_ {
    move |source| TufError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn metadata_err(error: impl std::fmt::Display) -> TufError {
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
    /// `Some(FROM)`: this target is the delta from release FROM to `version` (see
    /// [`super::delta`]), not the package.
    pub delta_from: Option<String>,
}

impl TargetEntry {
    /// The target's name in the signed metadata.
    pub fn name(&self) -> String {
        match &self.delta_from {
            None => package_file_name(&self.version, &self.platform),
            Some(from) => delta_target_name(from, &self.version, &self.platform),
        }
    }
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

    pub(crate) fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    pub(crate) fn next_keys_dir(&self) -> PathBuf {
        self.keys_dir().join(NEXT_KEYS_DIR)
    }

    /// The online key of `role` (the root key, when it is online).
    pub(crate) fn key_path(&self, role: RoleType) -> PathBuf {
        key_file(&self.keys_dir(), role)
    }

    pub(crate) fn root_path(&self) -> PathBuf {
        self.metadata_dir().join("root.json")
    }

    /// Whether a root exists (the repository was created).
    pub fn has_root(&self) -> bool {
        self.root_path().is_file()
    }

    /// Waits for, then takes, the repository's signing lock (blocking); then finishes a key
    /// rotation that a crash interrupted.
    pub fn lock(&self) -> Result<SigningLock, TufError> {
        files::private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join("signing.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        let lock = SigningLock { _file: file };
        self.settle_key_rotation(&lock)?;
        Ok(lock)
    }

    /// Online keys staged in `keys/next/` become the keys when the installed root lists them
    /// (the rotation got that far), and are discarded otherwise.
    pub(crate) fn settle_key_rotation(&self, _lock: &SigningLock) -> Result<(), TufError> {
        let next = self.next_keys_dir();
        if !next.is_dir() {
            return Ok(());
        }
        let root = self.has_root().then(|| self.current_root()).transpose()?;
        for role in ONLINE_ROLES {
            let staged = key_file(&next, role);
            if !staged.exists() {
                continue;
            }
            let listed = match &root {
                Some(root) => root_lists_key(root, role, &staged)?,
                None => false,
            };
            if listed {
                fs::rename(&staged, self.key_path(role)).map_err(io_err(&staged))?;
                tracing::info!(%role, "rotated-in online key now in use");
            } else {
                fs::remove_file(&staged).map_err(io_err(&staged))?;
            }
        }
        fs::remove_dir(&next).map_err(io_err(&next))?;
        super::sync_parent(&self.key_path(RoleType::Targets)).map_err(io_err(&self.keys_dir()))
    }

    /// Creates the keys (all online) and the self-signed root if there is no root yet.
    pub async fn ensure_root(&self, _lock: &SigningLock) -> Result<(), TufError> {
        if self.has_root() {
            return Ok(());
        }
        let keys_dir = self.keys_dir();
        files::private_dir(&keys_dir).map_err(io_err(&keys_dir))?;
        for role in ONLINE_ROLES.into_iter().chain([RoleType::Root]) {
            create_key_if_missing(&self.key_path(role))?;
        }
        let root_key = self.key_path(RoleType::Root);
        let root = build_root(&root_key, &keys_dir, NonZeroU64::MIN)?;
        let signed = sign_root(&root, &[&root], &[&root_key]).await?;
        self.install_root(&signed)?;
        tracing::info!(dir = %self.dir.display(), "created TUF keys and root metadata");
        Ok(())
    }

    /// Writes a signed root as `N.root.json` and `root.json` (the copy first clients pin).
    pub(crate) fn install_root(&self, signed: &Signed<Root>) -> Result<(), TufError> {
        let bytes = serde_json::to_vec_pretty(signed).map_err(metadata_err)?;
        let metadata_dir = self.metadata_dir();
        fs::create_dir_all(&metadata_dir).map_err(io_err(&metadata_dir))?;
        let versioned = metadata_dir.join(format!("{}.root.json", signed.signed.version));
        write_atomically(&versioned, &bytes)?;
        write_atomically(&self.root_path(), &bytes)
    }

    /// The installed root (`root.json`).
    pub(crate) fn current_root(&self) -> Result<Signed<Root>, TufError> {
        let path = self.root_path();
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| metadata_err(format!("{}: {e}", path.display())))
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
        self.sign_with(lock, &self.keys_dir(), targets, timestamp_lifetime)
            .await
    }

    /// Signs targets, snapshot and timestamp with the online keys in `keys_dir` under the
    /// installed root, and installs them; returns their version.
    pub(crate) async fn sign_with(
        &self,
        _lock: &SigningLock,
        keys_dir: &Path,
        targets: &[TargetEntry],
        timestamp_lifetime: Duration,
    ) -> Result<NonZeroU64, TufError> {
        let version = self.next_version()?;
        let mut editor = RepositoryEditor::new(self.root_path())
            .await
            .map_err(metadata_err)?;
        for entry in targets {
            let name = entry.name();
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
        let keys = key_sources(keys_dir, &ONLINE_ROLES);
        let signed = editor.sign(&keys).await.map_err(metadata_err)?;
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
    let mut value = json!({
        "length": entry.length,
        "hashes": { "sha256": entry.sha256 },
        "custom": {
            target_custom::VERSION: entry.version,
            target_custom::PLATFORM: entry.platform,
        },
    });
    if let Some(from) = &entry.delta_from {
        value["custom"][CUSTOM_DELTA_FROM] = json!(from);
    }
    serde_json::from_value(value).map_err(metadata_err)
}

pub(crate) fn expiry(lifetime: Duration) -> Result<jiff::Timestamp, TufError> {
    let span = jiff::SignedDuration::try_from(lifetime).map_err(metadata_err)?;
    jiff::Timestamp::now()
        .checked_add(span)
        .map_err(metadata_err)
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TufError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(io_err(path))?;
    super::archive::make_world_readable(temp.as_file()).map_err(io_err(path))?;
    temp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

/// A made-up target of the Linux platform at `version`, for tests.
#[cfg(test)]
pub(crate) fn test_entry(version: &str) -> TargetEntry {
    TargetEntry {
        version: version.to_owned(),
        platform: "linux-x86_64".to_owned(),
        length: 42,
        sha256: "ab".repeat(32),
        delta_from: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tough::{FilesystemTransport, RepositoryLoader, TargetName};

    fn entry(version: &str) -> TargetEntry {
        test_entry(version)
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
