//! The backend goes away: the agent keeps running, buffers its error reports within the bound,

#![cfg(unix)] // real processes, signals and the Linux server binary; not for Wine
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test
//! and once the backend is back every buffered report is stored exactly once.

mod util;

use std::collections::HashSet;
use std::path::Path;

use cms_protocol::ErrorReport;
use util::{Agent, Server, wait_for};

const BOUND: usize = 5;

fn buffered(data: &Path) -> Vec<ErrorReport> {
    let text = std::fs::read_to_string(data.join("error_reports.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn dropped(data: &Path) -> u64 {
    std::fs::read_to_string(data.join("error_reports.dropped"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0)
}

/// A v2 config with a small buffer bound, so a short outage floods it.
fn write_config(data: &Path, server: &str) {
    std::fs::create_dir_all(data).unwrap();
    let config = serde_json::json!({
        "config_version": 2,
        "server_url": server,
        "error_buffer_max_reports": BOUND,
    });
    std::fs::write(data.join("config.json"), config.to_string()).unwrap();
}

/// A server and an agent data dir (with a small buffer bound) in one temp dir.
fn outage_setup() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Server,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = Server::start(&server_dir);
    let data = dir.path().join("agent");
    write_config(&data, &server.url);
    (dir, server_dir, server, data)
}

#[test]
fn reports_are_buffered_bounded_and_delivered_once_after_an_outage() {
    let (_dir, server_dir, server, data) = outage_setup();
    let listen = server.listen_addr();
    let mut agent = Agent::start(
        &data,
        &["--status-interval", "1", "--update-poll-interval", "1"],
    );
    server.wait_for_agent_state("IDLE");
    server.stop();

    // Every failed heartbeat and update check is a report: far more than the bound.
    wait_for("the buffer to overflow", || {
        (dropped(&data) >= 3).then_some(())
    });
    let held = buffered(&data);
    assert_eq!(held.len(), BOUND, "the bound must hold under the flood");
    assert!(
        agent.is_running(),
        "the agent must keep running without its backend"
    );

    let server = Server::start_on(&server_dir, &listen);
    wait_for("the buffer to drain", || {
        (buffered(&data).is_empty() && dropped(&data) == 0).then_some(())
    });
    let stored = server.errors();
    let ids: Vec<&str> = stored.iter().map(|e| e.report_id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a report was stored twice");
    for report in &held {
        assert!(
            unique.contains(report.report_id.as_str()),
            "buffered report {} lost",
            report.report_id
        );
    }
    let overflow = stored
        .iter()
        .find(|e| e.kind == "error_buffer_overflow")
        .expect("overflow report");
    assert!(overflow.message.contains("dropped"), "{}", overflow.message);
    assert!(agent.is_running());
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn reports_buffered_before_a_restart_are_sent_at_the_next_start() {
    let (_dir, server_dir, server, data) = outage_setup();
    let listen = server.listen_addr();
    let mut agent = Agent::start(&data, &["--status-interval", "1"]);
    server.wait_for_agent_state("IDLE");
    server.stop();
    wait_for("a buffered report", || {
        (!buffered(&data).is_empty()).then_some(())
    });
    assert_eq!(agent.stop().code(), Some(0));
    let held = buffered(&data);

    let server = Server::start_on(&server_dir, &listen);
    let mut agent = Agent::start(&data, &["--status-interval", "3600"]);
    wait_for("the buffer to drain at start", || {
        buffered(&data).is_empty().then_some(())
    });
    let stored: HashSet<String> = server.errors().into_iter().map(|e| e.report_id).collect();
    for report in &held {
        assert!(
            stored.contains(&report.report_id),
            "report {} lost across the restart",
            report.report_id
        );
    }
    assert_eq!(agent.stop().code(), Some(0));
}
