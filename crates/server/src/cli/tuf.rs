//! `cms-server tuf init|offline-root|rotate-root|recover`: the signing keys of the release
//! metadata, with the root key kept offline (the rules are [`crate::release::tuf_root`]'s).
//!
//! Each command prints one line saying what it did. This module must never print or log a key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{StoreArgs, command_actor, exit_code, open_store, print_line};
use crate::release;
use crate::release::tuf::DEFAULT_TIMESTAMP_LIFETIME;
use crate::release::tuf_root::{RootKeyDir, Rotation};

#[derive(Debug, Subcommand)]
pub(super) enum TufCommand {
    /// Start the signed metadata with a root key held in --root-key-dir (before the first
    /// `serve` or `release publish` on this data directory).
    Init(TufArgs),
    /// Move the data directory's root key into --root-key-dir.
    OfflineRoot(TufArgs),
    /// Sign the next root version with the key in --root-key-dir (to renew it, or to rotate
    /// the root key and/or the online keys).
    RotateRoot(RotateArgs),
    /// Rebuild the signing keys of a lost data directory from --root-key-dir.
    Recover(TufArgs),
}

#[derive(Debug, Args)]
pub(super) struct TufArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Folder of the offline root key (`root.pk8`) and the roots it signed (`N.root.json`).
    #[arg(long)]
    root_key_dir: PathBuf,
    /// Seconds the timestamp metadata signed now stays valid.
    #[arg(long, default_value_t = DEFAULT_TIMESTAMP_LIFETIME.as_secs())]
    timestamp_expiry_secs: u64,
}

#[derive(Debug, Args)]
pub(super) struct RotateArgs {
    #[command(flatten)]
    tuf: TufArgs,
    /// Replace the root key with the one in this folder (created there if missing).
    #[arg(long)]
    new_root_key_dir: Option<PathBuf>,
    /// Replace the targets, snapshot and timestamp keys with new ones.
    #[arg(long)]
    rotate_online_keys: bool,
}

pub(super) async fn tuf(command: TufCommand) -> anyhow::Result<ExitCode> {
    let result = match command {
        TufCommand::Init(args) => {
            let root_dir = RootKeyDir::new(&args.root_key_dir);
            release::signing::init_offline_root(&args.store.data_dir, &root_dir)
                .await
                .map(|version| {
                    let dir = args.root_key_dir.display();
                    format!("created root version {version}; its key is in {dir}")
                })
        }
        TufCommand::OfflineRoot(args) => {
            let root_dir = RootKeyDir::new(&args.root_key_dir);
            release::signing::take_root_offline(&args.store.data_dir, &root_dir)
                .await
                .map(|()| format!("moved the root key to {}", args.root_key_dir.display()))
        }
        TufCommand::RotateRoot(args) => rotate_root(args).await?,
        TufCommand::Recover(args) => recover(args).await?,
    };
    exit_code(result.map(|line| print_line(&line)), "tuf command failed")
}

type TufOutcome = Result<String, release::PublishError>;

async fn rotate_root(args: RotateArgs) -> anyhow::Result<TufOutcome> {
    let rotation = Rotation {
        new_root_key: args.new_root_key_dir.as_deref().map(RootKeyDir::new),
        online_keys: args.rotate_online_keys,
    };
    let tuf = args.tuf;
    let lifetime = Duration::from_secs(tuf.timestamp_expiry_secs);
    let db = open_store(&tuf.store).await?;
    let result = release::signing::rotate_root(
        &db,
        &tuf.store.data_dir,
        &RootKeyDir::new(&tuf.root_key_dir),
        &rotation,
        lifetime,
        &command_actor(),
    )
    .await;
    db.close().await;
    Ok(result.map(|version| format!("signed root version {version}")))
}

async fn recover(args: TufArgs) -> anyhow::Result<TufOutcome> {
    let lifetime = Duration::from_secs(args.timestamp_expiry_secs);
    let db = open_store(&args.store).await?;
    let result = release::signing::recover_signing(
        &db,
        &args.store.data_dir,
        &RootKeyDir::new(&args.root_key_dir),
        lifetime,
        &command_actor(),
    )
    .await;
    db.close().await;
    Ok(result
        .map(|version| format!("recovered: signed root version {version} with new online keys")))
}
