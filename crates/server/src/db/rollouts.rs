//! The agents' update progress and the rollout control of each release: what the dashboard's
//! funnel counts, and the pause and halt that stop a release from being offered.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Db, DbError};

/// One stored progress event.
#[derive(Debug, Clone)]
pub struct NewUpdateEvent<'a> {
    /// The report id the agent chose.
    pub event_id: &'a str,
    /// The release version.
    pub version: &'a str,
    /// Its platform.
    pub platform: &'a str,
    /// Step name.
    pub step: &'a str,
    /// For a failure: the step that failed.
    pub failed_step: Option<&'a str>,
    /// The report's message.
    pub detail: &'a str,
    /// When the agent saw it.
    pub created_at: &'a str,
    /// Whether the server offered this release to the agent (only these are counted).
    pub verified: bool,
}

/// A progress event as the agent page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateEventRow {
    /// The release version.
    pub version: String,
    /// Step name.
    pub step: String,
    /// For a failure: the step that failed.
    pub failed_step: Option<String>,
    /// The agent's message.
    pub detail: Option<String>,
    /// When the agent saw it (RFC 3339).
    pub created_at: String,
    /// Whether it counts (the server offered this release to the agent).
    pub verified: bool,
}

type UpdateEventTuple = (String, String, Option<String>, Option<String>, String, i64);

/// A release's rollout and its control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutRow {
    /// Version.
    pub version: String,
    /// Platform.
    pub platform: String,
    /// When it was published.
    pub published_at: String,
    /// Share of the fleet it is offered to (while not paused).
    pub rollout_percent: i64,
    /// Offered to nobody new while paused.
    pub paused: bool,
    /// When the halt rule paused it, if it did.
    pub halted_at: Option<String>,
    /// Its halt rule.
    pub halt: HaltRule,
    /// At most this many agents between offered and done at once (`None`: no cap).
    pub max_in_flight: Option<i64>,
    /// An offer without an end step after this long is stuck.
    pub stuck_after_secs: i64,
}

/// Distinct agents per step of one release on one platform, as the database counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Agents that reported each step (by step name).
    pub reported: BTreeMap<String, i64>,
    /// Agents that reported a failure, by the step that failed.
    pub failed_by_step: BTreeMap<String, i64>,
    /// Agents that reported progress for the release and run its version now, or reported
    /// `healthy` (the version runs; the report may still be on its way).
    pub healthy_reporting: i64,
    /// Agents that run the release's version and reported no progress for it (older agents,
    /// or agents registered at that version).
    pub silent_on_version: i64,
    /// Agents without progress reports whose error reports say the update failed.
    pub legacy_failed: i64,
    /// Agents without progress reports whose error reports say the update was rolled back.
    pub legacy_rolled_back: i64,
    /// Each agent offered the release once, by where its attempt ended (`healthy`,
    /// `rolled_back`, `failed`, `refused`, `in_progress`).
    pub end_states: BTreeMap<String, i64>,
}

/// When a rollout pauses itself: failures and rollbacks above `percent` of the attempts, once
/// there are at least `min_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HaltRule {
    /// Share of failed attempts (0..=100) that is still tolerated.
    pub percent: i64,
    /// Attempts needed before the rule applies.
    pub min_attempts: i64,
}

type RolloutTuple = (
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    i64,
);

/// What a rollout change sets; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutChange {
    /// New share of the fleet.
    pub percent: Option<i64>,
    /// Pause (`true`) or resume (`false`); resuming clears a halt.
    pub paused: Option<bool>,
    /// New halt rule share.
    pub halt_percent: Option<i64>,
    /// New halt rule minimum of attempts.
    pub halt_min_attempts: Option<i64>,
    /// New cap on agents in flight (0 removes it).
    pub max_in_flight: Option<i64>,
    /// New stuck timeout, in seconds.
    pub stuck_after_secs: Option<i64>,
}

impl Db {
    /// Stores progress events of one agent, each id once; returns those that were new.
    pub async fn insert_update_events<'a>(
        &self,
        agent_id: &str,
        events: &[NewUpdateEvent<'a>],
        now: &str,
    ) -> Result<Vec<NewUpdateEvent<'a>>, DbError> {
        let mut tx = self.pool.begin().await?;
        let mut stored = Vec::new();
        for event in events {
            let result = sqlx::query(
                "INSERT INTO update_events (event_id, agent_id, version, platform, step, \
                 failed_step, detail, created_at, received_at, verified) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (agent_id, event_id) DO NOTHING",
            )
            .bind(event.event_id)
            .bind(agent_id)
            .bind(event.version)
            .bind(event.platform)
            .bind(event.step)
            .bind(event.failed_step)
            .bind(event.detail)
            .bind(event.created_at)
            .bind(now)
            .bind(i64::from(event.verified))
            .execute(&mut *tx)
            .await?;
            if result.rows_affected() > 0 {
                stored.push(event.clone());
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// An agent's latest progress events, newest first.
    pub async fn agent_update_events(
        &self,
        agent_id: &str,
        limit: i64,
    ) -> Result<Vec<UpdateEventRow>, DbError> {
        let rows = sqlx::query_as::<_, UpdateEventTuple>(
            "SELECT version, step, failed_step, detail, created_at, verified FROM update_events \
             WHERE agent_id = $1 ORDER BY received_at DESC, event_id DESC LIMIT $2",
        )
        .bind(agent_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(version, step, failed_step, detail, created_at, verified)| UpdateEventRow {
                    version,
                    step,
                    failed_step,
                    detail,
                    created_at,
                    verified: verified != 0,
                },
            )
            .collect())
    }

    /// Distinct agents per step of one release, with what older agents reveal; only the agents
    /// of `group` when one is given (`Some`). Only verified events count, older agents only when
    /// they were offered the release, and `healthy` only from agents whose own heartbeats or
    /// registration reported the version.
    pub async fn step_counts(
        &self,
        version: &str,
        platform: &str,
        group: Option<&str>,
    ) -> Result<StepCounts, DbError> {
        // '' stands for every group: a group name is never empty.
        let group = group.unwrap_or_default();
        let reported = sqlx::query_as::<_, (String, i64)>(
            "SELECT step, COUNT(DISTINCT agent_id) FROM update_events \
             WHERE version = $1 AND platform = $2 AND verified = 1 AND (step <> 'healthy' \
             OR EXISTS (SELECT 1 FROM agent_versions v \
                 WHERE v.agent_id = update_events.agent_id AND v.version = $1)) \
             AND ($3 = '' OR EXISTS (SELECT 1 FROM agents g \
                 WHERE g.agent_id = update_events.agent_id AND g.agent_group = $3)) \
             GROUP BY step",
        )
        .bind(version)
        .bind(platform)
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        let failed_by_step = sqlx::query_as::<_, (String, i64)>(
            "SELECT COALESCE(failed_step, 'unknown'), COUNT(DISTINCT agent_id) FROM update_events \
             WHERE version = $1 AND platform = $2 AND step = 'failed' AND verified = 1 \
             AND ($3 = '' OR EXISTS (SELECT 1 FROM agents g \
                 WHERE g.agent_id = update_events.agent_id AND g.agent_group = $3)) \
             GROUP BY 1",
        )
        .bind(version)
        .bind(platform)
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        // Healthy: agents that reported the release healthy, or run it and reported it at
        // all. Counted from the release's own rows (its healthy events, the agents on its
        // version) and never by a pass over the platform's whole fleet: the halt rule counts
        // this again at each failure reported.
        let (healthy_events,) = sqlx::query_as::<_, (i64,)>(
            "SELECT COUNT(DISTINCT u.agent_id) FROM update_events u \
             WHERE u.version = $1 AND u.platform = $2 AND u.step = 'healthy' AND u.verified = 1 \
             AND EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = u.agent_id AND a.platform = $2 \
                 AND ($3 = '' OR a.agent_group = $3)) \
             AND EXISTS (SELECT 1 FROM agent_versions v \
                 WHERE v.agent_id = u.agent_id AND v.version = $1)",
        )
        .bind(version)
        .bind(platform)
        .bind(group)
        .fetch_one(&self.pool)
        .await?;
        let (on_version, reporting_on_version, healthy_on_version) =
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT COUNT(*), \
                 CAST(COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM update_events u \
                     WHERE u.agent_id = a.agent_id AND u.version = $1 AND u.verified = 1) \
                     THEN 1 ELSE 0 END), 0) \
                     AS BIGINT), \
                 CAST(COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM update_events h \
                     WHERE h.agent_id = a.agent_id AND h.version = $1 AND h.step = 'healthy' \
                     AND h.platform = $2 AND h.verified = 1) THEN 1 ELSE 0 END), 0) AS BIGINT) \
                 FROM agents a WHERE a.version = $1 AND a.platform = $2 \
                 AND ($3 = '' OR a.agent_group = $3) \
                 AND EXISTS (SELECT 1 FROM update_offers o \
                     WHERE o.agent_id = a.agent_id AND o.version = $1 AND o.platform = $2)",
            )
            .bind(version)
            .bind(platform)
            .bind(group)
            .fetch_one(&self.pool)
            .await?;
        let healthy_reporting = healthy_events + reporting_on_version - healthy_on_version;
        let silent_on_version = on_version - reporting_on_version;
        let legacy = |kind| self.legacy_count(kind, version, platform, group);
        let end_states = self.end_states(version, platform, group).await?;
        Ok(StepCounts {
            end_states,
            reported: reported.into_iter().collect(),
            failed_by_step: failed_by_step.into_iter().collect(),
            healthy_reporting,
            silent_on_version,
            legacy_failed: legacy("update_failed").await?,
            legacy_rolled_back: legacy("update_rolled_back").await?,
        })
    }

    /// Each agent (of `group`, unless it is '') offered the release, once, by where its attempt
    /// ended, the first that holds: `healthy` (runs the version, or reported it healthy while
    /// its heartbeats reported the version), `rolled_back`, `failed` (its progress or, for an
    /// older agent, its error reports), `refused` (turned it down without trying and never ran
    /// it), `healthy` (ran it and moved on), `deferred` (put it off, its latest progress),
    /// else `in_progress`. Only verified progress counts (an offer is what makes it verified).
    async fn end_states(
        &self,
        version: &str,
        platform: &str,
        group: &str,
    ) -> Result<BTreeMap<String, i64>, DbError> {
        let rows = sqlx::query_as::<_, (String, i64)>(concat!(
            "SELECT state, COUNT(*) FROM (SELECT CASE \
               WHEN EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = o.agent_id \
                   AND a.version = $1) \
                 OR (EXISTS (SELECT 1 FROM update_events u WHERE u.agent_id = o.agent_id \
                     AND u.version = $1 AND u.platform = $2 AND u.verified = 1 \
                     AND u.step = 'healthy') \
                   AND EXISTS (SELECT 1 FROM agent_versions v WHERE v.agent_id = o.agent_id \
                     AND v.version = $1)) THEN 'healthy' \
               WHEN EXISTS (SELECT 1 FROM update_events u WHERE u.agent_id = o.agent_id \
                     AND u.version = $1 AND u.platform = $2 AND u.verified = 1 \
                     AND u.step = 'rolled_back') \
                 OR EXISTS (SELECT 1 FROM error_reports e WHERE e.agent_id = o.agent_id \
                     AND e.kind = 'update_rolled_back' AND e.message LIKE $4) \
                 THEN 'rolled_back' \
               WHEN EXISTS (SELECT 1 FROM update_events u WHERE u.agent_id = o.agent_id \
                     AND u.version = $1 AND u.platform = $2 AND u.verified = 1 \
                     AND u.step = 'failed') \
                 OR EXISTS (SELECT 1 FROM error_reports e WHERE e.agent_id = o.agent_id \
                     AND e.kind = 'update_failed' AND e.message LIKE $4) \
                 THEN 'failed' \
               WHEN EXISTS (SELECT 1 FROM update_events u WHERE u.agent_id = o.agent_id \
                     AND u.version = $1 AND u.platform = $2 AND u.verified = 1 \
                     AND u.step = 'refused') \
                 AND NOT EXISTS (SELECT 1 FROM agent_versions v \
                     WHERE v.agent_id = o.agent_id AND v.version = $1) THEN 'refused' \
               WHEN EXISTS (SELECT 1 FROM agent_versions v WHERE v.agent_id = o.agent_id \
                     AND v.version = $1) THEN 'healthy' \
               WHEN ",
            offer_deferred_now!(),
            " THEN 'deferred' \
               ELSE 'in_progress' END AS state \
             FROM update_offers o WHERE o.version = $1 AND o.platform = $2 \
             AND ($3 = '' OR EXISTS (SELECT 1 FROM agents g \
                 WHERE g.agent_id = o.agent_id AND g.agent_group = $3))) ends \
             GROUP BY state"
        ))
        .bind(version)
        .bind(platform)
        .bind(group)
        .bind(format!("update to {version} %"))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Agents (of `group`, unless it is '') that were offered this release and sent no
    /// progress for it but an error report of `kind` about it (its message starts
    /// `update to VERSION `).
    async fn legacy_count(
        &self,
        kind: &str,
        version: &str,
        platform: &str,
        group: &str,
    ) -> Result<i64, DbError> {
        let (count,) = sqlx::query_as::<_, (i64,)>(
            "SELECT COUNT(DISTINCT e.agent_id) FROM error_reports e \
             JOIN agents a ON a.agent_id = e.agent_id \
             WHERE e.kind = $1 AND e.message LIKE $2 AND a.platform = $3 \
             AND ($5 = '' OR a.agent_group = $5) \
             AND NOT EXISTS (SELECT 1 FROM update_events u \
                 WHERE u.agent_id = e.agent_id AND u.version = $4) \
             AND EXISTS (SELECT 1 FROM update_offers o \
                 WHERE o.agent_id = e.agent_id AND o.version = $4 AND o.platform = $3)",
        )
        .bind(kind)
        .bind(format!("update to {version} %"))
        .bind(platform)
        .bind(version)
        .bind(group)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }

    /// Every release with its rollout control (only halted ones when `halted`), newest
    /// publication first (at most `limit`).
    pub async fn list_rollouts(
        &self,
        halted: bool,
        limit: i64,
    ) -> Result<Vec<RolloutRow>, DbError> {
        let rows = sqlx::query_as::<_, RolloutTuple>(
            "SELECT version, platform, published_at, rollout_percent, paused, halted_at, \
             halt_percent, halt_min_attempts, max_in_flight, stuck_after_secs FROM releases \
             WHERE ($1 = 0 OR (paused = 1 AND halted_at IS NOT NULL)) \
             ORDER BY published_at DESC, platform DESC, version DESC LIMIT $2",
        )
        .bind(i64::from(halted))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(rollout_row).collect())
    }

    /// One release's rollout control, if published.
    pub async fn rollout(
        &self,
        version: &str,
        platform: &str,
    ) -> Result<Option<RolloutRow>, DbError> {
        let row = sqlx::query_as::<_, RolloutTuple>(
            "SELECT version, platform, published_at, rollout_percent, paused, halted_at, \
             halt_percent, halt_min_attempts, max_in_flight, stuck_after_secs FROM releases \
             WHERE version = $1 AND platform = $2",
        )
        .bind(version)
        .bind(platform)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(rollout_row))
    }

    /// Applies `change` to a release; `false` when no such release is published.
    pub async fn change_rollout(
        &self,
        version: &str,
        platform: &str,
        change: &RolloutChange,
    ) -> Result<bool, DbError> {
        let paused = change.paused.map(i64::from);
        let result = sqlx::query(
            "UPDATE releases SET rollout_percent = COALESCE($1, rollout_percent), \
             paused = COALESCE($2, paused), \
             halted_at = CASE WHEN $2 = 0 THEN NULL ELSE halted_at END, \
             halt_percent = COALESCE($3, halt_percent), \
             halt_min_attempts = COALESCE($4, halt_min_attempts), \
             max_in_flight = CASE WHEN $7 = 0 THEN NULL ELSE COALESCE($7, max_in_flight) END, \
             stuck_after_secs = COALESCE($8, stuck_after_secs) \
             WHERE version = $5 AND platform = $6",
        )
        .bind(change.percent)
        .bind(paused)
        .bind(change.halt_percent)
        .bind(change.halt_min_attempts)
        .bind(version)
        .bind(platform)
        .bind(change.max_in_flight)
        .bind(change.stuck_after_secs)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Pauses a running rollout as halted at `now`; `false` when it was paused already.
    pub async fn halt_rollout(
        &self,
        version: &str,
        platform: &str,
        now: &str,
    ) -> Result<bool, DbError> {
        let result = sqlx::query(
            "UPDATE releases SET paused = 1, halted_at = $1 \
             WHERE version = $2 AND platform = $3 AND paused = 0",
        )
        .bind(now)
        .bind(version)
        .bind(platform)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }
}

fn rollout_row(
    (
        version,
        platform,
        published_at,
        rollout_percent,
        paused,
        halted_at,
        percent,
        min_attempts,
        max_in_flight,
        stuck_after_secs,
    ): RolloutTuple,
) -> RolloutRow {
    RolloutRow {
        version,
        platform,
        published_at,
        rollout_percent,
        paused: paused != 0,
        halted_at,
        halt: HaltRule {
            percent,
            min_attempts,
        },
        max_in_flight,
        stuck_after_secs,
    }
}
