//! `cms_agent`'s command line (docs/CONTRACT.md): the arguments ([`Args`]), [`run`] and the
//! exit codes. `main.rs` only parses, calls [`run`] (or [`run_as_service`]) and exits with the
//! code; this module is the binary's edge, so its errors are `anyhow` and [`exit_code`] is the
//! one place they become a code. Nothing in the library may import it: `core`, `net` and
//! `ipc` never know that a command line exists.
//!
//! Exit codes: 0 clean stop, 1 another instance holds the lock (or refused `--force`/`--stop`),
//! 2 bad arguments, an unusable storage path/config or a refused OS operation, 3 `--status` or
//! `--stop` found no running agent, 4 a task of the running agent died (reported; the service
//! manager restarts it). A full disk at start is waited out, not an exit. With `--service` the
//! same run happens under the service manager, which is told the code (0: a clean stop, so its
//! recovery actions do not fire).
//!
//! One file per subcommand family: `start` (the lock, config.json and the command line applied
//! to it), `control` (the client side of `--status`, `--stop` and `--force`), `autostart`
//! (`--enable-autostart`, `--disable-autostart`), `service` (`--service`), `identity`
//! (`--reset-identity`) and `policy` (the machine's Group Policy, applied and watched).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use cms_platform::agent_args::{ENROLLMENT_TOKEN_ENV, PROXY_ENV};
use cms_protocol::BUILD_VERSION;

use crate::core::agent::{Agent, AgentOptions, RunOutcome};
use crate::core::config::Intervals;
use crate::core::error_reporter::install_panic_hook;
use crate::core::metered::MeteredMode;
use crate::core::storage::StateManager;
use crate::core::update::Relaunch;
use crate::logging;
use crate::system;
use crate::system::lock_manager::LockManager;
use crate::system::service::ServiceSession;

mod autostart;
mod control;
mod identity;
mod policy;
mod service;
mod start;

pub use service::run_as_service;

use autostart::autostart;
use control::{
    Handover, ask_running_agent_to_stop, print_status, restart_service_with, stop_running_agent,
};
use start::{Start, lock_held, retry_while_disk_full, start};

/// Another instance holds the lock.
const EXIT_LOCK_HELD: u8 = 1;
/// Bad arguments, or nothing usable to run with.
const EXIT_UNUSABLE: u8 = 2;
/// `--status` or `--stop` found no running agent.
const EXIT_NOT_RUNNING: u8 = 3;
/// A task of the running agent died: restart it.
const EXIT_TASK_DIED: u8 = 4;
/// How long `--force` waits for the old instance to shut down and release the lock.
const FORCE_LOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `--stop` and `--disable-autostart` wait for the agent to exit (its shutdown
/// takes 10 s at most).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// `--group`: a group name, or a message that says what one looks like.
fn parse_group(name: &str) -> std::result::Result<String, String> {
    if cms_protocol::is_valid_group(name) {
        Ok(name.to_owned())
    } else {
        Err("a group name is 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'".to_owned())
    }
}

/// The CMS endpoint agent: runs in the foreground until stopped.
#[derive(Parser)]
#[command(name = "cms_agent", version = BUILD_VERSION)]
pub struct Args {
    /// Backend base URL (saved in config.json); https, or http to loopback only. Repeat it for
    /// the replicas of one backend: the agent uses the first and moves on when one is down.
    #[arg(long, value_name = "URL")]
    server: Vec<String>,
    /// Enrollment token, when the server requires one at registration (kept in config.json
    /// for a later re-enrollment).
    #[arg(
        long,
        value_name = "TOKEN",
        env = ENROLLMENT_TOKEN_ENV,
        hide_env_values = true
    )]
    enrollment_token: Option<String>,
    /// The agent's group (saved in config.json; default `default`): 1-64 of `[A-Za-z0-9._-]`.
    /// An operator's assignment on the server wins.
    #[arg(long, value_name = "NAME", value_parser = parse_group)]
    group: Option<String>,
    /// Most KiB (1024 bytes) per second an update's package is downloaded at (saved in
    /// config.json); 0 removes the limit.
    #[arg(long, value_name = "KBPS", value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    download_limit: Option<u32>,
    /// Whether the connection counts as metered (saved in config.json): `auto` asks the OS,
    /// `yes` defers every offered update but an urgent one until `no` or an unmetered `auto`.
    #[arg(long, value_name = "auto|yes|no")]
    metered: Option<MeteredMode>,
    /// Storage path override (default: per-machine when elevated, else per-user).
    #[arg(long, value_name = "DIR", env = "CMS_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds between update checks, for this run.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    update_poll_interval: Option<u64>,
    /// Seconds between heartbeats, for this run.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    status_interval: Option<u64>,
    /// Save the settings given (--server, --enrollment-token, --group, --download-limit, --metered,
    /// --trusted-root, --ca-cert, --proxy), write the autostart entry and exit: elevated, the Windows service CMSAgent (or root's systemd
    /// unit); else the HKCU Run value (or the user's autostart entry).
    #[arg(long, conflicts_with_all = ["disable_autostart", "force", "status", "stop"])]
    enable_autostart: bool,
    /// Remove the autostart entry and exit (elevated: stop and delete the service), and the
    /// IPC secret once no agent runs.
    #[arg(long, conflicts_with_all = ["force", "status", "stop"])]
    disable_autostart: bool,
    /// Ask the running agent to stop, then run with the options that follow --force (the
    /// service is started again with them instead).
    #[arg(long, conflicts_with_all = ["status", "stop"])]
    force: bool,
    /// Ask the running agent to stop gracefully and wait until it has; exit 3 if none runs.
    #[arg(long, conflicts_with = "status")]
    stop: bool,
    /// Print the running agent's state and version; exit 3 if none runs.
    #[arg(long)]
    status: bool,
    /// Remove this agent's id and credential (keeping the server, settings and pinned root) so
    /// the next start registers anew, and exit: for golden images, or to enrol a revoked
    /// machine again. Exit 1 while an agent runs.
    #[arg(long, conflicts_with_all = ["enable_autostart", "disable_autostart", "force", "stop", "status", "service"])]
    reset_identity: bool,
    /// Run under the service manager: the command line of the Windows service (and of the
    /// systemd unit); started from a console, it says so and exits 2.
    #[arg(long, conflicts_with_all = ["enable_autostart", "disable_autostart", "force", "stop", "status", "per_user"])]
    pub service: bool,
    /// Be the current user's agent even when elevated (its storage, IPC endpoint, secret and
    /// autostart entry are the user's); per-user autostart entries carry it.
    #[arg(long)]
    per_user: bool,

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

/// Leaves out the enrollment token and the proxy (it may carry a password).
impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("server", &self.server)
            .field("data_dir", &self.data_dir)
            .field("service", &self.service)
            .field("per_user", &self.per_user)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

/// The one place an error becomes exit code 2.
pub fn exit_code(outcome: Result<u8>) -> u8 {
    outcome.unwrap_or_else(|err| {
        tracing::error!("cannot run: {err:#}");
        eprintln!("cms_agent: error: {err:#}");
        EXIT_UNUSABLE
    })
}

/// Whether this process is the machine-wide agent: elevated (root) and not `--per-user`.
fn machine_wide(cli: &Args) -> bool {
    system::is_running_as_admin() && !cli.per_user
}

/// The options given after `--force`: what the new instance runs with (sent to the old one,
/// which only logs how many there are).
pub fn args_after_force(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .skip_while(|a| *a != "--force")
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Runs the command line: an autostart change, `--status`, `--stop`, or the agent itself (after
/// `--force`, once the running one has stopped); the exit code, or the error that is code 2.
pub fn run(cli: Args, force_args: Vec<String>, service: Option<&ServiceSession>) -> Result<u8> {
    if cli.enable_autostart || cli.disable_autostart {
        return autostart(&cli); // before the lock (docs/CONTRACT.md)
    }
    let storage = StateManager::new(cli.data_dir.clone(), machine_wide(&cli))?;
    let _log_guard = logging::init(&storage.logs_dir(), "agent.log")
        .with_context(|| format!("cannot open logs in {}", storage.logs_dir().display()))?;
    if let Some(warning) = storage.takeover_warning() {
        tracing::warn!(folder = %storage.storage_path().display(), "{warning}");
    }
    let runtime = runtime()?;
    if cli.status {
        return runtime.block_on(print_status(&storage));
    }
    if cli.stop {
        return runtime.block_on(stop_running_agent(&storage));
    }
    if cli.reset_identity {
        return identity::reset_identity(&storage);
    }
    tracing::info!(version = BUILD_VERSION, pid = std::process::id(), data_dir = %storage.storage_path().display(), force = cli.force, service = service.is_some(), "agent starting");
    let mut wait_for_lock = if cli.force {
        match runtime.block_on(ask_running_agent_to_stop(&storage)) {
            Handover::ToService => return restart_service_with(&storage, &cli, &force_args),
            Handover::Granted => true,
            Handover::NothingRuns => false,
            Handover::Refused => return Ok(EXIT_LOCK_HELD),
        }
    } else {
        false
    };
    let watch = policy::PolicyWatch::start();
    loop {
        let applied = policy::read();
        let outcome = run_once(
            &storage,
            &cli,
            wait_for_lock,
            service,
            &runtime,
            &applied,
            &watch,
        )?;
        match outcome {
            Some(RunOutcome::Stopped) if watch.changed() => {
                tracing::info!("starting again with the changed policy");
                wait_for_lock = false;
            }
            Some(RunOutcome::Stopped) => return Ok(0),
            Some(RunOutcome::TaskDied) => return Ok(EXIT_TASK_DIED),
            None => return Ok(EXIT_LOCK_HELD),
        }
    }
}

/// One run of the agent: the lock and config.json (with `applied`, the policy), then the agent
/// until it stops; `None` when another agent holds the lock (reported).
fn run_once(
    storage: &StateManager,
    cli: &Args,
    wait_for_lock: bool,
    service: Option<&ServiceSession>,
    runtime: &tokio::runtime::Runtime,
    applied: &policy::RawPolicy,
    watch: &policy::PolicyWatch,
) -> Result<Option<RunOutcome>> {
    let lock = LockManager::new(storage.storage_path());
    let (started, disk_full) = retry_while_disk_full(storage.storage_path(), || {
        start(storage, &lock, wait_for_lock, cli, applied)
    })?;
    let (config, reporter) = match started {
        Start::Ready(config, reporter) => (config, reporter),
        Start::LockHeld(holder) => {
            lock_held(storage, holder.as_ref());
            return Ok(None);
        }
    };
    install_panic_hook(reporter.clone());
    if let Some(wait) = disk_full {
        reporter.store("storage_full", &wait.describe(storage.storage_path()));
    }
    let options = AgentOptions {
        intervals: effective_intervals(&config.config().intervals, cli),
        trusted_root: cli.trusted_root.clone(),
        relaunch: relaunch(service),
    };
    tracing::info!(
        status_secs = options.intervals.status_secs,
        update_poll_secs = options.intervals.update_poll_secs,
        "timers for this run"
    );
    let agent = Agent::new(storage.clone(), *config, reporter, lock, options)?;
    if let Some(session) = service {
        let agent = agent.clone();
        session.on_stop(move || agent.graceful_shutdown());
    }
    watch.watch(agent.clone(), applied.clone());
    Ok(Some(runtime.block_on(agent.run())))
}

/// How the updater is to start the next version: as the service, or like this process.
fn relaunch(service: Option<&ServiceSession>) -> Relaunch {
    match service {
        Some(session) => Relaunch::Service(session.arguments().to_vec()),
        None => Relaunch::Process(std::env::args_os().skip(1).collect()),
    }
}

fn effective_intervals(configured: &Intervals, cli: &Args) -> Intervals {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The arguments `words` give, as after `cms_agent`.
    pub(super) fn args(words: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("cms_agent").chain(words.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn an_error_is_exit_code_2_and_a_code_passes_through() {
        assert_eq!(exit_code(Ok(0)), 0);
        assert_eq!(exit_code(Ok(EXIT_NOT_RUNNING)), 3);
        assert_eq!(exit_code(Ok(EXIT_TASK_DIED)), 4);
        assert_eq!(exit_code(Err(anyhow::anyhow!("no storage"))), EXIT_UNUSABLE);
    }

    #[test]
    fn the_options_after_force_are_the_new_instances() {
        let argv = [
            "cms_agent",
            "--per-user",
            "--force",
            "--server",
            "https://a",
        ]
        .map(OsString::from);
        assert_eq!(args_after_force(&argv), ["--server", "https://a"]);
        assert!(args_after_force(&argv[..2]).is_empty());
    }

    #[test]
    fn the_modes_exclude_each_other() {
        for words in [
            &["--status", "--stop"][..],
            &["--service", "--force"],
            &["--service", "--per-user"],
            &["--enable-autostart", "--disable-autostart"],
            &["--disable-autostart", "--status"],
            &["--update-poll-interval", "0"],
        ] {
            assert!(args(words).is_err(), "{words:?}");
        }
        assert!(args(&["--force", "--server", "https://a"]).is_ok());
    }

    #[test]
    fn the_command_line_overrides_the_configured_timers_for_this_run() {
        let configured = Intervals::default();
        let given = args(&["--status-interval", "5"]).unwrap();
        let run = effective_intervals(&configured, &given);
        assert_eq!(run.status_secs, 5);
        assert_eq!(run.update_poll_secs, configured.update_poll_secs);
    }
}
