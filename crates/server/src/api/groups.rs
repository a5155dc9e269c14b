//! Groups on the operator API: `PUT /api/v1/agents/{agent_id}/group` (operator, audited),
//! `PUT /api/v1/rollouts/{platform}/{version}/groups/{group}` (operator, audited: the group's own
//! rollout percentage) and `GET /api/v1/groups` (viewer: agents per group). The rules are in `crate::rollout::group`;
//! this module must never change a group without going through it.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use cms_protocol::OperatorRole;
use serde::{Deserialize, Serialize};

use super::access::Operator;
use super::{ApiError, ApiJson, AppState};
use crate::rollout::control::{RolloutError, RolloutStatus};
use crate::rollout::group::{self, GroupError, SET_GROUP};

/// Groups the listing shows at most.
const MAX_GROUPS_LISTED: i64 = 500;

/// Body of `PUT /api/v1/agents/{agent_id}/group`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetGroup {
    /// The group (1-64 of `[A-Za-z0-9._-]`).
    pub group: String,
}

/// Body of `PUT /api/v1/rollouts/{platform}/{version}/groups/{group}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRollout {
    /// The group's own share (0..=100) of the release.
    pub percent: i64,
}

/// One group of the listing.
#[derive(Debug, Serialize)]
pub struct GroupRow {
    /// Its name.
    pub group: String,
    /// Agents in it.
    pub agents: i64,
}

/// `PUT /api/v1/agents/{agent_id}/group`: the operator's assignment (it wins over the
/// agent's `--group`). 204; 400 for a bad name, 404 for an unknown agent.
pub async fn set_group(
    State(state): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
    ApiJson(body): ApiJson<SetGroup>,
) -> Result<Response, ApiError> {
    operator
        .require(&state, OperatorRole::Operator, SET_GROUP, Some(&agent_id))
        .await?;
    group::assign(state.operator_db(), &operator.actor, &agent_id, &body.group)
        .await
        .map_err(|error| match error {
            GroupError::Invalid(_) => ApiError::BadRequest(error.to_string()),
            GroupError::UnknownAgent(_) => ApiError::NotFound(error.to_string()),
            GroupError::Database(db) => ApiError::Database(db),
        })?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/v1/rollouts/{platform}/{version}/groups/{group}`: the group's own rollout
/// percentage of a release; answers the release's rollout. 400 for a bad name or percentage,
/// 404 for an unknown release.
pub async fn set_group_rollout(
    State(state): State<AppState>,
    operator: Operator,
    Path((platform, version, group)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<GroupRollout>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let target = format!("{version}/{platform} group={group}");
    operator
        .require(&state, OperatorRole::Operator, "rollout.set", Some(&target))
        .await?;
    let db = state.operator_db();
    let status = group::set_rollout(
        db,
        &operator.actor,
        &version,
        &platform,
        &group,
        body.percent,
    )
    .await
    .map_err(|error| match error {
        RolloutError::Invalid(message) => ApiError::BadRequest(message),
        unknown @ RolloutError::UnknownRelease { .. } => ApiError::NotFound(unknown.to_string()),
        RolloutError::Database(db) => ApiError::Database(db),
    })?;
    Ok(Json(status))
}

/// `GET /api/v1/groups`: agents per group, largest first.
pub async fn groups(
    State(state): State<AppState>,
    _operator: Operator,
) -> Result<Json<Vec<GroupRow>>, ApiError> {
    let rows = state.operator_db().group_sizes(MAX_GROUPS_LISTED).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(group, agents)| GroupRow { group, agents })
            .collect(),
    ))
}
