//! `updater`: replaces the CMS agent with a new version, proves it healthy or rolls back
//! (docs/CONTRACT.md, docs/ARCHITECTURE.md "One self-update, end to end").
//!
//! Flow: check the package again on a handle no one can write through (`package_check`: the
//! length and SHA-256 the agent verified; a mismatch is refused before anything changes), check
//! the install volume's free space, stage the new exe from the package and back up
//! the current one (`swap`) while the old agent shuts down -> wait for it to exit (60 s, then
//! terminate it) -> swap -> start the new agent with the old one's arguments -> verify it
//! (`verify`; when the old agent had a heartbeat accepted by the backend, the new one must too)
//! -> on success remove `.old` and the package (Linux: and unlink itself; on Windows the agent
//! clears `updates/`, the updater too, once this process has exited: no copy of it in a temp
//! folder, no helper process); on failure stop the new agent,
//! restore `.old`, start the old one and exit non-zero. Whenever it gives up before the swap, the
//! old agent is started again and the journal says `aborted` (retried later, not refused). Every
//! phase is written to the update journal first (`journal`), so a kill at any moment leaves a
//! state the next agent start can finish or undo. Everything is logged to
//! `<log-dir>/updater.log`, never the agent's arguments (they may carry the enrollment token,
//! which is handed to the started agent in its environment instead).
//!
//! With `--service-name CMSAgent` (the agent runs as the Windows service, or the systemd unit
//! `cmsagent.service`) the new agent and, after a rollback or a give-up, the old one are started
//! through the service manager, so they run as the service (as LocalSystem; the enrollment
//! token is in config.json, never a start argument), and the service's restart-after-failure is
//! suspended from the journal's start to the end, so the service manager never restarts a
//! failing new version behind the updater's back.
//!
//! Exit codes: 0 updated and verified; 1 rolled back; 2 nothing changed (bad arguments or
//! package, staging failed); 3 the old agent would not stop; 4 the swap or the rollback itself
//! failed.
//!
//! On Windows this is a GUI-subsystem program: started detached by the agent it opens no
//! console window; run from a console, it attaches to it to print. It runs as SYSTEM for the
//! service, so it never runs code from a folder standard users can write: it loads DLLs at run
//! time from System32 only (`system::restrict_dll_search`, its first act), starts the agent by
//! its absolute install path only, and starts no other process.

#![windows_subsystem = "windows"]

mod journal;
mod package_check;
mod swap;
mod verify;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use cms_platform::agent_args::{ENROLLMENT_TOKEN_ENV, split_enrollment_token};
use cms_platform::contact::read_backend_contact;
use cms_platform::layout;
use cms_platform::lock_file::read_lock_record;
use cms_platform::package::Package;
use cms_platform::system;
use cms_platform::system::service::{self, SERVICE_NAME, ServiceState, StopOutcome};
use cms_protocol::BUILD_VERSION;
use cms_protocol::update::UpdatePhase;

use journal::Journal;
use package_check::Expected;
use verify::{Timeouts, Watched};

const EXIT_ROLLED_BACK: u8 = 1;
const EXIT_NOTHING_CHANGED: u8 = 2;
const EXIT_OLD_AGENT_STUCK: u8 = 3;
const EXIT_SWAP_FAILED: u8 = 4;

/// How often the old agent's exit is checked: the swap waits on it, so it is downtime.
const EXIT_POLL: Duration = Duration::from_millis(5);
/// Free bytes to leave on the install volume beyond the staged exe and the backup.
const INSTALL_RESERVE_BYTES: u64 = 1024 * 1024;

/// Arguments the agent passes when it hands over to the updater.
#[derive(Debug, Parser)]
#[command(name = "updater", version = BUILD_VERSION)]
struct Args {
    /// The verified update package (zip) in the agent's `updates/` folder.
    #[arg(long, value_name = "PATH")]
    package_path: PathBuf,
    /// The package's SHA-256 (64 hex digits) as the agent verified it; checked again, with
    /// `--package-length`, before anything changes. An older agent does not pass it.
    #[arg(long, value_name = "HEX", requires = "package_length")]
    package_sha256: Option<String>,
    /// The package's length in bytes as the agent verified it (with `--package-sha256`).
    #[arg(long, value_name = "BYTES", requires = "package_sha256")]
    package_length: Option<u64>,
    /// The agent executable to replace.
    #[arg(long, value_name = "PATH")]
    current_exe_path: PathBuf,
    /// PID of the agent that launched the update; waited for before the swap.
    #[arg(long, value_name = "PID")]
    old_pid: u32,
    /// Folder for `updater.log`: the agent's `<storage>/logs`.
    #[arg(long, value_name = "DIR")]
    log_dir: PathBuf,
    /// The agent runs as this service: start the new (or restored) agent through the service
    /// manager, with AGENT_ARGS as its start arguments.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new([SERVICE_NAME]))]
    service_name: Option<String>,
    /// The agent's own arguments, passed on to the new (or restored) agent; an enrollment
    /// token among them is handed over in its environment instead.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    agent_args: Vec<String>,
}

fn main() -> ExitCode {
    let dll_search = system::restrict_dll_search();
    system::attach_parent_console();
    let args = Args::parse();
    if let Err(err) = init_logging(&args.log_dir) {
        eprintln!("updater: cannot log to {}: {err}", args.log_dir.display());
    }
    if let Err(err) = dll_search {
        tracing::warn!(error = %err, "cannot restrict DLL loading to System32");
    }
    tracing::info!(version = BUILD_VERSION, package = %args.package_path.display(), exe = %args.current_exe_path.display(), old_pid = args.old_pid, agent_args = args.agent_args.len(), "updater started");
    let code = run(&args);
    tracing::info!(exit_code = code, "updater finished");
    ExitCode::from(code)
}

fn run(args: &Args) -> u8 {
    let agent = OldAgent::from_args(args);
    let code = update(args, &agent);
    if agent.launcher == Launcher::Service {
        restore_service_recovery();
    }
    code
}

fn update(args: &Args, agent: &OldAgent) -> u8 {
    let Some(storage) = layout::storage_of_logs_dir(&args.log_dir) else {
        return agent.give_up("--log-dir must be the agent's <storage>/logs");
    };
    let expected = args
        .package_sha256
        .as_ref()
        .zip(args.package_length)
        .map(|(sha256, length)| Expected {
            sha256: sha256.clone(),
            length,
        });
    let opened = match package_check::open(&args.package_path, expected.as_ref()) {
        Ok(opened) => opened,
        Err(reason) => return refuse_package(storage, args, agent, &reason),
    };
    let update = Update {
        require_backend_contact: old_agent_reached_backend(storage, args.old_pid),
        lock_path: layout::lock_path(storage),
        journal_path: layout::journal_path(storage),
        storage: storage.to_path_buf(),
        package: opened.package,
        agent,
        args,
    };
    update.run(opened.pin)
}

/// The package is not the one the agent checked, or unusable: nothing was changed. The
/// journal says `aborted` (with the version the agent named the package after), so the old
/// agent, started again, reports it, clears `updates/` once this process has exited and
/// retries later.
fn refuse_package(storage: &Path, args: &Args, agent: &OldAgent, reason: &str) -> u8 {
    let version =
        package_check::version_in_name(&args.package_path).unwrap_or_else(|| "unknown".to_owned());
    let old_version = installed_version(&layout::lock_path(storage));
    match Journal::start(
        layout::journal_path(storage),
        &version,
        &old_version,
        &agent.exe,
    ) {
        Ok(mut journal) => {
            agent.abort(&mut journal, reason);
            EXIT_NOTHING_CHANGED
        }
        Err(err) => agent.give_up(&format!(
            "{reason}; and cannot write the update journal: {err}"
        )),
    }
}

/// The running agent's version, as its lock file says.
fn installed_version(lock_path: &Path) -> String {
    read_lock_record(lock_path).map_or_else(|| "unknown".into(), |r| r.version)
}

/// Whether the agent that handed over had a heartbeat accepted by the backend: then the new
/// one must have one too before it counts as healthy.
fn old_agent_reached_backend(storage: &Path, old_pid: u32) -> bool {
    let reached = read_backend_contact(storage).is_some_and(|c| c.pid == old_pid);
    tracing::info!(
        old_pid,
        reached,
        "the new agent must reach the backend too when the old one did"
    );
    reached
}

/// The agent being replaced: where it is installed and how it was started.
struct OldAgent {
    /// As a process of its own, or as the service.
    launcher: Launcher,
    /// The install path (a replaced exe's ` (deleted)` path resolved to it).
    exe: PathBuf,
    pid: u32,
    /// Its arguments without the enrollment token.
    args: Vec<std::ffi::OsString>,
    /// The enrollment token, passed on in the environment, never on a command line.
    enrollment_token: Option<std::ffi::OsString>,
}

impl OldAgent {
    fn from_args(args: &Args) -> Self {
        let exe = system::installed_path(&args.current_exe_path);
        if exe != args.current_exe_path {
            tracing::info!(installed = %exe.display(), "the running agent's exe was replaced on disk; updating the install path");
        }
        let given = args.agent_args.iter().map(Into::into).collect();
        let (args_kept, enrollment_token) = split_enrollment_token(given);
        OldAgent {
            launcher: match args.service_name {
                Some(_) => Launcher::Service,
                None => Launcher::Process,
            },
            exe,
            pid: args.old_pid,
            args: args_kept,
            enrollment_token,
        }
    }

    /// Starts the agent at the install path with the old agent's arguments: as a process, or
    /// as the service through the service manager.
    fn start(&self) -> Result<Started, String> {
        match self.launcher {
            Launcher::Process => self.spawn().map_err(|e| e.to_string()),
            Launcher::Service => start_service(&self.args),
        }
    }

    fn spawn(&self) -> std::io::Result<Started> {
        if !self.exe.is_absolute() {
            // A relative name would be looked up (on Windows in this folder and the current
            // one first): only the install path itself is ever started.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not an absolute path", self.exe.display()),
            ));
        }
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(token) = &self.enrollment_token {
            command.env(ENROLLMENT_TOKEN_ENV, token);
        }
        system::detach(&mut command);
        let child = command.spawn()?;
        tracing::info!(pid = child.id(), args = self.args.len(), "agent started");
        Ok(Started::Child(child))
    }

    /// Nothing was changed: once the old agent is gone, start it again (it exited 0 to hand
    /// over, so no service manager would).
    fn give_up(&self, reason: &str) -> u8 {
        tracing::error!(
            reason,
            "nothing was changed; starting the previous agent again"
        );
        self.restart();
        EXIT_NOTHING_CHANGED
    }

    /// The release never ran: the journal says `aborted` (retried later, never refused for
    /// good) and the untouched previous agent is started again.
    fn abort(&self, journal: &mut Journal, reason: &str) {
        tracing::error!(
            reason,
            "update aborted before the swap; nothing was changed"
        );
        let _ = journal.advance(UpdatePhase::Aborted, Some(reason.to_owned()));
        self.restart();
    }

    /// Waits for the old process to be gone, then starts the agent again.
    fn restart(&self) {
        if !wait_for_old_agent(self.pid, env_secs("CMS_UPDATER_WAIT_SECS", 60)) {
            return; // it still runs
        }
        match self.start() {
            Ok(agent) => tracing::info!(pid = agent.pid(), "previous agent started again"),
            Err(err) => {
                tracing::error!(error = %err, "cannot start the previous agent; autostart will")
            }
        }
    }
}

struct Update<'a> {
    args: &'a Args,
    agent: &'a OldAgent,
    package: Package,
    storage: PathBuf,
    lock_path: PathBuf,
    journal_path: PathBuf,
    require_backend_contact: bool,
}

impl Update<'_> {
    /// Runs the update; `pin` (the handle the package was checked on) is held until the new
    /// agent is staged from it.
    fn run(&self, pin: Option<fs::File>) -> u8 {
        let exe = &self.agent.exe;
        let old_version = installed_version(&self.lock_path);
        let mut journal = match Journal::start(
            self.journal_path.clone(),
            &self.package.manifest.version,
            &old_version,
            exe,
        ) {
            Ok(journal) => journal,
            Err(err) => {
                return self
                    .agent
                    .give_up(&format!("cannot write the update journal: {err}"));
            }
        };
        if self.agent.launcher == Launcher::Service {
            // From here the journal is on disk, so an agent that finds it after a crash of
            // this updater turns recovery back on.
            suspend_service_recovery();
        }
        // Staged and backed up while the old agent shuts down: once it is gone, only a rename
        // and the new agent's start remain, which is all the downtime an update costs.
        let prepared = self.prepare(exe);
        drop(pin); // read sharing only: the package could not be removed while it is open
        if !wait_for_old_agent(self.agent.pid, env_secs("CMS_UPDATER_WAIT_SECS", 60)) {
            swap::discard(exe);
            let _ = journal.advance(
                UpdatePhase::Aborted,
                Some("the old agent would not stop".into()),
            );
            return EXIT_OLD_AGENT_STUCK;
        }
        if let Err(code) = self.swap_in(&mut journal, prepared) {
            return code;
        }
        self.start_and_verify(&mut journal)
    }

    /// Checks the install volume, extracts the new agent to `<exe>.new` and copies the current
    /// one to `<exe>.old`; the install path is not touched.
    fn prepare(&self, exe: &Path) -> Result<(), String> {
        self.check_install_space(exe)?;
        self.package
            .extract_agent(&layout::staged_path(exe))
            .map_err(|err| format!("cannot stage the new agent: {err}"))?;
        swap::back_up(exe).map_err(|err| format!("cannot back up the current agent: {err}"))
    }

    /// Room for the staged exe and the backup beside the installed one.
    fn check_install_space(&self, exe: &Path) -> Result<(), String> {
        let folder = exe.parent().unwrap_or(Path::new("."));
        let new_len = self.package.agent_len().map_err(|err| err.to_string())?;
        let old_len = fs::metadata(exe)
            .map_err(|err| format!("cannot read {}: {err}", exe.display()))?
            .len();
        let needed = new_len
            .saturating_add(old_len)
            .saturating_add(INSTALL_RESERVE_BYTES);
        let free = system::available_space(folder)
            .map_err(|err| format!("cannot measure free space in {}: {err}", folder.display()))?;
        if free < needed {
            return Err(format!(
                "not enough free space on the install volume ({}): {free} bytes free, {needed} needed",
                folder.display()
            ));
        }
        Ok(())
    }

    /// Moves the prepared new agent in, or aborts (old agent started again) if preparing or
    /// the swap failed.
    fn swap_in(&self, journal: &mut Journal, prepared: Result<(), String>) -> Result<(), u8> {
        let exe = &self.agent.exe;
        let ready = journal
            .advance(UpdatePhase::Swapping, None)
            .map_err(|err| format!("cannot write the update journal: {err}"))
            .and(prepared);
        if let Err(reason) = ready {
            swap::discard(exe);
            self.agent.abort(journal, &reason);
            return Err(EXIT_NOTHING_CHANGED);
        }
        swap::install(exe).map_err(|err| {
            swap::discard(exe);
            self.agent.abort(journal, &format!("swap failed: {err}"));
            EXIT_SWAP_FAILED
        })
    }

    fn start_and_verify(&self, journal: &mut Journal) -> u8 {
        let _ = journal.advance(UpdatePhase::Verifying, None);
        let expected = verify::Expected {
            lock_path: &self.lock_path,
            version: &self.package.manifest.version,
            backend_contact_in: self
                .require_backend_contact
                .then_some(self.storage.as_path()),
        };
        let verdict = match self.agent.start() {
            Ok(mut agent) => match verify::verify_new_agent(&mut agent, &expected, timeouts()) {
                Ok(()) => Ok(()),
                Err(reason) => {
                    agent.stop();
                    Err(reason)
                }
            },
            Err(err) => Err(format!("cannot start the new agent: {err}")),
        };
        match verdict {
            Ok(()) => self.cleanup(journal),
            Err(reason) => self.rollback(journal, reason),
        }
    }

    /// The plan's `cleanup`: the new agent is healthy; `.old` and the package go, and so does
    /// the updater itself where a running exe can be deleted (Linux); on Windows the agent
    /// removes it from `updates/` once this process has exited.
    fn cleanup(&self, journal: &mut Journal) -> u8 {
        let _ = journal.advance(UpdatePhase::Succeeded, None);
        remove_quietly(&layout::backup_path(&self.agent.exe));
        remove_quietly(&self.args.package_path);
        tracing::info!(version = %self.package.manifest.version, "update verified");
        match system::delete_running_exe() {
            Ok(true) => tracing::info!("updater deleted itself"),
            Ok(false) => tracing::info!("the agent removes the updater once it has exited"),
            Err(err) => tracing::warn!(error = %err, "cannot delete the updater itself"),
        }
        0
    }

    /// The plan's `rollback`: `.old` is restored and the old agent started again, which
    /// reports `reason` and never installs this version again.
    fn rollback(&self, journal: &mut Journal, reason: String) -> u8 {
        tracing::error!(reason = %reason, "new agent is not healthy; rolling back");
        let _ = journal.advance(UpdatePhase::RollingBack, Some(reason.clone()));
        if let Err(err) = swap::restore(&self.agent.exe) {
            tracing::error!(error = %err, "rollback could not restore the previous agent");
            return EXIT_SWAP_FAILED;
        }
        remove_quietly(&self.args.package_path);
        let _ = journal.advance(UpdatePhase::RolledBack, Some(reason));
        self.agent.restart();
        EXIT_ROLLED_BACK
    }
}

/// How the agent is started after the swap (and after a rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launcher {
    /// A detached process of its own, like the agent started the updater.
    Process,
    /// The service, through the service manager.
    Service,
}

/// An agent the updater started and watches.
enum Started {
    /// Its own child process.
    Child(Child),
    /// The service's process.
    Service {
        /// Its PID, as the service manager named it.
        pid: u32,
    },
}

impl Watched for Started {
    fn pid(&self) -> u32 {
        match self {
            Started::Child(child) => child.id(),
            Started::Service { pid } => *pid,
        }
    }

    fn still_running(&mut self) -> Result<(), String> {
        match self {
            Started::Child(child) => match child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("new agent exited with {status}")),
                Err(err) => Err(format!("cannot watch the new agent: {err}")),
            },
            Started::Service { pid } => service_still_runs(*pid),
        }
    }
}

impl Started {
    /// Stops the agent that failed its check: killed (a child), or stopped through the service
    /// manager and ended by its PID if it does not stop in time (the service).
    fn stop(&mut self) {
        match self {
            Started::Child(child) => {
                if let Err(err) = child.kill() {
                    tracing::warn!(pid = child.id(), error = %err, "cannot stop the new agent");
                }
                let _ = child.wait();
            }
            Started::Service { pid } => stop_service(*pid),
        }
    }
}

/// Starts the service with `args` as its start arguments (once the old agent's service has
/// reached `STOPPED`) and waits until the service manager names its process.
fn start_service(args: &[OsString]) -> Result<Started, String> {
    wait_for_service_stopped();
    let outcome = service::start(args).map_err(|e| e.to_string())?;
    let (status, running) = service::wait_for(timeouts().lock, |s| {
        s.state == ServiceState::Running && s.pid.is_some() || s.state == ServiceState::Stopped
    })
    .map_err(|e| e.to_string())?;
    match status {
        Some(status) if running && status.state == ServiceState::Running => {
            let pid = status.pid.unwrap_or_default();
            tracing::info!(pid, ?outcome, start_args = args.len(), "service started");
            Ok(Started::Service { pid })
        }
        Some(status) => Err(format!(
            "service {SERVICE_NAME} did not run: {} with exit code {}",
            status.state, status.exit_code
        )),
        None => Err(format!("service {SERVICE_NAME} is not installed")),
    }
}

/// `Ok` while the service runs in process `pid`.
fn service_still_runs(pid: u32) -> Result<(), String> {
    if !system::process_alive(pid) {
        return Err(format!("new agent (service process {pid}) exited"));
    }
    match service::query() {
        Ok(Some(status)) if status.state == ServiceState::Running && status.pid == Some(pid) => {
            Ok(())
        }
        Ok(Some(status)) => Err(format!(
            "service {SERVICE_NAME} is {} (exit code {})",
            status.state, status.exit_code
        )),
        Ok(None) => Err(format!("service {SERVICE_NAME} was deleted")),
        Err(err) => Err(format!("cannot watch service {SERVICE_NAME}: {err}")),
    }
}

fn stop_service(pid: u32) {
    match service::stop(env_secs("CMS_UPDATER_WAIT_SECS", 60)) {
        Ok(StopOutcome::TimedOut { .. }) => {
            tracing::warn!(
                pid,
                "the new agent's service does not stop; ending its process"
            );
            if let Err(err) = system::terminate_process(pid) {
                tracing::error!(pid, error = %err, "cannot end the new agent");
            }
            wait_exit(pid, Duration::from_secs(10));
        }
        Ok(outcome) => tracing::info!(pid, ?outcome, "new agent's service stopped"),
        Err(err) => tracing::error!(pid, error = %err, "cannot stop the new agent's service"),
    }
}

/// The old agent has exited; its service must be `STOPPED` before it can be started again.
fn wait_for_service_stopped() {
    let wait = env_secs("CMS_UPDATER_WAIT_SECS", 60);
    match service::wait_for(wait, |s| s.state == ServiceState::Stopped) {
        Ok((_, true)) => tracing::info!("old agent's service stopped"),
        Ok((status, false)) => {
            tracing::warn!(
                ?status,
                "the old agent exited but its service is not STOPPED; starting anyway"
            );
        }
        Err(err) => tracing::warn!(error = %err, "cannot query the service"),
    }
}

fn suspend_service_recovery() {
    match service::set_restart_on_failure(false) {
        Ok(recovery) => tracing::info!(%recovery, "service recovery suspended for the update"),
        Err(err) => tracing::warn!(error = %err, "cannot suspend the service's recovery actions"),
    }
}

fn restore_service_recovery() {
    match service::set_restart_on_failure(true) {
        Ok(recovery) => tracing::info!(%recovery, "service recovery restored"),
        Err(err) => {
            tracing::error!(error = %err, "cannot restore the service's recovery actions; the next agent start does")
        }
    }
}

/// Waits for the old agent to exit, terminating it after `wait`; `false` if it survives that.
fn wait_for_old_agent(pid: u32, wait: Duration) -> bool {
    if wait_exit(pid, wait) {
        tracing::info!(pid, "old agent exited");
        return true;
    }
    tracing::warn!(
        pid,
        wait_secs = wait.as_secs(),
        "old agent still running; terminating it"
    );
    if let Err(err) = system::terminate_process(pid) {
        tracing::error!(pid, error = %err, "cannot terminate the old agent");
    }
    let gone = wait_exit(pid, Duration::from_secs(10));
    if !gone {
        tracing::error!(pid, "old agent would not stop; nothing was changed");
    }
    gone
}

fn wait_exit(pid: u32, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while system::process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(EXIT_POLL);
    }
    true
}

fn remove_quietly(path: &Path) {
    if let Err(err) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove");
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        lock: env_secs("CMS_UPDATER_VERIFY_SECS", 30),
        backend_contact: env_secs("CMS_UPDATER_CONTACT_SECS", 60),
        grace: env_secs("CMS_UPDATER_GRACE_SECS", 10),
    }
}

/// A duration from the environment (tests shorten the waits), else `default` seconds.
fn env_secs(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

fn init_logging(log_dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(log_dir)?;
    let file = cms_platform::fs::open_no_follow(
        &log_dir.join(layout::UPDATER_LOG_NAME),
        fs::OpenOptions::new().create(true).append(true),
    )?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init()
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments every call has (an older agent passes no more).
    const BASE_ARGS: [&str; 9] = [
        "updater",
        "--package-path",
        "p.zip",
        "--current-exe-path",
        "C:/a/cms_agent.exe",
        "--old-pid",
        "7",
        "--log-dir",
        "C:/d/logs",
    ];

    #[test]
    fn the_service_is_named_explicitly_and_only_the_agents_service_is_accepted() {
        let base = BASE_ARGS;
        let plain = Args::parse_from(base);
        assert_eq!(OldAgent::from_args(&plain).launcher, Launcher::Process);
        let service =
            Args::parse_from(base.iter().copied().chain(["--service-name", SERVICE_NAME]));
        assert_eq!(OldAgent::from_args(&service).launcher, Launcher::Service);
        let other = Args::try_parse_from(base.iter().copied().chain(["--service-name", "Spooler"]));
        assert!(other.is_err(), "another service must not be driven");
    }

    #[test]
    fn the_package_hash_and_length_come_together_or_not_at_all() {
        let base = BASE_ARGS;
        let older_agent = Args::parse_from(base);
        assert_eq!(older_agent.package_sha256, None);
        assert_eq!(older_agent.package_length, None);
        let sha = ["--package-sha256", "ab"];
        let both = Args::parse_from(base.iter().chain(&sha).chain(&["--package-length", "9"]));
        assert_eq!(both.package_sha256.as_deref(), Some("ab"));
        assert_eq!(both.package_length, Some(9));
        assert!(Args::try_parse_from(base.iter().chain(&sha)).is_err());
        assert!(Args::try_parse_from(base.iter().chain(&["--package-length", "9"])).is_err());
    }

    #[test]
    fn the_agent_is_started_again_without_the_token_on_its_command_line() {
        let args = Args::parse_from([
            "updater",
            "--package-path",
            "p.zip",
            "--current-exe-path",
            "/opt/cms/cms_agent",
            "--old-pid",
            "42",
            "--log-dir",
            "/var/lib/cms-agent/logs",
            "--",
            "--server",
            "https://cms",
            "--enrollment-token",
            "s3cret",
        ]);
        let agent = OldAgent::from_args(&args);
        assert_eq!(agent.pid, 42);
        assert_eq!(agent.args, ["--server", "https://cms"]);
        assert_eq!(agent.enrollment_token.as_deref(), Some("s3cret".as_ref()));
    }
}
