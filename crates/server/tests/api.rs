//! End-to-end tests of `cms-server serve` over real HTTP and WebSocket connections, on SQLite
//! and (when `CMS_TEST_POSTGRES_URL` is set) on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cms_protocol::{
    AgentState, ErrorBatch, ErrorBatchResponse, ErrorReport, ReleaseSummary, ServerEvent,
    StoredError, UpdateCheckResponse, UpdateRequired, paths,
};
use std::path::Path;

use common::{Options, Server, Store, next_text, postgres_schema};
use serde_json::json;

fn report(id: &str) -> ErrorReport {
    ErrorReport {
        report_id: id.into(),
        kind: "update_download".into(),
        message: format!("download failed ({id})"),
        agent_version: "1.0.0".into(),
        created_at: "2026-11-25T10:00:00Z".into(),
        details: json!({"attempt": 1}),
    }
}

async fn post_status(server: &Server, token: &str, state: AgentState) -> reqwest::Response {
    server.post_status(token, state, "1.0.1").await
}

async fn post_errors(server: &Server, token: &str, batch: &ErrorBatch) -> reqwest::Response {
    server.post_errors(token, batch).await
}

async fn update_check(server: &Server, token: &str, version: &str) -> reqwest::Response {
    server
        .http
        .get(server.url(paths::UPDATE_CHECK))
        .query(&[("version", version), ("platform", "linux-x86_64")])
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn assert_json_error(response: reqwest::Response, status: u16) {
    assert_eq!(response.status(), status);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
}

/// Inserts a release row the way the future `release publish` will.
async fn insert_release(db_url: &str, version: &str, rollout: i64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO releases (version, platform, published_at, package_path, length, sha256, \
         rollout_percent) VALUES ($1, 'linux-x86_64', '2026-11-25T10:00:00.000000Z', 'p', 1234, \
         'abcd', $2)",
    )
    .bind(version)
    .bind(rollout)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// The whole agent + operator flow against one backend, including a restart.
async fn full_scenario(dir: &Path, store: Store, db_url: String) {
    let server = Server::start(dir, &store, &Options::default()).await;

    // healthz
    let health = server
        .http
        .get(server.url(paths::HEALTHZ))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // register (no enrollment token configured)
    let identity = server.register_ok("host-a").await;
    assert_eq!(identity.agent_id.len(), 36);
    assert_eq!(identity.agent_token.len(), 64);
    assert!(
        !server.log().contains(&identity.agent_token),
        "token logged"
    );
    let other = server.register_ok("host-b").await;
    assert_ne!(identity.agent_id, other.agent_id);
    assert_ne!(identity.agent_token, other.agent_token);

    // bad or missing token -> 401 JSON
    assert_json_error(
        post_status(&server, "not-a-token", AgentState::Idle).await,
        401,
    )
    .await;
    let no_auth = server
        .http
        .post(server.url(paths::STATUS))
        .json(&json!({}))
        .send()
        .await;
    assert_json_error(no_auth.unwrap(), 401).await;

    // status -> visible, IDLE and online
    let status = post_status(&server, &identity.agent_token, AgentState::Idle).await;
    assert_eq!(status.status(), 204);
    let agents = server.agents().await;
    assert_eq!(agents.len(), 2);
    let agent = agents
        .iter()
        .find(|a| a.agent_id == identity.agent_id)
        .unwrap();
    assert_eq!(agent.state, "IDLE");
    assert_eq!(agent.version, "1.0.1");
    assert_eq!(agent.hostname, "host-a");
    assert_eq!(agent.platform, "linux-x86_64");
    assert!(agent.online);
    assert!(agent.last_seen.ends_with('Z'));

    // malformed status body -> 4xx JSON
    let bad = server
        .http
        .post(server.url(paths::STATUS))
        .bearer_auth(&identity.agent_token)
        .json(&json!({"state": "BOGUS", "version": "1", "metrics": {}}))
        .send()
        .await
        .unwrap();
    assert_json_error(bad, 422).await;

    // error batches are idempotent on report_id
    let batch = ErrorBatch {
        reports: vec![report("r-1"), report("r-2")],
    };
    let first: ErrorBatchResponse = post_errors(&server, &identity.agent_token, &batch)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((first.stored, first.duplicates), (2, 0));
    let second: ErrorBatchResponse = post_errors(&server, &identity.agent_token, &batch)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((second.stored, second.duplicates), (0, 2));
    let mixed = ErrorBatch {
        reports: vec![report("r-2"), report("r-3")],
    };
    let third: ErrorBatchResponse = post_errors(&server, &other.agent_token, &mixed)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (third.stored, third.duplicates),
        (2, 0),
        "ids are scoped to the agent: another agent's r-2 does not occupy this one's"
    );
    let errors: Vec<StoredError> = server.operator_json(paths::OPERATOR_ERRORS).await;
    assert_eq!(errors.len(), 4);
    assert!(
        errors[..2].iter().any(|e| e.report_id == "r-3"),
        "newest first"
    );
    let mine: Vec<StoredError> = server
        .operator_json(&format!(
            "{}?agent_id={}",
            paths::OPERATOR_ERRORS,
            identity.agent_id
        ))
        .await;
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|e| e.agent_id == identity.agent_id));
    assert_eq!(
        mine.iter().find(|e| e.report_id == "r-1").unwrap().kind,
        "update_download"
    );

    // too many reports -> 413
    let huge = ErrorBatch {
        reports: (0..501).map(|i| report(&format!("big-{i}"))).collect(),
    };
    assert_json_error(
        post_errors(&server, &identity.agent_token, &huge).await,
        413,
    )
    .await;

    // update check: nothing published yet -> {}
    let none = update_check(&server, &identity.agent_token, "1.0.1").await;
    assert_eq!(none.status(), 200);
    assert_eq!(
        none.json::<UpdateCheckResponse>().await.unwrap().update,
        None
    );
    assert_json_error(
        update_check(&server, &identity.agent_token, "garbage").await,
        400,
    )
    .await;

    // releases: published rows show up and drive the update check
    insert_release(&db_url, "1.1.0", 100).await;
    insert_release(&db_url, "1.2.0", 0).await;
    let offered: UpdateCheckResponse = update_check(&server, &identity.agent_token, "1.0.1")
        .await
        .json()
        .await
        .unwrap();
    let update = offered.update.expect("1.1.0 offered");
    assert_eq!(update.version, "1.1.0", "1.2.0 is rolled out to nobody");
    assert_eq!(
        update.package_url,
        "/api/v1/agent/packages/1.1.0/linux-x86_64"
    );
    assert_eq!((update.length, update.sha256.as_str()), (1234, "abcd"));
    let current: UpdateCheckResponse = update_check(&server, &identity.agent_token, "1.1.0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current.update, None);
    let releases: Vec<ReleaseSummary> = server.operator_json(paths::RELEASES).await;
    assert_eq!(releases.len(), 2);

    // check-update over a real WebSocket
    assert_json_error(server.check_update("no-such-agent").await, 404).await;
    assert_json_error(server.check_update(&identity.agent_id).await, 409).await;
    assert!(
        server.connect_ws("wrong-token").await.is_err(),
        "ws needs auth"
    );
    let mut ws = server.connect_ws(&identity.agent_token).await.unwrap();
    // The hub registers the socket right after the upgrade; retry briefly until it does.
    let mut sent = false;
    for _ in 0..50 {
        let response = server.check_update(&identity.agent_id).await;
        if response.status() == 202 {
            sent = true;
            break;
        }
        assert_eq!(response.status(), 409);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(sent, "check-update never reached the socket");
    // The release watcher may push the releases inserted above first (with their version).
    let text = loop {
        let text = next_text(&mut ws, 10).await.expect("event frame");
        let event: ServerEvent = serde_json::from_str(&text).unwrap();
        if event == ServerEvent::UpdateRequired(UpdateRequired::default()) {
            break text;
        }
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["event"],
        "agent:update_required"
    );

    // a second connection replaces the first (which is not read meanwhile, so it does not answer
    // the server's clone check); what was pushed to it during the check may still arrive
    let mut replacement = server.connect_ws(&identity.agent_token).await.unwrap();
    let closed = loop {
        match next_text(&mut ws, 10).await {
            Some(text) if text.contains("agent:update_required") => continue,
            other => break other,
        }
    };
    assert_eq!(closed, None, "old socket closed");
    let response = server.check_update(&identity.agent_id).await;
    assert_eq!(response.status(), 202);
    assert!(next_text(&mut replacement, 10).await.is_some());
    drop(replacement);

    // restart: SIGTERM exits 0, data survives, tokens still work
    assert_eq!(server.stop().await, Some(0));
    let server = Server::start(dir, &store, &Options::default()).await;
    let agents = server.agents().await;
    let agent = agents
        .iter()
        .find(|a| a.agent_id == identity.agent_id)
        .unwrap();
    assert_eq!(agent.state, "IDLE");
    let status = post_status(&server, &identity.agent_token, AgentState::Idle).await;
    assert_eq!(status.status(), 204);
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn full_api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("cms-server.db").display());
    full_scenario(dir.path(), Store::Sqlite, db_url).await;
    let wal = dir.path().join("cms-server.db-wal");
    let journal_mode_is_wal = wal.exists() || {
        // After a clean close SQLite may fold the WAL back; the header still says WAL (v2).
        let header = std::fs::read(dir.path().join("cms-server.db")).unwrap();
        header[18] == 2 && header[19] == 2
    };
    assert!(journal_mode_is_wal);
}

#[tokio::test]
async fn full_api_on_postgres() {
    let Some(schema) = postgres_schema("full_api_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = schema.server_url.clone();
    full_scenario(dir.path(), Store::Postgres(url.clone()), url).await;
    assert!(
        !dir.path().join("cms-server.db").exists(),
        "PostgreSQL run must not create a SQLite file"
    );
    schema.drop_schema().await;
}

#[tokio::test]
async fn enrollment_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        enrollment_token: Some("join-me".into()),
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    assert_json_error(server.register("h", None).await, 403).await;
    assert_json_error(server.register("h", Some("wrong")).await, 403).await;
    assert_json_error(server.register("h", Some("")).await, 403).await;
    let ok = server.register("h", Some("join-me")).await;
    assert_eq!(ok.status(), 200);
    assert!(!server.log().contains("join-me"), "enrollment token logged");
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn enrollment_token_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        enrollment_env: Some("from-env".into()),
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    assert_json_error(server.register("h", None).await, 403).await;
    assert_eq!(server.register("h", Some("from-env")).await.status(), 200);
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn agents_without_contact_go_offline() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        offline_after: Some(1),
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    let quiet = server.register_ok("quiet").await;
    let connected = server.register_ok("connected").await;
    let mut ws = server.connect_ws(&connected.agent_token).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let agents = server.agents().await;
    let online = |id: &str| agents.iter().find(|a| a.agent_id == id).unwrap().online;
    assert!(
        !online(&quiet.agent_id),
        "no contact for longer than --offline-after"
    );
    assert!(
        online(&connected.agent_id),
        "a live WebSocket counts as online"
    );
    // The dashboard's cards and list say the same.
    let fleet: serde_json::Value = server.operator_json("/api/v1/fleet").await;
    assert_eq!(
        (&fleet["online"], &fleet["offline"]),
        (&json!(1), &json!(1))
    );
    let page: serde_json::Value = server
        .operator_json("/api/v1/fleet/agents?sort=hostname")
        .await;
    let listed: Vec<(&str, bool)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["hostname"].as_str().unwrap(),
                a["online"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("connected", true), ("quiet", false)]);
    assert_eq!(
        agents
            .iter()
            .find(|a| a.agent_id == quiet.agent_id)
            .unwrap()
            .state,
        "STARTING"
    );

    // Shutdown with a live WebSocket: the socket is closed and the process exits 0 promptly.
    let started = std::time::Instant::now();
    assert_eq!(server.stop().await, Some(0));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(next_text(&mut ws, 5).await, None);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &Store::Sqlite, &Options::default()).await;
    let url = server.url(paths::REGISTER);
    let not_json = server
        .http
        .post(&url)
        .body("{")
        .header("content-type", "application/json");
    assert_json_error(not_json.send().await.unwrap(), 400).await;
    let empty_host = json!({"hostname": " ", "platform": "linux-x86_64", "version": "1.0.0"});
    let response = server
        .http
        .post(&url)
        .json(&empty_host)
        .send()
        .await
        .unwrap();
    assert_json_error(response, 400).await;
    let missing = server.http.get(server.url("/nope")).send().await.unwrap();
    assert_json_error(missing, 404).await;
    // Last: the server may close the connection without reading the rest of the body.
    let big = "x".repeat(2 * 1024 * 1024);
    let too_big = json!({"hostname": big, "platform": "linux-x86_64", "version": "1.0.0"});
    let response = server.http.post(&url).json(&too_big).send().await.unwrap();
    assert_json_error(response, 413).await;
    assert_eq!(server.stop().await, Some(0));
}
