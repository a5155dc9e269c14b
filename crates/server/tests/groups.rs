//! Update control with the real binary over HTTP: offers are facts the server records (update
//! progress counts only from agents that were offered the release), groups and the per-group
//! rollout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cms_protocol::{AgentState, UpdateStep};
use common::agent::AgentProcess;
use common::{Options, Server, Store, progress, send, wait_until};
use reqwest::StatusCode;
use serde_json::Value;

/// The agent's update check at `version`: the version it is offered, if any.
async fn check(server: &Server, agent_token: &str, version: &str) -> Option<String> {
    let path = format!("/api/v1/agent/update?version={version}&platform=linux-x86_64");
    let response = server
        .http
        .get(server.url(&path))
        .bearer_auth(agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["update"]["version"].as_str().map(str::to_owned)
}

/// `cms-server ARGS` against the server's store: exit code and the JSON it printed.
async fn cli(server: &Server, store: &Store, args: &[&str]) -> (Option<i32>, Value) {
    let output = common::command(&args[..2], &server.data_dir, store)
        .args(&args[2..])
        .output()
        .await
        .unwrap();
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&output.stderr).into_owned()));
    (output.status.code(), json)
}

async fn publish(server: &Server, store: &Store, version: &str) {
    let files = common::inputs(&server.data_dir);
    let (code, _, stderr) = common::publish(&server.data_dir, store, version, &files, &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
}

fn funnel_counts(status: &Value) -> (i64, i64, i64, i64) {
    let funnel = &status["funnel"];
    let n = |step: &str| funnel[step].as_i64().unwrap();
    (n("offered"), n("healthy"), n("failed"), n("rolled_back"))
}

#[tokio::test]
async fn progress_counts_only_from_agents_offered_the_release_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    progress_counts_only_from_offered_agents(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn progress_counts_only_from_agents_offered_the_release_on_postgres() {
    let Some(schema) = common::postgres_schema("offers_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    progress_counts_only_from_offered_agents(
        dir.path(),
        Store::Postgres(schema.server_url.clone()),
    )
    .await;
    schema.drop_schema().await;
}

async fn progress_counts_only_from_offered_agents(dir: &std::path::Path, store: Store) {
    let server = Server::start(dir, &store, &Options::default()).await;
    publish(&server, &store, "2.0.0").await;
    let rule = ["rollout", "set", "--version", "2.0.0"];
    let halt = ["--halt-percent", "40", "--halt-min-attempts", "2"];
    let (code, _) = cli(&server, &store, &[&rule[..], &halt[..]].concat()).await;
    assert_eq!(code, Some(0));

    // 30 agents never offered 2.0.0 forge its progress: 15 rollbacks, and 15 "healthy"
    // agents that even report running it.
    let mut forged = Vec::new();
    for i in 0..30 {
        let fake = server.register_ok(&format!("fake-{i}")).await;
        let step = if i % 2 == 0 {
            UpdateStep::RolledBack
        } else {
            let status = server.post_status(&fake.agent_token, AgentState::Idle, "2.0.0");
            assert_eq!(status.await.status(), StatusCode::NO_CONTENT);
            UpdateStep::Healthy
        };
        let reports = vec![
            progress("2.0.0", UpdateStep::Offered, None),
            progress("2.0.0", step, None),
        ];
        send(&server, &fake.agent_token, reports).await;
        forged.push(fake);
    }
    let (_, status) = cli(
        &server,
        &store,
        &["rollout", "status", "--version", "2.0.0"],
    )
    .await;
    assert_eq!(status["paused"], false, "{status}");
    assert_eq!(funnel_counts(&status), (0, 0, 0, 0), "{status}");
    let page: Value = server
        .operator_json(&format!("/api/v1/fleet/agents/{}", forged[0].agent_id))
        .await;
    let updates = page["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 2, "{page}");
    assert!(updates.iter().all(|u| u["verified"] == false), "{page}");

    // Two real agents are offered the release: one runs it and reports it healthy, the other
    // fails. One failure in two attempts passes the 40 % rule.
    let good = server.register_ok("good").await;
    let bad = server.register_ok("bad").await;
    for agent in [&good, &bad] {
        assert_eq!(
            check(&server, &agent.agent_token, "1.0.0").await.as_deref(),
            Some("2.0.0")
        );
    }
    let status = server.post_status(&good.agent_token, AgentState::Idle, "2.0.0");
    assert_eq!(status.await.status(), StatusCode::NO_CONTENT);
    let healthy = vec![
        progress("2.0.0", UpdateStep::Offered, None),
        progress("2.0.0", UpdateStep::Healthy, None),
    ];
    send(&server, &good.agent_token, healthy).await;
    let (_, status) = cli(
        &server,
        &store,
        &["rollout", "status", "--version", "2.0.0"],
    )
    .await;
    assert_eq!(
        (status["paused"].as_bool(), funnel_counts(&status)),
        (Some(false), (1, 1, 0, 0))
    );
    // A version that was never published is never verified, even from an offered agent.
    send(
        &server,
        &bad.agent_token,
        vec![progress("9.9.9", UpdateStep::Failed, Some("verifying"))],
    )
    .await;
    let failed = vec![
        progress("2.0.0", UpdateStep::Offered, None),
        progress("2.0.0", UpdateStep::Failed, Some("verifying")),
    ];
    send(&server, &bad.agent_token, failed).await;
    let (_, status) = cli(
        &server,
        &store,
        &["rollout", "status", "--version", "2.0.0"],
    )
    .await;
    assert_eq!(status["paused"], true, "the real failure halts: {status}");
    assert_eq!(funnel_counts(&status), (2, 1, 1, 0), "{status}");
    let page: Value = server
        .operator_json(&format!("/api/v1/fleet/agents/{}", bad.agent_id))
        .await;
    let verified: Vec<(&str, bool)> = page["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["version"].as_str().unwrap(),
                u["verified"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        verified.contains(&("9.9.9", false)) && verified.contains(&("2.0.0", true)),
        "{verified:?}"
    );
    server.stop().await;
}

/// The agent's group on its fleet page.
async fn group_of(server: &Server, agent_id: &str) -> String {
    let page: Value = server
        .operator_json(&format!("/api/v1/fleet/agents/{agent_id}"))
        .await;
    page["agent"]["group"].as_str().unwrap().to_owned()
}

async fn put_group(server: &Server, agent_id: &str, group: &str) -> StatusCode {
    let path = format!("/api/v1/agents/{agent_id}/group");
    let response = server
        .operator(reqwest::Method::PUT, &path)
        .json(&serde_json::json!({ "group": group }))
        .send()
        .await
        .unwrap();
    response.status()
}

#[tokio::test]
async fn an_agents_group_from_its_flag_and_the_operator_who_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let server = Server::start(&dir.path().join("server"), &store, &Options::default()).await;
    // The real agent's --group, saved and sent at registration and in its heartbeats.
    let agent = AgentProcess::start(
        &dir.path().join("agent"),
        &[
            "--server",
            &server.base,
            "--status-interval",
            "1",
            "--group",
            "canary",
        ],
    );
    let agent_id = wait_until("the agent to register", 60, || async { agent.agent_id() }).await;
    assert_eq!(group_of(&server, &agent_id).await, "canary");
    let config = std::fs::read_to_string(dir.path().join("agent/config.json")).unwrap();
    assert!(config.contains("\"group\": \"canary\""), "{config}");
    let other = server.register_ok("plain").await;
    assert_eq!(group_of(&server, &other.agent_id).await, "default");

    // The operator's assignment wins over the agent's heartbeats from then on.
    let (code, printed) = cli(
        &server,
        &store,
        &[
            "agent",
            "set-group",
            "--agent-id",
            &agent_id,
            "--group",
            "pilot-1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{printed}");
    let first_heartbeat_after = server.log().len();
    wait_until("a heartbeat after the assignment", 30, || async {
        server.log()[first_heartbeat_after..]
            .contains(&agent_id)
            .then_some(())
    })
    .await;
    assert_eq!(group_of(&server, &agent_id).await, "pilot-1");
    let listed: Value = server
        .operator_json("/api/v1/fleet/agents?group=pilot-1")
        .await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(
        listed["items"][0]["agent_id"].as_str(),
        Some(agent_id.as_str())
    );

    // The API: bad names and unknown agents refused; a viewer may not; audited.
    assert_eq!(
        put_group(&server, &other.agent_id, "prod").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_group(&server, &other.agent_id, "no spaces").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        put_group(&server, &"a".repeat(65), "prod").await,
        StatusCode::NOT_FOUND
    );
    let (code, _) = cli(
        &server,
        &store,
        &[
            "agent",
            "set-group",
            "--agent-id",
            &other.agent_id,
            "--group",
            &"g".repeat(65),
        ],
    )
    .await;
    assert_eq!(code, Some(2), "a 65-byte name is refused");
    let viewer = server.token("viewer", "watcher").await;
    let denied = server
        .http
        .put(server.operator_url(&format!("/api/v1/agents/{}/group", other.agent_id)))
        .bearer_auth(&viewer)
        .json(&serde_json::json!({ "group": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let groups: Vec<Value> = server.operator_json("/api/v1/groups").await;
    let sizes: Vec<(&str, i64)> = groups
        .iter()
        .map(|g| (g["group"].as_str().unwrap(), g["agents"].as_i64().unwrap()))
        .collect();
    assert_eq!(sizes, [("pilot-1", 1), ("prod", 1)]);
    let audit: Vec<Value> = server.operator_json("/api/v1/audit?limit=100").await;
    let outcomes: Vec<&str> = audit
        .iter()
        .filter(|e| e["action"] == "agent.set_group")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 6, "{audit:?}");
    assert!(outcomes.contains(&"denied") && outcomes.contains(&"refused"));
    assert_eq!(agent.stop().await, Some(0));
    server.stop().await;
}

#[tokio::test]
async fn a_groups_own_percentage_reaches_that_group_only_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_groups_own_percentage_reaches_that_group_only(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn a_groups_own_percentage_reaches_that_group_only_on_postgres() {
    let Some(schema) = common::postgres_schema("group_rollout_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Postgres(schema.server_url.clone());
    a_groups_own_percentage_reaches_that_group_only(dir.path(), store).await;
    schema.drop_schema().await;
}

async fn a_groups_own_percentage_reaches_that_group_only(dir: &std::path::Path, store: Store) {
    let server = Server::start(dir, &store, &Options::default()).await;
    let canary = server.register_ok("canary-1").await;
    let prod = server.register_ok("prod-1").await;
    assert_eq!(
        put_group(&server, &canary.agent_id, "canary").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_group(&server, &prod.agent_id, "prod").await,
        StatusCode::NO_CONTENT
    );
    let files = common::inputs(&server.data_dir);
    let (code, _, stderr) = common::publish(
        &server.data_dir,
        &store,
        "2.0.0",
        &files,
        &["--rollout", "0"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    for agent in [&canary, &prod] {
        assert_eq!(check(&server, &agent.agent_token, "1.0.0").await, None);
    }
    let set = [
        "rollout",
        "set",
        "--version",
        "2.0.0",
        "--group",
        "canary",
        "--percent",
        "100",
    ];
    let (code, printed) = cli(&server, &store, &set).await;
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(
        printed["rollout_percent"], 0,
        "the release's own percentage is kept"
    );
    assert_eq!(
        check(&server, &canary.agent_token, "1.0.0")
            .await
            .as_deref(),
        Some("2.0.0")
    );
    assert_eq!(check(&server, &prod.agent_token, "1.0.0").await, None);
    // The API sets the same; a viewer may not.
    let path = "/api/v1/rollouts/linux-x86_64/2.0.0/groups/prod";
    let by_api = |token: String, percent: i64| {
        let request = server
            .http
            .put(server.operator_url(path))
            .bearer_auth(token);
        request
            .json(&serde_json::json!({ "percent": percent }))
            .send()
    };
    let viewer = server.token("viewer", "watcher").await;
    assert_eq!(
        by_api(viewer, 100).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let too_much = by_api(server.admin_token.clone(), 101).await.unwrap();
    assert_eq!(too_much.status(), StatusCode::BAD_REQUEST);
    let answer = by_api(server.admin_token.clone(), 100).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        check(&server, &prod.agent_token, "1.0.0").await.as_deref(),
        Some("2.0.0")
    );
    // Paused, the release is offered to no group.
    let (code, _) = cli(&server, &store, &["rollout", "pause", "--version", "2.0.0"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(check(&server, &canary.agent_token, "1.0.0").await, None);
    let bad = [
        "rollout",
        "set",
        "--version",
        "2.0.0",
        "--group",
        "no spaces",
        "--percent",
        "5",
    ];
    assert_eq!(cli(&server, &store, &bad).await.0, Some(2));
    let audit: Vec<Value> = server.operator_json("/api/v1/audit?limit=100").await;
    assert!(audit.iter().any(|e| e["action"] == "rollout.set"
        && e["target"] == "2.0.0/linux-x86_64 group=canary"
        && e["outcome"] == "ok"));
    server.stop().await;
}
