//! The dashboard's agent list at fleet scale: one page of `GET /api/v1/fleet/agents` (searched,
//! sorted and paged by the database) from a `cms-server` holding a fleet of registered agents,
//! for each sort, a substring search, a state filter and the deepest page; request sent ->
//! whole answer read, as the dashboard's page waits for it.
//!
//! The agents register through the agent API (a few clients at a time, the per-source guards
//! lifted as for every bench server), so the rows and indexes are the server's own. This
//! module measures and formats its section of the pages ([`super::splice`]); it never judges a
//! run: a page slower than the goal is reported as missed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::fixture::{self, WAIT};
use super::machine::{self, Machine};
use super::splice::Section;
use super::stats::Summary;
use crate::server::RunningServer;
use crate::util::step;

/// A page must be answered within this (the goal at 50,000 agents).
pub const PAGE_GOAL_MS: f64 = 200.0;
/// Agents per page, as the dashboard asks.
const PAGE_SIZE: usize = 50;
/// Clients registering at the same time.
const REGISTER_THREADS: usize = 4;
/// Requests of each page per repetition of the run's plan.
const SAMPLES_PER_REPEAT: usize = 3;
/// Where the step's numbers live in the pages.
pub const SECTION: Section = Section {
    begin: "<!-- fleet page step: begin -->",
    end: "<!-- fleet page step: end -->",
    json_key: "fleet_page",
};

/// What one kind of page cost.
#[derive(Debug, Clone, Serialize)]
pub struct PageTiming {
    /// The query string after `/api/v1/fleet/agents?`.
    pub query: String,
    /// What the page is for.
    pub what: &'static str,
    /// Milliseconds per request.
    pub ms: Summary,
}

/// What the step measured.
#[derive(Debug, Clone, Serialize)]
pub struct FleetPageResults {
    /// Agents the server held.
    pub agents: usize,
    /// Seconds the registrations took.
    pub fill_secs: f64,
    /// Load average when the timing started (1 / 5 / 15 min).
    pub load_average: String,
    /// Each query's timings.
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
    .map(|(q, what)| (format!("limit={PAGE_SIZE}&{q}"), what))
    .collect()
}

/// Starts the server `exe` in `work`, registers `agents` agents and times each page
/// [`SAMPLES_PER_REPEAT`] times for each of the plan's `repeats`.
pub fn measure(exe: &Path, work: &Path, agents: usize, repeats: usize) -> Result<FleetPageResults> {
    let samples = repeats * SAMPLES_PER_REPEAT;
    std::fs::create_dir_all(work)?;
    let data = work.join("server");
    let mut server = fixture::fleet_server(exe, &data, &work.join("server.log")).start()?;
    let started = Instant::now();
    fill(&server, agents)?;
    let fill_secs = started.elapsed().as_secs_f64();
    step(&format!(
        "fleet page: {agents} agents registered in {fill_secs:.0} s"
    ));
    let load_average = machine::load_average();
    let mut pages = Vec::new();
    for (query, what) in queries(agents) {
        let ms = time_page(&server, &query, samples)?;
        pages.push(PageTiming { query, what, ms });
    }
    server.stop()?;
    Ok(FleetPageResults {
        agents,
        fill_secs,
        load_average,
        pages,
    })
}

fn time_page(server: &RunningServer, query: &str, samples: usize) -> Result<Summary> {
    let path = format!("/api/v1/fleet/agents?{query}");
    let mut ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let page: serde_json::Value = server.get_json(&path)?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(page.is_object(), "GET {path} did not answer a page: {page}");
    }
    Summary::of(&ms).with_context(|| format!("no timings of GET {path}"))
}

/// Registers `agents` agents named `host-NNNNN`, seven versions among them.
fn fill(server: &RunningServer, agents: usize) -> Result<()> {
    let deadline = Instant::now() + WAIT * 10;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..REGISTER_THREADS)
            .map(|worker| {
                scope.spawn(move || -> Result<()> {
                    for i in (worker..agents).step_by(REGISTER_THREADS) {
                        let version = format!("1.{}.0", i % 7);
                        fixture::register_as(server, &format!("host-{i:05}"), &version)?;
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "registering {agents} agents took longer than {:?}",
                            WAIT * 10
                        );
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| anyhow::bail!("a registering thread panicked"))
        })
    })
}

/// The step's section of `BENCHMARKS.md`, markers included.
pub fn section(results: &FleetPageResults, machine: &Machine, mode: &str) -> String {
    let mut md = format!(
        "{}\n## Dashboard agent list at {} agents\n\n",
        SECTION.begin, results.agents
    );
    let _ = writeln!(
        md,
        "Measured by `cargo xtask bench` ({mode}) on {} ({} logical cores) on {}: a `cms-server` \
         on SQLite holding {} agents registered through the agent API ({:.0} s), then {} \
         requests per page of {PAGE_SIZE} of `GET /api/v1/fleet/agents` (request sent -> whole \
         answer read). Load average when the timing started: {}.\n",
        machine.cpu,
        machine.cores,
        machine.date,
        results.agents,
        results.fill_secs,
        results.pages.first().map_or(0, |p| p.ms.n),
        results.load_average,
    );
    let _ = writeln!(
        md,
        "| page | query | median | spread | n | goal | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for page in &results.pages {
        let verdict = if page.ms.median <= PAGE_GOAL_MS {
            "met"
        } else {
            "**missed**"
        };
        let _ = writeln!(
            md,
            "| {} | `{}` | {:.1} ms | {:.1}-{:.1} ms | {} | <= {PAGE_GOAL_MS:.0} ms | {verdict} |",
            page.what, page.query, page.ms.median, page.ms.min, page.ms.max, page.ms.n
        );
    }
    md.push('\n');
    md.push_str(SECTION.end);
    md.push('\n');
    md
}

/// Writes the section and the JSON entry of a run of this step alone into `dir`.
pub fn splice(dir: &Path, results: &FleetPageResults, machine: &Machine, mode: &str) -> Result<()> {
    SECTION.splice(
        dir,
        &section(results, machine, mode),
        machine,
        mode,
        results,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_page_is_the_last_full_one() {
        let queries = queries(50_000);
        assert_eq!(queries.len(), 7);
        assert!(queries.iter().all(|(q, _)| q.starts_with("limit=50&")));
        assert!(queries.iter().any(|(q, _)| q.ends_with("offset=49950")));
    }
}
