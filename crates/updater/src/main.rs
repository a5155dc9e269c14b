//! `updater`: replaces the CMS agent with a new version, proves it healthy or rolls back
//! (docs/CONTRACT.md, docs/ARCHITECTURE.md "One self-update, end to end").
//!
//! Flow: stage the new exe from the package and back up the current one (`swap`) while the old
//! agent shuts down -> wait for it to exit (60 s, then terminate it) -> swap -> start the new agent with the old one's arguments ->
//! verify it (`verify`) -> on success remove `.old` and the package and delete itself; on failure
//! stop the new agent, restore `.old`, start the old one and exit non-zero. Every phase is
//! written to the update journal first (`journal`), so a kill at any moment leaves a state the
//! next agent start can finish or undo. Everything is logged to `<log-dir>/updater.log`.
//!
//! Exit codes: 0 updated and verified; 1 rolled back; 2 nothing changed (bad arguments or
//! package); 3 the old agent would not stop; 4 the swap or the rollback itself failed.

mod journal;
mod swap;
mod verify;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use cms_platform::layout;
use cms_platform::lock_file::read_lock_record;
use cms_platform::package::Package;
use cms_platform::system;
use cms_protocol::BUILD_VERSION;
use cms_protocol::update::UpdatePhase;

use journal::Journal;
use verify::Timeouts;

const EXIT_ROLLED_BACK: u8 = 1;
const EXIT_NOTHING_CHANGED: u8 = 2;
const EXIT_OLD_AGENT_STUCK: u8 = 3;
const EXIT_SWAP_FAILED: u8 = 4;

/// How often the old agent's exit is checked: the swap waits on it, so it is downtime.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Arguments the agent passes when it hands over to the updater.
#[derive(Debug, Parser)]
#[command(name = "updater", version = BUILD_VERSION)]
struct Args {
    /// The verified update package (zip) in the agent's `updates/` folder.
    #[arg(long, value_name = "PATH")]
    package_path: PathBuf,
    /// The agent executable to replace.
    #[arg(long, value_name = "PATH")]
    current_exe_path: PathBuf,
    /// PID of the agent that launched the update; waited for before the swap.
    #[arg(long, value_name = "PID")]
    old_pid: u32,
    /// Folder for `updater.log`: the agent's `<storage>/logs`.
    #[arg(long, value_name = "DIR")]
    log_dir: PathBuf,
    /// The agent's own arguments, passed on unchanged to the new (or restored) agent.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    agent_args: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = init_logging(&args.log_dir) {
        eprintln!("updater: cannot log to {}: {err}", args.log_dir.display());
    }
    tracing::info!(version = BUILD_VERSION, package = %args.package_path.display(), exe = %args.current_exe_path.display(), old_pid = args.old_pid, "updater started");
    let code = run(&args);
    tracing::info!(exit_code = code, "updater finished");
    ExitCode::from(code)
}

fn run(args: &Args) -> u8 {
    let package = match Package::open(&args.package_path) {
        Ok(package) => package,
        Err(err) => {
            tracing::error!(error = %err, "refusing the package; nothing was changed");
            return EXIT_NOTHING_CHANGED;
        }
    };
    let Some(storage) = layout::storage_of_logs_dir(&args.log_dir) else {
        tracing::error!("--log-dir must be the agent's <storage>/logs");
        return EXIT_NOTHING_CHANGED;
    };
    let update = Update {
        args,
        package,
        lock_path: layout::lock_path(storage),
        journal_path: layout::journal_path(storage),
    };
    update.run()
}

struct Update<'a> {
    args: &'a Args,
    package: Package,
    lock_path: PathBuf,
    journal_path: PathBuf,
}

impl Update<'_> {
    fn run(&self) -> u8 {
        let exe = &self.args.current_exe_path;
        let old_version =
            read_lock_record(&self.lock_path).map_or_else(|| "unknown".into(), |r| r.version);
        let mut journal = match Journal::start(
            self.journal_path.clone(),
            &self.package.manifest.version,
            &old_version,
            exe,
        ) {
            Ok(journal) => journal,
            Err(err) => {
                tracing::error!(error = %err, "cannot write the update journal; nothing was changed");
                return EXIT_NOTHING_CHANGED;
            }
        };
        // Staged and backed up while the old agent shuts down: once it is gone, only a rename
        // and the new agent's start remain, which is all the downtime an update costs.
        let prepared = self.prepare(exe);
        if !wait_for_old_agent(self.args.old_pid, env_secs("CMS_UPDATER_WAIT_SECS", 60)) {
            swap::discard(exe);
            return EXIT_OLD_AGENT_STUCK;
        }
        if let Err(code) = self.swap_in(&mut journal, prepared) {
            return code;
        }
        self.start_and_verify(&mut journal)
    }

    /// Extracts the new agent to `<exe>.new` and copies the current one to `<exe>.old`; the
    /// install path is not touched.
    fn prepare(&self, exe: &Path) -> Result<(), String> {
        self.package
            .extract_agent(&layout::staged_path(exe))
            .map_err(|err| format!("cannot stage the new agent: {err}"))?;
        swap::back_up(exe).map_err(|err| format!("cannot back up the current agent: {err}"))
    }

    /// Moves the prepared new agent in, or restarts the old one if preparing failed.
    fn swap_in(&self, journal: &mut Journal, prepared: Result<(), String>) -> Result<(), u8> {
        let exe = &self.args.current_exe_path;
        let ready = journal
            .advance(UpdatePhase::Swapping, None)
            .map_err(|err| format!("cannot write the update journal: {err}"))
            .and(prepared);
        if let Err(reason) = ready {
            tracing::error!(error = %reason, "nothing was changed");
            swap::discard(exe);
            self.restart_old(journal, &reason);
            return Err(EXIT_NOTHING_CHANGED);
        }
        swap::install(exe).map_err(|err| {
            tracing::error!(error = %err, "swap failed; the previous agent is still in place");
            swap::discard(exe);
            self.restart_old(journal, &format!("swap failed: {err}"));
            EXIT_SWAP_FAILED
        })
    }

    fn start_and_verify(&self, journal: &mut Journal) -> u8 {
        let _ = journal.advance(UpdatePhase::Verifying, None);
        let version = &self.package.manifest.version;
        let verdict = match self.start_agent() {
            Ok(mut child) => {
                match verify::verify_new_agent(&mut child, &self.lock_path, version, timeouts()) {
                    Ok(()) => Ok(()),
                    Err(reason) => {
                        stop_child(&mut child);
                        Err(reason)
                    }
                }
            }
            Err(err) => Err(format!("cannot start the new agent: {err}")),
        };
        match verdict {
            Ok(()) => self.cleanup(journal),
            Err(reason) => self.rollback(journal, reason),
        }
    }

    /// The plan's `cleanup`: the new agent is healthy; `.old` and the package go, and so does
    /// the updater itself.
    fn cleanup(&self, journal: &mut Journal) -> u8 {
        let _ = journal.advance(UpdatePhase::Succeeded, None);
        remove_quietly(&layout::backup_path(&self.args.current_exe_path));
        remove_quietly(&self.args.package_path);
        tracing::info!(version = %self.package.manifest.version, "update verified");
        if let Err(err) = self_replace::self_delete() {
            tracing::warn!(error = %err, "cannot delete the updater itself");
        }
        0
    }

    /// The plan's `rollback`: `.old` is restored and the old agent started again.
    fn rollback(&self, journal: &mut Journal, reason: String) -> u8 {
        tracing::error!(reason = %reason, "new agent is not healthy; rolling back");
        let _ = journal.advance(UpdatePhase::RollingBack, Some(reason.clone()));
        if let Err(err) = swap::restore(&self.args.current_exe_path) {
            tracing::error!(error = %err, "rollback could not restore the previous agent");
            return EXIT_SWAP_FAILED;
        }
        remove_quietly(&self.args.package_path);
        self.restart_old(journal, &reason);
        EXIT_ROLLED_BACK
    }

    /// Starts the (restored or untouched) previous agent, which reports `reason`.
    fn restart_old(&self, journal: &mut Journal, reason: &str) {
        let _ = journal.advance(UpdatePhase::RolledBack, Some(reason.to_owned()));
        match self.start_agent() {
            Ok(child) => tracing::info!(pid = child.id(), "previous agent started again"),
            Err(err) => {
                tracing::error!(error = %err, "cannot start the previous agent; autostart will")
            }
        }
    }

    fn start_agent(&self) -> std::io::Result<Child> {
        let mut command = Command::new(&self.args.current_exe_path);
        command
            .args(&self.args.agent_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        system::detach(&mut command);
        let child = command.spawn()?;
        tracing::info!(pid = child.id(), args = ?self.args.agent_args, "agent started");
        Ok(child)
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

fn stop_child(child: &mut Child) {
    if let Err(err) = child.kill() {
        tracing::warn!(pid = child.id(), error = %err, "cannot stop the new agent");
    }
    let _ = child.wait();
}

fn remove_quietly(path: &Path) {
    if let Err(err) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove");
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        lock: env_secs("CMS_UPDATER_VERIFY_SECS", 30),
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
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(layout::UPDATER_LOG_NAME))?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init()
        .map_err(std::io::Error::other)
}
