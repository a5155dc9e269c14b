//! The operator extractor: who is calling the operator API, and whether their role suffices.
//!
//! Every operator route takes an [`Operator`], which requires `Authorization: Bearer <operator
//! token>` or the dashboard's session cookie (401 without a valid one; a state-changing request
//! by cookie also needs the CSRF header of `crate::access::session`, 403 without it). A handler then calls [`Operator::require`] with the role
//! the route needs: a lower role is answered 403 and the attempt is audited. This module must
//! never accept an agent token (agent and operator tokens live in separate tables) and never
//! log a token.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use cms_protocol::OperatorRole;

use super::{ApiError, AppState};
use crate::access::{self, Actor, Outcome, auth, session};
use crate::db::OperatorTokenRow;
use crate::net::budget::SlotHandle;
use crate::net::proxy::Client;

/// The authenticated caller of an operator route.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Token name and peer address, as the audit log records them.
    pub actor: Actor,
    /// What the token may do.
    pub role: OperatorRole,
}

const UNAUTHORIZED: &str = "missing or invalid operator token";

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let source = peer_address(parts);
        let row = match auth::bearer(&parts.headers) {
            Some(token) => access::authenticate(state.operator_db(), token).await?,
            None => session_operator(parts, state).await?,
        };
        let Some(row) = row else {
            tracing::debug!(
                source,
                "operator request refused: no valid operator token or session"
            );
            return Err(ApiError::Unauthorized(UNAUTHORIZED));
        };
        // Not marked authenticated for the connection budget: only agents' connections are kept
        // when the budget is short, so a viewer token cannot hold the budget with keep-alive
        // connections (a dashboard reconnects; its live feeds are capped on their own).
        Ok(Operator {
            actor: Actor {
                name: row.name,
                source,
            },
            role: row.role,
        })
    }
}

/// The operator of the request's session cookie. A request that can change state must also
/// carry the CSRF header (403 without it), so another site cannot make a browser send it.
async fn session_operator(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<OperatorTokenRow>, ApiError> {
    let Some(id) = session::cookie_session(&parts.headers) else {
        return Err(ApiError::Unauthorized(UNAUTHORIZED));
    };
    if session::lacks_csrf_header(&parts.method, &parts.headers) {
        return Err(ApiError::Forbidden(format!(
            "a request signed in by cookie that changes state needs the {} header",
            session::CSRF_HEADER
        )));
    }
    Ok(session::operator(state.operator_db(), id).await?)
}

impl Operator {
    /// Refuses (403, audited as `denied`) unless the caller's role is at least `needed`.
    pub async fn require(
        &self,
        state: &AppState,
        needed: OperatorRole,
        action: &str,
        target: Option<&str>,
    ) -> Result<(), ApiError> {
        if self.role >= needed {
            return Ok(());
        }
        self.audit(state, action, target, Outcome::Denied).await;
        Err(ApiError::Forbidden(format!(
            "this needs the {needed} role; the token has {}",
            self.role
        )))
    }

    /// Records the outcome of an action in the audit log.
    pub async fn audit(
        &self,
        state: &AppState,
        action: &str,
        target: Option<&str>,
        outcome: Outcome,
    ) {
        access::audit(state.operator_db(), &self.actor, action, target, outcome).await;
    }
}

/// Whether the credential of a request with `parts` (bearer token or session cookie) is still
/// valid: a live feed asks this again and again, and ends when it is not.
pub async fn still_valid(parts: &Parts, state: &AppState) -> Result<bool, ApiError> {
    let row = match auth::bearer(&parts.headers) {
        Some(token) => access::authenticate(state.operator_db(), token).await?,
        None => session_operator(parts, state).await?,
    };
    Ok(row.is_some())
}

/// Tells the connection budget that the request's connection authenticated (it then no longer
/// counts as unauthenticated; see `net/budget.rs`).
pub fn authenticated_connection(parts: &Parts) {
    if let Some(slot) = parts.extensions.get::<SlotHandle>() {
        slot.authenticated();
    }
}

/// The peer's IP address as the listener recorded it (`unknown` when it did not).
pub fn peer_address(parts: &Parts) -> String {
    Peer::of(parts)
        .0
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The client's IP address (the peer's, or the one a trusted proxy forwarded), when the
/// listener recorded one (it always does; requests built in process may not).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl Peer {
    fn of(parts: &Parts) -> Peer {
        let forwarded = parts.extensions.get::<Client>().map(|client| client.addr);
        Peer(forwarded.or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer::of(parts))
    }
}
