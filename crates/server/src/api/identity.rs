//! Operator routes over agent identities: revoking an agent (`DELETE /api/v1/agents/{id}`,
//! operator role), asking it to rotate its credential (operator role) and enrollment tokens (`/api/v1/enrollment-tokens`, admin role), all audited.
//!
//! This module must never return a token hash, and return an enrollment token only in the
//! answer that creates it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cms_protocol::OperatorRole;
use serde::Deserialize;

use super::access::Operator;
use super::{ApiError, ApiJson, AppState};
use crate::access::enrollment::{self, TokenSpec};
use crate::access::{revocation, rotation};
use crate::db::{EnrollmentTokenRow, Revocation};

/// `DELETE /api/v1/agents/{agent_id}` (operator role): revokes the agent; its credential is
/// refused at once by every replica and its WebSocket closed. 204 revoked (again: still 204),
/// 404 unknown agent.
pub async fn revoke_agent(
    State(state): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    operator
        .require(
            &state,
            OperatorRole::Operator,
            revocation::ACTION,
            Some(&agent_id),
        )
        .await?;
    let bus = state.cluster().bus();
    let db = state.operator_db();
    let hub = Some(state.hub());
    match revocation::revoke_agent(db, bus, hub, &agent_id, &operator.actor).await? {
        Revocation::Unknown => Err(ApiError::NotFound("unknown agent".into())),
        Revocation::Revoked | Revocation::AlreadyRevoked => Ok(StatusCode::NO_CONTENT),
    }
}

/// `POST /api/v1/agents/{agent_id}/rotate-credential` (operator): the agent rotates its
/// credential at its next heartbeat. 202 asked, 404 unknown agent. Audited.
pub async fn rotate_credential(
    State(state): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    operator
        .require(
            &state,
            OperatorRole::Operator,
            rotation::ACTION,
            Some(&agent_id),
        )
        .await?;
    if rotation::request(state.operator_db(), &agent_id, &operator.actor).await? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::NotFound("unknown agent".into()))
    }
}

/// Body of `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    /// Unique name.
    pub name: String,
    /// Days until it expires.
    pub expires_days: Option<u32>,
    /// Registrations allowed.
    pub uses: Option<u32>,
    /// The group its agents join.
    pub group: Option<String>,
}

/// `GET /api/v1/enrollment-tokens` (admin): every token, by name, never a secret.
pub async fn enrollment_tokens(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<Json<Vec<EnrollmentTokenRow>>, ApiError> {
    operator
        .require(&state, OperatorRole::Admin, "enroll.list", None)
        .await?;
    Ok(Json(enrollment::list(state.operator_db()).await?))
}

/// `POST /api/v1/enrollment-tokens` (admin): 201 with the new token, shown once.
pub async fn create_enrollment_token(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<NewEnrollmentToken>,
) -> Result<Response, ApiError> {
    operator
        .require(
            &state,
            OperatorRole::Admin,
            "enroll.create",
            Some(&request.name),
        )
        .await?;
    let spec = TokenSpec {
        name: &request.name,
        expires_days: request.expires_days,
        uses: request.uses,
        group: request.group.as_deref(),
    };
    let created = enrollment::create(state.operator_db(), &spec, &operator.actor).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `DELETE /api/v1/enrollment-tokens/{name}` (admin): 204 revoked (no new registration with
/// it; enrolled agents keep working), 404 unknown or already revoked.
pub async fn revoke_enrollment_token(
    State(state): State<AppState>,
    operator: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    operator
        .require(&state, OperatorRole::Admin, "enroll.revoke", Some(&name))
        .await?;
    enrollment::revoke(state.operator_db(), &name, &operator.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
