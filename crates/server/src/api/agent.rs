//! Handlers of the agent-facing API: registration, heartbeats, update checks, error reports
//! and the WebSocket upgrade.
//!
//! Every route but registration requires `Authorization: Bearer <agent token>`, checked by the
//! [`AuthedAgent`] extractor. Handlers must never log a token, trust an agent id sent in a body
//! (the token decides who is calling) or accept unbounded input.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use cms_protocol::{
    AgentMessage, ErrorBatch, ErrorBatchResponse, HeartbeatAck, RegisterRequest, RegisterResponse,
    ServerEvent, StatusReport, UpdateCheckResponse, WS_MAX_MESSAGE_BYTES, WS_READ_BUFFER_BYTES,
};
use serde::Deserialize;

use super::access::Peer;
use super::{ApiError, ApiJson, ApiQuery, AppState, check_field};
use crate::access::auth;
use crate::clock;
use crate::db::Heartbeat;
use crate::intake::errors as error_reports;
use crate::intake::heartbeat;
use crate::intake::registration::{self, RegistrationError};
use crate::logtext::{LogEvery, Untrusted, clip};
use crate::net::ratelimit::source_network;
use crate::rollout::{cohort, group, offer};

/// Most reports accepted in one batch; larger batches get 413.
pub const MAX_REPORTS_PER_BATCH: usize = 500;
/// Longest hostname, platform or version string accepted.
const MAX_SHORT_FIELD: usize = 255;
/// Longest `report_id` accepted.
const MAX_REPORT_ID: usize = 128;
/// Error report text fields are cut to these lengths (bytes) instead of failing the batch.
const MAX_KIND: usize = 128;
const MAX_MESSAGE: usize = 16 * 1024;

const UNAUTHORIZED: &str = "missing or invalid agent token";
/// At most one warning per interval about refused floods (with the count it stands for).
static REGISTRATIONS_THROTTLED: LogEvery = LogEvery::new(Duration::from_secs(10));
static REPORTS_THROTTLED: LogEvery = LogEvery::new(Duration::from_secs(10));

/// The agent a request's bearer token belongs to.
#[derive(Debug, Clone)]
pub struct AuthedAgent {
    /// Id of the calling agent.
    pub agent_id: String,
}

impl FromRequestParts<AppState> for AuthedAgent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = auth::bearer(&parts.headers).ok_or(ApiError::Unauthorized(UNAUTHORIZED))?;
        let presented = auth::hash_token(token);
        let (agent_id, stored) = state
            .db()
            .agent_by_token_hash(&presented)
            .await?
            .ok_or(ApiError::Unauthorized(UNAUTHORIZED))?;
        if !auth::secrets_equal(&presented, &stored) {
            return Err(ApiError::Unauthorized(UNAUTHORIZED));
        }
        Ok(AuthedAgent { agent_id })
    }
}

/// The source network a request counts for in the registration limit (the peer address the
/// listener recorded; one shared bucket if it recorded none).
fn source_of(peer: Peer) -> IpAddr {
    peer.0
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), source_network)
}

/// `POST /api/v1/agent/register`: enrolls a new agent and returns its id and token.
/// Rate-limited per source network (429 with `Retry-After`).
pub async fn register(
    State(state): State<AppState>,
    peer: Peer,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<axum::Json<RegisterResponse>, ApiError> {
    let source = source_of(peer);
    let now = Instant::now();
    if let Err(retry_after) = state.registrations().try_take(&source, 1, now) {
        if let Some(refused) = REGISTRATIONS_THROTTLED.occurrence(now) {
            tracing::warn!(%source, refused, retry_after_secs = retry_after.as_secs(), "registrations throttled");
        }
        return Err(ApiError::TooManyRequests {
            message: "too many registrations from this address; retry later".into(),
            retry_after,
        });
    }
    if let Err(refused) = registration::admit(state.enrollment_token(), &request) {
        tracing::info!(%source, "registration refused: bad enrollment token");
        return Err(refused.into());
    }
    check_field("hostname", &request.hostname, MAX_SHORT_FIELD)?;
    check_field("platform", &request.platform, MAX_SHORT_FIELD)?;
    check_field("version", &request.version, MAX_SHORT_FIELD)?;
    let enrolled = registration::enrol(state.db(), state.live(), &request).await?;
    group::reported(state.db(), &enrolled.agent_id, request.group.as_deref()).await?;
    tracing::info!(
        agent_id = %enrolled.agent_id,
        %source,
        hostname = %Untrusted(&request.hostname),
        platform = %Untrusted(&request.platform),
        version = %Untrusted(&request.version),
        "agent registered"
    );
    Ok(axum::Json(enrolled))
}

impl From<RegistrationError> for ApiError {
    fn from(error: RegistrationError) -> Self {
        match error {
            RegistrationError::BadEnrollmentToken => ApiError::Forbidden(error.to_string()),
            RegistrationError::Random(e) => ApiError::Internal(e.to_string()),
            RegistrationError::Database(e) => ApiError::Database(e),
        }
    }
}

/// `POST /api/v1/agent/status`: records a heartbeat (agents without a WebSocket, and older
/// agents, send it this way).
pub async fn status(
    State(state): State<AppState>,
    agent: AuthedAgent,
    ApiJson(report): ApiJson<StatusReport>,
) -> Result<StatusCode, ApiError> {
    record_heartbeat(&state, &agent.agent_id, &report, "http").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stores one heartbeat, whichever way it came (`via`: `http` or `websocket`).
async fn record_heartbeat(
    state: &AppState,
    agent_id: &str,
    report: &StatusReport,
    via: &'static str,
) -> Result<(), ApiError> {
    check_field("version", &report.version, MAX_SHORT_FIELD)?;
    if let Some(network) = &report.network {
        check_field("network", network, MAX_SHORT_FIELD)?;
    }
    let metrics_json =
        serde_json::to_string(&report.metrics).map_err(|e| ApiError::Internal(e.to_string()))?;
    let heartbeat = Heartbeat {
        version: &report.version,
        state: report.state.name(),
        metrics_json: &metrics_json,
        network: report.network.as_deref(),
    };
    heartbeat::record(state.db(), state.live(), agent_id, &heartbeat).await?;
    group::reported(state.db(), agent_id, report.group.as_deref()).await?;
    tracing::debug!(
        agent_id,
        via,
        state = %report.state,
        version = %Untrusted(&report.version),
        rss_bytes = report.metrics.rss_bytes,
        buffered_errors = report.metrics.buffered_errors,
        network = %Untrusted(report.network.as_deref().unwrap_or("")),
        "heartbeat"
    );
    Ok(())
}

/// The agent's messages on its WebSocket: heartbeats, answered with what the update check
/// would answer now.
#[derive(Debug)]
struct SocketMessages {
    state: AppState,
    /// The platform the agent registered with (the heartbeat does not repeat it).
    platform: String,
}

impl crate::ws::AgentMessages for SocketMessages {
    async fn opened(&self, agent_id: &str, connection_id: u64) {
        self.state
            .cluster()
            .connected(agent_id, connection_id)
            .await;
    }

    async fn closed(&self, agent_id: &str, connection_id: u64, shutdown: bool) {
        if shutdown {
            return; // The replica leaves with all its rows; the agent reconnects elsewhere.
        }
        self.state
            .cluster()
            .disconnected(agent_id, connection_id)
            .await;
        // The socket kept the agent online until now: record that as its last contact.
        if let Err(error) = self.state.db().touch(agent_id, &clock::now()).await {
            tracing::warn!(agent_id, %error, "cannot record disconnect time");
        }
    }

    async fn handle(&self, agent_id: &str, message: AgentMessage) -> Option<ServerEvent> {
        let AgentMessage::Heartbeat(report) = message;
        if let Err(error) = record_heartbeat(&self.state, agent_id, &report, "websocket").await {
            // No answer: the agent sends the heartbeat again over HTTP and sees the error.
            tracing::info!(agent_id, %error, "heartbeat over WebSocket not stored");
            return None;
        }
        let update = match cohort::parse_version(&report.version) {
            Some(current) => {
                offer::offer_for(
                    self.state.db(),
                    agent_id,
                    &current,
                    &self.platform,
                    offer::OfferVia::Heartbeat,
                )
                .await
            }
            None => Ok(None),
        };
        match update {
            Ok(update) => Some(ServerEvent::HeartbeatAck(HeartbeatAck { update })),
            Err(error) => {
                tracing::warn!(agent_id, %error, "cannot look up an update for a heartbeat");
                Some(ServerEvent::HeartbeatAck(HeartbeatAck::default()))
            }
        }
    }
}

/// Query of `GET /api/v1/agent/update`.
#[derive(Debug, Deserialize)]
pub struct UpdateQuery {
    /// The agent's running version.
    pub version: String,
    /// The agent's platform.
    pub platform: String,
}

/// `GET /api/v1/agent/update?version=X&platform=P`: the release this agent should install.
pub async fn update_check(
    State(state): State<AppState>,
    agent: AuthedAgent,
    ApiQuery(query): ApiQuery<UpdateQuery>,
) -> Result<axum::Json<UpdateCheckResponse>, ApiError> {
    check_field("platform", &query.platform, MAX_SHORT_FIELD)?;
    let current = cohort::parse_version(&query.version)
        .ok_or_else(|| ApiError::BadRequest("version must look like X.Y.Z".into()))?;
    state.db().touch(&agent.agent_id, &clock::now()).await?;
    let update = offer::offer_for(
        state.db(),
        &agent.agent_id,
        &current,
        &query.platform,
        offer::OfferVia::Check,
    )
    .await?;
    tracing::debug!(agent_id = agent.agent_id, current = %current, offered = ?update.as_ref().map(|u| &u.version), "update check");
    Ok(axum::Json(UpdateCheckResponse { update }))
}

/// `POST /api/v1/agent/errors`: stores a batch of reports, each `report_id` once.
/// Rate-limited per agent by report count (429 with `Retry-After`; the agent keeps the batch
/// and sends it again then); only the agent's newest reports are kept.
pub async fn errors(
    State(state): State<AppState>,
    agent: AuthedAgent,
    request: Request,
) -> Result<axum::Json<ErrorBatchResponse>, ApiError> {
    // An agent that is out of tokens is refused without parsing its body. The body is still
    // read (within the body limit), so the client gets the 429 instead of a broken pipe.
    let now = Instant::now();
    if let Err(retry_after) = state.error_reports().has_tokens(&agent.agent_id, now) {
        let _ = axum::body::to_bytes(request.into_body(), super::MAX_BODY_BYTES).await;
        return Err(throttled_reports(&agent.agent_id, None, retry_after, now));
    }
    let ApiJson(batch) = ApiJson::<ErrorBatch>::from_request(request, &state).await?;
    if batch.reports.len() > MAX_REPORTS_PER_BATCH {
        return Err(ApiError::PayloadTooLarge(format!(
            "at most {MAX_REPORTS_PER_BATCH} reports per batch"
        )));
    }
    let mut reports = batch.reports;
    for report in &mut reports {
        check_field("report_id", &report.report_id, MAX_REPORT_ID)?;
        truncate(&mut report.kind, MAX_KIND);
        truncate(&mut report.message, MAX_MESSAGE);
        truncate(&mut report.agent_version, MAX_SHORT_FIELD);
        truncate(&mut report.created_at, MAX_SHORT_FIELD);
    }
    let cost = u32::try_from(reports.len()).unwrap_or(u32::MAX);
    let now = Instant::now();
    if let Err(retry_after) = state.error_reports().try_take(&agent.agent_id, cost, now) {
        return Err(throttled_reports(
            &agent.agent_id,
            Some(cost),
            retry_after,
            now,
        ));
    }
    let per_agent = state.ingest().reports_per_agent;
    let stored = error_reports::store(
        state.db(),
        state.live(),
        &agent.agent_id,
        reports,
        per_agent,
    )
    .await?;
    let duplicates = cost.saturating_sub(stored);
    tracing::info!(
        agent_id = agent.agent_id,
        stored,
        duplicates,
        "error reports received"
    );
    Ok(axum::Json(ErrorBatchResponse { stored, duplicates }))
}

/// The 429 for a throttled batch (of `reports`, when it was read), logged at most once per
/// interval.
fn throttled_reports(
    agent_id: &str,
    reports: Option<u32>,
    retry_after: Duration,
    now: Instant,
) -> ApiError {
    if let Some(refused) = REPORTS_THROTTLED.occurrence(now) {
        tracing::warn!(
            agent_id,
            reports,
            refused,
            retry_after_secs = retry_after.as_secs(),
            "error reports throttled"
        );
    }
    ApiError::TooManyRequests {
        message: "too many error reports from this agent; keep them and retry later".into(),
        retry_after,
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &mut String, max: usize) {
    let end = clip(text, max).len();
    text.truncate(end);
}

/// `GET /api/v1/agent/ws`: upgrades to the agent's event WebSocket.
pub async fn websocket(
    State(state): State<AppState>,
    agent: AuthedAgent,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    state.db().touch(&agent.agent_id, &clock::now()).await?;
    let platform = state
        .db()
        .agent_platform(&agent.agent_id)
        .await?
        .ok_or(ApiError::Unauthorized(UNAUTHORIZED))?;
    let hub = state.hub().clone();
    let shutdown = state.shutdown().clone();
    let messages = SocketMessages {
        state: state.clone(),
        platform,
    };
    let upgrade = upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_message_size(WS_MAX_MESSAGE_BYTES)
        .max_frame_size(WS_MAX_MESSAGE_BYTES);
    Ok(upgrade.on_upgrade(move |socket| {
        crate::ws::run_socket(socket, agent.agent_id, hub, messages, shutdown)
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut text = "ééé".to_string();
        truncate(&mut text, 3);
        assert_eq!(text, "é");
    }
}
