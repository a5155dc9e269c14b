//! Linux: the systemd unit `cmsagent.service` (the unit file is root's autostart entry, written
//! by `system::register_autostart`), driven through `systemctl`.

use std::ffi::OsString;
use std::io;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Recovery, ServiceBody, ServiceExit, ServiceSession, ServiceState, ServiceStatus, StartOutcome,
    StopOutcome, StopRequest,
};
use crate::system::SystemError;

pub const SERVICE_NAME: &str = "cmsagent.service";
/// Set by systemd (232 and newer) in the environment of every process of a unit.
const INVOCATION_ID: &str = "INVOCATION_ID";
const HINT: &str = "run as root: only root manages system units";

/// `systemctl ARGS`' standard output; `Ok(None)` when there is no systemd to ask (no
/// `systemctl`, or a system not booted with systemd).
fn systemctl(args: &[&str]) -> Result<Option<String>, SystemError> {
    let what = || format!("systemctl {}", args.join(" "));
    let out = match Command::new("systemctl").args(args).output() {
        Ok(out) => out,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(SystemError::from_io(what(), err, HINT)),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("not been booted with systemd")
        || stderr.contains("Failed to connect to bus")
    {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(SystemError::Os {
            what: what(),
            source: io::Error::other(format!("{}: {}", out.status, stderr.trim())),
        });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn property<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
}

/// Reads `systemctl show`'s `LoadState`, `ActiveState`, `MainPID` and `ExecMainStatus`.
fn parse_show(text: &str) -> Option<ServiceStatus> {
    if property(text, "LoadState").is_none_or(|s| s == "not-found") {
        return None;
    }
    let state = match property(text, "ActiveState").unwrap_or("inactive") {
        "active" | "reloading" => ServiceState::Running,
        "activating" => ServiceState::StartPending,
        "deactivating" => ServiceState::StopPending,
        "inactive" | "failed" => ServiceState::Stopped,
        _ => ServiceState::Other,
    };
    let number = |name| property(text, name).and_then(|v| v.parse::<u32>().ok());
    Some(ServiceStatus {
        state,
        pid: number("MainPID").filter(|pid| *pid != 0),
        exit_code: number("ExecMainStatus").unwrap_or(0),
    })
}

pub fn query(name: &str) -> Result<Option<ServiceStatus>, SystemError> {
    let shown = systemctl(&[
        "show",
        "--property=LoadState,ActiveState,MainPID,ExecMainStatus",
        name,
    ])?;
    Ok(shown.as_deref().and_then(parse_show))
}

/// systemd units take no start arguments: `args` are dropped with a warning (the settings that
/// last are in config.json; the run-only ones do not reach the unit).
pub fn start(name: &str, args: &[OsString]) -> Result<StartOutcome, SystemError> {
    if !args.is_empty() {
        tracing::warn!(
            service = name,
            dropped = args.len(),
            "a systemd unit takes no start arguments; starting it without them"
        );
    }
    match query(name)? {
        None => Err(SystemError::NotFound {
            what: format!("systemd unit {name} (install it with --enable-autostart as root)"),
        }),
        Some(status) if status.state == ServiceState::Running => Ok(StartOutcome::AlreadyRunning),
        Some(_) => {
            systemctl(&["start", name])?;
            tracing::info!(service = name, "service started");
            Ok(StartOutcome::Started)
        }
    }
}

pub fn stop(name: &str, timeout: Duration) -> Result<StopOutcome, SystemError> {
    let Some(before) = query(name)? else {
        return Ok(StopOutcome::NotInstalled);
    };
    if before.state == ServiceState::Stopped {
        return Ok(StopOutcome::WasStopped);
    }
    // Also cancels a restart systemd has scheduled after a failure.
    systemctl(&["stop", "--no-block", name])?;
    let deadline = Instant::now() + timeout;
    while query(name)?.is_some_and(|s| s.state != ServiceState::Stopped) {
        if Instant::now() >= deadline {
            return Ok(StopOutcome::TimedOut { pid: before.pid });
        }
        std::thread::sleep(super::POLL);
    }
    Ok(StopOutcome::Stopped)
}

/// systemd keeps `Restart=on-failure` in the unit file, and `systemctl stop` (the updater's
/// first step of a rollback) cancels a restart it scheduled, so there is nothing to switch.
pub fn set_restart_on_failure(name: &str, _enabled: bool) -> Result<Recovery, SystemError> {
    recovery(name)
}

pub fn recovery(name: &str) -> Result<Recovery, SystemError> {
    let shown = systemctl(&["show", "--property=Restart,RestartUSec", name])?;
    let Some(text) = shown else {
        return Ok(Recovery::Unsupported("no systemd on this machine".into()));
    };
    Ok(parse_recovery(&text))
}

fn parse_recovery(text: &str) -> Recovery {
    match property(text, "Restart") {
        Some("on-failure" | "always" | "on-abnormal") => {
            let delay = property(text, "RestartUSec")
                .and_then(|v| v.strip_suffix('s'))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            Recovery::Restart(vec![Duration::from_secs(delay)])
        }
        _ => Recovery::Suspended,
    }
}

/// systemd needs no dispatcher: the unit's process is the service. Its stop request is
/// SIGTERM, which the agent watches like in a console, so the session's stop never fires here.
pub fn run(name: &str, body: ServiceBody) -> Result<ServiceExit, SystemError> {
    if std::env::var_os(INVOCATION_ID).is_none() {
        return Err(SystemError::NotAService(format!(
            "--service is the command line of the systemd unit {name}; start it with \
             `systemctl start {name}`, or run without --service"
        )));
    }
    let session = ServiceSession::new(Vec::new(), Arc::new(StopRequest::default()));
    Ok(body(session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_is_read_into_a_status() {
        let running = "LoadState=loaded\nActiveState=active\nMainPID=4242\nExecMainStatus=0\n";
        assert_eq!(
            parse_show(running),
            Some(ServiceStatus {
                state: ServiceState::Running,
                pid: Some(4242),
                exit_code: 0
            })
        );
        let failed = "LoadState=loaded\nActiveState=failed\nMainPID=0\nExecMainStatus=2\n";
        assert_eq!(
            parse_show(failed),
            Some(ServiceStatus {
                state: ServiceState::Stopped,
                pid: None,
                exit_code: 2
            })
        );
        assert_eq!(
            parse_show("LoadState=not-found\nActiveState=inactive\n"),
            None
        );
    }

    #[test]
    fn the_units_restart_setting_is_its_recovery() {
        assert_eq!(
            parse_recovery("Restart=on-failure\nRestartUSec=10s\n"),
            Recovery::Restart(vec![Duration::from_secs(10)])
        );
        assert_eq!(
            parse_recovery("Restart=no\nRestartUSec=100ms\n"),
            Recovery::Suspended
        );
    }

    #[test]
    fn a_console_is_not_a_service() {
        if std::env::var_os(INVOCATION_ID).is_none() {
            let err = run(SERVICE_NAME, Box::new(|_| ServiceExit::Clean)).unwrap_err();
            assert!(matches!(err, SystemError::NotAService(_)), "{err}");
        }
    }
}
