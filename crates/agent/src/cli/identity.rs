//! `--reset-identity`: forgets the agent's id and credential (and a revocation), keeping the
//! server, the settings and the pinned root, so the next start registers a new identity. For
//! golden images (run it before sealing the image) and for enrolling a revoked machine again.
//!
//! It takes the agent's lock first, so it never changes the identity under a running agent
//! (exit 1 then). This module must never print or log a credential.

use anyhow::{Context, Result};

use crate::core::config::ConfigManager;
use crate::core::storage::StateManager;
use crate::system::lock_manager::{Acquire, LockManager};

use super::start::lock_held;

/// Removes the identity from `storage`'s config.json; 0 done (or nothing to remove), 1 while
/// an agent runs.
pub(super) fn reset_identity(storage: &StateManager) -> Result<u8> {
    let lock = LockManager::new(storage.storage_path());
    if let Acquire::HeldBy(holder) = lock.acquire()? {
        return Ok(lock_held(storage, holder.as_ref()));
    }
    let forgotten = forget(storage);
    lock.release();
    let message = match forgotten? {
        Some(agent_id) => format!("identity {agent_id} removed; the next start registers anew"),
        None => "no identity to remove; the next start registers anew".to_owned(),
    };
    tracing::info!(folder = %storage.storage_path().display(), "{message}");
    println!("{message}");
    Ok(0)
}

fn forget(storage: &StateManager) -> Result<Option<String>> {
    let (mut config, _notices) =
        ConfigManager::load(&storage.config_path(), storage.secret_scope())
            .context("cannot read config.json")?;
    let had_identity = config.config().credentials.is_some() || config.config().identity_revoked;
    if !had_identity {
        return Ok(None);
    }
    let mut forgotten = None;
    config
        .update(|c| forgotten = c.forget_identity())
        .context("cannot write config.json")?;
    Ok(forgotten)
}
