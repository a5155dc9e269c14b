//! `cargo xtask demo`: the main job, end to end, on this machine.
//!
//! Builds the workspace, starts `cms-server` on its embedded SQLite default (a fresh data dir
//! under `target/demo/`), runs an agent against it, shows it registered and heartbeating
//! through the operator API, pushes an `agent:update_required` over its WebSocket, then stops
//! the agent and the server politely and shows their clean exits. Every step is checked; a
//! step that does not happen fails the demo with what was expected.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cms_protocol::AgentSummary;

use crate::util::{project_root, run_checked};

const WAIT: Duration = Duration::from_secs(30);

/// Runs the demo; no options.
pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("demo takes no options (got {arg:?})");
    }
    let root = project_root();
    run_checked(Command::new(cargo()).current_dir(&root).args([
        "build",
        "-p",
        "cms-server",
        "-p",
        "cms-agent",
    ]))?;
    let bin = target_dir(&root).join("debug");
    let demo_dir = target_dir(&root).join("demo");
    if demo_dir.exists() {
        std::fs::remove_dir_all(&demo_dir)
            .with_context(|| format!("cannot clean {}", demo_dir.display()))?;
    }
    let mut server = start_server(&bin, &demo_dir.join("server"))?;
    let outcome = run_agent(&bin, &demo_dir.join("agent"), &server.url);
    stop(&mut server.child, "cms-server")?;
    outcome?;
    step("done: the agent registered, heartbeated, received a push and stopped cleanly");
    println!(
        "    self-update (publish a release, watch the agent replace itself) joins this demo with the update work"
    );
    Ok(())
}

struct Server {
    child: Child,
    url: String,
}

fn start_server(bin: &Path, data_dir: &Path) -> Result<Server> {
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

fn run_agent(bin: &Path, data_dir: &Path, server_url: &str) -> Result<()> {
    step(&format!(
        "starting cms_agent --server {server_url} (data in {})",
        data_dir.display()
    ));
    let mut agent = Command::new(bin.join(exe("cms_agent")))
        .args([
            "--server",
            server_url,
            "--status-interval",
            "2",
            "--data-dir",
        ])
        .arg(data_dir)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start cms_agent")?;
    let result = show_agent(server_url, data_dir);
    stop(&mut agent, "cms_agent")?;
    result?;
    let log = std::fs::read_to_string(data_dir.join("logs/agent.log")).unwrap_or_default();
    print_matching(&log, &["State transition", "Shutdown complete"]);
    if !log.contains("Shutdown complete") || data_dir.join("agent.lock").exists() {
        bail!(
            "the agent did not shut down cleanly; see {}",
            data_dir.join("logs/agent.log").display()
        );
    }
    Ok(())
}

fn show_agent(server_url: &str, data_dir: &Path) -> Result<()> {
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
    step("pushing agent:update_required over the agent's WebSocket");
    let push = format!("{server_url}/api/v1/agents/{}/check-update", first.agent_id);
    wait_for("the push to be accepted", || {
        Ok((reqwest::blocking::Client::new()
            .post(&push)
            .send()?
            .status()
            .as_u16()
            == 202)
            .then_some(()))
    })?;
    let log_path = data_dir.join("logs/agent.log");
    let log = wait_for("the agent to act on the push", || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(log.contains("trigger=\"push\"").then_some(log))
    })?;
    print_matching(&log, &["server event received", "trigger=\"push\""]);
    Ok(())
}

fn agents(server_url: &str) -> Result<Vec<AgentSummary>> {
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

/// Polls `probe` every 200 ms until it yields a value; errors count as "not yet".
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(value)) = probe() {
            return Ok(value);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {WAIT:?} waiting for {what}")
}

/// Asks `child` to stop as the OS would (SIGTERM; on Windows there is no polite signal for a
/// console-less child, so it is killed) and checks its exit.
fn stop(child: &mut Child, name: &str) -> Result<()> {
    step(&format!("stopping {name}"));
    if cfg!(unix) {
        run_checked(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
    } else {
        child.kill()?;
    }
    let status = child.wait()?;
    println!("    {name} exited with {status}");
    if cfg!(unix) && !status.success() {
        bail!("{name} did not exit cleanly ({status})");
    }
    Ok(())
}

fn step(text: &str) {
    println!("==> {text}");
}

fn exe(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}
