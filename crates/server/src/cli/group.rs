//! `cms-server agent set-group --agent-id ID --group G`: an operator's group assignment from
//! the command line, audited as the user running the command (the rules are
//! [`crate::rollout::group`]'s). Prints `{"agent_id": ..., "group": ...}`. This module must
//! never change a group but through [`group::assign`].

use std::process::ExitCode;

use clap::Args;

use super::{Refusal, StoreArgs, command_actor, exit_code, open_store, print_line};
use crate::rollout::group::{self, GroupError};

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
