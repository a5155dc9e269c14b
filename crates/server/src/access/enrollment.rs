//! Enrollment tokens as objects: created with a name, an optional expiry, use limit and group,
//! stored hashed, listed without their secret, revoked by name (audited), and checked when an
//! agent registers. The server's `--enrollment-token` is the token named [`DEFAULT_TOKEN`].
//!
//! Revoking a token stops new registrations with it and touches no enrolled agent. This module
//! must never log, store or return a token except the one handed out once at creation.

use serde::Serialize;

use crate::access::{AccessError, Actor, Outcome, audit, auth, valid_name};
use crate::clock;
use crate::db::{Db, DbError, EnrollmentTokenRow, NewEnrollmentToken};

/// Prefix of every enrollment token made by `enroll create`.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "cmse_";
/// The name agents enrolled with the server's `--enrollment-token` record.
pub const DEFAULT_TOKEN: &str = "default";
/// Longest expiry accepted, in days (ten years).
const MAX_EXPIRES_DAYS: u32 = 3650;

/// What `enroll create` asks for.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec<'a> {
    /// Unique name.
    pub name: &'a str,
    /// Days until it expires, if it does.
    pub expires_days: Option<u32>,
    /// Registrations allowed, if limited.
    pub uses: Option<u32>,
    /// The group its agents join.
    pub group: Option<&'a str>,
}

/// A token just created: the only answer that carries the token.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedEnrollmentToken {
    /// Its name.
    pub name: String,
    /// The token, shown once.
    pub token: String,
    /// Expiry (RFC 3339), if any.
    pub expires_at: Option<String>,
    /// Registrations allowed, if limited.
    pub max_uses: Option<i64>,
    /// The group its agents join, if any.
    pub group: Option<String>,
}

/// Why a registration's enrollment token was refused; each has its own message, which the
/// agent writes in its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentRefusal {
    /// Missing, or not a token this server knows.
    #[error("missing or invalid enrollment token")]
    Invalid,
    /// The token's expiry has passed.
    #[error("the enrollment token has expired; ask the operator for a new one")]
    Expired,
    /// The token's registrations are used up.
    #[error("the enrollment token is used up; ask the operator for a new one")]
    UsedUp,
    /// An operator revoked the token.
    #[error("the enrollment token was revoked; ask the operator for a new one")]
    Revoked,
    /// The server has no enrollment token of any kind and was not started with
    /// `--open-enrollment`.
    #[error(
        "registration is closed: this server needs an enrollment token (cms-server serve \
         --enrollment-token T, or cms-server enroll create) or --open-enrollment"
    )]
    Closed,
}

/// A registration let in, and by which token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Name of the token that let it in (`None`: the server enrols without a token).
    pub token: Option<String>,
    group: Option<String>,
}

impl Admitted {
    /// The group of the token that admitted the agent, if it names one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// Whether a registration presenting `presented` may enrol: the server's own token
/// (`server_token`, compared in constant time) is [`DEFAULT_TOKEN`]; a stored token must be
/// unrevoked, unexpired and have a use left (taken here); with neither configured nor any
/// token stored, anyone may enrol on an `open` server (`--open-enrollment`) and nobody on
/// another.
pub async fn admit(
    db: &Db,
    server_token: Option<&str>,
    presented: Option<&str>,
    open: bool,
) -> Result<Result<Admitted, EnrollmentRefusal>, DbError> {
    let presented = presented.unwrap_or_default();
    if !presented.is_empty() {
        if server_token.is_some_and(|expected| auth::secrets_equal(presented, expected)) {
            return Ok(Ok(admitted(DEFAULT_TOKEN, None)));
        }
        if let Some(row) = db
            .enrollment_token_by_hash(&auth::hash_token(presented))
            .await?
        {
            return admit_stored(db, row).await;
        }
    }
    if server_token.is_some() || !db.list_enrollment_tokens().await?.is_empty() {
        return Ok(Err(EnrollmentRefusal::Invalid));
    }
    Ok(if open {
        Ok(Admitted::default())
    } else {
        Err(EnrollmentRefusal::Closed)
    })
}

async fn admit_stored(
    db: &Db,
    row: EnrollmentTokenRow,
) -> Result<Result<Admitted, EnrollmentRefusal>, DbError> {
    let now = clock::now();
    if let Some(refusal) = refusal(&row, &now) {
        return Ok(Err(refusal));
    }
    if !db.take_enrollment_use(&row.name, &now).await? {
        // Another registration took the last use (or the token changed) meanwhile.
        return Ok(Err(EnrollmentRefusal::UsedUp));
    }
    Ok(Ok(admitted(&row.name, row.group)))
}

/// Why the stored token `row` cannot enrol at `now` (stored-format time), if it cannot.
fn refusal(row: &EnrollmentTokenRow, now: &str) -> Option<EnrollmentRefusal> {
    if row.revoked_at.is_some() {
        Some(EnrollmentRefusal::Revoked)
    } else if row.expires_at.as_deref().is_some_and(|at| at <= now) {
        Some(EnrollmentRefusal::Expired)
    } else if row.max_uses.is_some_and(|max| row.uses >= max) {
        Some(EnrollmentRefusal::UsedUp)
    } else {
        None
    }
}

fn admitted(name: &str, group: Option<String>) -> Admitted {
    Admitted {
        token: Some(name.to_owned()),
        group,
    }
}

/// Creates an enrollment token as `actor` (audited `enroll.create`).
pub async fn create(
    db: &Db,
    spec: &TokenSpec<'_>,
    actor: &Actor,
) -> Result<CreatedEnrollmentToken, AccessError> {
    const ACTION: &str = "enroll.create";
    let group_ok = spec.group.is_none_or(valid_name);
    if !valid_name(spec.name) || spec.name == DEFAULT_TOKEN || !group_ok {
        audit(db, actor, ACTION, Some(spec.name), Outcome::Refused).await;
        return Err(AccessError::InvalidName(spec.name.to_owned()));
    }
    let token = format!("{ENROLLMENT_TOKEN_PREFIX}{}", auth::mint_token()?);
    let expires_at = spec.expires_days.map(|days| {
        let days = days.clamp(1, MAX_EXPIRES_DAYS);
        clock::from_now(time::Duration::days(i64::from(days)))
    });
    let max_uses = spec.uses.map(i64::from);
    let row = NewEnrollmentToken {
        name: spec.name,
        token_hash: &auth::hash_token(&token),
        expires_at: expires_at.as_deref(),
        max_uses,
        group: spec.group,
    };
    match db.insert_enrollment_token(&row, &clock::now()).await {
        Ok(()) => {}
        Err(DbError::Duplicate(_)) => {
            audit(db, actor, ACTION, Some(spec.name), Outcome::Refused).await;
            return Err(AccessError::NameTaken(spec.name.to_owned()));
        }
        Err(other) => return Err(other.into()),
    }
    audit(db, actor, ACTION, Some(spec.name), Outcome::Ok).await;
    Ok(CreatedEnrollmentToken {
        name: spec.name.to_owned(),
        token,
        expires_at,
        max_uses,
        group: spec.group.map(str::to_owned),
    })
}

/// Every enrollment token, by name (never a token or a hash).
pub async fn list(db: &Db) -> Result<Vec<EnrollmentTokenRow>, AccessError> {
    Ok(db.list_enrollment_tokens().await?)
}

/// Revokes the enrollment token `name` as `actor` (audited `enroll.revoke`); enrolled agents
/// keep working.
pub async fn revoke(db: &Db, name: &str, actor: &Actor) -> Result<(), AccessError> {
    const ACTION: &str = "enroll.revoke";
    if !valid_name(name) {
        return Err(AccessError::InvalidName(name.to_owned()));
    }
    if !db.revoke_enrollment_token(name, &clock::now()).await? {
        audit(db, actor, ACTION, Some(name), Outcome::Refused).await;
        return Err(AccessError::UnknownName(name.to_owned()));
    }
    audit(db, actor, ACTION, Some(name), Outcome::Ok).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_for_command(dir.path(), None).await.unwrap();
        (dir, db)
    }

    fn spec(name: &str) -> TokenSpec<'_> {
        TokenSpec {
            name,
            ..TokenSpec::default()
        }
    }

    #[tokio::test]
    async fn open_until_a_token_exists_then_each_refusal_is_told_apart() {
        let (_dir, db) = store().await;
        let actor = Actor::command_line("alice");
        assert_eq!(
            admit(&db, None, None, false).await.unwrap(),
            Err(EnrollmentRefusal::Closed),
            "token-less enrollment needs --open-enrollment"
        );
        assert_eq!(
            admit(&db, None, None, true).await.unwrap(),
            Ok(Admitted::default())
        );
        let once = TokenSpec {
            uses: Some(1),
            group: Some("lab"),
            ..spec("once")
        };
        let once = create(&db, &once, &actor).await.unwrap();
        assert!(once.token.starts_with(ENROLLMENT_TOKEN_PREFIX));
        let refused = admit(&db, None, None, true).await.unwrap();
        assert_eq!(refused, Err(EnrollmentRefusal::Invalid), "closed now");
        let admitted = admit(&db, None, Some(&once.token), true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (admitted.token.as_deref(), admitted.group()),
            (Some("once"), Some("lab"))
        );
        let again = admit(&db, None, Some(&once.token), true).await.unwrap();
        assert_eq!(again, Err(EnrollmentRefusal::UsedUp));
        let gone = create(&db, &spec("gone"), &actor).await.unwrap();
        revoke(&db, "gone", &actor).await.unwrap();
        let revoked = admit(&db, None, Some(&gone.token), true).await.unwrap();
        assert_eq!(revoked, Err(EnrollmentRefusal::Revoked));
        let by_default = admit(&db, Some("s3cret"), Some("s3cret"), false)
            .await
            .unwrap();
        assert_eq!(by_default.unwrap().token.as_deref(), Some(DEFAULT_TOKEN));
        assert!(matches!(
            create(&db, &spec(DEFAULT_TOKEN), &actor).await,
            Err(AccessError::InvalidName(_))
        ));
        db.close().await;
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let row = EnrollmentTokenRow {
            name: "t".into(),
            token_hash: String::new(),
            created_at: clock::now(),
            expires_at: Some(clock::from_now(time::Duration::seconds(-1))),
            max_uses: None,
            uses: 0,
            group: None,
            revoked_at: None,
        };
        assert_eq!(
            refusal(&row, &clock::now()),
            Some(EnrollmentRefusal::Expired)
        );
        let later = EnrollmentTokenRow {
            expires_at: Some(clock::from_now(time::Duration::days(1))),
            ..row
        };
        assert_eq!(refusal(&later, &clock::now()), None);
    }
}
