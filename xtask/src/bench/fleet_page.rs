//! The dashboard at fleet scale: from a `cms-server` holding a fleet of registered agents, one
//! page of `GET /api/v1/fleet/agents` (searched, sorted and paged by the database) for each
//! sort, a substring search, a state filter and the deepest page; the fleet's cards
//! (`GET /api/v1/fleet`); the releases page with one release's funnel (`GET /api/v1/rollouts`);
//! and an agent's report of an update step, with and without a failure (a failure runs the
//! release's halt rule, which counts the funnel again). Request sent -> whole answer read, as
//! the dashboard (or the agent) waits for it.
//!
//! The agents register through the agent API (a few clients at a time, the per-source guards
//! lifted as for every bench server), and one in [`REPORTING_EVERY`] reports a whole update of
//! the release through it and then heartbeats on it, so the rows and indexes are the server's
//! own. This module only measures: its section of the pages is [`super::report`]'s, and it never
//! judges a run (a page slower than the goal is reported as missed there).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use cms_protocol::{ErrorBatch, ErrorReport, UPDATE_PROGRESS_KIND, UpdateProgress, UpdateStep};
use serde::Serialize;

use super::fixture::{self, WAIT};
use super::machine;
use super::stats::Summary;
use crate::server::RunningServer;
use crate::util::{self, step};

/// What the bench prints when the step starts.
pub const STEP: &str =
    "fleet page: the dashboard's agent list, cards and funnel, and progress reports, at scale";
/// Agents per page, as the dashboard asks.
pub const PAGE_SIZE: usize = 50;
/// Clients registering (and reporting) at the same time.
const REGISTER_THREADS: usize = 4;
/// Requests of each kind per repetition of the run's plan.
const SAMPLES_PER_REPEAT: usize = 3;
/// The release the agents update to (they run 1.x.0).
pub const RELEASE: &str = "2.0.0";
/// The platform the agents register with.
const PLATFORM: &str = "linux-x86_64";
/// One agent in this many reports a whole update of [`RELEASE`], offered to healthy.
const REPORTING_EVERY: usize = 10;

/// What one kind of request cost.
#[derive(Debug, Clone, Serialize)]
pub struct PageTiming {
    /// The request: `GET` path and query, or what an agent posts.
    pub request: String,
    /// What it is for.
    pub what: &'static str,
    /// Whether the page goal applies (a dashboard page, not an agent's report).
    pub is_page: bool,
    /// Milliseconds per request.
    pub ms: Summary,
}

/// What the step measured.
#[derive(Debug, Clone, Serialize)]
pub struct FleetPageResults {
    /// Agents the server held.
    pub agents: usize,
    /// Of them, agents that had reported a whole update of the release.
    pub reporting: usize,
    /// Seconds the registrations took.
    pub fill_secs: f64,
    /// Load average when the timing started (1 / 5 / 15 min).
    pub load_average: String,
    /// Each request's timings.
    pub pages: Vec<PageTiming>,
}

/// The pages timed: each sort, a search, a state filter and the deepest offset.
fn queries(agents: usize) -> Vec<(String, &'static str)> {
    let deepest = agents.saturating_sub(PAGE_SIZE);
    [
        ("sort=hostname".to_owned(), "first page by host name"),
        ("sort=last_seen&order=desc".to_owned(), "last seen first"),
        ("sort=version".to_owned(), "by version"),
        ("sort=state&order=desc".to_owned(), "by state"),
        ("q=host-0042".to_owned(), "substring search (a full scan)"),
        ("state=STARTING&sort=last_seen".to_owned(), "state filter"),
        (
            format!("sort=hostname&offset={deepest}"),
            "the deepest page",
        ),
    ]
    .into_iter()
    .map(|(q, what)| (format!("/api/v1/fleet/agents?limit={PAGE_SIZE}&{q}"), what))
    .chain([
        (
            "/api/v1/fleet".to_owned(),
            "fleet cards (online, state, version, platform)",
        ),
        (
            "/api/v1/rollouts".to_owned(),
            "releases page (one release's funnel)",
        ),
    ])
    .collect()
}

/// Starts the server `exe` in `work`, registers `agents` agents, publishes the release, has
/// one in [`REPORTING_EVERY`] report its update, and times each request
/// [`SAMPLES_PER_REPEAT`] times for each of the plan's `repeats`.
pub fn measure(exe: &Path, work: &Path, agents: usize, repeats: usize) -> Result<FleetPageResults> {
    let samples = repeats * SAMPLES_PER_REPEAT;
    std::fs::create_dir_all(work)?;
    let data = work.join("server");
    let mut server = fixture::fleet_server(exe, &data, &work.join("server.log")).start()?;
    let started = Instant::now();
    let tokens = fill(&server, agents)?;
    publish_release(&server, work)?;
    let reporters: Vec<&str> = tokens
        .iter()
        .step_by(REPORTING_EVERY)
        .map(String::as_str)
        .collect();
    for_each_parallel(&reporters, |token| {
        report(&server, token, &whole_update())?;
        run_release(&server, token)
    })?;
    let fill_secs = started.elapsed().as_secs_f64();
    step(&format!(
        "fleet page: {agents} agents registered, {} of them updated, in {fill_secs:.0} s",
        reporters.len()
    ));
    let load_average = machine::load_average();
    let mut pages = Vec::new();
    for (request, what) in queries(agents) {
        let ms = time_page(&server, &request, samples)?;
        pages.push(PageTiming {
            request,
            what,
            is_page: true,
            ms,
        });
    }
    pages.extend(time_reports(&server, &tokens, samples)?);
    server.stop()?;
    Ok(FleetPageResults {
        agents,
        reporting: reporters.len(),
        fill_secs,
        load_average,
        pages,
    })
}

fn time_page(server: &RunningServer, path: &str, samples: usize) -> Result<Summary> {
    let mut ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let page: serde_json::Value = server.get_json(path)?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            page.is_object() || page.is_array(),
            "GET {path} did not answer a page: {page}"
        );
    }
    Summary::of(&ms).with_context(|| format!("no timings of GET {path}"))
}

/// The release the agents are offered: packaged from two small stand-in files (nothing runs
/// them), with a halt rule that never pauses it, so every failure timed runs the whole rule.
fn publish_release(server: &RunningServer, work: &Path) -> Result<()> {
    let (agent, updater) = (work.join("stand-in-agent"), work.join("stand-in-updater"));
    std::fs::write(&agent, b"a stand-in agent")?;
    std::fs::write(&updater, b"a stand-in updater")?;
    server.publish(&fixture::linux_release(RELEASE, &agent, &updater))?;
    let rule = serde_json::json!({ "action": "set", "halt_percent": 100 });
    server.post_json(&format!("/api/v1/rollouts/{PLATFORM}/{RELEASE}"), &rule)?;
    Ok(())
}

/// Times an agent's report of three update steps, ending verified and ending failed (the
/// halt rule's recount), each from agents that had reported nothing.
fn time_reports(
    server: &RunningServer,
    tokens: &[String],
    samples: usize,
) -> Result<Vec<PageTiming>> {
    let kinds = [
        (
            1,
            "update_progress: offered, downloading, verified",
            "an agent's update progress",
            false,
        ),
        (
            2,
            "update_progress: offered, downloading, failed",
            "an agent's failed update (runs the halt rule)",
            true,
        ),
    ];
    let mut timings = Vec::new();
    for (skip, request, what, fails) in kinds {
        let steps = three_steps(fails);
        let mut ms = Vec::with_capacity(samples);
        for token in tokens
            .iter()
            .skip(skip)
            .step_by(REPORTING_EVERY)
            .take(samples)
        {
            let started = Instant::now();
            report(server, token, &steps)?;
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let ms = Summary::of(&ms).with_context(|| format!("no timings of {request}"))?;
        let request = format!("POST {} ({request})", cms_protocol::paths::ERRORS);
        timings.push(PageTiming {
            request,
            what,
            is_page: false,
            ms,
        });
    }
    Ok(timings)
}

fn whole_update() -> Vec<(UpdateStep, Option<&'static str>)> {
    [
        UpdateStep::Offered,
        UpdateStep::Downloading,
        UpdateStep::Verified,
        UpdateStep::HandedOver,
        UpdateStep::Healthy,
    ]
    .into_iter()
    .map(|step| (step, None))
    .collect()
}

fn three_steps(fails: bool) -> Vec<(UpdateStep, Option<&'static str>)> {
    let last = if fails {
        (UpdateStep::Failed, Some("verifying"))
    } else {
        (UpdateStep::Verified, None)
    };
    vec![
        (UpdateStep::Offered, None),
        (UpdateStep::Downloading, None),
        last,
    ]
}

/// Posts `steps` of the release as the agent of `token`, as an agent reports its progress.
fn report(server: &RunningServer, token: &str, steps: &[(UpdateStep, Option<&str>)]) -> Result<()> {
    let reports = steps
        .iter()
        .map(|(step, failed_step)| progress_report(*step, *failed_step))
        .collect::<Result<_>>()?;
    post_as_agent(
        server,
        token,
        cms_protocol::paths::ERRORS,
        &ErrorBatch { reports },
    )
}

/// Heartbeats as the agent of `token` would once it runs [`RELEASE`].
fn run_release(server: &RunningServer, token: &str) -> Result<()> {
    let status = cms_protocol::StatusReport {
        state: cms_protocol::AgentState::Idle,
        version: RELEASE.to_owned(),
        metrics: cms_protocol::Metrics::default(),
        network: None,
        group: None,
        utc_offset_minutes: None,
    };
    post_as_agent(server, token, cms_protocol::paths::STATUS, &status)
}

/// `POST path` of the agent API with the JSON `body`, as the agent of `token`.
fn post_as_agent(
    server: &RunningServer,
    token: &str,
    path: &str,
    body: &impl Serialize,
) -> Result<()> {
    let url = format!("{}{path}", server.url());
    server
        .client()
        .post(&url)
        .bearer_auth(token)
        .json(body)
        .send()
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("POST {url}"))?;
    Ok(())
}

fn progress_report(step: UpdateStep, failed_step: Option<&str>) -> Result<ErrorReport> {
    let progress = UpdateProgress {
        version: RELEASE.to_owned(),
        platform: PLATFORM.to_owned(),
        step,
        failed_step: failed_step.map(str::to_owned),
        transfer: None,
        transfer_bytes: None,
        reason: None,
    };
    Ok(ErrorReport {
        report_id: util::random_hex()?,
        kind: UPDATE_PROGRESS_KIND.to_owned(),
        message: format!("update to {RELEASE}: {}", step.name()),
        agent_version: "1.0.0".to_owned(),
        created_at: "2026-01-01T00:00:00Z".to_owned(),
        details: serde_json::to_value(&progress)?,
    })
}

/// Registers `agents` agents named `host-NNNNN`, seven versions among them; returns their
/// tokens in the order of their names.
fn fill(server: &RunningServer, agents: usize) -> Result<Vec<String>> {
    let names: Vec<usize> = (0..agents).collect();
    let deadline = Instant::now() + WAIT * 10;
    let tokens = std::sync::Mutex::new(vec![String::new(); agents]);
    for_each_parallel(&names, |i| {
        let version = format!("1.{}.0", i % 7);
        let token = fixture::register_as(server, &format!("host-{i:05}"), &version)?;
        tokens
            .lock()
            .map_err(|_| anyhow::anyhow!("a registering thread panicked"))?[i] = token;
        anyhow::ensure!(
            Instant::now() < deadline,
            "registering {agents} agents took longer than {:?}",
            WAIT * 10
        );
        Ok(())
    })?;
    tokens
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a registering thread panicked"))
}

/// Runs `work` on every item, [`REGISTER_THREADS`] at a time; the first error stops its thread.
fn for_each_parallel<T: Copy + Sync>(
    items: &[T],
    work: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    std::thread::scope(|scope| {
        let work = &work;
        let workers: Vec<_> = (0..REGISTER_THREADS)
            .map(|worker| {
                scope.spawn(move || -> Result<()> {
                    items
                        .iter()
                        .skip(worker)
                        .step_by(REGISTER_THREADS)
                        .try_for_each(|item| work(*item))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| anyhow::bail!("a worker thread panicked"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_page_is_the_last_full_one() {
        let queries = queries(50_000);
        assert_eq!(queries.len(), 9);
        let list = &queries[..7];
        assert!(
            list.iter()
                .all(|(q, _)| q.starts_with("/api/v1/fleet/agents?limit=50&"))
        );
        assert!(queries.iter().any(|(q, _)| q.ends_with("offset=49950")));
    }
}
