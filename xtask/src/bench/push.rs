//! The download push: a whole fleet downloading a new release at once, against one
//! `cms-server` left at its default `--max-downloads`, while every agent keeps heartbeating.
//!
//! One release-build server (SQLite default) and one `cms-loadgen swarm` of `plan.scale.first`
//! agents (5,000 in a full run, 50 in a quick one) heartbeating at `plan.scale.heartbeat_secs`.
//! The bench reads the heartbeats and the server's memory idle, publishes a release (the real
//! agent build, packaged), waits for its push to reach every agent, then orders every agent to
//! do what that push asks: an update check and the package download, all at once (the swarm's
//! `download`; `503` + `Retry-After` answers are waited out and counted, never failures). During
//! the push it samples the server's memory every [`RSS_EVERY`] and the swarm times the
//! heartbeats; afterwards `/healthz` gives the server's download limit, the most streams it sent
//! at once and how many it refused, and the same of its update-check line. This module only measures: it never judges a number, and a
//! download that failed or did not end in time is reported, never an error of the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::agent::MB;
use super::fixture;
use super::plan::Plan;
use super::procfs;
use super::swarm::{self, Grown, Heartbeats, PushSpread, Swarm, Window};
use crate::server::RunningServer;

/// What the step prints when it starts.
pub const STEP: &str = "download push: every agent downloads a new release at once";
/// The version published (newer than the swarm's agents, which report 1.0.0).
const VERSION: &str = "2.0.0";
/// How often the server's memory is read during the push.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// How long the bench waits for the release's notification to reach every agent.
const NOTIFY_WAIT_SECS: u32 = 60;
/// Descriptors per agent during the push: its WebSocket and its download connection.
pub const FDS_PER_AGENT: u64 = 2;

/// Heartbeats and server memory over one stretch of time.
#[derive(Debug, Clone, Serialize)]
pub struct Stretch {
    /// The heartbeats answered in it (`None`: none fell in it).
    pub heartbeats: Option<Heartbeats>,
    /// Server resident memory, MB: at the end of the idle window, the peak during the push.
    pub server_rss_mb: f64,
    /// Server CPU over the stretch, percent of one core.
    pub server_cpu_percent: f64,
    /// The load generator's own CPU over the stretch (it shares the machine and times the
    /// heartbeats, so a busy load generator lengthens them too).
    pub loadgen_cpu_percent: f64,
}

/// The whole step.
#[derive(Debug, Clone, Serialize)]
pub struct PushResults {
    /// Simulated agents.
    pub agents: usize,
    /// Heartbeat interval of each, seconds.
    pub heartbeat_secs: u64,
    /// The server's `--max-downloads` (its default here), from `/healthz`.
    pub max_downloads: u64,
    /// The version pushed, and its package's size in bytes.
    pub version: String,
    /// The spread of update checks the push asked for (`spread_secs`), seconds.
    pub check_spread_secs: Option<u32>,
    /// See `version`.
    pub package_bytes: u64,
    /// Idle, before the release.
    pub before: Stretch,
    /// From the download order until the last download ended.
    pub during: Stretch,
    /// Most package streams the server sent at once (`/healthz` `peak`).
    pub peak_streams: u64,
    /// `503` + `Retry-After` answers the agents waited out (update checks and downloads).
    pub busy_answers: u64,
    /// Downloads the server refused with `503` (`/healthz` `refused`).
    pub server_refused: u64,
    /// The server's update-check line: its `--max-waiting-checks` (default here), the most
    /// checks that waited at once and the checks it refused with `503` (`/healthz`).
    pub checks: CheckLine,
    /// Packages received whole, and downloads given up.
    pub completed: usize,
    /// See `completed`.
    pub failed: usize,
    /// Why the first failed download failed.
    pub first_error: Option<String>,
    /// Package bytes the agents received (and discarded).
    pub bytes: u64,
    /// Download order -> the last download ended, seconds (`None`: not all ended in time).
    pub all_done_secs: Option<f64>,
}

/// The swarm's answer to `download`.
#[derive(Debug, Deserialize)]
struct Pushed {
    expected: usize,
    completed: usize,
    failed: usize,
    first_error: Option<String>,
    busy: u64,
    bytes: u64,
    started_unix_us: u64,
    last_done_unix_us: Option<u64>,
    window: Window,
}

/// `/healthz`'s download counts.
#[derive(Debug, Deserialize)]
struct Streams {
    limit: u64,
    peak: u64,
    refused: u64,
}

/// `/healthz`'s update-check counts.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct CheckLine {
    /// Checks allowed to wait for a turn.
    pub limit: u64,
    /// Most checks waiting at once.
    pub peak: u64,
    /// Checks answered `503`.
    pub refused: u64,
}

/// Runs the step in `plan.work/push`.
pub fn measure(plan: &Plan) -> Result<PushResults> {
    let agents = plan.scale.first;
    let server_dir = plan.work.join("push").join("server");
    std::fs::create_dir_all(&server_dir)?;
    let mut server = fixture::server(plan, &server_dir).start()?;
    let heartbeat_secs = plan.scale.heartbeat_secs;
    let mut swarm = Swarm::start(&plan.bins.loadgen, server.url(), heartbeat_secs, 0)?;
    let grown: Grown = swarm.ask(&format!("grow {agents}"))?;
    let ramp_secs = swarm::ramp_secs(&[grown], agents)?;
    println!("    {agents} agents connected after {ramp_secs:.1} s");
    std::thread::sleep(plan.settle);
    let before = idle(plan, &server, &mut swarm, agents)?;
    let (package_bytes, check_spread_secs) = publish(plan, &server, &server_dir, &mut swarm)?;
    let wait = plan.push_wait.as_secs_f64();
    let (pushed, during) = push(&server, &mut swarm, agents, wait)?;
    let health: Value = server.get_json("/healthz")?;
    let streams: Streams = healthz_counts(&health, "downloads")?;
    let checks: CheckLine = healthz_counts(&health, "update_checks")?;
    swarm.quit()?;
    server.stop()?;
    let results = PushResults {
        agents,
        heartbeat_secs,
        max_downloads: streams.limit,
        version: VERSION.to_owned(),
        check_spread_secs,
        package_bytes,
        before,
        during,
        peak_streams: streams.peak,
        busy_answers: pushed.busy,
        server_refused: streams.refused,
        checks,
        completed: pushed.completed,
        failed: pushed.failed,
        first_error: pushed.first_error.clone(),
        bytes: pushed.bytes,
        all_done_secs: all_done_secs(&pushed),
    };
    print_results(&results);
    Ok(results)
}

/// Heartbeats and server memory over the idle window.
fn idle(plan: &Plan, server: &RunningServer, swarm: &mut Swarm, agents: usize) -> Result<Stretch> {
    let secs = plan.scale.window.as_secs_f64();
    let first = [procfs::sample(server.pid())?, procfs::sample(swarm.pid())?];
    let window: Window = swarm.ask(&format!("measure {secs}"))?;
    let last = [procfs::sample(server.pid())?, procfs::sample(swarm.pid())?];
    Ok(Stretch {
        heartbeats: Some(Heartbeats::of(agents, 0.0, secs, &[window])?),
        server_rss_mb: last[0].rss_bytes as f64 / MB,
        server_cpu_percent: last[0].cpu_percent_since(&first[0]),
        loadgen_cpu_percent: last[1].cpu_percent_since(&first[1]),
    })
}

/// Publishes [`VERSION`] (the current agent build) and waits for its notification to reach
/// the swarm; the package's size and the spread of checks the push asked for.
fn publish(
    plan: &Plan,
    server: &RunningServer,
    server_dir: &std::path::Path,
    swarm: &mut Swarm,
) -> Result<(u64, Option<u32>)> {
    let current = &plan.bins.current;
    server.publish(&fixture::linux_release(
        VERSION,
        &current.agent,
        &current.updater,
    ))?;
    let spread: PushSpread = swarm.ask(&format!("await-push {VERSION} {NOTIFY_WAIT_SECS}"))?;
    println!(
        "    release {VERSION} published: {} of {} agents notified",
        spread.received, spread.expected
    );
    let package = server_dir
        .join("packages/linux-x86_64")
        .join(VERSION)
        .join(format!("cms_agent-{VERSION}-linux-x86_64.zip"));
    let bytes = std::fs::metadata(&package)
        .with_context(|| format!("no package at {}", package.display()))?
        .len();
    Ok((bytes, spread.check_spread_secs))
}

/// Orders every agent to download the release, sampling the server's memory meanwhile.
fn push(
    server: &RunningServer,
    swarm: &mut Swarm,
    agents: usize,
    wait_secs: f64,
) -> Result<(Pushed, Stretch)> {
    let pid = server.pid();
    let first = [procfs::sample(pid)?, procfs::sample(swarm.pid())?];
    let done = AtomicBool::new(false);
    let (pushed, peak_rss) = std::thread::scope(|scope| -> Result<(Pushed, u64)> {
        let sampler = scope.spawn(|| peak_rss(pid, &done));
        let pushed = swarm.ask::<Pushed>(&format!("download {wait_secs}"));
        done.store(true, Ordering::Relaxed);
        let peak = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
        Ok((pushed?, peak))
    })?;
    let last = [procfs::sample(pid)?, procfs::sample(swarm.pid())?];
    let secs = pushed.window.secs;
    let heartbeats = Heartbeats::of(agents, 0.0, secs, std::slice::from_ref(&pushed.window));
    if let Err(error) = &heartbeats {
        println!("    during the push: {error:#}");
    }
    let during = Stretch {
        heartbeats: heartbeats.ok(),
        server_rss_mb: peak_rss.max(last[0].rss_bytes) as f64 / MB,
        server_cpu_percent: last[0].cpu_percent_since(&first[0]),
        loadgen_cpu_percent: last[1].cpu_percent_since(&first[1]),
    };
    if pushed.expected != agents {
        println!("    {} of {agents} agents were told", pushed.expected);
    }
    Ok((pushed, during))
}

/// The largest resident memory of `pid` read every [`RSS_EVERY`] until `done`.
fn peak_rss(pid: u32, done: &AtomicBool) -> u64 {
    let mut peak = 0;
    while !done.load(Ordering::Relaxed) {
        if let Ok(sample) = procfs::sample(pid) {
            peak = peak.max(sample.rss_bytes);
        }
        std::thread::sleep(RSS_EVERY);
    }
    peak
}

/// One of `/healthz`'s counts (`downloads`, `update_checks`).
fn healthz_counts<T: serde::de::DeserializeOwned>(health: &Value, which: &str) -> Result<T> {
    serde_json::from_value(health[which].clone())
        .with_context(|| format!("/healthz has no {which} counts"))
}

/// Order -> last download ended, when every agent's download ended.
fn all_done_secs(pushed: &Pushed) -> Option<f64> {
    let ended = pushed.completed + pushed.failed;
    let last = pushed
        .last_done_unix_us
        .filter(|_| ended >= pushed.expected)?;
    Some(last.saturating_sub(pushed.started_unix_us) as f64 / 1e6)
}

fn print_results(r: &PushResults) {
    let p99 = |s: &Stretch| s.heartbeats.as_ref().map(|h| h.p99_ms);
    println!(
        "    push of {} agents: {} completed, {} failed, {} busy answers, peak {} streams \
         (limit {}), peak {} checks waiting (limit {}, {} refused), all done {:?} s; \
         heartbeat p99 {:?} -> {:?} ms; server {:.0} -> {:.0} MB",
        r.agents,
        r.completed,
        r.failed,
        r.busy_answers,
        r.peak_streams,
        r.max_downloads,
        r.checks.peak,
        r.checks.limit,
        r.checks.refused,
        r.all_done_secs,
        p99(&r.before),
        p99(&r.during),
        r.before.server_rss_mb,
        r.during.server_rss_mb,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(expected: usize, completed: usize, failed: usize) -> Pushed {
        let started = 1_000_000;
        Pushed {
            expected,
            completed,
            failed,
            first_error: None,
            busy: 0,
            bytes: 0,
            started_unix_us: started,
            last_done_unix_us: Some(started + 2_500_000),
            window: Window {
                connected: expected,
                latencies_us: Vec::new(),
                heartbeat_errors: 0,
                ws_drops: 0,
                secs: 2.5,
            },
        }
    }

    #[test]
    fn the_push_is_done_only_when_every_download_ended() {
        assert_eq!(all_done_secs(&pushed(3, 2, 1)), Some(2.5));
        assert_eq!(all_done_secs(&pushed(3, 2, 0)), None);
    }
}
