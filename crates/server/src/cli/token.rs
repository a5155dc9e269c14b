//! `cms-server token create|list|revoke`: operator tokens from the command line.
//!
//! `token create` prints the new token alone on one line; `token list` prints name, role,
//! created and last used, never a token. This module must never print a token but the one
//! `token create` hands out.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use cms_protocol::OperatorRole;

use super::{Refusal, StoreArgs, command_actor, exit_code, open_store, print_line};
use crate::access;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Create a token and print it (only its hash is stored).
    Create(TokenCreateArgs),
    /// List tokens: name, role, created, last used (never a token).
    List(StoreArgs),
    /// Revoke a token; it stops working at once.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub(super) struct TokenCreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// What the token may do.
    #[arg(long)]
    role: OperatorRole,
    /// Unique name (1 to 64 of A-Z a-z 0-9 . _ @ -); the audit log names the token by it.
    #[arg(long)]
    name: String,
}

#[derive(Debug, Args)]
pub(super) struct TokenRevokeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Name of the token to revoke.
    name: String,
}

impl Refusal for access::AccessError {
    fn is_refusal(&self) -> bool {
        access::AccessError::is_refusal(self)
    }
}

pub(super) async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    let actor = command_actor();
    let (db, result) = match command {
        TokenCommand::Create(args) => {
            let db = open_store(&args.store).await?;
            let created = access::create_token(&db, &args.name, args.role, &actor).await;
            (db, created.map(|created| print_line(&created.token)))
        }
        TokenCommand::List(store) => {
            let db = open_store(&store).await?;
            let listed = access::list_tokens(&db).await;
            (db, listed.map(|tokens| print_tokens(&tokens)))
        }
        TokenCommand::Revoke(args) => {
            let db = open_store(&args.store).await?;
            let revoked = access::revoke_token(&db, &args.name, &actor).await;
            (db, revoked)
        }
    };
    db.close().await;
    exit_code(result, "token command failed")
}

fn print_tokens(tokens: &[cms_protocol::OperatorToken]) {
    print_line(&format!(
        "{:<32} {:<8} {:<27} {}",
        "NAME", "ROLE", "CREATED", "LAST USED"
    ));
    for token in tokens {
        print_line(&format!(
            "{:<32} {:<8} {:<27} {}",
            token.name,
            token.role,
            token.created_at,
            token.last_used_at.as_deref().unwrap_or("never")
        ));
    }
}
