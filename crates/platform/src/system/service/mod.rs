//! The per-machine agent as an OS service, behind one API: the Windows service `CMSAgent`
//! under the Service Control Manager (`windows.rs`, Mullvad's `windows-service`), or the systemd
//! unit `cmsagent.service` on Linux (`unix.rs`, through `systemctl`).
//!
//! What is here: installing the Windows service with its recovery actions (the Linux unit file
//! is written by `system::register_autostart`), asking the service manager for the service's
//! state and PID, starting and stopping it, suspending its restart-on-failure while the updater
//! owns it, and running a process as the service ([`run`]: the SCM's dispatcher and control
//! handler). It must never decide what a stop means for the agent (the body given to [`run`]
//! does), kill a process, or hold agent policy such as how long a caller is willing to wait.

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
use windows as imp;

use std::ffi::OsString;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::SystemError;

/// The service's name for the service manager: `CMSAgent` (Windows), `cmsagent.service` (Linux).
pub const SERVICE_NAME: &str = imp::SERVICE_NAME;

/// How often a wait for a service state asks the service manager.
const POLL: Duration = Duration::from_millis(100);

/// Where a service is in its life, as the service manager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Not running (never started, stopped, or failed).
    Stopped,
    /// Started, not yet reported running.
    StartPending,
    /// Asked to stop, not yet stopped.
    StopPending,
    /// Running.
    Running,
    /// Paused or between pause states (the agent never pauses).
    Other,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::Stopped => "STOPPED",
            ServiceState::StartPending => "START_PENDING",
            ServiceState::StopPending => "STOP_PENDING",
            ServiceState::Running => "RUNNING",
            ServiceState::Other => "PAUSED",
        })
    }
}

/// What the service manager says about the service now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Its state.
    pub state: ServiceState,
    /// The PID of its process while it runs.
    pub pid: Option<u32>,
    /// The exit code it last stopped with (service-specific codes on Windows), 0 when clean.
    pub exit_code: u32,
}

/// How [`stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The service is not installed.
    NotInstalled,
    /// It was not running.
    WasStopped,
    /// It was asked to stop and reached `STOPPED`.
    Stopped,
    /// It was asked to stop and is still running after the timeout; `pid` is its process.
    TimedOut {
        /// The service's process, when the service manager named it before the stop.
        pid: Option<u32>,
    },
}

/// How [`start`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// The service manager started it.
    Started,
    /// It was running already.
    AlreadyRunning,
}

/// Whether the service manager restarts the service after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Configured: restart after each delay in turn (the last one repeats), including after a
    /// clean exit with a non-zero exit code, the counter reset after a day without failure.
    Restart(Vec<Duration>),
    /// Configured: no action after a failure (suspended while the updater owns the service).
    Suspended,
    /// This service manager does not take recovery actions; the text says what it answered
    /// (Wine's SCM accepts them without storing them and cannot read them back).
    Unsupported(String),
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recovery::Restart(delays) => {
                let delays: Vec<String> = delays
                    .iter()
                    .map(|d| format!("{} s", d.as_secs()))
                    .collect();
                write!(
                    f,
                    "restart after a failure (crash or non-zero exit) after {}",
                    delays.join(", then ")
                )
            }
            Recovery::Suspended => f.write_str("no action after a failure (suspended)"),
            Recovery::Unsupported(why) => {
                write!(f, "not supported by this service manager: {why}")
            }
        }
    }
}

/// What [`install`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The service and its command line, for the operator.
    pub place: String,
    /// Its recovery actions as the service manager took them.
    pub recovery: Recovery,
}

/// Installs (or reconfigures) the service to run `exe args...` as LocalSystem with automatic
/// start, a description and recovery actions that restart it after any failure. Windows only:
/// on Linux the unit file is the autostart entry (`system::register_autostart`).
#[cfg(windows)]
pub(crate) fn install(exe: &std::path::Path, args: &[OsString]) -> Result<Installed, SystemError> {
    imp::install(SERVICE_NAME, exe, args)
}

/// Marks the service for deletion (the SCM removes it once it has stopped); `Ok(None)` when it
/// was not installed. Windows only, like [`install`].
#[cfg(windows)]
pub(crate) fn delete() -> Result<Option<String>, SystemError> {
    imp::delete(SERVICE_NAME)
}

/// The service's state and PID; `Ok(None)` when it is not installed (or, on Linux, when
/// there is no systemd to ask).
pub fn query() -> Result<Option<ServiceStatus>, SystemError> {
    imp::query(SERVICE_NAME)
}

/// Asks the service manager to start the service; `args` reach the service's main function
/// (Windows start arguments; systemd units take none, so there they are dropped with a warning).
pub fn start(args: &[OsString]) -> Result<StartOutcome, SystemError> {
    imp::start(SERVICE_NAME, args)
}

/// Asks the service manager to stop the service and waits up to `timeout` for `STOPPED`.
pub fn stop(timeout: Duration) -> Result<StopOutcome, SystemError> {
    imp::stop(SERVICE_NAME, timeout)
}

/// Waits up to `timeout` until `wanted` holds for the service's status; returns the last status
/// seen (`None`: not installed) and whether `wanted` held.
pub fn wait_for(
    timeout: Duration,
    wanted: impl Fn(&ServiceStatus) -> bool,
) -> Result<(Option<ServiceStatus>, bool), SystemError> {
    wait_for_status(timeout, query, wanted)
}

fn wait_for_status(
    timeout: Duration,
    mut status: impl FnMut() -> Result<Option<ServiceStatus>, SystemError>,
    wanted: impl Fn(&ServiceStatus) -> bool,
) -> Result<(Option<ServiceStatus>, bool), SystemError> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = status()?;
        let held = now.as_ref().is_some_and(&wanted);
        if held || now.is_none() || Instant::now() >= deadline {
            return Ok((now, held));
        }
        std::thread::sleep(POLL);
    }
}

/// Turns the service manager's restart-after-failure on (the installed recovery actions) or
/// off; the updater turns it off while it swaps and verifies, so a failing new version is
/// rolled back by the updater alone, never restarted behind its back.
pub fn set_restart_on_failure(enabled: bool) -> Result<Recovery, SystemError> {
    imp::set_restart_on_failure(SERVICE_NAME, enabled)
}

/// The recovery actions as the service manager reports them (QueryServiceConfig2 on Windows).
pub fn recovery() -> Result<Recovery, SystemError> {
    imp::recovery(SERVICE_NAME)
}

/// How the service's main function ends, for the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceExit {
    /// A clean stop (asked to stop, or a hand-over): `STOPPED` with exit code 0, no recovery.
    Clean,
    /// A failure: `STOPPED` with this service-specific code, so the recovery actions fire.
    Failed(u32),
}

/// The service's main function: runs the agent, returns how it ended.
pub type ServiceBody = Box<dyn FnOnce(ServiceSession) -> ServiceExit + Send>;

/// What the service's main function gets from the service manager.
#[derive(Debug)]
pub struct ServiceSession {
    arguments: Vec<OsString>,
    stop: Arc<StopRequest>,
}

impl ServiceSession {
    fn new(arguments: Vec<OsString>, stop: Arc<StopRequest>) -> Self {
        ServiceSession { arguments, stop }
    }

    /// The start arguments (Windows `StartService` arguments, without the service name).
    pub fn arguments(&self) -> &[OsString] {
        &self.arguments
    }

    /// Calls `on_stop` once when the service manager asks the service to stop (stop,
    /// shutdown, preshutdown); at once if it already did.
    pub fn on_stop(&self, on_stop: impl Fn() + Send + Sync + 'static) {
        self.stop.set_handler(Box::new(on_stop));
    }
}

/// A stop request from the service manager, and who to tell about it.
#[derive(Default)]
struct StopRequest {
    inner: Mutex<StopInner>,
}

#[derive(Default)]
struct StopInner {
    requested: bool,
    handler: Option<Box<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for StopRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopRequest").finish_non_exhaustive()
    }
}

impl StopRequest {
    fn lock(&self) -> std::sync::MutexGuard<'_, StopInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the request and tells the handler, if one is set. Only the SCM's control handler
    /// calls it: systemd's stop is SIGTERM, which the agent watches itself.
    #[cfg_attr(not(windows), allow(dead_code))]
    fn trigger(&self) {
        let mut inner = self.lock();
        inner.requested = true;
        if let Some(handler) = &inner.handler {
            handler();
        }
    }

    fn set_handler(&self, handler: Box<dyn Fn() + Send + Sync>) {
        let mut inner = self.lock();
        if inner.requested {
            handler();
        }
        inner.handler = Some(handler);
    }
}

/// Runs `body` as the service: connects to the service manager, reports `RUNNING` before
/// `body` starts (so nothing `body` does, network included, delays the start), turns stop
/// requests into the session's stop callback and reports `STOPPED` with `body`'s exit. Fails
/// with [`SystemError::NotAService`] when the process was not started by the service manager
/// (a console).
pub fn run(body: ServiceBody) -> Result<ServiceExit, SystemError> {
    imp::run(SERVICE_NAME, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_stop_before_the_handler_is_set_is_delivered_when_it_is() {
        let request = Arc::new(StopRequest::default());
        let calls = Arc::new(AtomicUsize::new(0));
        request.trigger();
        let counted = calls.clone();
        ServiceSession::new(Vec::new(), request.clone()).on_stop(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        request.trigger();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "every request reaches it");
    }

    #[test]
    fn a_wait_ends_when_the_state_is_reached_or_the_service_is_gone() {
        let running = ServiceStatus {
            state: ServiceState::Running,
            pid: Some(7),
            exit_code: 0,
        };
        let mut answers = vec![
            Some(running),
            Some(ServiceStatus {
                state: ServiceState::StopPending,
                ..running
            }),
            Some(ServiceStatus {
                state: ServiceState::Stopped,
                pid: None,
                exit_code: 0,
            }),
        ]
        .into_iter();
        let (last, held) = wait_for_status(
            Duration::from_secs(60),
            || Ok(answers.next().flatten()),
            |s| s.state == ServiceState::Stopped,
        )
        .unwrap();
        assert!(held);
        assert_eq!(last.map(|s| s.state), Some(ServiceState::Stopped));
        let (gone, held) = wait_for_status(
            Duration::from_secs(60),
            || Ok(None),
            |s| s.state == ServiceState::Running,
        )
        .unwrap();
        assert_eq!((gone, held), (None, false));
    }

    #[test]
    fn recovery_reads_like_sc_qfailure() {
        let restart = Recovery::Restart(vec![Duration::from_secs(5), Duration::from_secs(60)]);
        assert_eq!(
            restart.to_string(),
            "restart after a failure (crash or non-zero exit) after 5 s, then 60 s"
        );
    }
}
