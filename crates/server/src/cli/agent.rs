//! `cms-server agent list|revoke|rotate|set-group`: the fleet's identities from the command line.
//!
//! `agent list` prints id, hostname, platform, version, last seen and whether the agent is
//! revoked; `agent revoke --agent-id ID` revokes it (audited), and tells the running replicas
//! (on PostgreSQL, through the event bus) to close its WebSocket; `agent rotate --agent-id ID`
//! asks the agent to rotate its credential at its next heartbeat (audited), as
//! `POST /api/v1/agents/{id}/rotate-credential` does, through the same rule. One variant and one
//! function per subcommand, so more subcommands slot in beside them. This module must never
//! print a credential.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{EXIT_REFUSED, StoreArgs, command_actor, open_store, print_line};
use crate::access::{revocation, rotation};
use crate::db::{AgentKey, AgentRow, Db, Revocation};
use crate::events::EventBus;

/// Agents listed per query.
const PAGE: i64 = 500;

#[derive(Debug, Subcommand)]
pub(super) enum AgentCommand {
    /// List agents: id, hostname, platform, version, last seen, revoked.
    List(StoreArgs),
    /// Revoke an agent: its credential stops working at once on every replica (audited).
    Revoke(AgentIdArgs),
    /// Ask an agent to rotate its credential at its next heartbeat (audited).
    Rotate(AgentIdArgs),
    /// Put an agent in a group (wins over the agent's own --group; audited).
    SetGroup(super::group::SetGroupArgs),
}

#[derive(Debug, Args)]
pub(super) struct AgentIdArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Id of the agent (from `agent list`).
    #[arg(long)]
    agent_id: String,
}

pub(super) async fn agent(command: AgentCommand) -> anyhow::Result<ExitCode> {
    match command {
        AgentCommand::List(store) => {
            let db = open_store(&store).await?;
            let listed = list(&db).await;
            db.close().await;
            listed.map(|()| ExitCode::SUCCESS)
        }
        AgentCommand::Revoke(args) => {
            let db = open_store(&args.store).await?;
            let revoked = revoke(&db, &args.agent_id).await;
            db.close().await;
            revoked
        }
        AgentCommand::Rotate(args) => {
            let db = open_store(&args.store).await?;
            let asked = rotate(&db, &args.agent_id).await;
            db.close().await;
            asked
        }
        AgentCommand::SetGroup(args) => super::group::set_group(args).await,
    }
}

async fn list(db: &Db) -> anyhow::Result<()> {
    print_line(&row_text(
        "AGENT ID",
        "HOSTNAME",
        "PLATFORM",
        "VERSION",
        "LAST SEEN",
        "REVOKED",
    ));
    let mut after = AgentKey::default();
    loop {
        let (rows, more) = db.list_agents(&after, PAGE).await?;
        for row in &rows {
            print_agent(row);
        }
        match rows.last() {
            Some(last) if more => after = last.key(),
            _ => return Ok(()),
        }
    }
}

fn print_agent(row: &AgentRow) {
    let revoked = row.revoked_at.as_deref().unwrap_or("-");
    print_line(&row_text(
        &row.agent_id,
        &row.hostname,
        &row.platform,
        &row.version,
        &row.last_seen,
        revoked,
    ));
}

fn row_text(
    id: &str,
    host: &str,
    platform: &str,
    version: &str,
    seen: &str,
    revoked: &str,
) -> String {
    format!("{id:<36} {host:<24} {platform:<15} {version:<10} {seen:<27} {revoked}")
}

async fn revoke(db: &Db, agent_id: &str) -> anyhow::Result<ExitCode> {
    let bus = EventBus::new(db).await?;
    let actor = command_actor();
    match revocation::revoke_agent(db, &bus, None, agent_id, &actor).await? {
        Revocation::Revoked => {
            print_line(&format!("revoked {agent_id}"));
            Ok(ExitCode::SUCCESS)
        }
        Revocation::AlreadyRevoked => {
            print_line(&format!("{agent_id} was revoked already"));
            Ok(ExitCode::SUCCESS)
        }
        Revocation::Unknown => Ok(unknown_agent(agent_id)),
    }
}

async fn rotate(db: &Db, agent_id: &str) -> anyhow::Result<ExitCode> {
    if rotation::request(db, agent_id, &command_actor()).await? {
        print_line(&format!(
            "{agent_id} rotates its credential at its next heartbeat"
        ));
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(unknown_agent(agent_id))
    }
}

/// Refuses a command about an agent that does not exist (exit 2).
fn unknown_agent(agent_id: &str) -> ExitCode {
    eprintln!("cms-server: no agent has the id {agent_id:?}");
    ExitCode::from(EXIT_REFUSED)
}
