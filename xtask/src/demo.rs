//! `cargo xtask demo`: the main job, end to end, on this machine.
//!
//! Builds agent 1.0.0 and 2.0.0 (`CMS_BUILD_VERSION`), starts `cms-server` on its embedded
//! SQLite default (a fresh data dir under `target/demo/`), installs and runs agent 1.0.0 against
//! it, shows it registered and heartbeating through the operator API, pushes an
//! `agent:update_required` over its WebSocket, publishes release 2.0.0 and watches the agent
//! replace itself, then stops the agent and the server politely. Every step is checked; a step
//! that does not happen fails the demo with what was expected.
//!
//! Must never: call a step done that it did not see happen.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cms_protocol::AgentSummary;

use crate::build::{self, Stamped, StampedBuild};
use crate::installed_agent::InstalledAgent;
use crate::server::{Release, RunningServer, Server, ServerOutput};
use crate::util::{self, step};

const WAIT: Duration = Duration::from_secs(60);

/// Runs the demo; no options.
pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("demo takes no options (got {arg:?})");
    }
    let demo_dir = util::target_dir().join("demo");
    util::remove_dir_if_exists(&demo_dir)?;
    let server_exe = build::server()?;
    let v1 = build_version("1.0.0")?.copy_to(&demo_dir.join("build-1.0.0"))?;
    let v2 = build_version("2.0.0")?.copy_to(&demo_dir.join("build-2.0.0"))?;
    let mut agent = InstalledAgent::install(
        &v1.agent,
        &demo_dir.join("install"),
        &demo_dir.join("agent"),
        2,
    )?;
    let mut server =
        Server::new(&server_exe, &demo_dir.join("server"), ServerOutput::Print).start()?;
    let outcome = run_agent(&mut agent, &server, &v2);
    let stopped = server.stop();
    outcome?;
    stopped?;
    step(
        "done: the agent registered, heartbeated, took a push, updated itself to 2.0.0 and stopped cleanly",
    );
    Ok(())
}

/// Builds agent and updater stamped `version` in `target/demo-build` (both versions share it).
fn build_version(version: &str) -> Result<Stamped> {
    step(&format!(
        "building cms_agent and updater {version} (CMS_BUILD_VERSION={version})"
    ));
    StampedBuild::new(version)
        .target_dir(util::target_dir().join("demo-build"))
        .run()
}

/// Runs the installed agent against `server` through every step, then stops it.
fn run_agent(agent: &mut InstalledAgent, server: &RunningServer, v2: &Stamped) -> Result<()> {
    step(&format!(
        "starting {} --server {}",
        agent.exe().display(),
        server.url()
    ));
    agent.start(&["--server", server.url(), "--status-interval", "2"])?;
    let result = show_agent(agent, server).and_then(|()| show_update(agent, server, v2));
    let stopped = stop_agent(agent);
    result?;
    stopped?;
    print_matching(
        &agent.log(),
        &["State transition", "update verified", "Shutdown complete"],
    );
    Ok(())
}

fn show_agent(agent: &InstalledAgent, server: &RunningServer) -> Result<()> {
    step("waiting for the agent to register and report IDLE (GET /api/v1/agents)");
    let first = server.wait_for_agent("an IDLE agent", WAIT, |a| a.state == "IDLE")?;
    print_agent(&first);
    step("waiting for the next heartbeat");
    let later = server.wait_for_agent("a newer heartbeat", WAIT, |a| {
        a.last_seen != first.last_seen
    })?;
    print_agent(&later);
    step("pushing agent:update_required over the agent's WebSocket (no release yet)");
    server.push_update_check(&first.agent_id)?;
    let log = agent.wait_for_log("trigger=\"push\"")?;
    print_matching(&log, &["server event received", "no update available"]);
    Ok(())
}

fn show_update(agent: &InstalledAgent, server: &RunningServer, v2: &Stamped) -> Result<()> {
    step("publishing release 2.0.0 (cms-server release publish)");
    server.publish(&Release {
        version: &v2.version,
        platform: None,
        agent: &v2.agent,
        updater: &v2.updater,
    })?;
    step("waiting for the agent to update itself to 2.0.0");
    let updated = server.wait_for_agent("the agent on 2.0.0", WAIT, |a| {
        a.version == "2.0.0" && a.state == "IDLE"
    })?;
    print_agent(&updated);
    step(
        "waiting for the updater to verify it (lock held, version reported, alive after the grace period)",
    );
    agent.wait_for_log("update verified by the updater")?;
    print_matching(
        &agent.log_file("updater.log"),
        &[
            "update phase",
            "backed up",
            "holds the lock",
            "update verified",
        ],
    );
    let version = Command::new(agent.exe()).arg("--version").output()?;
    println!(
        "    the installed exe now says: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    Ok(())
}

/// Stops whichever agent holds the lock (after an update it is not our child).
fn stop_agent(agent: &InstalledAgent) -> Result<()> {
    let record = agent
        .lock()
        .context("no agent holds the lock at the end of the demo")?;
    step(&format!(
        "stopping cms_agent {} (pid {})",
        record.version, record.pid
    ));
    agent.stop_holder()?;
    agent.wait_for_log("Shutdown complete").map(drop)
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
