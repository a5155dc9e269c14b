//! The TUF signing keys and the root that names them: key files (ed25519 PKCS#8, 0600, never
//! overwritten), their ids, a root built over them and signed by the root keys.
//!
//! The repository (`tuf.rs`) signs with these keys and the offline root (`tuf_root.rs`) builds
//! and rotates roots with them. This module must never put key material in a log line or an
//! error, and never overwrite a key.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed};
use tough::sign::{Sign, parse_keypair};

use super::tuf::{ONLINE_ROLES, ROOT_LIFETIME, TufError, expiry, io_err, metadata_err};
use crate::files;

/// The key file of `role` in `dir`.
pub(crate) fn key_file(dir: &Path, role: RoleType) -> PathBuf {
    dir.join(format!("{role}.pk8"))
}

pub(crate) fn read_key(path: &Path) -> Result<impl Sign, TufError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    parse_keypair(&bytes).map_err(|_| TufError::Key {
        path: path.display().to_string(),
        reason: "not an ed25519 PKCS#8 key".to_owned(),
    })
}

/// The TUF key id of the key in `path`.
pub(crate) fn key_id(path: &Path) -> Result<Decoded<Hex>, TufError> {
    read_key(path)?.tuf_key().key_id().map_err(metadata_err)
}

/// Whether `root` names the key in `path` for `role`.
pub(crate) fn root_lists_key(
    root: &Signed<Root>,
    role: RoleType,
    path: &Path,
) -> Result<bool, TufError> {
    let id = key_id(path)?;
    Ok(root
        .signed
        .roles
        .get(&role)
        .is_some_and(|keys| keys.keyids.contains(&id)))
}

pub(super) fn key_sources(dir: &Path, roles: &[RoleType]) -> Vec<Box<dyn KeySource>> {
    roles
        .iter()
        .map(|role| {
            Box::new(LocalKeySource {
                path: key_file(dir, *role),
            }) as Box<dyn KeySource>
        })
        .collect()
}

/// A root at `version` naming the key in `root_key` for the root role and the keys in
/// `online_dir` for the other three, each with threshold 1.
pub(crate) fn build_root(
    root_key: &Path,
    online_dir: &Path,
    version: NonZeroU64,
) -> Result<Root, TufError> {
    let mut root = Root {
        spec_version: "1.0.0".to_owned(),
        consistent_snapshot: true,
        version,
        expires: expiry(ROOT_LIFETIME)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let roles = ONLINE_ROLES
        .into_iter()
        .map(|role| (role, key_file(online_dir, role)))
        .chain([(RoleType::Root, root_key.to_owned())]);
    for (role, path) in roles {
        let key = read_key(&path)?.tuf_key();
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

/// Signs `root` with the root keys in `keys`, each as a member of the roots in `holders` that
/// lists it (a rotated root is signed by the previous root's key and its own), and checks that
/// every holder's threshold is met.
pub(crate) async fn sign_root(
    root: &Root,
    holders: &[&Root],
    keys: &[&Path],
) -> Result<Signed<Root>, TufError> {
    let mut signed: Option<SignedRole<Root>> = None;
    for holder in holders {
        let sources: Vec<Box<dyn KeySource>> = keys
            .iter()
            .map(|path| {
                Box::new(LocalKeySource {
                    path: path.to_path_buf(),
                }) as Box<dyn KeySource>
            })
            .collect();
        let holder_keys = KeyHolder::Root((*holder).clone());
        let by_holder = SignedRole::new(root.clone(), &holder_keys, &sources, &SystemRandom::new())
            .await
            .map_err(metadata_err)?;
        signed = Some(match signed {
            None => by_holder,
            Some(previous) => by_holder
                .add_old_signatures(previous.signed().signatures.clone())
                .map_err(metadata_err)?,
        });
    }
    let signed = signed
        .ok_or_else(|| metadata_err("no root to sign for"))?
        .signed()
        .clone();
    for holder in holders {
        holder.verify_role(&signed).map_err(|e| {
            metadata_err(format!(
                "root version {} is not signed as needed: {e}",
                root.version
            ))
        })?;
    }
    Ok(signed)
}

/// Creates a new ed25519 key at `path` (0600, never overwriting); keeps an existing one.
pub(crate) fn create_key_if_missing(path: &Path) -> Result<(), TufError> {
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
    files::owner_only(&mut options);
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(document.as_ref())
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))
}
