//! Signing a rollback statement (`cms_protocol::RollbackStatement`) with the root key: the
//! permission for agents to go back to an older release, which `cms-server group pin` needs to
//! pin a group to a version older than the newest published one.
//!
//! The statement is signed over the canonical JSON of its terms by the key of the root role
//! (from an offline root key folder, or the data directory's own key folder while the root is
//! still online), the same key agents pin; the online keys cannot make one. This module must
//! never sign with a key the current root does not name for the root role, and never log a key.

use std::path::Path;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use cms_protocol::{ROLLBACK_TYPE, RollbackSignature, RollbackStatement, RollbackTerms};
use tough::schema::RoleType;
use tough::sign::Sign;

use super::tuf::{Repository, TufError, expiry, metadata_err};
use super::tuf_keys::{read_key, root_lists_key};

/// How long a rollback statement allows the downgrade unless told otherwise.
pub const DEFAULT_ROLLBACK_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Signs a statement letting agents of `platform` go back to `version` for `lifetime`, with
/// the root key at `root_key` (refused unless the repository's current root names it for the
/// root role).
pub async fn sign(
    repository: &Repository,
    root_key: &Path,
    version: &str,
    platform: &str,
    lifetime: Duration,
) -> Result<RollbackStatement, TufError> {
    let root = repository.current_root()?;
    if !root_lists_key(&root, RoleType::Root, root_key)? {
        return Err(TufError::Refused(format!(
            "the key in {} is not this repository's root key; a rollback needs the root key",
            root_key.display()
        )));
    }
    let terms = RollbackTerms {
        kind: ROLLBACK_TYPE.to_owned(),
        version: version.to_owned(),
        platform: platform.to_owned(),
        expires: expiry(lifetime)?.to_string(),
    };
    let bytes = terms.canonical_bytes().map_err(metadata_err)?;
    let key = read_key(root_key)?;
    let sig = key
        .sign(&bytes, &SystemRandom::new())
        .await
        .map_err(metadata_err)?;
    let keyid = key.tuf_key().key_id().map_err(metadata_err)?;
    Ok(RollbackStatement {
        signed: terms,
        signatures: vec![RollbackSignature {
            keyid: hex::encode(keyid.as_ref()),
            sig: hex::encode(sig),
        }],
    })
}
