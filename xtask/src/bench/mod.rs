//! `cargo xtask bench [--quick] [--no-windows] [--agents N] [--max-agents M]` (or one step
//! alone: `--replicas-only`, `--fleet-page-only`, `--delta-only`, `--push-only`): what the agent
//! and the server cost, measured on this machine in one run.
//!
//! One module per family of measurements, each on real processes (release builds, loopback):
//! [`agent`] (idle footprint, start, `--force`, `--status`), [`update`] (downtime, publish to new
//! version), [`delta`] (a patch release as a delta against the full package), [`download`]
//! (agent downloader against curl), [`tls`] (heartbeat latency and download throughput over
//! HTTPS against plain HTTP), [`scale`] (a simulated fleet against one server), [`push`] (N
//! agents downloading a release at once from one server at its default `--max-downloads`,
//! heartbeats and server memory before and during), [`replicas`] (three replicas on PostgreSQL
//! behind haproxy, the fleet over several load generators, a replica killed), [`fleet_page`] (the dashboard at 50,000 agents: the
//! agent list, the cards, a release's funnel, progress reports), [`sizes`]. The result is
//! written as `docs/BENCHMARKS.md` (a table with the machine and date) and
//! `docs/benchmarks.json`. `--replicas-only [--replica-max-agents M]` and
//! `--fleet-page-only [--fleet-page-agents N]` run one of those steps alone (building only the
//! server and the load generator), `--delta-only` the delta step (building the server and both
//! agent releases), `--push-only` the download push (the same builds, `--agents N` agents), and
//! replace its section in those pages ([`report::splice`]).
//! The step modules only measure; [`report`] renders every section.
//!
//! Timings are noisy on shared machines, so everything is repeated and reported as median and
//! spread. `--quick` is a smoke test of the bench itself (debug builds, short windows, small N)
//! that writes to `target/bench/quick/` and never to `docs/`. This task must never turn a
//! measurement into a pass/fail of the run: a goal that is missed is reported as missed.

mod agent;
mod binaries;
mod delta;
mod download;
mod fixture;
mod fleet_page;
#[cfg(test)]
mod golden;
mod haproxy;
mod machine;
mod plan;
mod postgres;
mod procfs;
mod push;
mod replicas;
mod report;
mod scale;
mod sizes;
mod stats;
mod swarm;
mod tls;
mod update;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::build::WINDOWS;
use crate::flags;
use crate::util::{self, step};
use binaries::NextRelease;
use plan::{Budget, Plan};

/// Time the full bench may take on a 2-core machine.
const FULL_BUDGET: Duration = Duration::from_secs(15 * 60);
/// Time a quick run may take.
const QUICK_BUDGET: Duration = Duration::from_secs(5 * 60);

/// `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let quick = flags::take_switch(&mut args, "--quick");
    let no_windows = flags::take_switch(&mut args, "--no-windows");
    let agents = number(
        flags::take_value(&mut args, &["--agents"])?,
        if quick { 50 } else { 5000 },
    )?;
    let max = number(
        flags::take_value(&mut args, &["--max-agents"])?,
        if quick { 100 } else { 30_000 },
    )?;
    let replicas_only = flags::take_switch(&mut args, "--replicas-only");
    let replica_max = number(
        flags::take_value(&mut args, &["--replica-max-agents"])?,
        if quick { 100 } else { 50_000 },
    )?;
    let fleet_page_only = flags::take_switch(&mut args, "--fleet-page-only");
    let fleet_page_agents = number(
        flags::take_value(&mut args, &["--fleet-page-agents"])?,
        if quick { 500 } else { 50_000 },
    )?;
    let delta_only = flags::take_switch(&mut args, "--delta-only");
    let push_only = flags::take_switch(&mut args, "--push-only");
    flags::reject_rest("bench", &args)?;
    if max < agents {
        bail!("--max-agents ({max}) is below --agents ({agents})");
    }
    if replicas_only {
        return replicas_alone(quick, replica_max);
    }
    if fleet_page_only {
        return fleet_page_alone(quick, fleet_page_agents);
    }
    if delta_only {
        return delta_alone(quick);
    }
    if push_only {
        return push_alone(quick, agents);
    }
    require_curl()?;
    let budget = Budget::starting_now(if quick { QUICK_BUDGET } else { FULL_BUDGET });
    let machine = machine::describe();
    let open_files = procfs::raise_open_file_limit(open_files_for(max));
    let mut phases = report::Phases::default();
    let bins = phases.time("build", || {
        if quick {
            binaries::debug(NextRelease::Build)
        } else {
            binaries::release(!no_windows && windows_tools_ready(), NextRelease::Build)
        }
    })?;
    let work = util::target_dir()
        .join("bench")
        .join(if quick { "quick" } else { "full" });
    util::remove_dir_if_exists(&work)?;
    std::fs::create_dir_all(&work)?;
    let sizes = [agents, max, replica_max, fleet_page_agents];
    let plan = plan_for(quick, bins, work, sizes, budget);
    let results = measure(&plan, open_files, &mut phases)?;
    let report = report::Report::new(quick, machine, tools(&plan), results, phases);
    let out = if quick {
        plan.work.clone()
    } else {
        util::project_root().join("docs")
    };
    report.write(&out)
}

fn measure(plan: &Plan, open_files: u64, phases: &mut report::Phases) -> Result<report::Results> {
    let agent = phases.time("agent", || {
        step("agent: idle footprint, start, --force, --status");
        let dir = plan.work.join("agent-server");
        std::fs::create_dir_all(&dir)?;
        let mut server = fixture::server(plan, &dir).start()?;
        let results = agent::measure(plan, &server)?;
        server.stop()?;
        Ok(results)
    })?;
    let update = phases.time("update", || {
        step("update: downtime and publish -> new version, pushed and polled");
        update::measure(plan)
    })?;
    let delta = phases.time("delta", || {
        step(delta::STEP);
        delta::measure(plan)
    })?;
    let download = phases.time("download", || {
        step("download: the agent's downloader and curl on the same package");
        download::measure(plan)
    })?;
    let tls = phases.time("tls", || {
        step("TLS against plain HTTP: heartbeat latency and download throughput");
        tls::measure(plan)
    })?;
    let scale = phases.time("scale", || {
        step("server scale: simulated agents, heartbeat latency, push to all");
        scale::measure(plan, open_files)
    })?;
    let push = phases.time("push", || {
        step(push::STEP);
        push::measure(plan)
    })?;
    let replicas = phases.time("replicas", || {
        step("replicas: three cms-server on PostgreSQL behind haproxy, a fleet, one killed");
        let bins = &plan.bins;
        let work = plan.work.join("replicas");
        Ok(replicas::measure(
            &plan.replicas,
            &bins.server,
            &bins.loadgen,
            &work,
        ))
    })?;
    let fleet_page = phases.time("fleet page", || {
        step(fleet_page::STEP);
        let work = plan.work.join("fleet-page");
        fleet_page::measure(
            &plan.bins.server,
            &work,
            plan.fleet_page_agents,
            plan.repeats,
        )
    })?;
    let sizes = phases.time("sizes", || {
        step("sizes");
        if plan.bins.profile == "release" {
            sizes::measure(plan)
        } else {
            Ok(Vec::new())
        }
    })?;
    Ok(report::Results {
        agent,
        update,
        delta,
        download,
        tls,
        scale,
        push,
        replicas,
        fleet_page,
        sizes,
    })
}

/// `--replicas-only`: the replica step alone.
fn replicas_alone(quick: bool, replica_max: usize) -> Result<()> {
    let plan = if quick {
        plan::ReplicaPlan::quick(replica_max)
    } else {
        plan::ReplicaPlan::full(replica_max)
    };
    let measure = |tools: &binaries::FleetTools, work: &Path| {
        step("replicas: three cms-server on PostgreSQL behind haproxy, a fleet, one killed");
        Ok(replicas::measure(
            &plan,
            &tools.server,
            &tools.loadgen,
            work,
        ))
    };
    step_alone(quick, "replica", measure)
}

/// `--fleet-page-only`: the dashboard step alone.
fn fleet_page_alone(quick: bool, agents: usize) -> Result<()> {
    let repeats = if quick {
        plan::QUICK_REPEATS
    } else {
        plan::FULL_REPEATS
    };
    let measure = |tools: &binaries::FleetTools, work: &Path| {
        step(fleet_page::STEP);
        fleet_page::measure(&tools.server, work, agents, repeats)
    };
    step_alone(quick, "fleet-page", measure)
}

/// `--delta-only`: the delta step alone, with both agent releases built (Linux only).
fn delta_alone(quick: bool) -> Result<()> {
    release_step_alone(quick, "delta", 0, NextRelease::Build, |plan| {
        step(delta::STEP);
        delta::measure(plan)
    })
}

/// `--push-only`: the download push alone, `agents` of them.
fn push_alone(quick: bool, agents: usize) -> Result<()> {
    procfs::raise_open_file_limit((agents as u64 * push::FDS_PER_AGENT).saturating_add(4096));
    release_step_alone(quick, "push", agents, NextRelease::Skip, |plan| {
        step(push::STEP);
        push::measure(plan)
    })
}

/// A step that needs the agent builds (and the next release, when `next` says so), run alone
/// in `target/bench/MODE-NAME` with a fleet of `agents`, and spliced into the pages of an
/// earlier run (`docs/`; for a quick run, that folder).
fn release_step_alone<R: report::StepSection>(
    quick: bool,
    name: &str,
    agents: usize,
    next: NextRelease,
    measure: impl FnOnce(&Plan) -> Result<R>,
) -> Result<()> {
    let machine = machine::describe();
    let bins = if quick {
        binaries::debug(next)?
    } else {
        binaries::release(false, next)?
    };
    let profile = bins.profile;
    let mode = if quick { "quick" } else { "full" };
    let work = util::target_dir()
        .join("bench")
        .join(format!("{mode}-{name}"));
    util::remove_dir_if_exists(&work)?;
    std::fs::create_dir_all(&work)?;
    let budget = Budget::starting_now(if quick { QUICK_BUDGET } else { FULL_BUDGET });
    // Only this step runs: the other fleet sizes are not used.
    let plan = plan_for(quick, bins, work, [agents, agents, 0, 0], budget);
    let results = measure(&plan)?;
    let out = if quick {
        plan.work.clone()
    } else {
        util::project_root().join("docs")
    };
    let mode = format!("{mode} run of the {name} step alone, {profile} builds");
    report::splice(&out, &results, &machine, &mode)
}

/// The plan of a quick or a full run.
fn plan_for(
    quick: bool,
    bins: binaries::Binaries,
    work: std::path::PathBuf,
    sizes: [usize; 4],
    budget: Budget,
) -> Plan {
    if quick {
        plan::quick(bins, work, sizes, budget)
    } else {
        plan::full(bins, work, sizes, budget)
    }
}

/// One step run alone: only the server and the load generator built, measured in
/// `target/bench/MODE-NAME`, and spliced into the pages of an earlier run (`docs/`; for a
/// quick run, into that folder).
fn step_alone<R: report::StepSection>(
    quick: bool,
    name: &str,
    measure: impl FnOnce(&binaries::FleetTools, &Path) -> Result<R>,
) -> Result<()> {
    let machine = machine::describe();
    let tools = binaries::fleet_tools(!quick)?;
    let mode = if quick { "quick" } else { "full" };
    let work = util::target_dir()
        .join("bench")
        .join(format!("{mode}-{name}"));
    util::remove_dir_if_exists(&work)?;
    let results = measure(&tools, &work)?;
    let out = if quick {
        work
    } else {
        util::project_root().join("docs")
    };
    let mode = format!(
        "{mode} run of the {name} step alone, {} builds",
        tools.profile
    );
    report::splice(&out, &results, &machine, &mode)
}

/// Open files the server (and the swarm) need for `agents`: one connection each, plus slack.
fn open_files_for(agents: usize) -> u64 {
    (agents as u64 * scale::FDS_PER_AGENT).saturating_add(4096)
}

fn number(value: Option<String>, default: usize) -> Result<usize> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse()
            .with_context(|| format!("{v:?} is not a number of agents")),
    }
}

fn require_curl() -> Result<()> {
    match Command::new("curl").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!(
            "the bench compares the agent's downloader with curl: install it (apt-get install curl)"
        ),
    }
}

/// Whether the Windows cross-build can run here (the lane's mingw linker and rustup target).
fn windows_tools_ready() -> bool {
    let linker = Command::new("x86_64-w64-mingw32-gcc")
        .arg("--version")
        .output();
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let ready = linker.is_ok_and(|o| o.status.success())
        && targets.is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == WINDOWS.triple)
        });
    if !ready {
        eprintln!(
            "bench: no Windows lane tools (bash .ci/windows-deps.sh); Windows sizes are not measured"
        );
    }
    ready
}

/// Versions of everything the numbers depend on.
fn tools(plan: &Plan) -> Vec<(String, String)> {
    let agent = plan.bins.current.agent.to_string_lossy().into_owned();
    [
        ("cms_agent", machine::tool_version(&agent, &["--version"])),
        ("rustc", machine::tool_version("rustc", &["--version"])),
        ("cargo profile", plan.bins.profile.to_owned()),
        ("curl", machine::tool_version("curl", &["--version"])),
        ("wine", machine::tool_version("wine", &["--version"])),
    ]
    .into_iter()
    .map(|(name, version)| (name.to_owned(), version))
    .collect()
}
