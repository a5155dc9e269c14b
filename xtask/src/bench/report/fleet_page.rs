//! The fleet-page step's part of `BENCHMARKS.md` and `benchmarks.json`: a section between two
//! markers, written with the whole report or, after `cargo xtask bench --fleet-page-only`,
//! spliced into the pages an earlier full run wrote (the other sections stay as they were).
//!
//! This module only formats: it never measures a run.

use std::fmt::Write as _;

use super::StepSection;
use super::splice::Section;
use crate::bench::fleet_page::{FleetPageResults, PAGE_SIZE, RELEASE};
use crate::bench::machine::Machine;

/// A page must be answered within this (the goal at 50,000 agents).
const PAGE_GOAL_MS: f64 = 200.0;
/// Where the step's numbers live in the pages.
const SECTION: Section = Section {
    begin: "<!-- fleet page step: begin -->",
    end: "<!-- fleet page step: end -->",
    json_key: "fleet_page",
};

impl StepSection for FleetPageResults {
    const SECTION: Section = SECTION;

    fn section(&self, machine: &Machine, mode: &str) -> String {
        section(self, machine, mode)
    }
}

/// The step's section of `BENCHMARKS.md`, markers included.
fn section(results: &FleetPageResults, machine: &Machine, mode: &str) -> String {
    let mut md = format!(
        "{}\n## Dashboard at {} agents\n\n",
        SECTION.begin, results.agents
    );
    let _ = writeln!(
        md,
        "Measured by `cargo xtask bench` ({mode}) on {} ({} logical cores) on {}: a `cms-server` \
         on SQLite holding {} agents registered through the agent API, {} of which reported a \
         whole update to {RELEASE} (offered to healthy) through it and then heartbeated on it \
         ({:.0} s in all), then {} \
         requests of each kind (request sent -> whole answer read): pages of {PAGE_SIZE} of \
         the agent list, the fleet's cards, the releases page with the release's funnel, and \
         an agent's report of three update steps from agents that had reported none, ending \
         verified or failed (a failure runs the halt rule, which counts the funnel again; its \
         threshold was set out of reach so every failure does). Load average when the timing \
         started: {}.\n",
        machine.cpu,
        machine.cores,
        machine.date,
        results.agents,
        results.reporting,
        results.fill_secs,
        results.pages.first().map_or(0, |p| p.ms.n),
        results.load_average,
    );
    let _ = writeln!(
        md,
        "| request | for | median | spread | n | goal | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for page in &results.pages {
        let (goal, verdict) = match (page.is_page, page.ms.median <= PAGE_GOAL_MS) {
            (false, _) => ("-".to_owned(), "-"),
            (true, met) => (
                format!("<= {PAGE_GOAL_MS:.0} ms"),
                if met { "met" } else { "**missed**" },
            ),
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {:.1} ms | {:.1}-{:.1} ms | {} | {goal} | {verdict} |",
            page.request, page.what, page.ms.median, page.ms.min, page.ms.max, page.ms.n
        );
    }
    md.push('\n');
    md.push_str(SECTION.end);
    md.push('\n');
    md
}
