//! The `cms-server` binary: command line, logging, signals; everything else is the library.
//!
//! `cms-server serve ...` prints exactly one line on stdout, `listening on http://IP:PORT` (or
//! `https://` with `--tls-cert`), once it accepts requests; `cms-server release publish ...` prints exactly one line on success,
//! `published X.Y.Z for PLATFORM (N bytes, sha256 HEX)`. Logs go to stderr. Exit codes: 0 done,
//! 1 failure (I/O, database), 2 refused (bad arguments, release already published). This file
//! must never hold server logic and never print secrets.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cms_server::ServeConfig;
use cms_server::release::tuf::DEFAULT_TIMESTAMP_LIFETIME;
use cms_server::release::{PLATFORMS, PublishError, PublishRequest, RolloutRequest};
use cms_server::tls::TlsFiles;
use tokio_util::sync::CancellationToken;

/// Reference backend for the CMS agent.
#[derive(Debug, Parser)]
#[command(name = "cms-server", version = cms_protocol::BUILD_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent and operator HTTP API.
    Serve(ServeArgs),
    /// Manage releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Package an agent and an updater as a release; a running server offers it at once.
    Publish(PublishArgs),
    /// Change the share of the fleet a published release is offered to; running servers push
    /// it to the agents it now includes.
    Rollout(RolloutArgs),
}

/// The platform of the machine this server was built for.
const DEFAULT_PLATFORM: &str = if cfg!(windows) {
    "windows-x86_64"
} else {
    "linux-x86_64"
};

/// Exit code of a refused command (bad arguments, release already published), as clap uses.
const EXIT_REFUSED: u8 = 2;

#[derive(Debug, Args)]
struct PublishArgs {
    /// The server's data directory (packages go to DIR/packages; SQLite lives here by default).
    #[arg(long, default_value = "./cms-server-data")]
    data_dir: PathBuf,
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
    /// `postgres://user:pass@host/db` when the server uses PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds the signed timestamp metadata stays valid; agents refuse older metadata, so a
    /// server that stops re-signing cannot keep them on a stale release list (freeze attack).
    #[arg(long, default_value_t = DEFAULT_TIMESTAMP_LIFETIME.as_secs())]
    timestamp_expiry_secs: u64,
}

#[derive(Debug, Args)]
struct RolloutArgs {
    /// The server's data directory (SQLite lives here by default).
    #[arg(long, default_value = "./cms-server-data")]
    data_dir: PathBuf,
    /// `postgres://user:pass@host/db` when the server uses PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
    /// The published version.
    #[arg(long)]
    version: String,
    /// Its platform.
    #[arg(long, default_value = DEFAULT_PLATFORM, value_parser = PLATFORMS)]
    platform: String,
    /// The new percentage of the fleet (by stable cohort).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    percent: u8,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory for the SQLite database and server files.
    #[arg(long, default_value = "./cms-server-data")]
    data_dir: PathBuf,
    /// `postgres://user:pass@host/db` to use PostgreSQL instead of SQLite in the data dir.
    #[arg(long)]
    database_url: Option<String>,
    /// Registration requires this token when set.
    #[arg(long, env = "CMS_ENROLLMENT_TOKEN", hide_env_values = true)]
    enrollment_token: Option<String>,
    /// Seconds without contact after which an agent without a WebSocket counts as offline.
    #[arg(long, default_value_t = 90)]
    offline_after: u64,
    /// Seconds the timestamp metadata is signed for when the server re-signs it (it does so
    /// once less than half of this is left).
    #[arg(long, default_value_t = DEFAULT_TIMESTAMP_LIFETIME.as_secs())]
    timestamp_expiry_secs: u64,
    /// PEM certificate chain: serve HTTPS and WSS (needs --tls-key); re-read when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (ECDSA, Ed25519 or RSA).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    init_logging();
    match run() {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("cms-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)).map(|()| ExitCode::SUCCESS),
        Command::Release(ReleaseCommand::Publish(args)) => runtime.block_on(publish(args)),
        Command::Release(ReleaseCommand::Rollout(args)) => runtime.block_on(rollout(args)),
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let request = PublishRequest {
        data_dir: args.data_dir,
        database_url: args.database_url,
        version: args.version,
        platform: args.platform,
        agent: args.agent,
        updater: args.updater,
        rollout_percent: args.rollout,
        timestamp_lifetime: Duration::from_secs(args.timestamp_expiry_secs),
    };
    let published = cms_server::release::publish(request)
        .await
        .map(|published| {
            format!(
                "published {} for {} ({} bytes, sha256 {})",
                published.version, published.platform, published.length, published.sha256
            )
        });
    finish("release publish", published)
}

async fn rollout(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let request = RolloutRequest {
        data_dir: args.data_dir,
        database_url: args.database_url,
        version: args.version,
        platform: args.platform,
        rollout_percent: args.percent,
    };
    let summary = format!(
        "rollout of {} for {} set to {}%",
        request.version, request.platform, request.rollout_percent
    );
    let changed = cms_server::release::set_rollout(request).await;
    finish("release rollout", changed.map(|()| summary))
}

/// Prints the one line of a command that succeeded; a refusal exits 2, anything else 1.
fn finish(command: &str, outcome: Result<String, PublishError>) -> anyhow::Result<ExitCode> {
    match outcome {
        Ok(line) => {
            let mut stdout = std::io::stdout().lock();
            // The change is committed; a closed stdout must not turn that into a failure.
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if error.is_refusal() => {
            tracing::error!("{error}");
            eprintln!("cms-server: {error}");
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        Err(error) => Err(error).with_context(|| format!("{command} failed")),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let enrollment_token = args.enrollment_token.filter(|t| !t.is_empty());
    let config = ServeConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
        enrollment_token,
        offline_after: Duration::from_secs(args.offline_after),
        timestamp_lifetime: Duration::from_secs(args.timestamp_expiry_secs),
        tls: args.tls_cert.map(|cert| TlsFiles {
            cert,
            key: args.tls_key.unwrap_or_default(),
        }),
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    cms_server::serve(config, shutdown, |addr| {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout must not stop the server; the address is also logged.
        let _ = writeln!(stdout, "listening on {scheme}://{addr}");
        let _ = stdout.flush();
    })
    .await?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM (Ctrl-C on Windows).
async fn cancel_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
