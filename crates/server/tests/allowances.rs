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

/// A viewer's denied operator calls, many at once: a few audit rows whose `repeats` add up to
/// every denial.
async fn repeated_denials_are_counted_on_a_few_audit_rows(store: Store, dir: &std::path::Path) {
    use futures_util::StreamExt;
    const CALLS: usize = 2_000;
    let server = Server::start(dir, &store, &Options::default()).await;
    let viewer = server.token("viewer", "curious").await;
    let statuses: Vec<u16> = futures_util::stream::iter(0..CALLS)
        .map(|n| {
            let request = server
                .http
                .post(server.operator_url(&format!("/api/v1/agents/agent-{n}/check-update")))
                .bearer_auth(&viewer);
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let denied = statuses.iter().filter(|s| **s == 403).count();
    assert!(
        denied > CALLS / 2,
        "{denied} of {CALLS} denied: {statuses:?}"
    );

    let (audit, _) = server
        .all_pages::<cms_protocol::AuditEntry>(cms_protocol::paths::AUDIT)
        .await;
    let rows: Vec<_> = audit
        .iter()
        .filter(|e| e.actor == "curious" && e.action == "agent.check_update")
        .collect();
    assert!(rows.iter().all(|e| e.outcome == "denied"), "{rows:?}");
    let counted: u64 = rows.iter().map(|e| e.repeats).sum();
    assert_eq!(counted, denied as u64, "every denial counted: {rows:?}");
    assert!(
        !rows.is_empty() && rows.len() <= 2,
        "{} rows for {denied} denials: one a minute",
        rows.len()
    );
    assert!(rows.iter().any(|e| e.repeats > 100 && e.last_at.is_some()));
    // Allowed actions are never folded: two token creations are two rows.
    for _ in 0..2 {
        let created = server
            .operator(reqwest::Method::POST, "/api/v1/tokens")
            .json(
                &json!({"name": format!("t-{}", uuid::Uuid::new_v4().simple()), "role": "viewer"}),
            )
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{:?}", created.text().await);
    }
    let (audit, _) = server
        .all_pages::<cms_protocol::AuditEntry>(cms_protocol::paths::AUDIT)
        .await;
    let creations = audit.iter().filter(|e| {
        e.action == "token.create" && e.outcome == "ok" && e.actor.starts_with("admin-")
    });
    assert!(creations.clone().all(|e| e.repeats == 1));
    assert_eq!(creations.count(), 2);
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn repeated_denials_are_aggregated_in_the_audit_log_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    repeated_denials_are_counted_on_a_few_audit_rows(Store::Sqlite, dir.path()).await;
}

#[tokio::test]
async fn repeated_denials_are_aggregated_in_the_audit_log_on_postgres() {
    let Some(schema) =
        common::postgres_schema("repeated_denials_are_aggregated_in_the_audit_log").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Postgres(schema.server_url.clone());
    repeated_denials_are_counted_on_a_few_audit_rows(store, dir.path()).await;
    schema.drop_schema().await;
}

/// A report of about 3 KB of text that does not compress (PostgreSQL would shrink a repeat).
fn bulky(id: &str) -> ErrorReport {
    let text: String = (0..84)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    ErrorReport {
        message: text,
        ..crash(id)
    }
}

/// Reports well past `--max-database-mb 1`: the guard sheds the oldest, says so once in the
/// log, and the fleet overview reports the shed.
async fn the_size_guard_sheds_the_oldest_reports(store: Store, dir: &std::path::Path) {
    let options = args(&[
        "--max-database-mb",
        "1",
        "--database-check-secs",
        "1",
        "--new-agent-retention",
        "1000",
    ]);
    let server = Server::start(dir, &store, &options).await;
    let agents = [
        server.register_ok("bulky-a").await,
        server.register_ok("bulky-b").await,
    ];
    for round in 0..2 {
        for (n, agent) in agents.iter().enumerate() {
            let batch = (0..200)
                .map(|i| bulky(&format!("{round}-{n}-{i}")))
                .collect();
            send(&server, &agent.agent_token, batch).await;
        }
    }
    // SQLite's size falls with a shed: wait until what is kept fits (its text alone is
    // 3 KB a report). PostgreSQL's does not: one shed of the oldest batch is enough. The guard
    // checks every second, so a shed can come while batches are still arriving; a later one
    // (once the tables grew past their size after it) then takes the rest of the oldest batch.
    let fits = |kept: usize| !matches!(store, Store::Sqlite) || kept * 3_000 < 1024 * 1024;
    let (fleet, kept) = common::wait_until("a shed on the fleet overview", 30, || async {
        let fleet: Value = server.operator_json("/api/v1/fleet").await;
        let (kept, _) = server
            .all_pages::<cms_protocol::StoredError>("/api/v1/errors?limit=1000")
            .await;
        let settled = fits(kept.len()) && per_batch(&kept)[0] == 0;
        (fleet["shed"]["reports"].as_i64() > Some(0) && settled).then_some((fleet, kept))
    })
    .await;
    let shed = &fleet["shed"];
    assert_eq!(shed["limit_bytes"], 1024 * 1024, "{fleet}");
    assert!(shed["bytes_before"].as_i64() > Some(1024 * 1024), "{fleet}");
    assert_eq!(fleet["total"], 2, "the counts are still there: {fleet}");
    let log = server.log();
    assert!(
        log.contains("WARN") && log.contains("database over its size limit"),
        "{log}"
    );
    assert!(
        !kept.is_empty() && kept.len() < 800,
        "{} kept: {fleet}",
        kept.len()
    );
    // Batches in the order sent: the oldest went first, so every batch after the oldest one
    // kept is whole.
    let per_batch = per_batch(&kept);
    let first_kept = per_batch.iter().position(|n| *n > 0).unwrap();
    assert!(
        per_batch[first_kept + 1..].iter().all(|n| *n == 200),
        "the oldest went first: {per_batch:?}"
    );
    assert_eq!(per_batch[0], 0, "the oldest batch went: {per_batch:?}");
    assert_eq!(server.stop().await, Some(0));
}

/// Reports kept of each batch the size guard test sent, in the order sent.
fn per_batch(kept: &[cms_protocol::StoredError]) -> Vec<usize> {
    ["0-0-", "0-1-", "1-0-", "1-1-"]
        .iter()
        .map(|batch| {
            kept.iter()
                .filter(|e| e.report_id.starts_with(batch))
                .count()
        })
        .collect()
}

#[tokio::test]
async fn the_database_size_guard_sheds_the_oldest_reports_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    the_size_guard_sheds_the_oldest_reports(Store::Sqlite, dir.path()).await;
}

#[tokio::test]
async fn the_database_size_guard_sheds_the_oldest_reports_on_postgres() {
    let Some(schema) = common::postgres_schema("the_database_size_guard_sheds").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Postgres(schema.server_url.clone());
    the_size_guard_sheds_the_oldest_reports(store, dir.path()).await;
    schema.drop_schema().await;
}
