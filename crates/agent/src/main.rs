//! `cms_agent`: the command line of the CMS endpoint agent (docs/CONTRACT.md).
//!
//! Exit codes: 0 clean stop, 1 another instance holds the lock (or refused `--force`/`--stop`),
//! 2 bad arguments, an unusable storage path/config or a refused OS operation, 3 `--status` or
//! `--stop` found no running agent, 4 a task of the running agent died (reported; the service
//! manager restarts it). A full disk at start is waited out, not an exit. `main` is the only
//! place that turns errors into exit codes; with `--service` the same run happens under the
//! service manager, which is told the code (0: a clean stop, so its recovery actions do not
//! fire).
//!
//! On Windows this is a GUI-subsystem program, so no console window opens at logon or under the
//! service manager; run from a console, it attaches to that console to print.

#![windows_subsystem = "windows"]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use cms_agent::core::agent::{Agent, AgentError, AgentOptions, RunOutcome};
use cms_agent::core::config::{ConfigManager, Intervals};
use cms_agent::core::error_reporter::{ErrorReporter, install_panic_hook};
use cms_agent::core::storage::StateManager;
use cms_agent::core::update::Relaunch;
use cms_agent::ipc::{self, IpcEndpoint, IpcError};
use cms_agent::logging;
use cms_agent::net::proxy::ProxySetting;
use cms_agent::net::servers::ServerList;
use cms_agent::net::tls::parse_ca_pem;
use cms_agent::net::trust::TrustedMetadata;
use cms_agent::net::{EnrollmentToken, backoff};
use cms_agent::system::lock_manager::{Acquire, LockManager};
use cms_agent::system::service::{
    self, SERVICE_NAME, ServiceExit, ServiceSession, ServiceState, StopOutcome,
};
use cms_agent::system::{self, IpcSecret, SecretAction, SecretScope};
use cms_platform::agent_args::{ENROLLMENT_TOKEN_ENV, PROXY_ENV};
use cms_platform::fs::is_out_of_space;
use cms_protocol::{BUILD_VERSION, IpcStatus, LockRecord};

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
/// Longest pause between two attempts to start on a full disk.
const DISK_FULL_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long `--stop` and `--disable-autostart` wait for the agent to exit (its shutdown
/// takes 10 s at most).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `--force` waits for the service to run again.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The CMS endpoint agent: runs in the foreground until stopped.
#[derive(Parser)]
#[command(name = "cms_agent", version = BUILD_VERSION)]
struct Cli {
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
    /// Storage path override (default: per-machine when elevated, else per-user).
    #[arg(long, value_name = "DIR", env = "CMS_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds between update checks, for this run.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    update_poll_interval: Option<u64>,
    /// Seconds between heartbeats, for this run.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    status_interval: Option<u64>,
    /// Save the settings given (--server, --enrollment-token, --trusted-root, --ca-cert,
    /// --proxy), write the autostart entry and exit: elevated, the Windows service CMSAgent (or root's systemd
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
    /// Run under the service manager: the command line of the Windows service (and of the
    /// systemd unit); started from a console, it says so and exits 2.
    #[arg(long, conflicts_with_all = ["enable_autostart", "disable_autostart", "force", "stop", "status", "per_user"])]
    service: bool,
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

fn main() -> ExitCode {
    system::attach_parent_console();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&argv);
    if cli.service {
        return run_as_service(argv);
    }
    let force_args = args_after_force(&argv);
    ExitCode::from(exit_code(run(cli, force_args, None)))
}

/// The one place an error becomes exit code 2.
fn exit_code(outcome: Result<u8>) -> u8 {
    outcome.unwrap_or_else(|err| {
        tracing::error!("cannot run: {err:#}");
        eprintln!("cms_agent: error: {err:#}");
        EXIT_UNUSABLE
    })
}

/// `--service`: the same run under the service manager, which reports `RUNNING` before it
/// starts and `STOPPED` with its exit code; the start arguments (`--force` against the service)
/// are added to the command line.
fn run_as_service(argv: Vec<OsString>) -> ExitCode {
    let body = Box::new(move |session: ServiceSession| {
        let mut words = argv;
        words.extend(session.arguments().iter().cloned());
        let code = match Cli::try_parse_from(&words) {
            Ok(cli) => exit_code(run(cli, Vec::new(), Some(&session))),
            Err(err) => {
                eprintln!("cms_agent: bad start arguments: {err}");
                EXIT_UNUSABLE
            }
        };
        match code {
            0 => ServiceExit::Clean,
            code => ServiceExit::Failed(code.into()),
        }
    });
    match service::run(body) {
        Ok(ServiceExit::Clean) => ExitCode::SUCCESS,
        Ok(ServiceExit::Failed(code)) => {
            ExitCode::from(u8::try_from(code).unwrap_or(EXIT_UNUSABLE))
        }
        Err(err) => {
            eprintln!("cms_agent: {err}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

/// Whether this process is the machine-wide agent: elevated (root) and not `--per-user`.
fn machine_wide(cli: &Cli) -> bool {
    system::is_running_as_admin() && !cli.per_user
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

fn run(cli: Cli, force_args: Vec<String>, service: Option<&ServiceSession>) -> Result<u8> {
    if cli.enable_autostart || cli.disable_autostart {
        return autostart(&cli); // before the lock (docs/CONTRACT.md)
    }
    let storage = StateManager::new(cli.data_dir.clone(), machine_wide(&cli))?;
    let _log_guard = logging::init(&storage.logs_dir(), "agent.log")
        .with_context(|| format!("cannot open logs in {}", storage.logs_dir().display()))?;
    let runtime = runtime()?;
    if cli.status {
        return runtime.block_on(print_status(&storage));
    }
    if cli.stop {
        return runtime.block_on(stop_running_agent(&storage));
    }
    tracing::info!(version = BUILD_VERSION, pid = std::process::id(), data_dir = %storage.storage_path().display(), force = cli.force, service = service.is_some(), "agent starting");
    let lock = LockManager::new(storage.storage_path());
    let wait_for_lock = if cli.force {
        match runtime.block_on(ask_running_agent_to_stop(&storage, force_args.clone())) {
            Handover::ToService => return restart_service_with(&storage, &cli, &force_args),
            Handover::Granted => true,
            Handover::NothingRuns => false,
            Handover::Refused => return Ok(EXIT_LOCK_HELD),
        }
    } else {
        false
    };
    let (started, disk_full) = retry_while_disk_full(storage.storage_path(), || {
        start(&storage, &lock, wait_for_lock, &cli)
    })?;
    let (config, reporter) = match started {
        Start::Ready(config, reporter) => (config, reporter),
        Start::LockHeld(holder) => return Ok(lock_held(&storage, holder.as_ref())),
    };
    install_panic_hook(reporter.clone());
    if let Some(wait) = disk_full {
        reporter.store("storage_full", &wait.describe(storage.storage_path()));
    }
    let options = AgentOptions {
        intervals: effective_intervals(&config.config().intervals, &cli),
        trusted_root: cli.trusted_root.clone(),
        relaunch: relaunch(service),
    };
    tracing::info!(
        status_secs = options.intervals.status_secs,
        update_poll_secs = options.intervals.update_poll_secs,
        "timers for this run"
    );
    let agent = Agent::new(storage, *config, reporter, lock, options)?;
    if let Some(session) = service {
        let agent = agent.clone();
        session.on_stop(move || agent.graceful_shutdown());
    }
    match runtime.block_on(agent.run()) {
        RunOutcome::Stopped => Ok(0),
        RunOutcome::TaskDied => Ok(EXIT_TASK_DIED),
    }
}

/// How the updater is to start the next version: as the service, or like this process.
fn relaunch(service: Option<&ServiceSession>) -> Relaunch {
    match service {
        Some(session) => Relaunch::Service(session.arguments().to_vec()),
        None => Relaunch::Process(std::env::args_os().skip(1).collect()),
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

/// Loads config.json, opens the error buffer and applies the command line.
fn load_config(storage: &StateManager, cli: &Cli) -> Result<Start> {
    let (mut config, reporter) = open_config(storage)?;
    apply_command_line(&mut config, cli)?;
    Ok(Start::Ready(Box::new(config), reporter))
}

/// `config.json` (migrated or set aside as needed; what happened is buffered as error reports)
/// and the error reporter.
fn open_config(storage: &StateManager) -> Result<(ConfigManager, Arc<ErrorReporter>)> {
    let (config, notices) = ConfigManager::load(&storage.config_path())?;
    let reporter = Arc::new(ErrorReporter::open(
        storage.error_buffer_path(),
        config.config().error_buffer_max_reports,
    ));
    for notice in &notices {
        reporter.store(notice.kind, &notice.message);
    }
    Ok((config, reporter))
}

fn describe_holder(holder: Option<&LockRecord>) -> String {
    holder.map_or("unknown pid".into(), |r| {
        format!("pid {}, heartbeat {}", r.pid, r.timestamp)
    })
}

/// Another agent holds the lock: said, and exit code 1.
fn lock_held(storage: &StateManager, holder: Option<&LockRecord>) -> u8 {
    let who = describe_holder(holder);
    tracing::error!(holder = %who, "Failed to acquire lock. Agent exiting.");
    eprintln!(
        "cms_agent: another agent is running on {} ({who})",
        storage.storage_path().display()
    );
    EXIT_LOCK_HELD
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

/// `--enable-autostart` / `--disable-autostart`: the autostart entry, then exit.
fn autostart(cli: &Cli) -> Result<u8> {
    let machine_wide = machine_wide(cli);
    if cli.disable_autostart {
        return disable_autostart(cli, machine_wide);
    }
    if gives_settings(cli) {
        let storage = StateManager::new(cli.data_dir.clone(), machine_wide)?;
        if !save_settings_first(&storage, cli)? {
            return Ok(EXIT_LOCK_HELD);
        }
        println!("settings saved in {}", storage.config_path().display());
    }
    let exe = system::installed_exe().context("cannot find the path of this program")?;
    let place = system::register_autostart(&exe, &entry_args(cli, machine_wide), machine_wide)?;
    println!("autostart enabled: {place}");
    Ok(0)
}

/// Whether the command line carries settings that outlive this run.
fn gives_settings(cli: &Cli) -> bool {
    !cli.server.is_empty()
        || cli.enrollment_token.is_some()
        || cli.trusted_root.is_some()
        || cli.ca_cert.is_some()
        || cli.proxy.is_some()
}

/// What the autostart entry passes: `--service` (the machine's service or systemd unit) or
/// `--per-user`, and `--data-dir` when one was given.
fn entry_args(cli: &Cli, machine_wide: bool) -> Vec<OsString> {
    let mode = if machine_wide {
        "--service"
    } else {
        "--per-user"
    };
    let mut args: Vec<OsString> = vec![mode.into()];
    if let Some(dir) = &cli.data_dir {
        args.push("--data-dir".into());
        args.push(
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.clone())
                .into(),
        );
    }
    args
}

/// Saves `--server`, `--enrollment-token`, `--ca-cert`, `--proxy` and `--trusted-root` while
/// holding the lock, so no running agent overwrites them; `false` (the holder is printed) when
/// an agent runs.
fn save_settings_first(storage: &StateManager, cli: &Cli) -> Result<bool> {
    let lock = LockManager::new(storage.storage_path());
    if let Acquire::HeldBy(holder) = lock.acquire()? {
        lock_held(storage, holder.as_ref());
        eprintln!("cms_agent: stop it first (--stop), or give it the new settings with --force");
        return Ok(false);
    }
    let (mut config, _reporter) = open_config(storage)?;
    save_settings(&mut config, cli)?;
    if let Some(root) = &cli.trusted_root {
        pin_trusted_root(storage, &config, root)?;
    }
    lock.release();
    Ok(true)
}

/// Pins `root` in the storage's trust store (the running agent would do it at start).
fn pin_trusted_root(storage: &StateManager, config: &ConfigManager, root: &Path) -> Result<()> {
    let servers = config.config().servers();
    if servers.is_empty() {
        bail!("--trusted-root needs a server: pass --server URL too");
    }
    let servers = Arc::new(ServerList::parse(&servers)?);
    // Pinning reads the file and writes the trust store; the client is never used for it.
    let client = reqwest::Client::builder()
        .build()
        .context("cannot set up an HTTP client")?;
    TrustedMetadata::new(storage.tuf_dir(), servers, client).pin_root_file(root)?;
    Ok(())
}

/// `--disable-autostart`: the service is stopped (ended after [`STOP_TIMEOUT`]) and deleted,
/// or the user's entry removed; then the IPC secret goes, unless an agent still runs.
fn disable_autostart(cli: &Cli, machine_wide: bool) -> Result<u8> {
    if machine_wide {
        stop_service()?;
    }
    match system::unregister_autostart(machine_wide)? {
        Some(place) => println!("autostart disabled: removed {place}"),
        None => println!("autostart was not enabled; nothing to remove"),
    }
    remove_ipc_secret(cli, machine_wide)?;
    Ok(0)
}

/// Stops the service through the service manager; one that does not stop in time is ended by
/// the PID the service manager named.
fn stop_service() -> Result<()> {
    match service::stop(STOP_TIMEOUT)? {
        StopOutcome::NotInstalled | StopOutcome::WasStopped => {}
        StopOutcome::Stopped => println!("service {SERVICE_NAME} stopped"),
        StopOutcome::TimedOut { pid: Some(pid) } => {
            eprintln!(
                "cms_agent: service {SERVICE_NAME} did not stop within {} s; ending its process {pid}",
                STOP_TIMEOUT.as_secs()
            );
            system::terminate_process(pid).with_context(|| format!("cannot end process {pid}"))?;
        }
        StopOutcome::TimedOut { pid: None } => bail!(
            "service {SERVICE_NAME} did not stop within {} s and its process is unknown",
            STOP_TIMEOUT.as_secs()
        ),
    }
    Ok(())
}

/// Removes the IPC secret of the agent whose storage this is, once no agent runs there.
fn remove_ipc_secret(cli: &Cli, machine_wide: bool) -> Result<()> {
    let dir = match &cli.data_dir {
        Some(dir) => Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone())),
        None => system::default_data_dir(machine_wide),
    };
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        return Ok(()); // no storage, no agent, nothing stored there
    };
    let lock = LockManager::new(&dir);
    if let Acquire::HeldBy(holder) = lock.acquire()? {
        println!(
            "an agent still runs on {} ({}); its IPC secret is kept",
            dir.display(),
            describe_holder(holder.as_ref())
        );
        return Ok(());
    }
    let scope = SecretScope::current(machine_wide);
    let removed = system::manage_ipc_secret(SecretAction::Delete, scope, &dir);
    lock.release();
    removed?;
    println!("IPC secret removed ({} agent)", scope.as_str());
    Ok(())
}

/// The endpoint and the stored secret of the agent that owns `storage`; no secret means no
/// agent has ever served IPC there.
fn ipc_target(storage: &StateManager) -> Result<(IpcEndpoint, Option<IpcSecret>)> {
    let path = storage.storage_path();
    let endpoint = IpcEndpoint::for_agent(path, storage.machine_wide())?;
    let scope = SecretScope::current(storage.machine_wide());
    let secret = system::manage_ipc_secret(SecretAction::Get, scope, path)?;
    Ok((endpoint, secret))
}

/// "No agent is running", exit 3.
fn not_running(storage: &StateManager) -> u8 {
    eprintln!(
        "cms_agent: no agent is running on {}",
        storage.storage_path().display()
    );
    EXIT_NOT_RUNNING
}

/// The PID of the machine-wide agent's service while the service manager says it runs.
fn running_service_pid(storage: &StateManager) -> Option<u32> {
    if !storage.machine_wide() {
        return None;
    }
    let status = service::query().ok().flatten()?;
    (status.state == ServiceState::Running)
        .then_some(status.pid)
        .flatten()
}

/// `--status`: state and version from the running agent; exit 3 when none runs.
async fn print_status(storage: &StateManager) -> Result<u8> {
    let (endpoint, Some(secret)) = ipc_target(storage)? else {
        return Ok(not_running(storage));
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
                if running_service_pid(storage) == Some(pid) {
                    println!("service: {SERVICE_NAME}");
                    match service::recovery() {
                        Ok(recovery) => println!("recovery: {recovery}"),
                        Err(err) => println!("recovery: unknown ({err})"),
                    }
                }
            }
            Ok(0)
        }
        Ok(answer) => bail!(
            "the running agent refused --status ({:?}): {}",
            answer.status,
            answer.message.unwrap_or_default()
        ),
        Err(IpcError::NotRunning { .. }) => Ok(not_running(storage)),
        Err(err) => Err(err.into()),
    }
}

/// `--stop`: the running agent shuts down gracefully (a service ends `STOPPED` with exit code
/// 0, so it is not restarted); exit 0 once its process is gone, 1 if it refused (updating) or
/// did not stop in time, 3 if none runs.
async fn stop_running_agent(storage: &StateManager) -> Result<u8> {
    let (endpoint, Some(secret)) = ipc_target(storage)? else {
        return Ok(not_running(storage));
    };
    // Read before asking: an agent that stops at once may close the pipe before its whole
    // answer is read (Wine drops what is unread), and the lock record still names it.
    let holder = cms_platform::lock_file::read_lock_record(&cms_platform::layout::lock_path(
        storage.storage_path(),
    ));
    let answer = match ipc::send_stop_command(&endpoint, &secret).await {
        Err(IpcError::NotRunning { .. }) => return Ok(not_running(storage)),
        Err(IpcError::BadResponse { reason, .. }) if holder.is_some() => {
            tracing::info!(%reason, "--stop answer cut short; the agent is taken to be stopping");
            acknowledged_by(holder)
        }
        answer => answer?,
    };
    match answer.status {
        IpcStatus::Acknowledged => {
            let pid = answer
                .pid
                .context("the running agent acknowledged --stop without its pid")?;
            tracing::info!(pid, "--stop acknowledged; waiting for the agent to exit");
            if wait_for_exit(pid, STOP_TIMEOUT).await {
                println!("stopped: the agent (pid {pid}) has exited");
                Ok(0)
            } else {
                eprintln!(
                    "cms_agent: --stop: the agent (pid {pid}) did not exit within {} s",
                    STOP_TIMEOUT.as_secs()
                );
                Ok(EXIT_LOCK_HELD)
            }
        }
        IpcStatus::BusyUpdating => {
            eprintln!(
                "cms_agent: --stop refused by the running agent: it is updating itself; try again when the update is done"
            );
            Ok(EXIT_LOCK_HELD)
        }
        status => bail!(
            "the running agent refused --stop ({status:?}): {}",
            answer.message.unwrap_or_default()
        ),
    }
}

/// The answer a stopping agent gives, with the pid its lock record names.
fn acknowledged_by(holder: Option<LockRecord>) -> cms_protocol::IpcResponse {
    cms_protocol::IpcResponse {
        status: IpcStatus::Acknowledged,
        state: None,
        version: None,
        pid: holder.map(|record| record.pid),
        message: None,
    }
}

/// Waits until process `pid` (as it is now: PID plus start time) has exited; `false` on timeout.
async fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let Some(started) = system::process_start_time(pid) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    while system::process_start_time(pid) == Some(started) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// What the running agent said to `--force`.
enum Handover {
    /// It is shutting down: wait for the lock.
    Granted,
    /// The service is shutting down: start it again with the new settings.
    ToService,
    /// Nothing answers: just start.
    NothingRuns,
    /// It refused (updating, wrong secret) or could not be asked; the message is printed.
    Refused,
}

async fn ask_running_agent_to_stop(storage: &StateManager, new_args: Vec<String>) -> Handover {
    // Asked before the request: once stopping, the service manager no longer names the PID.
    let service_pid = running_service_pid(storage);
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
            if service_pid.is_some() && answer.pid == service_pid {
                tracing::info!(old_pid = ?answer.pid, "--force acknowledged by the service; it will be started again");
                return Handover::ToService;
            }
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

/// `--force` against the service: once it has stopped, the new settings are saved and the
/// service manager starts it again with the other options as start arguments, so it keeps
/// running as the service (as LocalSystem) instead of this console process taking over.
fn restart_service_with(storage: &StateManager, cli: &Cli, force_args: &[String]) -> Result<u8> {
    let (_, stopped) = service::wait_for(FORCE_LOCK_TIMEOUT, |s| s.state == ServiceState::Stopped)?;
    if !stopped {
        eprintln!(
            "cms_agent: --force: service {SERVICE_NAME} did not stop within {} s",
            FORCE_LOCK_TIMEOUT.as_secs()
        );
        return Ok(EXIT_LOCK_HELD);
    }
    if !save_settings_first(storage, cli)? {
        return Ok(EXIT_LOCK_HELD);
    }
    let start_args = service_start_args(force_args);
    service::start(&start_args)?;
    let (status, running) = service::wait_for(SERVICE_START_TIMEOUT, |s| {
        s.state == ServiceState::Running && s.pid.is_some()
    })?;
    let Some(pid) = status.and_then(|s| s.pid).filter(|_| running) else {
        bail!(
            "service {SERVICE_NAME} did not run again within {} s: {status:?}",
            SERVICE_START_TIMEOUT.as_secs()
        );
    };
    tracing::info!(
        pid,
        start_args = start_args.len(),
        "--force: the service runs again"
    );
    println!("--force: service {SERVICE_NAME} runs again with the new settings (pid {pid})");
    Ok(0)
}

/// The `--force` options as start arguments: all but `--data-dir`, which the service's command
/// line has already.
fn service_start_args(force_args: &[String]) -> Vec<OsString> {
    let mut args = Vec::new();
    let mut words = force_args.iter();
    while let Some(word) = words.next() {
        if word == "--data-dir" {
            words.next();
        } else if !word.starts_with("--data-dir=") {
            args.push(OsString::from(word));
        }
    }
    args
}

/// Saves what the command line changes for good: the server (a new one forgets the identity
/// and its enrollment token; the same server spelled differently keeps them), the enrollment
/// token (kept for a later re-enrollment), `--ca-cert` and `--proxy`.
fn save_settings(config: &mut ConfigManager, cli: &Cli) -> Result<()> {
    if !cli.server.is_empty() {
        ServerList::parse(&cli.server)?;
        config.update(|c| c.set_servers(&cli.server))?;
    }
    if let Some(token) = &cli.enrollment_token {
        config.update(|c| c.enrollment_token = Some(EnrollmentToken::new(token.clone())))?;
    }
    apply_network_settings(config, cli)
}

/// Saves the settings, requires a server, and records the version at first start.
fn apply_command_line(config: &mut ConfigManager, cli: &Cli) -> Result<()> {
    save_settings(config, cli)?;
    if config.config().server_url.is_none() {
        return Err(AgentError::NoServer.into()); // checked before the version is written
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
