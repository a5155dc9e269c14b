//! Update control with the real binary over HTTP: offers are facts the server records (update
//! progress counts only from agents that were offered the release), groups and the per-group
//! rollout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cms_protocol::{AgentMessage, AgentState, Metrics, StatusReport, UpdateStep};
use common::agent::AgentProcess;
use common::{Options, Server, Store, WsStream, next_text, progress, send, wait_until};
use reqwest::StatusCode;
use serde_json::Value;

/// The agent's update check on linux-x86_64 with `query` (`version=...` and more): the offer
/// as JSON (`Null` when none).
async fn offer_json(server: &Server, agent_token: &str, query: &str) -> Value {
    let path = format!("/api/v1/agent/update?platform=linux-x86_64&{query}");
    let response = server
        .http
        .get(server.url(&path))
        .bearer_auth(agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["update"].clone()
}

/// The agent's update check at `version`: the version it is offered, if any.
async fn check(server: &Server, agent_token: &str, version: &str) -> Option<String> {
    let offer = offer_at(server, agent_token, version).await;
    offer["version"].as_str().map(str::to_owned)
}

/// The agent's update check at `version`: the offer as JSON (`Null` when none).
async fn offer_at(server: &Server, agent_token: &str, version: &str) -> Value {
    offer_json(server, agent_token, &format!("version={version}")).await
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

/// The agent's update check at 1.0.0 with its clock `utc_offset_minutes` ahead of UTC: the
/// offer as JSON (`Null` when none).
async fn check_with_offset(server: &Server, agent_token: &str, offset: Option<i32>) -> Value {
    let offset = offset.map(|m| format!("&utc_offset_minutes={m}"));
    let query = format!("version=1.0.0{}", offset.unwrap_or_default());
    offer_json(server, agent_token, &query).await
}

/// The agent WebSocket of `agent_token`, once the server answers a heartbeat on it (so the
/// server holds it as the agent's live socket).
async fn connected_socket(server: &Server, agent_token: &str) -> WsStream {
    use futures_util::SinkExt;
    let mut ws = server.connect_ws(agent_token).await.unwrap();
    let heartbeat = AgentMessage::Heartbeat(StatusReport {
        state: AgentState::Idle,
        version: "1.0.0".into(),
        metrics: Metrics::default(),
        network: None,
        group: None,
        utc_offset_minutes: None,
    });
    let text = serde_json::to_string(&heartbeat).unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
        .await
        .unwrap();
    let ack = next_text(&mut ws, 30).await.unwrap();
    assert!(ack.contains("agent:heartbeat_ack"), "{ack}");
    ws
}

/// A daily window from `from` to `to` minutes after the current UTC minute (either may be
/// negative), as `daily HH:MM-HH:MM`.
fn daily_window_around_now(from: i64, to: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 60;
    let hm = |m: i64| {
        let m = m.rem_euclid(24 * 60);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    format!("daily {}-{}", hm(now + from), hm(now + to))
}

#[tokio::test]
async fn a_maintenance_window_holds_updates_until_it_opens_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_maintenance_window_holds_updates_until_it_opens(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn a_maintenance_window_holds_updates_until_it_opens_on_postgres() {
    let Some(schema) = common::postgres_schema("windows_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Postgres(schema.server_url.clone());
    a_maintenance_window_holds_updates_until_it_opens(dir.path(), store).await;
    schema.drop_schema().await;
}

async fn a_maintenance_window_holds_updates_until_it_opens(dir: &std::path::Path, store: Store) {
    let server = Server::start(dir, &store, &Options::default()).await;
    let night = server.register_ok("shop-floor-1").await;
    let office = server.register_ok("office-1").await;
    assert_eq!(
        put_group(&server, &night.agent_id, "night").await,
        StatusCode::NO_CONTENT
    );
    let window = |args: &[&str]| {
        let mut all = vec!["group", "window", "--group", "night"];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let server = &server;
        let store = &store;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(server, store, &args).await
        }
    };

    // A window that opens in two hours: nothing is offered or pushed to the group, the rest as
    // before.
    let later = daily_window_around_now(120, 180);
    let (code, printed) = run(window(&["--window", &later])).await;
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(printed["windows"][0], later.as_str(), "{printed}");
    let mut night_ws = connected_socket(&server, &night.agent_token).await;
    let mut office_ws = connected_socket(&server, &office.agent_token).await;
    publish(&server, &store, "2.0.0").await;
    let pushed = next_text(&mut office_ws, 30).await.unwrap();
    assert!(pushed.contains("agent:update_required"), "{pushed}");
    // The watcher notifies in one pass without waiting: had it pushed to the night group, that
    // frame would be queued by now.
    assert_eq!(
        next_text(&mut night_ws, 2).await,
        None,
        "pushed outside the window"
    );
    assert_eq!(
        check_with_offset(&server, &night.agent_token, Some(0)).await,
        Value::Null
    );
    let office_offer = check_with_offset(&server, &office.agent_token, None).await;
    assert_eq!(office_offer["version"], "2.0.0");
    assert!(office_offer.get("window").is_none(), "{office_offer}");

    // On the agent's clock: open for an agent two hours east of UTC only.
    let (code, printed) = run(window(&["--window", &later, "--timezone", "agent"])).await;
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(
        check_with_offset(&server, &night.agent_token, None).await,
        Value::Null
    );
    let east = check_with_offset(&server, &night.agent_token, Some(150)).await;
    assert_eq!(east["version"], "2.0.0", "{east}");
    assert_eq!(east["window"]["clock"], "agent", "{east}");
    assert_eq!(east["window"]["windows"][0], later.as_str(), "{east}");

    // A window that opened ten minutes ago (spanning midnight or not): offered, with the window.
    let open = daily_window_around_now(-10, 60);
    let (code, _) = run(window(&["--window", &later, "--window", &open])).await;
    assert_eq!(code, Some(0));
    let offer = check_with_offset(&server, &night.agent_token, None).await;
    assert_eq!(offer["version"], "2.0.0", "{offer}");
    assert_eq!(offer["window"]["clock"], "utc", "{offer}");
    assert_eq!(offer["window"]["windows"].as_array().unwrap().len(), 2);

    // Refusals: a bad window, a bad clock, --clear of a group without windows.
    for bad in [
        window(&["--window", "Mon-Fri 9-17"]),
        window(&["--window", "daily 01:00-02:00", "--timezone", "local"]),
        vec!["group", "window", "--group", "office", "--clear"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
    ] {
        let (code, printed) = run(bad.clone()).await;
        assert_eq!(code, Some(2), "{bad:?}: {printed}");
    }

    // The API: a viewer may not; an operator sets and clears; the listing shows the windows.
    let path = "/api/v1/groups/night/window";
    let viewer = server.token("viewer", "watcher").await;
    let denied = server
        .http
        .put(server.operator_url(path))
        .bearer_auth(&viewer)
        .json(&serde_json::json!({ "windows": ["daily 00:00-24:00"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let bad = server
        .operator(reqwest::Method::PUT, path)
        .json(&serde_json::json!({ "windows": ["Funday 01:00-02:00"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let set = server
        .operator(reqwest::Method::PUT, path)
        .json(&serde_json::json!({ "windows": [later], "timezone": "utc" }))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(
        check_with_offset(&server, &night.agent_token, None).await,
        Value::Null
    );
    let groups: Vec<Value> = server.operator_json("/api/v1/groups").await;
    let night_row = groups.iter().find(|g| g["group"] == "night").unwrap();
    assert_eq!(
        night_row["window"]["windows"][0],
        later.as_str(),
        "{groups:?}"
    );
    let office_row = groups.iter().find(|g| g["group"] == "default").unwrap();
    assert!(office_row.get("window").is_none(), "{groups:?}");
    let cleared = server
        .operator(reqwest::Method::DELETE, path)
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    let offer = check_with_offset(&server, &night.agent_token, None).await;
    assert_eq!(offer["version"], "2.0.0", "cleared: any time");
    assert!(offer.get("window").is_none(), "{offer}");
    let audit: Vec<Value> = server.operator_json("/api/v1/audit?limit=100").await;
    let outcomes: Vec<&str> = audit
        .iter()
        .filter(|e| e["action"] == "group.window")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 10, "{audit:?}");
    assert!(outcomes.contains(&"denied") && outcomes.contains(&"refused"));
    server.stop().await;
}

#[tokio::test]
async fn a_pinned_group_is_offered_its_pin_only_and_an_older_pin_carries_the_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let server = Server::start(dir.path(), &store, &Options::default()).await;
    let canary = server.register_ok("canary-1").await;
    assert_eq!(
        put_group(&server, &canary.agent_id, "canary").await,
        StatusCode::NO_CONTENT
    );
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        publish(&server, &store, version).await;
    }
    let pin = |version: &'static str| {
        let args = ["group", "pin", "--group", "canary", "--version", version];
        let (server, store) = (&server, &store);
        async move { cli(server, store, &args).await }
    };

    // A pin to a release that is not the newest and not older than the agent: exactly it.
    let (code, printed) = pin("2.0.0").await;
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(printed["rollback"], true, "older than 3.0.0: {printed}");
    assert_eq!(
        offer_at(&server, &canary.agent_token, "1.0.0").await["version"],
        "2.0.0"
    );
    let at_pin = offer_at(&server, &canary.agent_token, "2.0.0").await;
    assert_eq!(at_pin, Value::Null, "on its pin: nothing");
    // Going up to the pin needs no statement; going down carries the root-signed one.
    let up = offer_at(&server, &canary.agent_token, "1.0.0").await;
    assert!(up.get("rollback").is_none(), "{up}");
    let down = offer_at(&server, &canary.agent_token, "3.0.0").await;
    assert_eq!(down["version"], "2.0.0", "{down}");
    assert_eq!(
        down["rollback"]["signed"]["_type"], "cms-rollback",
        "{down}"
    );
    assert_eq!(down["rollback"]["signed"]["version"], "2.0.0", "{down}");
    assert_eq!(down["rollback"]["signatures"].as_array().unwrap().len(), 1);
    // Other groups follow the rollout.
    let other = server.register_ok("prod-1").await;
    assert_eq!(
        offer_at(&server, &other.agent_token, "1.0.0").await["version"],
        "3.0.0"
    );

    // A pin to the newest is no rollback; unpublished versions and bad names are refused.
    let (code, printed) = pin("3.0.0").await;
    assert_eq!(
        (code, &printed["rollback"]),
        (Some(0), &Value::Bool(false)),
        "{printed}"
    );
    let (code, printed) = pin("9.9.9").await;
    assert_eq!(code, Some(2), "{printed}");
    let groups: Vec<Value> = server.operator_json("/api/v1/groups").await;
    let canary_row = groups.iter().find(|g| g["group"] == "canary").unwrap();
    assert_eq!(canary_row["pins"][0]["version"], "3.0.0", "{groups:?}");
    // A pinned group is not pushed a new release; the others are.
    let mut pinned_ws = connected_socket(&server, &canary.agent_token).await;
    let mut other_ws = connected_socket(&server, &other.agent_token).await;
    publish(&server, &store, "4.0.0").await;
    let pushed = next_text(&mut other_ws, 30).await.unwrap();
    assert!(pushed.contains("4.0.0"), "{pushed}");
    assert_eq!(
        next_text(&mut pinned_ws, 2).await,
        None,
        "a pinned group was pushed"
    );
    let unpin = ["group", "unpin", "--group", "canary"];
    assert_eq!(cli(&server, &store, &unpin).await.0, Some(0));
    assert_eq!(cli(&server, &store, &unpin).await.0, Some(2), "no pin left");
    let unpinned = offer_at(&server, &canary.agent_token, "3.0.0").await;
    assert_eq!(unpinned["version"], "4.0.0", "unpinned: the rollout again");
    let audit: Vec<Value> = server.operator_json("/api/v1/audit?limit=100").await;
    let pins = audit.iter().filter(|e| e["action"] == "group.pin").count();
    let unpins = audit
        .iter()
        .filter(|e| e["action"] == "group.unpin")
        .count();
    assert_eq!((pins, unpins), (3, 2), "{audit:?}");
    server.stop().await;
}

/// Rewrites `agent_id`'s offer of 2.0.0 as made long ago (the stuck timeout passed), as time
/// would.
async fn age_offer(server: &Server, agent_id: &str) {
    set_first_offered(server, agent_id, time::OffsetDateTime::UNIX_EPOCH).await;
}

#[tokio::test]
async fn at_most_max_in_flight_agents_update_at_once_and_stuck_ones_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let server = Server::start(dir.path(), &store, &Options::default()).await;
    let agents = [
        server.register_ok("a").await,
        server.register_ok("b").await,
        server.register_ok("c").await,
    ];
    publish(&server, &store, "2.0.0").await;
    let set = [
        "rollout",
        "set",
        "--version",
        "2.0.0",
        "--max-in-flight",
        "1",
    ];
    let (code, printed) = cli(&server, &store, &set).await;
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(printed["max_in_flight"], 1, "{printed}");
    let offered = |i: usize| check(&server, &agents[i].agent_token, "1.0.0");
    let status = || {
        cli(
            &server,
            &store,
            &["rollout", "status", "--version", "2.0.0"],
        )
    };

    // One in flight: the others wait; the one in flight is offered again.
    assert_eq!(offered(0).await.as_deref(), Some("2.0.0"));
    assert_eq!(offered(1).await, None);
    assert_eq!(offered(2).await, None);
    assert_eq!(offered(0).await.as_deref(), Some("2.0.0"), "a re-offer");
    let (_, printed) = status().await;
    assert_eq!(
        (&printed["in_flight"], &printed["stuck"]),
        (&1.into(), &0.into()),
        "{printed}"
    );

    // It fails: the next is offered.
    let failed = vec![
        progress("2.0.0", UpdateStep::Offered, None),
        progress("2.0.0", UpdateStep::Failed, Some("downloading")),
    ];
    send(&server, &agents[0].agent_token, failed).await;
    assert_eq!(offered(1).await.as_deref(), Some("2.0.0"));
    assert_eq!(offered(2).await, None);

    // It says nothing past the stuck timeout: stuck, freed from the count, the last is offered.
    age_offer(&server, &agents[1].agent_id).await;
    let (_, printed) = status().await;
    assert_eq!(
        (&printed["in_flight"], &printed["stuck"]),
        (&0.into(), &1.into()),
        "{printed}"
    );
    assert_eq!(offered(2).await.as_deref(), Some("2.0.0"));
    let (_, printed) = status().await;
    assert_eq!(
        (&printed["in_flight"], &printed["stuck"]),
        (&1.into(), &1.into()),
        "{printed}"
    );

    // No cap: everyone; a bad value is refused.
    let unset = [
        "rollout",
        "set",
        "--version",
        "2.0.0",
        "--max-in-flight",
        "0",
    ];
    let (code, printed) = cli(&server, &store, &unset).await;
    assert_eq!(
        (code, &printed["max_in_flight"]),
        (Some(0), &Value::Null),
        "{printed}"
    );
    let bad = [
        "rollout",
        "set",
        "--version",
        "2.0.0",
        "--stuck-after-mins",
        "0",
    ];
    assert_eq!(cli(&server, &store, &bad).await.0, Some(2));
    server.stop().await;
}

#[tokio::test]
async fn an_update_that_becomes_stuck_is_announced_on_the_live_feed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let options = Options {
        args: vec!["--stuck-check-secs".into(), "1".into()],
        ..Options::default()
    };
    let server = Server::start(dir.path(), &store, &options).await;
    let agent = server.register_ok("stuck-1").await;
    publish(&server, &store, "2.0.0").await;
    assert_eq!(
        check(&server, &agent.agent_token, "1.0.0").await.as_deref(),
        Some("2.0.0")
    );
    let mut feed = server
        .operator(reqwest::Method::GET, "/api/v1/events")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);

    // The offer crosses the 30-minute timeout in a second: a look after that announces it.
    let crosses =
        time::OffsetDateTime::now_utc() - time::Duration::minutes(30) + time::Duration::seconds(1);
    set_first_offered(&server, &agent.agent_id, crosses).await;
    let needle = format!("\"agent_id\":\"{}\"", agent.agent_id);
    let mut seen = String::new();
    let announced = async {
        while !(seen.contains("event: update_stuck") && seen.contains(&needle)) {
            let chunk = feed
                .chunk()
                .await
                .unwrap()
                .expect("the live feed stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), announced)
        .await
        .expect("the stuck notice within 30 s");
    assert!(seen.contains("\"version\":\"2.0.0\""), "{seen}");
    server.stop().await;
}

/// Sets when the agent was first offered 2.0.0, as if time had passed.
async fn set_first_offered(server: &Server, agent_id: &str, at: time::OffsetDateTime) {
    use sqlx::Connection;
    let url = format!(
        "sqlite://{}",
        server.data_dir.join("cms-server.db").display()
    );
    let at = cms_server::clock::format_utc(at);
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let done = sqlx::query(
        "UPDATE update_offers SET first_offered_at = $2 WHERE agent_id = $1 AND version = '2.0.0'",
    )
    .bind(agent_id)
    .bind(at)
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

#[tokio::test]
async fn a_groups_own_in_flight_cap_holds_beside_the_releases_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_groups_own_in_flight_cap_holds_beside_the_releases(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn a_groups_own_in_flight_cap_holds_beside_the_releases_on_postgres() {
    let Some(schema) = common::postgres_schema("group_in_flight").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Postgres(schema.server_url.clone());
    a_groups_own_in_flight_cap_holds_beside_the_releases(dir.path(), store).await;
    schema.drop_schema().await;
}

/// Two agents of a branch office on a thin link, capped at one in flight for the group, and
/// one agent elsewhere that the group's cap does not hold back.
async fn a_groups_own_in_flight_cap_holds_beside_the_releases(dir: &std::path::Path, store: Store) {
    let server = Server::start(dir, &store, &Options::default()).await;
    let branch = [
        server.register_ok("branch-1").await,
        server.register_ok("branch-2").await,
    ];
    let office = server.register_ok("office-1").await;
    for agent in &branch {
        assert_eq!(
            put_group(&server, &agent.agent_id, "branch").await,
            StatusCode::NO_CONTENT
        );
    }
    publish(&server, &store, "2.0.0").await;
    let cap = |n: &'static str| {
        let args = ["rollout", "set", "--version", "2.0.0", "--group", "branch"];
        let mut args = args.to_vec();
        args.extend(["--max-in-flight", n]);
        args
    };
    let (code, printed) = cli(&server, &store, &cap("1")).await;
    assert_eq!(code, Some(0), "{printed}");
    let branch_funnel = |printed: &Value| {
        let groups = printed["groups"].as_array().cloned().unwrap_or_default();
        groups.into_iter().find(|g| g["group"] == "branch")
    };
    let funnel = branch_funnel(&printed).expect("the branch group in the status");
    assert_eq!(funnel["max_in_flight"], 1, "{printed}");

    let tokens = [&branch[0], &branch[1], &office].map(|a| a.agent_token.clone());
    let offered = |i: usize| check(&server, &tokens[i], "1.0.0");
    assert_eq!(offered(0).await.as_deref(), Some("2.0.0"));
    assert_eq!(offered(1).await, None, "the group's cap");
    assert_eq!(
        offered(2).await.as_deref(),
        Some("2.0.0"),
        "another group is not held by the branch's cap"
    );
    let (_, printed) = cli(
        &server,
        &store,
        &["rollout", "status", "--version", "2.0.0"],
    )
    .await;
    let funnel = branch_funnel(&printed).expect("the branch group in the status");
    assert_eq!(
        (&funnel["in_flight"], &printed["in_flight"]),
        (&1.into(), &2.into()),
        "{printed}"
    );

    // The first ends: the second is offered. Then the cap goes (0), and a bad value is refused.
    let failed = vec![
        progress("2.0.0", UpdateStep::Offered, None),
        progress("2.0.0", UpdateStep::Failed, Some("downloading")),
    ];
    send(&server, &branch[0].agent_token, failed).await;
    assert_eq!(offered(1).await.as_deref(), Some("2.0.0"));
    let (code, printed) = cli(&server, &store, &cap("0")).await;
    assert_eq!(code, Some(0), "{printed}");
    let funnel = branch_funnel(&printed).expect("the branch group in the status");
    assert_eq!(funnel.get("max_in_flight"), None, "{printed}");
    let path = "/api/v1/rollouts/linux-x86_64/2.0.0/groups/branch";
    let response = server
        .operator(reqwest::Method::PUT, path)
        .json(&serde_json::json!({ "max_in_flight": -1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn each_group_has_its_funnel_and_a_canary_groups_halt_rule_stops_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let server = Server::start(dir.path(), &store, &Options::default()).await;
    let mut agents = Vec::new();
    for (name, group) in [
        ("c1", "canary"),
        ("c2", "canary"),
        ("p1", "prod"),
        ("p2", "prod"),
    ] {
        let agent = server.register_ok(name).await;
        assert_eq!(
            put_group(&server, &agent.agent_id, group).await,
            StatusCode::NO_CONTENT
        );
        agents.push(agent);
    }
    publish(&server, &store, "2.0.0").await;
    let rule = [
        "rollout",
        "set",
        "--version",
        "2.0.0",
        "--group",
        "canary",
        "--halt-percent",
        "10",
        "--halt-min-attempts",
        "1",
    ];
    let (code, printed) = cli(&server, &store, &rule).await;
    assert_eq!(code, Some(0), "{printed}");
    for agent in &agents {
        assert_eq!(
            check(&server, &agent.agent_token, "1.0.0").await.as_deref(),
            Some("2.0.0")
        );
        send(
            &server,
            &agent.agent_token,
            vec![progress("2.0.0", UpdateStep::Offered, None)],
        )
        .await;
    }
    let fail = |i: usize| {
        let reports = vec![progress("2.0.0", UpdateStep::Failed, Some("verifying"))];
        send(&server, &agents[i].agent_token, reports)
    };
    let status = || {
        cli(
            &server,
            &store,
            &["rollout", "status", "--version", "2.0.0"],
        )
    };
    let group = |status: &Value, name: &str| {
        let groups = status["groups"].as_array().unwrap();
        groups.iter().find(|g| g["group"] == name).unwrap().clone()
    };

    // A prod failure: one in four in total, below the release's 20 attempts; prod has no rule.
    fail(2).await;
    let (_, printed) = status().await;
    assert_eq!(printed["paused"], false, "{printed}");
    assert_eq!(group(&printed, "prod")["funnel"]["failed"], 1, "{printed}");
    assert!(group(&printed, "prod").get("halt").is_none(), "{printed}");
    assert_eq!(
        group(&printed, "canary")["funnel"]["failed"],
        0,
        "{printed}"
    );
    assert_eq!(
        group(&printed, "canary")["halt"]["percent"],
        10,
        "{printed}"
    );
    assert_eq!(printed["funnel"]["offered"], 4, "{printed}");

    // A canary failure passes the canary's own rule: the whole release halts.
    fail(0).await;
    let (_, printed) = status().await;
    assert_eq!(printed["paused"], true, "{printed}");
    assert!(printed["halted_at"].is_string(), "{printed}");
    assert_eq!(
        check(&server, &agents[3].agent_token, "1.0.0").await,
        None,
        "prod stopped too"
    );
    let audit: Vec<Value> = server.operator_json("/api/v1/audit?limit=100").await;
    let halt = audit
        .iter()
        .find(|e| e["action"] == "rollout.halt")
        .unwrap();
    assert_eq!(halt["target"], "2.0.0/linux-x86_64 group=canary", "{halt}");
    // The API takes the same settings; a bad one is refused.
    let path = "/api/v1/rollouts/linux-x86_64/2.0.0/groups/prod";
    let bad = server
        .operator(reqwest::Method::PUT, path)
        .json(&serde_json::json!({ "halt_percent": 101 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let good = server
        .operator(reqwest::Method::PUT, path)
        .json(&serde_json::json!({ "halt_min_attempts": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), StatusCode::OK);
    let body: Value = good.json().await.unwrap();
    assert_eq!(group(&body, "prod")["halt"]["min_attempts"], 5, "{body}");
    server.stop().await;
}
