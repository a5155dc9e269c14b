//! Self-update timings: how long a machine has no agent (old lock released -> new lock held),
//! and how long a published release takes to run on the machine, pushed over the WebSocket or
//! found by polling.
//!
//! Every repetition is a fresh machine (install dir, storage path) and a fresh server running
//! the current version, then the real `release publish` of the next one: the agent downloads
//! it, launches the real updater and stops; the updater swaps and starts the new agent. The
//! lock file is read every millisecond from outside; nothing is taken from the agent's logs.
//! Polling is measured with the server restarted around the publish (it only pushes releases
//! published while it runs), so only the agent's poll timer can find the release.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::fixture::{self, Handover, millis, wait_lock, watch_handover};
use super::plan::Plan;
use super::stats::Summary;

/// The agent's update poll interval while polling is measured, seconds (the default is 3600).
pub const POLL_SECS: u64 = 2;

/// Timings of one way of learning about a release.
#[derive(Debug, Clone, Serialize)]
pub struct PathTimes {
    /// Release committed (publish done, or the server back up) to the new version holding the
    /// lock, milliseconds.
    pub publish_to_new_version_ms: Summary,
    /// Old agent's lock last seen to the new agent's lock first seen, milliseconds.
    pub downtime_ms: Summary,
}

/// Both ways.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateResults {
    /// Pushed over the WebSocket by the server's release watcher.
    pub push: PathTimes,
    /// Found by the agent's update poll (every [`POLL_SECS`] s here).
    pub poll: PathTimes,
    /// Size of the update package (zip) the agent downloaded, bytes.
    pub package_bytes: u64,
}

/// How the release reaches the agent in one repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Push,
    Poll,
}

/// Runs `plan.repeats` updates each way.
pub fn measure(plan: &Plan) -> Result<UpdateResults> {
    let push = repeat(plan, Trigger::Push)?;
    let poll = repeat(plan, Trigger::Poll)?;
    let package = plan
        .work
        .join("update-push-0/server/packages/linux-x86_64")
        .join(&plan.bins.next()?.version);
    let package_bytes = std::fs::read_dir(&package)
        .with_context(|| format!("cannot list {}", package.display()))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    Ok(UpdateResults {
        push,
        poll,
        package_bytes,
    })
}

fn repeat(plan: &Plan, trigger: Trigger) -> Result<PathTimes> {
    let (mut to_new, mut downtime) = (Vec::new(), Vec::new());
    for run in 0..plan.repeats {
        let (available, handover) =
            once(plan, trigger, run).with_context(|| format!("update run {run} ({trigger:?})"))?;
        to_new.push(millis(available, handover.first_new));
        downtime.push(millis(handover.last_old, handover.first_new));
        println!(
            "    {trigger:?} update {run}: release -> new version {:.0} ms, downtime {:.1} ms",
            millis(available, handover.first_new),
            millis(handover.last_old, handover.first_new)
        );
    }
    Ok(PathTimes {
        publish_to_new_version_ms: Summary::of(&to_new).context("no runs")?,
        downtime_ms: Summary::of(&downtime).context("no runs")?,
    })
}

/// One update on a fresh machine: when the release became available, and the handover.
fn once(plan: &Plan, trigger: Trigger, run: usize) -> Result<(Instant, Handover)> {
    let root = plan
        .work
        .join(format!("update-{trigger:?}-{run}").to_lowercase());
    let server_dir = root.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let mut server = fixture::server(plan, &server_dir).start()?;
    let mut machine = fixture::install(&root, &plan.bins.current.agent)?;
    let interval = match trigger {
        Trigger::Push => "3600".to_owned(),
        Trigger::Poll => POLL_SECS.to_string(),
    };
    let pid = machine.start(&[
        "--server",
        server.url(),
        "--update-poll-interval",
        &interval,
    ])?;
    wait_lock(&machine, |r| r.pid == pid)?;
    fixture::wait_registered(&server)?;
    std::thread::sleep(plan.settle);
    let next = plan.bins.next()?;
    let release = fixture::linux_release(&next.version, &next.agent, &next.updater);
    let outcome = std::thread::scope(|scope| -> Result<(Instant, Handover)> {
        let watcher = scope.spawn(|| watch_handover(&machine, pid, |r| r.version == next.version));
        if trigger == Trigger::Poll {
            // Published while the server is down: at its restart it does not push it.
            server.restart(|stopped| stopped.publish(&release))?;
        } else {
            server.publish(&release)?;
        }
        let available = Instant::now();
        let handover = watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the lock watcher panicked"))??;
        Ok((available, handover))
    })?;
    machine.wait_update_settled()?;
    machine.stop_holder()?;
    server.stop()?;
    Ok(outcome)
}
