//! The dashboard's server side with the real binary over HTTP: the page and its headers,
//! sign-in sessions and their cookie, the CSRF guard, roles, the fleet list searched, sorted
//! and paged by the server, an agent's page, error groups, rollout actions from the API and the
//! command line, update progress from agents (new and old) and the automatic halt.
//! The same flows in a real browser are in crates/server/tests/browser.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cms_protocol::{AgentState, ErrorReport, UPDATE_PROGRESS_KIND, UpdateStep};
use common::{Options, Server, Store, progress, send};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Signs in with `token`; returns the `Cookie` header value and the `Set-Cookie` it came from.
async fn sign_in(server: &Server, token: &str, https: bool) -> (String, String) {
    let mut request = server
        .http
        .post(server.operator_url("/api/v1/session"))
        .json(&json!({ "token": token }));
    if https {
        request = request.header("X-Forwarded-Proto", "https");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    (cookie, set_cookie)
}

/// A request with the session cookie (and the CSRF header when `csrf`).
fn by_cookie(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: bool,
) -> reqwest::RequestBuilder {
    let request = server
        .http
        .request(method, server.operator_url(path))
        .header("Cookie", cookie);
    if csrf {
        request.header("X-CMS-CSRF", "1")
    } else {
        request
    }
}

async fn json_of(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn error(kind: &str, message: &str) -> ErrorReport {
    ErrorReport {
        report_id: uuid::Uuid::new_v4().to_string(),
        kind: kind.into(),
        message: message.into(),
        agent_version: "1.0.0".into(),
        created_at: "2026-12-01T10:00:00Z".into(),
        details: Value::Null,
    }
}

async fn publish(server: &Server, store: &Store, version: &str) {
    let agent = server.data_dir.join("fake_agent");
    let updater = server.data_dir.join("fake_updater");
    std::fs::write(&agent, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::write(&updater, b"#!/bin/sh\nexit 0\n").unwrap();
    let output = common::command(&["release", "publish"], &server.data_dir, store)
        .args(["--version", version, "--agent"])
        .arg(&agent)
        .arg("--updater")
        .arg(&updater)
        .args(["--rollout", "100", "--halt-min-attempts", "20"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Each agent's update check at 1.0.0, which offers it the release (the server counts
/// progress only from agents it offered the release).
async fn offer_to(server: &Server, tokens: &[&str]) {
    for token in tokens {
        let check = server
            .http
            .get(server.url("/api/v1/agent/update?version=1.0.0&platform=linux-x86_64"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let body: Value = check.json().await.unwrap();
        assert!(body["update"]["version"].is_string(), "{body}");
    }
}

async fn rollout_cli(server: &Server, store: &Store, args: &[&str]) -> (Option<i32>, Value) {
    let output = common::command(&["rollout", args[0]], &server.data_dir, store)
        .args(&args[1..])
        .output()
        .await
        .unwrap();
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| json!({ "stderr": String::from_utf8_lossy(&output.stderr) }));
    (output.status.code(), json)
}

#[tokio::test]
async fn the_page_sessions_csrf_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let server = Server::start(dir.path(), &store, &Options::default()).await;
    let page = server
        .http
        .get(server.operator_url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    let script = server
        .http
        .get(server.operator_url("/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    let missing = server
        .http
        .get(server.operator_url("/assets/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let refused = server
        .http
        .post(server.operator_url("/api/v1/session"))
        .json(&json!({ "token": "cmso_nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let viewer = server.token("viewer", "viewer").await;
    let (cookie, set_cookie) = sign_in(&server, &viewer, false).await;
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP on loopback: {set_cookie}"
    );
    assert!(
        !server
            .log()
            .contains(cookie.trim_start_matches("cms_session=")),
        "session id logged"
    );
    let (_, forged) = sign_in(&server, &viewer, true).await;
    assert!(
        !forged.contains("Secure"),
        "X-Forwarded-Proto from a peer that is no trusted proxy: {forged}"
    );
    let (status, who) = json_of(by_cookie(
        &server,
        reqwest::Method::GET,
        "/api/v1/session",
        &cookie,
        false,
    ))
    .await;
    assert_eq!(
        (status, who),
        (StatusCode::OK, json!({"name": "viewer", "role": "viewer"}))
    );

    publish(&server, &store, "2.0.0").await;
    let path = "/api/v1/rollouts/linux-x86_64/2.0.0";
    let pause = json!({ "action": "pause" });
    let no_csrf = by_cookie(&server, reqwest::Method::POST, path, &cookie, false).json(&pause);
    assert_eq!(
        no_csrf.send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let as_viewer = by_cookie(&server, reqwest::Method::POST, path, &cookie, true).json(&pause);
    assert_eq!(
        as_viewer.send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let bearer_viewer = server
        .http
        .post(server.operator_url(path))
        .bearer_auth(&viewer)
        .json(&pause);
    assert_eq!(
        bearer_viewer.send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    let operator = server.token("operator", "ops").await;
    let (ops_cookie, _) = sign_in(&server, &operator, false).await;
    let without = by_cookie(&server, reqwest::Method::POST, path, &ops_cookie, false).json(&pause);
    assert_eq!(
        without.send().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "CSRF guard"
    );
    let (status, paused) =
        json_of(by_cookie(&server, reqwest::Method::POST, path, &ops_cookie, true).json(&pause))
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(paused["paused"], true);
    let bad = json!({ "action": "set", "percent": 101 });
    let (status, _) =
        json_of(by_cookie(&server, reqwest::Method::POST, path, &ops_cookie, true).json(&bad))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let unknown = by_cookie(
        &server,
        reqwest::Method::POST,
        "/api/v1/rollouts/linux-x86_64/9.9.9",
        &ops_cookie,
        true,
    )
    .json(&pause);
    assert_eq!(
        unknown.send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let audit: Vec<Value> = server.operator_json("/api/v1/audit?limit=100").await;
    let entries: Vec<String> = audit
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "viewer rollout.pause denied",
        "ops rollout.pause ok",
        "ops rollout.set refused",
        "ops rollout.pause refused",
    ] {
        assert!(
            entries.iter().any(|e| e == expected),
            "{expected} in {entries:?}"
        );
    }

    let revoke = server
        .operator(reqwest::Method::DELETE, "/api/v1/tokens/viewer")
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let after = by_cookie(
        &server,
        reqwest::Method::GET,
        "/api/v1/fleet",
        &cookie,
        false,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "the session ended with its token"
    );
    let out = by_cookie(
        &server,
        reqwest::Method::DELETE,
        "/api/v1/session",
        &ops_cookie,
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let gone = by_cookie(
        &server,
        reqwest::Method::GET,
        "/api/v1/fleet",
        &ops_cookie,
        false,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED, "signed out");
    server.stop().await;
}

#[tokio::test]
async fn fleet_errors_progress_and_the_automatic_halt_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    fleet_errors_progress_and_the_automatic_halt(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn fleet_errors_progress_and_the_automatic_halt_on_postgres() {
    let Some(schema) = common::postgres_schema("dashboard_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fleet_errors_progress_and_the_automatic_halt(
        dir.path(),
        Store::Postgres(schema.server_url.clone()),
    )
    .await;
    schema.drop_schema().await;
}

async fn fleet_errors_progress_and_the_automatic_halt(dir: &std::path::Path, store: Store) {
    let server = Server::start(dir, &store, &Options::default()).await;
    let a = server.register_ok("host-a").await;
    let b = server.register_ok("host-b").await;
    let c = server.register_ok("web-c").await;
    assert_eq!(
        server
            .post_status(&a.agent_token, AgentState::Idle, "1.0.0")
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server
            .post_status(&a.agent_token, AgentState::Idle, "1.1.0")
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let fleet: Value = server.operator_json("/api/v1/fleet").await;
    assert_eq!(
        (
            fleet["total"].as_i64(),
            fleet["online"].as_i64(),
            fleet["missing"].as_i64()
        ),
        (Some(3), Some(3), Some(0))
    );
    assert!(
        fleet["by_state"]
            .as_array()
            .unwrap()
            .contains(&json!(["IDLE", 1])),
        "{fleet}"
    );
    let page: Value = server
        .operator_json("/api/v1/fleet/agents?q=HOST&sort=hostname&order=desc&limit=1")
        .await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"][0]["hostname"], "host-b");
    let by_state: Value = server
        .operator_json("/api/v1/fleet/agents?state=IDLE")
        .await;
    assert_eq!(
        by_state["items"][0]["agent_id"].as_str(),
        Some(a.agent_id.as_str())
    );
    let wildcard: Value = server.operator_json("/api/v1/fleet/agents?q=%25").await;
    assert_eq!(wildcard["total"], 0, "% is searched for, not a wildcard");
    let deep = server
        .operator(reqwest::Method::GET, "/api/v1/fleet/agents?offset=100001")
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), StatusCode::BAD_REQUEST);
    let agent: Value = server
        .operator_json(&format!("/api/v1/fleet/agents/{}", a.agent_id))
        .await;
    let versions: Vec<&str> = agent["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.1.0"]);
    assert_eq!(agent["metrics"]["rss_bytes"], 0);

    send(
        &server,
        &a.agent_token,
        vec![error(
            "update_check_failed",
            "cannot reach 10.0.0.7:8080 (os error 111)",
        )],
    )
    .await;
    send(
        &server,
        &b.agent_token,
        vec![error(
            "update_check_failed",
            "cannot reach 10.0.0.12:9443 (os error 111)",
        )],
    )
    .await;
    let groups: Vec<Value> = server.operator_json("/api/v1/error-groups").await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        groups[0]["signature"],
        "cannot reach <n>.<n>.<n>.<n>:<n> (os error <n>)"
    );
    assert_eq!(
        (groups[0]["count"].as_i64(), groups[0]["agents"].as_i64()),
        (Some(2), Some(2))
    );

    publish(&server, &store, "2.0.0").await;
    let (code, set) = rollout_cli(
        &server,
        &store,
        &[
            "set",
            "--version",
            "2.0.0",
            "--halt-percent",
            "50",
            "--halt-min-attempts",
            "3",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{set}");
    assert_eq!(set["halt"], json!({"percent": 50, "min_attempts": 3}));
    let (code, _) = rollout_cli(&server, &store, &["pause", "--version", "9.9.9"]).await;
    assert_eq!(code, Some(2), "unknown release refused");
    offer_to(&server, &[&a.agent_token, &b.agent_token, &c.agent_token]).await;

    let healthy = vec![
        progress("2.0.0", UpdateStep::Offered, None),
        progress("2.0.0", UpdateStep::Healthy, None),
    ];
    // "healthy" counts once the agent's own heartbeat reports the version.
    let running = server.post_status(&a.agent_token, AgentState::Idle, "2.0.0");
    assert_eq!(running.await.status(), StatusCode::NO_CONTENT);
    send(&server, &a.agent_token, healthy.clone()).await;
    send(&server, &a.agent_token, healthy).await; // a re-send is stored once
    let failed = vec![
        progress("2.0.0", UpdateStep::Offered, None),
        progress("2.0.0", UpdateStep::Failed, Some("verifying")),
    ];
    send(&server, &b.agent_token, failed).await;
    let (_, status) = rollout_cli(&server, &store, &["status", "--version", "2.0.0"]).await;
    assert_eq!(
        status["paused"], false,
        "2 attempts are fewer than 3: {status}"
    );
    let errors: Vec<Value> = server.operator_json("/api/v1/errors").await;
    assert!(
        errors.iter().all(|e| e["kind"] != UPDATE_PROGRESS_KIND),
        "progress is not an error"
    );

    // An older agent tells its rollback only by its error report.
    send(
        &server,
        &c.agent_token,
        vec![error(
            "update_rolled_back",
            "update to 2.0.0 was rolled back: the new agent exited",
        )],
    )
    .await;
    let (_, status) = rollout_cli(&server, &store, &["status", "--version", "2.0.0"]).await;
    assert_eq!(status["paused"], true, "{status}");
    assert!(status["halted_at"].is_string());
    let funnel = &status["funnel"];
    assert_eq!(
        (funnel["offered"].as_i64(), funnel["healthy"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        (funnel["failed"].as_i64(), funnel["rolled_back"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(funnel["failed_by_step"]["verifying"], 1);
    let audit: Vec<Value> = server.operator_json("/api/v1/audit?limit=100").await;
    assert!(audit.iter().any(|e| e["actor"] == "server:halt"
        && e["action"] == "rollout.halt"
        && e["target"] == "2.0.0/linux-x86_64"));
    assert!(
        audit.iter().any(
            |e| e["actor"].as_str().unwrap().starts_with("cli") && e["action"] == "rollout.set"
        )
    );
    let check = server
        .http
        .get(server.url("/api/v1/agent/update?version=1.0.0&platform=linux-x86_64"))
        .bearer_auth(&c.agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check.json::<Value>().await.unwrap(),
        json!({}),
        "a halted release is offered to nobody"
    );
    let updates: Value = server
        .operator_json(&format!("/api/v1/fleet/agents/{}", b.agent_id))
        .await;
    let steps: Vec<(&str, &str)> = updates["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["step"].as_str().unwrap(),
                u["failed_step"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        steps.contains(&("failed", "verifying")) && steps.contains(&("offered", "")),
        "{steps:?}"
    );
    // The agents that failed 2.0.0, with their latest failed step; a bad filter is refused.
    let list: Value = server
        .operator_json("/api/v1/fleet/agents?release=2.0.0&platform=linux-x86_64&step=failed")
        .await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["agent_id"], b.agent_id.as_str());
    assert_eq!(
        list["items"][0]["update"]["failed_step"], "verifying",
        "{list}"
    );
    for bad in [
        "release=x.y&platform=linux-x86_64",
        "release=2.0.0",
        "release=2.0.0&platform=linux-x86_64&step=bogus",
    ] {
        let path = format!("/api/v1/fleet/agents?{bad}");
        let response = server
            .operator(reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let reasons: Vec<Value> = server
        .operator_json("/api/v1/rollouts/linux-x86_64/2.0.0/reasons")
        .await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(
        (&reasons[0]["step"], &reasons[0]["agents"]),
        (&json!("failed"), &json!(1))
    );

    let (code, refused) = rollout_cli(&server, &store, &["resume", "--version", "2.0.0"]).await;
    assert_eq!(
        code,
        Some(2),
        "a halted release needs a reason to resume: {refused}"
    );
    let resume = ["resume", "--version", "2.0.0", "--reason", "verifier fixed"];
    let (code, resumed) = rollout_cli(&server, &store, &resume).await;
    assert_eq!(code, Some(0));
    assert_eq!(resumed["halts"][0]["reason"], "verifier fixed", "{resumed}");
    assert_eq!(
        (resumed["paused"].as_bool(), resumed["halted_at"].is_null()),
        (Some(false), true)
    );

    // Healthy on the new version without a "healthy" step: an agent that reported the
    // attempt and now runs 2.0.0, and an older one that reported nothing and runs it; the
    // agent that reported it healthy and runs it too is counted once.
    let d = server.register_ok("host-d").await;
    offer_to(&server, &[&d.agent_token]).await;
    for token in [&a.agent_token, &b.agent_token, &d.agent_token] {
        let status = server.post_status(token, AgentState::Idle, "2.0.0").await;
        assert_eq!(status.status(), StatusCode::NO_CONTENT);
    }
    let (_, status) = rollout_cli(&server, &store, &["status", "--version", "2.0.0"]).await;
    let funnel = &status["funnel"];
    assert_eq!(
        (funnel["offered"].as_i64(), funnel["healthy"].as_i64()),
        (Some(4), Some(3)),
        "{funnel}"
    );
    server.stop().await;
}
