//! Operator access: tokens with roles, their authentication, and the audit log.
//!
//! An operator token is `cmso_` followed by 256 random bits in hex; only its SHA-256 is stored,
//! with a unique name, a role, the creation time and the last use (written at most once a
//! minute per token, so reads do not turn into writes). Every operator action, and every
//! action refused because the role is too low, is written to the audit log with who, what,
//! when and from where; reads are not actions. The command line (`cms-server token ...`) and
//! the admin API share these functions. This module must never log, store or return a token
//! except the one handed out once at creation.

pub mod auth;
pub mod enrollment;
pub mod revocation;
pub mod rotation;
pub mod session;

use std::time::Duration;

use cms_protocol::{CreatedOperatorToken, OperatorRole, OperatorToken};

use crate::clock;
use crate::db::{Db, DbError, NewAuditEntry, OperatorTokenRow};
use crate::logtext::{Untrusted, clip};
use auth::RandomError;

/// Prefix of every operator token, so it is recognisable (and told apart from agent tokens).
pub const OPERATOR_TOKEN_PREFIX: &str = "cmso_";
/// Longest token name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest target stored in an audit entry (longer ones are cut).
const MAX_AUDIT_TARGET: usize = 256;
/// A token's last use is rewritten only when the stored one is older than this.
const LAST_USED_GRANULARITY: Duration = Duration::from_secs(60);

/// Why a token could not be created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The name has characters or a length that is not allowed.
    #[error("token name {0:?} is not allowed: use 1 to 64 of the characters A-Z a-z 0-9 . _ @ -")]
    InvalidName(String),
    /// Another token has this name.
    #[error("a token named {0:?} exists already; revoke it first or pick another name")]
    NameTaken(String),
    /// No token has this name.
    #[error("no token is named {0:?}")]
    UnknownName(String),
    /// The random source failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl AccessError {
    /// Whether the request itself was refused (retrying it cannot succeed).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            AccessError::InvalidName(_) | AccessError::NameTaken(_) | AccessError::UnknownName(_)
        )
    }
}

/// Who performs an action, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Token name, or `cli:USER`.
    pub name: String,
    /// Peer address, or `local`.
    pub source: String,
}

impl Actor {
    /// A command run on the server by the OS user `user` (empty when unknown).
    pub fn command_line(user: &str) -> Actor {
        let name = if user.is_empty() {
            "cli".to_owned()
        } else {
            format!("cli:{user}")
        };
        Actor {
            name,
            source: "local".to_owned(),
        }
    }
}

/// Outcome of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// The role was too low.
    Denied,
    /// A valid request the server turned down (unknown target, conflict).
    Refused,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Refused => "refused",
        }
    }
}

/// Audits the result of an operator's action: `ok`, or `refused`; a failure of the server
/// itself (`server_failed`, e.g. the database) is not the operator's action and is not audited.
pub async fn audit_result<T, E>(
    db: &Db,
    actor: &Actor,
    (action, target): (&str, &str),
    result: &Result<T, E>,
    server_failed: impl Fn(&E) -> bool,
) {
    let outcome = match result {
        Ok(_) => Outcome::Ok,
        Err(error) if server_failed(error) => return,
        Err(_) => Outcome::Refused,
    };
    audit(db, actor, action, Some(target), outcome).await;
}

/// Writes one audit entry (and logs it); a failed write is logged, never hidden. The denials of
/// one actor and action within one minute share one row that counts them (docs/CONTRACT.md);
/// only the first is logged at info level.
pub async fn audit(db: &Db, actor: &Actor, action: &str, target: Option<&str>, outcome: Outcome) {
    let target = target.map(|t| clip(t, MAX_AUDIT_TARGET));
    let entry = NewAuditEntry {
        actor: &actor.name,
        action,
        target,
        outcome: outcome.name(),
        source: &actor.source,
    };
    let now = clock::now();
    if outcome == Outcome::Denied {
        let id = denial_id(&actor.name, action, &now);
        match db.count_audit(&id, &entry, &now).await {
            Ok(1) => {}
            Ok(repeats) => {
                tracing::debug!(actor = actor.name, action, repeats, "audit: denied again");
                return;
            }
            Err(error) => {
                tracing::error!(%error, action, actor = actor.name, "cannot write the audit log");
                return;
            }
        }
    }
    tracing::info!(
        actor = actor.name,
        action,
        target = target.map(|t| tracing::field::display(Untrusted(t))),
        outcome = outcome.name(),
        source = actor.source,
        "audit"
    );
    if outcome != Outcome::Denied
        && let Err(error) = db.insert_audit(&entry, &now).await
    {
        tracing::error!(%error, action, actor = actor.name, "cannot write the audit log");
    }
}

/// The id of the audit row that counts `actor`'s denials of `action` in the minute of `now`
/// (a stored timestamp): `denied-` and the SHA-256 of the three, so the row is found without
/// a lookup and the id reveals nothing the row does not.
fn denial_id(actor: &str, action: &str, now: &str) -> String {
    use sha2::{Digest, Sha256};
    let minute = now.get(..16).unwrap_or(now);
    let digest = Sha256::digest(format!("{actor}\n{action}\n{minute}").as_bytes());
    format!("denied-{}", hex::encode(&digest[..16]))
}

/// Whether `name` may name a token.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Mints a new operator token: the prefix and 256 bits from the OS CSPRNG in hex.
pub fn mint_operator_token() -> Result<String, RandomError> {
    Ok(format!("{OPERATOR_TOKEN_PREFIX}{}", auth::mint_token()?))
}

/// Creates a token named `name` with `role`, audited as done by `actor`.
pub async fn create_token(
    db: &Db,
    name: &str,
    role: OperatorRole,
    actor: &Actor,
) -> Result<CreatedOperatorToken, AccessError> {
    if !valid_name(name) {
        return Err(AccessError::InvalidName(name.to_owned()));
    }
    let token = mint_operator_token()?;
    let created_at = clock::now();
    let inserted = db
        .insert_operator_token(name, role, &auth::hash_token(&token), &created_at)
        .await;
    match inserted {
        Ok(()) => {}
        Err(DbError::Duplicate(_)) => {
            audit(db, actor, "token.create", Some(name), Outcome::Refused).await;
            return Err(AccessError::NameTaken(name.to_owned()));
        }
        Err(other) => return Err(other.into()),
    }
    audit(db, actor, "token.create", Some(name), Outcome::Ok).await;
    Ok(CreatedOperatorToken {
        name: name.to_owned(),
        role,
        created_at,
        token,
    })
}

/// Revokes the token `name` (it stops working at once), audited as done by `actor`.
pub async fn revoke_token(db: &Db, name: &str, actor: &Actor) -> Result<(), AccessError> {
    if !valid_name(name) {
        return Err(AccessError::InvalidName(name.to_owned()));
    }
    if !db.delete_operator_token(name).await? {
        audit(db, actor, "token.revoke", Some(name), Outcome::Refused).await;
        return Err(AccessError::UnknownName(name.to_owned()));
    }
    audit(db, actor, "token.revoke", Some(name), Outcome::Ok).await;
    Ok(())
}

/// Every token, by name (never a token or a hash).
pub async fn list_tokens(db: &Db) -> Result<Vec<OperatorToken>, AccessError> {
    Ok(db.list_operator_tokens().await?)
}

/// The token `presented` belongs to, if any; records its use.
pub async fn authenticate(db: &Db, presented: &str) -> Result<Option<OperatorTokenRow>, DbError> {
    if !presented.starts_with(OPERATOR_TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = auth::hash_token(presented);
    let Some(row) = db.operator_by_token_hash(&hash).await? else {
        return Ok(None);
    };
    if !auth::secrets_equal(&hash, &row.token_hash) {
        return Ok(None);
    }
    let now = time::OffsetDateTime::now_utc();
    let recent = row
        .last_used_at
        .as_deref()
        .is_some_and(|at| clock::is_within(at, LAST_USED_GRANULARITY, now));
    if !recent {
        db.touch_operator_token(&row.name, &clock::format_utc(now))
            .await?;
    }
    Ok(Some(row))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "ci",
            "alice@example.org",
            "ops-team_1.backup",
            &"a".repeat(64),
        ] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "a b", "x\ny", "ü", "a/b", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn minted_tokens_carry_the_prefix() {
        let token = mint_operator_token().unwrap();
        assert!(token.starts_with(OPERATOR_TOKEN_PREFIX));
        assert_eq!(token.len(), OPERATOR_TOKEN_PREFIX.len() + 64);
    }

    #[tokio::test]
    async fn create_authenticate_revoke_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_for_command(dir.path(), None).await.unwrap();
        let actor = Actor::command_line("alice");
        let created = create_token(&db, "ci", OperatorRole::Viewer, &actor)
            .await
            .unwrap();
        let again = create_token(&db, "ci", OperatorRole::Admin, &actor).await;
        assert!(matches!(again, Err(AccessError::NameTaken(_))));
        let row = authenticate(&db, &created.token).await.unwrap().unwrap();
        assert_eq!((row.name.as_str(), row.role), ("ci", OperatorRole::Viewer));
        let listed = list_tokens(&db).await.unwrap();
        assert!(listed[0].last_used_at.is_some(), "use recorded");
        assert!(authenticate(&db, "cmso_wrong").await.unwrap().is_none());
        assert!(authenticate(&db, "no-prefix").await.unwrap().is_none());
        revoke_token(&db, "ci", &actor).await.unwrap();
        assert!(authenticate(&db, &created.token).await.unwrap().is_none());
        let missing = revoke_token(&db, "ci", &actor).await;
        assert!(matches!(missing, Err(AccessError::UnknownName(_))));
        let (entries, more) = db
            .list_audit(&crate::db::AuditKey::default(), 10)
            .await
            .unwrap();
        assert!(!more);
        let actions: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.action.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("token.revoke", "refused"),
                ("token.revoke", "ok"),
                ("token.create", "refused"),
                ("token.create", "ok"),
            ]
        );
        assert!(
            entries
                .iter()
                .all(|e| e.actor == "cli:alice" && e.source == "local")
        );
        db.close().await;
    }
}
