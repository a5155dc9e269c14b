//! Handlers of the operator API (docs/CONTRACT.md, "Operator API") plus `/healthz`.
//!
//! Every route but `/healthz` takes an [`Operator`]: any valid token reads (viewer), and
//! `check-update` needs the operator role and is audited. Listings are keyset-paged
//! ([`super::paging`]) and built one at a time per listing slot, from the operators' own
//! database pool, so no listing can hold more than one page in memory or take a connection a
//! heartbeat needs. These handlers must never expose token hashes or other credentials.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cms_protocol::{AgentSummary, OperatorRole, ServerEvent, StoredError, UpdateRequired};
use serde::Deserialize;

use super::access::Operator;
use super::paging::{PageQuery, listing};
use super::{ApiError, ApiQuery, AppState};
use crate::access::Outcome;
use crate::clock;
use crate::cluster::Route;
use crate::db::{AgentKey, AgentRow, Db, ErrorKey, ReleaseKey, ReleaseRecord};
use crate::ws::NotifyError;

/// `GET /api/v1/agents`: one page of agents with their latest status and whether each is
/// online (its WebSocket is held by this or another live replica, or it was seen recently), by
/// hostname.
pub async fn agents(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(page): ApiQuery<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let summary = |(row, connected): (AgentRow, bool)| AgentSummary {
        online: state.is_online(connected, &row, now),
        agent_id: row.agent_id,
        hostname: row.hostname,
        platform: row.platform,
        version: row.version,
        state: row.state,
        last_seen: row.last_seen,
        network: row.network,
        revoked_at: row.revoked_at,
    };
    let fetch = |db: Db, after: AgentKey, limit| async move {
        let (rows, more) = db.list_agents(&after, limit).await?;
        let ids: Vec<&str> = rows.iter().map(|row| row.agent_id.as_str()).collect();
        let connected = db.connected_among(&ids, &clock::format_utc(now)).await?;
        let rows = rows.into_iter().map(|row| {
            let is_connected = connected.contains(&row.agent_id);
            (row, is_connected)
        });
        Ok((rows.collect(), more))
    };
    let key = |(row, _): &(AgentRow, bool)| row.key();
    listing(&state, &page, &uri, fetch, key, summary).await
}

/// Filter of `GET /api/v1/errors`.
#[derive(Debug, Deserialize)]
pub struct ErrorsFilter {
    /// Only this agent's reports.
    pub agent_id: Option<String>,
}

/// `GET /api/v1/errors[?agent_id=..]`: one page of stored reports, newest received first.
pub async fn errors(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(filter): ApiQuery<ErrorsFilter>,
    ApiQuery(page): ApiQuery<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let fetch = |db: Db, after: ErrorKey, limit| async move {
        db.list_errors(filter.agent_id.as_deref(), &after, limit)
            .await
    };
    let key_of = |(_, key): &(StoredError, ErrorKey)| key.clone();
    listing(&state, &page, &uri, fetch, key_of, |(stored, _)| stored).await
}

/// `GET /api/v1/releases`: one page of published releases, newest first (the fields of
/// `cms_protocol::ReleaseSummary` plus `length`, `sha256` and `rollout_percent`).
pub async fn releases(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(page): ApiQuery<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let fetch = |db: Db, after: ReleaseKey, limit| async move {
        db.list_releases_page(&after, limit).await
    };
    listing(&state, &page, &uri, fetch, ReleaseRecord::key, |r| r).await
}

/// The audit action of a check-update.
const CHECK_UPDATE: &str = "agent.check_update";

/// `POST /api/v1/agents/{agent_id}/check-update` (operator role): asks one agent, over its
/// WebSocket, to check for updates now, through whichever replica holds the socket. 202 sent,
/// 404 unknown agent, 409 no live WebSocket on any replica.
pub async fn check_update(
    State(state): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    const ACTION: &str = CHECK_UPDATE;
    let target = Some(agent_id.as_str());
    operator
        .require(&state, OperatorRole::Operator, ACTION, target)
        .await?;
    if !state.operator_db().agent_exists(&agent_id).await? {
        operator
            .audit(&state, ACTION, target, Outcome::Refused)
            .await;
        return Err(ApiError::NotFound("unknown agent".into()));
    }
    let event = ServerEvent::UpdateRequired(UpdateRequired::default());
    let via = match state.hub().notify(&agent_id, event) {
        Ok(()) => "this replica".to_owned(),
        Err(NotifyError::NotConnected) => {
            match state.cluster().route_check_update(&agent_id).await? {
                Route::Sent { replica_id } => replica_id,
                Route::NotConnected => {
                    return refuse(&state, &operator, &agent_id, NotifyError::NotConnected).await;
                }
            }
        }
        Err(error @ NotifyError::QueueFull) => {
            return refuse(&state, &operator, &agent_id, error).await;
        }
    };
    operator.audit(&state, ACTION, target, Outcome::Ok).await;
    tracing::info!(agent_id, via, "update check requested over WebSocket");
    let body = serde_json::json!({ "status": "sent" });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// A check-update that reached no WebSocket: audited as refused, 409.
async fn refuse(
    state: &AppState,
    operator: &Operator,
    agent_id: &str,
    error: NotifyError,
) -> Result<Response, ApiError> {
    operator
        .audit(state, CHECK_UPDATE, Some(agent_id), Outcome::Refused)
        .await;
    Err(ApiError::Conflict(error.to_string()))
}

/// `GET /healthz`: 200 when the database answers (with this replica's package streams and
/// update-check line: counts now, limit, peak, refused), 503 otherwise. Public; it uses the
/// operators' pool, so a flood of health checks cannot take agents' connections.
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.operator_db().ping().await {
        Ok(()) => {
            let body = serde_json::json!({
                "status": "ok",
                "downloads": state.download_counts(),
                "update_checks": state.check_counts(),
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "health check failed");
            let body = serde_json::json!({ "error": "database unavailable" });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
