//! Rollout control: set a release's percentage and halt rule, pause, resume, read the funnel,
//! and the automatic halt.
//!
//! The API (`POST /api/v1/rollouts/...`) and the command line (`cms-server rollout ...` and
//! `cms-server release rollout`) all call [`apply`], which validates, changes the release row,
//! tells every replica (their release watchers push the release to the agents it now
//! includes; on SQLite the one server's watcher finds it by polling) and writes an audit
//! entry, even for a refused change. [`check_halt`] runs after the server stored a failure or a rollback
//! for a release, and after its halt rule changed: once failures and rollbacks pass the
//! release's [`HaltRule`](super::funnel::HaltRule), the rollout pauses itself with an audit
//! entry by `server:halt`. A paused release is offered to no agent
//! (`crate::db` reads its rollout as 0 for the update check). This module must never change
//! a rollout without an audit entry.

use serde::Serialize;

use super::funnel::Funnel;
use crate::access::{self, Actor, Outcome};
use crate::clock;
use crate::db::{Db, DbError, RolloutChange, RolloutRow};
use crate::events::{ClusterEvent, EventBus};
use crate::rollout::cohort;

/// Releases the rollout listing shows at most.
pub const MAX_ROLLOUTS_LISTED: i64 = 200;

/// A change an operator asks for; as JSON (the API's body) `{"action": "set", "percent": 50}`,
/// `{"action": "pause"}` or `{"action": "resume"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum RolloutAction {
    /// Set the percentage and/or the halt rule.
    Set {
        /// New share of the fleet (0..=100).
        #[serde(default)]
        percent: Option<i64>,
        /// New halt rule share (0..=100).
        #[serde(default)]
        halt_percent: Option<i64>,
        /// New halt rule minimum of attempts.
        #[serde(default)]
        halt_min_attempts: Option<i64>,
    },
    /// Offer the release to nobody new.
    Pause,
    /// Offer it again (clears a halt).
    Resume,
}

impl RolloutAction {
    /// The audit log's name of the action.
    pub fn audit_name(&self) -> &'static str {
        match self {
            RolloutAction::Set { .. } => "rollout.set",
            RolloutAction::Pause => "rollout.pause",
            RolloutAction::Resume => "rollout.resume",
        }
    }

    fn change(&self) -> Result<RolloutChange, RolloutError> {
        Ok(match *self {
            RolloutAction::Set {
                percent,
                halt_percent,
                halt_min_attempts,
            } => {
                check_range("percent", percent, 100)?;
                check_range("halt percent", halt_percent, 100)?;
                check_range("halt minimum of attempts", halt_min_attempts, i64::MAX)?;
                if percent.is_none() && halt_percent.is_none() && halt_min_attempts.is_none() {
                    return Err(RolloutError::Invalid("nothing to set".into()));
                }
                RolloutChange {
                    percent,
                    paused: None,
                    halt_percent,
                    halt_min_attempts,
                }
            }
            RolloutAction::Pause => RolloutChange {
                paused: Some(true),
                ..RolloutChange::default()
            },
            RolloutAction::Resume => RolloutChange {
                paused: Some(false),
                ..RolloutChange::default()
            },
        })
    }
}

fn check_range(what: &str, value: Option<i64>, max: i64) -> Result<(), RolloutError> {
    match value {
        Some(v) if !(0..=max).contains(&v) => Err(RolloutError::Invalid(format!(
            "{what} must be between 0 and {max}, got {v}"
        ))),
        _ => Ok(()),
    }
}

/// A release's rollout with its funnel, as the dashboard, the API and `rollout status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutStatus {
    /// The release and its control.
    #[serde(flatten)]
    pub rollout: RolloutRow,
    /// What the agents reported.
    pub funnel: Funnel,
}

/// Why a rollout change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A value is out of range, or the version does not parse.
    #[error("{0}")]
    Invalid(String),
    /// No such release is published.
    #[error("no release {version} is published for {platform}")]
    UnknownRelease {
        /// Requested version.
        version: String,
        /// Requested platform.
        platform: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl RolloutError {
    /// Whether retrying cannot help (everything but a database failure).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, RolloutError::Database(_))
    }
}

/// The version as stored (SemVer, without a leading `v`).
fn normalize_version(version: &str) -> Result<String, RolloutError> {
    cohort::parse_version(version)
        .map(|v| v.to_string())
        .ok_or_else(|| RolloutError::Invalid(format!("{version:?} is not a version like 1.2.3")))
}

/// Applies `action` to the release `version` on `platform` as `actor` and tells every replica
/// on `bus`; audited either way.
pub async fn apply(
    db: &Db,
    bus: &EventBus,
    actor: &Actor,
    version: &str,
    platform: &str,
    action: RolloutAction,
) -> Result<RolloutStatus, RolloutError> {
    let target = format!("{version}/{platform}");
    let audit_name = action.audit_name();
    let result = apply_unaudited(db, bus, version, platform, action).await;
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(RolloutError::Database(_)) => return result,
        Err(_) => Outcome::Refused,
    };
    access::audit(db, actor, audit_name, Some(&target), outcome).await;
    if let Ok(status) = &result {
        tracing::info!(
            actor = actor.name,
            version = status.rollout.version,
            platform,
            rollout_percent = status.rollout.rollout_percent,
            paused = status.rollout.paused,
            "rollout changed"
        );
    }
    result
}

/// Applies `action` as `actor` from outside a running server (the command line), telling the
/// replicas on a bus of its own.
pub async fn apply_with_own_bus(
    db: &Db,
    actor: &Actor,
    version: &str,
    platform: &str,
    action: RolloutAction,
) -> Result<RolloutStatus, RolloutError> {
    let bus = EventBus::new(db).await?;
    apply(db, &bus, actor, version, platform, action).await
}

async fn apply_unaudited(
    db: &Db,
    bus: &EventBus,
    version: &str,
    platform: &str,
    action: RolloutAction,
) -> Result<RolloutStatus, RolloutError> {
    let change = action.change()?;
    let version = normalize_version(version)?;
    if !db.change_rollout(&version, platform, &change).await? {
        return Err(RolloutError::UnknownRelease {
            version,
            platform: platform.to_owned(),
        });
    }
    let event = ClusterEvent::RolloutChanged {
        version: version.clone(),
        platform: platform.to_owned(),
    };
    bus.publish(&event).await?;
    if change.halt_percent.is_some() || change.halt_min_attempts.is_some() {
        check_halt(db, &version, platform).await?;
    }
    status(db, &version, platform).await
}

/// One release's rollout and funnel.
pub async fn status(db: &Db, version: &str, platform: &str) -> Result<RolloutStatus, RolloutError> {
    let version = normalize_version(version)?;
    let Some(rollout) = db.rollout(&version, platform).await? else {
        return Err(RolloutError::UnknownRelease {
            version,
            platform: platform.to_owned(),
        });
    };
    let funnel = Funnel::from_counts(&db.step_counts(&version, platform).await?);
    Ok(RolloutStatus { rollout, funnel })
}

/// Every release's rollout and funnel (only those the halt rule paused when `halted`),
/// newest first.
pub async fn list(db: &Db, halted: bool) -> Result<Vec<RolloutStatus>, DbError> {
    let mut statuses = Vec::new();
    for rollout in db.list_rollouts(halted, MAX_ROLLOUTS_LISTED).await? {
        let counts = db.step_counts(&rollout.version, &rollout.platform).await?;
        statuses.push(RolloutStatus {
            funnel: Funnel::from_counts(&counts),
            rollout,
        });
    }
    Ok(statuses)
}

/// Pauses the rollout of `version` on `platform` when its failures and rollbacks passed its
/// halt rule (audited as `rollout.halt` by `server:halt`); `true` when it halted now.
pub async fn check_halt(db: &Db, version: &str, platform: &str) -> Result<bool, DbError> {
    let Some(rollout) = db.rollout(version, platform).await? else {
        return Ok(false);
    };
    if rollout.paused {
        return Ok(false);
    }
    let funnel = Funnel::from_counts(&db.step_counts(version, platform).await?);
    if !rollout.halt.is_passed(&funnel)
        || !db.halt_rollout(version, platform, &clock::now()).await?
    {
        return Ok(false);
    }
    tracing::warn!(
        version,
        platform,
        attempts = funnel.attempts(),
        failures = funnel.failures(),
        halt_percent = rollout.halt.percent,
        halt_min_attempts = rollout.halt.min_attempts,
        "rollout halted: failures and rollbacks passed the threshold"
    );
    let actor = Actor {
        name: "server:halt".to_owned(),
        source: "local".to_owned(),
    };
    let target = format!("{version}/{platform}");
    access::audit(db, &actor, "rollout.halt", Some(&target), Outcome::Ok).await;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_validated() {
        let set = |percent, halt_percent, halt_min_attempts| RolloutAction::Set {
            percent,
            halt_percent,
            halt_min_attempts,
        };
        assert!(set(Some(101), None, None).change().is_err());
        assert!(set(None, Some(-1), None).change().is_err());
        assert!(set(None, None, None).change().is_err());
        assert_eq!(
            set(Some(50), None, Some(2)).change().unwrap().percent,
            Some(50)
        );
        assert_eq!(RolloutAction::Pause.change().unwrap().paused, Some(true));
        assert_eq!(RolloutAction::Resume.change().unwrap().paused, Some(false));
        assert!(normalize_version("v2.0.0").is_ok());
        assert!(normalize_version("2.0").is_err());
    }
}
