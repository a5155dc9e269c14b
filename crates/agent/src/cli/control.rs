//! The client side of the local control channel: `--status`, `--stop` and `--force` ask the
//! running agent over IPC and wait for its answer (and, for `--stop`/`--force`, for its exit or
//! the service's restart). It prints what the user sees and returns exit codes; it never stops
//! an agent other than by asking it.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cms_platform::agent_args;
use cms_protocol::{IpcStatus, LockRecord};

use crate::core::metered::MeteredMode;
use crate::core::storage::StateManager;
use crate::ipc::{self, IpcEndpoint, IpcError};
use crate::system::service::{self, SERVICE_NAME, ServiceState};
use crate::system::{self, IpcSecret, SecretAction};

use super::autostart::save_settings_first;
use super::{Args, EXIT_LOCK_HELD, EXIT_NOT_RUNNING, FORCE_LOCK_TIMEOUT, STOP_TIMEOUT};

/// How long `--force` waits for the service to run again.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The endpoint and the stored secret of the agent that owns `storage`; no secret means no
/// agent has ever served IPC there.
fn ipc_target(storage: &StateManager) -> Result<(IpcEndpoint, Option<IpcSecret>)> {
    let path = storage.storage_path();
    let endpoint = IpcEndpoint::for_agent(path, storage.machine_wide())?;
    let secret = system::manage_ipc_secret(SecretAction::Get, storage.secret_scope(), path)?;
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
pub(super) async fn print_status(storage: &StateManager) -> Result<u8> {
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
            let saved = saved_config(storage);
            print_download_limit(saved.as_ref());
            print_metered(saved.as_ref()).await;
            if system::updates_left_to_msi() {
                println!("updates: left to the MSI (installed by cms_agent-X.Y.Z-x64.msi)");
            }
            super::policy::print();
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

/// config.json as saved, for `--status` (read only: the running agent owns the file, and
/// applies what it holds to each offer); `None` when it cannot be read.
fn saved_config(storage: &StateManager) -> Option<serde_json::Value> {
    cms_platform::fs::read_no_follow(&storage.config_path())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
}

/// `--status`'s line on `--download-limit`, from config.json as saved.
fn print_download_limit(saved: Option<&serde_json::Value>) {
    match saved {
        None => println!("download limit: unknown (config.json cannot be read)"),
        Some(config) => match config.get("download_limit_kbps").and_then(|v| v.as_u64()) {
            Some(kbps) => println!("download limit: {kbps} KiB/s"),
            None => println!("download limit: none"),
        },
    }
}

/// `--status`'s line on `--metered`, from config.json as saved (absent: `auto`), with what the
/// OS says about the connection now: `metered: auto (detected: no)`.
async fn print_metered(saved: Option<&serde_json::Value>) {
    let mode = saved
        .and_then(|config| config.get("metered"))
        .and_then(|value| value.as_str())
        .map_or(Ok(MeteredMode::Auto), str::parse);
    let detected = cms_platform::network::detect_metered().await;
    match mode {
        Ok(mode) => println!("metered: {mode} (detected: {detected})"),
        Err(error) => println!("metered: unknown ({error}; detected: {detected})"),
    }
}

/// `--stop`: the running agent shuts down gracefully (a service ends `STOPPED` with exit code
/// 0, so it is not restarted); exit 0 once its process is gone, 1 if it refused (updating) or
/// did not stop in time, 3 if none runs.
pub(super) async fn stop_running_agent(storage: &StateManager) -> Result<u8> {
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
pub(super) enum Handover {
    /// It is shutting down: wait for the lock.
    Granted,
    /// The service is shutting down: start it again with the new settings.
    ToService,
    /// Nothing answers: just start.
    NothingRuns,
    /// It refused (updating, wrong secret) or could not be asked; the message is printed.
    Refused,
}

pub(super) async fn ask_running_agent_to_stop(storage: &StateManager) -> Handover {
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
    match ipc::send_force_command(&endpoint, &secret).await {
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
pub(super) fn restart_service_with(
    storage: &StateManager,
    cli: &Args,
    force_args: &[String],
) -> Result<u8> {
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
/// line has already, and the enrollment token and the proxy (with its password), which were
/// saved in config.json first and never travel on a command line.
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
    let (args, _token_in_config) = agent_args::split_enrollment_token(args);
    let (args, _proxy_in_config) = agent_args::take_option(args, agent_args::PROXY_ARG);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_started_with_the_force_options_but_its_own_data_dir_and_no_secret() {
        let force_args = [
            "--data-dir",
            "elsewhere",
            "--server",
            "https://a",
            "--data-dir=there",
            "--enrollment-token",
            "secret-token",
            "--proxy",
            "http://user:password@proxy:3128",
            "--status-interval",
            "5",
        ]
        .map(String::from);
        let expected = ["--server", "https://a", "--status-interval", "5"].map(OsString::from);
        assert_eq!(service_start_args(&force_args), expected);
    }
}
