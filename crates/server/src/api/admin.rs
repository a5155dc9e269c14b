//! Admin routes: operator tokens (`/api/v1/tokens`) and the audit log (`/api/v1/audit`).
//!
//! Every route needs the admin role; creating and revoking tokens is audited (a refused
//! attempt too). This module must never return a token hash, and return a token only in the
//! answer that creates it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cms_protocol::{AuditEntry, NewOperatorToken, OperatorRole, OperatorToken};

use super::access::Operator;
use super::paging::{PageQuery, listing};
use super::{ApiError, ApiJson, ApiQuery, AppState};
use crate::access::{self, AccessError};
use crate::db::{AuditKey, Db};

/// `GET /api/v1/tokens`: every operator token (name, role, created, last used).
pub async fn tokens(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<Json<Vec<OperatorToken>>, ApiError> {
    operator
        .require(&state, OperatorRole::Admin, "token.list", None)
        .await?;
    Ok(Json(access::list_tokens(state.operator_db()).await?))
}

/// `POST /api/v1/tokens` with `{"name": N, "role": R}`: 201 with the new token, shown once.
pub async fn create_token(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<NewOperatorToken>,
) -> Result<Response, ApiError> {
    operator
        .require(
            &state,
            OperatorRole::Admin,
            "token.create",
            Some(&request.name),
        )
        .await?;
    let created = access::create_token(
        state.operator_db(),
        &request.name,
        request.role,
        &operator.actor,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `DELETE /api/v1/tokens/{name}`: 204 revoked (it stops working at once), 404 unknown.
pub async fn revoke_token(
    State(state): State<AppState>,
    operator: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    operator
        .require(&state, OperatorRole::Admin, "token.revoke", Some(&name))
        .await?;
    access::revoke_token(state.operator_db(), &name, &operator.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/audit`: one page of the audit log, newest first.
pub async fn audit(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(page): ApiQuery<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    operator
        .require(&state, OperatorRole::Admin, "audit.read", None)
        .await?;
    let fetch = |db: Db, after: AuditKey, limit| async move { db.list_audit(&after, limit).await };
    let key_of = |entry: &AuditEntry| AuditKey {
        at: entry.at.clone(),
        audit_id: entry.audit_id.clone(),
    };
    listing(&state, &page, &uri, fetch, key_of, |entry| entry).await
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::InvalidName(_) => ApiError::BadRequest(error.to_string()),
            AccessError::NameTaken(_) => ApiError::Conflict(error.to_string()),
            AccessError::UnknownName(_) => ApiError::NotFound(error.to_string()),
            AccessError::Random(e) => ApiError::Internal(e.to_string()),
            AccessError::Database(e) => ApiError::Database(e),
        }
    }
}
