//! Rollout plans: the stages a release goes through and where it stands (the rules are
//! `crate::rollout::plan`'s). Queries only.

use super::{Db, DbError};

/// A release's stored plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    /// The release version.
    pub version: String,
    /// Its platform.
    pub platform: String,
    /// The stages as typed, comma-separated (`3,10%,50%,100%`).
    pub stages: String,
    /// Seconds a stage stays healthy before the next one starts.
    pub soak_secs: i64,
    /// 0-based index of the current stage.
    pub stage: i64,
    /// When the current stage started.
    pub stage_started_at: String,
    /// When the current stage was first seen healthy (`None`: not healthy now).
    pub healthy_since: Option<String>,
    /// The group the first stage includes whole, if any.
    pub canary_group: Option<String>,
    /// Whether the halt rule's minimum of attempts follows the stage's size.
    pub scaled_halt: bool,
}

type PlanTuple = (
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    i64,
);

fn plan_row(
    (
        version,
        platform,
        stages,
        soak_secs,
        stage,
        stage_started_at,
        healthy_since,
        canary_group,
        scaled_halt,
    ): PlanTuple,
) -> PlanRow {
    PlanRow {
        version,
        platform,
        stages,
        soak_secs,
        stage,
        stage_started_at,
        healthy_since,
        canary_group,
        scaled_halt: scaled_halt != 0,
    }
}

impl Db {
    /// Stores a new release's plan (at its first stage).
    pub async fn insert_plan(&self, plan: &PlanRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO rollout_plans (version, platform, stages, soak_secs, stage, \
             stage_started_at, healthy_since, canary_group, scaled_halt, stage_count) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&plan.version)
        .bind(&plan.platform)
        .bind(&plan.stages)
        .bind(plan.soak_secs)
        .bind(plan.stage)
        .bind(&plan.stage_started_at)
        .bind(&plan.healthy_since)
        .bind(&plan.canary_group)
        .bind(i64::from(plan.scaled_halt))
        .bind(i64::try_from(plan.stages.split(',').count()).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A release's plan, if it has one.
    pub async fn plan(&self, version: &str, platform: &str) -> Result<Option<PlanRow>, DbError> {
        let row = sqlx::query_as::<_, PlanTuple>(
            "SELECT version, platform, stages, soak_secs, stage, stage_started_at, \
             healthy_since, canary_group, scaled_halt \
             FROM rollout_plans WHERE version = $1 AND platform = $2",
        )
        .bind(version)
        .bind(platform)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(plan_row))
    }

    /// The plans of releases that are not paused and not at their last stage (at most `limit`,
    /// newest first).
    pub async fn running_plans(&self, limit: i64) -> Result<Vec<PlanRow>, DbError> {
        let rows = sqlx::query_as::<_, PlanTuple>(
            "SELECT p.version, p.platform, p.stages, p.soak_secs, p.stage, \
             p.stage_started_at, p.healthy_since, p.canary_group, p.scaled_halt \
             FROM rollout_plans p JOIN releases r \
             ON r.version = p.version AND r.platform = p.platform \
             WHERE r.paused = 0 AND p.stage + 1 < p.stage_count \
             ORDER BY r.published_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(plan_row).collect())
    }

    /// Sets (or clears) when the current stage `stage` of a plan was first seen healthy.
    pub async fn set_plan_healthy_since(
        &self,
        (version, platform): (&str, &str),
        stage: i64,
        since: Option<&str>,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE rollout_plans SET healthy_since = $1 \
             WHERE version = $2 AND platform = $3 AND stage = $4",
        )
        .bind(since)
        .bind(version)
        .bind(platform)
        .bind(stage)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Restarts the soak of a plan's current stage (after a pause or a resume): it must be
    /// seen healthy again for the whole soak time.
    pub async fn restart_plan_soak(&self, version: &str, platform: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE rollout_plans SET healthy_since = NULL WHERE version = $1 AND platform = $2",
        )
        .bind(version)
        .bind(platform)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a plan from stage `from` to `from + 1` at `now`; `false` when it was not at
    /// `from` any more (another replica moved it).
    pub async fn advance_plan(
        &self,
        (version, platform): (&str, &str),
        from: i64,
        now: &str,
    ) -> Result<bool, DbError> {
        let result = sqlx::query(
            "UPDATE rollout_plans SET stage = stage + 1, stage_started_at = $1, \
             healthy_since = NULL WHERE version = $2 AND platform = $3 AND stage = $4",
        )
        .bind(now)
        .bind(version)
        .bind(platform)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }
}
