//! `cms_agent`: the command line of the CMS endpoint agent (design.md section 4).
//!
//! Exit codes: 0 clean stop, 1 another instance holds the lock, 2 bad arguments or an unusable
//! storage path/config. `main` is the only place that turns errors into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use cms_agent::core::agent::{Agent, AgentError, AgentOptions};
use cms_agent::core::config::{ConfigManager, Intervals};
use cms_agent::core::error_reporter::ErrorReporter;
use cms_agent::core::storage::StateManager;
use cms_agent::logging;
use cms_agent::net::parse_server_url;
use cms_agent::system::lock_manager::{Acquire, LockManager};
use cms_protocol::BUILD_VERSION;

/// Another instance holds the lock.
const EXIT_LOCK_HELD: u8 = 1;
/// Bad arguments, or nothing usable to run with.
const EXIT_UNUSABLE: u8 = 2;

/// The CMS endpoint agent: runs in the foreground until stopped.
#[derive(Parser)]
#[command(name = "cms_agent", version = BUILD_VERSION)]
struct Cli {
    /// Backend base URL (saved in config.json); https, or http to loopback only.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Enrollment token, when the server requires one at registration.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CMS_ENROLLMENT_TOKEN",
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("cannot run: {err:#}");
            eprintln!("cms_agent: error: {err:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let storage = StateManager::new(cli.data_dir.clone())?;
    let _log_guard = logging::init(&storage.logs_dir(), "agent.log")
        .with_context(|| format!("cannot open logs in {}", storage.logs_dir().display()))?;
    tracing::info!(version = BUILD_VERSION, pid = std::process::id(), data_dir = %storage.storage_path().display(), "agent starting");
    let lock = LockManager::new(storage.storage_path());
    if let Acquire::HeldBy(holder) = lock.acquire()? {
        let who = holder.map_or("unknown pid".into(), |r| {
            format!("pid {}, heartbeat {}", r.pid, r.timestamp)
        });
        tracing::error!(holder = %who, "Failed to acquire lock. Agent exiting.");
        eprintln!(
            "cms_agent: another agent is running on {} ({who})",
            storage.storage_path().display()
        );
        return Ok(ExitCode::from(EXIT_LOCK_HELD));
    }
    let (mut config, notices) = ConfigManager::load(&storage.config_path())?;
    let reporter = ErrorReporter::open(
        storage.error_buffer_path(),
        config.config().error_buffer_max_reports,
    );
    for notice in &notices {
        reporter.store(notice.kind, &notice.message);
    }
    apply_command_line(&mut config, &cli)?;
    let options = AgentOptions {
        intervals: effective_intervals(&config.config().intervals, &cli),
        enrollment_token: cli.enrollment_token,
    };
    let agent = Agent::new(config, reporter, lock, options)?;
    runtime()?.block_on(agent.run());
    Ok(ExitCode::SUCCESS)
}

/// Saves what the command line changes permanently, and the version at first start.
fn apply_command_line(config: &mut ConfigManager, cli: &Cli) -> Result<()> {
    if let Some(server) = &cli.server {
        parse_server_url(server)?;
        config.update(|c| {
            if c.server_url.as_deref() != Some(server.as_str()) {
                c.server_url = Some(server.clone());
                c.credentials = None; // an identity belongs to one server
            }
        })?;
    }
    if config.config().server_url.is_none() {
        return Err(AgentError::NoServer.into()); // checked before anything is written
    }
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
