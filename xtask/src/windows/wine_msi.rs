//! `cargo xtask wine-msi`: the MSI package under Wine, whose `msiexec` is Wine's
//! implementation of Windows Installer (sequences, conditions, deferred custom actions, the
//! Service Control Manager, major upgrades), against the Linux `cms-server` on loopback.
//!
//! Two packages are built from `dist/`'s Windows programs into `target/wine-msi/`: one of
//! `dist/VERSION` and one of the next major version (the same programs: what is tested is the
//! package's upgrade, the agent's own updates are `wine-e2e`'s). The server requires an
//! enrollment token, which is given only as the `ENROLLMENTTOKEN` property. In one throwaway
//! prefix whose wineserver is kept running (`wineserver -p`, as a machine keeps its services):
//!
//! 1. over an Inno Setup install (its uninstall key, planted): `msiexec /i` refuses, exit 1603,
//!    and the log carries the message that says what to do;
//! 2. `msiexec /i ... /qn SERVER=... ENROLLMENTTOKEN=... METERED=yes`: the service `CMSAgent`
//!    runs `cms_agent.exe --service` (LocalSystem, automatic start), the agent registers with
//!    the token, `--status` answers from the service and shows `metered: yes`; the token is in no line of the MSI log but
//!    Wine's closing property dump (Wine ignores MsiHiddenProperties there, Windows does not);
//!    a newer release published and pushed is logged and not started (the MSI updates it);
//! 3. the newer package over it: one product, the newer version, the service running again and
//!    the same agent id online;
//! 4. a repair (`REINSTALL=ALL REINSTALLMODE=amus`, as `/fa`): a damaged file restored, the service running again;
//! 5. `msiexec /x`: no service, no program files, no IPC secret; the data folder is kept; a
//!    reinstall comes back with the same identity;
//! 6. Group Policy: `ServerUrl` set in `HKLM\SOFTWARE\Policies\CMSAgent` while the service is
//!    stopped (`sc stop`, `wine reg add`, `sc start`): the agent registers with that server and
//!    `--status` shows the value as policy; then, while it runs, `ServerUrl` changed to a third
//!    server and a bad `Group` added: "policy changed" is logged, the agent restarts itself in
//!    the service process onto the third server, the bad value is logged and shown as ignored;
//! 7. `msiexec /x REMOVEDATA=1` removes the data folder.
//!
//! Needs no display and no 32-bit Wine (msiexec and the agent are 64-bit programs).
//!
//! Must never: touch anything outside its prefix and `target/` (never `~/.wine`), or call a
//! step passed that it did not see happen.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cms_protocol::AgentSummary;

use crate::build::{self, WINDOWS};
use crate::dist_tree;
use crate::flags;
use crate::server::{Release, RunningServer, Server, ServerOutput};
use crate::util::{self, ok, output_timeout, step, wait_for};
use crate::version;
use crate::windows::setup::{self, APP_DIR};
use crate::windows::wine::{self, WinePrefix, run_windows};
use crate::windows::wixl;

/// The installed agent, as Windows programs see it.
const AGENT_EXE: &str = r"C:\Program Files\CMS Agent\cms_agent.exe";
/// The per-machine storage path (`%PROGRAMDATA%\CMSAgent`), relative to `C:\`.
const DATA_DIR: &str = "ProgramData/CMSAgent";
/// The per-machine agent's service.
const SERVICE: &str = "CMSAgent";
/// The machine's policy for the agent.
const POLICY_KEY: &str = r"HKLM\SOFTWARE\Policies\CMSAgent";
/// What the agent logs when the policy changes under it.
const POLICY_CHANGED: &str = "policy changed";
/// The release offered to the MSI-installed agent, which must not take it.
const OFFERED: &str = "9.0.0";
/// What the agent logs when it leaves an offered update to the MSI.
const LEFT_TO_MSI: &str = "update offered but not started: installed by the MSI";
/// The Inno Setup installer's uninstall key (its AppId, `installer.iss`).
const INNO_KEY: &str = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\{D1C8D198-37BA-40D3-874D-19DD92FF86D8}_is1";
/// Where Windows Installer lists installed products.
const UNINSTALL_KEY: &str = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall";
/// `ERROR_INSTALL_FAILURE`: what msiexec exits with when a launch condition refuses.
const INSTALL_FAILURE: i32 = 1603;
/// The lines of Wine's closing property dump that may hold the token (Wine ignores
/// MsiHiddenProperties there).
const WINE_PROPERTY_DUMP: [&str; 2] = [
    "Property(S): ENROLLMENTTOKEN = ",
    "Property(S): TOKENARG = ",
];
/// How long one msiexec run may take under Wine.
const MSIEXEC_TIMEOUT: Duration = Duration::from_secs(300);
/// How long any one thing the scenario waits for may take under Wine.
const WAIT: Duration = Duration::from_secs(120);

/// `cargo xtask wine-msi` (no options).
pub fn run(args: &[String]) -> Result<()> {
    flags::reject_rest("wine-msi", args)?;
    wine::require_wine_host("wine-msi")?;
    wixl::require_tools()?;
    let started = Instant::now();
    dist_tree::require(&WINDOWS).context("run `cargo xtask dist --target windows` first")?;
    let versions = Versions::of_dist()?;
    let dir = util::target_dir().join("wine-msi");
    util::remove_dir_if_exists(&dir)?;
    let packages = Packages::build(&dir, &versions)?;
    let token = util::random_hex()?;
    let mut server = Server::new(&build::server()?, &dir.join("server"), ServerOutput::Print)
        .with_serve_args(&["--enrollment-token", &token])
        .start()?;
    let outcome = wine::prepare_prefix("wine-msi").and_then(|prefix| {
        Scenario {
            prefix,
            server: &server,
            packages: &packages,
            versions: &versions,
            token: &token,
        }
        .run()
    });
    let stopped = server.stop();
    outcome?;
    stopped?;
    println!(
        "wine-msi: PASSED (refused over Inno Setup, install with SERVER and ENROLLMENTTOKEN, \
         --status, upgrade {} -> {} with the same identity, repair, uninstall keeping the data, \
         no self-update, Group Policy ServerUrl at start and live, a bad value ignored, \
         REMOVEDATA=1) in {:.0?}",
        versions.old,
        versions.new,
        started.elapsed()
    );
    Ok(())
}

/// The installed version and the one the upgrade installs.
#[derive(Debug)]
struct Versions {
    old: String,
    new: String,
}

impl Versions {
    fn of_dist() -> Result<Self> {
        let old = dist_tree::version()?;
        let new = version::next_major(&old)?;
        Ok(Versions { old, new })
    }
}

/// The two packages of the run.
#[derive(Debug)]
struct Packages {
    old: PathBuf,
    new: PathBuf,
}

impl Packages {
    fn build(dir: &Path, versions: &Versions) -> Result<Self> {
        step("building the MSI packages from dist/ with wixl");
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let agent = dist_tree::binary(&WINDOWS, "cms_agent");
        let updater = dist_tree::binary(&WINDOWS, "updater");
        let one = |v: &str| wixl::build(v, &agent, &updater, &dir.join(wixl::file_name(v)));
        Ok(Packages {
            old: one(&versions.old)?,
            new: one(&versions.new)?,
        })
    }
}

/// One run of the scenario on one Wine prefix.
struct Scenario<'a> {
    prefix: WinePrefix,
    server: &'a RunningServer,
    packages: &'a Packages,
    versions: &'a Versions,
    token: &'a str,
}

impl Scenario<'_> {
    /// All steps in order; on failure, the logs that explain it are printed.
    fn run(&self) -> Result<()> {
        let result = self.steps();
        if result.is_err() {
            self.print_logs();
        }
        result
    }

    fn steps(&self) -> Result<()> {
        self.prefix.persist()?;
        self.refused_over_inno()?;
        let agent = self.install()?;
        self.no_self_update(&agent)?;
        self.upgrade(&agent)?;
        self.repair(&agent)?;
        self.uninstall_keeps_data()?;
        self.reinstall(&agent)?;
        self.policy_at_start()?;
        self.policy_live()?;
        self.remove_data()
    }

    fn refused_over_inno(&self) -> Result<()> {
        step("msiexec /i over an Inno Setup install (its uninstall key) must refuse");
        let data = r"C:\Program Files\CMS Agent\unins000.exe";
        setup::reg_add(&self.prefix, INNO_KEY, "UninstallString", data)?;
        let out = self.msiexec(
            &["/i", &self.windows(&self.packages.old)?],
            "msi-inno.log",
            &[],
        )?;
        // A Unix exit status keeps the low byte of Windows' 1603.
        ensure!(
            out.status.code() == Some(INSTALL_FAILURE & 0xff),
            "msiexec over the Inno install ended {}",
            out.status
        );
        let log = self.log("msi-inno.log");
        for needle in [
            "Property: INNOINSTALL, Signature: InnoUninstallKey",
            "LaunchConditions. Return value 0",
        ] {
            ensure!(log.contains(needle), "msi-inno.log lacks {needle:?}");
        }
        ensure!(
            !self.app_dir().join("cms_agent.exe").exists(),
            "it installed anyway"
        );
        setup::reg_delete_key(&self.prefix, INNO_KEY)?;
        // Wine's msiexec does not log the launch condition's message; the table test checks it.
        ok("refused by the launch condition (exit 1603) before anything was installed");
        Ok(())
    }

    fn install(&self) -> Result<AgentSummary> {
        step(&format!(
            "msiexec /i {} /qn SERVER={} ENROLLMENTTOKEN=... METERED=yes",
            self.packages.old.display(),
            self.server.url()
        ));
        let server = format!("SERVER={}", self.server.url());
        let token = format!("ENROLLMENTTOKEN={}", self.token);
        self.msiexec_ok(
            &self.packages.old,
            "msi-install.log",
            &[&server, &token, "METERED=yes"],
        )?;
        setup::service_expect(&self.prefix, true)?;
        ok("service CMSAgent: cms_agent.exe --service, LocalSystem, automatic start");
        let agent = self
            .server
            .wait_for_agent("the agent online and IDLE", WAIT, |a| {
                a.online && a.state == "IDLE"
            })?;
        ok(&format!(
            "the agent registered with the token: {} ({})",
            agent.agent_id, agent.version
        ));
        let status = self.status()?;
        ensure!(status.contains("service: CMSAgent"), "--status: {status}");
        ok("cms_agent.exe --status answers from the service");
        let metered = status
            .lines()
            .find(|line| line.starts_with("metered: yes (detected: "))
            .with_context(|| format!("METERED=yes not saved; --status: {status}"))?;
        ok(&format!("METERED=yes reached the agent: {metered:?}"));
        ensure!(
            self.app_dir().join(wixl::MARKER).is_file(),
            "no {} installed",
            wixl::MARKER
        );
        self.token_not_logged("msi-install.log")?;
        Ok(agent)
    }

    /// A newer release published and pushed: the MSI-installed agent logs the offer and does
    /// not start it (the MSI updates it); `--status` says so.
    fn no_self_update(&self, agent: &AgentSummary) -> Result<()> {
        step(&format!(
            "release {OFFERED} published and pushed: the MSI install does not update itself"
        ));
        self.server.publish(&Release {
            version: OFFERED,
            platform: Some(WINDOWS.name),
            agent: &dist_tree::binary(&WINDOWS, "cms_agent"),
            updater: &dist_tree::binary(&WINDOWS, "updater"),
        })?;
        self.server.push_update_check(&agent.agent_id)?;
        wait_for("the offer refused in agent.log", WAIT, || {
            Ok(self.agent_log().contains(LEFT_TO_MSI).then_some(()))
        })?;
        let status = self.status()?;
        ensure!(
            status.contains("updates: left to the MSI"),
            "--status: {status}"
        );
        ensure!(
            !self.data_dir().join("updates/update-journal.json").exists(),
            "an update was started"
        );
        ok(&format!(
            "offered {OFFERED}, logged {LEFT_TO_MSI:?}, no update started; --status says so"
        ));
        Ok(())
    }

    /// The enrollment token is in no line of the MSI log but Wine's closing dump of the
    /// properties, which ignores MsiHiddenProperties (Windows prints `**********` there; a
    /// manual check, docs/DEPLOYMENT.md): not in the custom action's command line (HideTarget).
    fn token_not_logged(&self, log: &str) -> Result<()> {
        let text = self.log(log);
        ensure!(
            text.contains("EnableAutostart"),
            "{log} does not show the custom action"
        );
        let leaks: Vec<&str> = text
            .lines()
            .filter(|line| line.contains(self.token))
            .filter(|line| !WINE_PROPERTY_DUMP.iter().any(|p| line.starts_with(p)))
            .collect();
        ensure!(
            leaks.is_empty(),
            "{log} holds the enrollment token: {leaks:?}"
        );
        ok(&format!(
            "{log}: the token only in Wine's property dump (which ignores MsiHiddenProperties)"
        ));
        Ok(())
    }

    fn upgrade(&self, before: &AgentSummary) -> Result<()> {
        step(&format!(
            "major upgrade: msiexec /i {} /qn over {}",
            self.packages.new.display(),
            self.versions.old
        ));
        let lock_before = self.lock_pid();
        self.msiexec_ok(&self.packages.new, "msi-upgrade.log", &[])?;
        let products = self.products()?;
        ensure!(
            products == [self.versions.new.clone()],
            "installed CMS Agent products: {products:?}"
        );
        ok(&format!("one product, version {}", self.versions.new));
        setup::service_expect(&self.prefix, true)?;
        wait_for("a new service process to answer --status", WAIT, || {
            let pid = self.lock_pid();
            Ok((pid.is_some() && pid != lock_before && self.status().is_ok()).then_some(()))
        })?;
        self.server
            .wait_for_agent("the same agent online again", WAIT, |a| {
                a.agent_id == before.agent_id && a.online
            })?;
        let agents = self.server.agents()?;
        ensure!(
            agents.len() == 1,
            "the server lists {} agents",
            agents.len()
        );
        ok(&format!(
            "the service runs again (new process), the same agent {} is online",
            before.agent_id
        ));
        Ok(())
    }

    /// A repair (`/fa`, spelled as properties): every file reinstalled, the service running
    /// again, the same agent.
    fn repair(&self, before: &AgentSummary) -> Result<()> {
        step("repair: msiexec /i ... REINSTALL=ALL REINSTALLMODE=amus (what /fa does)");
        fs::write(self.app_dir().join(wixl::MARKER), b"")?;
        let lock_before = self.lock_pid();
        // `msiexec /fa` answers 1605 (unknown product) under Wine 8 for a per-machine product;
        // the same repair spelled as properties works on both.
        let mut cmd = self.prefix.command("msiexec");
        cmd.arg("/i")
            .arg(self.windows(&self.packages.new)?)
            .args(["REINSTALL=ALL", "REINSTALLMODE=amus", "/qn", "/l*v"])
            .arg(r"C:\msi-repair.log");
        let out = output_timeout(&mut cmd, MSIEXEC_TIMEOUT)?;
        ensure!(out.status.success(), "the repair ended {}", out.status);
        util::require_file(&self.app_dir().join(wixl::MARKER))?;
        wait_for(
            "the service to answer --status after the repair",
            WAIT,
            || {
                let pid = self.lock_pid();
                Ok((pid.is_some() && pid != lock_before && self.status().is_ok()).then_some(()))
            },
        )?;
        self.server
            .wait_for_agent("the same agent online", WAIT, |a| {
                a.agent_id == before.agent_id && a.online
            })?;
        ok("the emptied marker file restored, the service started again, the same agent online");
        Ok(())
    }

    fn uninstall_keeps_data(&self) -> Result<()> {
        step("msiexec /x: no service, no program files, no IPC secret; the data folder kept");
        self.msiexec_ok(&self.packages.new, "msi-uninstall.log", &["/x"])?;
        self.expect_removed()?;
        for kept in ["config.json", "logs/agent.log"] {
            util::require_file(&self.data_dir().join(kept))?;
        }
        ok("the data folder is kept (config.json, logs)");
        Ok(())
    }

    /// The service, the programs, the product and the IPC secret are gone.
    fn expect_removed(&self) -> Result<()> {
        setup::service_expect(&self.prefix, false)?;
        for name in ["cms_agent.exe", "updater.exe", wixl::MARKER] {
            ensure!(
                !self.app_dir().join(name).exists(),
                "{name} is still installed"
            );
        }
        ensure!(
            !self.data_dir().join("ipc.secret").exists(),
            "ipc.secret is still there"
        );
        ensure!(
            self.products()?.is_empty(),
            "the product is still registered"
        );
        ok("no service, no program files, no IPC secret, no product");
        Ok(())
    }

    fn reinstall(&self, before: &AgentSummary) -> Result<()> {
        step("reinstall without SERVER or token: the kept identity");
        self.msiexec_ok(&self.packages.old, "msi-reinstall.log", &[])?;
        self.server
            .wait_for_agent("the same agent online again", WAIT, |a| {
                a.agent_id == before.agent_id && a.online
            })?;
        ok("reinstalled without SERVER or token: the kept identity and settings are used");
        Ok(())
    }

    /// Policy `ServerUrl` set while the service is stopped: started again, the agent moves to
    /// that server, and `--status` shows the value as policy.
    fn policy_at_start(&self) -> Result<()> {
        step(
            "Group Policy: ServerUrl set in HKLM\\SOFTWARE\\Policies\\CMSAgent, service restarted",
        );
        let mut other = self.open_server("server-policy")?;
        let outcome = self.policy_at_start_with(&other);
        let stopped = other.stop();
        outcome.and(stopped)
    }

    fn policy_at_start_with(&self, other: &RunningServer) -> Result<()> {
        self.sc(&["stop", SERVICE])?;
        self.wait_service_state("STOPPED")?;
        setup::reg_add(&self.prefix, POLICY_KEY, "ServerUrl", other.url())?;
        self.sc(&["start", SERVICE])?;
        let agent = other.wait_for_agent("the agent on the policy's server", WAIT, |a| a.online)?;
        ok(&format!(
            "the agent registered with the policy's server as {}",
            agent.agent_id
        ));
        let status = self.status()?;
        let shown = format!("policy: ServerUrl = {}", other.url());
        ensure!(
            status.contains(&shown),
            "--status lacks {shown:?}: {status}"
        );
        ok("--status shows ServerUrl as a Group Policy value");
        Ok(())
    }

    /// Policy changed while the agent runs: "policy changed" in its log, the agent restarts
    /// itself in the service process and moves to the new server; a bad value beside it is
    /// ignored and shown as such.
    fn policy_live(&self) -> Result<()> {
        step(
            "Group Policy changed while the service runs: ServerUrl to a third server, a bad Group",
        );
        let mut third = self.open_server("server-live")?;
        let outcome = self.policy_live_with(&third);
        let stopped = third.stop();
        outcome.and(stopped)
    }

    fn policy_live_with(&self, third: &RunningServer) -> Result<()> {
        let before = self.agent_log().matches(POLICY_CHANGED).count();
        setup::reg_add(&self.prefix, POLICY_KEY, "Group", "not a group!")?;
        setup::reg_add(&self.prefix, POLICY_KEY, "ServerUrl", third.url())?;
        let agent = third.wait_for_agent("the agent on the third server", WAIT, |a| a.online)?;
        let log = self.agent_log();
        ensure!(
            log.matches(POLICY_CHANGED).count() > before,
            "agent.log lacks {POLICY_CHANGED:?}"
        );
        ensure!(
            log.contains("policy value ignored"),
            "agent.log lacks the ignored Group"
        );
        let status = self.status()?;
        ensure!(
            status.contains("policy ignored: Group"),
            "--status: {status}"
        );
        ok(&format!(
            "{POLICY_CHANGED:?} logged, the agent restarted itself onto the third server ({}); the bad Group is logged and shown as ignored",
            agent.agent_id
        ));
        setup::reg_delete_key(&self.prefix, POLICY_KEY)
    }

    /// A server that lets agents register without a token, in `target/wine-msi/<name>`.
    fn open_server(&self, name: &str) -> Result<RunningServer> {
        let dir = util::target_dir().join("wine-msi").join(name);
        Server::new(&build::server()?, &dir, ServerOutput::Print).start()
    }

    fn remove_data(&self) -> Result<()> {
        step("msiexec /x REMOVEDATA=1");
        self.msiexec_ok(&self.packages.old, "msi-purge.log", &["/x", "REMOVEDATA=1"])?;
        self.expect_removed()?;
        ensure!(
            !self.data_dir().exists(),
            "REMOVEDATA=1 left {}",
            self.data_dir().display()
        );
        ok("REMOVEDATA=1 removed the data folder");
        Ok(())
    }

    /// `sc ARGS`, which must succeed.
    fn sc(&self, args: &[&str]) -> Result<()> {
        run_windows(self.prefix.command("sc").args(args)).map(drop)
    }

    /// Waits until `sc query CMSAgent` says `state`.
    fn wait_service_state(&self, state: &str) -> Result<()> {
        wait_for(&format!("sc query {SERVICE}: {state}"), WAIT, || {
            let out = run_windows(self.prefix.command("sc").args(["query", SERVICE]))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text
                .lines()
                .any(|l| l.contains("STATE") && l.contains(state))
                .then_some(()))
        })
    }

    fn agent_log(&self) -> String {
        read_log(&self.data_dir().join("logs/agent.log"))
    }

    /// `msiexec <args> /qn /l*v C:\<log> <properties>`, whatever its exit code.
    fn msiexec(&self, args: &[&str], log: &str, properties: &[&str]) -> Result<Output> {
        let mut cmd = self.prefix.command("msiexec");
        cmd.args(args)
            .args(["/qn", "/l*v"])
            .arg(format!(r"C:\{log}"))
            .args(properties);
        output_timeout(&mut cmd, MSIEXEC_TIMEOUT)
    }

    /// `msiexec /i PACKAGE` (or `/x` when `extra` starts with it), which must succeed.
    fn msiexec_ok(&self, package: &Path, log: &str, extra: &[&str]) -> Result<()> {
        let (mode, properties) = match extra.first() {
            Some(&"/x") => ("/x", &extra[1..]),
            _ => ("/i", extra),
        };
        let out = self.msiexec(&[mode, &self.windows(package)?], log, properties)?;
        if !out.status.success() {
            bail!(
                "msiexec {mode} {} ended {}\n{}",
                package.display(),
                out.status,
                tail(&self.log(log), 60)
            );
        }
        Ok(())
    }

    /// The DisplayVersion of every installed product named CMS Agent.
    fn products(&self) -> Result<Vec<String>> {
        let listing = setup::reg_query(&self.prefix, &[UNINSTALL_KEY, "/s"])?.unwrap_or_default();
        Ok(listing
            .split("\nHKEY_")
            .filter(|key| key.contains("REG_SZ    CMS Agent"))
            .filter_map(|key| {
                key.lines()
                    .find_map(|l| l.trim().strip_prefix("DisplayVersion"))
                    .and_then(|rest| rest.split("REG_SZ").nth(1))
                    .map(|v| v.trim().to_owned())
            })
            .collect())
    }

    /// `cms_agent.exe --status`'s output; an error when no agent answers.
    fn status(&self) -> Result<String> {
        let out = run_windows(self.prefix.command(AGENT_EXE).arg("--status"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pid in the agent's lock file, when there is one.
    fn lock_pid(&self) -> Option<u32> {
        let bytes = fs::read(self.data_dir().join("agent.lock")).ok()?;
        let record: cms_protocol::LockRecord = serde_json::from_slice(&bytes).ok()?;
        Some(record.pid)
    }

    /// The Windows path of a file outside the prefix (through drive Z:).
    fn windows(&self, path: &Path) -> Result<String> {
        Ok(wine::windows_path(path))
    }

    fn app_dir(&self) -> PathBuf {
        self.prefix.drive_c().join(APP_DIR)
    }

    fn data_dir(&self) -> PathBuf {
        self.prefix.drive_c().join(DATA_DIR)
    }

    /// The MSI log `C:\<name>` (UTF-16 or 8-bit, as msiexec wrote it), empty when missing.
    fn log(&self, name: &str) -> String {
        read_log(&self.prefix.drive_c().join(name))
    }

    /// The end of every log that can explain a failure.
    fn print_logs(&self) {
        let drive_c = self.prefix.drive_c();
        let mut logs = vec![self.data_dir().join("logs/agent.log")];
        for name in ["msi-inno.log", "msi-install.log", "msi-upgrade.log"] {
            logs.push(drive_c.join(name));
        }
        for name in [
            "msi-repair.log",
            "msi-uninstall.log",
            "msi-reinstall.log",
            "msi-purge.log",
        ] {
            logs.push(drive_c.join(name));
        }
        for path in logs {
            eprintln!("--- last lines of {} ---", path.display());
            eprintln!("{}", tail(&read_log(&path), 40));
        }
    }
}

/// A log file as text: msiexec writes UTF-16LE on Windows and may under Wine.
fn read_log(path: &Path) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    if bytes.starts_with(&[0xff, 0xfe]) {
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
