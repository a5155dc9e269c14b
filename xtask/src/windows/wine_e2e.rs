//! `cargo xtask wine-e2e`: the Windows agent end to end under Wine, installed by its own
//! installer and driven against the Linux `cms-server` on loopback. Nothing is faked: the
//! programs are the Windows builds, the registry, the Service Control Manager, named pipe,
//! Credential Manager, DPAPI, processes and file semantics are Wine's implementation of Win32.
//!
//! The scenario, in one throwaway prefix on a private Xvfb display, whose wineserver is kept
//! running (`wineserver -p`) as a machine keeps its services; every step is checked and the
//! first failure ends the run with the logs that explain it:
//!
//! 1. install: `setup.exe /VERYSILENT /ALLUSERS /SERVER=http://127.0.0.1:PORT`, a setup
//!    compiled for this run with the server's TUF root embedded; the service `CMSAgent` runs
//!    `cms_agent.exe --service` as LocalSystem with automatic start (`sc query`: RUNNING; the
//!    registry holds its configuration), no HKLM `Run` value; the agent registers (operator
//!    API: IDLE, online, the `dist/` version); `{app}\root.json` and the agent's
//!    `tuf/pinned-root.json` are the server's root, and agent.log has no trust-on-first-use
//!    line; config.json holds the credential sealed with DPAPI (`"dpapi:..."`, machine scope),
//!    never a bearer token in clear (no run of 64 hex digits), which the agent opens again
//!    after the reboot of step 4.
//! 2. IPC from an elevated console: `cms_agent.exe --status` reaches the service over
//!    `\\.\pipe\cms_agent_system` with the DPAPI-sealed secret (and says it is the service);
//!    a wrong secret sent by a Windows program (the `ipc_request` example of cms-agent) is
//!    refused, and the agent keeps running and logs the refusal.
//! 3. Windows file semantics: overwriting the running exe (`cmd /c copy`) is a sharing
//!    violation, so the update has to go through the updater.
//! 4. a simulated reboot: every Wine process ended (`wineserver -k`), Wine started again: the
//!    service is back without anyone logging on, and the same agent_id is online.
//! 5. the service process killed: restarted by the SCM if Wine carries out recovery actions;
//!    Wine 8 does not (it stores no failure actions and answers QueryServiceConfig2 with
//!    ERROR_INVALID_LEVEL, which `--status` reports), and the lane says so and starts the
//!    service again with `sc start`.
//! 6. `--stop` from the console: the service ends STOPPED with exit code 0 and stays stopped;
//!    meanwhile a program of the user's (the `pipe_squatter` example) serves the service's pipe
//!    first, and `--status` refuses it by name and sends it nothing; `sc start` brings the
//!    service back.
//! 7. update (with a `cmd.exe` planted in `updates\` and every temp folder, which must never
//!    run): release 2.0.0 (Windows builds stamped `CMS_BUILD_VERSION=2.0.0`) published with
//!    `cms-server release publish --platform windows-x86_64`; the service hands over to
//!    `updater.exe`, which starts 2.0.0 through the SCM: a new service process, no `.old`/`.new`,
//!    `updates/` empty, no updater left running or on disk, `current_version` recorded: the
//!    root the installer pinned verified a real release.
//! 8. rollback: release 3.0.0 (downloaded as the signed delta from 2.0.0, rebuilt and verified)
//!    whose agent exits at start (the 2.0.0 `updater.exe`, which
//!    refuses the agent's command line): `update_rolled_back` is reported, 2.0.0 runs again as
//!    the service and never retries 3.0.0.
//! 9. `--force --status-interval 5` from the console: the service stops and the SCM starts it
//!    again with the new setting (still the service; the console process exits 0); the server
//!    still knows one agent.
//! 10. both exes are GUI-subsystem programs (PE header) and `--version` still prints.
//! 11. an upgrade install over the running service stops it through the SCM, leaves the
//!     pinned root alone and starts the new files as the service.
//! 12. uninstall: no service, no `cms_agent.exe` process, no `Run` value, no IPC secret, and
//!     the server sees the agent go offline.
//! 13. per user: `setup.exe /CURRENTUSER`: the HKCU `Run` value starts `cms_agent.exe
//!     --per-user`, the agent registers (its credential sealed, in user scope), is offered the broken 3.0.0 by its first heartbeat's
//!     answer and rolls it back, and answers `--status --per-user` over its own pipe;
//!     uninstall stops it with `--stop` and leaves no process, `Run` value or credential.
//!
//! 14. the network ([`wine_net`], in a prefix of its own): HTTPS and WSS with a throwaway CA
//!     given with `--ca-cert` and an update over HTTPS, the refusal without the CA, tinyproxy
//!     with Basic authentication through `--proxy`, and the machine's WinHTTP proxy setting.
//!     `--network-only` runs just this (it needs no installer, 32-bit Wine or display).
//!
//! Needs `cargo xtask dist` (the installed version is `dist/VERSION` and must be older than
//! 2.0.0). The setup exe is compiled from `dist/` once per run, after the server started (it
//! embeds that server's root), into `target/wine-e2e/setup`, not over `dist/`'s. Builds the
//! Linux `cms-server` in the shared target dir, and the 2.0.0 agent, updater and the
//! `ipc_request` example for Windows in `target/wine-e2e/build` (a target dir of its own: a
//! build stamped 2.0.0 must never replace the binaries other tests run), dev profile without
//! debug info. Without 32-bit Wine or Xvfb it prints `SKIPPED: ...` and exits with 77.
//!
//! Must never: touch anything outside its prefix and `target/` (never `~/.wine`), or call a
//! step passed that it did not see happen.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cms_protocol::{AgentSummary, IpcResponse, IpcStatus, LockRecord};

use crate::build::{self, Stamped, StampedBuild, WINDOWS};
use crate::checks;
use crate::dist_tree;
use crate::flags;
use crate::server::{Release, RunningServer, Server, ServerOutput};
use crate::util::{self, ok, output_timeout, run_checked, step, wait_for};
use crate::version;
use crate::windows::inno;
use crate::windows::setup::{self, APP_DIR, Hive};
use crate::windows::wine::{self, COMMAND_TIMEOUT, VirtualDisplay, WinePrefix, run_windows};
use crate::windows::wine_net;

/// The release the installed agent updates itself to.
const NEW_VERSION: &str = "2.0.0";
/// The release whose agent never becomes healthy.
const BROKEN_VERSION: &str = "3.0.0";

/// The installed agent, as Windows programs see it.
const AGENT_EXE: &str = r"C:\Program Files\CMS Agent\cms_agent.exe";
/// The per-machine storage path (`%PROGRAMDATA%\CMSAgent`), relative to `C:\`.
const DATA_DIR: &str = "ProgramData/CMSAgent";
/// The per-machine agent's service.
const SERVICE: &str = "CMSAgent";
/// How long the scenario gives the SCM to restart a killed service (its first restart delay
/// is 5 s).
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// How long a stopped service is watched for an unwanted restart.
const STAYS_STOPPED: Duration = Duration::from_secs(15);
/// `IMAGE_SUBSYSTEM_WINDOWS_GUI` in a PE optional header.
const GUI_SUBSYSTEM: u16 = 2;

/// How long any one thing the scenario waits for may take under Wine.
const WAIT: Duration = Duration::from_secs(120);

/// A secret that cannot be the agent's: 64 hex digits, all zero.
const WRONG_SECRET: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The agent's pinned TUF root, relative to its data folder.
const PINNED_ROOT: &str = "tuf/pinned-root.json";
/// What the agent logs when it trusts the server's root on first use.
const TOFU_LINE: &str = "pinned the server's TUF root on first use";
/// What the installer logs when it pins the root it embeds.
const PINS_EMBEDDED_ROOT: &str = "Pinning the TUF root shipped with the installer";

/// Marks of the temporary copies `self_replace::self_delete` makes of the updater.
const SELF_DELETE_MARKS: [&str; 2] = [".__selfdelete__.", ".__relocated__."];
/// Prefix of a secret sealed with DPAPI in the agent's config.json.
const SEALED_MARK: &str = "dpapi:";

/// `cargo xtask wine-e2e [--network-only]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let network_only = flags::take_switch(&mut args, "--network-only");
    flags::reject_rest("wine-e2e", &args)?;
    wine::require_wine_host("wine-e2e")?;
    let started = Instant::now();
    let installed = dist_tree::version()?;
    ensure!(
        version::is_older(&installed, NEW_VERSION)?,
        "dist/ holds {installed}; the scenario updates to {NEW_VERSION}, so dist/ must be older \
         (cargo xtask dist --version 1.0.0)"
    );
    dist_tree::require(&WINDOWS).context("run `cargo xtask dist --target windows` first")?;
    if network_only {
        let builds = Builds::make(NEW_VERSION)?;
        wine_net::run(&builds.new)?;
        println!(
            "wine-e2e --network-only: PASSED (HTTPS with --ca-cert and an update over it, no CA \
             refused, --proxy with Basic, the WinHTTP proxy) in {:.0?}",
            started.elapsed()
        );
        return Ok(());
    }
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
    let builds = Builds::make(NEW_VERSION)?;
    let server_dir = e2e_dir().join("server");
    util::remove_dir_if_exists(&server_dir)?;
    let mut server = Server::new(&build::server()?, &server_dir, ServerOutput::Print).start()?;
    let outcome = setup_exe(&installed, &server).and_then(|setup| {
        Scenario {
            prefix: wine::prepare_prefix("wine-e2e")?,
            display: &display,
            server: &server,
            builds: &builds,
            installed: &installed,
        }
        .run(&setup)
    });
    let stopped = server.stop();
    outcome?;
    stopped?;
    wine_net::run(&builds.new)?;
    println!(
        "wine-e2e: PASSED (service install, IPC, reboot, kill, --stop, update {installed} -> \
         {NEW_VERSION}, rollback of {BROKEN_VERSION}, --force, GUI subsystem, upgrade, uninstall, \
         per-user install; HTTPS with a private CA, an update over HTTPS, no CA refused, --proxy \
         with Basic, the WinHTTP proxy) in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// `target/wine-e2e`: this task's builds and server data.
fn e2e_dir() -> PathBuf {
    util::target_dir().join("wine-e2e")
}

/// The setup exe of `dist/` for `version` with `server`'s TUF root embedded, compiled into
/// `target/wine-e2e/setup` (never over the installer in `dist/`).
fn setup_exe(version: &str, server: &RunningServer) -> Result<PathBuf> {
    step("compiling the installer with the server's TUF root embedded");
    let dir = e2e_dir().join("setup");
    util::remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    inno::Setup::from_dist(version)
        .trusted_root(&server.tuf_root())
        .out_dir(&dir)
        .compile()
}

/// The Windows programs the scenario needs beyond `dist/`.
#[derive(Debug)]
struct Builds {
    /// `cms_agent.exe` and `updater.exe` stamped [`NEW_VERSION`].
    new: Stamped,
    /// The `ipc_request` example of cms-agent.
    ipc_request: PathBuf,
    /// The `pipe_squatter` example of cms-agent.
    pipe_squatter: PathBuf,
    /// The `planted` example of cms-agent: leaves a mark if anything starts it.
    planted: PathBuf,
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
            .example("pipe_squatter")
            .example("planted")
            .lean()
            .run()
            .with_context(|| format!("cannot build the Windows {version} programs"))?;
        println!(
            "    built the Windows {version} agent, updater and the ipc_request, pipe_squatter and planted examples in {:.0?}",
            started.elapsed()
        );
        Ok(Builds {
            ipc_request: new.example("ipc_request"),
            pipe_squatter: new.example("pipe_squatter"),
            planted: new.example("planted"),
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
    /// `service: CMSAgent` when the agent that answered is the service.
    service: bool,
    /// The service's recovery actions as the SCM reports them.
    recovery: Option<String>,
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
        self.prefix.persist()?;
        self.install(setup)?;
        self.ipc()?;
        self.running_exe_is_protected()?;
        self.reboot()?;
        self.kill_service_process()?;
        self.stop_from_console()?;
        self.update()?;
        self.roll_back()?;
        self.force()?;
        self.gui_subsystem()?;
        self.upgrade(setup)?;
        self.uninstall()?;
        self.per_user(setup)
    }

    fn install(&self, setup: &Path) -> Result<()> {
        step(&format!(
            "installing {} silently per machine with /SERVER={}",
            setup.display(),
            self.server.url()
        ));
        self.setup(setup, "/ALLUSERS", "setup-install.log")?;
        setup::service_expect(&self.prefix, true)?;
        ok("service CMSAgent: cms_agent.exe --service, LocalSystem, automatic start");
        setup::run_value_expect(&self.prefix, Hive::Machine, false)?;
        ok("no HKLM Run value");
        self.wait_for_service_state("RUNNING")?;
        ok("sc query CMSAgent: RUNNING");
        let agent = self.wait_for_agent(
            &format!("the agent {} online and IDLE", self.installed),
            |a| a.version == self.installed && a.state == "IDLE" && a.online,
        )?;
        ok(&format!(
            "the agent registered: {} on {} ({}), {} IDLE online",
            agent.agent_id, agent.hostname, agent.platform, agent.version
        ));
        expect_sealed_credential(&self.data_dir())?;
        ok("config.json holds the credential sealed with DPAPI (machine scope), no token in clear");
        self.embedded_root_is_pinned()
    }

    /// The installer's `{app}\root.json` is the server's root, `--enable-autostart` pinned it
    /// (`tuf/pinned-root.json` is the same bytes), and the agent did not trust on first use.
    fn embedded_root_is_pinned(&self) -> Result<()> {
        let server_root = self.server.tuf_root();
        let expected = fs::read(&server_root)
            .with_context(|| format!("cannot read {}", server_root.display()))?;
        for path in [
            self.app_dir().join("root.json"),
            self.data_dir().join(PINNED_ROOT),
        ] {
            let found =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            ensure!(
                found == expected,
                "{} is not the server's root",
                path.display()
            );
        }
        ensure!(
            self.setup_log("setup-install.log")
                .contains(PINS_EMBEDDED_ROOT),
            "setup-install.log lacks {PINS_EMBEDDED_ROOT:?}"
        );
        self.expect_no_trust_on_first_use()?;
        ok(&format!(
            "the setup shipped the server's TUF root as root.json and pinned it ({PINNED_ROOT}); \
             no trust on first use"
        ));
        Ok(())
    }

    /// agent.log has no line saying the agent pinned the server's root on first use.
    fn expect_no_trust_on_first_use(&self) -> Result<()> {
        ensure!(
            !self.agent_log().contains(TOFU_LINE),
            "agent.log says the agent {TOFU_LINE}"
        );
        Ok(())
    }

    fn ipc(&self) -> Result<()> {
        step(r"IPC over \\.\pipe\cms_agent_system from the console: --status, then a wrong secret");
        let before = self.status()?;
        let lock = self.lock().context("no agent.lock")?;
        ensure!(
            before.state == "IDLE"
                && before.version == self.installed
                && before.pid == lock.pid
                && before.service,
            "--status said {before:?}; agent.lock says pid {} version {}",
            lock.pid,
            lock.version
        );
        ok(&format!(
            "cms_agent.exe --status reaches the service: {before:?}"
        ));
        ensure!(
            self.data_dir().join("ipc.secret").is_file(),
            "no ipc.secret in the data folder"
        );
        ok("the service's IPC secret is ipc.secret (DPAPI) in the protected data folder");
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
        let out = run_windows(&mut cmd)?;
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

    /// Every Wine process ended, then Wine started again: `services.exe` starts the automatic
    /// service, and the agent comes back with its identity.
    fn reboot(&self) -> Result<()> {
        step("a simulated reboot: wineserver -k, then Wine starts again");
        let before = self.status()?;
        let agent_id = self.the_agent()?.agent_id;
        self.prefix.kill_all()?;
        ensure!(
            self.agent_processes().is_empty(),
            "cms_agent.exe survived wineserver -k"
        );
        self.prefix.persist()?;
        self.wait_for_service_state("RUNNING")?;
        let after = self.wait_for_new_status(&before, "the service back after the reboot")?;
        ensure!(after.service, "after the reboot --status says {after:?}");
        self.wait_for_agent("the same agent online again", |a| {
            a.agent_id == agent_id && a.online
        })?;
        ok(&format!(
            "the service is back (pid {} -> {}) and agent {agent_id} is online, nobody logged on",
            before.pid, after.pid
        ));
        Ok(())
    }

    /// The service process killed: the SCM's recovery actions restart it, if Wine has them.
    fn kill_service_process(&self) -> Result<()> {
        step("the service process killed");
        let before = self.status()?;
        let recovery = before.recovery.clone().unwrap_or_default();
        let processes = self.agent_processes();
        ensure!(
            processes.len() == 1,
            "cms_agent.exe processes: {processes:?}"
        );
        kill9(processes[0])?;
        let restarted = wait_for("the SCM to restart the service", RECOVERY_WAIT, || {
            Ok(self.status().ok().filter(|s| s.pid != before.pid))
        });
        match restarted {
            Ok(after) => ok(&format!(
                "the SCM restarted the service (pid {} -> {}); recovery: {recovery}",
                before.pid, after.pid
            )),
            Err(_) => {
                println!(
                    "    note: Wine's SCM did not restart the killed service within {RECOVERY_WAIT:?}: \
                     Wine 8 does not carry out recovery actions. Read back through \
                     QueryServiceConfig2 (cms_agent --status): {recovery}. On Windows, \
                     `sc qfailure {SERVICE}` shows restart/5000, restart/10000, restart/60000 \
                     and `sc qfailureflag {SERVICE}` shows the non-crash flag TRUE."
                );
                ensure!(
                    recovery.contains("ERROR_INVALID_LEVEL") || recovery.starts_with("restart"),
                    "--status reports the recovery actions as {recovery:?}"
                );
                run_checked(self.prefix.command("sc").args(["start", SERVICE]))?;
                let after = self.wait_for_new_status(&before, "the service started again")?;
                ok(&format!(
                    "sc start {SERVICE}: the service runs again (pid {})",
                    after.pid
                ));
            }
        }
        Ok(())
    }

    /// `--stop` from the console ends the service cleanly, and it stays stopped.
    fn stop_from_console(&self) -> Result<()> {
        step("--stop from the console, then sc start");
        let before = self.status()?;
        let out = run_windows(self.prefix.command(AGENT_EXE).arg("--stop"))?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let state = self.service_state()?;
        ensure!(
            state.state == "STOPPED" && state.exit_code == 0,
            "after --stop: {state:?}"
        );
        ok(&format!("--stop: {said:?}; sc query: STOPPED, exit code 0"));
        let watched = Instant::now();
        self.squatter_is_sent_nothing()?;
        std::thread::sleep(STAYS_STOPPED.saturating_sub(watched.elapsed()));
        let state = self.service_state()?;
        ensure!(
            state.state == "STOPPED",
            "the service came back by itself: {state:?}"
        );
        ensure!(
            self.agent_processes().is_empty(),
            "cms_agent.exe still runs"
        );
        ok(&format!(
            "still STOPPED after {STAYS_STOPPED:?}: recovery did not restart it"
        ));
        run_checked(self.prefix.command("sc").args(["start", SERVICE]))?;
        let after = self.wait_for_new_status(&before, "the service started again")?;
        ensure!(after.service && after.state == "IDLE", "{after:?}");
        ok(&format!(
            "sc start {SERVICE}: running again (pid {})",
            after.pid
        ));
        Ok(())
    }

    /// While the service is stopped, a program of the user's serves `\\.\pipe\cms_agent_system`
    /// first: `--status` names it and sends it nothing (neither the secret nor a byte).
    fn squatter_is_sent_nothing(&self) -> Result<()> {
        let out_file = e2e_dir().join("pipe_squatter.out");
        let mut squatter = self
            .prefix
            .command(&self.builds.pipe_squatter)
            .args(["--wait-secs", "60"])
            .stdout(fs::File::create(&out_file)?)
            .spawn()
            .context("cannot start pipe_squatter")?;
        let said_by_squatter = || fs::read_to_string(&out_file).unwrap_or_default();
        let pid = wait_for("the squatter's pipe", WAIT, || {
            Ok(said_by_squatter()
                .lines()
                .find_map(|line| line.split(" as pid ").nth(1).map(str::to_owned)))
        })?;
        let out = output_timeout(
            self.prefix.command(AGENT_EXE).arg("--status"),
            COMMAND_TIMEOUT,
        )?;
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        ensure!(
            !out.status.success()
                && said.contains("refusing to talk")
                && said.contains(&format!("process {pid} ")),
            "--status against a squatter ({}): {said}",
            out.status
        );
        let finished = wait_for("the squatter to report", WAIT, || Ok(squatter.try_wait()?))?;
        let report = said_by_squatter();
        ensure!(
            finished.success() && report.contains("received 0 bytes"),
            "the squatter ({finished}) says: {report}"
        );
        ok(&format!(
            "a squatter on the stopped service's pipe (pid {pid}) was named and sent 0 bytes: {said:?}"
        ));
        Ok(())
    }

    fn update(&self) -> Result<()> {
        step(&format!(
            "self-update {} -> {NEW_VERSION} of the service",
            self.installed
        ));
        let before = self.status()?;
        self.plant_cmd_exe()?;
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
        for needle in [
            "service recovery suspended",
            "old agent exited",
            "old agent's service stopped",
            "new agent in place",
            "service started",
            "update verified",
            "service recovery restored",
        ] {
            ensure!(updater_log.contains(needle), "updater.log lacks {needle:?}");
        }
        ensure!(
            !updater_log.contains("cannot delete the updater itself"),
            "the updater could not delete itself"
        );
        ok(
            "updater.log: recovery suspended, old service stopped, new one started through the SCM, verified, recovery restored",
        );
        self.expect_no_update_files()?;
        wait_for("the updater's self-delete copies to go", WAIT, || {
            let left = self.self_delete_leftovers();
            none_left(&left)
        })?;
        wait_for("no updater.exe process", WAIT, || {
            none_left(&self.processes_running("updater.exe"))
        })?;
        ok("updater.exe is gone: no process, no self-delete copies under C:\\");
        self.planted_never_ran()?;
        let config = self.config()?;
        ensure!(
            config["current_version"] == NEW_VERSION,
            "config.json current_version is {}",
            config["current_version"]
        );
        ok(&format!("config.json current_version {NEW_VERSION}"));
        self.expect_no_trust_on_first_use()?;
        ok("the update was verified against the root the installer pinned");
        let status = self.status()?;
        ensure!(
            status.version == NEW_VERSION && status.service && status.pid != before.pid,
            "--status says {status:?} (before: {before:?})"
        );
        ensure!(
            self.service_state()?.state == "RUNNING",
            "the service is not RUNNING"
        );
        ok(&format!(
            "{NEW_VERSION} runs as the service in a new process (pid {} -> {})",
            before.pid, status.pid
        ));
        Ok(())
    }

    fn roll_back(&self) -> Result<()> {
        step(&format!(
            "release {BROKEN_VERSION} whose agent exits at start is rolled back to {NEW_VERSION}"
        ));
        let before = self.status()?;
        self.plant_cmd_exe()?;
        self.publish(BROKEN_VERSION, &self.builds.new.updater)?;
        let report = wait_for("an update_rolled_back report", WAIT, || {
            Ok(self
                .server
                .errors()?
                .into_iter()
                .find(|e| e.kind == "update_rolled_back" && e.message.contains(BROKEN_VERSION)))
        })?;
        ok(&format!("reported update_rolled_back: {}", report.message));
        let after = self.wait_for_new_status(&before, &format!("{NEW_VERSION} running again"))?;
        ensure!(
            after.version == NEW_VERSION && after.service,
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
            "{NEW_VERSION} runs again as the service (pid {}); {BROKEN_VERSION} is in rolled_back_versions",
            after.pid
        ));
        // The package came as the signed delta from the running 2.0.0, rebuilt and verified.
        let delta = format!("version={BROKEN_VERSION} step=\"verified\" transfer=Some(Delta)");
        ensure!(
            self.agent_log().contains(&delta),
            "agent.log lacks {delta:?}: the update did not travel as a delta"
        );
        ok(&format!(
            "{BROKEN_VERSION} travelled as a delta from {NEW_VERSION}, rebuilt and verified"
        ));
        self.expect_no_update_files()?;
        self.planted_never_ran()
    }

    /// `--force --status-interval 5` against the service: the service runs again with it.
    fn force(&self) -> Result<()> {
        step("--force --status-interval 5 from the console against the service");
        let old = self.status()?;
        let out = run_windows(self.prefix.command(AGENT_EXE).args([
            "--force",
            "--status-interval",
            "5",
        ]))?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(said.contains("runs again"), "--force printed {said:?}");
        let new = self.wait_for_new_status(&old, "the service to answer again")?;
        ensure!(new.service, "after --force --status says {new:?}");
        let log = self.agent_log();
        for needle in [
            "IDLE -> FORCE_RESTARTING",
            "--force acknowledged by the service",
            "status_secs=5",
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
            "{said:?}: pid {} -> {}, still the service, with the 5 s heartbeat; one agent on the server",
            old.pid, new.pid
        ));
        Ok(())
    }

    /// Both exes are GUI-subsystem programs, and `--version` still prints in a console.
    fn gui_subsystem(&self) -> Result<()> {
        step("no console window: the installed exes are GUI-subsystem programs");
        for name in ["cms_agent.exe", "updater.exe"] {
            let path = self.app_dir().join(name);
            let subsystem = pe_subsystem(&path)?;
            ensure!(
                subsystem == GUI_SUBSYSTEM,
                "{name}: PE subsystem {subsystem}, not {GUI_SUBSYSTEM} (GUI)"
            );
        }
        ok("cms_agent.exe and updater.exe: PE subsystem 2 (Windows GUI)");
        self.expect_exe_version(NEW_VERSION)
    }

    /// The same setup again over the running service: stopped through the SCM, then started.
    fn upgrade(&self, setup: &Path) -> Result<()> {
        step("upgrade install over the running service");
        let before = self.status()?;
        let log = "setup-upgrade.log";
        self.setup(setup, "/ALLUSERS", log)?;
        for needle in [
            "Stopping the service CMSAgent through the SCM",
            "A TUF root is already pinned",
        ] {
            ensure!(
                self.setup_log(log).contains(needle),
                "{log} lacks {needle:?}"
            );
        }
        let after = self.wait_for_new_status(&before, "the upgraded service to answer")?;
        ensure!(
            after.service && after.version == self.installed,
            "{after:?}"
        );
        ok(&format!(
            "stopped through the SCM, files replaced, the pinned root left alone, {} runs as the \
             service (pid {} -> {})",
            after.version, before.pid, after.pid
        ));
        Ok(())
    }

    fn uninstall(&self) -> Result<()> {
        step("uninstall after a reboot (the service auto-started)");
        self.prefix.kill_all()?;
        setup::uninstall(&self.prefix, self.display, &self.app_dir(), &[])?;
        let text = self.setup_log("setup-uninstall.log");
        for needle in [
            "Stopping the service CMSAgent through the SCM",
            "--disable-autostart -> exit code 0",
        ] {
            ensure!(
                text.contains(needle),
                "setup-uninstall.log lacks {needle:?}"
            );
        }
        ok("the uninstaller stopped the service through the SCM, then ran --disable-autostart");
        setup::service_expect(&self.prefix, false)?;
        setup::run_value_expect(&self.prefix, Hive::Machine, false)?;
        ok("no service CMSAgent, no HKLM Run value");
        ensure!(
            !self.data_dir().join("ipc.secret").exists(),
            "ipc.secret is still there"
        );
        ok("no IPC secret; the data folder is kept (no /PURGE)");
        ensure!(
            self.agent_processes().is_empty(),
            "cms_agent.exe still runs"
        );
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

    /// `/CURRENTUSER`: the HKCU `Run` value and a per-user agent, stopped with `--stop`.
    fn per_user(&self, setup: &Path) -> Result<()> {
        step("per-user install: HKCU Run value, the user's agent, --stop at uninstall");
        let known: Vec<String> = self.agents()?.into_iter().map(|a| a.agent_id).collect();
        self.setup(setup, "/CURRENTUSER", "setup-install-user.log")?;
        let run = setup::autostart_value(&self.prefix, Hive::User)?
            .context("no HKCU Run value after a per-user install")?;
        ensure!(run.contains("--per-user"), "the HKCU Run value is {run}");
        setup::service_expect(&self.prefix, false)?;
        ok("HKCU Run value CMSAgent starts cms_agent.exe --per-user; no service");
        let agent = self.wait_for_agent("the per-user agent online and IDLE", |a| {
            !known.contains(&a.agent_id) && a.state == "IDLE" && a.online
        })?;
        let exe = setup::per_user_app_dir(&self.prefix)?.join("cms_agent.exe");
        let windows_exe = self.windows_path_in_prefix(&exe)?;
        // Its first heartbeat is answered with the newest release, the broken 3.0.0, which it
        // tries and rolls back: `--status` finds no agent while the updater has the lock.
        let status = wait_for("--status --per-user to answer IDLE", WAIT, || {
            let status = run_windows(
                self.prefix
                    .command(&windows_exe)
                    .args(["--status", "--per-user"]),
            )
            .and_then(|out| parse_status(&String::from_utf8_lossy(&out.stdout)));
            Ok(status.ok().filter(|status| status.state == "IDLE"))
        })?;
        ensure!(!status.service, "{status:?}");
        let user_data = setup::per_user_data_dir(&self.prefix)?;
        expect_sealed_credential(&user_data)?;
        ensure!(
            setup::user_credential_present(&self.prefix)?,
            "no Credential Manager entry CMSAgent/ipc/user for the per-user agent"
        );
        ok(&format!(
            "agent {} registered, its credential sealed (user scope); --status --per-user \
             answers over the user's pipe (pid {})",
            agent.agent_id, status.pid
        ));
        let app_dir = setup::per_user_app_dir(&self.prefix)?;
        setup::uninstall(&self.prefix, self.display, &app_dir, &[])?;
        ensure!(
            self.setup_log("setup-uninstall.log")
                .contains("--per-user --stop -> exit code 0"),
            "the uninstaller did not stop the agent with --stop"
        );
        setup::run_value_expect(&self.prefix, Hive::User, false)?;
        ensure!(
            !setup::user_credential_present(&self.prefix)?,
            "the Credential Manager entry CMSAgent/ipc/user is still there"
        );
        ok(
            "uninstall: stopped with --stop (exit 0), no HKCU Run value, no credential, Wine wound down",
        );
        Ok(())
    }

    /// `setup.exe /VERYSILENT ... MODE /SERVER=<the server>`, logging to `C:\<log>`.
    fn setup(&self, setup: &Path, mode: &str, log: &str) -> Result<()> {
        setup::install(
            &self.prefix,
            self.display,
            setup,
            mode,
            log,
            self.server.url(),
        )
    }

    /// The setup log `C:\<name>` so far (empty when there is none).
    fn setup_log(&self, name: &str) -> String {
        fs::read_to_string(self.prefix.drive_c().join(name)).unwrap_or_default()
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
        let out = run_windows(self.prefix.command(AGENT_EXE).arg("--status"))?;
        parse_status(&String::from_utf8_lossy(&out.stdout))
    }

    /// Waits until `--status` answers from another process than `before`'s, IDLE.
    fn wait_for_new_status(&self, before: &Status, what: &str) -> Result<Status> {
        wait_for(what, WAIT, || {
            Ok(self
                .status()
                .ok()
                .filter(|s| s.pid != before.pid && s.state == "IDLE"))
        })
    }

    /// The one agent the server knows.
    fn the_agent(&self) -> Result<AgentSummary> {
        match self.agents()?.as_slice() {
            [agent] => Ok(agent.clone()),
            agents => bail!("the server lists {} agents", agents.len()),
        }
    }

    /// `sc query CMSAgent`.
    fn service_state(&self) -> Result<ServiceState> {
        let out = run_windows(self.prefix.command("sc").args(["query", SERVICE]))?;
        parse_sc_query(&String::from_utf8_lossy(&out.stdout))
    }

    fn wait_for_service_state(&self, wanted: &str) -> Result<ServiceState> {
        wait_for(&format!("sc query {SERVICE}: {wanted}"), WAIT, || {
            Ok(self.service_state().ok().filter(|s| s.state == wanted))
        })
    }

    /// The Windows path of a file in the prefix's `C:` drive.
    fn windows_path_in_prefix(&self, path: &Path) -> Result<String> {
        let relative = path
            .strip_prefix(self.prefix.drive_c())
            .with_context(|| format!("{} is not on C:", path.display()))?;
        Ok(format!(r"C:\{}", relative.display()).replace('/', "\\"))
    }

    fn expect_exe_version(&self, version: &str) -> Result<()> {
        let out = run_windows(self.prefix.command(AGENT_EXE).arg("--version"))?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            said == format!("cms_agent {version}"),
            "the installed exe says {said:?}"
        );
        ok(&format!("{AGENT_EXE} --version: {said}"));
        Ok(())
    }

    /// Plants a `cmd.exe` (the `planted` example) where a standard user could, and where a
    /// SYSTEM updater that runs `cmd.exe` by name, or from a copy of itself in a temp folder,
    /// would find it: `updates\` (beside `updater.exe`), `C:\windows\temp` and each user's temp
    /// folder.
    fn plant_cmd_exe(&self) -> Result<()> {
        let drive_c = self.prefix.drive_c();
        let mut folders = vec![
            self.data_dir().join("updates"),
            drive_c.join("windows/temp"),
        ];
        for user in fs::read_dir(drive_c.join("users"))?.flatten() {
            for temp in ["Temp", "AppData/Local/Temp"] {
                folders.push(user.path().join(temp));
            }
        }
        let mut planted = 0;
        for folder in folders.iter().filter(|f| f.is_dir()) {
            fs::copy(&self.builds.planted, folder.join("cmd.exe"))
                .with_context(|| format!("cannot plant cmd.exe in {}", folder.display()))?;
            planted += 1;
        }
        ensure!(
            planted >= 2,
            "found no temp folder to plant in: {folders:?}"
        );
        ok(&format!(
            "planted cmd.exe in {planted} folders (updates\\ and the temp folders)"
        ));
        Ok(())
    }

    /// Nothing ran a planted program during the update or the rollback.
    fn planted_never_ran(&self) -> Result<()> {
        let mark = self.prefix.drive_c().join("cms-planted-ran.txt");
        ensure!(
            !mark.exists(),
            "a planted program ran as the service's updater: {}",
            fs::read_to_string(&mark).unwrap_or_default()
        );
        ok("no planted cmd.exe ran");
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
        self.processes_running(AGENT_EXE)
    }

    /// Linux PIDs of the processes of this prefix whose Windows program is `exe` (a full path,
    /// or a file name matched at the end of the program's path).
    fn processes_running(&self, exe: &str) -> Vec<u32> {
        let wineprefix = format!("WINEPREFIX={}", self.prefix.dir().display());
        let exe = exe.to_lowercase();
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
                let program = cmdline
                    .trim_start_matches('"')
                    .split(['"', '\0'])
                    .next()
                    .unwrap_or_default()
                    .split(".exe")
                    .next()
                    .map(|p| format!("{}.exe", p.trim()))
                    .unwrap_or_default();
                (program == exe || program.ends_with(&format!("\\{exe}")))
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
            drive_c.join("setup-upgrade.log"),
            drive_c.join("setup-uninstall.log"),
            drive_c.join("setup-install-user.log"),
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
/// The agent's config.json in `data` holds its credential sealed with DPAPI (`"dpapi:..."`)
/// and no bearer token in clear: no run of 64 hex digits anywhere (what a credential or an
/// enrollment token in clear looks like). Never prints the file: it holds secrets.
fn expect_sealed_credential(data: &Path) -> Result<()> {
    let path = data.join("config.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let token = config["credentials"]["agent_token"]
        .as_str()
        .with_context(|| format!("{} has no credentials.agent_token", path.display()))?;
    ensure!(
        token.starts_with(SEALED_MARK) && token.len() > SEALED_MARK.len() + 64,
        "{}: credentials.agent_token is not sealed with DPAPI ({} characters, does not start \
         with {SEALED_MARK:?})",
        path.display(),
        token.len()
    );
    ensure!(
        !has_hex_run(&text, 64),
        "{} holds a run of 64 hex digits: a token in clear",
        path.display()
    );
    Ok(())
}

/// Whether `text` has `len` hex digits in a row.
fn has_hex_run(text: &str, len: usize) -> bool {
    let mut run = 0;
    text.bytes().any(|b| {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        run >= len
    })
}

fn none_left(left: &[impl std::fmt::Debug]) -> Result<Option<()>> {
    match left {
        [] => Ok(Some(())),
        _ => bail!("left: {left:?}"),
    }
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

/// What `sc query` says about a service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceState {
    /// `RUNNING`, `STOPPED`, ...
    state: String,
    /// `SERVICE_EXIT_CODE` when `WIN32_EXIT_CODE` is 1066 (service-specific), else the
    /// Win32 code.
    exit_code: u32,
}

fn parse_sc_query(text: &str) -> Result<ServiceState> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.trim().strip_prefix(':'))
            .map(str::trim)
            .with_context(|| format!("sc query printed no {name}: {text:?}"))
    };
    let state = field("STATE")?
        .split_whitespace()
        .nth(1)
        .context("sc query's STATE has no name")?
        .to_owned();
    let number = |name| -> Result<u32> {
        let value = field(name)?;
        let digits = value.split_whitespace().next().unwrap_or_default();
        digits
            .parse()
            .with_context(|| format!("sc query's {name} is {value:?}"))
    };
    let win32 = number("WIN32_EXIT_CODE")?;
    let exit_code = if win32 == 1066 {
        number("SERVICE_EXIT_CODE")?
    } else {
        win32
    };
    Ok(ServiceState { state, exit_code })
}

/// What `cms_agent --status` printed, parsed.
fn parse_status(text: &str) -> Result<Status> {
    let line = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    let field =
        |name: &str| line(name).with_context(|| format!("--status printed no {name}: {text:?}"));
    Ok(Status {
        state: field("state")?,
        version: field("version")?,
        pid: field("pid")?
            .parse()
            .context("--status printed a bad pid")?,
        service: line("service").as_deref() == Some(SERVICE),
        recovery: line("recovery"),
    })
}

/// The `Subsystem` field of the PE optional header of `path`.
fn pe_subsystem(path: &Path) -> Result<u16> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let pe = u32_at(0x3c).context("no DOS header")? as usize;
    ensure!(
        bytes.get(pe..pe + 4) == Some(b"PE\0\0".as_slice()),
        "{} is not a PE file",
        path.display()
    );
    // The optional header follows the 4-byte signature and the 20-byte COFF header; its
    // Subsystem field is at offset 68 in both PE32 and PE32+.
    let at = pe + 4 + 20 + 68;
    let field = bytes.get(at..at + 2).context("truncated optional header")?;
    Ok(u16::from_le_bytes([field[0], field[1]]))
}

/// SIGKILL to a Linux process (a Wine program): no cleanup, no stop control.
fn kill9(pid: u32) -> Result<()> {
    run_checked(Command::new("kill").args(["-KILL", &pid.to_string()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_clear_is_a_run_of_64_hex_digits() {
        let token = "ab".repeat(32);
        assert!(has_hex_run(&format!(r#"{{"agent_token":"{token}"}}"#), 64));
        assert!(!has_hex_run(&format!(r#"{{"t":"{}"}}"#, &token[..63]), 64));
        let uuid = "\"agent_id\":\"0b6f3c1e-4d2a-4f6b-9c1d-2e3f4a5b6c7d\"";
        assert!(!has_hex_run(uuid, 64));
    }

    #[test]
    fn sc_query_and_status_output_are_read() -> Result<()> {
        let sc = "SERVICE_NAME: CMSAgent\n        TYPE               : 10  WIN32_OWN_PROCESS\n        \
            STATE              : 1  STOPPED\n        WIN32_EXIT_CODE    : 1066  (0x42a)\n        \
            SERVICE_EXIT_CODE  : 2  (0x2)\n";
        let state = parse_sc_query(sc)?;
        assert_eq!(state.state, "STOPPED");
        assert_eq!(state.exit_code, 2);
        let status =
            parse_status("state: IDLE\nversion: 2.0.0\npid: 42\nservice: CMSAgent\nrecovery: x\n")?;
        assert!(status.service);
        assert_eq!(status.pid, 42);
        assert_eq!(status.recovery.as_deref(), Some("x"));
        assert!(!parse_status("state: IDLE\nversion: 1\npid: 7\n")?.service);
        Ok(())
    }
}
