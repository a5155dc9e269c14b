//! Agent groups: every agent is in one (`default` unless given one). The agent's own
//! `--group` is taken at registration and from its heartbeats; an operator's assignment
//! (`cms-server agent set-group`, `PUT /api/v1/agents/{agent_id}/group`) wins over it for good
//! and is audited. A group may have its own rollout percentage of a release ([`set_rollout`]). This module must never take a name that is not 1-64 of `[A-Za-z0-9._-]`,
//! and never let an agent's report undo an operator's assignment.

use cms_protocol::is_valid_group;

use super::control::{self, RolloutError, RolloutStatus};
use crate::access::{self, Actor, Outcome};
use crate::db::{Db, DbError};
use crate::logtext::Untrusted;

/// The audit log's name of an operator's assignment.
pub const SET_GROUP: &str = "agent.set_group";

/// Why an assignment was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The name breaks the rule.
    #[error("{0:?} is not a group name: use 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'")]
    Invalid(String),
    /// No such agent is registered.
    #[error("no agent {0} is registered")]
    UnknownAgent(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

/// A group name, or [`GroupError::Invalid`].
pub fn checked(name: &str) -> Result<&str, GroupError> {
    if is_valid_group(name) {
        Ok(name)
    } else {
        Err(GroupError::Invalid(name.to_owned()))
    }
}

/// Takes the group an agent reported (at registration or in a heartbeat), unless an
/// operator assigned one; an invalid name is logged and ignored.
pub async fn reported(db: &Db, agent_id: &str, group: Option<&str>) -> Result<(), DbError> {
    let Some(group) = group else {
        return Ok(());
    };
    if !is_valid_group(group) {
        tracing::info!(agent_id, group = %Untrusted(group), "agent reported an invalid group; ignored");
        return Ok(());
    }
    if db.set_reported_group(agent_id, group).await? {
        tracing::info!(agent_id, group, "agent moved to the group it reported");
    }
    Ok(())
}

/// Puts `agent_id` in `group` as `actor`; audited either way.
pub async fn assign(db: &Db, actor: &Actor, agent_id: &str, group: &str) -> Result<(), GroupError> {
    let target = format!("{agent_id} -> {group}");
    let result = assign_unaudited(db, agent_id, group).await;
    let outcome = match &result {
        Ok(()) => Outcome::Ok,
        Err(GroupError::Database(_)) => return result,
        Err(_) => Outcome::Refused,
    };
    access::audit(db, actor, SET_GROUP, Some(&target), outcome).await;
    if result.is_ok() {
        tracing::info!(
            actor = actor.name,
            agent_id,
            group,
            "operator assigned the agent's group"
        );
    }
    result
}

async fn assign_unaudited(db: &Db, agent_id: &str, group: &str) -> Result<(), GroupError> {
    let group = checked(group)?;
    if db.set_operator_group(agent_id, group).await? {
        Ok(())
    } else {
        Err(GroupError::UnknownAgent(agent_id.to_owned()))
    }
}

/// Sets `group`'s own rollout percentage of the release `version` on `platform` as `actor`
/// (it overrides the release's percentage for that group's agents); audited as `rollout.set`
/// either way. Agents see it at their next update check or heartbeat.
pub async fn set_rollout(
    db: &Db,
    actor: &Actor,
    version: &str,
    platform: &str,
    group: &str,
    percent: i64,
) -> Result<RolloutStatus, RolloutError> {
    let target = format!("{version}/{platform} group={group}");
    let result = set_rollout_unaudited(db, version, platform, group, percent).await;
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(RolloutError::Database(_)) => return result,
        Err(_) => Outcome::Refused,
    };
    access::audit(db, actor, "rollout.set", Some(&target), outcome).await;
    if result.is_ok() {
        tracing::info!(
            actor = actor.name,
            version,
            platform,
            group,
            percent,
            "group rollout changed"
        );
    }
    result
}

async fn set_rollout_unaudited(
    db: &Db,
    version: &str,
    platform: &str,
    group: &str,
    percent: i64,
) -> Result<RolloutStatus, RolloutError> {
    let group = checked(group).map_err(|e| RolloutError::Invalid(e.to_string()))?;
    if !(0..=100).contains(&percent) {
        return Err(RolloutError::Invalid(format!(
            "percent must be between 0 and 100, got {percent}"
        )));
    }
    let status = control::status(db, version, platform).await?;
    let version = &status.rollout.version;
    if !db
        .set_group_rollout(version, platform, group, percent)
        .await?
    {
        return Err(RolloutError::UnknownRelease {
            version: version.clone(),
            platform: platform.to_owned(),
        });
    }
    Ok(status)
}
