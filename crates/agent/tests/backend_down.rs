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

/// Issue 22: a link planted where the buffer goes while the agent runs (as by a handle kept from
/// before the data folder was taken over) is never written through: each report that cannot be
/// buffered is counted as dropped and logged with the link's name, and the count reaches the
/// backend once it is back.
#[test]
fn a_link_planted_in_place_of_the_buffer_is_not_written_through() {
    let (dir, server_dir, server, data) = outage_setup();
    let listen = server.listen_addr();
    let mut agent = Agent::start(
        &data,
        &["--status-interval", "1", "--update-poll-interval", "1"],
    );
    server.wait_for_agent_state("IDLE");
    let outside = dir.path().join("not-the-agents.txt");
    std::fs::write(&outside, b"untouched\n").unwrap();
    std::os::unix::fs::symlink(&outside, data.join("error_reports.jsonl")).unwrap();
    server.stop();

    let log = data.join("logs").join("agent.log");
    wait_for("the refusal in agent.log", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("error_reports.jsonl is a link").then_some(())
    });
    assert_eq!(std::fs::read(&outside).unwrap(), b"untouched\n");
    assert!(dropped(&data) >= 1, "a refused report counts as dropped");

    let server = Server::start_on(&server_dir, &listen);
    wait_for("the drop count to reach the backend", || {
        let errors = server.errors();
        errors
            .iter()
            .any(|e| e.kind == "error_buffer_overflow")
            .then_some(())
    });
    assert_eq!(std::fs::read(&outside).unwrap(), b"untouched\n");
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

/// A report as the agent writes it, for a hand-made buffer file.
fn report_line(id: &str) -> Vec<u8> {
    let report = ErrorReport {
        report_id: id.into(),
        kind: "test_report".into(),
        message: format!("report {id}"),
        agent_version: "0.0.1".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        details: serde_json::Value::Null,
    };
    let mut line = serde_json::to_vec(&report).unwrap();
    line.push(b'\n');
    line
}

/// A buffer damaged the way disks and crashes damage it (one invalid UTF-8 byte in a line, a
/// torn last line): the good reports are delivered, the two bad lines are counted and reported
/// as dropped, and nothing else is lost.
#[test]
fn invalid_utf8_and_torn_lines_cost_only_themselves() {
    let (_dir, _server_dir, server, data) = outage_setup();
    let mut agent = Agent::start(&data, &[]);
    server.wait_for_agent_state("IDLE");
    assert_eq!(agent.stop().code(), Some(0));

    let ids = [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000003",
    ];
    let mut buffer = report_line(ids[0]);
    let mut bad_utf8 = report_line("00000000-0000-4000-8000-00000000000f");
    bad_utf8[20] = 0xff;
    buffer.extend_from_slice(&bad_utf8);
    buffer.extend_from_slice(&report_line(ids[1]));
    buffer.extend_from_slice(&report_line(ids[2]));
    let torn = report_line("00000000-0000-4000-8000-00000000000e");
    buffer.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(data.join("error_reports.jsonl"), buffer).unwrap();

    let mut agent = Agent::start(&data, &[]);
    let overflow = server.wait_for_report("error_buffer_overflow");
    assert!(
        overflow.message.starts_with("2 error reports"),
        "{}",
        overflow.message
    );
    let stored: HashSet<String> = server.errors().into_iter().map(|e| e.report_id).collect();
    for id in ids {
        assert!(stored.contains(id), "good report {id} lost");
    }
    wait_for("the buffer to be empty", || {
        (buffered(&data).is_empty() && dropped(&data) == 0).then_some(())
    });
    assert!(
        agent
            .log()
            .contains("skipped damaged lines in the error buffer")
    );
    assert_eq!(agent.stop().code(), Some(0));
}
