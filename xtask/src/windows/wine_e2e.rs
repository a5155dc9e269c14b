//! `cargo xtask wine-e2e`: the Windows agent end to end under Wine, installed by its own
//! installer and driven against the Linux `cms-server` on loopback. Nothing is faked: the
//! programs are the Windows builds, the registry, named pipe, Credential Manager, processes
//! and file semantics are Wine's implementation of Win32.
//!
//! The scenario, in one throwaway prefix on a private Xvfb display; every step is checked and
//! the first failure ends the run with the logs that explain it:
//!
//! 1. install: `setup.exe /VERYSILENT /ALLUSERS /SERVER=http://127.0.0.1:PORT`; the HKLM `Run`
//!    value `CMSAgent` names the installed exe; the agent registers (operator API: IDLE,
//!    online, the `dist/` version).
//! 2. IPC: `cms_agent.exe --status` answers over `\\.\pipe\cms_agent_system`; a wrong secret
//!    sent by a Windows program (the `ipc_request` example of cms-agent) is refused, and the
//!    agent keeps running and logs the refusal.
//! 3. Windows file semantics: overwriting the running exe (`cmd /c copy`) is a sharing
//!    violation, so the update below has to go through the updater.
//! 4. update: release 2.0.0 (Windows builds stamped `CMS_BUILD_VERSION=2.0.0`) published with
//!    `cms-server release publish --platform windows-x86_64`; the agent is told over its
//!    WebSocket and hands over to `updater.exe`, which swaps, verifies and deletes itself.
//!    Checked: 2.0.0 online, the exe says 2.0.0, no `.old`/`.new`, `updates/` empty, no
//!    self-delete leftovers anywhere under `C:\`, `current_version` recorded.
//! 5. rollback: release 3.0.0 whose agent exits at start (the 2.0.0 `updater.exe`, which
//!    refuses the agent's command line, the Windows twin of the Linux tests' crashing script):
//!    `update_rolled_back` is reported, 2.0.0 runs again and never retries 3.0.0.
//! 6. `--force`: a new instance asks the running one to stop over the pipe and takes over;
//!    the server still knows one agent.
//! 7. uninstall: no `Run` value, no `cms_agent.exe` process, Wine winds down, and the server
//!    sees the agent go offline.
//!
//! Needs `cargo xtask dist` (the installed version is `dist/VERSION` and must be older than
//! 2.0.0) and the setup exe (`cargo xtask installer`; compiled here when missing). Builds the
//! Linux `cms-server` in the shared target dir, and the 2.0.0 agent, updater and the
//! `ipc_request` example for Windows in `target/wine-e2e/build` (a target dir of its own: a
//! build stamped 2.0.0 must never replace the binaries other tests run), dev profile without
//! debug info. Without 32-bit Wine or Xvfb it prints `SKIPPED: ...` and exits with 77.
//!
//! Must never: touch anything outside its prefix and `target/` (never `~/.wine`), or call a
//! step passed that it did not see happen.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cms_protocol::{AgentSummary, IpcResponse, IpcStatus, LockRecord};

use crate::build::{self, Stamped, StampedBuild, WINDOWS};
use crate::checks;
use crate::dist_tree;
use crate::flags;
use crate::server::{Release, RunningServer, Server, ServerOutput};
use crate::util::{self, output_timeout, step, wait_for};
use crate::version;
use crate::windows::inno;
use crate::windows::setup::{self, APP_DIR};
use crate::windows::wine::{self, VirtualDisplay, WinePrefix};

/// The release the installed agent updates itself to.
const NEW_VERSION: &str = "2.0.0";
/// The release whose agent never becomes healthy.
const BROKEN_VERSION: &str = "3.0.0";

/// The installed agent, as Windows programs see it.
const AGENT_EXE: &str = r"C:\Program Files\CMS Agent\cms_agent.exe";
/// The per-machine storage path (`%PROGRAMDATA%\CMSAgent`), relative to `C:\`.
const DATA_DIR: &str = "ProgramData/CMSAgent";

/// How long any one thing the scenario waits for may take under Wine.
const WAIT: Duration = Duration::from_secs(120);
/// Time limit for one short-lived Windows program (`--status`, `reg`, `cmd`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A secret that cannot be the agent's: 64 hex digits, all zero.
const WRONG_SECRET: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Marks of the temporary copies `self_replace::self_delete` makes of the updater.
const SELF_DELETE_MARKS: [&str; 2] = [".__selfdelete__.", ".__relocated__."];

/// `cargo xtask wine-e2e` (no options).
pub fn run(args: &[String]) -> Result<()> {
    flags::reject_rest("wine-e2e", args)?;
    wine::require_wine_host("wine-e2e")?;
    let started = Instant::now();
    let installed = dist_tree::version()?;
    ensure!(
        version::is_older(&installed, NEW_VERSION)?,
        "dist/ holds {installed}; the scenario updates to {NEW_VERSION}, so dist/ must be older \
         (cargo xtask dist --version 1.0.0)"
    );
    dist_tree::require(&WINDOWS).context("run `cargo xtask dist --target windows` first")?;
    if let Err(reason) = wine::wine32_status() {
        checks::skip("Windows end-to-end scenarios", &reason);
    }
    let display = match VirtualDisplay::start() {
        Ok(display) => display,
        Err(e) => checks::skip(
            "Windows end-to-end scenarios",
            &format!("no virtual display: {e:#}"),
        ),
    };
    let setup = setup_exe(&installed)?;
    let builds = Builds::make(NEW_VERSION)?;
    let server_dir = e2e_dir().join("server");
    util::remove_dir_if_exists(&server_dir)?;
    let mut server = Server::new(&build::server()?, &server_dir, ServerOutput::Print).start()?;
    let outcome = Scenario {
        prefix: wine::prepare_prefix("wine-e2e")?,
        display: &display,
        server: &server,
        builds: &builds,
        installed: &installed,
    }
    .run(&setup);
    let stopped = server.stop();
    outcome?;
    stopped?;
    println!(
        "wine-e2e: PASSED (install, IPC, update {installed} -> {NEW_VERSION}, rollback of \
         {BROKEN_VERSION}, --force, uninstall) in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// `target/wine-e2e`: this task's builds and server data.
fn e2e_dir() -> PathBuf {
    util::target_dir().join("wine-e2e")
}

/// The setup exe `cargo xtask installer` made for `version`, compiled now if it is missing.
fn setup_exe(version: &str) -> Result<PathBuf> {
    let setup = dist_tree::setup_exe(version);
    if setup.is_file() {
        return Ok(setup);
    }
    inno::compile(version, None)
}

/// The Windows programs the scenario needs beyond `dist/`.
#[derive(Debug)]
struct Builds {
    /// `cms_agent.exe` and `updater.exe` stamped [`NEW_VERSION`].
    new: Stamped,
    /// The `ipc_request` example of cms-agent.
    ipc_request: PathBuf,
}

impl Builds {
    /// Builds them stamped `version` in `target/wine-e2e/build`, dev profile without debug
    /// info (a quarter of the size, for the package the agent downloads).
    fn make(version: &str) -> Result<Self> {
        let started = Instant::now();
        let new = StampedBuild::new(version)
            .platform(WINDOWS)
            .target_dir(e2e_dir().join("build"))
            .example("ipc_request")
            .lean()
            .run()
            .with_context(|| format!("cannot build the Windows {version} programs"))?;
        println!(
            "    built the Windows {version} agent, updater and ipc_request in {:.0?}",
            started.elapsed()
        );
        Ok(Builds {
            ipc_request: new.example("ipc_request"),
            new,
        })
    }
}

/// What `cms_agent --status` printed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    state: String,
    version: String,
    pid: u32,
}

/// One run of the scenario on one Wine prefix.
struct Scenario<'a> {
    prefix: WinePrefix,
    display: &'a VirtualDisplay,
    server: &'a RunningServer,
    builds: &'a Builds,
    installed: &'a str,
}

impl Scenario<'_> {
    /// All steps in order; on failure, the logs that explain it are printed.
    fn run(&self, setup: &Path) -> Result<()> {
        let result = self.steps(setup);
        if result.is_err() {
            self.print_logs();
        }
        result
    }

    fn steps(&self, setup: &Path) -> Result<()> {
        self.install(setup)?;
        self.ipc()?;
        self.running_exe_is_protected()?;
        self.update()?;
        self.roll_back()?;
        let forced = self.force()?;
        let uninstalled = self.uninstall();
        reap(forced);
        uninstalled
    }

    fn install(&self, setup: &Path) -> Result<()> {
        step(&format!(
            "installing {} silently per machine with /SERVER={}",
            setup.display(),
            self.server.url()
        ));
        let log = "setup-install.log";
        setup::install(
            &self.prefix,
            self.display,
            setup,
            "/ALLUSERS",
            log,
            self.server.url(),
        )?;
        let run = setup::autostart_value(&self.prefix)?
            .context("the HKLM Run value CMSAgent is missing after install")?;
        ensure!(
            run.to_lowercase().contains(&AGENT_EXE.to_lowercase()),
            "the Run value does not name {AGENT_EXE}:\n{run}"
        );
        ok(&format!("HKLM Run value CMSAgent starts {AGENT_EXE}"));
        let agent = self.wait_for_agent(
            &format!("the agent {} online and IDLE", self.installed),
            |a| a.version == self.installed && a.state == "IDLE" && a.online,
        )?;
        ok(&format!(
            "the agent registered: {} on {} ({}), {} IDLE online",
            agent.agent_id, agent.hostname, agent.platform, agent.version
        ));
        Ok(())
    }

    fn ipc(&self) -> Result<()> {
        step(r"IPC over \\.\pipe\cms_agent_system: --status, then a wrong secret");
        let before = self.status()?;
        let lock = self.lock().context("no agent.lock")?;
        ensure!(
            before.state == "IDLE" && before.version == self.installed && before.pid == lock.pid,
            "--status said {before:?}; agent.lock says pid {} version {}",
            lock.pid,
            lock.version
        );
        ok(&format!("cms_agent.exe --status: {before:?}"));
        let answer = self.ipc_request_with_wrong_secret()?;
        ensure!(
            answer.status == IpcStatus::InvalidSecret
                && answer.state.is_none()
                && answer.version.is_none(),
            "a wrong secret got {answer:?}"
        );
        self.wait_for_log(
            "the refusal in agent.log",
            "IPC request refused: invalid secret",
        )?;
        let after = self.status()?;
        ensure!(
            after.pid == before.pid,
            "the agent changed after a refused request: {after:?}"
        );
        ok(&format!(
            "force_restart with a wrong secret: {:?}; the agent (pid {}) keeps running",
            answer.status, after.pid
        ));
        Ok(())
    }

    /// Sends `force_restart` with [`WRONG_SECRET`] from the Windows `ipc_request` program.
    fn ipc_request_with_wrong_secret(&self) -> Result<IpcResponse> {
        let mut cmd = self.prefix.command(&self.builds.ipc_request);
        cmd.args(["--command", "force-restart", "--secret", WRONG_SECRET]);
        let out = checked(&mut cmd)?;
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).with_context(|| format!("ipc_request printed {text:?}"))
    }

    fn running_exe_is_protected(&self) -> Result<()> {
        step("Windows file semantics: the running cms_agent.exe cannot be overwritten");
        let exe = self.app_dir().join("cms_agent.exe");
        let before = fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
        let other = wine::windows_path(&dist_tree::binary(&WINDOWS, "updater"));
        let mut cmd = self.prefix.command("cmd");
        cmd.args(["/c", "copy", "/y", &other, AGENT_EXE]);
        let out = output_timeout(&mut cmd, COMMAND_TIMEOUT)?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        ensure!(
            !out.status.success(),
            "cmd /c copy over the running exe succeeded: {said}"
        );
        ensure!(fs::read(&exe)? == before, "the running exe was changed");
        ok(&format!("cmd /c copy over it: {}, {said:?}", out.status));
        Ok(())
    }

    fn update(&self) -> Result<()> {
        step(&format!("self-update {} -> {NEW_VERSION}", self.installed));
        self.publish(NEW_VERSION, &self.builds.new.agent)?;
        self.wait_for_agent(&format!("the agent {NEW_VERSION} online and IDLE"), |a| {
            a.version == NEW_VERSION && a.state == "IDLE" && a.online
        })?;
        ok(&format!("the server sees {NEW_VERSION} online and IDLE"));
        self.wait_for_log(
            "the agent to settle the update",
            "update verified by the updater",
        )?;
        self.expect_exe_version(NEW_VERSION)?;
        let updater_log = self.updater_log();
        for needle in ["old agent exited", "new agent in place", "update verified"] {
            ensure!(updater_log.contains(needle), "updater.log lacks {needle:?}");
        }
        ensure!(
            !updater_log.contains("cannot delete the updater itself"),
            "the updater could not delete itself"
        );
        ok("updater.log: old agent exited, new agent in place, update verified");
        self.expect_no_update_files()?;
        wait_for("the updater's self-delete copies to go", WAIT, || {
            let left = self.self_delete_leftovers();
            none_left(&left)
        })?;
        ok("updater.exe deleted itself (no self-delete copies left under C:\\)");
        let config = self.config()?;
        ensure!(
            config["current_version"] == NEW_VERSION,
            "config.json current_version is {}",
            config["current_version"]
        );
        ok(&format!("config.json current_version {NEW_VERSION}"));
        let status = self.status()?;
        ensure!(status.version == NEW_VERSION, "--status says {status:?}");
        ensure!(
            setup::autostart_value(&self.prefix)?.is_some(),
            "the Run value is gone after the update"
        );
        ok(&format!(
            "--status: {status:?}; the Run value is still there"
        ));
        Ok(())
    }

    fn roll_back(&self) -> Result<()> {
        step(&format!(
            "release {BROKEN_VERSION} whose agent exits at start is rolled back to {NEW_VERSION}"
        ));
        let before = self.status()?;
        self.publish(BROKEN_VERSION, &self.builds.new.updater)?;
        let report = wait_for("an update_rolled_back report", WAIT, || {
            Ok(self
                .server
                .errors()?
                .into_iter()
                .find(|e| e.kind == "update_rolled_back" && e.message.contains(BROKEN_VERSION)))
        })?;
        ensure!(
            report.message.contains("exited"),
            "the report says {:?}",
            report.message
        );
        ok(&format!("reported update_rolled_back: {}", report.message));
        let after = wait_for(&format!("{NEW_VERSION} running again"), WAIT, || {
            Ok(self
                .status()
                .ok()
                .filter(|s| s.pid != before.pid && s.state == "IDLE"))
        })?;
        ensure!(
            after.version == NEW_VERSION,
            "after the rollback --status says {after:?}"
        );
        self.expect_exe_version(NEW_VERSION)?;
        ensure!(
            self.updater_log().contains("rolling back"),
            "updater.log lacks the rollback"
        );
        let config = self.config()?;
        ensure!(
            config["rolled_back_versions"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v == BROKEN_VERSION)),
            "config.json rolled_back_versions is {}",
            config["rolled_back_versions"]
        );
        ok(&format!(
            "{NEW_VERSION} runs again (pid {}); {BROKEN_VERSION} is in rolled_back_versions",
            after.pid
        ));
        self.expect_no_update_files()
    }

    /// Starts `cms_agent.exe --force --status-interval 5`; returns the `wine` process it runs
    /// in (ended by the uninstall).
    fn force(&self) -> Result<Child> {
        step("--force: a new instance takes over from the running one");
        let old = self.status()?;
        let mut cmd = self.prefix.command(AGENT_EXE);
        cmd.args(["--force", "--status-interval", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", util::describe(&cmd)))?;
        match self.check_takeover(&old) {
            Ok(()) => Ok(child),
            Err(err) => {
                reap(child);
                Err(err)
            }
        }
    }

    /// The instance `old` has handed over to a new one.
    fn check_takeover(&self, old: &Status) -> Result<()> {
        let new = wait_for("the new instance to answer --status", WAIT, || {
            Ok(self
                .status()
                .ok()
                .filter(|s| s.pid != old.pid && s.state == "IDLE"))
        })?;
        let log = self.agent_log();
        for needle in [
            "IDLE -> FORCE_RESTARTING",
            "--force acknowledged; waiting for the lock",
        ] {
            ensure!(log.contains(needle), "agent.log lacks {needle:?}");
        }
        let running = self.agent_processes();
        ensure!(running.len() == 1, "cms_agent.exe processes: {running:?}");
        let agents = self.agents()?;
        ensure!(
            agents.len() == 1,
            "the server lists {} agents",
            agents.len()
        );
        ok(&format!(
            "pid {} stopped, pid {} runs and answers; still one agent on the server",
            old.pid, new.pid
        ));
        Ok(())
    }

    fn uninstall(&self) -> Result<()> {
        step("uninstall");
        setup::uninstall(&self.prefix, self.display, &self.app_dir(), &[])?;
        ensure!(
            setup::autostart_value(&self.prefix)?.is_none(),
            "the Run value is still there"
        );
        ok("the HKLM Run value CMSAgent is gone");
        let running = self.agent_processes();
        ensure!(running.is_empty(), "cms_agent.exe still runs: {running:?}");
        ok("no cms_agent.exe process is left, and Wine wound down");
        for name in ["cms_agent.exe", "updater.exe"] {
            ensure!(
                !self.app_dir().join(name).exists(),
                "{name} is still installed"
            );
        }
        wait_for("the server to see the agent offline", WAIT, || {
            Ok(self.agents()?.iter().all(|a| !a.online).then_some(()))
        })?;
        ok("the programs are removed and the server sees the agent offline");
        Ok(())
    }

    /// `cms-server release publish --platform windows-x86_64` of `agent` as `version`, with
    /// the 2.0.0 updater.
    fn publish(&self, version: &str, agent: &Path) -> Result<()> {
        self.server.publish(&Release {
            version,
            platform: Some(WINDOWS.name),
            agent,
            updater: &self.builds.new.updater,
        })
    }

    /// Waits until the server lists an agent for which `wanted` holds.
    fn wait_for_agent(
        &self,
        what: &str,
        wanted: impl Fn(&AgentSummary) -> bool,
    ) -> Result<AgentSummary> {
        self.server.wait_for_agent(what, WAIT, wanted)
    }

    fn agents(&self) -> Result<Vec<AgentSummary>> {
        self.server.agents()
    }

    /// `cms_agent.exe --status`, which must find a running agent.
    fn status(&self) -> Result<Status> {
        let out = checked(self.prefix.command(AGENT_EXE).arg("--status"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(str::to_owned)
                .with_context(|| format!("--status printed no {name}: {text:?}"))
        };
        Ok(Status {
            state: field("state")?,
            version: field("version")?,
            pid: field("pid")?
                .parse()
                .context("--status printed a bad pid")?,
        })
    }

    fn expect_exe_version(&self, version: &str) -> Result<()> {
        let out = checked(self.prefix.command(AGENT_EXE).arg("--version"))?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            said == format!("cms_agent {version}"),
            "the installed exe says {said:?}"
        );
        ok(&format!("{AGENT_EXE} --version: {said}"));
        Ok(())
    }

    /// No `.old`/`.new` beside the exe, and nothing (journal, package, updater) in `updates/`.
    fn expect_no_update_files(&self) -> Result<()> {
        for name in ["cms_agent.exe.old", "cms_agent.exe.new"] {
            ensure!(
                !self.app_dir().join(name).exists(),
                "{name} was left beside the exe"
            );
        }
        let updates = self.data_dir().join("updates");
        wait_for("updates/ to be emptied", WAIT, || {
            let left: Vec<_> = fs::read_dir(&updates)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
                .unwrap_or_default();
            none_left(&left)
        })?;
        ok("no .old or .new beside the exe; updates/ is empty");
        Ok(())
    }

    fn wait_for_log(&self, what: &str, needle: &str) -> Result<()> {
        wait_for(what, WAIT, || {
            Ok(self.agent_log().contains(needle).then_some(()))
        })
    }

    fn app_dir(&self) -> PathBuf {
        self.prefix.drive_c().join(APP_DIR)
    }

    fn data_dir(&self) -> PathBuf {
        self.prefix.drive_c().join(DATA_DIR)
    }

    fn agent_log(&self) -> String {
        fs::read_to_string(self.data_dir().join("logs/agent.log")).unwrap_or_default()
    }

    fn updater_log(&self) -> String {
        fs::read_to_string(self.data_dir().join("logs/updater.log")).unwrap_or_default()
    }

    fn lock(&self) -> Option<LockRecord> {
        serde_json::from_slice(&fs::read(self.data_dir().join("agent.lock")).ok()?).ok()
    }

    fn config(&self) -> Result<serde_json::Value> {
        let path = self.data_dir().join("config.json");
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Files named like `self_replace`'s temporary copies of the updater, anywhere under
    /// `C:\users`, `C:\ProgramData`, the install folder and `C:\windows\temp`.
    fn self_delete_leftovers(&self) -> Vec<PathBuf> {
        let drive_c = self.prefix.drive_c();
        let mut found = Vec::new();
        for dir in ["users", "ProgramData", APP_DIR, "windows/temp"] {
            find_files(&drive_c.join(dir), &mut found, &|name| {
                SELF_DELETE_MARKS.iter().any(|mark| name.contains(mark))
            });
        }
        found
    }

    /// Linux PIDs of the processes of this prefix that run the installed `cms_agent.exe`.
    fn agent_processes(&self) -> Vec<u32> {
        let wineprefix = format!("WINEPREFIX={}", self.prefix.dir().display());
        let exe = AGENT_EXE.to_lowercase();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let proc = Path::new("/proc").join(pid.to_string());
                let read = |name| fs::read(proc.join(name)).unwrap_or_default();
                // Wine puts the Windows command line where Linux shows the process's arguments.
                let cmdline = String::from_utf8_lossy(&read("cmdline")).to_lowercase();
                cmdline.trim_start_matches('"').starts_with(&exe)
                    && read("environ")
                        .split(|b| *b == 0)
                        .any(|var| var == wineprefix.as_bytes())
            })
            .collect()
    }

    /// The end of every log that can explain a failure.
    fn print_logs(&self) {
        let data = self.data_dir();
        let drive_c = self.prefix.drive_c();
        for path in [
            data.join("logs/agent.log"),
            data.join("logs/updater.log"),
            drive_c.join("setup-install.log"),
            drive_c.join("setup-uninstall.log"),
        ] {
            match fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- last lines of {} ---", path.display());
                    eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
                }
                Err(e) => eprintln!("--- no {} ({e}) ---", path.display()),
            }
        }
    }
}

/// `Some(())` when `left` is empty, else an error naming what is left (for [`wait_for`]).
fn none_left(left: &[impl std::fmt::Debug]) -> Result<Option<()>> {
    match left {
        [] => Ok(Some(())),
        _ => bail!("left: {left:?}"),
    }
}

/// Runs a short-lived Windows program; a non-zero exit is an error carrying its output.
fn checked(cmd: &mut Command) -> Result<Output> {
    let out = output_timeout(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{} failed with {}: {}{}",
            util::describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Adds to `found` every file under `dir` whose name satisfies `wanted` (symlinks are not
/// followed: a Wine prefix links into the user's home).
fn find_files(dir: &Path, found: &mut Vec<PathBuf>, wanted: &dyn Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            find_files(&entry.path(), found, wanted);
        } else if kind.is_file() && wanted(&entry.file_name().to_string_lossy()) {
            found.push(entry.path());
        }
    }
}

/// Waits for a `wine` process we started (its Windows program has ended or been killed).
fn reap(mut child: Child) {
    // Best effort: the prefix's wineserver is killed when the prefix is dropped anyway.
    let _ = child.kill();
    let _ = child.wait();
}

fn ok(text: &str) {
    println!("    ok: {text}");
}
