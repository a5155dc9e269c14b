//! The server throttles an agent's error reports (429 with Retry-After): the agent keeps the
//! throttled batch buffered, waits as told, and delivers every report exactly once.

#![cfg(unix)] // real processes, signals and the Linux server binary; not for Wine
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::collections::HashSet;
use std::path::Path;

use cms_protocol::ErrorReport;
use util::{Agent, Server, wait_for};

/// Reports waiting in the agent's buffer at start: more than the server's burst.
const BUFFERED: usize = 600;

/// A v2 config pointing at `server` and a buffer of [`BUFFERED`] reports left by an outage.
fn agent_with_a_full_buffer(data: &Path, server: &str) -> Vec<String> {
    std::fs::create_dir_all(data).unwrap();
    let config = serde_json::json!({
        "config_version": 2,
        "server_url": server,
        "error_buffer_max_reports": BUFFERED + 100,
    });
    std::fs::write(data.join("config.json"), config.to_string()).unwrap();
    let reports: Vec<ErrorReport> = (0..BUFFERED)
        .map(|n| ErrorReport {
            report_id: uuid::Uuid::new_v4().to_string(),
            kind: "outage_test".into(),
            message: format!("buffered report {n}"),
            agent_version: "1.0.0".into(),
            created_at: "2026-12-01T10:00:00Z".into(),
            details: serde_json::Value::Null,
        })
        .collect();
    let lines: String = reports
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(data.join("error_reports.jsonl"), lines).unwrap();
    reports.into_iter().map(|r| r.report_id).collect()
}

#[test]
fn throttled_reports_stay_buffered_and_arrive_once_after_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // A burst of 500 (the smallest allowed) refilling at 100 reports a second: the agent's
    // third batch of 200 is refused with Retry-After and must be sent again later.
    let server = Server::start_with(
        &dir.path().join("server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--error-report-burst",
            "500",
            "--error-reports-per-minute",
            "6000",
            "--new-agent-retention",
            "1000",
        ],
        None,
    );
    let data = dir.path().join("agent");
    let ids = agent_with_a_full_buffer(&data, &server.url);
    let mut agent = Agent::start(&data, &["--update-poll-interval", "1"]);
    agent.wait_for_log("the server throttles error reports");
    wait_for("the buffer to drain", || {
        (!data.join("error_reports.jsonl").exists()).then_some(())
    });
    let stored: Vec<String> = server
        .errors()
        .into_iter()
        .filter(|e| e.kind == "outage_test")
        .map(|e| e.report_id)
        .collect();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a report was stored twice");
    for id in &ids {
        assert!(unique.contains(id), "report {id} lost");
    }
    assert!(agent.is_running());
    assert_eq!(agent.stop().code(), Some(0));
}
