//! The delta step's part of `BENCHMARKS.md` and `benchmarks.json`: a section between two
//! markers, written with the whole report or, after `cargo xtask bench --delta-only`, spliced
//! into the pages an earlier full run wrote (the other sections stay as they were).
//!
//! This module only formats: it never measures a run.

use std::fmt::Write as _;

use super::splice::Section;
use super::{StepSection, spread_cell};
use crate::bench::delta::{DeltaResults, WayResults};
use crate::bench::machine::Machine;
use crate::bench::stats::Summary;

/// Where the step's numbers live in the pages.
const SECTION: Section = Section {
    begin: "<!-- delta step: begin -->",
    end: "<!-- delta step: end -->",
    json_key: "delta",
};

impl StepSection for DeltaResults {
    const SECTION: Section = SECTION;

    fn section(&self, machine: &Machine, mode: &str) -> String {
        section(self, machine, mode)
    }
}

/// Reads one row's numbers from either way of updating.
type Pick = fn(&WayResults) -> &Summary;

/// The step's section of `BENCHMARKS.md`, markers included.
fn section(results: &DeltaResults, machine: &Machine, mode: &str) -> String {
    let mut md = format!(
        "{}\n## Patch release: delta against full package\n\n",
        SECTION.begin
    );
    let _ = writeln!(
        md,
        "Measured by `cargo xtask bench` ({mode}) on {} ({} logical cores) on {}: {} -> {} (the \
         same sources stamped one major version higher, the change of a patch release) on one \
         machine and a fresh server per run, published with a delta from the running version \
         (`--delta-from 1`) or without (`--delta-from 0`), {} runs each. Bytes are what the \
         agent reported moving (`details.transfer`); \"package ready\" is the agent's own time \
         from its download's start to a verified package, the delta's rebuild included; on \
         loopback the download itself costs little, so the delta's extra time is the rebuild. \
         The full package is {} bytes.\n",
        machine.cpu,
        machine.cores,
        machine.date,
        results.from,
        results.to,
        results.delta.publish_ms.n,
        results.package_bytes,
    );
    let _ = writeln!(md, "| | delta | full package |");
    let _ = writeln!(md, "|---|---|---|");
    let (delta, full) = (&results.delta, &results.full);
    let share = |w: &WayResults| match results.package_bytes {
        0 => "-".to_owned(),
        package => format!("{:.1} %", w.transfer_bytes as f64 * 100.0 / package as f64),
    };
    let _ = writeln!(
        md,
        "| bytes moved per update | {} ({}) | {} ({}) |",
        delta.transfer_bytes,
        share(delta),
        full.transfer_bytes,
        share(full)
    );
    let rows: [(&str, Pick); 3] = [
        ("package ready on the agent (apply)", |w| {
            &w.package_ready_ms
        }),
        ("`release publish`", |w| &w.publish_ms),
        ("publish -> new version running", |w| &w.to_new_version_ms),
    ];
    for (what, pick) in rows {
        let _ = writeln!(
            md,
            "| {what} | {} | {} |",
            spread_cell(pick(delta), "ms", 1),
            spread_cell(pick(full), "ms", 1)
        );
    }
    md.push('\n');
    md.push_str(SECTION.end);
    md.push('\n');
    md
}
