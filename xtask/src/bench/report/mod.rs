//! The bench's output, the one renderer of every section: `BENCHMARKS.md` (tables for people,
//! with the machine and the date) and `benchmarks.json` (the same numbers for tools), written
//! side by side by a full run; a step that can run alone ([`StepSection`]: [`replicas`],
//! [`fleet_page`], [`delta`], [`push`]) renders its section here too, and [`splice`] writes it into the pages of an
//! earlier run.
//!
//! Every figure carries its spread and sample count, and every goal its verdict; a number that
//! was not measured says why. This module only formats: it never measures a run; the step
//! modules measure and hand their results here.

mod delta;
mod fleet_page;
mod push;
mod replicas;
mod splice;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::agent::{AgentResults, MB};
use super::delta::DeltaResults;
use super::download::DownloadResults;
use super::fleet_page::FleetPageResults;
use super::machine::Machine;
use super::push::PushResults;
use super::replicas::ReplicaResults;
use super::scale::{P99_GOAL_MS, ScaleResults, Step};
use super::sizes::{PlatformSizes, Size};
use super::stats::Summary;
use super::tls::{TlsResults, TransportResults};
use super::update::{POLL_SECS, UpdateResults};
use splice::Section;

/// Goals from the issue that asked for this bench.
const RSS_GOAL_MB: f64 = 8.0;
const CPU_GOAL_PERCENT: f64 = 0.1;
const DOWNTIME_GOAL_MS: f64 = 300.0;
const PUSH_UPDATE_GOAL_MS: f64 = 3000.0;
const DOWNLOAD_RATIO_GOAL: f64 = 0.9;
const FLEET_GOAL: usize = 20_000;

/// A step that can run alone, and its section of the pages.
pub trait StepSection: Serialize {
    /// Where its numbers live in the pages.
    const SECTION: Section;

    /// Its section of `BENCHMARKS.md`, markers included, for a run in `mode` on `machine`.
    fn section(&self, machine: &Machine, mode: &str) -> String;
}

/// Writes the section and the JSON entry of a step run alone into the pages in `dir`, leaving
/// the other sections as they were.
pub fn splice<R: StepSection>(
    dir: &Path,
    results: &R,
    machine: &Machine,
    mode: &str,
) -> Result<()> {
    let markdown = results.section(machine, mode);
    R::SECTION.splice(dir, &markdown, machine, mode, results)
}

/// How long each phase of the run took.
#[derive(Debug, Default, Serialize)]
pub struct Phases(Vec<(String, f64)>);

impl Phases {
    /// Runs `phase` and records its duration under `name`.
    pub fn time<T>(&mut self, name: &str, phase: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let result = phase().with_context(|| format!("bench phase {name:?} failed"));
        self.0
            .push((name.to_owned(), started.elapsed().as_secs_f64()));
        result
    }

    fn total(&self) -> f64 {
        self.0.iter().map(|(_, secs)| secs).sum()
    }
}

/// Phases with the given durations (a report of fixed sample results).
#[cfg(test)]
impl From<Vec<(String, f64)>> for Phases {
    fn from(phases: Vec<(String, f64)>) -> Self {
        Phases(phases)
    }
}

/// Everything measured.
#[derive(Debug, Serialize)]
pub struct Results {
    /// Idle footprint and process timings.
    pub agent: AgentResults,
    /// Self-update.
    pub update: UpdateResults,
    /// A patch release as a delta against the full package.
    pub delta: DeltaResults,
    /// Download throughput.
    pub download: DownloadResults,
    /// HTTPS against plain HTTP.
    pub tls: TlsResults,
    /// Server scale.
    pub scale: ScaleResults,
    /// A fleet downloading a release at once.
    pub push: PushResults,
    /// Replicas on PostgreSQL behind haproxy.
    pub replicas: ReplicaResults,
    /// The dashboard's agent list at fleet scale.
    pub fleet_page: FleetPageResults,
    /// File sizes (release runs only).
    pub sizes: Vec<PlatformSizes>,
}

/// One run's report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `quick` (smoke test, debug builds) or `full`.
    pub mode: &'static str,
    /// Where it ran.
    pub machine: Machine,
    /// Tool versions, as (name, version).
    pub tools: Vec<(String, String)>,
    /// The numbers.
    pub results: Results,
    /// Seconds per phase.
    pub phases: Phases,
}

impl Report {
    /// Bundles a finished run.
    pub fn new(
        quick: bool,
        machine: Machine,
        tools: Vec<(String, String)>,
        results: Results,
        phases: Phases,
    ) -> Report {
        Report {
            mode: if quick { "quick" } else { "full" },
            machine,
            tools,
            results,
            phases,
        }
    }

    /// Writes `BENCHMARKS.md` and `benchmarks.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self)? + "\n";
        let md_path = dir.join("BENCHMARKS.md");
        let json_path = dir.join("benchmarks.json");
        std::fs::write(&json_path, json)
            .with_context(|| format!("cannot write {}", json_path.display()))?;
        std::fs::write(&md_path, self.markdown())
            .with_context(|| format!("cannot write {}", md_path.display()))?;
        println!(
            "==> wrote {} and {}",
            md_path.display(),
            json_path.display()
        );
        Ok(())
    }

    /// The Markdown page.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.header(&mut md);
        self.summary_table(&mut md);
        tls_table(&mut md, &self.results.tls);
        scale_table(&mut md, &self.results.scale);
        md.push_str(
            &self
                .results
                .delta
                .section(&self.machine, &format!("{} run", self.mode)),
        );
        md.push('\n');
        md.push_str(
            &self
                .results
                .push
                .section(&self.machine, &format!("{} run", self.mode)),
        );
        md.push('\n');
        md.push_str(
            &self
                .results
                .replicas
                .section(&self.machine, &format!("{} run", self.mode)),
        );
        md.push('\n');
        md.push_str(
            &self
                .results
                .fleet_page
                .section(&self.machine, &format!("{} run", self.mode)),
        );
        md.push('\n');
        sizes_table(&mut md, &self.results.sizes);
        self.method(&mut md);
        self.run_table(&mut md);
        md
    }

    fn header(&self, md: &mut String) {
        let m = &self.machine;
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Measured by `cargo xtask bench` ({} run, {} builds) on {}; the raw numbers are in \
             [benchmarks.json](benchmarks.json). Re-run the command to measure another machine. \
             Every figure is the median of several runs with their spread (min-max); \
             MB = 10^6 bytes.\n",
            self.mode,
            self.tools
                .iter()
                .find(|(n, _)| n == "cargo profile")
                .map_or("?", |(_, v)| v),
            m.date
        );
        let _ = writeln!(md, "| machine | |\n|---|---|");
        let _ = writeln!(md, "| CPU | {} ({} logical cores) |", m.cpu, m.cores);
        let _ = writeln!(md, "| memory | {} MiB |", m.ram_mib);
        let _ = writeln!(md, "| system | {}, kernel {} |", m.os, m.kernel);
        let _ = writeln!(
            md,
            "| load average at the start (1 / 5 / 15 min) | {} |",
            m.load_average
        );
        let _ = writeln!(md, "| date (UTC) | {} |\n", m.date);
    }

    fn summary_table(&self, md: &mut String) {
        let r = &self.results;
        let idle = &r.agent.idle;
        let life = &r.agent.lifecycle;
        let _ = writeln!(md, "## Results\n");
        let _ = writeln!(md, "| measurement | median | spread | n | goal | verdict |");
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        let rows = [
            summary_row(
                "agent idle memory (VmRSS)",
                &idle.rss_mb,
                "MB",
                2,
                Some(Goal::AtMost(RSS_GOAL_MB)),
            ),
            row(
                &format!("agent idle CPU over {:.0} s", idle.window_secs),
                idle.cpu_percent,
                &format!(
                    "{} per interval",
                    spread(&idle.cpu_percent_per_interval, "%", 3)
                ),
                idle.cpu_percent_per_interval.n,
                "%",
                3,
                Some(Goal::AtMost(CPU_GOAL_PERCENT)),
            ),
            row(
                "agent idle wakeups",
                idle.wakeups_per_sec,
                "whole window",
                1,
                "/s",
                2,
                None,
            ),
            summary_row(
                "process start -> lock held",
                &life.start_to_lock_ms,
                "ms",
                1,
                None,
            ),
            summary_row(
                "`--force` handover (spawn -> new lock held)",
                &life.force_handover_ms,
                "ms",
                1,
                None,
            ),
            summary_row(
                "`--status` round trip (process spawn -> exit)",
                &life.status_round_trip_ms,
                "ms",
                1,
                None,
            ),
            summary_row(
                "update downtime, push (old lock released -> new lock held)",
                &r.update.push.downtime_ms,
                "ms",
                1,
                Some(Goal::AtMost(DOWNTIME_GOAL_MS)),
            ),
            summary_row(
                "update downtime, poll",
                &r.update.poll.downtime_ms,
                "ms",
                1,
                Some(Goal::AtMost(DOWNTIME_GOAL_MS)),
            ),
            summary_row(
                "publish -> new version holds the lock, WebSocket push",
                &r.update.push.publish_to_new_version_ms,
                "ms",
                0,
                Some(Goal::AtMost(PUSH_UPDATE_GOAL_MS)),
            ),
            summary_row(
                &format!("publish -> new version, polling every {POLL_SECS} s (default 3600 s)"),
                &r.update.poll.publish_to_new_version_ms,
                "ms",
                0,
                None,
            ),
            summary_row(
                &format!(
                    "download {:.0} MB, agent's downloader",
                    r.download.package_bytes as f64 / MB
                ),
                &r.download.agent_mb_per_s,
                "MB/s",
                0,
                None,
            ),
            summary_row(
                "download, curl on the same URL",
                &r.download.curl_mb_per_s,
                "MB/s",
                0,
                None,
            ),
            row(
                "download ratio agent / curl (medians)",
                r.download.ratio,
                "",
                r.download.agent_mb_per_s.n,
                "",
                2,
                Some(Goal::AtLeast(DOWNLOAD_RATIO_GOAL)),
            ),
        ];
        for line in rows {
            let _ = writeln!(md, "{line}");
        }
        for line in fleet_rows(&r.scale) {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md);
    }

    fn method(&self, md: &mut String) {
        let r = &self.results;
        let _ = writeln!(md, "## How it was measured\n");
        let lines = [
            "Everything runs on this machine over loopback: the real `cms-server` (SQLite default), \
             the real agent and updater as `cargo xtask dist` builds them, `release publish` for \
             every release. Nothing is mocked.".to_owned(),
            format!(
                "Idle: one registered agent with its defaults (heartbeat 60 s, update poll 3600 s) holding \
                 its WebSocket; VmRSS, CPU time (`/proc/PID/stat`) and voluntary context switches of all \
                 its threads (`/proc/PID/task/*/status`) read by the bench over {:.0} s.",
                r.agent.idle.window_secs
            ),
            "Process times: taken around real process starts; `agent.lock` is read every millisecond \
             from outside, and a lock counts as held once it names the new process."
                .to_owned(),
            format!(
                "Updates: each run is a fresh machine and server; {} runs per path. Downtime is the gap \
                 between the last read of the old agent's lock and the first read of the new one's. \
                 Polling is measured by publishing while the server is down (it only pushes releases \
                 published while it runs) and timing from its restart. The update package was {:.1} MB.",
                r.update.push.downtime_ms.n,
                r.update.package_bytes as f64 / MB
            ),
            "Download: `cms-loadgen download` calls the agent's `HttpClient::download_file` on the \
             agent's single-threaded runtime (it also flushes the file to disk); curl fetches the same \
             URL with the same token; the two alternate."
                .to_owned(),
            format!(
                "TLS against plain HTTP: two servers of the same build, one on `http://`, one on \
                 `https://` with a certificate (ECDSA P-256) of a CA made for the run, the same \
                 release on both, measured in turn in each of {} rounds. Heartbeats: `cms-loadgen \
                 heartbeats` registers through the agent's own client (its rustls stack and trust, \
                 the CA given with `--ca-cert`) and sends {} heartbeats in a row on one keep-alive \
                 connection, as the agent does; each round gives a p50 and a p99, and the \
                 registration is the first request of a new connection (the TLS handshake \
                 included) in a new process, so over HTTPS it also includes loading the system \
                 trust store once. Download: the {:.0} MB package through the agent's downloader.",
                r.tls.plain.heartbeat_p50_ms.n,
                r.tls.heartbeats_per_run,
                r.tls.package_bytes as f64 / MB
            ),
            format!(
                "Server scale: `cms-loadgen swarm` simulates N agents, each with its own WebSocket \
                 (one connection per agent), sending a heartbeat on it every {} s (+/-10 %, phases \
                 spread); latency is heartbeat sent -> the server's answer read. A step holds when p99 < {P99_GOAL_MS:.0} ms with \
                 no failed heartbeat and no dropped WebSocket. Open-file limit: {}. The search stopped \
                 because {}. Push: publish done -> the agents' WebSockets delivered the event (the server \
                 looks for new releases every second).",
                r.scale.heartbeat_secs, r.scale.open_file_limit, r.scale.stopped_because
            ),
        ];
        for line in lines {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(md);
    }

    fn run_table(&self, md: &mut String) {
        let _ = writeln!(md, "## Tools and run time\n");
        let _ = writeln!(md, "| tool | version |\n|---|---|");
        for (name, version) in &self.tools {
            let _ = writeln!(md, "| {name} | {version} |");
        }
        let _ = writeln!(md, "\n| phase | seconds |\n|---|---|");
        for (name, secs) in &self.phases.0 {
            let _ = writeln!(md, "| {name} | {secs:.0} |");
        }
        let _ = writeln!(md, "| total | {:.0} |", self.phases.total());
    }
}

/// A goal and how a value is judged against it.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn describe(self, unit: &str) -> String {
        match self {
            Goal::AtMost(v) => format!("<= {v} {unit}"),
            Goal::AtLeast(v) => format!(">= {v} {unit}"),
        }
    }

    fn verdict(self, value: f64) -> &'static str {
        let met = match self {
            Goal::AtMost(v) => value <= v,
            Goal::AtLeast(v) => value >= v,
        };
        if met { "met" } else { "**missed**" }
    }
}

fn summary_row(what: &str, s: &Summary, unit: &str, digits: usize, goal: Option<Goal>) -> String {
    row(
        what,
        s.median,
        &spread(s, unit, digits),
        s.n,
        unit,
        digits,
        goal,
    )
}

fn row(
    what: &str,
    value: f64,
    spread: &str,
    n: usize,
    unit: &str,
    digits: usize,
    goal: Option<Goal>,
) -> String {
    let (goal_text, verdict) = goal.map_or((String::new(), ""), |g| {
        (g.describe(unit), g.verdict(value))
    });
    format!("| {what} | {value:.digits$} {unit} | {spread} | {n} | {goal_text} | {verdict} |")
}

fn spread(s: &Summary, unit: &str, digits: usize) -> String {
    format!("{:.digits$}-{:.digits$} {unit}", s.min, s.max)
}

/// The fleet rows of the summary: the first step in detail, and the largest N that held.
fn fleet_rows(scale: &ScaleResults) -> Vec<String> {
    let mut rows = Vec::new();
    if let Some(first) = scale.steps.first() {
        let n = first.window.agents;
        let goal = Goal::AtMost(P99_GOAL_MS);
        rows.push(format!(
            "| heartbeat latency, {n} agents (p50 / p99 / max) | {:.1} / {:.1} / {:.1} ms | over {} heartbeats | {} | p99 < {P99_GOAL_MS} ms | {} |",
            first.window.p50_ms, first.window.p99_ms, first.window.max_ms, first.window.heartbeats, first.window.heartbeats, goal.verdict(first.window.p99_ms)
        ));
        rows.push(format!(
            "| server with {n} agents: memory, CPU | {:.0} MB, {:.1} % of a core | | 1 | | |",
            first.server_rss_mb, first.server_cpu_percent
        ));
        rows.push(format!(
            "| push a release to all {n} agents (publish done -> last notified) | {} | first after {} | {n} | | |",
            optional_ms(first.push_all_ms),
            optional_ms(first.push_first_ms)
        ));
    }
    let held = scale.largest_held;
    let verdict = Goal::AtLeast(FLEET_GOAL as f64).verdict(held.unwrap_or(0) as f64);
    rows.push(format!(
        "| largest fleet held (p99 < {P99_GOAL_MS} ms, no failures) | {} agents | steps of {} | {} | >= {FLEET_GOAL} | {verdict} |",
        held.map_or_else(|| "none".into(), |n| n.to_string()),
        scale.steps.get(1).map_or(0, |s| s.window.agents.saturating_sub(scale.steps[0].window.agents)),
        scale.steps.len()
    ));
    rows
}

fn optional_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "not all notified".into(), |ms| format!("{ms:.0} ms"))
}

/// Picks one figure of a transport's results.
type SummaryOf = fn(&TransportResults) -> &Summary;

/// Plain HTTP and HTTPS, row by row, with the TLS cost.
fn tls_table(md: &mut String, tls: &TlsResults) {
    let _ = writeln!(md, "## TLS against plain HTTP\n");
    let _ = writeln!(
        md,
        "Same server build, same machine, measured in turn; load average when this phase \
         started: {} (1 / 5 / 15 min, {} heartbeats per run).\n",
        tls.load_average, tls.heartbeats_per_run
    );
    let _ = writeln!(
        md,
        "| measurement | plain HTTP | HTTPS | HTTPS / plain | n |\n|---|---|---|---|---|"
    );
    let rows: [(&str, SummaryOf, &str, usize); 4] = [
        ("heartbeat latency p50", |t| &t.heartbeat_p50_ms, "ms", 2),
        ("heartbeat latency p99", |t| &t.heartbeat_p99_ms, "ms", 2),
        (
            "first request on a new connection (registration)",
            |t| &t.first_request_ms,
            "ms",
            1,
        ),
        ("package download", |t| &t.download_mb_per_s, "MB/s", 0),
    ];
    for (what, field, unit, digits) in rows {
        let (plain, secure) = (field(&tls.plain), field(&tls.tls));
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {:.2} | {} |",
            spread_cell(plain, unit, digits),
            spread_cell(secure, unit, digits),
            secure.median / plain.median,
            plain.n
        );
    }
    let _ = writeln!(md);
}

/// `median unit (min-max unit)`.
fn spread_cell(s: &Summary, unit: &str, digits: usize) -> String {
    format!("{:.digits$} {unit} ({})", s.median, spread(s, unit, digits))
}

fn scale_table(md: &mut String, scale: &ScaleResults) {
    let _ = writeln!(md, "## Server scale, step by step\n");
    let _ = writeln!(
        md,
        "| agents | ramp | window | heartbeats | p50 | p99 | max | failures | server memory | server CPU | load generator CPU | push: first / all | holds |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for step in &scale.steps {
        let _ = writeln!(md, "{}", step_row(step));
    }
    let _ = writeln!(
        md,
        "\nThe search stopped because {}.\n",
        scale.stopped_because
    );
}

fn step_row(s: &Step) -> String {
    format!(
        "| {} | {:.0} s | {:.0} s | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.0} MB | {:.1} % | {:.1} % | {} / {} | {} |",
        s.window.agents,
        s.window.ramp_secs,
        s.window.window_secs,
        s.window.heartbeats,
        s.window.p50_ms,
        s.window.p99_ms,
        s.window.max_ms,
        s.window.failures,
        s.server_rss_mb,
        s.server_cpu_percent,
        s.loadgen_cpu_percent,
        optional_ms(s.push_first_ms),
        optional_ms(s.push_all_ms),
        if s.holds { "yes" } else { "**no**" }
    )
}

fn sizes_table(md: &mut String, sizes: &[PlatformSizes]) {
    let _ = writeln!(md, "## Sizes\n");
    if sizes.is_empty() {
        let _ = writeln!(md, "Not measured in a quick run (debug builds).\n");
        return;
    }
    let _ = writeln!(
        md,
        "| platform | agent | updater | installer | update package |\n|---|---|---|---|---|"
    );
    let mut notes = Vec::new();
    for p in sizes {
        let mut cell = |size: &Size| match size {
            Size::Bytes(b) => format!("{:.2} MB ({b} bytes)", *b as f64 / MB),
            Size::NotMeasured(why) => {
                notes.push(why.clone());
                format!("not measured [{}]", notes.len())
            }
        };
        let line = format!(
            "| {} | {} | {} | {} | {} |",
            p.platform,
            cell(&p.agent),
            cell(&p.updater),
            cell(&p.installer),
            cell(&p.update_package)
        );
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
    for (i, note) in notes.iter().enumerate() {
        let _ = writeln!(md, "[{}] {note}  ", i + 1);
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_judged_in_both_directions() {
        assert_eq!(Goal::AtMost(8.0).verdict(7.9), "met");
        assert_eq!(Goal::AtMost(8.0).verdict(8.1), "**missed**");
        assert_eq!(Goal::AtLeast(0.9).verdict(0.95), "met");
        assert_eq!(Goal::AtLeast(0.9).verdict(0.5), "**missed**");
    }

    #[test]
    fn a_row_shows_median_spread_count_and_verdict() {
        let s = Summary::of(&[10.0, 12.0, 30.0]).unwrap();
        assert_eq!(
            summary_row("downtime", &s, "ms", 1, Some(Goal::AtMost(300.0))),
            "| downtime | 12.0 ms | 10.0-30.0 ms | 3 | <= 300 ms | met |"
        );
    }
}
