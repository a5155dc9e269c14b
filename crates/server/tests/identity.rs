//! Agent identities an operator manages, with real processes: the `cms-server` binary (SQLite,
//! or PostgreSQL when `CMS_TEST_POSTGRES_URL` is set) and the real `cms_agent`.
//!
//! A revoked agent is offline at once, told so (410), never registers again by itself and
//! enrols again only after `--reset-identity`; a revocation through one replica is refused by
//! the other, which closes the agent's socket. A live clone is told apart on one replica and
//! across two (PostgreSQL). Enrollment tokens refuse expired, used-up and
//! revoked tokens with distinct messages, and agents record which token enrolled them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command as StdCommand;

use cms_protocol::AgentState;
use common::agent::{AgentProcess, agent_exe};
use common::{Options, Server, Store, WsStream, command, postgres_schema, wait_until};
use futures_util::StreamExt;
use reqwest::Method;
use tokio_tungstenite::tungstenite::Message;

/// What the agent logs, once per run, when it learns it was revoked.
const REVOKED_LINE: &str = "an operator revoked this agent on the server";

/// `cms_agent --data-dir DIR --reset-identity`: its exit code.
fn reset_identity(data: &Path) -> i32 {
    let output = StdCommand::new(agent_exe())
        .arg("--data-dir")
        .arg(data)
        .arg("--reset-identity")
        .env_remove("CMS_AGENT_DATA_DIR")
        .output()
        .unwrap();
    output.status.code().unwrap()
}

fn config_json(data: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data.join("config.json")).unwrap()).unwrap()
}

/// `cms-server ARGS` on `server`'s store, asserting success; its stdout.
async fn server_cli(server_dir: &Path, store: &Store, args: &[&str]) -> String {
    let output = command(args, server_dir, store).output().await.unwrap();
    assert!(
        output.status.success(),
        "cms-server {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Whether the server closes `ws` within `secs` (frames before the close are skipped).
async fn closed_by_server(ws: &mut WsStream, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Ok(Message::Close(_)) | Err(_))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn revoke(server: &Server, agent_id: &str) -> u16 {
    let path = format!("/api/v1/agents/{agent_id}");
    let response = server.operator(Method::DELETE, &path).send().await.unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn a_revoked_agent_is_offline_at_once_and_waits_for_reset_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = Server::start(&server_dir, &Store::Sqlite, &Options::default()).await;
    let data = dir.path().join("agent");
    let args = ["--server", server.base.as_str(), "--status-interval", "1"];
    let mut agent = AgentProcess::start(&data, &args);
    let agent_id = wait_until("the agent to register", 60, || async { agent.agent_id() }).await;
    wait_until("the agent online", 60, || async {
        let agents = server.agents().await;
        agents
            .iter()
            .any(|a| a.online && a.state == "IDLE")
            .then_some(())
    })
    .await;

    assert_eq!(revoke(&server, "no-such-agent").await, 404);
    assert_eq!(revoke(&server, &agent_id).await, 204);
    let listed = server.agents().await;
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].online, "offline at once");
    assert!(listed[0].revoked_at.is_some());
    let fleet: serde_json::Value = server.operator_json("/api/v1/fleet").await;
    assert_eq!(
        (fleet["total"].as_i64(), fleet["revoked"].as_i64()),
        (Some(0), Some(1))
    );

    // The agent is told, says so once, records it and does not register again.
    wait_until("the agent to log its revocation", 60, || async {
        agent.log().contains(REVOKED_LINE).then_some(())
    })
    .await;
    assert_eq!(config_json(&data)["identity_revoked"], true);
    assert_eq!(reset_identity(&data), 1, "refused while the agent runs");
    assert_eq!(agent.stop().await, Some(0));
    agent = AgentProcess::start(&data, &args);
    wait_until("the restarted agent to log its revocation", 60, || async {
        (agent.log().matches(REVOKED_LINE).count() == 2).then_some(())
    })
    .await;
    assert_eq!(server.agents().await.len(), 1, "no new identity");
    assert_eq!(agent.stop().await, Some(0));

    // A person resets the identity: the server and settings stay, the next start enrols anew.
    assert_eq!(reset_identity(&data), 0);
    let config = config_json(&data);
    assert!(config["credentials"].is_null() && config["identity_revoked"].is_null());
    assert_eq!(config["server_url"], server.base.as_str());
    let agent = AgentProcess::start(&data, &args);
    let new_id = wait_until("a new identity", 60, || async { agent.agent_id() }).await;
    assert_ne!(new_id, agent_id);
    wait_until("the new identity online", 60, || async {
        let agents = server.agents().await;
        agents
            .iter()
            .any(|a| a.agent_id == new_id && a.online)
            .then_some(())
    })
    .await;
    let listing = server_cli(&server_dir, &Store::Sqlite, &["agent", "list"]).await;
    let revoked_line = listing.lines().find(|l| l.starts_with(&agent_id)).unwrap();
    assert!(!revoked_line.trim_end().ends_with('-'), "{listing}");
    let audit: serde_json::Value = server.operator_json("/api/v1/audit").await;
    assert!(audit.to_string().contains("agent.revoke"));
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn revoked_through_one_replica_refused_by_the_other() {
    let Some(schema) = postgres_schema("revoked_through_one_replica_refused_by_the_other").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::Postgres(schema.server_url.clone());
    let options = Options::default();
    let (a, b) = tokio::join!(
        Server::start(&store_dir, &store, &options),
        Server::start(&store_dir, &store, &options)
    );
    // Revoked with the API of replica A, and with the command line: the socket held by
    // replica B is closed, and B refuses the credential.
    for by_command in [false, true] {
        let identity = b.register_ok("on-b").await;
        let mut ws = b.connect_ws(&identity.agent_token).await.unwrap();
        let ok = b
            .post_status(&identity.agent_token, AgentState::Idle, "1.0.0")
            .await;
        assert_eq!(ok.status(), 204);
        if by_command {
            let args = ["agent", "revoke", "--agent-id", &identity.agent_id];
            server_cli(&store_dir, &store, &args).await;
        } else {
            assert_eq!(revoke(&a, &identity.agent_id).await, 204);
        }
        assert!(closed_by_server(&mut ws, 20).await, "B closes the socket");
        let refused = b
            .post_status(&identity.agent_token, AgentState::Idle, "1.0.0")
            .await;
        assert_eq!(refused.status(), 410);
        assert!(b.connect_ws(&identity.agent_token).await.is_err());
        let listed = b.agents().await;
        let listed = listed
            .iter()
            .find(|x| x.agent_id == identity.agent_id)
            .unwrap();
        assert!(!listed.online && listed.revoked_at.is_some());
    }
    a.stop().await;
    b.stop().await;
    schema.drop_schema().await;
}

/// Copies the regular files of a running agent's data folder (not its lock, logs or IPC
/// socket), as cloning a machine's disk would.
fn copy_data_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let kind = entry.file_type().unwrap();
        if name == "logs" || name == "agent.lock" {
            continue;
        }
        if kind.is_dir() {
            copy_data_folder(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// Ids of the agents `server` lists online.
async fn online_ids(server: &Server) -> Vec<String> {
    let agents = server.agents().await;
    agents
        .into_iter()
        .filter(|a| a.online)
        .map(|a| a.agent_id)
        .collect()
}

#[tokio::test]
async fn a_live_clone_becomes_a_second_identity_and_a_restart_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("server"),
        &Store::Sqlite,
        &Options::default(),
    )
    .await;
    let original_dir = dir.path().join("original");
    let args = ["--server", server.base.as_str(), "--status-interval", "1"];
    let original = AgentProcess::start(&original_dir, &args);
    let original_id = wait_until("the agent to register", 60, || async {
        original.agent_id()
    })
    .await;
    wait_until("the agent's WebSocket", 60, || async {
        original.log().contains("websocket connected").then_some(())
    })
    .await;

    let clone_dir = dir.path().join("clone");
    copy_data_folder(&original_dir, &clone_dir);
    let clone = AgentProcess::start(&clone_dir, &args);
    let clone_id = wait_until("a second identity online", 120, || async {
        let online = online_ids(&server).await;
        let id = clone.agent_id().filter(|id| *id != original_id)?;
        (online.len() == 2 && online.contains(&original_id) && online.contains(&id)).then_some(id)
    })
    .await;
    assert_eq!(
        original.agent_id().as_deref(),
        Some(original_id.as_str()),
        "the original keeps its id"
    );
    let report = wait_until("the clone's identity_conflict report", 60, || async {
        let errors = server.errors().await;
        errors.into_iter().find(|e| e.kind == "identity_conflict")
    })
    .await;
    assert_eq!(report.agent_id, clone_id);
    assert!(report.message.contains(&original_id), "{}", report.message);

    // Killed and started again at once: its old socket is dead, so it keeps its identity.
    let mut original = original;
    original.child.start_kill().unwrap();
    original.child.wait().await.unwrap();
    let restarted = AgentProcess::start(&original_dir, &args);
    wait_until("the restarted agent's WebSocket", 60, || async {
        (restarted.log().matches("websocket connected").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(restarted.agent_id().as_deref(), Some(original_id.as_str()));
    assert_eq!(server.agents().await.len(), 2, "no third identity");
    assert!(
        !restarted
            .log()
            .contains("another live agent holds this identity")
    );
    restarted.stop().await;
    clone.stop().await;
    server.stop().await;
}

/// Points the agent of `data` at `server` alone (as a load balancer sending it to that replica
/// would), keeping its identity: no `--server` is given, which would forget it.
fn point_at(data: &Path, server: &Server) {
    let path = data.join("config.json");
    let mut config = config_json(data);
    config["server_url"] = server.base.as_str().into();
    config["server_urls"] = serde_json::json!([server.base.as_str()]);
    std::fs::write(path, config.to_string()).unwrap();
}

#[tokio::test]
async fn a_live_clone_reaching_another_replica_becomes_a_second_identity() {
    let test = "a_live_clone_reaching_another_replica_becomes_a_second_identity";
    let Some(schema) = postgres_schema(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::Postgres(schema.server_url.clone());
    let options = Options::default();
    let (a, b) = tokio::join!(
        Server::start(&store_dir, &store, &options),
        Server::start(&store_dir, &store, &options)
    );
    let original_dir = dir.path().join("original");
    let args = ["--server", a.base.as_str(), "--status-interval", "1"];
    let original = AgentProcess::start(&original_dir, &args);
    let original_id = wait_until("the agent to register", 60, || async {
        original.agent_id()
    })
    .await;
    wait_until("replica A to hold the agent's WebSocket", 60, || async {
        a.log()
            .lines()
            .any(|l| l.contains("agent WebSocket connected") && l.contains(&original_id))
            .then_some(())
    })
    .await;

    // The copy reaches replica B with the original's identity: B asks A, whose socket answers.
    let clone_dir = dir.path().join("clone");
    copy_data_folder(&original_dir, &clone_dir);
    point_at(&clone_dir, &b);
    let clone = AgentProcess::start(&clone_dir, &["--status-interval", "1"]);
    let clone_id = wait_until("a second identity online", 120, || async {
        let online = online_ids(&b).await;
        let id = clone.agent_id().filter(|id| *id != original_id)?;
        (online.len() == 2 && online.contains(&original_id) && online.contains(&id)).then_some(id)
    })
    .await;
    assert_eq!(original.agent_id().as_deref(), Some(original_id.as_str()));
    assert!(
        b.log()
            .contains("clone check answered by the replica holding the socket"),
        "B asked A: {}",
        b.log_tail(40)
    );
    assert!(
        a.log()
            .contains("clone check from another replica answered"),
        "{}",
        a.log_tail(40)
    );
    let report = wait_until("the clone's identity_conflict report", 60, || async {
        let errors = b.errors().await;
        errors.into_iter().find(|e| e.kind == "identity_conflict")
    })
    .await;
    assert_eq!(report.agent_id, clone_id);
    assert!(report.message.contains(&original_id), "{}", report.message);

    // The original killed and started again at once against B: it keeps its identity.
    let mut original = original;
    original.child.start_kill().unwrap();
    original.child.wait().await.unwrap();
    point_at(&original_dir, &b);
    let restarted = AgentProcess::start(&original_dir, &["--status-interval", "1"]);
    wait_until("the restarted agent online through B", 60, || async {
        let connected = b
            .log()
            .lines()
            .any(|l| l.contains("agent WebSocket connected") && l.contains(&original_id));
        (connected && online_ids(&b).await.contains(&original_id)).then_some(())
    })
    .await;
    assert_eq!(restarted.agent_id().as_deref(), Some(original_id.as_str()));
    assert_eq!(b.agents().await.len(), 2, "no third identity");
    restarted.stop().await;
    clone.stop().await;
    a.stop().await;
    b.stop().await;
    schema.drop_schema().await;
}

/// Registers with `token`; the status and the error text.
async fn register_with(server: &Server, token: &str) -> (u16, String) {
    let response = server.register("host", Some(token)).await;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn enrollment_tokens_are_refused_expired_used_up_and_revoked_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let store = Store::Sqlite;
    let options = Options {
        enrollment_token: Some("s3cret-default".into()),
        ..Options::default()
    };
    let server = Server::start(&server_dir, &store, &options).await;
    let create = |name: &'static str, extra: &'static [&'static str]| {
        let server_dir = server_dir.clone();
        async move {
            let mut args = vec!["enroll", "create", "--name", name];
            args.extend_from_slice(extra);
            server_cli(&server_dir, &Store::Sqlite, &args)
                .await
                .trim()
                .to_owned()
        }
    };
    let once = create("once", &["--uses", "1", "--group", "lab"]).await;
    let old = create("old", &["--expires-days", "1"]).await;
    let gone = create("gone", &[]).await;
    server_cli(&server_dir, &store, &["enroll", "revoke", "gone"]).await;
    // Expiry is days away at the least: move it to the past in the database.
    let url = format!("sqlite://{}", server_dir.join("cms-server.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE enrollment_tokens SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE name = 'old'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // A real agent enrols with the one-use token, and records which token let it in.
    let data = dir.path().join("agent");
    let agent = AgentProcess::start(
        &data,
        &["--server", &server.base, "--enrollment-token", &once],
    );
    let agent_id = wait_until("the agent to register", 60, || async { agent.agent_id() }).await;
    let page: serde_json::Value = server
        .operator_json(&format!("/api/v1/fleet/agents/{agent_id}"))
        .await;
    assert_eq!(page["agent"]["enrolled_by"], "once");
    assert_eq!(
        page["agent"]["credential_at"],
        page["agent"]["registered_at"]
    );

    let (status, used_up) = register_with(&server, &once).await;
    assert_eq!(status, 403);
    let (_, expired) = register_with(&server, &old).await;
    let (_, revoked) = register_with(&server, &gone).await;
    let (_, invalid) = register_with(&server, "cmse_not-a-token").await;
    assert!(used_up.contains("used up"), "{used_up}");
    assert!(expired.contains("expired"), "{expired}");
    assert!(revoked.contains("revoked"), "{revoked}");
    assert!(invalid.contains("invalid"), "{invalid}");
    let (status, body) = register_with(&server, "s3cret-default").await;
    assert_eq!(status, 200, "{body}");
    let enrolled: cms_protocol::RegisterResponse = serde_json::from_str(&body).unwrap();
    let page: serde_json::Value = server
        .operator_json(&format!("/api/v1/fleet/agents/{}", enrolled.agent_id))
        .await;
    assert_eq!(page["agent"]["enrolled_by"], "default");

    // An agent given a used-up token says why in its log.
    let late = AgentProcess::start(
        &dir.path().join("late"),
        &["--server", &server.base, "--enrollment-token", &once],
    );
    wait_until("the refusal in the agent's log", 60, || async {
        late.log()
            .contains("enrollment token is used up")
            .then_some(())
    })
    .await;
    late.stop().await;

    // Revoking a token touches no enrolled agent; the listing never shows a token.
    server_cli(&server_dir, &store, &["enroll", "revoke", "once"]).await;
    let listing = server_cli(&server_dir, &store, &["enroll", "list"]).await;
    assert!(
        listing.contains("1/1") && !listing.contains(&once),
        "{listing}"
    );
    wait_until("the enrolled agent still heard", 60, || async {
        let agents = server.agents().await;
        agents
            .iter()
            .any(|a| a.agent_id == agent_id && a.online && a.state == "IDLE")
            .then_some(())
    })
    .await;
    agent.stop().await;

    // The same objects over the API: admin only, the token shown once.
    let viewer = server.token("viewer", "viewer").await;
    let body = serde_json::json!({"name": "api", "uses": 5});
    let denied = server
        .http
        .post(server.operator_url("/api/v1/enrollment-tokens"))
        .bearer_auth(&viewer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let created = server
        .operator(Method::POST, "/api/v1/enrollment-tokens")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let listed: serde_json::Value = server.operator_json("/api/v1/enrollment-tokens").await;
    assert_eq!(listed.as_array().unwrap().len(), 4);
    assert!(!listed.to_string().contains(&token) && !listed.to_string().contains("hash"));
    let revoked = server
        .operator(Method::DELETE, "/api/v1/enrollment-tokens/api")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert!(register_with(&server, &token).await.1.contains("revoked"));
    server.stop().await;
}

/// Starts an agent that dies (aborts, like a kill) right after the rotation step `step`.
fn agent_dying_at(data: &Path, args: &[&str], step: &str) -> AgentProcess {
    let child = tokio::process::Command::new(agent_exe())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("CMS_AGENT_DATA_DIR")
        .env("CMS_AGENT_TEST_ROTATION_ABORT", step)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    AgentProcess {
        child,
        data_dir: data.to_owned(),
    }
}

fn current_token(data: &Path) -> String {
    config_json(data)["credentials"]["agent_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_rotation_killed_at_every_step_ends_with_a_credential_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = Server::start(&server_dir, &Store::Sqlite, &Options::default()).await;
    let args = ["--server", server.base.as_str(), "--status-interval", "1"];
    for (n, step) in ["saved", "proposed", "promoted"].into_iter().enumerate() {
        let data = dir.path().join(step);
        let mut dying = agent_dying_at(&data, &args, step);
        let agent_id = wait_until("the agent to register", 60, || async { dying.agent_id() }).await;
        let first_token = current_token(&data);
        wait_until("the agent's WebSocket", 60, || async {
            dying.log().contains("websocket connected").then_some(())
        })
        .await;
        // Asked through the API, and once through the command line.
        if step == "proposed" {
            let args = ["agent", "rotate", "--agent-id", &agent_id];
            server_cli(&server_dir, &Store::Sqlite, &args).await;
        } else {
            let path = format!("/api/v1/agents/{agent_id}/rotate-credential");
            let asked = server.operator(Method::POST, &path).send().await.unwrap();
            assert_eq!(asked.status(), 202);
        }
        let exit = tokio::time::timeout(std::time::Duration::from_secs(60), dying.child.wait())
            .await
            .expect("the agent dies at the step")
            .unwrap();
        assert!(!exit.success(), "{step}: {exit:?}");

        let agent = AgentProcess::start(&data, &args);
        let page_path = format!("/api/v1/fleet/agents/{agent_id}");
        wait_until(
            &format!("the rotation finished after a death at {step}"),
            60,
            || async {
                let page: serde_json::Value = server.operator_json(&page_path).await;
                let rotated = page["agent"]["credential_at"] != page["agent"]["registered_at"];
                let settled = config_json(&data)["pending_credentials"].is_null();
                (rotated && settled && page["online"] == true).then_some(())
            },
        )
        .await;
        let token = current_token(&data);
        assert_ne!(token, first_token, "{step}");
        let refused = server
            .post_status(&first_token, AgentState::Idle, "1.0.0")
            .await;
        assert_eq!(
            refused.status(),
            401,
            "{step}: the old credential is retired"
        );
        let accepted = server.post_status(&token, AgentState::Idle, "1.0.0").await;
        assert_eq!(accepted.status(), 204, "{step}");
        assert_eq!(agent.agent_id().as_deref(), Some(agent_id.as_str()));
        assert_eq!(
            server.agents().await.len(),
            n + 1,
            "{step}: no new identity"
        );
        agent.stop().await;
    }
    server.stop().await;
}
