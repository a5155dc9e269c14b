//! `cms-server enroll create|list|revoke`: enrollment tokens from the command line.
//!
//! `enroll create` prints the new token alone on one line (stored hashed; shown only then);
//! `enroll list` prints name, created, expiry, uses, group and revocation, never a token;
//! `enroll revoke N` stops new registrations with it (enrolled agents keep working). All three
//! are audited. This module must never print a token but the one `enroll create` hands out.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{StoreArgs, command_actor, exit_code, open_store, print_line};
use crate::access::enrollment::{self, TokenSpec};
use crate::db::EnrollmentTokenRow;

#[derive(Debug, Subcommand)]
pub(super) enum EnrollCommand {
    /// Create an enrollment token and print it (only its hash is stored).
    Create(EnrollCreateArgs),
    /// List enrollment tokens: name, created, expiry, uses, group, revoked (never a token).
    List(StoreArgs),
    /// Revoke an enrollment token: no new registration with it; enrolled agents keep working.
    Revoke(EnrollRevokeArgs),
}

#[derive(Debug, Args)]
pub(super) struct EnrollCreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Unique name (1 to 64 of A-Z a-z 0-9 . _ @ -; not `default`, which names
    /// `serve --enrollment-token`); agents record which token enrolled them by it.
    #[arg(long)]
    name: String,
    /// Days until the token expires (default: never).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
    expires_days: Option<u32>,
    /// Registrations the token allows (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    uses: Option<u32>,
    /// The group its agents join.
    #[arg(long)]
    group: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct EnrollRevokeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Name of the token to revoke.
    name: String,
}

pub(super) async fn enroll(command: EnrollCommand) -> anyhow::Result<ExitCode> {
    let actor = command_actor();
    let (db, result) = match command {
        EnrollCommand::Create(args) => {
            let db = open_store(&args.store).await?;
            let spec = TokenSpec {
                name: &args.name,
                expires_days: args.expires_days,
                uses: args.uses,
                group: args.group.as_deref(),
            };
            let created = enrollment::create(&db, &spec, &actor).await;
            (db, created.map(|created| print_line(&created.token)))
        }
        EnrollCommand::List(store) => {
            let db = open_store(&store).await?;
            let listed = enrollment::list(&db).await;
            (db, listed.map(|tokens| print_tokens(&tokens)))
        }
        EnrollCommand::Revoke(args) => {
            let db = open_store(&args.store).await?;
            let revoked = enrollment::revoke(&db, &args.name, &actor).await;
            (db, revoked)
        }
    };
    db.close().await;
    exit_code(result, "enroll command failed")
}

fn print_tokens(tokens: &[EnrollmentTokenRow]) {
    let line =
        |name: &str, created: &str, expires: &str, uses: &str, group: &str, revoked: &str| {
            format!("{name:<32} {created:<27} {expires:<27} {uses:<11} {group:<16} {revoked}")
        };
    print_line(&line(
        "NAME", "CREATED", "EXPIRES", "USES", "GROUP", "REVOKED",
    ));
    for token in tokens {
        let uses = match token.max_uses {
            Some(max) => format!("{}/{max}", token.uses),
            None => token.uses.to_string(),
        };
        print_line(&line(
            &token.name,
            &token.created_at,
            token.expires_at.as_deref().unwrap_or("never"),
            &uses,
            token.group.as_deref().unwrap_or("-"),
            token.revoked_at.as_deref().unwrap_or("-"),
        ));
    }
}
