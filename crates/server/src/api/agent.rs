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
    AgentMessage, ErrorBatch, ErrorBatchResponse, HeartbeatAck, NewCredential, RegisterRequest,
    RegisterResponse, ServerEvent, StatusReport, UpdateCheckResponse, WS_MAX_MESSAGE_BYTES,
    WS_READ_BUFFER_BYTES,
};
use serde::Deserialize;

use super::access::Peer;
use super::checks::CheckTurn;
use super::{ApiError, ApiJson, ApiQuery, AppState, check_field};
use crate::access::{auth, rotation};
use crate::clock;
use crate::db::Heartbeat;
use crate::intake::errors as error_reports;
use crate::intake::registration::{self, RegistrationError};
use crate::intake::{bounds, heartbeat};
use crate::logtext::{LogEvery, Untrusted, clip};
use crate::net::ratelimit::source_network;
use crate::release;
use crate::rollout::{group, offer};

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
/// The 409 text of a WebSocket refused as a clone (docs/protocol.md, "Agent identities").
pub const IDENTITY_CONFLICT: &str =
    "identity_conflict: another live agent holds this identity; register as a new agent";
const REVOKED: &str = "this agent was revoked by an operator; reset its identity to enrol it again";
/// At most one warning per interval about refused floods (with the count it stands for).
static REGISTRATIONS_THROTTLED: LogEvery = LogEvery::new(Duration::from_secs(10));
static REPORTS_THROTTLED: LogEvery = LogEvery::new(Duration::from_secs(10));
static HEARTBEATS_THROTTLED: LogEvery = LogEvery::new(Duration::from_secs(10));

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
        let credential = state
            .db()
            .agent_by_token_hash(&presented)
            .await?
            .ok_or(ApiError::Unauthorized(UNAUTHORIZED))?;
        if !auth::secrets_equal(&presented, &credential.token_hash) {
            return Err(ApiError::Unauthorized(UNAUTHORIZED));
        }
        super::access::authenticated_connection(parts);
        if credential.revoked {
            return Err(revoked());
        }
        if credential.pending {
            rotation::promote(state.db(), &credential.agent_id, &credential.token_hash).await?;
        }
        Ok(AuthedAgent {
            agent_id: credential.agent_id,
        })
    }
}

/// The answer to a revoked agent (docs/protocol.md, "Revocation"): 410, which it must not
/// answer by registering again.
fn revoked() -> ApiError {
    ApiError::Rejected {
        status: StatusCode::GONE,
        message: REVOKED.to_owned(),
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
    check_field("hostname", &request.hostname, MAX_SHORT_FIELD)?;
    check_field("platform", &request.platform, MAX_SHORT_FIELD)?;
    check_field("version", &request.version, MAX_SHORT_FIELD)?;
    if !release::PLATFORMS.contains(&request.platform.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "platform must be one of {}",
            release::PLATFORMS.join(", ")
        )));
    }
    let open = state.open_enrollment();
    let admitted =
        match registration::admit(state.db(), state.enrollment_token(), open, &request).await {
            Ok(admitted) => admitted,
            Err(refused) => {
                tracing::info!(%source, reason = %refused, "registration refused");
                return Err(refused.into());
            }
        };
    let enrolled = registration::enrol(state.db(), state.live(), &request, &admitted).await?;
    // The agent's own --group, else its enrollment token's (an operator's assignment later wins).
    let reported = request.group.as_deref().or(admitted.group());
    group::reported(state.db(), &enrolled.agent_id, reported).await?;
    tracing::info!(
        agent_id = %enrolled.agent_id,
        enrolled_by = admitted.token.as_deref().unwrap_or(""),
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
            RegistrationError::Refused(_) => ApiError::Forbidden(error.to_string()),
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
    if !record_heartbeat(&state, &agent.agent_id, &report, "http").await? {
        return Err(revoked()); // revoked since the credential was checked
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Stores one heartbeat, whichever way it came (`via`: `http` or `websocket`); `false` when the
/// agent was revoked (or removed) meanwhile.
async fn record_heartbeat(
    state: &AppState,
    agent_id: &str,
    report: &StatusReport,
    via: &'static str,
) -> Result<bool, ApiError> {
    let now = Instant::now();
    if let Err(retry_after) = state.heartbeats().try_take(&agent_id.to_owned(), 1, now) {
        if let Some(refused) = HEARTBEATS_THROTTLED.occurrence(now) {
            tracing::warn!(agent_id, via, refused, "heartbeats throttled");
        }
        return Err(ApiError::TooManyRequests {
            message: "too many heartbeats from this agent; retry later".into(),
            retry_after,
        });
    }
    check_field("version", &report.version, MAX_SHORT_FIELD)?;
    if let Some(network) = &report.network {
        check_field("network", network, MAX_SHORT_FIELD)?;
    }
    let metrics_json = stored_metrics(&report.metrics)?;
    let heartbeat = Heartbeat {
        version: &report.version,
        state: report.state.name(),
        metrics_json: &metrics_json,
        network: report.network.as_deref(),
    };
    if !heartbeat::record(state.db(), state.live(), agent_id, &heartbeat).await? {
        return Ok(false);
    }
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
    Ok(true)
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
        match record_heartbeat(&self.state, agent_id, &report, "websocket").await {
            Ok(true) => {}
            Ok(false) => {
                // Revoked through a replica that does not hold this socket (or by a command
                // without a bus): close it; the agent's next call is answered 410.
                tracing::info!(
                    agent_id,
                    "heartbeat of a revoked agent; closing its WebSocket"
                );
                self.state.hub().disconnect(agent_id);
                return None;
            }
            Err(error) => {
                // No answer: the agent sends the heartbeat again over HTTP and sees the error. A
                // throttled one was logged in summary already.
                if !matches!(error, ApiError::TooManyRequests { .. }) {
                    tracing::info!(agent_id, %error, "heartbeat over WebSocket not stored");
                }
                return None;
            }
        }
        let rotate_credential = match rotation::is_due(self.state.db(), agent_id).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(agent_id, %error, "cannot tell whether the credential is due for rotation");
                false
            }
        };
        let update = match release::parse_version(&report.version) {
            Some(current) => {
                let asker = offer::Asker {
                    agent_id,
                    current: &current,
                    platform: &self.platform,
                    utc_offset_minutes: report.utc_offset_minutes,
                };
                offer::offer_for(self.state.db(), asker, offer::OfferVia::Heartbeat).await
            }
            None => Ok(None),
        };
        match update {
            Ok(update) => Some(ServerEvent::HeartbeatAck(HeartbeatAck {
                update,
                rotate_credential,
            })),
            Err(error) => {
                tracing::warn!(agent_id, %error, "cannot look up an update for a heartbeat");
                Some(ServerEvent::HeartbeatAck(HeartbeatAck::default()))
            }
        }
    }
}

/// `POST /api/v1/agent/credential` with [`NewCredential`]: the credential this agent will use
/// next (credential rotation, docs/protocol.md); 204 stored, 400 malformed.
pub async fn credential(
    State(state): State<AppState>,
    agent: AuthedAgent,
    ApiJson(proposed): ApiJson<NewCredential>,
) -> Result<StatusCode, ApiError> {
    rotation::propose(state.db(), &agent.agent_id, &proposed.agent_token)
        .await?
        .map_err(|refused| ApiError::BadRequest(refused.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /api/v1/agent/update`.
#[derive(Debug, Deserialize)]
pub struct UpdateQuery {
    /// The agent's running version.
    pub version: String,
    /// The agent's platform.
    pub platform: String,
    /// Minutes the agent's clock is ahead of UTC (for maintenance windows on its clock).
    #[serde(default)]
    pub utc_offset_minutes: Option<i32>,
}

/// `GET /api/v1/agent/update?version=X&platform=P`: the release this agent should install.
pub async fn update_check(
    State(state): State<AppState>,
    _turn: CheckTurn,
    agent: AuthedAgent,
    ApiQuery(query): ApiQuery<UpdateQuery>,
) -> Result<axum::Json<UpdateCheckResponse>, ApiError> {
    check_field("platform", &query.platform, MAX_SHORT_FIELD)?;
    let current = release::parse_version(&query.version)
        .ok_or_else(|| ApiError::BadRequest("version must look like X.Y.Z".into()))?;
    state.db().touch(&agent.agent_id, &clock::now()).await?;
    let asker = offer::Asker {
        agent_id: &agent.agent_id,
        current: &current,
        platform: &query.platform,
        utc_offset_minutes: query.utc_offset_minutes,
    };
    let update = offer::offer_for(state.db(), asker, offer::OfferVia::Check).await?;
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
    reports.retain_mut(|report| match bounds::bound_report(report) {
        Ok(()) => true,
        Err(refused) => {
            tracing::debug!(agent_id = agent.agent_id, %refused, "report left out");
            false
        }
    });
    let now = Instant::now();
    if let Err(retry_after) = state.error_reports().try_take(&agent.agent_id, cost, now) {
        return Err(throttled_reports(
            &agent.agent_id,
            Some(cost),
            retry_after,
            now,
        ));
    }
    let per_agent = state.ingest().per_agent;
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

/// `GET /api/v1/agent/ws`: upgrades to the agent's event WebSocket, unless another live
/// connection holds the same identity, on this replica or another one, and answers a ping in
/// time ([`crate::events::probe`]): then 409 with [`IDENTITY_CONFLICT`] (a copy of the agent's
/// data folder; it registers anew). A connection that does not answer is dead (the agent was
/// killed and restarted) and the new one replaces it.
pub async fn websocket(
    State(state): State<AppState>,
    agent: AuthedAgent,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if state
        .cluster()
        .identity_is_live(state.hub(), &agent.agent_id)
        .await?
    {
        tracing::warn!(agent_id = %agent.agent_id, "a second live connection presents this identity; refused as a clone");
        return Err(ApiError::Conflict(IDENTITY_CONFLICT.to_owned()));
    }
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

/// The metrics as stored: the agent's numbers and `reported_at`, when the server received them
/// (the dashboard shows them "as of" then, apart from the last contact).
fn stored_metrics(metrics: &cms_protocol::Metrics) -> Result<String, ApiError> {
    let mut stored =
        serde_json::to_value(metrics).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let serde_json::Value::Object(fields) = &mut stored {
        fields.insert("reported_at".into(), clock::now().into());
    }
    Ok(stored.to_string())
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
