//! What agents can make the server store, with the real binary on loopback: update progress
//! fields bounded, ids scoped to their agent, update events kept per agent and by age, a fresh
//! agent's small share of reports, throttled heartbeats and a bounded version history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cms_protocol::{AgentState, ErrorBatch, ErrorBatchResponse, ErrorReport, UPDATE_PROGRESS_KIND};
use common::{Options, Server, Store};
use serde_json::{Value, json};

fn progress(id: &str, version: &str, failed_step: &str) -> ErrorReport {
    ErrorReport {
        report_id: id.into(),
        kind: UPDATE_PROGRESS_KIND.into(),
        message: "update".into(),
        agent_version: "1.0.0".into(),
        created_at: "2026-12-01T00:00:00Z".into(),
        details: json!({
            "version": version, "platform": "linux-x86_64", "step": "failed",
            "failed_step": failed_step,
        }),
    }
}

fn crash(id: &str) -> ErrorReport {
    ErrorReport {
        report_id: id.into(),
        kind: "crash".into(),
        message: "boom".into(),
        agent_version: "1.0.0".into(),
        created_at: "2026-12-01T00:00:00Z".into(),
        details: Value::Null,
    }
}

async fn send(server: &Server, token: &str, reports: Vec<ErrorReport>) -> ErrorBatchResponse {
    let response = server.post_errors(token, &ErrorBatch { reports }).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn page(server: &Server, agent_id: &str) -> Value {
    server
        .operator_json(&format!("/api/v1/fleet/agents/{agent_id}"))
        .await
}

fn args(list: &[&str]) -> Options {
    Options {
        args: list.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    }
}

#[tokio::test]
async fn progress_is_bounded_scoped_to_its_agent_and_kept_within_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let server = Server::start(
        dir.path(),
        &store,
        &args(&["--event-retention-per-agent", "5"]),
    )
    .await;
    let a = server.register_ok("a").await;
    let long = format!("2.0.0-{}", "x".repeat(60));
    let first = vec![
        progress("p1", "2.0.0", "<script>"),
        progress("p2", "not-semver", "verifying"),
        progress("p3", &long, "verifying"),
    ];
    let answer = send(&server, &a.agent_token, first).await;
    assert_eq!(
        answer.stored, 1,
        "only the SemVer version of at most 64 bytes is stored"
    );
    let updates = page(&server, &a.agent_id).await["updates"].clone();
    assert_eq!(updates.as_array().unwrap().len(), 1, "{updates}");
    assert_eq!(updates[0]["failed_step"], "unknown", "{updates}");

    let b = server.register_ok("b").await;
    let taken = send(
        &server,
        &b.agent_token,
        vec![progress("p1", "2.0.0", "verifying"), crash("c1")],
    )
    .await;
    assert_eq!(taken.stored, 2, "another agent's ids do not occupy b's");
    assert_eq!(
        send(&server, &a.agent_token, vec![crash("c1")])
            .await
            .stored,
        1
    );

    let more: Vec<ErrorReport> = (0..10)
        .map(|i| progress(&format!("q{i}"), "2.0.0", "verifying"))
        .collect();
    send(&server, &a.agent_token, more).await;
    let kept = page(&server, &a.agent_id).await["updates"].clone();
    assert_eq!(
        kept.as_array().unwrap().len(),
        5,
        "per-agent event cap: {kept}"
    );
    server.stop().await;

    let aged = args(&["--event-retention-days", "0"]);
    let server = Server::start(dir.path(), &store, &aged).await;
    let updates = page(&server, &a.agent_id).await["updates"].clone();
    assert_eq!(updates, json!([]), "the sweep at start removed old events");
    server.stop().await;
}

#[tokio::test]
async fn fifty_fresh_agents_from_one_source_store_at_most_fifty_reports_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &Store::Sqlite, &Options::default()).await;
    let mut sent = 0;
    for n in 0..50 {
        let agent = server.register_ok(&format!("fresh-{n}")).await;
        let batch: Vec<ErrorReport> = (0..80).map(|i| crash(&format!("r{i}"))).collect();
        sent += batch.len();
        send(&server, &agent.agent_token, batch).await;
    }
    let (errors, _) = server
        .all_pages::<cms_protocol::StoredError>("/api/v1/errors?limit=1000")
        .await;
    assert_eq!(sent, 4_000);
    assert_eq!(errors.len(), 50 * 50, "a new agent keeps 50 reports");
    server.stop().await;
}

#[tokio::test]
async fn fast_heartbeats_are_throttled_and_leave_a_bounded_version_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &Store::Sqlite, &Options::default()).await;
    let agent = server.register_ok("chatty").await;
    let (mut stored, mut throttled) = (0, 0);
    for n in 0..5_000 {
        let version = format!("1.0.{n}");
        let status = server
            .post_status(&agent.agent_token, AgentState::Idle, &version)
            .await
            .status();
        match status.as_u16() {
            204 => stored += 1,
            429 => throttled += 1,
            other => panic!("heartbeat answered {other}"),
        }
    }
    assert!(throttled > 4_000, "stored {stored}, throttled {throttled}");
    let versions = page(&server, &agent.agent_id).await["versions"].clone();
    let kept = versions.as_array().unwrap().len();
    assert!((2..=20).contains(&kept), "{kept} versions kept: {versions}");
    server.stop().await;
}
