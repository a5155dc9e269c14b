//! Handlers of the operator API (docs/CONTRACT.md, "Operator API") plus `check-update` and `/healthz`.
//!
//! Read-mostly views of the fleet. These handlers must never expose token hashes or other
//! credentials, and never return unbounded result sets (error listings are capped).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cms_protocol::{AgentSummary, ServerEvent, StoredError, UpdateRequired};
use serde::Deserialize;

use super::{ApiError, ApiQuery, AppState};
use crate::clock;
use crate::cluster::Route;
use crate::db::ReleaseRecord;
use crate::ws::NotifyError;

/// Default and largest number of error reports one listing returns.
pub const DEFAULT_ERROR_LIMIT: i64 = 1000;
/// Upper bound of `?limit=` on the error listing.
pub const MAX_ERROR_LIMIT: i64 = 10_000;

/// `GET /api/v1/agents`: every agent with its latest status and whether it is online (its
/// WebSocket is held by this or another live replica, or it was seen recently).
pub async fn agents(State(state): State<AppState>) -> Result<Json<Vec<AgentSummary>>, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let rows = state.db().list_agents().await?;
    let connected = state.cluster().connected_agents().await?;
    let agents = rows
        .into_iter()
        .map(|row| {
            let online = state.hub().is_connected(&row.agent_id)
                || connected.contains(&row.agent_id)
                || clock::is_within(&row.last_seen, state.offline_after(), now);
            AgentSummary {
                agent_id: row.agent_id,
                hostname: row.hostname,
                platform: row.platform,
                version: row.version,
                state: row.state,
                last_seen: row.last_seen,
                online,
            }
        })
        .collect();
    Ok(Json(agents))
}

/// Query of `GET /api/v1/errors`.
#[derive(Debug, Deserialize)]
pub struct ErrorsQuery {
    /// Only this agent's reports.
    pub agent_id: Option<String>,
    /// At most this many reports (default 1000, at most 10000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/errors[?agent_id=..][&limit=..]`: stored reports, newest first.
pub async fn errors(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ErrorsQuery>,
) -> Result<Json<Vec<StoredError>>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(DEFAULT_ERROR_LIMIT)
        .clamp(1, MAX_ERROR_LIMIT);
    let errors = state
        .db()
        .list_errors(query.agent_id.as_deref(), limit)
        .await?;
    Ok(Json(errors))
}

/// `GET /api/v1/releases`: every published release, newest first (the fields of
/// `cms_protocol::ReleaseSummary` plus `length`, `sha256` and `rollout_percent`).
pub async fn releases(State(state): State<AppState>) -> Result<Json<Vec<ReleaseRecord>>, ApiError> {
    Ok(Json(state.db().list_releases().await?))
}

/// `POST /api/v1/agents/{agent_id}/check-update`: asks one agent, over its WebSocket, to check
/// for updates now, through whichever replica holds the socket. 202 sent, 404 unknown agent,
/// 409 no live WebSocket on any replica.
pub async fn check_update(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    if !state.db().agent_exists(&agent_id).await? {
        return Err(ApiError::NotFound(format!("unknown agent {agent_id}")));
    }
    let event = ServerEvent::UpdateRequired(UpdateRequired { version: None });
    let via = match state.hub().notify(&agent_id, event) {
        Ok(()) => "this replica".to_owned(),
        Err(NotifyError::NotConnected) => {
            match state.cluster().route_check_update(&agent_id).await? {
                Route::Sent { replica_id } => replica_id,
                Route::NotConnected => {
                    return Err(ApiError::Conflict(NotifyError::NotConnected.to_string()));
                }
            }
        }
        Err(error @ NotifyError::QueueFull) => return Err(ApiError::Conflict(error.to_string())),
    };
    tracing::info!(agent_id, via, "update check requested over WebSocket");
    let body = serde_json::json!({ "status": "sent" });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /healthz`: 200 when the database answers, 503 otherwise.
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.db().ping().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response(),
        Err(error) => {
            tracing::warn!(%error, "health check failed");
            let body = serde_json::json!({ "error": "database unavailable" });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
