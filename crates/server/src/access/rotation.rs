//! Credential rotation, driven by the server and proven by the agent: a heartbeat answer asks
//! for it when the credential is older than [`MAX_CREDENTIAL_AGE`] or an operator requested it;
//! the agent proposes a credential of its own (stored hashed beside the current one, both
//! accepted), and the first request made with it promotes it and retires the old one.
//!
//! So there is no moment where neither credential works: the old one stops only once the new
//! one has been used, which the agent does only after writing it durably. This module must never
//! log or store a credential in clear.

use std::time::Duration;

use crate::access::{Actor, Outcome, audit, auth};
use crate::clock;
use crate::db::{Db, DbError};

/// Age after which a credential is rotated at the next heartbeat.
pub const MAX_CREDENTIAL_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The audit action of an operator's request.
pub const ACTION: &str = "agent.rotate_credential";

/// Why a proposed credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a credential must be 64 lower-case hex digits (256 random bits)")]
pub struct BadCredential;

/// Whether the heartbeat answer of `agent_id` asks for a rotation now.
pub async fn is_due(db: &Db, agent_id: &str) -> Result<bool, DbError> {
    let now = time::OffsetDateTime::now_utc();
    Ok(db
        .credential_age(agent_id)
        .await?
        .is_some_and(|(issued, requested)| {
            requested || !clock::is_within(&issued, MAX_CREDENTIAL_AGE, now)
        }))
}

/// Stores the credential `agent_id` proposes (hashed); it works beside the current one until
/// it is used.
pub async fn propose(
    db: &Db,
    agent_id: &str,
    token: &str,
) -> Result<Result<(), BadCredential>, DbError> {
    let well_formed = token.len() == 2 * auth::TOKEN_BYTES
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !well_formed {
        return Ok(Err(BadCredential));
    }
    db.propose_credential(agent_id, &auth::hash_token(token))
        .await?;
    tracing::info!(agent_id, "credential rotation: new credential proposed");
    Ok(Ok(()))
}

/// The proposed credential (`token_hash`) of `agent_id` was just used: it becomes the only one.
pub async fn promote(db: &Db, agent_id: &str, token_hash: &str) -> Result<(), DbError> {
    db.promote_credential(agent_id, token_hash, &clock::now())
        .await?;
    tracing::info!(
        agent_id,
        "credential rotation: new credential in use, the old one retired"
    );
    Ok(())
}

/// An operator asks `agent_id` to rotate its credential at its next heartbeat (audited);
/// `false` for an unknown agent.
pub async fn request(db: &Db, agent_id: &str, actor: &Actor) -> Result<bool, DbError> {
    let known = db.request_rotation(agent_id, &clock::now()).await?;
    let outcome = if known { Outcome::Ok } else { Outcome::Refused };
    audit(db, actor, ACTION, Some(agent_id), outcome).await;
    Ok(known)
}
