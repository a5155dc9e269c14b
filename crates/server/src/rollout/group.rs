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

/// What a group's own settings for a release change; `None` keeps what it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRolloutChange {
    /// The group's own share (0..=100), overriding the release's for its agents.
    #[serde(default)]
    pub percent: Option<i64>,
    /// The group's own halt rule share (0..=100): its failures passing it halt the release.
    #[serde(default)]
    pub halt_percent: Option<i64>,
    /// ... once the group has at least this many attempts.
    #[serde(default)]
    pub halt_min_attempts: Option<i64>,
    /// The group's own cap of updates in flight (0 removes it); the release's cap holds too.
    #[serde(default)]
    pub max_in_flight: Option<i64>,
}

/// Sets `group`'s own rollout percentage and/or halt rule for the release `version` on
/// `platform` as `actor` (the percentage overrides the release's for that group's agents; the
/// group's failures passing its rule halt the whole release); audited as `rollout.set` either
/// way. Agents see it at their next update check or heartbeat.
pub async fn set_rollout(
    db: &Db,
    actor: &Actor,
    (version, platform): (&str, &str),
    group: &str,
    change: GroupRolloutChange,
) -> Result<RolloutStatus, RolloutError> {
    let target = format!("{version}/{platform} group={group}");
    let result = set_rollout_unaudited(db, (version, platform), group, change).await;
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
            percent = change.percent,
            halt_percent = change.halt_percent,
            halt_min_attempts = change.halt_min_attempts,
            max_in_flight = change.max_in_flight,
            "group rollout changed"
        );
    }
    result
}

async fn set_rollout_unaudited(
    db: &Db,
    (version, platform): (&str, &str),
    group: &str,
    change: GroupRolloutChange,
) -> Result<RolloutStatus, RolloutError> {
    let group = checked(group).map_err(|e| RolloutError::Invalid(e.to_string()))?;
    let in_range = |what: &str, value: Option<i64>, max: i64| match value {
        Some(v) if !(0..=max).contains(&v) => Err(RolloutError::Invalid(format!(
            "{what} must be between 0 and {max}, got {v}"
        ))),
        _ => Ok(()),
    };
    in_range("percent", change.percent, 100)?;
    in_range("halt percent", change.halt_percent, 100)?;
    in_range(
        "halt minimum of attempts",
        change.halt_min_attempts,
        i64::MAX,
    )?;
    in_range("in-flight cap", change.max_in_flight, i64::MAX)?;
    if change == GroupRolloutChange::default() {
        return Err(RolloutError::Invalid("nothing to set".into()));
    }
    let version = control::status(db, version, platform)
        .await?
        .rollout
        .version;
    let unknown = || RolloutError::UnknownRelease {
        version: version.clone(),
        platform: platform.to_owned(),
    };
    if let Some(percent) = change.percent
        && !db
            .set_group_rollout(&version, platform, group, percent)
            .await?
    {
        return Err(unknown());
    }
    let halt = (change.halt_percent, change.halt_min_attempts);
    if halt != (None, None)
        && !db
            .set_group_halt_rule(&version, platform, group, halt)
            .await?
    {
        return Err(unknown());
    }
    if let Some(cap) = change.max_in_flight
        && !db
            .set_group_in_flight(&version, platform, group, cap)
            .await?
    {
        return Err(unknown());
    }
    if halt != (None, None) {
        control::check_halt(db, &version, platform).await?;
    }
    control::status(db, &version, platform).await
}

/// What `group` has in a `(group, value)` list (its halt rule, its in-flight cap).
pub fn find<T: Copy>(list: &[(String, T)], group: &str) -> Option<T> {
    list.iter()
        .find(|(g, _)| g == group)
        .map(|(_, value)| *value)
}
