//! `cargo xtask demo`: the main job, end to end, on this machine.
//!
//! Builds agent 1.0.0 and 2.0.0 (`CMS_BUILD_VERSION`), starts `cms-server` on its embedded
//! SQLite default (a fresh data dir under `target/demo/`), installs and runs agent 1.0.0 against
//! it, shows it registered and heartbeating through the operator API, pushes an
//! `agent:update_required` over its WebSocket, publishes release 2.0.0 and watches the agent
//! replace itself, then stops the agent and the server politely. Every step is checked; a step
//! that does not happen fails the demo with what was expected.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cms_protocol::{AgentSummary, LockRecord};

use crate::util::{project_root, run_checked};

const WAIT: Duration = Duration::from_secs(60);

/// Runs the demo; no options.
pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("demo takes no options (got {arg:?})");
    }
    let root = project_root();
    let demo_dir = target_dir(&root).join("demo");
    if demo_dir.exists() {
        std::fs::remove_dir_all(&demo_dir)
            .with_context(|| format!("cannot clean {}", demo_dir.display()))?;
    }
    run_checked(
        Command::new(cargo())
            .current_dir(&root)
            .args(["build", "-p", "cms-server"]),
    )?;
    let v1 = build_version(&root, "1.0.0", &demo_dir)?;
    let v2 = build_version(&root, "2.0.0", &demo_dir)?;
    let install = demo_dir.join("install");
    std::fs::create_dir_all(&install)?;
    std::fs::copy(v1.join(exe("cms_agent")), install.join(exe("cms_agent")))?;
    let demo = Demo {
        bin: target_dir(&root).join("debug"),
        server_dir: demo_dir.join("server"),
        data: demo_dir.join("agent"),
        install,
        v2,
    };
    let mut server = start_server(&demo.bin, &demo.server_dir)?;
    let outcome = demo.run_agent(&server.url);
    stop_server(&mut server.child)?;
    outcome?;
    step(
        "done: the agent registered, heartbeated, took a push, updated itself to 2.0.0 and stopped cleanly",
    );
    Ok(())
}

/// Builds agent and updater stamped `version` into `demo_dir/build-<version>/`.
fn build_version(root: &Path, version: &str, demo_dir: &Path) -> Result<PathBuf> {
    step(&format!(
        "building cms_agent and updater {version} (CMS_BUILD_VERSION={version})"
    ));
    let target = target_dir(root).join("demo-build");
    run_checked(
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "-p", "cms-agent", "-p", "cms-updater"])
            .env("CMS_BUILD_VERSION", version)
            .env("CARGO_TARGET_DIR", &target),
    )?;
    let out = demo_dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&out)?;
    for name in ["cms_agent", "updater"] {
        std::fs::copy(target.join("debug").join(exe(name)), out.join(exe(name)))?;
    }
    Ok(out)
}

/// A running `cms-server serve` (also driven by the Windows end-to-end run).
pub(crate) struct Server {
    /// The process.
    pub(crate) child: Child,
    /// Its base URL, such as `http://127.0.0.1:41234`.
    pub(crate) url: String,
}

/// Starts `<bin>/cms-server serve` on a free loopback port with its SQLite data in `data_dir`.
pub(crate) fn start_server(bin: &Path, data_dir: &Path) -> Result<Server> {
    step(&format!(
        "starting cms-server (SQLite in {})",
        data_dir.display()
    ));
    let mut child = Command::new(bin.join(exe("cms-server")))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cms-server")?;
    let stdout = child.stdout.take().context("cms-server has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("cannot read cms-server's address")?;
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        bail!("cms-server did not report its address (said {line:?})");
    };
    println!("    listening on {url}");
    Ok(Server {
        child,
        url: url.to_owned(),
    })
}

struct Demo {
    bin: PathBuf,
    server_dir: PathBuf,
    data: PathBuf,
    install: PathBuf,
    v2: PathBuf,
}

impl Demo {
    fn run_agent(&self, server_url: &str) -> Result<()> {
        let exe_path = self.install.join(exe("cms_agent"));
        step(&format!(
            "starting {} --server {server_url}",
            exe_path.display()
        ));
        let mut agent = Command::new(&exe_path)
            .args([
                "--server",
                server_url,
                "--status-interval",
                "2",
                "--data-dir",
            ])
            .arg(&self.data)
            .env("CMS_UPDATER_GRACE_SECS", "2")
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start cms_agent")?;
        let result = self
            .show_agent(server_url)
            .and_then(|()| self.show_update(server_url));
        let stopped = self.stop_agent();
        let _ = agent.kill(); // the 1.0.0 process we started is long gone after the update
        let _ = agent.wait();
        result?;
        stopped?;
        let log = std::fs::read_to_string(self.data.join("logs/agent.log")).unwrap_or_default();
        print_matching(
            &log,
            &["State transition", "update verified", "Shutdown complete"],
        );
        Ok(())
    }

    fn show_agent(&self, server_url: &str) -> Result<()> {
        step("waiting for the agent to register and report IDLE (GET /api/v1/agents)");
        let first = wait_for("an IDLE agent", || {
            Ok(agents(server_url)?.into_iter().find(|a| a.state == "IDLE"))
        })?;
        print_agent(&first);
        step("waiting for the next heartbeat");
        let later = wait_for("a newer heartbeat", || {
            Ok(agents(server_url)?
                .into_iter()
                .find(|a| a.last_seen != first.last_seen))
        })?;
        print_agent(&later);
        step("pushing agent:update_required over the agent's WebSocket (no release yet)");
        let push = format!("{server_url}/api/v1/agents/{}/check-update", first.agent_id);
        wait_for("the push to be accepted", || {
            let status = reqwest::blocking::Client::new()
                .post(&push)
                .send()?
                .status();
            Ok((status.as_u16() == 202).then_some(()))
        })?;
        let log = self.wait_for_log("trigger=\"push\"")?;
        print_matching(&log, &["server event received", "no update available"]);
        Ok(())
    }

    fn show_update(&self, server_url: &str) -> Result<()> {
        step("publishing release 2.0.0 (cms-server release publish)");
        run_checked(&mut crate::util::publish_command(
            &self.bin.join(exe("cms-server")),
            &self.server_dir,
            "2.0.0",
            None,
            (
                &self.v2.join(exe("cms_agent")),
                &self.v2.join(exe("updater")),
            ),
        ))?;
        step("waiting for the agent to update itself to 2.0.0");
        let updated = wait_for("the agent on 2.0.0", || {
            Ok(agents(server_url)?
                .into_iter()
                .find(|a| a.version == "2.0.0" && a.state == "IDLE"))
        })?;
        print_agent(&updated);
        step(
            "waiting for the updater to verify it (lock held, version reported, alive after the grace period)",
        );
        self.wait_for_log("update verified by the updater")?;
        let updater_log = std::fs::read_to_string(self.data.join("logs/updater.log"))?;
        print_matching(
            &updater_log,
            &[
                "update phase",
                "backed up",
                "holds the lock",
                "update verified",
            ],
        );
        let version = Command::new(self.install.join(exe("cms_agent")))
            .arg("--version")
            .output()?;
        println!(
            "    the installed exe now says: {}",
            String::from_utf8_lossy(&version.stdout).trim()
        );
        Ok(())
    }

    /// Stops whichever agent holds the lock (after an update it is not our child).
    fn stop_agent(&self) -> Result<()> {
        let Some(record) = self.lock_record() else {
            bail!("no agent holds the lock at the end of the demo");
        };
        step(&format!(
            "stopping cms_agent {} (pid {})",
            record.version, record.pid
        ));
        if cfg!(unix) {
            run_checked(Command::new("kill").args(["-TERM", &record.pid.to_string()]))?;
        } else {
            run_checked(Command::new("taskkill").args(["/PID", &record.pid.to_string()]))?;
        }
        wait_for("the agent to release its lock", || {
            Ok((!self.data.join("agent.lock").exists()).then_some(()))
        })?;
        self.wait_for_log("Shutdown complete").map(drop)
    }

    fn lock_record(&self) -> Option<LockRecord> {
        let bytes = std::fs::read(self.data.join("agent.lock")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn wait_for_log(&self, needle: &str) -> Result<String> {
        let path = self.data.join("logs/agent.log");
        wait_for(&format!("{needle} in the agent log"), || {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            Ok(log.contains(needle).then_some(log))
        })
    }
}

/// `GET /api/v1/agents`.
pub(crate) fn agents(server_url: &str) -> Result<Vec<AgentSummary>> {
    Ok(reqwest::blocking::get(format!("{server_url}/api/v1/agents"))?.json()?)
}

fn print_agent(agent: &AgentSummary) {
    println!(
        "    agent {} on {}: version {}, state {}, online {}, last seen {}",
        agent.agent_id, agent.hostname, agent.version, agent.state, agent.online, agent.last_seen
    );
}

fn print_matching(log: &str, needles: &[&str]) {
    for line in log
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
    {
        println!("    | {line}");
    }
}

/// Polls `probe` until it yields a value, for at most [`WAIT`]; errors count as "not yet".
fn wait_for<T>(what: &str, probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    crate::util::wait_for(what, WAIT, probe)
}

/// Asks the server to stop as the OS would (SIGTERM; killed on Windows, which has no polite
/// signal for a console-less child) and checks its exit.
pub(crate) fn stop_server(child: &mut Child) -> Result<()> {
    step("stopping cms-server");
    if cfg!(unix) {
        run_checked(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
    } else {
        child.kill()?;
    }
    let status = child.wait()?;
    println!("    cms-server exited with {status}");
    if cfg!(unix) && !status.success() {
        bail!("cms-server did not exit cleanly ({status})");
    }
    Ok(())
}

fn step(text: &str) {
    println!("==> {text}");
}

/// `name` with this platform's executable suffix.
pub(crate) fn exe(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}
