//! Groups from the command line, audited as the user running the command:
//! `cms-server agent set-group --agent-id ID --group G` (an operator's assignment, the rules
//! [`crate::rollout::group`]'s; prints `{"agent_id": ..., "group": ...}`) and
//! `cms-server group window --group G --window "Mon-Fri 22:00-05:00" [--timezone utc|agent]`
//! or `--clear` (the rules [`crate::rollout::window`]'s; prints the stored windows as JSON), and
//! `cms-server group pin|unpin` (the rules [`crate::rollout::pin`]'s; prints the pin as JSON,
//! never the statement's signature).
//! This module must never change a group or its windows but through those modules.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Refusal, StoreArgs, command_actor, exit_code, open_store, print_line};
use crate::release::tuf::Repository;
use crate::rollout::group::{self, GroupError};
use crate::rollout::pin::{self, PinError, PinRequest};
use crate::rollout::window::{self, WindowError};

#[derive(Debug, Subcommand)]
pub(super) enum GroupCommand {
    /// Set a group's maintenance windows (outside them its agents are offered no update), or
    /// clear them (audited).
    Window(WindowArgs),
    /// Pin a group to one published release: its agents are offered exactly that version; an
    /// older one rolls them back, signed with the root key (audited).
    Pin(PinArgs),
    /// Remove a group's pin: its agents follow the rollouts again (audited).
    Unpin(UnpinArgs),
}

#[derive(Debug, Args)]
pub(super) struct PinArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The group.
    #[arg(long)]
    group: String,
    /// The published version its agents are to run.
    #[arg(long)]
    version: String,
    /// The release's platform.
    #[arg(long, default_value = super::DEFAULT_PLATFORM)]
    platform: String,
    /// The offline root key folder: a version older than the newest published one is a
    /// rollback, allowed by a statement signed with the root key (not needed while the root key
    /// is still in the data directory).
    #[arg(long)]
    root_key_dir: Option<PathBuf>,
    /// Days the rollback statement allows going back to this version.
    #[arg(long, default_value_t = 30)]
    rollback_days: u64,
}

#[derive(Debug, Args)]
pub(super) struct UnpinArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The group.
    #[arg(long)]
    group: String,
    /// The platform whose pin goes.
    #[arg(long, default_value = super::DEFAULT_PLATFORM)]
    platform: String,
}

impl Refusal for PinError {
    fn is_refusal(&self) -> bool {
        PinError::is_refusal(self)
    }
}

#[derive(Debug, Args)]
pub(super) struct WindowArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The group.
    #[arg(long)]
    group: String,
    /// A window, `DAYS HH:MM-HH:MM` (e.g. "Mon-Fri 22:00-05:00", "daily 01:00-03:00"); an end
    /// before the start spans midnight. Repeat for several.
    #[arg(long = "window", required_unless_present = "clear")]
    windows: Vec<String>,
    /// The clock the windows are read on: `utc`, or `agent` (each agent's local time).
    #[arg(long, default_value = "utc", conflicts_with = "clear")]
    timezone: String,
    /// Remove the group's windows: its agents may update at any time.
    #[arg(long, conflicts_with = "windows")]
    clear: bool,
}

impl Refusal for WindowError {
    fn is_refusal(&self) -> bool {
        !matches!(self, WindowError::Database(_))
    }
}

/// Runs a `group` subcommand.
pub(super) async fn group_command(command: GroupCommand) -> anyhow::Result<ExitCode> {
    match command {
        GroupCommand::Window(args) => set_window(args).await,
        GroupCommand::Pin(args) => pin(args).await,
        GroupCommand::Unpin(args) => unpin(args).await,
    }
}

async fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    let db = open_store(&args.store).await?;
    let repository = Repository::new(&args.store.data_dir);
    let request = PinRequest {
        group: &args.group,
        version: &args.version,
        platform: &args.platform,
        root_key_dir: args.root_key_dir.as_deref(),
        rollback_lifetime: Duration::from_secs(args.rollback_days.saturating_mul(86_400)),
    };
    let result = pin::pin(&db, &repository, &command_actor(), request).await;
    db.close().await;
    let printed = result.map(|stored| {
        let json = serde_json::json!({
            "group": stored.agent_group,
            "platform": stored.platform,
            "version": stored.version,
            "rollback": stored.rollback.is_some(),
        });
        print_line(&json.to_string());
    });
    exit_code(printed, "cannot pin the group")
}

async fn unpin(args: UnpinArgs) -> anyhow::Result<ExitCode> {
    let db = open_store(&args.store).await?;
    let result = pin::unpin(&db, &command_actor(), &args.group, &args.platform).await;
    db.close().await;
    let printed = result.map(|()| {
        let json = serde_json::json!({ "group": args.group, "platform": args.platform });
        print_line(&json.to_string());
    });
    exit_code(printed, "cannot unpin the group")
}

async fn set_window(args: WindowArgs) -> anyhow::Result<ExitCode> {
    let db = open_store(&args.store).await?;
    let actor = command_actor();
    let result = if args.clear {
        window::clear(&db, &actor, &args.group)
            .await
            .map(|()| serde_json::json!({ "group": args.group, "windows": [] }))
    } else {
        window::set(&db, &actor, &args.group, &args.windows, &args.timezone)
            .await
            .map(|w| serde_json::json!({ "group": args.group, "windows": w.windows, "timezone": w.clock }))
    };
    db.close().await;
    exit_code(
        result.map(|json| print_line(&json.to_string())),
        "cannot set the group's window",
    )
}

#[derive(Debug, Args)]
pub(super) struct SetGroupArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The agent.
    #[arg(long)]
    agent_id: String,
    /// The group: 1-64 of A-Z, a-z, 0-9, '.', '_' and '-'.
    #[arg(long)]
    group: String,
}

impl Refusal for GroupError {
    fn is_refusal(&self) -> bool {
        !matches!(self, GroupError::Database(_))
    }
}

/// Runs `agent set-group`.
pub(super) async fn set_group(args: SetGroupArgs) -> anyhow::Result<ExitCode> {
    let db = open_store(&args.store).await?;
    let result = group::assign(&db, &command_actor(), &args.agent_id, &args.group).await;
    if result.is_ok() {
        let json = serde_json::json!({ "agent_id": args.agent_id, "group": args.group });
        print_line(&json.to_string());
    }
    exit_code(result, "cannot set the agent's group")
}
