//! Dashboard sessions: a sign-in with an operator token opens one, a cookie carries its id.
//!
//! The session id is 256 random bits; only its SHA-256 is stored, with the hash of the token
//! that opened it, so revoking the token ends its sessions at once. A session lasts
//! [`SESSION_LIFETIME`]. The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/`, and, when the
//! request came over HTTPS (the server's own TLS, an `https://` `--public-url`, or a trusted
//! proxy's `X-Forwarded-Proto`), `Secure` and named [`SECURE_SESSION_COOKIE`]. Requests that change state and are authenticated by the
//! cookie must carry the [`CSRF_HEADER`] header (a cross-site page cannot set it without a
//! CORS preflight, which this server never grants). This module must never log or return a
//! session id except in the cookie it sets.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};

use crate::access;
use crate::access::auth;
use crate::clock;
use crate::db::{Db, DbError, OperatorTokenRow};

/// Name of the session cookie over plain HTTP.
pub const SESSION_COOKIE: &str = "cms_session";
/// Name of the `Secure` session cookie (the `__Host-` prefix binds it to this host and path).
pub const SECURE_SESSION_COOKIE: &str = "__Host-cms_session";
/// How long a session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Header every state-changing request authenticated by the cookie must carry (any value).
pub const CSRF_HEADER: &str = "x-cms-csrf";

/// A session just opened: the id for the cookie and who it belongs to.
#[derive(Debug)]
pub struct OpenedSession {
    /// The session id (goes into the cookie only).
    pub id: String,
    /// The token it was opened with.
    pub operator: OperatorTokenRow,
}

/// Opens a session for `token`; `None` when the token is not a valid operator token.
pub async fn open(db: &Db, token: &str) -> Result<Option<OpenedSession>, SessionError> {
    let Some(operator) = access::authenticate(db, token).await? else {
        return Ok(None);
    };
    let id = auth::mint_token().map_err(|e| SessionError::Random(e.to_string()))?;
    let now = time::OffsetDateTime::now_utc();
    let lifetime = time::Duration::try_from(SESSION_LIFETIME).unwrap_or(time::Duration::HOUR);
    let swept = db.sweep_sessions(&clock::format_utc(now)).await?;
    if swept > 0 {
        tracing::debug!(swept, "ended sessions removed");
    }
    db.insert_session(
        &auth::hash_token(&id),
        &operator.token_hash,
        &clock::format_utc(now),
        &clock::format_utc(now + lifetime),
    )
    .await?;
    Ok(Some(OpenedSession { id, operator }))
}

/// The operator of the session whose id is `id`, while it lasts and its token exists.
pub async fn operator(db: &Db, id: &str) -> Result<Option<OperatorTokenRow>, DbError> {
    db.session_operator(&auth::hash_token(id), &clock::now())
        .await
}

/// Ends the session whose id is `id`.
pub async fn close(db: &Db, id: &str) -> Result<(), DbError> {
    db.delete_session(&auth::hash_token(id)).await
}

/// The session id in the request's cookies, if any.
pub fn cookie_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SECURE_SESSION_COOKIE || *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Whether a request signed in by cookie may not go on: it can change state (not `GET` or
/// `HEAD`) and lacks the [`CSRF_HEADER`], so another site may have made a browser send it.
pub fn lacks_csrf_header(method: &Method, headers: &HeaderMap) -> bool {
    let safe = matches!(*method, Method::GET | Method::HEAD);
    !safe && !headers.contains_key(CSRF_HEADER)
}

/// Whether the request came over HTTPS: the server's own TLS or `https://` public address
/// (`configured`), or a trusted proxy that said so (`forwarded`, see `net/proxy.rs`).
pub fn is_https(configured: bool, forwarded: bool) -> bool {
    configured || forwarded
}

/// The `Set-Cookie` value that stores `id`, or clears the cookie when `id` is `None`.
pub fn set_cookie(id: Option<&str>, secure: bool) -> HeaderValue {
    let (value, max_age) = match id {
        Some(id) => (id, SESSION_LIFETIME.as_secs()),
        None => ("", 0),
    };
    let (name, secure) = if secure {
        (SECURE_SESSION_COOKIE, "; Secure")
    } else {
        (SESSION_COOKIE, "")
    };
    let cookie =
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The random source failed.
    #[error("operating system random source failed: {0}")]
    Random(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cms_session=abc; b=2"),
        );
        assert_eq!(cookie_session(&headers), Some("abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-cms_session=def"),
        );
        assert_eq!(cookie_session(&headers), Some("def"));
        headers.insert(header::COOKIE, HeaderValue::from_static("cms_session="));
        assert_eq!(cookie_session(&headers), None);
        assert_eq!(cookie_session(&HeaderMap::new()), None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_https() {
        let plain = set_cookie(Some("abc"), false);
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let secure = set_cookie(Some("abc"), true);
        let secure = secure.to_str().unwrap();
        assert!(secure.starts_with("__Host-cms_session=abc;") && secure.ends_with("; Secure"));
        assert!(
            set_cookie(None, false)
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        assert!(!is_https(false, false));
        assert!(is_https(true, false) && is_https(false, true));
    }

    #[tokio::test]
    async fn sessions_end_with_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_for_command(dir.path(), None).await.unwrap();
        let actor = access::Actor::command_line("test");
        let role = cms_protocol::OperatorRole::Viewer;
        let created = access::create_token(&db, "web", role, &actor)
            .await
            .unwrap();
        assert!(open(&db, "cmso_wrong").await.unwrap().is_none());
        let session = open(&db, &created.token).await.unwrap().unwrap();
        let found = operator(&db, &session.id).await.unwrap().unwrap();
        assert_eq!((found.name.as_str(), found.role), ("web", role));
        access::revoke_token(&db, "web", &actor).await.unwrap();
        access::create_token(&db, "web", role, &actor)
            .await
            .unwrap();
        assert!(
            operator(&db, &session.id).await.unwrap().is_none(),
            "revoked"
        );
        let again = open(
            &db,
            &access::create_token(&db, "other", role, &actor)
                .await
                .unwrap()
                .token,
        )
        .await
        .unwrap()
        .unwrap();
        close(&db, &again.id).await.unwrap();
        assert!(
            operator(&db, &again.id).await.unwrap().is_none(),
            "signed out"
        );
        db.close().await;
    }
}
