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
//! entry by `server:halt` and a record in the release's halt history. Resuming a halted release
//! needs a reason, kept in that history and the audit entry. A paused release is offered to no agent
//! (`crate::db` reads its rollout as 0 for the update check). This module must never change
//! a rollout without an audit entry.

use serde::Serialize;

use super::funnel::Funnel;
use crate::access::{self, Actor, Outcome};
use crate::clock;
use crate::db::{Db, DbError, HaltRecord, HaltRule, RolloutChange, RolloutRow};
use crate::events::{ClusterEvent, EventBus};
use crate::rollout::inflight;
use crate::rollout::{cohort, group};

/// Releases the rollout listing shows at most.
pub const MAX_ROLLOUTS_LISTED: i64 = 200;

/// Groups whose own funnel a release's rollout shows at most.
const MAX_GROUP_FUNNELS: i64 = 20;

/// A change an operator asks for; as JSON (the API's body) `{"action": "set", "percent": 50}`,
/// `{"action": "pause"}` or `{"action": "resume", "reason": "..."}` (a reason is required to
/// resume a halted release).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
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
        /// At most this many agents between offered and done at once (0: no cap).
        #[serde(default)]
        max_in_flight: Option<i64>,
        /// Minutes after which an offered agent without an end step counts as stuck.
        #[serde(default)]
        stuck_after_mins: Option<i64>,
    },
    /// Offer the release to nobody new.
    Pause,
    /// Offer it again (clears a halt; the reason is required then, and kept in its history).
    Resume {
        /// Why the operator resumes it.
        #[serde(default)]
        reason: Option<String>,
    },
}

/// The longest reason a resume may give.
const MAX_REASON_CHARS: usize = 500;

impl RolloutAction {
    /// The audit log's name of the action.
    pub fn audit_name(&self) -> &'static str {
        match self {
            RolloutAction::Set { .. } => "rollout.set",
            RolloutAction::Pause => "rollout.pause",
            RolloutAction::Resume { .. } => "rollout.resume",
        }
    }

    fn change(&self) -> Result<RolloutChange, RolloutError> {
        Ok(match self.clone() {
            RolloutAction::Set {
                percent,
                halt_percent,
                halt_min_attempts,
                max_in_flight,
                stuck_after_mins,
            } => {
                check_range("percent", percent, 100)?;
                check_range("halt percent", halt_percent, 100)?;
                check_range("halt minimum of attempts", halt_min_attempts, i64::MAX)?;
                check_range("max in flight", max_in_flight, 1_000_000)?;
                check_range("stuck after (minutes)", stuck_after_mins, 7 * 24 * 60)?;
                if stuck_after_mins == Some(0) {
                    return Err(RolloutError::Invalid(
                        "stuck after (minutes) must be at least 1".into(),
                    ));
                }
                let change = RolloutChange {
                    percent,
                    paused: None,
                    halt_percent,
                    halt_min_attempts,
                    max_in_flight,
                    stuck_after_secs: stuck_after_mins.map(|m| m * 60),
                };
                if change == RolloutChange::default() {
                    return Err(RolloutError::Invalid("nothing to set".into()));
                }
                change
            }
            RolloutAction::Pause => RolloutChange {
                paused: Some(true),
                ..RolloutChange::default()
            },
            RolloutAction::Resume { .. } => RolloutChange {
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
    /// Agents offered the release with no end step yet, within the stuck timeout.
    pub in_flight: i64,
    /// Agents offered it longer ago than the stuck timeout with no end step.
    pub stuck: i64,
    /// The funnel of each group the release concerns (offered to its agents, or with its own
    /// percentage or halt rule), by name.
    pub groups: Vec<GroupFunnel>,
    /// Its staged plan and where it stands (`None`: a fixed percentage).
    pub plan: Option<super::plan::PlanStatus>,
    /// Its automatic halts, newest first, with who resumed each and why.
    pub halts: Vec<HaltRecord>,
    /// A newer release for the platform is offered to the whole fleet: this one is offered to
    /// nobody.
    pub superseded: bool,
}

/// Halts a rollout's status lists at most.
const MAX_HALTS_LISTED: i64 = 20;

/// One group's part of a release's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupFunnel {
    /// The group.
    pub group: String,
    /// Its own halt rule (the release's numbers where it sets none), when it has one: passing
    /// it halts the whole release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halt: Option<HaltRule>,
    /// What its agents reported.
    pub funnel: Funnel,
    /// Its own cap of updates in flight, when it has one (the release's holds as well).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<i64>,
    /// Its agents offered the release with no end step yet, within the stuck timeout.
    pub in_flight: i64,
    /// Its agents offered it longer ago than the stuck timeout with no end step.
    pub stuck: i64,
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
    crate::release::parse_version(version)
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
    let reason = match &action {
        RolloutAction::Resume { reason: Some(r) } if !r.trim().is_empty() => Some(r.trim()),
        _ => None,
    };
    let target = match reason {
        Some(reason) => {
            let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
            format!("{version}/{platform} reason={reason}")
        }
        None => format!("{version}/{platform}"),
    };
    let audit_name = action.audit_name();
    let result = apply_unaudited(db, bus, actor, (version, platform), action).await;
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
    actor: &Actor,
    (version, platform): (&str, &str),
    action: RolloutAction,
) -> Result<RolloutStatus, RolloutError> {
    let change = action.change()?;
    let version = normalize_version(version)?;
    let unknown = || RolloutError::UnknownRelease {
        version: version.clone(),
        platform: platform.to_owned(),
    };
    let resumed_halt = match &action {
        RolloutAction::Resume { reason } => {
            let rollout = db.rollout(&version, platform).await?.ok_or_else(unknown)?;
            resume_reason(&rollout, reason.as_deref())?
        }
        _ => None,
    };
    if !db.change_rollout(&version, platform, &change).await? {
        return Err(unknown());
    }
    if change.paused.is_some() {
        db.restart_plan_soak(&version, platform).await?;
    }
    if let Some(reason) = resumed_halt {
        let key = (version.as_str(), platform);
        db.resume_halts(key, &clock::now(), &actor.name, &reason)
            .await?;
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

/// The reason a resume of `rollout` gives, when it resumes a halt (`None`: it resumes no halt);
/// refused when a halted release is resumed without one.
fn resume_reason(
    rollout: &RolloutRow,
    reason: Option<&str>,
) -> Result<Option<String>, RolloutError> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if let Some(reason) = reason
        && (reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control))
    {
        return Err(RolloutError::Invalid(format!(
            "a reason is one line of at most {MAX_REASON_CHARS} characters"
        )));
    }
    match (&rollout.halted_at, reason) {
        (None, _) => Ok(None),
        (Some(halted_at), None) => Err(RolloutError::Invalid(format!(
            "{} {} was halted at {halted_at} by its failures; resuming it needs a reason \
             (rollout resume --reason TEXT, or \"reason\" in the API)",
            rollout.version, rollout.platform
        ))),
        (Some(_), Some(reason)) => Ok(Some(reason.to_owned())),
    }
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
    Ok(with_funnel(db, rollout).await?)
}

/// Every release's rollout and funnel (only those the halt rule paused when `halted`),
/// newest first.
pub async fn list(db: &Db, halted: bool) -> Result<Vec<RolloutStatus>, DbError> {
    let mut statuses = Vec::new();
    for rollout in db.list_rollouts(halted, MAX_ROLLOUTS_LISTED).await? {
        statuses.push(with_funnel(db, rollout).await?);
    }
    Ok(statuses)
}

async fn with_funnel(db: &Db, rollout: RolloutRow) -> Result<RolloutStatus, DbError> {
    let (version, platform) = (&rollout.version, &rollout.platform);
    let counts = db.step_counts(version, platform, None).await?;
    let (in_flight, stuck) = inflight::counts(db, &rollout, None).await?;
    let rules = group_rules(db, &rollout).await?;
    let caps = db.group_in_flight_caps(version, platform).await?;
    let mut groups = Vec::new();
    for group in db
        .release_groups(version, platform, MAX_GROUP_FUNNELS)
        .await?
    {
        let funnel = Funnel::from_counts(&db.step_counts(version, platform, Some(&group)).await?);
        let (in_flight, stuck) = inflight::counts(db, &rollout, Some(&group)).await?;
        groups.push(GroupFunnel {
            halt: group::find(&rules, &group),
            max_in_flight: group::find(&caps, &group),
            group,
            funnel,
            in_flight,
            stuck,
        });
    }
    let newer = db.releases_for_platform(platform).await?;
    let offered: Vec<(String, i64)> = newer
        .into_iter()
        .map(|r| (r.version, r.rollout_percent))
        .collect();
    Ok(RolloutStatus {
        plan: super::plan::status(db, version, platform).await?,
        halts: db.halts((version, platform), MAX_HALTS_LISTED).await?,
        superseded: cohort::is_superseded(version, &offered),
        funnel: Funnel::from_counts(&counts),
        rollout,
        in_flight,
        stuck,
        groups,
    })
}

/// The groups with their own halt rule for the release, each rule completed with the
/// release's numbers.
async fn group_rules(db: &Db, rollout: &RolloutRow) -> Result<Vec<(String, HaltRule)>, DbError> {
    let rules = db
        .group_halt_rules(&rollout.version, &rollout.platform)
        .await?;
    Ok(rules
        .into_iter()
        .map(|(group, percent, min_attempts)| {
            let rule = HaltRule {
                percent: percent.unwrap_or(rollout.halt.percent),
                min_attempts: min_attempts.unwrap_or(rollout.halt.min_attempts),
            };
            (group, rule)
        })
        .collect())
}

/// A halt rule that passed: the group's own (`group` named) or the release's, with the funnel
/// it passed on.
struct Passed {
    group: Option<String>,
    rule: HaltRule,
    funnel: Funnel,
}

impl Passed {
    /// The numbers at the halt, for its history.
    fn why(&self) -> String {
        let whose = match &self.group {
            Some(group) => format!("group {group}: "),
            None => String::new(),
        };
        format!(
            "{whose}{} of {} attempts failed or rolled back ({} failed, {} rolled back), \
             more than {} % of at least {} attempts",
            self.funnel.failures(),
            self.funnel.attempts_started(),
            self.funnel.failed,
            self.funnel.rolled_back,
            self.rule.percent,
            self.rule.min_attempts
        )
    }
}

/// The rule that passed, if any: the release's own first, then each group's.
async fn passed_rule(db: &Db, rollout: &RolloutRow) -> Result<Option<Passed>, DbError> {
    let (version, platform) = (&rollout.version, &rollout.platform);
    let funnel = Funnel::from_counts(&db.step_counts(version, platform, None).await?);
    if rollout.halt.is_passed(&funnel) {
        return Ok(Some(Passed {
            group: None,
            rule: rollout.halt,
            funnel,
        }));
    }
    for (group, rule) in group_rules(db, rollout).await? {
        let funnel = Funnel::from_counts(&db.step_counts(version, platform, Some(&group)).await?);
        if rule.is_passed(&funnel) {
            return Ok(Some(Passed {
                group: Some(group),
                rule,
                funnel,
            }));
        }
    }
    Ok(None)
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
    let Some(passed) = passed_rule(db, &rollout).await? else {
        return Ok(false);
    };
    let now = clock::now();
    if !db.halt_rollout(version, platform, &now).await? {
        return Ok(false);
    }
    db.record_halt((version, platform), &now, &passed.why())
        .await?;
    let by_group = passed.group;
    tracing::warn!(
        version,
        platform,
        group = by_group.as_deref(),
        halt_percent = rollout.halt.percent,
        halt_min_attempts = rollout.halt.min_attempts,
        "rollout halted: failures and rollbacks passed the threshold (of the group, when named)"
    );
    let actor = Actor {
        name: "server:halt".to_owned(),
        source: "local".to_owned(),
    };
    let target = match by_group {
        Some(group) => format!("{version}/{platform} group={group}"),
        None => format!("{version}/{platform}"),
    };
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
            max_in_flight: None,
            stuck_after_mins: None,
        };
        assert!(set(Some(101), None, None).change().is_err());
        assert!(set(None, Some(-1), None).change().is_err());
        assert!(set(None, None, None).change().is_err());
        assert_eq!(
            set(Some(50), None, Some(2)).change().unwrap().percent,
            Some(50)
        );
        assert_eq!(RolloutAction::Pause.change().unwrap().paused, Some(true));
        let resume = RolloutAction::Resume { reason: None };
        assert_eq!(resume.change().unwrap().paused, Some(false));
        assert!(normalize_version("v2.0.0").is_ok());
        assert!(normalize_version("2.0").is_err());
    }
}
