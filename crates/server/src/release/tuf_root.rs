//! The TUF root kept offline: create it, take an online one offline, rotate it (and the
//! online keys), and rebuild a lost data directory from it (`cms-server tuf ...`).
//!
//! A root key directory ([`RootKeyDir`], meant for removable or otherwise offline storage)
//! holds `root.pk8` and a copy of every root version it signed (`N.root.json`, public). Root
//! version N+1 is always signed by the key of root N and by its own root key, so agents that
//! pinned any earlier root follow the chain (`N+1.root.json`, served with the metadata) to the
//! newest one. Rotating the online keys (targets, snapshot, timestamp) stages the new keys in
//! `DIR/tuf/keys/next/`; the repository lock finishes or discards a staged rotation that a
//! crash interrupted. Recovery after losing `DIR` imports the chain from the root key
//! directory and rotates to new online keys: agents accept the new keys through the chain and,
//! since the timestamp and snapshot keys changed, start their rollback checks afresh. This
//! module must never overwrite a root key, never write a private key outside a key folder, and
//! never install a root that the previous root did not sign.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use tough::schema::{RoleType, Root, Signed};

use super::tuf::{
    self, ONLINE_ROLES, Repository, SigningLock, TargetEntry, TufError, io_err, metadata_err,
};
use super::tuf_keys::{self, key_file, root_lists_key};
use crate::files;

/// Where an offline root key lives, with copies of the roots it signed.
#[derive(Debug, Clone)]
pub struct RootKeyDir {
    dir: PathBuf,
}

/// What `rotate` changes besides the root's version and expiry.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    /// A new root key in this directory (created if it holds none) replaces the current one.
    pub new_root_key: Option<RootKeyDir>,
    /// New targets, snapshot and timestamp keys replace the online ones.
    pub online_keys: bool,
}

impl RootKeyDir {
    /// The root key directory `dir` (nothing is touched yet).
    pub fn new(dir: &Path) -> Self {
        RootKeyDir {
            dir: dir.to_path_buf(),
        }
    }

    fn key_path(&self) -> PathBuf {
        key_file(&self.dir, RoleType::Root)
    }

    fn require_key(&self) -> Result<PathBuf, TufError> {
        let path = self.key_path();
        if !path.is_file() {
            return Err(TufError::Key {
                path: path.display().to_string(),
                reason: "no root key here".into(),
            });
        }
        Ok(path)
    }

    fn create(&self) -> Result<PathBuf, TufError> {
        files::private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.key_path();
        tuf_keys::create_key_if_missing(&path)?;
        Ok(path)
    }

    /// Copies every `N.root.json` of `metadata_dir` that this directory lacks.
    fn keep_roots_from(&self, metadata_dir: &Path) -> Result<(), TufError> {
        for (_, source) in root_files(metadata_dir)? {
            let name = source.file_name().unwrap_or_default();
            let copy = self.dir.join(name);
            if !copy.exists() {
                let bytes = fs::read(&source).map_err(io_err(&source))?;
                tuf::write_atomically(&copy, &bytes)?;
            }
        }
        Ok(())
    }
}

/// `(version, path)` of every `N.root.json` in `dir`, by version.
fn root_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, TufError> {
    let mut roots: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let version = name.strip_suffix(".root.json")?.parse().ok()?;
            Some((version, path))
        })
        .collect();
    roots.sort_by_key(|(version, _)| *version);
    Ok(roots)
}

fn read_root(path: &Path) -> Result<Signed<Root>, TufError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| metadata_err(format!("{}: {e}", path.display())))
}

fn refuse(reason: impl Into<String>) -> TufError {
    TufError::Refused(reason.into())
}

/// Starts a repository whose root key lives in `root_dir` (created there if missing) and whose
/// online keys are new; returns the root version (1).
pub async fn init(
    repo: &Repository,
    _lock: &SigningLock,
    root_dir: &RootKeyDir,
) -> Result<u64, TufError> {
    if repo.has_root() {
        return Err(refuse(
            "this data directory has a TUF root already; use `tuf offline-root` to move its \
             key out, or `tuf rotate-root` to replace it",
        ));
    }
    let root_key = root_dir.create()?;
    let keys_dir = repo.keys_dir();
    files::private_dir(&keys_dir).map_err(io_err(&keys_dir))?;
    for role in ONLINE_ROLES {
        tuf_keys::create_key_if_missing(&repo.key_path(role))?;
    }
    let root = tuf_keys::build_root(&root_key, &keys_dir, NonZeroU64::MIN)?;
    let signed = tuf_keys::sign_root(&root, &[&root], &[&root_key]).await?;
    repo.install_root(&signed)?;
    root_dir.keep_roots_from(&repo.metadata_dir())?;
    tracing::info!("created a TUF root whose key is held outside the data directory");
    Ok(1)
}

/// Moves the online root key into `root_dir` (with copies of the roots), leaving the server
/// only the targets, snapshot and timestamp keys.
pub fn take_offline(
    repo: &Repository,
    _lock: &SigningLock,
    root_dir: &RootKeyDir,
) -> Result<(), TufError> {
    let online = repo.key_path(RoleType::Root);
    if !online.is_file() {
        return Err(refuse(
            "the data directory holds no root key (already offline?)",
        ));
    }
    let root = repo.current_root()?;
    if !root_lists_key(&root, RoleType::Root, &online)? {
        return Err(refuse(
            "the online root key is not the key of the installed root",
        ));
    }
    files::private_dir(&root_dir.dir).map_err(io_err(&root_dir.dir))?;
    let offline = root_dir.key_path();
    copy_new_private(&online, &offline)?;
    if tuf_keys::key_id(&offline)? != tuf_keys::key_id(&online)? {
        return Err(refuse(
            "the copied root key does not read back the same; nothing removed",
        ));
    }
    root_dir.keep_roots_from(&repo.metadata_dir())?;
    fs::remove_file(&online).map_err(io_err(&online))?;
    super::sync_parent(&online).map_err(io_err(&online))?;
    tracing::info!("the TUF root key left the data directory");
    Ok(())
}

/// Copies `from` to a new owner-only file `to`, refusing to replace anything, flushed to disk.
fn copy_new_private(from: &Path, to: &Path) -> Result<(), TufError> {
    let bytes = fs::read(from).map_err(io_err(from))?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    files::owner_only(&mut options);
    let mut file: File = options.open(to).map_err(io_err(to))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(to))?;
    super::sync_parent(to).map_err(io_err(to))
}

/// Signs root N+1 with the key in `root_dir` (the key of root N) and, with
/// [`Rotation::new_root_key`], the new key; with [`Rotation::online_keys`] it names new online
/// keys. Re-signs targets, snapshot and timestamp listing `targets`; returns the new root
/// version.
pub async fn rotate(
    repo: &Repository,
    lock: &SigningLock,
    root_dir: &RootKeyDir,
    rotation: &Rotation,
    targets: &[TargetEntry],
    timestamp_lifetime: std::time::Duration,
) -> Result<u64, TufError> {
    let current = repo.current_root()?;
    let old_key = root_dir.require_key()?;
    if !root_lists_key(&current, RoleType::Root, &old_key)? {
        return Err(refuse(format!(
            "{} is not the root key of root version {}",
            old_key.display(),
            current.signed.version
        )));
    }
    let new_key = match &rotation.new_root_key {
        Some(dir) => dir.create()?,
        None => old_key.clone(),
    };
    let online_dir = stage_online_keys(repo, rotation.online_keys)?;
    let version = current
        .signed
        .version
        .checked_add(1)
        .ok_or_else(|| refuse("root version exhausted"))?;
    let next = tuf_keys::build_root(&new_key, &online_dir, version)?;
    let signed =
        tuf_keys::sign_root(&next, &[&current.signed, &next], &[&old_key, &new_key]).await?;
    repo.install_root(&signed)?;
    repo.sign_with(lock, &online_dir, targets, timestamp_lifetime)
        .await?;
    // The same step as after a crash: staged keys the installed root names replace the old.
    repo.settle_key_rotation(lock)?;
    for dir in [Some(root_dir), rotation.new_root_key.as_ref()]
        .into_iter()
        .flatten()
    {
        dir.keep_roots_from(&repo.metadata_dir())?;
    }
    tracing::info!(
        version = version.get(),
        new_root_key = rotation.new_root_key.is_some(),
        new_online_keys = rotation.online_keys,
        "signed a new TUF root"
    );
    Ok(version.get())
}

/// The folder of the online keys the new root names: new ones in `keys/next/`, or the current.
fn stage_online_keys(repo: &Repository, rotate: bool) -> Result<PathBuf, TufError> {
    if !rotate {
        return Ok(repo.keys_dir());
    }
    let next = repo.next_keys_dir();
    files::private_dir(&next).map_err(io_err(&next))?;
    for role in ONLINE_ROLES {
        let path = key_file(&next, role);
        if path.exists() {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        tuf_keys::create_key_if_missing(&path)?;
    }
    Ok(next)
}

/// Rebuilds the signing side of a lost data directory: imports the chain of roots from
/// `root_dir`, then rotates to new online keys (signed by the offline root key). Returns the
/// new root version.
pub async fn recover(
    repo: &Repository,
    lock: &SigningLock,
    root_dir: &RootKeyDir,
    targets: &[TargetEntry],
    timestamp_lifetime: std::time::Duration,
) -> Result<u64, TufError> {
    if repo.has_root() {
        return Err(refuse(
            "this data directory has a TUF root already; recover into an empty one (move \
             DIR/tuf aside first)",
        ));
    }
    import_chain(repo, root_dir)?;
    let keys_dir = repo.keys_dir();
    files::private_dir(&keys_dir).map_err(io_err(&keys_dir))?;
    let rotation = Rotation {
        new_root_key: None,
        online_keys: true,
    };
    rotate(repo, lock, root_dir, &rotation, targets, timestamp_lifetime).await
}

/// Checks that the roots in `root_dir` form a chain (each signed by its predecessor and
/// itself) and installs them.
fn import_chain(repo: &Repository, root_dir: &RootKeyDir) -> Result<(), TufError> {
    let roots = root_files(&root_dir.dir)?;
    if roots.is_empty() {
        return Err(refuse(format!(
            "{} holds no N.root.json copies to recover from",
            root_dir.dir.display()
        )));
    }
    let mut previous: Option<Signed<Root>> = None;
    let metadata_dir = repo.metadata_dir();
    fs::create_dir_all(&metadata_dir).map_err(io_err(&metadata_dir))?;
    for (version, path) in roots {
        let root = read_root(&path)?;
        let signer = previous.as_ref().unwrap_or(&root);
        let expected = previous
            .as_ref()
            .map_or(version, |p| p.signed.version.get() + 1);
        if root.signed.version.get() != version || version != expected {
            return Err(refuse(format!(
                "{} breaks the chain of roots",
                path.display()
            )));
        }
        signer
            .signed
            .verify_role(&root)
            .and_then(|()| root.signed.verify_role(&root))
            .map_err(|e| refuse(format!("{} is not signed as needed: {e}", path.display())))?;
        repo.install_root(&root)?;
        previous = Some(root);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::release::tuf::DEFAULT_TIMESTAMP_LIFETIME;
    use tough::{FilesystemTransport, RepositoryLoader};

    fn entries(versions: &[&str]) -> Vec<TargetEntry> {
        versions.iter().map(|v| tuf::test_entry(v)).collect()
    }

    /// What a client pinned on `pinned` (keeping its state in `datastore`) accepts.
    async fn load(repo: &Repository, pinned: &[u8], datastore: &Path) -> tough::Repository {
        let url = url::Url::from_directory_path(repo.metadata_dir()).unwrap();
        RepositoryLoader::new(&pinned, url.clone(), url)
            .transport(FilesystemTransport)
            .datastore(datastore)
            .load()
            .await
            .unwrap()
    }

    fn versions(loaded: &tough::Repository) -> Vec<String> {
        let mut versions: Vec<String> = loaded
            .targets()
            .signed
            .targets
            .values()
            .map(|t| t.custom["version"].as_str().unwrap().to_owned())
            .collect();
        versions.sort();
        versions
    }

    #[tokio::test]
    async fn a_pinned_client_follows_rotations_and_a_recovery_from_the_offline_key() {
        let dir = tempfile::tempdir().unwrap();
        let client = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (offline, replacement) = (
            RootKeyDir::new(&dir.path().join("offline")),
            RootKeyDir::new(&dir.path().join("offline-2")),
        );
        let lifetime = DEFAULT_TIMESTAMP_LIFETIME;
        let repo = Repository::new(&data);
        let lock = repo.lock().unwrap();
        assert_eq!(init(&repo, &lock, &offline).await.unwrap(), 1);
        assert!(
            !repo.key_path(RoleType::Root).exists(),
            "the root key is not online"
        );
        assert!(offline.key_path().is_file() && offline.dir.join("1.root.json").is_file());
        let again = init(&repo, &lock, &offline).await.unwrap_err();
        assert!(again.is_refusal(), "{again}");
        repo.sign(&lock, &entries(&["1.0.0"]), lifetime)
            .await
            .unwrap();
        let pinned = fs::read(repo.metadata_dir().join("1.root.json")).unwrap();
        assert_eq!(
            versions(&load(&repo, &pinned, client.path()).await),
            ["1.0.0"]
        );

        // New root key and new online keys: the client pinned on root 1 follows to root 2.
        let old_timestamp_key = fs::read(repo.key_path(RoleType::Timestamp)).unwrap();
        let rotation = Rotation {
            new_root_key: Some(replacement.clone()),
            online_keys: true,
        };
        let targets = entries(&["1.0.0", "2.0.0"]);
        let version = rotate(&repo, &lock, &offline, &rotation, &targets, lifetime).await;
        assert_eq!(version.unwrap(), 2);
        assert!(!repo.next_keys_dir().exists());
        assert_ne!(
            fs::read(repo.key_path(RoleType::Timestamp)).unwrap(),
            old_timestamp_key
        );
        let loaded = load(&repo, &pinned, client.path()).await;
        assert_eq!(loaded.root().signed.version.get(), 2);
        assert_eq!(versions(&loaded), ["1.0.0", "2.0.0"]);
        let stale = rotate(
            &repo,
            &lock,
            &offline,
            &Rotation::default(),
            &targets,
            lifetime,
        )
        .await;
        assert!(
            stale.unwrap_err().is_refusal(),
            "the replaced root key signs no more"
        );
        drop(lock);

        // The data directory is lost; the offline key and its copies of the roots rebuild it.
        fs::remove_dir_all(&data).unwrap();
        let repo = Repository::new(&data);
        let lock = repo.lock().unwrap();
        let recovered = recover(&repo, &lock, &replacement, &entries(&["3.0.0"]), lifetime).await;
        assert_eq!(recovered.unwrap(), 3);
        let loaded = load(&repo, &pinned, client.path()).await;
        assert_eq!(loaded.root().signed.version.get(), 3);
        assert_eq!(versions(&loaded), ["3.0.0"]);
        assert_eq!(
            loaded.timestamp().signed.version.get(),
            1,
            "counters start afresh"
        );
        let twice = recover(&repo, &lock, &replacement, &[], lifetime).await;
        assert!(twice.unwrap_err().is_refusal());
    }

    #[tokio::test]
    async fn an_online_root_key_is_taken_offline_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(&dir.path().join("data"));
        let offline = RootKeyDir::new(&dir.path().join("offline"));
        let lock = repo.lock().unwrap();
        repo.ensure_root(&lock).await.unwrap();
        let key = fs::read(repo.key_path(RoleType::Root)).unwrap();
        take_offline(&repo, &lock, &offline).unwrap();
        assert!(!repo.key_path(RoleType::Root).exists());
        assert_eq!(fs::read(offline.key_path()).unwrap(), key);
        assert!(offline.dir.join("1.root.json").is_file());
        assert!(
            take_offline(&repo, &lock, &offline)
                .unwrap_err()
                .is_refusal()
        );
        repo.sign(&lock, &entries(&["1.0.0"]), DEFAULT_TIMESTAMP_LIFETIME)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_key_rotation_cut_short_is_settled_by_the_next_lock() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(&dir.path().join("data"));
        let lock = repo.lock().unwrap();
        repo.ensure_root(&lock).await.unwrap();
        let current = fs::read(repo.key_path(RoleType::Snapshot)).unwrap();
        stage_online_keys(&repo, true).unwrap();
        drop(lock);
        // The root was never signed: the staged keys are discarded.
        let lock = repo.lock().unwrap();
        assert!(!repo.next_keys_dir().exists());
        assert_eq!(
            fs::read(repo.key_path(RoleType::Snapshot)).unwrap(),
            current
        );
        // The root naming them was installed, then the process died: they are promoted.
        let staged = stage_online_keys(&repo, true).unwrap();
        let root_key = repo.key_path(RoleType::Root);
        let mut root = tuf_keys::build_root(&root_key, &staged, NonZeroU64::MIN).unwrap();
        root.version = NonZeroU64::new(2).unwrap();
        let previous = repo.current_root().unwrap().signed;
        let signed = tuf_keys::sign_root(&root, &[&previous, &root], &[&root_key])
            .await
            .unwrap();
        repo.install_root(&signed).unwrap();
        let promoted = fs::read(key_file(&staged, RoleType::Snapshot)).unwrap();
        drop(lock);
        let _lock = repo.lock().unwrap();
        assert!(!repo.next_keys_dir().exists());
        assert_eq!(
            fs::read(repo.key_path(RoleType::Snapshot)).unwrap(),
            promoted
        );
    }
}
