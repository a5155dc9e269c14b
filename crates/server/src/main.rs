//! The `cms-server` binary: command line, logging, signals; everything else is the library.
//!
//! `cms-server serve ...` prints `listening on http://IP:PORT` (`https://` with `--tls-cert`) on
//! stdout once it accepts requests, and with `--operator-listen` a second line, `operator API
//! on http://IP:PORT`;
//! `cms-server release publish ...` prints exactly one line on success,
//! `published X.Y.Z for PLATFORM (N bytes, sha256 HEX)`; `cms-server token create` prints the
//! new token alone on one line. Logs go to stderr. Exit codes: 0 done, 1 failure (I/O,
//! database), 2 refused (bad arguments or settings, release already published, token name
//! taken or unknown). This file must never hold server logic and never print a secret other
//! than the token `token create` exists to hand out.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cms_protocol::OperatorRole;
use cms_server::access::{self, Actor};
use cms_server::db::Db;
use cms_server::events::EventBus;
use cms_server::intake::retention::{self, RetentionPolicy};
use cms_server::net::Timeouts;
use cms_server::net::ratelimit::Rate;
use cms_server::net::tls::TlsFiles;
use cms_server::release::tuf::DEFAULT_TIMESTAMP_LIFETIME;
use cms_server::release::tuf_root::{RootKeyDir, Rotation};
use cms_server::release::{self, PLATFORMS, PublishRequest};
use cms_server::rollout::control::{self, RolloutAction, RolloutError, RolloutStatus};
use cms_server::{ConnectionSettings, Listening, ServeConfig};
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
    Serve(Box<ServeArgs>),
    /// Manage releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Manage operator tokens (stored hashed; a token is shown once, at creation).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Control a release's rollout: percentage, halt rule, pause, resume, status (audited).
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Manage the signing keys of the release metadata (TUF), with the root key offline.
    #[command(subcommand)]
    Tuf(TufCommand),
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Package an agent and an updater as a release; a running server offers it at once.
    Publish(PublishArgs),
    /// Change the share of the fleet a published release is offered to; running servers push
    /// it to the agents it now includes.
    Rollout(RolloutArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (only its hash is stored).
    Create(TokenCreateArgs),
    /// List tokens: name, role, created, last used (never a token).
    List(StoreArgs),
    /// Revoke a token; it stops working at once.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Set the rollout percentage and/or the automatic halt rule.
    Set(RolloutSetArgs),
    /// Offer the release to no more agents.
    Pause(RolloutTarget),
    /// Offer it again (clears an automatic halt).
    Resume(RolloutTarget),
    /// Print the rollout and its funnel as JSON.
    Status(RolloutTarget),
}

/// A published release (of `release rollout` and `rollout ...`).
#[derive(Debug, Args)]
struct RolloutTarget {
    #[command(flatten)]
    store: StoreArgs,
    /// The published version.
    #[arg(long)]
    version: String,
    /// Its platform.
    #[arg(long, default_value = DEFAULT_PLATFORM, value_parser = PLATFORMS)]
    platform: String,
}

#[derive(Debug, Args)]
struct RolloutSetArgs {
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
}

#[derive(Debug, Subcommand)]
enum TufCommand {
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

/// The platform of the machine this server was built for.
const DEFAULT_PLATFORM: &str = if cfg!(windows) {
    "windows-x86_64"
} else {
    "linux-x86_64"
};

/// Exit code of a refused command (bad arguments, release already published), as clap uses.
const EXIT_REFUSED: u8 = 2;

/// Where a server keeps its data.
#[derive(Debug, Args)]
struct StoreArgs {
    /// The server's data directory (SQLite, packages, signed metadata).
    #[arg(long, default_value = "./cms-server-data")]
    data_dir: PathBuf,
    /// `postgres://user:pass@host/db` when the server uses PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
struct TokenCreateArgs {
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
struct TokenRevokeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Name of the token to revoke.
    name: String,
}

#[derive(Debug, Args)]
struct TufArgs {
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
struct RotateArgs {
    #[command(flatten)]
    tuf: TufArgs,
    /// Replace the root key with the one in this folder (created there if missing).
    #[arg(long)]
    new_root_key_dir: Option<PathBuf>,
    /// Replace the targets, snapshot and timestamp keys with new ones.
    #[arg(long)]
    rotate_online_keys: bool,
}

#[derive(Debug, Args)]
struct PublishArgs {
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
struct RolloutArgs {
    #[command(flatten)]
    release: RolloutTarget,
    /// The new percentage of the fleet (by stable cohort).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    percent: u8,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address the agents reach (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Serve the operator API on this address only (an internal interface), not on --listen.
    #[arg(long)]
    operator_listen: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Registration requires this token when set.
    #[arg(long, env = "CMS_ENROLLMENT_TOKEN", hide_env_values = true)]
    enrollment_token: Option<String>,
    /// Let anyone who reaches a non-loopback --listen address register agents (without it,
    /// such an address needs --enrollment-token).
    #[arg(long)]
    open_enrollment: bool,
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
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// Seconds a request head (and the pause before it on a kept-alive connection) may take.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_secs: u64,
    /// Seconds a connection may pass without a byte either way (WebSockets ping every 30).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Connections held at most [default: the open-file limit minus a reserve].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Connections one source address (IPv6: /64) holds at most [default: 1/8 of the maximum].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_source: Option<u64>,
    /// Registrations per minute from one source address, after the burst.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    registrations_per_minute: u32,
    /// Registrations one source address may make at once.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    registration_burst: u32,
    /// Error reports per minute from one agent, after the burst.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    error_reports_per_minute: u32,
    /// Error reports one agent may send at once (at least one batch, 500).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(500..))]
    error_report_burst: u32,
    /// Days error reports are kept.
    #[arg(long, default_value_t = retention::DEFAULT_MAX_AGE.as_secs() / 86_400)]
    error_retention_days: u64,
    /// Error reports kept in total (the oldest go first).
    #[arg(long, default_value_t = retention::DEFAULT_MAX_TOTAL, value_parser = clap::value_parser!(i64).range(1..))]
    error_retention_count: i64,
    /// Error reports kept per agent (its oldest go first).
    #[arg(long, default_value_t = retention::DEFAULT_PER_AGENT, value_parser = clap::value_parser!(i64).range(1..))]
    error_retention_per_agent: i64,
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
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Release(ReleaseCommand::Publish(args)) => runtime.block_on(publish(args)),
        Command::Release(ReleaseCommand::Rollout(args)) => runtime.block_on(rollout(args)),
        Command::Token(command) => runtime.block_on(token(command)),
        Command::Rollout(command) => runtime.block_on(rollout_control(command)),
        Command::Tuf(command) => runtime.block_on(tuf(command)),
    }
}

/// Writes one line to stdout; a closed stdout must not turn a finished command into a failure.
fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Errors that tell a refused request (exit 2: retrying cannot help) from a failure (exit 1).
trait Refusal: std::error::Error + Send + Sync + 'static {
    fn is_refusal(&self) -> bool;
}

impl Refusal for release::PublishError {
    fn is_refusal(&self) -> bool {
        release::PublishError::is_refusal(self)
    }
}

impl Refusal for access::AccessError {
    fn is_refusal(&self) -> bool {
        access::AccessError::is_refusal(self)
    }
}

impl Refusal for RolloutError {
    fn is_refusal(&self) -> bool {
        !matches!(self, RolloutError::Database(_))
    }
}

impl Refusal for cms_server::ServeError {
    fn is_refusal(&self) -> bool {
        cms_server::ServeError::is_refusal(self)
    }
}

/// 0 when done; 2 with the message for a refusal; the error itself (exit 1) otherwise.
fn exit_code<E: Refusal>(result: Result<(), E>, context: &'static str) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) if error.is_refusal() => {
            tracing::error!("{error}");
            eprintln!("cms-server: {error}");
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        Err(error) => Err(error).context(context),
    }
}

/// Who runs this command, for the audit log (the OS user name when known).
fn command_actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_default();
    let user: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(32)
        .collect();
    Actor::command_line(&user)
}

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let request = PublishRequest {
        data_dir: args.store.data_dir,
        database_url: args.store.database_url,
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

async fn rollout(args: RolloutArgs) -> anyhow::Result<ExitCode> {
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

async fn open_store(store: &StoreArgs) -> anyhow::Result<Db> {
    Db::open_for_command(&store.data_dir, store.database_url.as_deref())
        .await
        .context("cannot open the server's database")
}

async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
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

async fn rollout_control(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let (release, action) = match command {
        RolloutCommand::Set(args) => (
            args.release,
            Some(RolloutAction::Set {
                percent: args.percent.map(i64::from),
                halt_percent: args.halt_percent.map(i64::from),
                halt_min_attempts: args.halt_min_attempts.map(i64::from),
            }),
        ),
        RolloutCommand::Pause(args) => (args, Some(RolloutAction::Pause)),
        RolloutCommand::Resume(args) => (args, Some(RolloutAction::Resume)),
        RolloutCommand::Status(args) => (args, None),
    };
    let result = rollout_in_store(&release, action).await?;
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
async fn rollout_in_store(
    target: &RolloutTarget,
    action: Option<RolloutAction>,
) -> anyhow::Result<Result<RolloutStatus, RolloutError>> {
    let db = open_store(&target.store).await?;
    let (version, platform) = (target.version.as_str(), target.platform.as_str());
    let result = match action {
        Some(action) => apply_as_command(&db, version, platform, action).await,
        None => control::status(&db, version, platform).await,
    };
    db.close().await;
    Ok(result)
}

/// Applies `action` as the user running the command, telling the replicas on a bus of its own.
async fn apply_as_command(
    db: &Db,
    version: &str,
    platform: &str,
    action: RolloutAction,
) -> Result<RolloutStatus, RolloutError> {
    let bus = EventBus::new(db).await?;
    control::apply(db, &bus, &command_actor(), version, platform, action).await
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

async fn tuf(command: TufCommand) -> anyhow::Result<ExitCode> {
    let result = match command {
        TufCommand::Init(args) => {
            let root_dir = RootKeyDir::new(&args.root_key_dir);
            release::init_offline_root(&args.store.data_dir, &root_dir)
                .await
                .map(|version| {
                    let dir = args.root_key_dir.display();
                    format!("created root version {version}; its key is in {dir}")
                })
        }
        TufCommand::OfflineRoot(args) => {
            let root_dir = RootKeyDir::new(&args.root_key_dir);
            release::take_root_offline(&args.store.data_dir, &root_dir)
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
    let result = release::rotate_root(
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
    let result = release::recover_signing(
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

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let enrollment_token = args.enrollment_token.filter(|t| !t.is_empty());
    let config = ServeConfig {
        listen: args.listen,
        operator_listen: args.operator_listen,
        data_dir: args.store.data_dir,
        database_url: args.store.database_url,
        enrollment_token,
        open_enrollment: args.open_enrollment,
        offline_after: Duration::from_secs(args.offline_after),
        timestamp_lifetime: Duration::from_secs(args.timestamp_expiry_secs),
        connections: connection_settings(&args.limits),
        registration_rate: Rate {
            per_minute: args.limits.registrations_per_minute,
            burst: args.limits.registration_burst,
        },
        error_report_rate: Rate {
            per_minute: args.limits.error_reports_per_minute,
            burst: args.limits.error_report_burst,
        },
        retention: RetentionPolicy {
            max_age: Duration::from_secs(args.limits.error_retention_days.saturating_mul(86_400)),
            max_total: args.limits.error_retention_count,
            per_agent: args.limits.error_retention_per_agent,
        },
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
    let served = cms_server::serve(config, shutdown, |listening: Listening| {
        print_line(&format!("listening on {scheme}://{}", listening.agents));
        if let Some(operators) = listening.operators {
            print_line(&format!("operator API on {scheme}://{operators}"));
        }
    })
    .await;
    let served = served.map(|()| tracing::info!("shutdown complete"));
    exit_code(served, "serve failed")
}

fn connection_settings(limits: &LimitArgs) -> ConnectionSettings {
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    ConnectionSettings {
        timeouts: Timeouts {
            header_read: Duration::from_secs(limits.header_read_timeout_secs),
            idle: Duration::from_secs(limits.idle_timeout_secs),
        },
        max_connections: limits.max_connections.map(to_usize),
        max_per_source: limits.max_connections_per_source.map(to_usize),
    }
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
