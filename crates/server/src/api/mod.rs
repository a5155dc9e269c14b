//! The HTTP surface: shared state, the router, JSON errors and request extractors.
//!
//! Handlers live in [`agent`] (the agent-facing API, bearer-authenticated; its update checks
//! take turns in [`checks`]), [`package`] (the release package download, bearer-authenticated,
//! bounded by [`downloads`], sent from [`file_cache`]), [`metadata`] (the signed TUF metadata,
//! public), [`operator`] (the operator API of docs/protocol.md, operator tokens) and
//! [`admin`] (token management and the audit log, admin tokens), [`identity`] (revoking agents,
//! enrollment tokens) and [`dashboard`] (the
//! operator dashboard's page, sessions, fleet, errors, rollouts and live feed); [`access`]
//! authenticates operators (bearer token or session cookie) and [`paging`] pages their
//! listings. Handlers parse, authorize, call the domain modules (`intake`, `rollout`, `access`,
//! `release`, `cluster`, `events`) and answer. The agent and operator APIs are separate
//! routers, so they can be served on separate addresses. Every request must arrive and be
//! answered within [`REQUEST_TIMEOUT`]; every error leaves as `{"error": "..."}` JSON with a
//! fitting status (429 and 503 with `Retry-After`). This module must never run blocking work in
//! a handler or log secrets; the database error text stays in the server log, never in a
//! response.

pub mod access;
pub mod admin;
pub mod agent;
pub mod checks;
pub mod dashboard;
pub mod downloads;
pub mod file_cache;
pub mod groups;
pub mod identity;
pub mod metadata;
pub mod operator;
pub mod package;
pub mod paging;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use cms_protocol::paths;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::cluster::{self, Cluster};
use crate::db::{AgentRow, Db, DbError};
use crate::events::live::{FeedLimits, LiveFeed};
use crate::intake::errors::PerAgent;
use crate::net::ratelimit::{Rate, RateLimiter};
use crate::ws::Hub;
use checks::{CheckCounts, CheckQueue};
use downloads::{DownloadBudget, DownloadCounts, DownloadSlot};
use file_cache::FileCache;

/// Largest request body accepted (error batches are the big ones).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest a request may take to arrive and be answered (the response body may stream on):
/// a client trickling its body is cut off here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a listing waits for a slot before it is answered 503.
const LISTING_WAIT: Duration = Duration::from_secs(10);
/// Keys each rate limiter remembers at most (a full bucket is forgotten first).
const RATE_LIMITER_KEYS: usize = 100_000;

/// Limits on what agents may send (see docs/protocol.md, "Limits").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestLimits {
    /// Registrations per source network.
    pub registrations: Rate,
    /// Error reports per agent (each report costs one token).
    pub error_reports: Rate,
    /// Heartbeats per agent (over HTTP and the WebSocket together).
    pub heartbeats: Rate,
    /// Error reports and update events kept per agent (a new agent keeps less); older ones
    /// are deleted as new ones arrive.
    pub per_agent: PerAgent,
}

/// What [`AppState::new`] needs besides the databases.
#[derive(Debug)]
pub struct StateSettings {
    /// The server's data directory (release packages, signed metadata).
    pub data_dir: PathBuf,
    /// When set, registration requires this token.
    pub enrollment_token: Option<String>,
    /// Whether registration without a token is allowed (`--open-enrollment`).
    pub open_enrollment: bool,
    /// An agent without a WebSocket counts as offline after this long without contact.
    pub offline_after: Duration,
    /// Rate limits and the per-agent report cap.
    pub ingest: IngestLimits,
    /// Package streams served at the same time (`--max-downloads`; each holds an open file).
    pub download_slots: usize,
    /// Operator listings built at the same time (each holds one page in memory and one
    /// connection of the operators' pool; keep one connection free for the other routes).
    pub listing_slots: usize,
    /// Update checks worked on at the same time (each holds connections of the agents' pool
    /// for a few queries); the others wait their turn, so heartbeats always find a connection
    /// when a push sends the whole fleet to check at once.
    pub check_slots: usize,
    /// Update checks allowed to wait for a turn (`--max-waiting-checks`); one more is answered
    /// 503 ([`checks`]).
    pub max_waiting_checks: usize,
    /// Whether the server itself terminates TLS (session cookies are then `Secure`).
    pub serves_tls: bool,
    /// How often a live feed checks that its token or session still holds.
    pub live_recheck: Duration,
    /// Whether `--public-url` is an `https://` address (session cookies are then `Secure`).
    pub public_https: bool,
}

/// Everything handlers share (cheap to clone).
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    operator_db: Db,
    hub: Hub,
    cluster: Cluster,
    settings: StateSettings,
    shutdown: CancellationToken,
    registrations: RateLimiter<IpAddr>,
    error_reports: RateLimiter<String>,
    heartbeats: RateLimiter<String>,
    feeds: Arc<FeedLimits>,
    listing_slots: Semaphore,
    check_queue: Arc<CheckQueue>,
    downloads: DownloadBudget,
    file_cache: FileCache,
}

impl AppState {
    /// Bundles the shared state: `db` serves agents, `operator_db` operators and the audit log.
    pub fn new(
        db: Db,
        operator_db: Db,
        hub: Hub,
        cluster: Cluster,
        settings: StateSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let ingest = settings.ingest;
        let downloads = DownloadBudget::new(settings.download_slots);
        let listing_slots = Semaphore::new(settings.listing_slots.max(1));
        let check_queue = Arc::new(CheckQueue::new(
            settings.check_slots,
            settings.max_waiting_checks,
        ));
        Self {
            inner: Arc::new(Inner {
                db,
                operator_db,
                hub,
                cluster,
                settings,
                shutdown,
                registrations: RateLimiter::new(ingest.registrations, RATE_LIMITER_KEYS),
                error_reports: RateLimiter::new(ingest.error_reports, RATE_LIMITER_KEYS),
                heartbeats: RateLimiter::new(ingest.heartbeats, RATE_LIMITER_KEYS),
                feeds: Arc::default(),
                listing_slots,
                check_queue,
                downloads,
                file_cache: FileCache::default(),
            }),
        }
    }

    /// The agents' database pool.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The operators' database pool (operator API, audit log).
    pub fn operator_db(&self) -> &Db {
        &self.inner.operator_db
    }

    /// The WebSocket hub (publishers call [`Hub::broadcast`] / [`Hub::notify`]).
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// This replica among the others (connections, routing of check-updates).
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The server's data directory (release packages live under `packages/`).
    pub fn data_dir(&self) -> &Path {
        &self.inner.settings.data_dir
    }

    /// The dashboard's live feed.
    pub fn live(&self) -> &LiveFeed {
        self.inner.cluster.live()
    }

    fn serves_tls(&self) -> bool {
        self.inner.settings.serves_tls
    }

    fn public_https(&self) -> bool {
        self.inner.settings.public_https
    }

    fn enrollment_token(&self) -> Option<&str> {
        self.inner.settings.enrollment_token.as_deref()
    }

    fn open_enrollment(&self) -> bool {
        self.inner.settings.open_enrollment
    }

    fn offline_after(&self) -> Duration {
        self.inner.settings.offline_after
    }

    /// Whether an agent counts as online ([`cluster::is_online`], with `connected` from the
    /// connection records and `--offline-after`); a revoked agent never does.
    pub fn is_online(&self, connected: bool, agent: &AgentRow, now: time::OffsetDateTime) -> bool {
        if agent.revoked_at.is_some() {
            return false;
        }
        let held_here = self.hub().is_connected(&agent.agent_id);
        cluster::is_online(
            connected,
            held_here,
            &agent.last_seen,
            self.offline_after(),
            now,
        )
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    fn ingest(&self) -> &IngestLimits {
        &self.inner.settings.ingest
    }

    fn registrations(&self) -> &RateLimiter<IpAddr> {
        &self.inner.registrations
    }

    fn error_reports(&self) -> &RateLimiter<String> {
        &self.inner.error_reports
    }

    fn heartbeats(&self) -> &RateLimiter<String> {
        &self.inner.heartbeats
    }

    fn feeds(&self) -> &Arc<FeedLimits> {
        &self.inner.feeds
    }

    fn live_recheck(&self) -> Duration {
        self.inner.settings.live_recheck
    }

    /// A slot to build one operator listing, or 503 after [`LISTING_WAIT`].
    async fn listing_slot(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(LISTING_WAIT, self.inner.listing_slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy("too many listings at once")),
        }
    }

    /// The packages and deltas kept in memory while in demand ([`file_cache`]).
    fn file_cache(&self) -> &FileCache {
        &self.inner.file_cache
    }

    /// The update checks' queue ([`checks`]).
    fn check_queue(&self) -> &Arc<CheckQueue> {
        &self.inner.check_queue
    }

    /// The update-check queue's counts (shown by `/healthz`).
    pub fn check_counts(&self) -> CheckCounts {
        self.inner.check_queue.counts()
    }

    /// A slot to serve one package stream (held by its body until sent or dropped), or 503
    /// with `Retry-After` at once ([`downloads`]).
    fn download_slot(&self) -> Result<DownloadSlot, ApiError> {
        self.inner.downloads.try_slot()
    }

    /// The download budget's counts (shown by `/healthz`).
    pub fn download_counts(&self) -> DownloadCounts {
        self.inner.downloads.counts()
    }
}

fn busy(what: &str) -> ApiError {
    ApiError::Unavailable {
        message: format!("{what}; retry shortly"),
        retry_after: Duration::from_secs(1),
    }
}

/// The agent-facing API (with `/healthz` and the signed metadata).
pub fn agent_router(state: AppState) -> Router {
    finish(agent_routes(), state)
}

/// The operator API (with `/healthz`), for a separate `--operator-listen` address.
pub fn operator_router(state: AppState) -> Router {
    finish(operator_routes(), state)
}

/// Both APIs on one address.
pub fn router(state: AppState) -> Router {
    finish(
        agent_routes().merge(operator_routes_without_healthz()),
        state,
    )
}

fn agent_routes() -> Router<AppState> {
    Router::new()
        .route(paths::REGISTER, post(agent::register))
        .route(paths::STATUS, post(agent::status))
        .route(paths::UPDATE_CHECK, get(agent::update_check))
        .route(paths::ERRORS, post(agent::errors))
        .route(paths::CREDENTIAL, post(agent::credential))
        .route(paths::WEBSOCKET, get(agent::websocket))
        .route(package::PACKAGE_ROUTE, get(package::download))
        .route(package::DELTA_ROUTE, get(package::download_delta))
        .route(metadata::METADATA_ROUTE, get(metadata::file))
        .route(paths::HEALTHZ, get(operator::healthz))
}

fn operator_routes() -> Router<AppState> {
    operator_routes_without_healthz().route(paths::HEALTHZ, get(operator::healthz))
}

fn operator_routes_without_healthz() -> Router<AppState> {
    Router::new()
        .route(paths::AGENTS, get(operator::agents))
        .route(
            "/api/v1/agents/{agent_id}/check-update",
            post(operator::check_update),
        )
        .route("/api/v1/agents/{agent_id}", delete(identity::revoke_agent))
        .route(
            "/api/v1/agents/{agent_id}/rotate-credential",
            post(identity::rotate_credential),
        )
        .route(
            "/api/v1/enrollment-tokens",
            get(identity::enrollment_tokens).post(identity::create_enrollment_token),
        )
        .route(
            "/api/v1/enrollment-tokens/{name}",
            delete(identity::revoke_enrollment_token),
        )
        .route("/api/v1/agents/{agent_id}/group", put(groups::set_group))
        .route("/api/v1/groups", get(groups::groups))
        .route(
            "/api/v1/groups/{group}/window",
            put(groups::set_window).delete(groups::clear_window),
        )
        .route(
            "/api/v1/rollouts/{platform}/{version}/groups/{group}",
            put(groups::set_group_rollout),
        )
        .route(paths::OPERATOR_ERRORS, get(operator::errors))
        .route(paths::RELEASES, get(operator::releases))
        .route(paths::TOKENS, get(admin::tokens).post(admin::create_token))
        .route("/api/v1/tokens/{name}", delete(admin::revoke_token))
        .route(paths::AUDIT, get(admin::audit))
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        .route(
            "/api/v1/session",
            get(dashboard::whoami)
                .post(dashboard::sign_in)
                .delete(dashboard::sign_out),
        )
        .route("/api/v1/fleet", get(dashboard::fleet))
        .route("/api/v1/fleet/agents", get(dashboard::fleet_agents))
        .route(
            "/api/v1/fleet/agents/{agent_id}",
            get(dashboard::agent_page),
        )
        .route("/api/v1/error-groups", get(dashboard::error_groups))
        .route("/api/v1/rollouts", get(dashboard::rollouts))
        .route(
            "/api/v1/rollouts/{platform}/{version}/reasons",
            get(dashboard::failure_reasons),
        )
        .route(
            "/api/v1/rollouts/{platform}/{version}",
            post(dashboard::rollout_action),
        )
        .route("/api/v1/events", get(dashboard::events))
}

fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_timeout))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .layer(middleware::from_fn(refuse_announced_oversize))
        .with_state(state)
}

/// Answers 413 at once to a request that announces a body over [`MAX_BODY_BYTES`] (instead of
/// waiting for a body that may never come).
async fn refuse_announced_oversize(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        let mut refused = ApiError::PayloadTooLarge(format!(
            "request bodies are limited to {MAX_BODY_BYTES} bytes"
        ))
        .into_response();
        refused
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return refused;
    }
    next.run(request).await
}

/// Headers on every answer: `nosniff`; `no-store` on the API; a CSP that forbids framing on
/// HTML; HSTS when the server is reached over HTTPS (its own TLS or an `https://` public URL).
async fn security_headers(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"));
    let headers = response.headers_mut();
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let mut set = |name, value: &'static str| {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if html {
        set(
            header::CONTENT_SECURITY_POLICY,
            dashboard::assets::CONTENT_SECURITY_POLICY,
        );
        set(header::X_FRAME_OPTIONS, "DENY");
    }
    if state.serves_tls() || state.public_https() {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    response
}

/// Cuts off a request that is not answered within [`REQUEST_TIMEOUT`] (408).
async fn request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// An API failure, answered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid request.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or unknown bearer token (the text says which kind).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated (or enrolling) but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests from this caller; retry after the given time.
    #[error("{message}")]
    TooManyRequests {
        /// What was limited.
        message: String,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// The server is busy; retry after the given time.
    #[error("{message}")]
    Unavailable {
        /// What is busy.
        message: String,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// The request took longer than [`REQUEST_TIMEOUT`].
    #[error("request took too long (more than {} s)", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request was rejected by an extractor with this status.
    #[error("{message}")]
    Rejected {
        /// Status chosen by the extractor.
        status: StatusCode,
        /// Its explanation.
        message: String,
    },
    /// The database failed; details are logged, not returned.
    #[error("internal error")]
    Database(#[from] DbError),
    /// Any other server-side failure; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Database(error) => tracing::error!(%error, "database error"),
            ApiError::Internal(error) => tracing::error!(%error, "internal error"),
            _ => {}
        }
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after, .. }
        | ApiError::Unavailable { retry_after, .. } = &self
        {
            let secs = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::Unavailable { .. } = &self {
            // The client waits a while before asking again: holding its connection meanwhile
            // would only cost this server a socket and its buffers.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::Rejected {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Rejected {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

/// `Json<T>` whose rejections are JSON [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// `Query<T>` whose rejections are JSON [`ApiError`]s.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// Rejects `value` when it is empty or longer than `max` bytes.
pub(crate) fn check_field(name: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::BadRequest(format!("{name} must not be empty")));
    }
    if value.len() > max {
        return Err(ApiError::BadRequest(format!(
            "{name} is longer than {max} bytes"
        )));
    }
    Ok(())
}
