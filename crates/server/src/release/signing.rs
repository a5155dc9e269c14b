//! The signing-key commands of `cms-server tuf`: init, offline-root, rotate-root and recover,
//! each under the repository's signing lock; a root change is audited, refused or not.
//!
//! The key work itself is [`tuf_root`]'s. This module must never change a root without an
//! audit entry, and never read the command line or the environment.

use std::path::Path;

use super::tuf_root::{self, RootKeyDir};
use super::{PublishError, lock_repository, signed_targets, tuf};
use crate::access::{self, Actor, Outcome};
use crate::db::Db;

/// `cms-server tuf init`: a new repository whose root key lives in `root_dir`.
pub async fn init_offline_root(
    data_dir: &Path,
    root_dir: &RootKeyDir,
) -> Result<u64, PublishError> {
    let repository = tuf::Repository::new(data_dir);
    let lock = lock_repository(&repository).await?;
    Ok(tuf_root::init(&repository, &lock, root_dir).await?)
}

/// `cms-server tuf offline-root`: moves the online root key into `root_dir`.
pub async fn take_root_offline(data_dir: &Path, root_dir: &RootKeyDir) -> Result<(), PublishError> {
    let repository = tuf::Repository::new(data_dir);
    let lock = lock_repository(&repository).await?;
    Ok(tuf_root::take_offline(&repository, &lock, root_dir)?)
}

/// `cms-server tuf rotate-root`: signs the next root (see [`tuf_root::rotate`]) and re-signs
/// the published releases; audited.
pub async fn rotate_root(
    db: &Db,
    data_dir: &Path,
    root_dir: &RootKeyDir,
    rotation: &tuf_root::Rotation,
    lifetime: std::time::Duration,
    actor: &Actor,
) -> Result<u64, PublishError> {
    let (repository, lock, targets) = locked_with_targets(db, data_dir).await?;
    let result = tuf_root::rotate(&repository, &lock, root_dir, rotation, &targets, lifetime).await;
    audit_root_change(db, actor, "tuf.rotate_root", &result).await;
    Ok(result?)
}

/// `cms-server tuf recover`: new online keys for a lost data directory, signed by the offline
/// root (see [`tuf_root::recover`]); audited.
pub async fn recover_signing(
    db: &Db,
    data_dir: &Path,
    root_dir: &RootKeyDir,
    lifetime: std::time::Duration,
    actor: &Actor,
) -> Result<u64, PublishError> {
    let (repository, lock, targets) = locked_with_targets(db, data_dir).await?;
    let result = tuf_root::recover(&repository, &lock, root_dir, &targets, lifetime).await;
    audit_root_change(db, actor, "tuf.recover", &result).await;
    Ok(result?)
}

/// The repository of `data_dir`, locked, and the releases it must list.
async fn locked_with_targets(
    db: &Db,
    data_dir: &Path,
) -> Result<(tuf::Repository, tuf::SigningLock, Vec<tuf::TargetEntry>), PublishError> {
    let repository = tuf::Repository::new(data_dir);
    let lock = lock_repository(&repository).await?;
    let targets = signed_targets(db, data_dir).await?;
    Ok((repository, lock, targets))
}

async fn audit_root_change(
    db: &Db,
    actor: &Actor,
    action: &str,
    result: &Result<u64, tuf::TufError>,
) {
    let (target, outcome) = match result {
        Ok(version) => (Some(format!("root {version}")), Outcome::Ok),
        Err(_) => (None, Outcome::Refused),
    };
    access::audit(db, actor, action, target.as_deref(), outcome).await;
}
