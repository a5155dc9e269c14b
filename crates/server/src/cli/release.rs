//! `cms-server release publish|rollout`: publish a release, change its share of the fleet.
//!
//! `release publish` prints exactly one line on success,
//! `published X.Y.Z for PLATFORM (N bytes, sha256 HEX)`; `release rollout` prints
//! `rollout of X.Y.Z for PLATFORM set to N%`. This module must never sign or store anything
//! itself (that is [`crate::release`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::rollout::{RolloutTarget, rollout_in_store};
use super::{DEFAULT_PLATFORM, Refusal, StoreArgs, command_actor, exit_code, print_line};
use crate::db::Db;
use crate::release::delta::DEFAULT_DELTA_FROM;
use crate::release::tuf::DEFAULT_TIMESTAMP_LIFETIME;
use crate::release::{self, PLATFORMS, PublishRequest};
use crate::rollout::control::{RolloutAction, RolloutStatus};
use crate::rollout::plan;

#[derive(Debug, Subcommand)]
pub(super) enum ReleaseCommand {
    /// Package an agent and an updater as a release; a running server offers it at once.
    Publish(PublishArgs),
    /// Change the share of the fleet a published release is offered to; running servers push
    /// it to the agents it now includes.
    Rollout(RolloutArgs),
}

#[derive(Debug, Args)]
pub(super) struct PublishArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Release version, X.Y.Z (SemVer 2.0).
    #[arg(long)]
    version: String,
    /// The agent executable to ship.
    #[arg(long)]
    agent: PathBuf,
    /// The updater executable to ship.
    #[arg(long)]
    updater: PathBuf,
    /// Platform the executables are built for.
    #[arg(long, default_value = DEFAULT_PLATFORM, value_parser = PLATFORMS)]
    platform: String,
    /// A fixed percentage of the fleet (by stable cohort) offered the release, instead of the
    /// staged plan.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100), conflicts_with_all = ["stages", "stage_soak", "canary_group"])]
    rollout: Option<u8>,
    /// The plan's stages: shares (`10%`, at least one agent each) or counts of agents (`3`);
    /// each starts once the one before stayed healthy for the soak time.
    #[arg(long, default_value = plan::DEFAULT_STAGES)]
    stages: plan::Stages,
    /// How long a stage stays healthy before the next starts (`30m`, `90s`, `2h`, `1d`).
    #[arg(long, default_value = "30m", value_parser = plan::parse_soak)]
    stage_soak: Duration,
    /// The group the first stage includes whole (default: `canary`, when it has agents).
    #[arg(long, value_parser = group_name)]
    canary_group: Option<String>,
    /// The rollout halts itself when failures and rollbacks pass this share of the attempts
    /// (default 5).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    halt_percent: Option<u8>,
    /// ... once there are at least this many attempts (default: the stage's agents, 1 to 20).
    #[arg(long)]
    halt_min_attempts: Option<u32>,
    /// Seconds the signed timestamp metadata stays valid; agents refuse older metadata, so a
    /// server that stops re-signing cannot keep them on a stale release list (freeze attack).
    #[arg(long, default_value_t = DEFAULT_TIMESTAMP_LIFETIME.as_secs())]
    timestamp_expiry_secs: u64,
    /// Also make a signed delta from each of this many newest older releases of the platform
    /// (kept only when at most half the package; 0: none).
    #[arg(long, default_value_t = DEFAULT_DELTA_FROM)]
    delta_from: usize,
    /// Urgent (a security fix): agents on a metered connection take it at once instead of
    /// waiting for an unmetered one.
    #[arg(long)]
    urgent: bool,
}

#[derive(Debug, Args)]
pub(super) struct RolloutArgs {
    #[command(flatten)]
    release: RolloutTarget,
    /// The new percentage of the fleet (by stable cohort).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    percent: u8,
}

/// A valid group name, for clap.
fn group_name(text: &str) -> Result<String, String> {
    crate::rollout::group::checked(text)
        .map(str::to_owned)
        .map_err(|e| e.to_string())
}

impl Refusal for release::PublishError {
    fn is_refusal(&self) -> bool {
        release::PublishError::is_refusal(self)
    }
}

/// Publishes the release (at 0 % when it has a plan), then starts its rollout: the plan's first
/// stage and the halt rule (`rollout::plan::start`).
pub(super) async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let database_url = args.store.database_url()?;
    let store = (args.store.data_dir.clone(), database_url.clone());
    let staging = plan::Staging {
        plan: args.rollout.is_none().then_some(plan::PlanSpec {
            stages: args.stages,
            soak: args.stage_soak,
            canary_group: args.canary_group,
        }),
        halt_percent: args.halt_percent.map(i64::from),
        halt_min_attempts: args.halt_min_attempts.map(i64::from),
    };
    let request = PublishRequest {
        data_dir: args.store.data_dir,
        database_url,
        version: args.version,
        platform: args.platform,
        agent: args.agent,
        updater: args.updater,
        rollout_percent: args.rollout.unwrap_or(0),
        timestamp_lifetime: Duration::from_secs(args.timestamp_expiry_secs),
        actor: command_actor(),
        delta_from: args.delta_from,
        urgent: args.urgent,
    };
    let published = match release::publish(request).await {
        Ok(published) => published,
        Err(error) => return exit_code(Err::<(), _>(error), "release publish failed"),
    };
    let db = Db::open_for_command(&store.0, store.1.as_deref())
        .await
        .context("cannot open the server's database")?;
    let key = (published.version.as_str(), published.platform.as_str());
    let started = plan::start(&db, &staging, key).await;
    db.close().await;
    started.context("the release is published but its rollout did not start; set it with `cms-server rollout set`")?;
    print_line(&format!(
        "published {} for {} ({} bytes, sha256 {})",
        published.version, published.platform, published.length, published.sha256
    ));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn rollout(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let action = RolloutAction::Set {
        percent: Some(i64::from(args.percent)),
        halt_percent: None,
        halt_min_attempts: None,
        max_in_flight: None,
        stuck_after_mins: None,
    };
    let result = rollout_in_store(&args.release, Some(action)).await?;
    let summary = |status: RolloutStatus| {
        let rollout = status.rollout;
        print_line(&format!(
            "rollout of {} for {} set to {}%",
            rollout.version, rollout.platform, rollout.rollout_percent
        ));
    };
    exit_code(result.map(summary), "release rollout failed")
}
