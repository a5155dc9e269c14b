//! Deltas against full packages on a patch release: the bytes an update moves, how long the
//! agent takes to have a verified package, and what making deltas adds to a publish.
//!
//! The next release is the same sources stamped one major version higher: the change of a
//! patch release. Every repetition runs twice, each time on a fresh server and machine on the
//! current version: once published with a delta from it (`--delta-from 1`), once without
//! (`--delta-from 0`). The publish time is the real `release publish` command's; the bytes and
//! the time from the download's start to a verified package (the rebuild included) come from
//! the agent's own update progress (its timestamps and its `transfer` detail), read from the
//! operator API. This module only measures: it never judges a number.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::fixture::{self, millis, wait_lock, watch_handover};
use super::plan::Plan;
use super::stats::Summary;

/// What the step prints when it starts.
pub const STEP: &str = "delta: a patch release as a delta and as the full package";

/// How the next release reaches the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// A delta from the running version.
    Delta,
    /// The full package.
    Full,
}

impl Way {
    /// `--delta-from` of the publish.
    fn delta_from(self) -> &'static str {
        match self {
            Way::Delta => "1",
            Way::Full => "0",
        }
    }

    /// The `transfer` the agent must report.
    pub fn name(self) -> &'static str {
        match self {
            Way::Delta => "delta",
            Way::Full => "full",
        }
    }
}

/// The numbers of one way.
#[derive(Debug, Clone, Serialize)]
pub struct WayResults {
    /// Bytes the agent reported moving for the update (its `transfer` detail).
    pub transfer_bytes: u64,
    /// `release publish` of the next version, start to exit, milliseconds.
    pub publish_ms: Summary,
    /// The agent's download start to its verified package (rebuild included), milliseconds.
    pub package_ready_ms: Summary,
    /// `release publish` done to the new version holding the lock, milliseconds.
    pub to_new_version_ms: Summary,
}

/// Both ways on the same release.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaResults {
    /// The version moved from.
    pub from: String,
    /// The version moved to.
    pub to: String,
    /// Its full package, bytes.
    pub package_bytes: u64,
    /// With a delta from the running version.
    pub delta: WayResults,
    /// With the full package.
    pub full: WayResults,
}

/// What one update showed.
#[derive(Debug, Clone, Copy)]
struct Once {
    transfer_bytes: u64,
    publish_ms: f64,
    package_ready_ms: f64,
    to_new_version_ms: f64,
}

/// Runs `plan.repeats` updates each way.
pub fn measure(plan: &Plan) -> Result<DeltaResults> {
    let delta = repeat(plan, Way::Delta)?;
    let full = repeat(plan, Way::Full)?;
    let next = &plan.bins.next()?.version;
    let package = plan
        .work
        .join("delta-full-0/server/packages/linux-x86_64")
        .join(next)
        .join(format!("cms_agent-{next}-linux-x86_64.zip"));
    let package_bytes = std::fs::metadata(&package)
        .with_context(|| format!("no package at {}", package.display()))?
        .len();
    Ok(DeltaResults {
        from: plan.bins.current.version.clone(),
        to: next.clone(),
        package_bytes,
        delta,
        full,
    })
}

fn repeat(plan: &Plan, way: Way) -> Result<WayResults> {
    let runs = (0..plan.repeats)
        .map(|run| {
            let once =
                once(plan, way, run).with_context(|| format!("{} update run {run}", way.name()))?;
            println!(
                "    {} update {run}: {} bytes, publish {:.0} ms, package ready {:.1} ms, \
                 publish -> new version {:.0} ms",
                way.name(),
                once.transfer_bytes,
                once.publish_ms,
                once.package_ready_ms,
                once.to_new_version_ms
            );
            Ok(once)
        })
        .collect::<Result<Vec<Once>>>()?;
    let summary = |pick: fn(&Once) -> f64| {
        let values: Vec<f64> = runs.iter().map(pick).collect();
        Summary::of(&values).context("no runs")
    };
    Ok(WayResults {
        transfer_bytes: runs.iter().map(|r| r.transfer_bytes).max().unwrap_or(0),
        publish_ms: summary(|r| r.publish_ms)?,
        package_ready_ms: summary(|r| r.package_ready_ms)?,
        to_new_version_ms: summary(|r| r.to_new_version_ms)?,
    })
}

/// One update on a fresh server and machine.
fn once(plan: &Plan, way: Way, run: usize) -> Result<Once> {
    let root = plan.work.join(format!("delta-{}-{run}", way.name()));
    let server_dir = root.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let mut server = fixture::server(plan, &server_dir).start()?;
    let current = &plan.bins.current;
    server.publish(&fixture::linux_release(
        &current.version,
        &current.agent,
        &current.updater,
    ))?;
    let mut machine = fixture::install(&root, &current.agent)?;
    let pid = machine.start(&["--server", server.url(), "--update-poll-interval", "3600"])?;
    wait_lock(&machine, |r| r.pid == pid)?;
    let agent_id = fixture::wait_registered(&server)?;
    std::thread::sleep(plan.settle);
    let next = plan.bins.next()?;
    let release = fixture::linux_release(&next.version, &next.agent, &next.updater);
    let (publish_ms, to_new_version_ms) = std::thread::scope(|scope| -> Result<(f64, f64)> {
        let watcher = scope.spawn(|| watch_handover(&machine, pid, |r| r.version == next.version));
        let started = Instant::now();
        server.publish_with(&release, &["--delta-from", way.delta_from()])?;
        let published = Instant::now();
        let handover = watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the lock watcher panicked"))??;
        Ok((
            millis(started, published),
            millis(published, handover.first_new),
        ))
    })?;
    let path = format!("/api/v1/fleet/agents/{agent_id}");
    let (transfer_bytes, package_ready_ms) = fixture::wait_for("the agent's progress", || {
        progress(&server.get_json(&path)?, &next.version, way)
    })?;
    machine.wait_update_settled()?;
    machine.stop_holder()?;
    server.stop()?;
    Ok(Once {
        transfer_bytes,
        publish_ms,
        package_ready_ms,
        to_new_version_ms,
    })
}

/// From an agent page: the bytes the agent moved for `version` and the milliseconds from its
/// `downloading` step to its `verified` one, once both are in; an error when it moved the
/// package another way than `way`.
fn progress(page: &Value, version: &str, way: Way) -> Result<Option<(u64, f64)>> {
    let events: Vec<&Value> = page["updates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["version"] == version)
        .collect();
    let at = |step: &str| {
        events
            .iter()
            .find(|e| e["step"] == step)
            .and_then(|e| e["created_at"].as_str())
            .map(|t| OffsetDateTime::parse(t, &Rfc3339))
            .transpose()
            .with_context(|| format!("the {step} step's time"))
    };
    let transfer = events
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .find_map(transfer_detail);
    let (Some(started), Some(verified), Some((kind, bytes))) =
        (at("downloading")?, at("verified")?, transfer)
    else {
        return Ok(None);
    };
    if kind != way.name() {
        bail!("the agent took the {kind} package, not the {}", way.name());
    }
    let ready = (verified - started).as_seconds_f64() * 1000.0;
    Ok(Some((bytes, ready)))
}

/// `(kind, bytes)` of the agent's `... (transfer: KIND, N bytes)` detail.
fn transfer_detail(detail: &str) -> Option<(&str, u64)> {
    let rest = &detail[detail.find("(transfer: ")? + "(transfer: ".len()..];
    let (kind, rest) = rest.split_once(", ")?;
    let bytes = rest.split_once(" bytes)")?.0.parse().ok()?;
    Some((kind, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transfer_detail_is_read_from_the_agent_message() {
        let message = "package verified (transfer: delta, 210402 bytes)";
        assert_eq!(transfer_detail(message), Some(("delta", 210_402)));
        assert_eq!(transfer_detail("package verified"), None);
        assert_eq!(transfer_detail("(transfer: full, many bytes)"), None);
    }

    #[test]
    fn package_ready_is_downloading_to_verified_of_the_version() {
        let page = serde_json::json!({"updates": [
            {"version": "2.0.0", "step": "verified", "created_at": "2026-12-06T10:00:01.250Z",
             "detail": "ok (transfer: delta, 1000 bytes)"},
            {"version": "2.0.0", "step": "downloading", "created_at": "2026-12-06T10:00:01Z",
             "detail": null},
            {"version": "1.0.0", "step": "downloading", "created_at": "2026-12-06T09:00:00Z",
             "detail": null},
        ]});
        let (bytes, ms) = progress(&page, "2.0.0", Way::Delta).unwrap().unwrap();
        assert_eq!(bytes, 1000);
        assert!((ms - 250.0).abs() < 1e-6, "{ms}");
        assert!(progress(&page, "2.0.0", Way::Full).is_err());
        assert!(progress(&page, "3.0.0", Way::Delta).unwrap().is_none());
    }
}
