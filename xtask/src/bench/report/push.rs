//! The download push's part of `BENCHMARKS.md` and `benchmarks.json`: a section between two
//! markers, written with the whole report or, after `cargo xtask bench --push-only`, spliced
//! into the pages an earlier full run wrote (the other sections stay as they were).
//!
//! This module only formats: it never measures a run, and it never turns a number into a
//! verdict the measurement did not give (a push that did not finish says so).

use std::fmt::Write as _;

use super::StepSection;
use super::splice::Section;
use crate::bench::machine::Machine;
use crate::bench::push::{PushResults, Stretch};
use crate::bench::swarm::Heartbeats;

/// Where the step's numbers live in the pages.
const SECTION: Section = Section {
    begin: "<!-- push step: begin -->",
    end: "<!-- push step: end -->",
    json_key: "push",
};

impl StepSection for PushResults {
    const SECTION: Section = SECTION;

    fn section(&self, machine: &Machine, mode: &str) -> String {
        section(self, machine, mode)
    }
}

/// One row of the before/during table: its name and how to read it from a stretch.
type Row = (&'static str, fn(&Stretch) -> String);

/// The step's section of `BENCHMARKS.md`, markers included.
fn section(r: &PushResults, machine: &Machine, mode: &str) -> String {
    let mut md = format!(
        "{}\n## Download push: {} agents download a release at once\n\n",
        SECTION.begin, r.agents
    );
    let _ = writeln!(
        md,
        "Measured by `cargo xtask bench` ({mode}) on {} ({} logical cores) on {}: one \
         `cms-server` (SQLite) at its default `--max-downloads` ({} streams at once here), \
         {} simulated agents (`cms-loadgen swarm`, a heartbeat every {} s each on its \
         WebSocket). Release {} ({} bytes, the agent build) is published and pushed; then every \
         agent does what the push asks, as the agent does: {}, then downloads the package over \
         loopback, waiting out `503` + `Retry-After` (with jitter) and discarding the bytes. \
         \"Before\" is an idle \
         window; \"during\" runs from the order to the last download's end (server memory: \
         the peak of readings every 100 ms). Heartbeats are timed in the load generator, which \
         shares the cores with the server: its own CPU is shown because a busy load generator \
         lengthens them too.\n",
        machine.cpu,
        machine.cores,
        machine.date,
        r.max_downloads,
        r.agents,
        r.heartbeat_secs,
        r.version,
        r.package_bytes,
        check_moment(r.check_spread_secs),
    );
    let _ = writeln!(md, "| | before push | during push |");
    let _ = writeln!(md, "|---|---|---|");
    let rows: [Row; 7] = [
        ("heartbeats answered", |s| {
            beats(s, |h| h.heartbeats.to_string())
        }),
        ("heartbeat p50", |s| {
            beats(s, |h| format!("{:.1} ms", h.p50_ms))
        }),
        ("heartbeat p99", |s| {
            beats(s, |h| format!("{:.1} ms", h.p99_ms))
        }),
        ("heartbeat failures", |s| {
            beats(s, |h| h.failures.to_string())
        }),
        ("server memory (VmRSS)", |s| {
            format!("{:.1} MB", s.server_rss_mb)
        }),
        ("server CPU", |s| {
            format!("{:.0} % of a core", s.server_cpu_percent)
        }),
        ("load generator CPU", |s| {
            format!("{:.0} % of a core", s.loadgen_cpu_percent)
        }),
    ];
    for (what, read) in rows {
        let _ = writeln!(md, "| {what} | {} | {} |", read(&r.before), read(&r.during));
    }
    downloads(&mut md, r);
    md.push('\n');
    md.push_str(SECTION.end);
    md.push('\n');
    md
}

/// When the agents ran their update check: at once, or within the push's spread.
fn check_moment(spread_secs: Option<u32>) -> String {
    match spread_secs {
        Some(secs) => format!(
            "the update check at a random moment of the {secs} s the push spread the checks over \
             (`spread_secs`, docs/protocol.md)"
        ),
        None => "the update check at once (the push asked for no spread)".to_owned(),
    }
}

/// A heartbeat figure of a stretch, or a dash when no heartbeat fell in it.
fn beats(stretch: &Stretch, read: fn(&Heartbeats) -> String) -> String {
    stretch.heartbeats.as_ref().map_or("-".to_owned(), read)
}

/// The downloads' own figures, under the table.
fn downloads(md: &mut String, r: &PushResults) {
    let done = match r.all_done_secs {
        Some(secs) => format!("{secs:.1} s"),
        None => "not every download ended in time (missed)".to_owned(),
    };
    let _ = writeln!(md, "\n| downloads | |\n|---|---|");
    let _ = writeln!(md, "| completed | {} of {} |", r.completed, r.agents);
    let failed = match &r.first_error {
        Some(error) => format!("{} (first: {})", r.failed, error.replace('|', "\\|")),
        None => r.failed.to_string(),
    };
    let _ = writeln!(md, "| failed | {failed} |");
    let _ = writeln!(md, "| order -> last download ended | {done} |");
    let _ = writeln!(
        md,
        "| `503` + `Retry-After` answers waited out | {} (server: {} downloads and {} update checks refused) |",
        r.busy_answers, r.server_refused, r.checks.refused
    );
    let _ = writeln!(
        md,
        "| most update checks waiting at once (`/healthz` peak) | {} of {} |",
        r.checks.peak, r.checks.limit
    );
    let _ = writeln!(
        md,
        "| most streams at once (`/healthz` peak) | {} of {} |",
        r.peak_streams, r.max_downloads
    );
    let _ = writeln!(md, "| package bytes received | {} |", r.bytes);
}
