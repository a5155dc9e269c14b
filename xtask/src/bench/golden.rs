//! The bench's pages for fixed sample results, compared byte for byte with the text the
//! renderer wrote for them (`testdata/`): the whole report of a full and of a quick run, and a
//! full run's pages after four steps were run alone and spliced in. After a change to the
//! pages that is meant, `CMS_BLESS_GOLDEN=1 cargo test -p xtask golden` rewrites `testdata/`
//! (then read the diff).
//!
//! Test-only. It must never measure anything or depend on this machine: every figure, the
//! machine and the phase times are literals here.

use std::path::Path;

use super::agent::{AgentResults, Idle, Lifecycle};
use super::delta::{DeltaResults, WayResults};
use super::download::DownloadResults;
use super::fleet_page::{FleetPageResults, PageTiming};
use super::machine::Machine;
use super::push::{CheckLine, PushResults, Stretch};
use super::replicas::{Failover, ReplicaResults, ReplicaRun, ReplicaStep};
use super::report::{self, Phases, Report, Results};
use super::scale::{ScaleResults, Step};
use super::sizes::{PlatformSizes, Size};
use super::stats::Summary;
use super::swarm::Heartbeats;
use super::tls::{TlsResults, TransportResults};
use super::update::{PathTimes, UpdateResults};

fn summary(n: usize, median: f64, min: f64, max: f64) -> Summary {
    Summary {
        n,
        median,
        min,
        max,
    }
}

fn machine() -> Machine {
    Machine {
        cpu: "Sample CPU @ 2.00GHz".into(),
        cores: 2,
        ram_mib: 7958,
        os: "Sample Linux 1".into(),
        kernel: "6.1.0-sample".into(),
        date: "2025-01-02T03:04:05Z".into(),
        load_average: "1.50 1.25 1.00".into(),
    }
}

fn tools() -> Vec<(String, String)> {
    [
        ("cms_agent", "cms_agent 1.2.3"),
        ("rustc", "rustc 1.90.0"),
        ("cargo profile", "release"),
        ("curl", "curl 8.0"),
        ("wine", "not installed"),
    ]
    .into_iter()
    .map(|(name, version)| (name.to_owned(), version.to_owned()))
    .collect()
}

fn heartbeats(agents: usize, p99_ms: f64, failures: u64) -> Heartbeats {
    Heartbeats {
        agents,
        connected: agents,
        ramp_secs: 12.4,
        window_secs: 30.0,
        heartbeats: agents * 3,
        p50_ms: 1.26,
        p99_ms,
        max_ms: p99_ms * 2.0,
        failures,
    }
}

fn scale_step(agents: usize, holds: bool) -> Step {
    Step {
        window: heartbeats(agents, if holds { 40.5 } else { 120.0 }, u64::from(!holds)),
        server_rss_mb: 61.7,
        server_cpu_percent: 12.34,
        loadgen_cpu_percent: 45.6,
        push_first_ms: Some(3.2),
        push_all_ms: holds.then_some(812.9),
        holds,
    }
}

fn transport(factor: f64) -> TransportResults {
    TransportResults {
        heartbeat_p50_ms: summary(5, 0.41 * factor, 0.38 * factor, 0.52 * factor),
        heartbeat_p99_ms: summary(5, 1.1 * factor, 0.9 * factor, 2.3 * factor),
        first_request_ms: summary(5, 3.4 * factor, 3.0 * factor, 4.9 * factor),
        download_mb_per_s: summary(5, 900.0 / factor, 800.0 / factor, 950.0 / factor),
    }
}

fn replica_step(agents: usize, holds: bool) -> ReplicaStep {
    ReplicaStep {
        window: heartbeats(agents, if holds { 55.5 } else { 150.0 }, 0),
        replicas_rss_mb: 300.2,
        replica_kb_per_agent: 6.04,
        replicas_cpu_percent: 88.8,
        haproxy_rss_mb: 40.4,
        haproxy_cpu_percent: 22.2,
        loadgen_cpu_percent: 70.7,
        load_average: 3.33,
        publish_ms: 456.7,
        push_first_ms: Some(120.0),
        push_all_ms: holds.then_some(2345.6),
        holds,
    }
}

fn replica_run(failover: bool) -> ReplicaResults {
    ReplicaResults::Measured(Box::new(ReplicaRun {
        replicas: 3,
        loadgen_processes: 4,
        agents_per_loadgen: 12_500,
        heartbeat_secs: 60,
        open_file_limit: 1_048_576,
        haproxy: "HAProxy version 2.6.12".into(),
        postgres: "15.8".into(),
        load_at_start: [2.25, 1.5, 0.75],
        steps: vec![replica_step(10_000, true), replica_step(50_000, false)],
        largest_held: Some(10_000),
        stopped_because: "the 50000-agent step did not hold".into(),
        failover: failover.then_some(Failover {
            agents: 10_000,
            dropped: 3333,
            all_back_ms: Some(4567.0),
            connected_at_end: 10_000,
        }),
        failover_error: (!failover).then(|| "haproxy did not come back".into()),
    }))
}

fn fleet_page(agents: usize) -> FleetPageResults {
    let page = |request: &str, what: &'static str, is_page: bool, median: f64| PageTiming {
        request: request.into(),
        what,
        is_page,
        ms: summary(15, median, median * 0.5, median * 3.0),
    };
    FleetPageResults {
        agents,
        reporting: agents / 10,
        fill_secs: 95.5,
        load_average: "2.00 1.00 0.50".into(),
        pages: vec![
            page(
                "/api/v1/fleet/agents?limit=50&sort=name",
                "by name",
                true,
                12.34,
            ),
            page("/api/v1/fleet", "the fleet's cards", true, 250.0),
            page("POST /api/v1/agent/errors", "a report", false, 3.5),
        ],
    }
}

fn sizes() -> Vec<PlatformSizes> {
    vec![
        PlatformSizes {
            platform: "linux-x86_64".into(),
            agent: Size::Bytes(7_654_321),
            updater: Size::Bytes(1_234_567),
            installer: Size::NotMeasured("no installer on Linux".into()),
            update_package: Size::Bytes(3_456_789),
        },
        PlatformSizes {
            platform: "windows-x86_64".into(),
            agent: Size::NotMeasured("no mingw".into()),
            updater: Size::NotMeasured("no mingw".into()),
            installer: Size::NotMeasured("no Inno Setup".into()),
            update_package: Size::Bytes(4_000_000),
        },
    ]
}

fn delta(factor: f64) -> DeltaResults {
    let way = |bytes: u64, ready: f64, publish: f64| WayResults {
        transfer_bytes: bytes,
        publish_ms: summary(3, publish * factor, publish, publish * 2.0),
        package_ready_ms: summary(3, ready * factor, ready, ready * 2.0),
        to_new_version_ms: summary(3, 900.0 * factor, 800.0, 1800.0),
    };
    DeltaResults {
        from: "0.1.0".into(),
        to: "1.0.0".into(),
        package_bytes: 3_820_000,
        delta: way(210_400, 430.0, 1200.0),
        full: way(3_820_000, 16.0, 350.0),
    }
}

/// A push of `agents`; with `finished` false, one download failed and the wait ran out.
fn push(agents: usize, finished: bool) -> PushResults {
    PushResults {
        agents,
        heartbeat_secs: 60,
        max_downloads: 32,
        version: "2.0.0".into(),
        check_spread_secs: Some(25),
        package_bytes: 3_409_140,
        before: Stretch {
            heartbeats: Some(heartbeats(agents, 1.9, 0)),
            server_rss_mb: 48.3,
            server_cpu_percent: 3.2,
            loadgen_cpu_percent: 2.1,
        },
        during: Stretch {
            heartbeats: finished.then(|| heartbeats(agents, 18.75, 0)),
            server_rss_mb: 71.9,
            server_cpu_percent: 96.4,
            loadgen_cpu_percent: 88.0,
        },
        peak_streams: 32,
        busy_answers: 45_120,
        server_refused: 41_250,
        checks: CheckLine {
            limit: 128,
            peak: 128,
            refused: 3_870,
        },
        completed: if finished { agents } else { agents - 1 },
        failed: usize::from(!finished),
        first_error: (!finished)
            .then(|| "package download answered 500 Internal Server Error".into()),
        bytes: 3_409_140 * agents as u64,
        all_done_secs: finished.then_some(42.7),
    }
}

fn results(full: bool) -> Results {
    Results {
        agent: AgentResults {
            idle: Idle {
                window_secs: 60.0,
                rss_mb: summary(12, 5.123, 5.0, 5.5),
                cpu_percent: 0.0421,
                cpu_percent_per_interval: summary(12, 0.04, 0.0, 0.25),
                wakeups_per_sec: 0.53,
            },
            lifecycle: Lifecycle {
                start_to_lock_ms: summary(5, 4.56, 4.0, 6.1),
                force_handover_ms: summary(5, 55.55, 50.0, 70.0),
                status_round_trip_ms: summary(5, 3.21, 3.0, 4.0),
            },
        },
        update: UpdateResults {
            push: PathTimes {
                publish_to_new_version_ms: summary(3, 1234.5, 1100.0, 1500.0),
                downtime_ms: summary(3, 250.25, 200.0, 400.0),
            },
            poll: PathTimes {
                publish_to_new_version_ms: summary(3, 2500.0, 2100.0, 3900.0),
                downtime_ms: summary(3, 310.0, 290.0, 330.0),
            },
            package_bytes: 3_456_789,
        },
        delta: delta(1.0),
        download: DownloadResults {
            package_bytes: 52_428_800,
            agent_mb_per_s: summary(5, 700.0, 650.0, 800.0),
            curl_mb_per_s: summary(5, 750.0, 700.0, 900.0),
            ratio: 0.9333,
        },
        tls: TlsResults {
            heartbeats_per_run: 200,
            load_average: "1.00 0.90 0.80".into(),
            package_bytes: 52_428_800,
            plain: transport(1.0),
            tls: transport(1.5),
        },
        scale: ScaleResults {
            heartbeat_secs: 10,
            open_file_limit: 65_536,
            steps: if full {
                vec![scale_step(5000, true), scale_step(10_000, false)]
            } else {
                Vec::new()
            },
            largest_held: full.then_some(5000),
            stopped_because: "the 10000-agent step did not hold".into(),
        },
        push: push(if full { 5000 } else { 50 }, full),
        replicas: if full {
            replica_run(true)
        } else {
            ReplicaResults::Skipped("no PostgreSQL (install postgresql)".into())
        },
        fleet_page: fleet_page(if full { 50_000 } else { 500 }),
        sizes: if full { sizes() } else { Vec::new() },
    }
}

fn report(full: bool) -> Report {
    let phases = [("build", 123.4), ("agent", 80.6), ("sizes", 0.2)]
        .map(|(name, secs)| (name.to_owned(), secs))
        .to_vec();
    Report::new(
        !full,
        machine(),
        tools(),
        results(full),
        Phases::from(phases),
    )
}

fn pages(report: &Report) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    report.write(dir.path()).unwrap();
    read_pages(dir.path())
}

fn read_pages(dir: &Path) -> (String, String) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    (read("BENCHMARKS.md"), read("benchmarks.json"))
}

/// Compares `pages` with `testdata/NAME.md` and `NAME.json`, or rewrites those files when
/// `CMS_BLESS_GOLDEN=1`.
fn assert_golden(name: &str, (markdown, json): (String, String)) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bench/testdata");
    let (md_path, json_path) = (
        dir.join(format!("{name}.md")),
        dir.join(format!("{name}.json")),
    );
    if std::env::var_os("CMS_BLESS_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(md_path, markdown).unwrap();
        std::fs::write(json_path, json).unwrap();
        return;
    }
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    assert_eq!(markdown, read(&md_path), "{} differs", md_path.display());
    assert_eq!(json, read(&json_path), "{} differs", json_path.display());
}

#[test]
fn a_full_run_is_rendered_as_before() {
    assert_golden("full", pages(&report(true)));
}

#[test]
fn a_quick_run_is_rendered_as_before() {
    assert_golden("quick", pages(&report(false)));
}

#[test]
fn steps_run_alone_are_spliced_as_before() {
    let dir = tempfile::tempdir().unwrap();
    report(true).write(dir.path()).unwrap();
    let mode = "full run of the replica step alone, release builds";
    report::splice(dir.path(), &replica_run(false), &machine(), mode).unwrap();
    let mode = "full run of the fleet-page step alone, release builds";
    report::splice(dir.path(), &fleet_page(60_000), &machine(), mode).unwrap();
    let mode = "full run of the delta step alone, release builds";
    report::splice(dir.path(), &delta(1.1), &machine(), mode).unwrap();
    let mode = "full run of the push step alone, release builds";
    report::splice(dir.path(), &push(5000, false), &machine(), mode).unwrap();
    assert_golden("spliced", read_pages(dir.path()));
}
