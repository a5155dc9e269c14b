//! Groups on the operator API: `PUT /api/v1/agents/{agent_id}/group` (operator, audited),
//! `PUT /api/v1/rollouts/{platform}/{version}/groups/{group}` (operator, audited: the group's own
//! rollout percentage), `PUT`/`DELETE /api/v1/groups/{group}/window` (operator, audited: the
//! group's maintenance windows) and `GET /api/v1/groups` (viewer: agents and windows per group).
//! The rules are in `crate::rollout::group` and `crate::rollout::window`; this module must never
//! change a group or its windows without going through them.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use cms_protocol::OperatorRole;
use serde::{Deserialize, Serialize};

use super::access::Operator;
use super::{ApiError, ApiJson, AppState};
use crate::rollout::control::RolloutStatus;
use crate::rollout::group::{self, GroupError, GroupRolloutChange, SET_GROUP};
use crate::rollout::window::{self, SET_WINDOW, WindowError};
use cms_protocol::UpdateWindows;

/// Groups the listing shows at most.
const MAX_GROUPS_LISTED: i64 = 500;

/// Body of `PUT /api/v1/agents/{agent_id}/group`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetGroup {
    /// The group (1-64 of `[A-Za-z0-9._-]`).
    pub group: String,
}

/// Body of `PUT /api/v1/groups/{group}/window`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetWindow {
    /// The windows, `DAYS HH:MM-HH:MM` each.
    pub windows: Vec<String>,
    /// `utc` (the default) or `agent`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "utc".to_owned()
}

/// One group of the listing.
#[derive(Debug, Serialize)]
pub struct GroupRow {
    /// Its name.
    pub group: String,
    /// Agents in it.
    pub agents: i64,
    /// Its maintenance windows, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<UpdateWindows>,
    /// Its pins, one per platform.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<PinRow>,
}

/// A group's pin as the listing shows it.
#[derive(Debug, Serialize)]
pub struct PinRow {
    /// The platform.
    pub platform: String,
    /// The version the group's agents are offered.
    pub version: String,
    /// Whether it is a rollback (older than the newest release, with a root-signed statement).
    pub rollback: bool,
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
    ApiJson(body): ApiJson<GroupRolloutChange>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let target = format!("{version}/{platform} group={group}");
    operator
        .require(&state, OperatorRole::Operator, "rollout.set", Some(&target))
        .await?;
    let db = state.operator_db();
    let release = (version.as_str(), platform.as_str());
    let status = group::set_rollout(db, &operator.actor, release, &group, body).await?;
    Ok(Json(status))
}

/// `PUT /api/v1/groups/{group}/window`: sets the group's maintenance windows; answers them in
/// their normal form. 400 for a bad group name, window or clock.
pub async fn set_window(
    State(state): State<AppState>,
    operator: Operator,
    Path(group): Path<String>,
    ApiJson(body): ApiJson<SetWindow>,
) -> Result<Json<UpdateWindows>, ApiError> {
    operator
        .require(&state, OperatorRole::Operator, SET_WINDOW, Some(&group))
        .await?;
    let db = state.operator_db();
    window::set(db, &operator.actor, &group, &body.windows, &body.timezone)
        .await
        .map(Json)
        .map_err(window_error)
}

/// `DELETE /api/v1/groups/{group}/window`: removes the group's windows. 204; 404 when it had
/// none.
pub async fn clear_window(
    State(state): State<AppState>,
    operator: Operator,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    operator
        .require(&state, OperatorRole::Operator, SET_WINDOW, Some(&group))
        .await?;
    window::clear(state.operator_db(), &operator.actor, &group)
        .await
        .map_err(window_error)?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

fn window_error(error: WindowError) -> ApiError {
    match error {
        WindowError::Invalid(_) => ApiError::BadRequest(error.to_string()),
        WindowError::NoWindow(_) => ApiError::NotFound(error.to_string()),
        WindowError::Database(db) => ApiError::Database(db),
    }
}

/// `GET /api/v1/groups`: agents per group, largest first, with each group's windows and pins;
/// groups with windows or pins and no agents yet come last, by name.
pub async fn groups(
    State(state): State<AppState>,
    _operator: Operator,
) -> Result<Json<Vec<GroupRow>>, ApiError> {
    let db = state.operator_db();
    let sizes = db.group_sizes(MAX_GROUPS_LISTED).await?;
    let windows = db.all_group_windows().await?;
    let pins = db.all_group_pins().await?;
    let mut names: Vec<&str> = windows.iter().map(|w| w.agent_group.as_str()).collect();
    names.extend(pins.iter().map(|p| p.agent_group.as_str()));
    names.sort_unstable();
    names.dedup();
    let empty = names
        .into_iter()
        .filter(|name| !sizes.iter().any(|(group, _)| group == name))
        .map(|name| (name.to_owned(), 0));
    let sizes: Vec<(String, i64)> = sizes.iter().cloned().chain(empty).collect();
    let rows = sizes
        .into_iter()
        .map(|(group, agents)| GroupRow {
            window: windows
                .iter()
                .find(|w| w.agent_group == group)
                .map(window::from_stored),
            pins: pins
                .iter()
                .filter(|p| p.agent_group == group)
                .map(|p| PinRow {
                    platform: p.platform.clone(),
                    version: p.version.clone(),
                    rollback: p.rollback.is_some(),
                })
                .collect(),
            group,
            agents,
        })
        .collect();
    Ok(Json(rows))
}
