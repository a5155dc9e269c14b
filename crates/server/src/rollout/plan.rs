//! Staged rollouts: a release published without `--rollout` goes through a plan of stages
//! (by default [`DEFAULT_STAGES`]: a canary, then wider stages), each started by the server
//! itself once the one before stayed healthy for the soak time ([`DEFAULT_SOAK`]); and the halt
//! rule a release is published with, whose minimum of attempts follows the stage's size.
//!
//! A stage is a share of the fleet (`10%`) or a count of agents (`3`). Cohorts are stable
//! hashes, so a count is turned into the smallest percentage that includes that many of the
//! platform's agents that run an older version or this one; a share includes at least one (1 %
//! of 6 agents would otherwise be nobody), and no stage ever narrows the one before. The
//! percentage is topped up while a stage runs, as agents register. A group named `canary` (or
//! the one `--canary-group` names) is included whole from the first stage.
//!
//! A stage is healthy when no agent is in flight or stuck, at least one runs the release, and
//! failures and rollbacks are within the halt rule's share ([`is_healthy`]); a halted or paused
//! release never advances, and a pause or resume restarts the stage's soak. A plan stops where
//! it is once a newer release of its platform is published (the newer one's plan takes over).
//! Each look reads the platform's agents once per plan that is not at its last stage (to top
//! its stage up). One replica ([`watch_plans`], under an advisory lock) looks every
//! [`PLAN_CHECK_INTERVAL`]. Every change it makes is audited by `server:plan`. This module must
//! never advance a paused release, never narrow a rollout, and never change one unaudited.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{cohort, inflight};
use crate::access::{self, Actor, Outcome};
use crate::clock;
use crate::cluster::leader;
use crate::db::{Db, DbError, PlanRow, RolloutChange, RolloutRow};
use crate::events::live::{LiveEvent, LiveFeed};
use crate::events::{ClusterEvent, EventBus};
use crate::release::parse_version;
use crate::rollout::control;
use crate::rollout::funnel::Funnel;

/// The stages of a release published without `--rollout` or `--stages`.
pub const DEFAULT_STAGES: &str = "1%,10%,50%,100%";

/// How long a stage stays healthy before the next starts, unless `--stage-soak` says.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(30 * 60);

/// How often [`watch_plans`] looks (`serve --plan-check-secs`, hidden, for tests).
pub const PLAN_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// The group a plan's first stage includes whole, when it has agents and no other is named.
pub const CANARY_GROUP: &str = "canary";

/// The default halt rule's minimum of attempts never exceeds this (the rule's old default).
pub const MAX_SCALED_MIN_ATTEMPTS: i64 = 20;

/// Stages a plan has at most.
const MAX_STAGES: usize = 10;

/// The advisory lock under which one replica advances the plans.
const PLAN_WATCH: &str = "cms-server:rollout-plan";

/// Plans looked at per round, newest first.
const PLANS_WATCHED: i64 = 200;

/// One stage of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// At least this many agents (`3`).
    Agents(u32),
    /// This share of the fleet, and at least one agent (`10%`).
    Percent(u8),
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Agents(n) => write!(f, "{n}"),
            Stage::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A plan's stages, as `--stages` takes them (`3,10%,50%,100%`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stages(pub Vec<Stage>);

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let texts: Vec<String> = self.0.iter().map(Stage::to_string).collect();
        f.write_str(&texts.join(","))
    }
}

impl std::str::FromStr for Stages {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let stages = text
            .split(',')
            .map(|part| parse_stage(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if stages.is_empty() || stages.len() > MAX_STAGES {
            return Err(format!("a plan has 1 to {MAX_STAGES} stages"));
        }
        Ok(Stages(stages))
    }
}

fn parse_stage(text: &str) -> Result<Stage, String> {
    let bad = || {
        format!("{text:?} is not a stage: use a share like 10% (1-100) or a count of agents like 3")
    };
    match text.strip_suffix('%') {
        Some(share) => match share.trim().parse::<u8>() {
            Ok(p) if (1..=100).contains(&p) => Ok(Stage::Percent(p)),
            _ => Err(bad()),
        },
        None => match text.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Stage::Agents(n)),
            _ => Err(bad()),
        },
    }
}

/// Parses a soak time: a number with `s`, `m`, `h` or `d` (`30m`); a bare number is seconds.
pub fn parse_soak(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30m, 90s, 2h or 1d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 30m, 90s, 2h or 1d"
            ));
        }
    };
    number
        .checked_mul(unit_secs)
        .filter(|secs| *secs <= 30 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: a soak time is at most 30 days"))
}

/// How a release is published: fixed or staged, and its halt rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Staging {
    /// The plan; `None`: the fixed percentage (`--rollout N`).
    pub plan: Option<PlanSpec>,
    /// The halt rule's share, if given (else the default, 5).
    pub halt_percent: Option<i64>,
    /// The halt rule's minimum of attempts, if given (else it follows the stage's size).
    pub halt_min_attempts: Option<i64>,
}

/// A plan as asked at publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    /// The stages, in order.
    pub stages: Stages,
    /// How long each stays healthy before the next starts.
    pub soak: Duration,
    /// The group the first stage includes whole (`None`: [`CANARY_GROUP`] if it has agents).
    pub canary_group: Option<String>,
}

/// The smallest percentage whose cohort includes at least `n` of the agents with `cohorts`
/// (all of them when there are fewer; 0 for none).
pub fn percent_for_agents(cohorts: &[u32], n: usize) -> i64 {
    let mut sorted = cohorts.to_vec();
    sorted.sort_unstable();
    match n {
        0 => 0,
        n => sorted
            .get(n - 1)
            .or(sorted.last())
            .map_or(0, |c| i64::from(*c) + 1),
    }
}

/// The percentage a stage runs at over agents with `cohorts`, never below `before` (a stage
/// never narrows the rollout): a count of agents is the smallest percentage that includes them,
/// a share is at least one agent.
pub fn stage_percent(stage: Stage, cohorts: &[u32], before: i64) -> i64 {
    let own = match stage {
        Stage::Agents(n) => percent_for_agents(cohorts, n as usize),
        Stage::Percent(p) => i64::from(p).max(percent_for_agents(cohorts, 1)),
    };
    own.max(before).min(100)
}

/// The default halt rule's minimum of attempts for a stage of `agents` agents: the whole stage,
/// at least 1, at most [`MAX_SCALED_MIN_ATTEMPTS`] (a canary of 3 that all fail halts).
pub fn scaled_min_attempts(agents: usize) -> i64 {
    i64::try_from(agents)
        .unwrap_or(i64::MAX)
        .clamp(1, MAX_SCALED_MIN_ATTEMPTS)
}

/// Whether a stage is healthy: nothing `unfinished` (in flight or stuck), at least one agent
/// healthy, and failures and rollbacks within `halt_percent` of the attempts.
pub fn is_healthy(funnel: &Funnel, unfinished: i64, halt_percent: i64) -> bool {
    unfinished == 0
        && funnel.healthy >= 1
        && funnel.failures() * 100 <= halt_percent * funnel.attempts_started()
}

/// Whether a newer release of the platform is published: its own plan takes over, and this
/// one never widens again (its canary moving on to the newer release must not pull another
/// agent into an older, perhaps broken, one).
async fn newer_release_published(
    db: &Db,
    (version, platform): (&str, &str),
) -> Result<bool, DbError> {
    let Some(this) = parse_version(version) else {
        return Ok(false);
    };
    let releases = db.releases_for_platform(platform).await?;
    let newer = releases
        .iter()
        .any(|r| parse_version(&r.version).is_some_and(|other| other > this));
    if newer {
        tracing::debug!(
            version,
            platform,
            "a newer release is published; plan left as it is"
        );
    }
    Ok(newer)
}

/// The platform's agents a stage counts: those that run an older version than `version` or
/// this one (a canary that updated still counts in its stage): `(cohort, group)`.
async fn eligible(db: &Db, version: &str, platform: &str) -> Result<Vec<(u32, String)>, DbError> {
    let release = parse_version(version);
    Ok(db
        .agents_on_platform(platform)
        .await?
        .into_iter()
        .filter(|(_, current, _)| match (parse_version(current), &release) {
            (Some(current), Some(release)) => &current <= release,
            _ => true,
        })
        .map(|(agent_id, _, group)| (cohort::cohort(&agent_id), group))
        .collect())
}

fn cohorts(agents: &[(u32, String)]) -> Vec<u32> {
    agents.iter().map(|(c, _)| *c).collect()
}

/// Agents a rollout at `percent` (with `group` whole) includes.
fn included(agents: &[(u32, String)], percent: i64, group: Option<&str>) -> usize {
    agents
        .iter()
        .filter(|(c, g)| i64::from(*c) < percent || Some(g.as_str()) == group)
        .count()
}

/// The percentage a planned release starts at: its first stage's among `agents`.
fn first_percent(plan: &PlanSpec, agents: &[(u32, String)]) -> i64 {
    let first = plan
        .stages
        .0
        .first()
        .copied()
        .unwrap_or(Stage::Percent(100));
    stage_percent(first, &cohorts(agents), 0)
}

/// After a release is committed (by `release publish`, at 0 % when it has a plan): starts its
/// first stage, stores its plan, its canary group's share and its halt rule, and tells every
/// replica, whose release watchers push it to the agents it now includes.
pub async fn start(
    db: &Db,
    staging: &Staging,
    (version, platform): (&str, &str),
) -> Result<(), DbError> {
    let Some(rollout) = db.rollout(version, platform).await? else {
        return Ok(());
    };
    let agents = eligible(db, version, platform).await?;
    let first = staging
        .plan
        .as_ref()
        .map(|plan| first_percent(plan, &agents));
    let canary = match &staging.plan {
        Some(plan) => canary_group(plan, &agents),
        None => None,
    };
    if let Some(group) = &canary {
        db.set_group_rollout(version, platform, group, 100).await?;
    }
    let min_attempts = staging.halt_min_attempts.unwrap_or_else(|| {
        scaled_min_attempts(included(
            &agents,
            first.unwrap_or(rollout.rollout_percent),
            canary.as_deref(),
        ))
    });
    let change = RolloutChange {
        percent: first,
        halt_percent: staging.halt_percent,
        halt_min_attempts: Some(min_attempts),
        ..RolloutChange::default()
    };
    db.change_rollout(version, platform, &change).await?;
    if first.is_some() || canary.is_some() {
        let event = ClusterEvent::RolloutChanged {
            version: version.to_owned(),
            platform: platform.to_owned(),
        };
        EventBus::new(db).await?.publish(&event).await?;
    }
    if let Some(plan) = &staging.plan {
        let row = PlanRow {
            version: version.to_owned(),
            platform: platform.to_owned(),
            stages: plan.stages.to_string(),
            soak_secs: i64::try_from(plan.soak.as_secs()).unwrap_or(i64::MAX),
            stage: 0,
            stage_started_at: clock::now(),
            healthy_since: None,
            canary_group: canary.clone(),
            scaled_halt: staging.halt_min_attempts.is_none(),
        };
        db.insert_plan(&row).await?;
    }
    tracing::info!(
        version,
        platform,
        rollout_percent = first.unwrap_or(rollout.rollout_percent),
        stages = staging.plan.as_ref().map(|p| p.stages.to_string()),
        canary_group = canary.as_deref(),
        halt_min_attempts = min_attempts,
        "rollout started"
    );
    Ok(())
}

/// The group the first stage includes whole: the one named, else [`CANARY_GROUP`] when some of
/// the platform's agents to update are in it.
fn canary_group(plan: &PlanSpec, agents: &[(u32, String)]) -> Option<String> {
    match &plan.canary_group {
        Some(group) => Some(group.clone()),
        None => agents
            .iter()
            .any(|(_, g)| g == CANARY_GROUP)
            .then(|| CANARY_GROUP.to_owned()),
    }
}

/// A plan as the rollout status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStatus {
    /// The stages, as typed.
    pub stages: Vec<String>,
    /// The current stage, 1-based.
    pub stage: i64,
    /// Whether the last stage is reached (nothing left to advance).
    pub done: bool,
    /// When the current stage started.
    pub stage_started_at: String,
    /// Seconds a stage stays healthy before the next starts.
    pub soak_secs: i64,
    /// Since when the current stage is healthy (`None`: it is not, or not looked at yet).
    pub healthy_since: Option<String>,
    /// The earliest the next stage starts (`None`: done, or the stage is not healthy).
    pub next_advance_at: Option<String>,
    /// The group the first stage includes whole.
    pub canary_group: Option<String>,
}

/// A release's plan for its status, if it has one.
pub async fn status(db: &Db, version: &str, platform: &str) -> Result<Option<PlanStatus>, DbError> {
    let Some(plan) = db.plan(version, platform).await? else {
        return Ok(None);
    };
    let stages: Vec<String> = plan.stages.split(',').map(str::to_owned).collect();
    let done = plan.stage + 1 >= i64::try_from(stages.len()).unwrap_or(i64::MAX);
    let next_advance_at = match (&plan.healthy_since, done) {
        (Some(since), false) => parse_time(since)
            .map(|at| clock::format_utc(at + time::Duration::seconds(plan.soak_secs))),
        _ => None,
    };
    Ok(Some(PlanStatus {
        stages,
        stage: plan.stage + 1,
        done,
        stage_started_at: plan.stage_started_at,
        soak_secs: plan.soak_secs,
        healthy_since: plan.healthy_since,
        next_advance_at,
        canary_group: plan.canary_group,
    }))
}

fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// Every `interval`, on one replica, tops up and advances the plans of running releases (see
/// the module docs), until `stop`.
pub async fn watch_plans(
    db: Db,
    (live, bus): (LiveFeed, EventBus),
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let look = look_at_plans(&db, &live, &bus);
        match leader::unless_taken(&db, PLAN_WATCH, look).await {
            Ok(_) => failing = false,
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot look at the rollout plans; trying again");
                failing = true;
            }
            Err(error) => tracing::debug!(%error, "rollout plans still unreadable"),
        }
    }
}

async fn look_at_plans(db: &Db, live: &LiveFeed, bus: &EventBus) -> Result<(), DbError> {
    let plans = db.running_plans(PLANS_WATCHED).await?;
    for plan in &plans {
        look_at_plan(db, (live, bus), plan).await?;
    }
    tracing::debug!(plans = plans.len(), "rollout plans looked at");
    Ok(())
}

/// One plan: top up its stage's percentage, then advance it when healthy for the soak time.
async fn look_at_plan(
    db: &Db,
    tell: (&LiveFeed, &EventBus),
    plan: &PlanRow,
) -> Result<(), DbError> {
    let key = (plan.version.as_str(), plan.platform.as_str());
    let Some(rollout) = db.rollout(key.0, key.1).await? else {
        return Ok(());
    };
    let Ok(Stages(stages)) = plan.stages.parse::<Stages>() else {
        tracing::warn!(
            version = key.0,
            platform = key.1,
            stages = plan.stages,
            "stored plan does not parse; left alone"
        );
        return Ok(());
    };
    let index = usize::try_from(plan.stage).unwrap_or(usize::MAX);
    let Some(stage) = stages.get(index).copied() else {
        return Ok(());
    };
    if rollout.paused || newer_release_published(db, key).await? {
        return Ok(());
    }
    let agents = eligible(db, key.0, key.1).await?;
    let percent = stage_percent(stage, &cohorts(&agents), rollout.rollout_percent);
    if percent > rollout.rollout_percent {
        let rollout = widen(db, tell, (&rollout, plan), percent, &agents).await?;
        audit_plan(db, "rollout.set", &rollout, plan.stage, "agents registered").await;
    }
    if index + 1 >= stages.len() {
        return Ok(());
    }
    let funnel = Funnel::from_counts(&db.step_counts(key.0, key.1, None).await?);
    let (in_flight, stuck) = inflight::counts(db, &rollout, None).await?;
    if !is_healthy(&funnel, in_flight + stuck, rollout.halt.percent) {
        if plan.healthy_since.is_some() {
            db.set_plan_healthy_since(key, plan.stage, None).await?;
        }
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc();
    let since = match plan.healthy_since.as_deref().and_then(parse_time) {
        Some(since) => since,
        None => {
            db.set_plan_healthy_since(key, plan.stage, Some(&clock::format_utc(now)))
                .await?;
            now
        }
    };
    if now - since < time::Duration::seconds(plan.soak_secs) {
        return Ok(());
    }
    // The percentage first, then the stage: a reader never sees the next stage at the old
    // percentage. Only the lock's holder gets here, so the stage is still `plan.stage`.
    let next = stages[index + 1];
    let percent = stage_percent(next, &cohorts(&agents), rollout.rollout_percent);
    let rollout = widen(db, tell, (&rollout, plan), percent, &agents).await?;
    if !db
        .advance_plan(key, plan.stage, &clock::format_utc(now))
        .await?
    {
        return Ok(());
    }
    audit_plan(
        db,
        "rollout.advance",
        &rollout,
        plan.stage + 1,
        "previous stage healthy",
    )
    .await;
    Ok(())
}

/// Sets the release's percentage to `percent` (and its scaled halt minimum), tells every
/// replica and the dashboards, and checks the halt rule again.
async fn widen(
    db: &Db,
    (live, bus): (&LiveFeed, &EventBus),
    (rollout, plan): (&RolloutRow, &PlanRow),
    percent: i64,
    agents: &[(u32, String)],
) -> Result<RolloutRow, DbError> {
    let (version, platform) = (rollout.version.as_str(), rollout.platform.as_str());
    let group = plan.canary_group.as_deref();
    let change = RolloutChange {
        percent: Some(percent),
        halt_min_attempts: plan
            .scaled_halt
            .then(|| scaled_min_attempts(included(agents, percent, group))),
        ..RolloutChange::default()
    };
    db.change_rollout(version, platform, &change).await?;
    tracing::debug!(version, platform, percent, "rollout widened by its plan");
    let event = ClusterEvent::RolloutChanged {
        version: version.to_owned(),
        platform: platform.to_owned(),
    };
    bus.publish(&event).await?;
    live.publish(LiveEvent::RolloutChanged {
        version: version.to_owned(),
        platform: platform.to_owned(),
    });
    control::check_halt(db, version, platform).await?;
    Ok(db
        .rollout(version, platform)
        .await?
        .unwrap_or_else(|| rollout.clone()))
}

async fn audit_plan(db: &Db, action: &str, rollout: &RolloutRow, stage: i64, why: &str) {
    let actor = Actor {
        name: "server:plan".to_owned(),
        source: "local".to_owned(),
    };
    let target = format!(
        "{}/{} stage={} percent={}",
        rollout.version,
        rollout.platform,
        stage + 1,
        rollout.rollout_percent
    );
    access::audit(db, &actor, action, Some(&target), Outcome::Ok).await;
    tracing::info!(
        version = rollout.version,
        platform = rollout.platform,
        stage = stage + 1,
        rollout_percent = rollout.rollout_percent,
        halt_min_attempts = rollout.halt.min_attempts,
        why,
        "rollout plan moved"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_print_back() {
        let stages: Stages = "3, 10%,50%,100%".parse().unwrap();
        assert_eq!(
            stages.0,
            vec![
                Stage::Agents(3),
                Stage::Percent(10),
                Stage::Percent(50),
                Stage::Percent(100)
            ]
        );
        assert_eq!(stages.to_string(), "3,10%,50%,100%");
        for bad in ["", "0", "0%", "101%", "x", "5%,", "-1"] {
            assert!(bad.parse::<Stages>().is_err(), "{bad:?}");
        }
        assert!(DEFAULT_STAGES.parse::<Stages>().is_ok());
    }

    #[test]
    fn soak_times_parse() {
        assert_eq!(parse_soak("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_soak("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_soak("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_soak("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "m", "3w", "31d", "1.5h"] {
            assert!(parse_soak(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_count_of_agents_becomes_the_smallest_percentage_including_them() {
        let cohorts = [40, 7, 93, 7, 61, 12];
        assert_eq!(percent_for_agents(&cohorts, 1), 8);
        assert_eq!(percent_for_agents(&cohorts, 2), 8, "a tie includes both");
        assert_eq!(percent_for_agents(&cohorts, 3), 13);
        assert_eq!(percent_for_agents(&cohorts, 6), 94);
        assert_eq!(percent_for_agents(&cohorts, 60), 94, "all there are");
        assert_eq!(percent_for_agents(&[], 3), 0);
        assert_eq!(percent_for_agents(&cohorts, 0), 0);
    }

    #[test]
    fn a_share_includes_at_least_one_agent_and_no_stage_narrows() {
        let cohorts = [40, 7, 93, 61, 12, 55];
        assert_eq!(stage_percent(Stage::Percent(1), &cohorts, 0), 8);
        assert_eq!(stage_percent(Stage::Percent(50), &cohorts, 8), 50);
        assert_eq!(stage_percent(Stage::Percent(1), &[], 0), 1);
        assert_eq!(stage_percent(Stage::Agents(3), &cohorts, 0), 41);
        assert_eq!(stage_percent(Stage::Agents(1), &cohorts, 50), 50);
        assert_eq!(stage_percent(Stage::Percent(100), &cohorts, 50), 100);
        let included = |percent| cohorts.iter().filter(|c| i64::from(**c) < percent).count();
        assert_eq!(included(stage_percent(Stage::Agents(3), &cohorts, 0)), 3);
    }

    #[test]
    fn the_default_minimum_of_attempts_follows_the_stage() {
        assert_eq!(scaled_min_attempts(0), 1);
        assert_eq!(scaled_min_attempts(3), 3);
        assert_eq!(scaled_min_attempts(6), 6);
        assert_eq!(scaled_min_attempts(500), 20);
        let rule = crate::db::HaltRule {
            percent: 5,
            min_attempts: scaled_min_attempts(3),
        };
        let all_failed = Funnel {
            offered: 3,
            rolled_back: 3,
            ..Funnel::default()
        };
        assert!(
            rule.is_passed(&all_failed),
            "a canary of 3 that all fail halts"
        );
        let two_failed = Funnel {
            offered: 3,
            failed: 2,
            ..Funnel::default()
        };
        assert!(!rule.is_passed(&Funnel {
            offered: 2,
            ..two_failed.clone()
        }));
    }

    #[test]
    fn a_stage_is_healthy_only_when_finished_with_one_healthy_and_few_failures() {
        let funnel = |offered, healthy, failed| Funnel {
            offered,
            healthy,
            failed,
            ..Funnel::default()
        };
        assert!(is_healthy(&funnel(3, 3, 0), 0, 5));
        assert!(!is_healthy(&funnel(3, 2, 0), 1, 5), "one in flight");
        assert!(!is_healthy(&funnel(0, 0, 0), 0, 5), "nobody healthy yet");
        assert!(!is_healthy(&funnel(3, 2, 1), 0, 5), "a third failed");
        assert!(is_healthy(&funnel(20, 19, 1), 0, 5), "5 % is tolerated");
    }
}
