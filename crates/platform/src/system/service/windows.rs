//! Windows: the service `CMSAgent` through the Service Control Manager, with Mullvad's
//! `windows-service` (safe wrappers over the SCM API; this file has no `unsafe`).

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use windows_service::service::{
    Service, ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};
use windows_sys::Win32::Foundation::{
    ERROR_FAILED_SERVICE_CONTROLLER_CONNECT, ERROR_INVALID_LEVEL, ERROR_SERVICE_ALREADY_RUNNING,
    ERROR_SERVICE_CANNOT_ACCEPT_CTRL, ERROR_SERVICE_DOES_NOT_EXIST, ERROR_SERVICE_NOT_ACTIVE,
    WIN32_ERROR,
};

use super::{
    Installed, Recovery, ServiceBody, ServiceExit, ServiceSession, ServiceState, ServiceStatus,
    StartOutcome, StopOutcome, StopRequest,
};
use crate::system::SystemError;

pub const SERVICE_NAME: &str = "CMSAgent";
/// What services.msc shows.
const DISPLAY_NAME: &str = "CMS Agent";
const DESCRIPTION: &str = "Reports this machine to its CMS backend and keeps the CMS Agent up to date. Stopping it stops the agent until the next start of Windows.";
/// Restart delays after the first, second and every later failure.
const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(60),
];
/// A day without failure starts the count again.
const FAILURE_RESET: Duration = Duration::from_secs(24 * 60 * 60);
/// How long Windows waits for the agent at shutdown (it needs about 10 s at most).
const PRESHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The wait hint reported with `STOP_PENDING`: the agent's shutdown joins its tasks for at
/// most 10 s.
const STOP_WAIT_HINT: Duration = Duration::from_secs(30);
/// Advice when the SCM refuses.
const HINT: &str = "run elevated (as administrator): only administrators manage services";

/// The SCM's error code inside a `windows-service` error.
fn win32_code(err: &windows_service::Error) -> Option<WIN32_ERROR> {
    match err {
        windows_service::Error::Winapi(io) => io.raw_os_error().map(|c| c as WIN32_ERROR),
        _ => None,
    }
}

fn scm_error(what: impl Into<String>, err: windows_service::Error) -> SystemError {
    match err {
        windows_service::Error::Winapi(io) => SystemError::from_io(what, io, HINT),
        other => SystemError::Invalid {
            what: what.into(),
            reason: other.to_string(),
        },
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, SystemError> {
    ServiceManager::local_computer(None::<&str>, access)
        .map_err(|e| scm_error("connecting to the Service Control Manager", e))
}

/// Opens the service; `None` when it is not installed.
fn open(name: &str, access: ServiceAccess) -> Result<Option<Service>, SystemError> {
    match manager(ServiceManagerAccess::CONNECT)?.open_service(name, access) {
        Ok(service) => Ok(Some(service)),
        Err(err) if win32_code(&err) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => Ok(None),
        Err(err) => Err(scm_error(format!("opening service {name}"), err)),
    }
}

fn service_info(name: &str, exe: &Path, args: &[OsString]) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.to_path_buf(),
        launch_arguments: args.to_vec(),
        dependencies: Vec::new(),
        account_name: None, // LocalSystem
        account_password: None,
    }
}

pub fn install(name: &str, exe: &Path, args: &[OsString]) -> Result<Installed, SystemError> {
    let info = service_info(name, exe, args);
    let access = ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::QUERY_CONFIG
        | ServiceAccess::QUERY_STATUS
        | ServiceAccess::START;
    let service = match open(name, access)? {
        Some(service) => {
            service
                .change_config(&info)
                .map_err(|e| scm_error(format!("reconfiguring service {name}"), e))?;
            service
        }
        None => manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?
            .create_service(&info, access)
            .map_err(|e| scm_error(format!("creating service {name}"), e))?,
    };
    service
        .set_description(DESCRIPTION)
        .map_err(|e| scm_error(format!("describing service {name}"), e))?;
    if let Err(err) = service.set_preshutdown_timeout(PRESHUTDOWN_TIMEOUT) {
        tracing::warn!(service = name, error = %err, "cannot set the preshutdown timeout; Windows' default applies");
    }
    let recovery = apply_recovery(&service, name, true)?;
    let command = service
        .query_config()
        .map(|c| c.executable_path.display().to_string())
        .unwrap_or_else(|_| exe.display().to_string());
    tracing::info!(service = name, command = %command, recovery = %recovery, "service installed");
    Ok(Installed {
        place: format!(
            "service {name} ({DISPLAY_NAME}, LocalSystem, automatic start) running {command}"
        ),
        recovery,
    })
}

/// Restart after each of [`RESTART_DELAYS`], also after a clean exit with a non-zero code
/// (`FailureActionsOnNonCrashFailures`); or no action at all.
fn apply_recovery(service: &Service, name: &str, enabled: bool) -> Result<Recovery, SystemError> {
    let actions = RESTART_DELAYS
        .iter()
        .map(|delay| ServiceAction {
            action_type: if enabled {
                ServiceActionType::Restart
            } else {
                ServiceActionType::None
            },
            delay: if enabled { *delay } else { Duration::ZERO },
        })
        .collect();
    let failure_actions = ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(FAILURE_RESET),
        reboot_msg: None,
        command: None,
        actions: Some(actions),
    };
    let what = || format!("setting the recovery actions of service {name}");
    service
        .update_failure_actions(failure_actions)
        .map_err(|e| scm_error(what(), e))?;
    match service.set_failure_actions_on_non_crash_failures(enabled) {
        Ok(()) if enabled => Ok(Recovery::Restart(RESTART_DELAYS.to_vec())),
        Ok(()) => Ok(Recovery::Suspended),
        Err(err) if win32_code(&err) == Some(ERROR_INVALID_LEVEL) => {
            let why = unsupported("FailureActionsOnNonCrashFailures");
            tracing::warn!(service = name, reason = %why, "recovery actions not supported");
            Ok(Recovery::Unsupported(why))
        }
        Err(err) => Err(scm_error(what(), err)),
    }
}

fn unsupported(level: &str) -> String {
    format!("ChangeServiceConfig2/QueryServiceConfig2({level}) answered ERROR_INVALID_LEVEL")
}

pub fn delete(name: &str) -> Result<Option<String>, SystemError> {
    let Some(service) = open(name, ServiceAccess::DELETE)? else {
        return Ok(None);
    };
    service
        .delete()
        .map_err(|e| scm_error(format!("deleting service {name}"), e))?;
    tracing::info!(service = name, "service deleted");
    Ok(Some(format!("service {name}")))
}

fn status_of(service: &Service, name: &str) -> Result<ServiceStatus, SystemError> {
    let status = service
        .query_status()
        .map_err(|e| scm_error(format!("querying service {name}"), e))?;
    use windows_service::service::ServiceState as Scm;
    let state = match status.current_state {
        Scm::Stopped => ServiceState::Stopped,
        Scm::StartPending => ServiceState::StartPending,
        Scm::StopPending => ServiceState::StopPending,
        Scm::Running => ServiceState::Running,
        _ => ServiceState::Other,
    };
    let exit_code = match status.exit_code {
        ServiceExitCode::Win32(code) | ServiceExitCode::ServiceSpecific(code) => code,
    };
    Ok(ServiceStatus {
        state,
        pid: status.process_id.filter(|pid| *pid != 0),
        exit_code,
    })
}

pub fn query(name: &str) -> Result<Option<ServiceStatus>, SystemError> {
    match open(name, ServiceAccess::QUERY_STATUS)? {
        Some(service) => status_of(&service, name).map(Some),
        None => Ok(None),
    }
}

pub fn start(name: &str, args: &[OsString]) -> Result<StartOutcome, SystemError> {
    let service = open(name, ServiceAccess::START)?.ok_or_else(|| SystemError::NotFound {
        what: format!("service {name} (install it with --enable-autostart)"),
    })?;
    match service.start(args) {
        Ok(()) => {
            tracing::info!(service = name, args = args.len(), "service started");
            Ok(StartOutcome::Started)
        }
        Err(err) if win32_code(&err) == Some(ERROR_SERVICE_ALREADY_RUNNING) => {
            Ok(StartOutcome::AlreadyRunning)
        }
        Err(err) => Err(scm_error(format!("starting service {name}"), err)),
    }
}

pub fn stop(name: &str, timeout: Duration) -> Result<StopOutcome, SystemError> {
    let Some(service) = open(name, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)? else {
        return Ok(StopOutcome::NotInstalled);
    };
    let before = status_of(&service, name)?;
    if before.state == ServiceState::Stopped {
        return Ok(StopOutcome::WasStopped);
    }
    match service.stop() {
        Ok(_) => tracing::info!(service = name, pid = ?before.pid, "service asked to stop"),
        // Already stopping (or still starting): waiting is all there is to do.
        Err(err)
            if matches!(
                win32_code(&err),
                Some(ERROR_SERVICE_CANNOT_ACCEPT_CTRL | ERROR_SERVICE_NOT_ACTIVE)
            ) => {}
        Err(err) => return Err(scm_error(format!("stopping service {name}"), err)),
    }
    let deadline = Instant::now() + timeout;
    while status_of(&service, name)?.state != ServiceState::Stopped {
        if Instant::now() >= deadline {
            tracing::warn!(
                service = name,
                timeout_secs = timeout.as_secs(),
                "service did not stop in time"
            );
            return Ok(StopOutcome::TimedOut { pid: before.pid });
        }
        std::thread::sleep(super::POLL);
    }
    tracing::info!(service = name, "service stopped");
    Ok(StopOutcome::Stopped)
}

pub fn set_restart_on_failure(name: &str, enabled: bool) -> Result<Recovery, SystemError> {
    let service =
        open(name, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)?.ok_or_else(|| {
            SystemError::NotFound {
                what: format!("service {name}"),
            }
        })?;
    let recovery = apply_recovery(&service, name, enabled)?;
    tracing::info!(service = name, recovery = %recovery, "recovery actions set");
    Ok(recovery)
}

pub fn recovery(name: &str) -> Result<Recovery, SystemError> {
    let service =
        open(name, ServiceAccess::QUERY_CONFIG)?.ok_or_else(|| SystemError::NotFound {
            what: format!("service {name}"),
        })?;
    let what = || format!("reading the recovery actions of service {name}");
    let actions = match service.get_failure_actions() {
        Ok(actions) => actions,
        Err(err) if win32_code(&err) == Some(ERROR_INVALID_LEVEL) => {
            return Ok(Recovery::Unsupported(unsupported("FAILURE_ACTIONS")));
        }
        Err(err) => return Err(scm_error(what(), err)),
    };
    let non_crash = match service.get_failure_actions_on_non_crash_failures() {
        Ok(flag) => flag,
        Err(err) if win32_code(&err) == Some(ERROR_INVALID_LEVEL) => {
            return Ok(Recovery::Unsupported(unsupported(
                "FailureActionsOnNonCrashFailures",
            )));
        }
        Err(err) => return Err(scm_error(what(), err)),
    };
    let restarts: Vec<Duration> = actions
        .actions
        .unwrap_or_default()
        .iter()
        .filter(|a| a.action_type == ServiceActionType::Restart)
        .map(|a| a.delay)
        .collect();
    Ok(match (restarts.is_empty(), non_crash) {
        (false, true) => Recovery::Restart(restarts),
        (true, _) => Recovery::Suspended,
        (false, false) => Recovery::Unsupported(
            "restarts only after a crash: FailureActionsOnNonCrashFailures is off".into(),
        ),
    })
}

// --- Running as the service: the SCM's dispatcher calls `service_main` on its own thread. ---

/// The body [`run`] hands to `service_main`, and what it returned.
struct Dispatch {
    name: String,
    body: Option<ServiceBody>,
    outcome: Option<Result<ServiceExit, SystemError>>,
}

static DISPATCH: Mutex<Option<Dispatch>> = Mutex::new(None);

fn dispatch() -> std::sync::MutexGuard<'static, Option<Dispatch>> {
    DISPATCH.lock().unwrap_or_else(|p| p.into_inner())
}

define_windows_service!(ffi_service_main, service_main);

pub fn run(name: &str, body: ServiceBody) -> Result<ServiceExit, SystemError> {
    *dispatch() = Some(Dispatch {
        name: name.to_owned(),
        body: Some(body),
        outcome: None,
    });
    let started = service_dispatcher::start(name, ffi_service_main);
    let outcome = dispatch().take().and_then(|d| d.outcome);
    match started {
        Err(err) if win32_code(&err) == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) => {
            Err(SystemError::NotAService(format!(
                "--service is the command line of the Windows service {name}; start it with \
                 `sc start {name}`, or run without --service in a console"
            )))
        }
        Err(err) => Err(scm_error("connecting to the service dispatcher", err)),
        Ok(()) => outcome.unwrap_or_else(|| {
            Err(SystemError::Os {
                what: format!("running service {name}"),
                source: io::Error::other("the SCM never called the service's main function"),
            })
        }),
    }
}

/// Called by the SCM (through `ffi_service_main`) with the start arguments.
fn service_main(arguments: Vec<OsString>) {
    let taken = dispatch()
        .as_mut()
        .and_then(|d| Some((d.name.clone(), d.body.take()?)));
    let Some((name, body)) = taken else {
        return;
    };
    let outcome = serve(&name, arguments, body);
    if let Err(err) = &outcome {
        tracing::error!(service = %name, error = %err, "cannot run as a service");
    }
    if let Some(dispatch) = dispatch().as_mut() {
        dispatch.outcome = Some(outcome);
    }
}

/// Registers the control handler, reports `RUNNING`, runs `body`, reports `STOPPED`.
fn serve(
    name: &str,
    arguments: Vec<OsString>,
    body: ServiceBody,
) -> Result<ServiceExit, SystemError> {
    let stop = Arc::new(StopRequest::default());
    let handle = Arc::new(OnceLock::new());
    let handler = {
        let (stop, handle) = (stop.clone(), handle.clone());
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
                tracing::info!(control = ?control, "stop requested by the service manager");
                if let Some(handle) = handle.get() {
                    report(handle, Report::StopPending);
                }
                stop.trigger();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let registered = service_control_handler::register(name, handler)
        .map_err(|e| scm_error("registering the service control handler", e))?;
    let handle = handle.get_or_init(|| registered);
    report(handle, Report::Running);
    tracing::info!(
        service = name,
        pid = std::process::id(),
        "running as a service"
    );
    // The first argument is the service's own name.
    let arguments = arguments.into_iter().skip(1).collect();
    let exit = body(ServiceSession::new(arguments, stop));
    report(handle, Report::Stopped(exit));
    Ok(exit)
}

/// A status the service reports to the SCM.
#[derive(Debug, Clone, Copy)]
enum Report {
    Running,
    StopPending,
    Stopped(ServiceExit),
}

fn report(handle: &service_control_handler::ServiceStatusHandle, report: Report) {
    use windows_service::service::{ServiceState as Scm, ServiceStatus as Status};
    let (current_state, controls_accepted, exit_code, checkpoint, wait_hint) = match report {
        Report::Running => (
            Scm::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN,
            ServiceExitCode::NO_ERROR,
            0,
            Duration::ZERO,
        ),
        Report::StopPending => (
            Scm::StopPending,
            ServiceControlAccept::empty(),
            ServiceExitCode::NO_ERROR,
            1,
            STOP_WAIT_HINT,
        ),
        Report::Stopped(exit) => (
            Scm::Stopped,
            ServiceControlAccept::empty(),
            match exit {
                ServiceExit::Clean => ServiceExitCode::NO_ERROR,
                ServiceExit::Failed(code) => ServiceExitCode::ServiceSpecific(code),
            },
            0,
            Duration::ZERO,
        ),
    };
    let status = Status {
        service_type: ServiceType::OWN_PROCESS,
        current_state,
        controls_accepted,
        exit_code,
        checkpoint,
        wait_hint,
        process_id: None,
    };
    match handle.set_service_status(status) {
        Ok(()) => tracing::info!(status = ?report, "service status reported"),
        Err(err) => {
            tracing::warn!(status = ?report, error = %err, "cannot report the service status")
        }
    }
}

#[cfg(test)]
mod tests {
    //! Run under Wine (`cargo xtask wine-test`), whose SCM is real enough to install, query,
    //! start (the exe is not a service, so it fails), reconfigure and delete a service; Wine
    //! does not keep recovery actions, which [`Recovery::Unsupported`] says.

    use super::*;

    const TEST_SERVICE: &str = "CMSAgentUnitTest";

    #[test]
    fn a_service_is_installed_reconfigured_queried_and_deleted() {
        let exe = Path::new(r"C:\Program Files\CMS Agent\cms_agent.exe");
        let args = [
            OsString::from("--service"),
            OsString::from("--data-dir"),
            OsString::from(r"C:\data dir"),
        ];
        let installed = install(TEST_SERVICE, exe, &args).unwrap();
        assert!(
            installed.place.contains(
                r#""C:\Program Files\CMS Agent\cms_agent.exe" --service --data-dir "C:\data dir""#
            ),
            "{}",
            installed.place
        );
        let again = install(TEST_SERVICE, exe, &args[..1]).unwrap();
        assert!(
            !again.place.contains("--data-dir"),
            "reconfigured: {}",
            again.place
        );
        let status = query(TEST_SERVICE).unwrap().unwrap();
        assert_eq!(status.state, ServiceState::Stopped);
        assert_eq!(status.pid, None);
        match recovery(TEST_SERVICE).unwrap() {
            Recovery::Restart(delays) => assert_eq!(delays, RESTART_DELAYS.to_vec()),
            Recovery::Unsupported(why) => {
                assert!(
                    crate::system::running_under_wine(),
                    "only Wine lacks recovery: {why}"
                );
                assert_eq!(
                    installed.recovery,
                    Recovery::Unsupported(unsupported("FailureActionsOnNonCrashFailures"))
                );
            }
            Recovery::Suspended => panic!("recovery suspended right after install"),
        }
        assert_eq!(
            stop(TEST_SERVICE, Duration::from_secs(5)).unwrap(),
            StopOutcome::WasStopped
        );
        assert_eq!(
            delete(TEST_SERVICE).unwrap(),
            Some(format!("service {TEST_SERVICE}"))
        );
        let gone = query(TEST_SERVICE).unwrap();
        assert!(
            gone.is_none() || crate::system::running_under_wine(),
            "{gone:?}"
        );
    }

    #[test]
    fn a_missing_service_is_none_not_an_error() {
        let name = "CMSAgentNeverInstalled";
        assert_eq!(query(name).unwrap(), None);
        assert_eq!(
            stop(name, Duration::from_secs(1)).unwrap(),
            StopOutcome::NotInstalled
        );
        assert_eq!(delete(name).unwrap(), None);
        assert!(matches!(
            start(name, &[]),
            Err(SystemError::NotFound { .. })
        ));
    }

    #[test]
    fn a_console_process_is_not_a_service() {
        let err = run("CMSAgentUnitTest", Box::new(|_| ServiceExit::Clean)).unwrap_err();
        assert!(matches!(err, SystemError::NotAService(_)), "{err}");
    }
}
