//! Handlers of the operator dashboard: the page and its files, sign-in and sign-out, and the
//! JSON the page reads (fleet counts, the agent list, one agent, error groups, rollouts), the
//! rollout actions and the live event stream (docs/protocol.md, "Dashboard").
//!
//! Every route but the page, its files and the sign-in takes an [`Operator`] (a bearer token or
//! the session cookie); rollout actions need the operator role. The agent list is searched,
//! sorted and paged in the database with a bounded offset. These handlers must never return a
//! token, a token hash or a session id except in the session cookie.

pub mod assets;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cms_protocol::{OperatorRole, StoredError, UpdateStep};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use self::assets::{Asset, CONTENT_SECURITY_POLICY};
use super::access::{Operator, still_valid};
use super::{ApiError, ApiJson, ApiQuery, AppState};
use crate::access::session;
use crate::clock;
use crate::db::{
    AgentSearch, AgentSort, DatabaseShed, ErrorKey, FailureReason, FleetAgent, FleetCounts,
    LatestUpdate, UpdateFilter,
};
use crate::events::live::{self, LiveEvent};
use crate::net::proxy::Client;
use crate::rollout::control::{self, RolloutAction, RolloutError};

/// An agent not seen for this long counts as missing.
pub const MISSING_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest offset into the agent list (deeper pages need a narrower search).
pub const MAX_OFFSET: i64 = 100_000;
/// Largest page of the agent list.
pub const MAX_AGENT_PAGE: i64 = 500;
/// Longest search text.
const MAX_SEARCH_LEN: usize = 200;
/// Error reports and update events shown on an agent's page.
const AGENT_PAGE_ITEMS: i64 = 50;
/// Error groups listed at most.
const MAX_ERROR_GROUPS: i64 = 500;
/// How often an idle event stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn serve_asset(asset: Asset) -> Response {
    let headers = [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, asset.body).into_response()
}

/// `GET /`: the dashboard page.
pub async fn index() -> Response {
    serve_asset(assets::INDEX)
}

/// `GET /assets/{name}`: the page's script and style sheet.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    assets::asset(&name)
        .map(serve_asset)
        .ok_or_else(|| ApiError::NotFound("no such file".into()))
}

/// Body of `POST /api/v1/session`.
#[derive(Debug, Deserialize)]
pub struct SignIn {
    /// An operator token.
    pub token: String,
}

/// Who is signed in.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: OperatorRole,
}

/// `POST /api/v1/session`: opens a session for a valid operator token and sets its cookie.
pub async fn sign_in(
    State(state): State<AppState>,
    client: Option<Extension<Client>>,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    let opened = session::open(state.operator_db(), body.token.trim())
        .await
        .map_err(|e| match e {
            session::SessionError::Database(db) => ApiError::Database(db),
            other => ApiError::Internal(other.to_string()),
        })?;
    let Some(opened) = opened else {
        tracing::info!("dashboard sign-in refused: no valid operator token");
        return Err(ApiError::Unauthorized("not a valid operator token"));
    };
    tracing::info!(operator = opened.operator.name, "dashboard session opened");
    let cookie = session::set_cookie(Some(&opened.id), is_https(&state, client));
    let who = WhoAmI {
        name: opened.operator.name,
        role: opened.operator.role,
    };
    Ok(([(header::SET_COOKIE, cookie)], Json(who)).into_response())
}

fn is_https(state: &AppState, client: Option<Extension<Client>>) -> bool {
    let forwarded = client.is_some_and(|Extension(client)| client.forwarded_https);
    session::is_https(state.serves_tls() || state.public_https(), forwarded)
}

/// `GET /api/v1/session`: who the caller is.
pub async fn whoami(operator: Operator) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: operator.actor.name,
        role: operator.role,
    })
}

/// `DELETE /api/v1/session`: ends the cookie's session and clears the cookie; like every
/// cookie-authenticated change it needs the CSRF header (403 without it).
pub async fn sign_out(
    State(state): State<AppState>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if session::lacks_csrf_header(&axum::http::Method::DELETE, &headers) {
        return Err(ApiError::Forbidden(format!(
            "signing out needs the {} header",
            session::CSRF_HEADER
        )));
    }
    if let Some(id) = session::cookie_session(&headers) {
        session::close(state.operator_db(), id).await?;
    }
    let cookie = session::set_cookie(None, is_https(&state, client));
    Ok(([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response())
}

/// `GET /api/v1/fleet`: counts online / offline / missing, by state, version and platform.
pub async fn fleet(
    State(state): State<AppState>,
    _operator: Operator,
) -> Result<Response, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let ago = |window: Duration| {
        clock::format_utc(now - time::Duration::try_from(window).unwrap_or(time::Duration::ZERO))
    };
    let counts = state
        .operator_db()
        .fleet_counts(
            &ago(state.offline_after()),
            &ago(MISSING_AFTER),
            &clock::format_utc(now),
        )
        .await?;
    let shed = state.operator_db().last_shed().await?;
    Ok(Json(FleetOverview { counts, shed }).into_response())
}

/// `GET /api/v1/fleet`: the fleet's counts and, once the size guard has shed reports, the
/// latest shed.
#[derive(Debug, Serialize)]
struct FleetOverview {
    #[serde(flatten)]
    counts: FleetCounts,
    /// The newest shed of the database size guard (`--max-database-mb`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    shed: Option<DatabaseShed>,
}

/// Query of `GET /api/v1/fleet/agents`.
#[derive(Debug, Default, Deserialize)]
pub struct FleetQuery {
    /// Part of a hostname or agent id.
    #[serde(default)]
    pub q: String,
    /// Only agents in this state.
    pub state: Option<String>,
    /// Only agents in this group.
    pub group: Option<String>,
    /// Only agents that reported this release version (with `platform`)...
    pub release: Option<String>,
    /// ... of this platform (needed with `release`).
    pub platform: Option<String>,
    /// ... and reached this step of it (`failed`, `rolled_back`, ...).
    pub step: Option<String>,
    /// Sort column.
    #[serde(default)]
    pub sort: AgentSort,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    /// Rows to skip (at most [`MAX_OFFSET`]).
    #[serde(default)]
    pub offset: i64,
    /// Rows wanted (1 to [`MAX_AGENT_PAGE`], default 50).
    pub limit: Option<i64>,
}

/// One row of the agent list.
#[derive(Debug, Serialize)]
pub struct FleetRow {
    #[serde(flatten)]
    agent: FleetAgent,
    online: bool,
    /// With a `release` filter: the agent's latest report of that release, with its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    update: Option<LatestUpdate>,
}

/// A page of the agent list.
#[derive(Debug, Serialize)]
pub struct FleetPage {
    /// Agents matching the search.
    pub total: i64,
    /// Rows skipped.
    pub offset: i64,
    /// The rows.
    pub items: Vec<FleetRow>,
}

/// `GET /api/v1/fleet/agents?q=&state=&group=&release=&platform=&step=&sort=&order=&offset=&limit=`:
/// one page of the agent list, searched, sorted and paged by the database; with `release`, only
/// the agents that reported that release (that step of it, with `step`), each with its latest
/// report (of that step) and reason.
pub async fn fleet_agents(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<FleetQuery>,
) -> Result<Response, ApiError> {
    if !(0..=MAX_OFFSET).contains(&query.offset) {
        return Err(ApiError::BadRequest(format!(
            "offset must be between 0 and {MAX_OFFSET}; narrow the search to go deeper"
        )));
    }
    if query.q.len() > MAX_SEARCH_LEN {
        return Err(ApiError::BadRequest(format!(
            "q is longer than {MAX_SEARCH_LEN} bytes"
        )));
    }
    let update = update_filter(query.release, query.platform, query.step)?;
    let search = AgentSearch {
        text: query.q.trim().to_owned(),
        state: query.state.filter(|s| !s.is_empty()),
        group: query.group.filter(|g| !g.is_empty()),
        update,
        sort: query.sort,
        descending: query.order.as_deref() == Some("desc"),
        offset: query.offset,
        limit: query.limit.unwrap_or(50).clamp(1, MAX_AGENT_PAGE),
    };
    let _slot = state.listing_slot().await?;
    let (agents, total) = state.operator_db().search_agents(&search).await?;
    let ids: Vec<&str> = agents.iter().map(|a| a.agent.agent_id.as_str()).collect();
    let now = time::OffsetDateTime::now_utc();
    let connected = state
        .operator_db()
        .connected_among(&ids, &clock::format_utc(now))
        .await?;
    let mut updates = match &search.update {
        Some(filter) => state.operator_db().latest_updates(filter, &ids).await?,
        None => Vec::new(),
    };
    let items = agents
        .into_iter()
        .map(|agent| FleetRow {
            online: state.is_online(connected.contains(&agent.agent.agent_id), &agent.agent, now),
            update: updates
                .iter()
                .position(|u| u.agent_id == agent.agent.agent_id)
                .map(|i| updates.swap_remove(i)),
            agent,
        })
        .collect();
    Ok(Json(FleetPage {
        total,
        offset: search.offset,
        items,
    })
    .into_response())
}

/// The release filter of the agent list: none without `release`; 400 for a bad version, no
/// platform, or an unknown step.
fn update_filter(
    release: Option<String>,
    platform: Option<String>,
    step: Option<String>,
) -> Result<Option<UpdateFilter>, ApiError> {
    let Some(release) = release.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let version = crate::release::parse_version(&release)
        .ok_or_else(|| ApiError::BadRequest(format!("release {release:?} is not a version")))?;
    let step = step.filter(|s| !s.is_empty());
    if let Some(step) = &step
        && UpdateStep::from_name(step).is_none()
    {
        return Err(ApiError::BadRequest(format!(
            "step {step:?} is not an update step"
        )));
    }
    let platform = platform
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::BadRequest("release needs its platform".into()))?;
    Ok(Some(UpdateFilter {
        version: version.to_string(),
        platform,
        step,
    }))
}

/// `GET /api/v1/fleet/agents/{agent_id}`: an agent's page.
pub async fn agent_page(
    State(state): State<AppState>,
    _operator: Operator,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    let db = state.operator_db();
    let Some(agent) = db.fleet_agent(&agent_id).await? else {
        return Err(ApiError::NotFound("unknown agent".into()));
    };
    let now = time::OffsetDateTime::now_utc();
    let connected = db
        .connected_among(&[agent_id.as_str()], &clock::format_utc(now))
        .await?;
    let metrics: Value = agent
        .metrics
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    let (errors, _) = db
        .list_errors(Some(&agent_id), &ErrorKey::default(), AGENT_PAGE_ITEMS)
        .await?;
    let errors: Vec<StoredError> = errors.into_iter().map(|(stored, _)| stored).collect();
    let body = serde_json::json!({
        "online": state.is_online(connected.contains(&agent_id), &agent.agent, now),
        "metrics": metrics,
        "versions": db.version_history(&agent_id).await?,
        "errors": errors,
        "updates": db.agent_update_events(&agent_id, AGENT_PAGE_ITEMS).await?,
        "agent": agent,
    });
    Ok(Json(body).into_response())
}

/// Reasons listed per release.
const MAX_FAILURE_REASONS: i64 = 5;

/// `GET /api/v1/rollouts/{platform}/{version}/reasons`: the most given reasons of a release's
/// failures and rollbacks, each with how many agents gave it.
pub async fn failure_reasons(
    State(state): State<AppState>,
    _operator: Operator,
    Path((platform, version)): Path<(String, String)>,
) -> Result<Json<Vec<FailureReason>>, ApiError> {
    let release = (version.as_str(), platform.as_str());
    let reasons = state
        .operator_db()
        .failure_reasons(release, MAX_FAILURE_REASONS)
        .await?;
    Ok(Json(reasons))
}

/// `GET /api/v1/error-groups`: reports grouped by kind and message signature.
pub async fn error_groups(
    State(state): State<AppState>,
    _operator: Operator,
) -> Result<Response, ApiError> {
    let groups = state.operator_db().error_groups(MAX_ERROR_GROUPS).await?;
    Ok(Json(groups).into_response())
}

/// Query of `GET /api/v1/rollouts`.
#[derive(Debug, Default, Deserialize)]
pub struct RolloutsQuery {
    /// Only rollouts the halt rule paused (for the banner).
    #[serde(default)]
    pub halted: bool,
}

/// `GET /api/v1/rollouts[?halted=true]`: every release's rollout control and funnel, newest
/// first (or only the halted ones).
pub async fn rollouts(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<RolloutsQuery>,
) -> Result<Response, ApiError> {
    let _slot = state.listing_slot().await?;
    let listed = control::list(state.operator_db(), query.halted).await?;
    Ok(Json(listed).into_response())
}

/// `POST /api/v1/rollouts/{platform}/{version}` (operator role): set, pause or resume. Every
/// replica's release watcher pushes a widened rollout to the agents it now includes (told by
/// the event bus on PostgreSQL, by polling on SQLite); heartbeat answers and update checks
/// follow the change at once.
pub async fn rollout_action(
    State(state): State<AppState>,
    operator: Operator,
    Path((platform, version)): Path<(String, String)>,
    ApiJson(action): ApiJson<RolloutAction>,
) -> Result<Response, ApiError> {
    let target = format!("{version}/{platform}");
    operator
        .require(
            &state,
            OperatorRole::Operator,
            action.audit_name(),
            Some(&target),
        )
        .await?;
    let db = state.operator_db();
    let bus = state.cluster().bus();
    let status = control::apply(db, bus, &operator.actor, &version, &platform, action).await?;
    let rollout = &status.rollout;
    state.live().publish(LiveEvent::RolloutChanged {
        version: rollout.version.clone(),
        platform: rollout.platform.clone(),
    });
    Ok(Json(status).into_response())
}

/// `GET /api/v1/events`: the live feed as server-sent events, until the server stops or the
/// caller's token or session ends (checked again every `--live-feed-recheck-secs`, 30 s). At
/// most [`live::MAX_FEEDS_PER_TOKEN`] per token and [`live::MAX_FEEDS`] in all (429/503). A
/// refused feed's connection is closed after the answer: its token authenticated it, so the
/// connection budget would never close it to make room, and one token's refused feeds could
/// otherwise hold every connection the agents need.
pub async fn events(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
) -> Response {
    let slot = match state.feeds().admit(&operator.actor.name) {
        Ok(slot) => slot,
        Err(refused) => {
            let mut answer = feed_refusal(refused).into_response();
            answer.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return answer;
        }
    };
    tracing::debug!(operator = operator.actor.name, "live feed opened");
    let (mut parts, ()) = axum::http::Request::new(()).into_parts();
    parts.headers = headers;
    let feed = Feed {
        receiver: state.live().subscribe(),
        recheck: tokio::time::interval_at(
            tokio::time::Instant::now() + state.live_recheck(),
            state.live_recheck(),
        ),
        state,
        parts,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let sse = feed.next().await?;
        Some((Ok::<Event, Infallible>(sse), feed))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// The answer to a feed over the caps: 503 when all feeds are taken, 429 when the token's are.
fn feed_refusal(refused: live::FeedRefusal) -> ApiError {
    let message = refused.to_string();
    let retry_after = Duration::from_secs(30);
    match refused {
        live::FeedRefusal::Full => ApiError::Unavailable {
            message,
            retry_after,
        },
        live::FeedRefusal::TokenFull => ApiError::TooManyRequests {
            message,
            retry_after,
        },
    }
}

/// One open live feed: its events, its credential checked again on `recheck`, its slot.
struct Feed {
    receiver: tokio::sync::broadcast::Receiver<LiveEvent>,
    recheck: tokio::time::Interval,
    state: AppState,
    parts: axum::http::request::Parts,
    _slot: live::FeedSlot,
}

impl Feed {
    /// The next event to send; `None` ends the feed (shutdown, credential gone).
    async fn next(&mut self) -> Option<Event> {
        loop {
            let received = tokio::select! {
                () = self.state.shutdown().cancelled() => return None,
                _ = self.recheck.tick() => {
                    if !matches!(still_valid(&self.parts, &self.state).await, Ok(true)) {
                        tracing::debug!("live feed closed: its token or session ended");
                        return None;
                    }
                    continue;
                }
                received = self.receiver.recv() => received,
            };
            return match received {
                Ok(event) => {
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    Some(Event::default().event(event.name()).data(data))
                }
                Err(RecvError::Lagged(skipped)) => {
                    Some(Event::default().event("lagged").data(skipped.to_string()))
                }
                Err(RecvError::Closed) => None,
            };
        }
    }
}

/// A refused rollout change is the client's (400, or 404 for an unknown release); a database
/// failure is the server's.
impl From<RolloutError> for ApiError {
    fn from(error: RolloutError) -> Self {
        match error {
            RolloutError::Invalid(message) => ApiError::BadRequest(message),
            unknown @ RolloutError::UnknownRelease { .. } => {
                ApiError::NotFound(unknown.to_string())
            }
            RolloutError::Database(db) => ApiError::Database(db),
        }
    }
}
