//! `cms-server rollout set|pause|resume|status`: a release's rollout from the command line,
//! audited as the user running the command (the rules are [`crate::rollout::control`]'s).
//!
//! `status` and the changes print the rollout and its funnel as JSON. This module must never
//! change a rollout but through [`control::apply_with_own_bus`].

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{
    DEFAULT_PLATFORM, Refusal, StoreArgs, command_actor, exit_code, open_store, print_line,
};
use crate::release::PLATFORMS;
use crate::rollout::control::{self, RolloutAction, RolloutError, RolloutStatus};
use crate::rollout::group::{self, GroupRolloutChange};

#[derive(Debug, Subcommand)]
pub(super) enum RolloutCommand {
    /// Set the rollout percentage and/or the automatic halt rule.
    Set(RolloutSetArgs),
    /// Offer the release to no more agents.
    Pause(RolloutTarget),
    /// Offer it again (clears an automatic halt; a halted release needs `--reason`).
    Resume(RolloutResumeArgs),
    /// Print the rollout and its funnel as JSON.
    Status(RolloutTarget),
}

/// A published release (of `release rollout` and `rollout ...`).
#[derive(Debug, Args)]
pub(super) struct RolloutTarget {
    #[command(flatten)]
    pub(super) store: StoreArgs,
    /// The published version.
    #[arg(long)]
    pub(super) version: String,
    /// Its platform.
    #[arg(long, default_value = DEFAULT_PLATFORM, value_parser = PLATFORMS)]
    pub(super) platform: String,
}

#[derive(Debug, Args)]
pub(super) struct RolloutResumeArgs {
    #[command(flatten)]
    release: RolloutTarget,
    /// Why it is resumed (required when the halt rule paused it; kept in its halt history and
    /// the audit log).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct RolloutSetArgs {
    #[command(flatten)]
    release: RolloutTarget,
    /// Share of the fleet (by stable cohort) offered the release.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    percent: Option<u8>,
    /// The rollout halts itself when failures and rollbacks pass this share of the attempts.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    halt_percent: Option<u8>,
    /// ... once there are at least this many attempts.
    #[arg(long)]
    halt_min_attempts: Option<u32>,
    /// Set this group's own percentage (overrides the release's for its agents), its own halt
    /// rule (its failures passing it halt the whole release) and/or its own in-flight cap (the
    /// release's holds too).
    #[arg(long, conflicts_with = "stuck_after_mins")]
    group: Option<String>,
    /// At most this many agents between offered and done (healthy, failed, rolled back) at
    /// once; the next ones are offered as those finish (0: no cap).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// An offered agent without an end step after this many minutes is stuck: shown apart and
    /// freed from the in-flight count (default 30).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10080))]
    stuck_after_mins: Option<u32>,
}

impl Refusal for RolloutError {
    fn is_refusal(&self) -> bool {
        RolloutError::is_refusal(self)
    }
}

pub(super) async fn rollout_control(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let (release, action) = match command {
        RolloutCommand::Set(RolloutSetArgs {
            release,
            percent,
            halt_percent,
            halt_min_attempts,
            group: Some(group),
            max_in_flight,
            ..
        }) => {
            let change = GroupRolloutChange {
                percent: percent.map(i64::from),
                halt_percent: halt_percent.map(i64::from),
                halt_min_attempts: halt_min_attempts.map(i64::from),
                max_in_flight: max_in_flight.map(i64::from),
            };
            return group_rollout(&release, &group, change).await;
        }
        RolloutCommand::Set(args) => (
            args.release,
            Some(RolloutAction::Set {
                percent: args.percent.map(i64::from),
                halt_percent: args.halt_percent.map(i64::from),
                halt_min_attempts: args.halt_min_attempts.map(i64::from),
                max_in_flight: args.max_in_flight.map(i64::from),
                stuck_after_mins: args.stuck_after_mins.map(i64::from),
            }),
        ),
        RolloutCommand::Pause(args) => (args, Some(RolloutAction::Pause)),
        RolloutCommand::Resume(args) => (
            args.release,
            Some(RolloutAction::Resume {
                reason: args.reason,
            }),
        ),
        RolloutCommand::Status(args) => (args, None),
    };
    print_status(rollout_in_store(&release, action).await?)
}

/// `rollout set --group G [--percent N] [--halt-percent P] [--halt-min-attempts M]
/// [--max-in-flight N]`: prints the
/// release's rollout like `set`.
async fn group_rollout(
    target: &RolloutTarget,
    group: &str,
    change: GroupRolloutChange,
) -> anyhow::Result<ExitCode> {
    let db = open_store(&target.store).await?;
    let release = (target.version.as_str(), target.platform.as_str());
    let actor = command_actor();
    let result = group::set_rollout(&db, &actor, release, group, change).await;
    db.close().await;
    print_status(result)
}

/// Prints the rollout as JSON, or says why not; the exit code.
fn print_status(result: Result<RolloutStatus, RolloutError>) -> anyhow::Result<ExitCode> {
    let printed = result.and_then(|status| {
        let json = serde_json::to_string_pretty(&status)
            .map_err(|e| RolloutError::Invalid(e.to_string()))?;
        print_line(&json);
        Ok(())
    });
    exit_code(printed, "rollout command failed")
}

/// Applies `action` to the release `target` names (`None`: reads its rollout) in the store it
/// names, as the user running the command; the outer error is a store that cannot be opened.
pub(super) async fn rollout_in_store(
    target: &RolloutTarget,
    action: Option<RolloutAction>,
) -> anyhow::Result<Result<RolloutStatus, RolloutError>> {
    let db = open_store(&target.store).await?;
    let (version, platform) = (target.version.as_str(), target.platform.as_str());
    let result = match action {
        Some(action) => {
            control::apply_with_own_bus(&db, &command_actor(), version, platform, action).await
        }
        None => control::status(&db, version, platform).await,
    };
    db.close().await;
    Ok(result)
}
