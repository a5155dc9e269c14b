//! The agent as one machine sees it: its idle footprint, and how fast it starts, hands over on
//! `--force` and answers `--status`.
//!
//! The agent runs with its defaults (60 s heartbeat, hourly update poll) against a real server,
//! registered and holding its WebSocket, exactly as on a fleet machine. Its counters are read
//! from `/proc` by this process; times are taken around real process starts, with the lock file
//! read every millisecond from outside.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::fixture::{self, millis, wait_for, wait_lock};
use super::plan::Plan;
use super::procfs;
use super::stats::Summary;
use crate::installed_agent::InstalledAgent;
use crate::server::RunningServer;

/// Readings taken over the idle window (every window / this).
const IDLE_SAMPLES: u32 = 12;
/// Bytes per MB: goals and results are in decimal megabytes.
pub const MB: f64 = 1_000_000.0;

/// The idle agent.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// Length of the window, seconds.
    pub window_secs: f64,
    /// Resident memory (VmRSS), MB, sampled through the window.
    pub rss_mb: Summary,
    /// CPU used over the whole window, percent of one core.
    pub cpu_percent: f64,
    /// CPU of each sampling interval, percent of one core (the spread of the figure above).
    pub cpu_percent_per_interval: Summary,
    /// Wakeups (voluntary context switches of all threads) per second over the window.
    pub wakeups_per_sec: f64,
}

/// Start, handover and status times, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Lifecycle {
    /// Process start (spawn) to `agent.lock` naming the new process.
    pub start_to_lock_ms: Summary,
    /// `cms_agent --force` spawned to the lock naming it (the old agent stops in between).
    pub force_handover_ms: Summary,
    /// `cms_agent --status` spawned to its exit with the answer printed.
    pub status_round_trip_ms: Summary,
}

/// Everything this module measures.
#[derive(Debug, Clone, Serialize)]
pub struct AgentResults {
    /// Idle footprint.
    pub idle: Idle,
    /// Process timings.
    pub lifecycle: Lifecycle,
}

/// Installs the agent under `plan.work/agent`, runs it idle, then times its process life.
pub fn measure(plan: &Plan, server: &RunningServer) -> Result<AgentResults> {
    let mut agent = fixture::install(&plan.work.join("agent"), &plan.bins.current.agent)?;
    let pid = agent.start(&["--server", server.url()])?;
    wait_lock(&agent, |r| r.pid == pid)?;
    fixture::wait_registered(server)?;
    wait_idle(&agent)?;
    std::thread::sleep(plan.settle);
    println!("    idle for {:?} (pid {pid})", plan.idle_window);
    let idle = measure_idle(pid, plan.idle_window)?;
    agent.stop_holder()?;
    let lifecycle = Lifecycle {
        start_to_lock_ms: start_to_lock(&mut agent, plan.repeats)?,
        force_handover_ms: force_handover(&mut agent, plan.repeats)?,
        status_round_trip_ms: status_round_trip(&agent, plan.repeats * 2)?,
    };
    agent.stop_holder()?;
    Ok(AgentResults { idle, lifecycle })
}

fn measure_idle(pid: u32, window: Duration) -> Result<Idle> {
    let mut samples = vec![procfs::sample(pid)?];
    for _ in 0..IDLE_SAMPLES {
        std::thread::sleep(window / IDLE_SAMPLES);
        samples.push(procfs::sample(pid).context("the agent died while idle")?);
    }
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_bytes as f64 / MB).collect();
    let per_interval: Vec<f64> = samples
        .windows(2)
        .map(|pair| pair[1].cpu_percent_since(&pair[0]))
        .collect();
    Ok(Idle {
        window_secs: last.at.duration_since(first.at).as_secs_f64(),
        rss_mb: summary(&rss)?,
        cpu_percent: last.cpu_percent_since(first),
        cpu_percent_per_interval: summary(&per_interval)?,
        wakeups_per_sec: last.wakeups_per_sec_since(first),
    })
}

/// Spawn to lock, `repeats` times; each agent is stopped before the next starts.
fn start_to_lock(agent: &mut InstalledAgent, repeats: usize) -> Result<Summary> {
    let mut times = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        let pid = agent.start(&[])?;
        let (_, seen) = wait_lock(agent, |r| r.pid == pid)?;
        times.push(millis(started, seen));
        wait_idle(agent)?;
        agent.stop_holder()?;
        agent.reap();
    }
    summary(&times)
}

/// `--force` handovers, `repeats` times, each new agent replacing the previous one.
fn force_handover(agent: &mut InstalledAgent, repeats: usize) -> Result<Summary> {
    let first = agent.start(&[])?;
    wait_lock(agent, |r| r.pid == first)?;
    wait_idle(agent)?;
    let mut times = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        let pid = agent.start(&["--force"])?;
        let (_, seen) = wait_lock(agent, |r| r.pid == pid)?;
        times.push(millis(started, seen));
        wait_idle(agent)?;
        agent.reap();
    }
    summary(&times)
}

/// `--status` against the running agent, `repeats` times.
fn status_round_trip(agent: &InstalledAgent, repeats: usize) -> Result<Summary> {
    let mut times = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        let state = status(agent)?;
        times.push(millis(started, Instant::now()));
        if state != "IDLE" {
            bail!("--status said the agent is {state}, not IDLE");
        }
    }
    summary(&times)
}

/// Runs `--status` to completion; the state it printed.
fn status(agent: &InstalledAgent) -> Result<String> {
    let output = agent
        .command(&["--status"])
        .stdout(Stdio::piped())
        .output()
        .context("cannot run cms_agent --status")?;
    if !output.status.success() {
        bail!("cms_agent --status exited with {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let state = text.lines().find_map(|l| l.strip_prefix("state: "));
    Ok(state.unwrap_or("unknown").trim().to_owned())
}

/// Waits until the running agent says it is IDLE (registered, services started).
fn wait_idle(agent: &InstalledAgent) -> Result<()> {
    wait_for("the agent to be IDLE", || {
        Ok((status(agent)? == "IDLE").then_some(()))
    })
}

fn summary(samples: &[f64]) -> Result<Summary> {
    Summary::of(samples).context("no samples")
}
