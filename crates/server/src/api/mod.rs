//! The HTTP surface: shared state, the router, JSON errors and request extractors.
//!
//! Handlers live in [`agent`] (the agent-facing API, bearer-authenticated), [`package`] (the
//! release package download, bearer-authenticated), [`metadata`] (the signed TUF metadata,
//! public) and [`operator`] (the operator API of
//! docs/CONTRACT.md, "Operator API"). Every error leaves as `{"error": "..."}` JSON with
//! a fitting status. This module must never run blocking work in a handler or log secrets; the
//! database error text stays in the server log, never in a response.

pub mod agent;
pub mod metadata;
pub mod operator;
pub mod package;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cms_protocol::paths;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::db::{Db, DbError};
use crate::ws::Hub;

/// Largest request body accepted (error batches are the big ones).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything handlers share (cheap to clone).
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    hub: Hub,
    cluster: Cluster,
    data_dir: PathBuf,
    enrollment_token: Option<String>,
    offline_after: Duration,
    shutdown: CancellationToken,
}

impl AppState {
    /// Bundles the shared state; `data_dir` is where release packages lie.
    pub fn new(
        db: Db,
        hub: Hub,
        cluster: Cluster,
        data_dir: PathBuf,
        enrollment_token: Option<String>,
        offline_after: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                hub,
                cluster,
                data_dir,
                enrollment_token,
                offline_after,
                shutdown,
            }),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
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
        &self.inner.data_dir
    }

    fn enrollment_token(&self) -> Option<&str> {
        self.inner.enrollment_token.as_deref()
    }

    fn offline_after(&self) -> Duration {
        self.inner.offline_after
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(paths::REGISTER, post(agent::register))
        .route(paths::STATUS, post(agent::status))
        .route(paths::UPDATE_CHECK, get(agent::update_check))
        .route(paths::ERRORS, post(agent::errors))
        .route(paths::WEBSOCKET, get(agent::websocket))
        .route(package::PACKAGE_ROUTE, get(package::download))
        .route(metadata::METADATA_ROUTE, get(metadata::file))
        .route(paths::AGENTS, get(operator::agents))
        .route(
            "/api/v1/agents/{agent_id}/check-update",
            post(operator::check_update),
        )
        .route(paths::OPERATOR_ERRORS, get(operator::errors))
        .route(paths::RELEASES, get(operator::releases))
        .route(paths::HEALTHZ, get(operator::healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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
    /// Missing or unknown bearer token.
    #[error("missing or invalid agent token")]
    Unauthorized,
    /// Missing or wrong enrollment token.
    #[error("missing or invalid enrollment token")]
    Forbidden,
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
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
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
        (self.status(), Json(body)).into_response()
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
