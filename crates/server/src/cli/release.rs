//! `cms-server release publish|rollout`: publish a release, change its share of the fleet.
//!
//! `release publish` prints exactly one line on success,
//! `published X.Y.Z for PLATFORM (N bytes, sha256 HEX)`; `release rollout` prints
//! `rollout of X.Y.Z for PLATFORM set to N%`. This module must never sign or store anything
//! itself (that is [`crate::release`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::rollout::{RolloutTarget, rollout_in_store};
use super::{DEFAULT_PLATFORM, Refusal, StoreArgs, command_actor, exit_code, print_line};
use crate::release::tuf::DEFAULT_TIMESTAMP_LIFETIME;
use crate::release::{self, PLATFORMS, PublishRequest};
use crate::rollout::control::{RolloutAction, RolloutStatus};

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
    /// Percentage of the fleet (by stable cohort) that is offered the release.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    rollout: u8,
    /// Seconds the signed timestamp metadata stays valid; agents refuse older metadata, so a
    /// server that stops re-signing cannot keep them on a stale release list (freeze attack).
    #[arg(long, default_value_t = DEFAULT_TIMESTAMP_LIFETIME.as_secs())]
    timestamp_expiry_secs: u64,
}

#[derive(Debug, Args)]
pub(super) struct RolloutArgs {
    #[command(flatten)]
    release: RolloutTarget,
    /// The new percentage of the fleet (by stable cohort).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    percent: u8,
}

impl Refusal for release::PublishError {
    fn is_refusal(&self) -> bool {
        release::PublishError::is_refusal(self)
    }
}

pub(super) async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let database_url = args.store.database_url()?;
    let request = PublishRequest {
        data_dir: args.store.data_dir,
        database_url,
        version: args.version,
        platform: args.platform,
        agent: args.agent,
        updater: args.updater,
        rollout_percent: args.rollout,
        timestamp_lifetime: Duration::from_secs(args.timestamp_expiry_secs),
        actor: command_actor(),
    };
    let result = release::publish(request).await.map(|published| {
        print_line(&format!(
            "published {} for {} ({} bytes, sha256 {})",
            published.version, published.platform, published.length, published.sha256
        ));
    });
    exit_code(result, "release publish failed")
}

pub(super) async fn rollout(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let action = RolloutAction::Set {
        percent: Some(i64::from(args.percent)),
        halt_percent: None,
        halt_min_attempts: None,
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
