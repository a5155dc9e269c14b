//! `cms_agent`: the command line of the CMS endpoint agent (docs/CONTRACT.md).
//!
//! Exit codes: 0 clean stop, 1 another instance holds the lock (or refused `--force`), 2 bad
//! arguments, an unusable storage path/config or a refused OS operation, 3 `--status` found no
//! running agent, 4 a task of the running agent died (reported; the service manager restarts
//! it). A full disk at start is waited out, not an exit. `main` is the only place that turns
//! errors into exit codes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use cms_agent::core::agent::{Agent, AgentError, AgentOptions, RunOutcome};
use cms_agent::core::config::{ConfigManager, Intervals};
use cms_agent::core::error_reporter::{ErrorReporter, install_panic_hook};
use cms_agent::core::storage::StateManager;
use cms_agent::ipc::{self, IpcEndpoint, IpcError};
use cms_agent::logging;
use cms_agent::net::proxy::ProxySetting;
use cms_agent::net::tls::parse_ca_pem;
use cms_agent::net::{EnrollmentToken, backoff, parse_server_url};
use cms_agent::system::lock_manager::{Acquire, LockManager};
use cms_agent::system::{self, IpcSecret, SecretAction, SecretScope};
use cms_platform::agent_args::{ENROLLMENT_TOKEN_ENV, PROXY_ENV};
use cms_platform::fs::is_out_of_space;
use cms_protocol::{BUILD_VERSION, IpcStatus, LockRecord};

/// Another instance holds the lock.
const EXIT_LOCK_HELD: u8 = 1;
/// Bad arguments, or nothing usable to run with.
const EXIT_UNUSABLE: u8 = 2;
/// `--status` found no running agent.
const EXIT_NOT_RUNNING: u8 = 3;
/// A task of the running agent died: restart it.
const EXIT_TASK_DIED: u8 = 4;
/// How long `--force` waits for the old instance to shut down and release the lock.
const FORCE_LOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest pause between two attempts to start on a full disk.
const DISK_FULL_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The CMS endpoint agent: runs in the foreground until stopped.
#[derive(Parser)]
#[command(name = "cms_agent", version = BUILD_VERSION)]
struct Cli {
    /// Backend base URL (saved in config.json); https, or http to loopback only.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Enrollment token, when the server requires one at registration (kept in config.json
    /// for a later re-enrollment).
    #[arg(
        long,
        value_name = "TOKEN",
        env = ENROLLMENT_TOKEN_ENV,
        hide_env_values = true
    )]
    enrollment_token: Option<String>,
    /// Storage path override (default: per-machine when elevated, else per-user).
    #[arg(long, value_name = "DIR", env = "CMS_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds between update checks, for this run.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    update_poll_interval: Option<u64>,
    /// Seconds between heartbeats, for this run.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    status_interval: Option<u64>,
    /// Write the autostart entry and exit (HKLM Run / systemd unit when elevated, else HKCU
    /// Run / the user's autostart entry).
    #[arg(long, conflicts_with_all = ["disable_autostart", "force", "status"])]
    enable_autostart: bool,
    /// Remove the autostart entry and exit.
    #[arg(long, conflicts_with_all = ["force", "status"])]
    disable_autostart: bool,
    /// Ask the running agent to stop, then run with the options that follow --force.
    #[arg(long, conflicts_with = "status")]
    force: bool,
    /// Print the running agent's state and version; exit 3 if none runs.
    #[arg(long)]
    status: bool,
    /// Pin this TUF root (the server's DIR/tuf/metadata/root.json) for release metadata;
    /// without it the agent trusts the server's root on first use, after enrollment.
    #[arg(long, value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the backend besides the system store (private
    /// PKI); saved in config.json.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Proxy for all backend traffic, http://[user:password@]host:port, or `none` for direct;
    /// saved in config.json. Without it: the system's proxy setting.
    #[arg(
        long,
        value_name = "URL",
        env = PROXY_ENV,
        hide_env_values = true
    )]
    proxy: Option<String>,
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&argv);
    let force_args = args_after_force(&argv);
    match run(cli, force_args) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("cannot run: {err:#}");
            eprintln!("cms_agent: error: {err:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

/// The options given after `--force`: what the new instance runs with (sent to the old one,
/// which only logs how many there are).
fn args_after_force(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .skip_while(|a| *a != "--force")
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn run(cli: Cli, force_args: Vec<String>) -> Result<ExitCode> {
    if cli.enable_autostart || cli.disable_autostart {
        return autostart(&cli); // before the storage path and the lock (docs/CONTRACT.md)
    }
    let storage = StateManager::new(cli.data_dir.clone())?;
    let _log_guard = logging::init(&storage.logs_dir(), "agent.log")
        .with_context(|| format!("cannot open logs in {}", storage.logs_dir().display()))?;
    let runtime = runtime()?;
    if cli.status {
        return runtime.block_on(print_status(&storage));
    }
    tracing::info!(version = BUILD_VERSION, pid = std::process::id(), data_dir = %storage.storage_path().display(), force = cli.force, "agent starting");
    let lock = LockManager::new(storage.storage_path());
    let wait_for_lock = if cli.force {
        match runtime.block_on(ask_running_agent_to_stop(&storage, force_args)) {
            Handover::Granted => true,
            Handover::NothingRuns => false,
            Handover::Refused => return Ok(ExitCode::from(EXIT_LOCK_HELD)),
        }
    } else {
        false
    };
    let (started, disk_full) = retry_while_disk_full(storage.storage_path(), || {
        start(&storage, &lock, wait_for_lock, &cli)
    })?;
    let (config, reporter) = match started {
        Start::Ready(config, reporter) => (config, reporter),
        Start::LockHeld(holder) => return Ok(lock_held(&storage, holder)),
    };
    install_panic_hook(reporter.clone());
    if let Some(wait) = disk_full {
        reporter.store("storage_full", &wait.describe(storage.storage_path()));
    }
    let options = AgentOptions {
        intervals: effective_intervals(&config.config().intervals, &cli),
        trusted_root: cli.trusted_root,
    };
    let agent = Agent::new(storage, *config, reporter, lock, options)?;
    match runtime.block_on(agent.run()) {
        RunOutcome::Stopped => Ok(ExitCode::SUCCESS),
        RunOutcome::TaskDied => Ok(ExitCode::from(EXIT_TASK_DIED)),
    }
}

/// What a start attempt found.
enum Start {
    /// This process holds the lock; the configuration is loaded and the error reporter open.
    Ready(Box<ConfigManager>, Arc<ErrorReporter>),
    /// Another agent holds the lock.
    LockHeld(Option<LockRecord>),
}

/// Takes the lock, then loads the configuration; a failure after the lock gives it back, so
/// the attempt can be repeated.
fn start(
    storage: &StateManager,
    lock: &LockManager,
    wait_for_lock: bool,
    cli: &Cli,
) -> Result<Start> {
    let acquired = if wait_for_lock {
        lock.acquire_with_timeout(FORCE_LOCK_TIMEOUT)?
    } else {
        lock.acquire()?
    };
    if let Acquire::HeldBy(holder) = acquired {
        return Ok(Start::LockHeld(holder));
    }
    let ready = load_config(storage, cli);
    if ready.is_err() {
        lock.release();
    }
    ready
}

/// Loads config.json, opens the error buffer (with what the load found to report) and applies
/// the command line.
fn load_config(storage: &StateManager, cli: &Cli) -> Result<Start> {
    let (mut config, notices) = ConfigManager::load(&storage.config_path())?;
    let reporter = Arc::new(ErrorReporter::open(
        storage.error_buffer_path(),
        config.config().error_buffer_max_reports,
    ));
    for notice in &notices {
        reporter.store(notice.kind, &notice.message);
    }
    apply_command_line(&mut config, cli)?;
    Ok(Start::Ready(Box::new(config), reporter))
}

fn lock_held(storage: &StateManager, holder: Option<LockRecord>) -> ExitCode {
    let who = holder.map_or("unknown pid".into(), |r| {
        format!("pid {}, heartbeat {}", r.pid, r.timestamp)
    });
    tracing::error!(holder = %who, "Failed to acquire lock. Agent exiting.");
    eprintln!(
        "cms_agent: another agent is running on {} ({who})",
        storage.storage_path().display()
    );
    ExitCode::from(EXIT_LOCK_HELD)
}

/// How long a start waited for disk space.
struct DiskFullWait {
    waited: Duration,
    attempts: u32,
}

impl DiskFullWait {
    fn describe(&self, storage: &Path) -> String {
        format!(
            "the storage path {} was full at start: the agent waited {} s ({} attempts) until it could write its lock and configuration",
            storage.display(),
            self.waited.as_secs(),
            self.attempts
        )
    }
}

/// Runs `attempt` again, backing off up to [`DISK_FULL_MAX_BACKOFF`], for as long as it fails
/// for want of disk space: a full disk passes, and exiting would leave the machine without an
/// agent when it does. Any other error is returned at once.
fn retry_while_disk_full<T>(
    storage: &Path,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<(T, Option<DiskFullWait>)> {
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match attempt() {
            Ok(value) => {
                let waited = (failures > 0).then(|| DiskFullWait {
                    waited: started.elapsed(),
                    attempts: failures + 1,
                });
                return Ok((value, waited));
            }
            Err(err) if is_disk_full(&err) => {
                failures += 1;
                if failures == 1 {
                    tracing::error!(error = %format!("{err:#}"), "the storage path is full; waiting for free space");
                    eprintln!(
                        "cms_agent: {err:#}; waiting for free space in {}",
                        storage.display()
                    );
                }
                std::thread::sleep(backoff(failures, DISK_FULL_MAX_BACKOFF));
            }
            Err(err) => return Err(err),
        }
    }
}

fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(is_out_of_space)
}

/// `--enable-autostart` / `--disable-autostart`: one OS operation, then exit.
fn autostart(cli: &Cli) -> Result<ExitCode> {
    let is_admin = system::is_running_as_admin();
    if cli.disable_autostart {
        match system::unregister_autostart(is_admin)? {
            Some(place) => println!("autostart disabled: removed {place}"),
            None => println!("autostart was not enabled; nothing to remove"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let exe = system::installed_exe().context("cannot find the path of this program")?;
    let mut args: Vec<OsString> = Vec::new();
    if let Some(dir) = &cli.data_dir {
        args.push("--data-dir".into());
        args.push(
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.clone())
                .into(),
        );
    }
    let place = system::register_autostart(&exe, &args, is_admin)?;
    println!("autostart enabled: {place}");
    Ok(ExitCode::SUCCESS)
}

/// The endpoint and the stored secret of the agent that owns `storage`; no secret means no
/// agent has ever served IPC there.
fn ipc_target(storage: &StateManager) -> Result<(IpcEndpoint, Option<IpcSecret>)> {
    let is_admin = system::is_running_as_admin();
    let path = storage.storage_path();
    let endpoint = IpcEndpoint::for_agent(path, is_admin)?;
    let scope = SecretScope::current(is_admin);
    let secret = system::manage_ipc_secret(SecretAction::Get, scope, path)?;
    Ok((endpoint, secret))
}

/// `--status`: state and version from the running agent; exit 3 when none runs.
async fn print_status(storage: &StateManager) -> Result<ExitCode> {
    let not_running = || {
        eprintln!(
            "cms_agent: no agent is running on {}",
            storage.storage_path().display()
        );
        Ok(ExitCode::from(EXIT_NOT_RUNNING))
    };
    let (endpoint, Some(secret)) = ipc_target(storage)? else {
        return not_running();
    };
    match ipc::query_status(&endpoint, &secret).await {
        Ok(answer) if answer.status == IpcStatus::Acknowledged => {
            let state = answer.state.map_or("unknown".into(), |s| s.to_string());
            println!("state: {state}");
            println!(
                "version: {}",
                answer.version.as_deref().unwrap_or("unknown")
            );
            if let Some(pid) = answer.pid {
                println!("pid: {pid}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(answer) => anyhow::bail!(
            "the running agent refused --status ({:?}): {}",
            answer.status,
            answer.message.unwrap_or_default()
        ),
        Err(IpcError::NotRunning { .. }) => not_running(),
        Err(err) => Err(err.into()),
    }
}

/// What the running agent said to `--force`.
enum Handover {
    /// It is shutting down: wait for the lock.
    Granted,
    /// Nothing answers: just start.
    NothingRuns,
    /// It refused (updating, wrong secret) or could not be asked; the message is printed.
    Refused,
}

async fn ask_running_agent_to_stop(storage: &StateManager, new_args: Vec<String>) -> Handover {
    let (endpoint, secret) = match ipc_target(storage) {
        Ok((endpoint, Some(secret))) => (endpoint, secret),
        Ok((_, None)) => {
            tracing::info!("--force: no IPC secret here, so no agent to ask; starting");
            return Handover::NothingRuns;
        }
        Err(err) => {
            tracing::error!("--force: cannot reach the running agent: {err:#}");
            eprintln!("cms_agent: --force: cannot reach the running agent: {err:#}");
            return Handover::Refused;
        }
    };
    match ipc::send_force_command(&endpoint, &secret, new_args).await {
        Ok(answer) if answer.status == IpcStatus::Acknowledged => {
            tracing::info!(old_pid = ?answer.pid, "--force acknowledged; waiting for the lock");
            Handover::Granted
        }
        Ok(answer) => {
            let why = match answer.status {
                IpcStatus::BusyUpdating => {
                    "it is updating itself; try again when the update is done"
                }
                IpcStatus::InvalidSecret => "the IPC secret does not match",
                _ => "it could not read the request",
            };
            tracing::warn!(status = ?answer.status, "--force refused by the running agent");
            eprintln!("cms_agent: --force refused by the running agent: {why}");
            Handover::Refused
        }
        Err(IpcError::NotRunning { .. }) => {
            tracing::info!("--force: no agent is running; starting");
            Handover::NothingRuns
        }
        Err(err) => {
            tracing::error!(error = %err, "--force: cannot reach the running agent");
            eprintln!("cms_agent: --force: {err}");
            Handover::Refused
        }
    }
}

/// Saves what the command line changes permanently (the server, the enrollment token), and
/// the version at first start. The same server spelled differently keeps the identity.
fn apply_command_line(config: &mut ConfigManager, cli: &Cli) -> Result<()> {
    if let Some(server) = &cli.server {
        let given = parse_server_url(server)?;
        config.update(|c| {
            let saved = c
                .server_url
                .as_deref()
                .and_then(|s| parse_server_url(s).ok());
            if saved.as_ref() != Some(&given) {
                c.server_url = Some(server.clone());
                c.credentials = None; // an identity belongs to one server
                c.enrollment_token = None; // and so does its enrollment token
            }
        })?;
    }
    if let Some(token) = &cli.enrollment_token {
        config.update(|c| c.enrollment_token = Some(EnrollmentToken::new(token.clone())))?;
    }
    if config.config().server_url.is_none() {
        return Err(AgentError::NoServer.into()); // checked before anything is written
    }
    apply_network_settings(config, cli)?;
    match config.config().current_version.as_deref() {
        None => config.update(|c| c.current_version = Some(BUILD_VERSION.to_owned()))?,
        Some(recorded) if recorded != BUILD_VERSION => {
            tracing::info!(
                recorded,
                running = BUILD_VERSION,
                "running a different version than config.json records"
            );
        }
        Some(_) => {}
    }
    Ok(())
}

/// `--ca-cert` and `--proxy`: checked, then saved in config.json.
fn apply_network_settings(config: &mut ConfigManager, cli: &Cli) -> Result<()> {
    if let Some(file) = &cli.ca_cert {
        let pem = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --ca-cert {}", file.display()))?;
        parse_ca_pem(&pem).with_context(|| format!("--ca-cert {}", file.display()))?;
        config.update(|c| c.ca_certs_pem = Some(pem))?;
    }
    if let Some(raw) = &cli.proxy {
        let proxy = ProxySetting::parse(raw)?;
        config.update(|c| c.proxy = Some(proxy))?;
    }
    Ok(())
}

fn effective_intervals(configured: &Intervals, cli: &Cli) -> Intervals {
    Intervals {
        status_secs: cli.status_interval.unwrap_or(configured.status_secs),
        update_poll_secs: cli
            .update_poll_interval
            .unwrap_or(configured.update_poll_secs),
        ..configured.clone()
    }
}

/// One thread is plenty for an agent that mostly sleeps, and it keeps the idle footprint small.
fn runtime() -> Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
