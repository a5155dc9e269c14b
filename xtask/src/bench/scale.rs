//! Server scale: one `cms-server` on its SQLite default, and `cms-loadgen swarm` simulating N
//! agents over loopback (a WebSocket and a heartbeat every 60 s each, like real agents).
//!
//! The fleet is grown in steps. At each step the bench reads the server's CPU and memory from
//! `/proc` around a measurement window in which the swarm times every heartbeat, then publishes
//! a release with `cms-server release publish` and asks the swarm when the last agent got the
//! push. A step holds when p99 heartbeat latency is under [`P99_GOAL_MS`] with no failed
//! heartbeat and no dropped WebSocket; the search stops at the first step that does not hold,
//! at the largest N asked for, or when the next step would not fit in the time budget.

use std::time::SystemTime;

use anyhow::Result;
use serde::Serialize;

use super::agent::MB;
use super::fixture;
use super::plan::{Ladder, Plan};
use super::procfs;
use super::swarm::{self, Grown, Heartbeats, PushSpread, Swarm, Window, unix_micros};
use crate::server::RunningServer;

/// A step holds when its p99 heartbeat latency is below this.
pub const P99_GOAL_MS: f64 = 50.0;
/// How long the swarm may wait for a push to reach every agent.
const PUSH_WAIT_SECS: u32 = 60;
/// Descriptors the server (and the swarm) hold per agent: its WebSocket, which carries its
/// heartbeats too (`cms-loadgen swarm` sends them on it, as the agent does).
pub const FDS_PER_AGENT: u64 = 1;
/// Descriptors kept for everything else (listener, database, logs).
const FD_SLACK: u64 = 1024;

/// One step of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Agents, latencies and failures of the window.
    #[serde(flatten)]
    pub window: Heartbeats,
    /// Server resident memory at the end of the window, MB.
    pub server_rss_mb: f64,
    /// Server CPU over the window, percent of one core.
    pub server_cpu_percent: f64,
    /// The load generator's own CPU over the window (it shares the machine).
    pub loadgen_cpu_percent: f64,
    /// Publish done -> first and last agent notified, milliseconds (`None`: not everyone was).
    pub push_first_ms: Option<f64>,
    /// See `push_first_ms`.
    pub push_all_ms: Option<f64>,
    /// Whether the step holds (see the module docs).
    pub holds: bool,
}

/// The whole search.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResults {
    /// Heartbeat interval of each simulated agent, seconds.
    pub heartbeat_secs: u64,
    /// Open-file limit the server and the swarm ran with.
    pub open_file_limit: u64,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// Largest N that held, if any.
    pub largest_held: Option<usize>,
    /// Why the search stopped.
    pub stopped_because: String,
}

/// Runs the steps of `plan.scale`.
pub fn measure(plan: &Plan, open_file_limit: u64) -> Result<ScaleResults> {
    let dir = plan.work.join("scale");
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let mut server = fixture::server(plan, &server_dir).start()?;
    let scale = &plan.scale;
    let mut swarm = Swarm::start(&plan.bins.loadgen, server.url(), scale.heartbeat_secs, 0)?;
    let cap = fleet_cap(open_file_limit);
    let ladder = Ladder {
        first: scale.first,
        increment: scale.increment,
        max: scale.max,
        cap,
        cap_reason: format!(
            "the open-file limit ({open_file_limit}, all this machine allows) leaves room for \
             {cap} agents at {FDS_PER_AGENT} connections each"
        ),
        budget: plan.budget,
    };
    let (steps, stopped_because) = ladder.climb(
        |agents, index| {
            let step = run_step(plan, &server, &mut swarm, agents, index)?;
            print_step(&step);
            Ok(step)
        },
        |step: &Step| step.holds,
    );
    swarm.quit()?;
    server.stop()?;
    Ok(ScaleResults {
        heartbeat_secs: scale.heartbeat_secs,
        open_file_limit,
        largest_held: steps
            .iter()
            .filter(|s| s.holds)
            .map(|s| s.window.agents)
            .max(),
        steps,
        stopped_because,
    })
}

fn print_step(step: &Step) {
    println!(
        "    N={}: p50 {:.1} ms, p99 {:.1} ms, {} failures, server {:.0} MB / {:.0} % CPU, push to all {:?} ms",
        step.window.agents,
        step.window.p50_ms,
        step.window.p99_ms,
        step.window.failures,
        step.server_rss_mb,
        step.server_cpu_percent,
        step.push_all_ms.map(|ms| ms.round())
    );
}

/// The most agents the server can hold within `open_file_limit` descriptors.
fn fleet_cap(open_file_limit: u64) -> usize {
    let agents = open_file_limit.saturating_sub(FD_SLACK) / FDS_PER_AGENT;
    usize::try_from(agents).unwrap_or(usize::MAX)
}

fn run_step(
    plan: &Plan,
    server: &RunningServer,
    swarm: &mut Swarm,
    agents: usize,
    index: usize,
) -> Result<Step> {
    let grown: Grown = swarm.ask(&format!("grow {agents}"))?;
    let connected = grown.connected;
    let ramp_secs = swarm::ramp_secs(&[grown], agents)?;
    println!("    N={agents}: {connected} connected after {ramp_secs:.1} s");
    std::thread::sleep(plan.settle);
    let window_secs = if index == 0 {
        plan.scale.first_window.as_secs_f64()
    } else {
        plan.scale.window.as_secs_f64()
    };
    let server_before = procfs::sample(server.pid())?;
    let swarm_before = procfs::sample(swarm.pid())?;
    let window: Window = swarm.ask(&format!("measure {window_secs}"))?;
    let server_after = procfs::sample(server.pid())?;
    let swarm_after = procfs::sample(swarm.pid())?;
    let heartbeats = Heartbeats::of(agents, ramp_secs, window_secs, &[window])?;
    let (push_first_ms, push_all_ms) = push(plan, server, swarm, index)?;
    Ok(Step {
        holds: heartbeats.hold(P99_GOAL_MS),
        window: heartbeats,
        server_rss_mb: server_after.rss_bytes as f64 / MB,
        server_cpu_percent: server_after.cpu_percent_since(&server_before),
        loadgen_cpu_percent: swarm_after.cpu_percent_since(&swarm_before),
        push_first_ms,
        push_all_ms,
    })
}

/// Publishes release `100+index.0.0` and times its notification: publish done -> first and
/// last agent (both `None` when not every agent got it in time).
fn push(
    plan: &Plan,
    server: &RunningServer,
    swarm: &mut Swarm,
    index: usize,
) -> Result<(Option<f64>, Option<f64>)> {
    let version = format!("{}.0.0", 100 + index);
    let tiny = &plan.bins.current.updater;
    server.publish(&fixture::linux_release(&version, tiny, tiny))?;
    let published = unix_micros(SystemTime::now());
    let spread: PushSpread = swarm.ask(&format!("await-push {version} {PUSH_WAIT_SECS}"))?;
    if spread.received < spread.expected {
        println!(
            "    push {version}: only {} of {} agents notified within {PUSH_WAIT_SECS} s",
            spread.received, spread.expected
        );
        return Ok((None, None));
    }
    let since = |at: Option<u64>| at.map(|t| t.saturating_sub(published) as f64 / 1000.0);
    Ok((since(spread.first_unix_us), since(spread.last_unix_us)))
}
