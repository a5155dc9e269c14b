//! The operator API as a network-facing service: tokens and roles (401/403), revocation that
//! takes effect at once, the audit log, keyset paging, and the operator API on its own
//! address. Real `cms-server` processes; tokens made with `cms-server token create`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use cms_protocol::{
    AgentSummary, AuditEntry, CreatedOperatorToken, OperatorRole, OperatorToken, paths,
};
use common::{Options, Server, Store, postgres_schema};
use reqwest::Method;
use serde_json::json;

async fn status_of(builder: reqwest::RequestBuilder) -> u16 {
    builder.send().await.unwrap().status().as_u16()
}

fn check_update_path(agent_id: &str) -> String {
    format!("/api/v1/agents/{agent_id}/check-update")
}

/// `cms-server token list` output.
async fn token_list(dir: &Path, store: &Store) -> String {
    let output = common::command(&["token", "list"], dir, store)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

async fn roles_revocation_and_audit(dir: &Path, store: Store) {
    let server = Server::start(dir, &store, &Options::default()).await;
    let agent = server.register_ok("host-a").await;
    let viewer = server.token("viewer", "ann.viewer").await;
    let operator = server.token("operator", "oscar@ops").await;
    let url = |path: &str| server.operator_url(path);
    let get = |path: &str, token: &str| server.http.get(url(path)).bearer_auth(token);
    let post = |path: &str, token: &str| server.http.post(url(path)).bearer_auth(token);
    let check_update = check_update_path(&agent.agent_id);

    // Without a valid operator token: 401 everywhere but /healthz; an agent token is no
    // operator token.
    for path in [
        paths::AGENTS,
        paths::OPERATOR_ERRORS,
        paths::RELEASES,
        paths::TOKENS,
        paths::AUDIT,
    ] {
        assert_eq!(status_of(server.http.get(url(path))).await, 401, "{path}");
        assert_eq!(
            status_of(get(path, &agent.agent_token)).await,
            401,
            "{path}"
        );
        assert_eq!(status_of(get(path, "cmso_0000")).await, 401, "{path}");
    }
    assert_eq!(status_of(server.http.post(url(&check_update))).await, 401);
    assert_eq!(status_of(server.http.get(url(paths::HEALTHZ))).await, 200);

    // viewer reads, but neither acts nor manages tokens.
    for path in [paths::AGENTS, paths::OPERATOR_ERRORS, paths::RELEASES] {
        assert_eq!(status_of(get(path, &viewer)).await, 200, "{path}");
    }
    let denied = post(&check_update, &viewer).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("operator role"),
        "{body}"
    );
    assert_eq!(status_of(get(paths::TOKENS, &viewer)).await, 403);
    assert_eq!(status_of(get(paths::AUDIT, &viewer)).await, 403);

    // operator acts (the agent holds no WebSocket: 409, not 403), but manages no tokens.
    assert_eq!(status_of(post(&check_update, &operator)).await, 409);
    assert_eq!(
        status_of(post(&check_update_path("nobody"), &operator)).await,
        404
    );
    let new_token = json!({"name": "mallory", "role": "admin"});
    assert_eq!(
        status_of(post(paths::TOKENS, &operator).json(&new_token)).await,
        403
    );

    // admin creates a token over the API (shown once), lists tokens without secrets, revokes.
    let created = server
        .operator(Method::POST, paths::TOKENS)
        .json(&json!({"name": "ci-bot", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: CreatedOperatorToken = created.json().await.unwrap();
    assert_eq!(created.role, OperatorRole::Viewer);
    assert_eq!(status_of(get(paths::AGENTS, &created.token)).await, 200);
    let again = server
        .operator(Method::POST, paths::TOKENS)
        .json(&json!({"name": "ci-bot", "role": "viewer"}));
    assert_eq!(status_of(again).await, 409);
    let bad_name = server
        .operator(Method::POST, paths::TOKENS)
        .json(&json!({"name": "two words", "role": "viewer"}));
    assert_eq!(status_of(bad_name).await, 400);
    let listing = server
        .operator(Method::GET, paths::TOKENS)
        .send()
        .await
        .unwrap();
    let text = listing.text().await.unwrap();
    for secret in [&created.token, &viewer, &operator, &server.admin_token] {
        assert!(!text.contains(secret.as_str()), "a token is listed");
    }
    let tokens: Vec<OperatorToken> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"ann.viewer") && names.contains(&"ci-bot"),
        "{names:?}"
    );
    let ann = tokens.iter().find(|t| t.name == "ann.viewer").unwrap();
    assert!(ann.last_used_at.is_some(), "last use recorded");
    let revoke = server.operator(Method::DELETE, "/api/v1/tokens/ci-bot");
    assert_eq!(status_of(revoke).await, 204);
    assert_eq!(
        status_of(get(paths::AGENTS, &created.token)).await,
        401,
        "revoked"
    );
    let revoke_again = server.operator(Method::DELETE, "/api/v1/tokens/ci-bot");
    assert_eq!(status_of(revoke_again).await, 404);

    // The command line revokes while the server runs; it works at once.
    let output = common::command(&["token", "revoke", "ann.viewer"], dir, &store)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert_eq!(status_of(get(paths::AGENTS, &viewer)).await, 401);
    let output = common::command(&["token", "revoke", "ann.viewer"], dir, &store)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "unknown name is refused");
    let list = token_list(dir, &store).await;
    assert!(
        list.contains("oscar@ops") && list.contains("operator"),
        "{list}"
    );
    assert!(
        !list.contains("ann.viewer") && !list.contains(&operator),
        "{list}"
    );

    // The audit log: who did what, from where, with what outcome; newest first.
    let (audit, _) = server.all_pages::<AuditEntry>(paths::AUDIT).await;
    let has = |actor: &str, action: &str, outcome: &str| {
        audit
            .iter()
            .any(|e| e.actor == actor && e.action == action && e.outcome == outcome)
    };
    assert!(has("ann.viewer", "agent.check_update", "denied"));
    assert!(has("ann.viewer", "token.list", "denied"));
    assert!(has("oscar@ops", "agent.check_update", "refused"));
    assert!(has("oscar@ops", "token.create", "denied"));
    assert!(audit.iter().any(|e| e.action == "token.create"
        && e.target.as_deref() == Some("ci-bot")
        && e.outcome == "ok"
        && e.source == "127.0.0.1"));
    assert!(audit.iter().any(|e| e.action == "token.revoke"
        && e.target.as_deref() == Some("ann.viewer")
        && e.actor.starts_with("cli")
        && e.source == "local"));
    assert!(audit.windows(2).all(|w| w[0].at >= w[1].at), "newest first");
    assert!(!server.log().contains(&operator), "a token was logged");
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn roles_revocation_and_audit_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    roles_revocation_and_audit(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn roles_revocation_and_audit_on_postgres() {
    let Some(schema) = postgres_schema("roles_revocation_and_audit_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Postgres(schema.server_url.clone());
    roles_revocation_and_audit(dir.path(), store).await;
    schema.drop_schema().await;
}

async fn paging(dir: &Path, store: Store) {
    let options = Options {
        args: vec!["--registration-burst".into(), "1000".into()],
        ..Options::default()
    };
    let server = Server::start(dir, &store, &options).await;
    for n in 0..250 {
        server.register_ok(&format!("host-{n:03}")).await;
    }
    let first = server
        .operator(Method::GET, &format!("{}?limit=100", paths::AGENTS))
        .send()
        .await
        .unwrap();
    let next = common::next_link(&first).expect("a next page");
    assert!(
        next.starts_with("/api/v1/agents?limit=100&cursor="),
        "{next}"
    );
    let page: Vec<AgentSummary> = first.json().await.unwrap();
    assert_eq!(page.len(), 100);
    let (agents, pages) = server
        .all_pages::<AgentSummary>(&format!("{}?limit=100", paths::AGENTS))
        .await;
    assert_eq!((agents.len(), pages), (250, 3));
    let hostnames: Vec<&str> = agents.iter().map(|a| a.hostname.as_str()).collect();
    let mut sorted = hostnames.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(hostnames, sorted, "ordered by hostname, each once");
    let (_, default_pages) = server.all_pages::<AgentSummary>(paths::AGENTS).await;
    assert_eq!(default_pages, 3, "the default page is 100");
    let huge: Vec<AgentSummary> = server
        .operator_json(&format!("{}?limit=100000", paths::AGENTS))
        .await;
    assert_eq!(huge.len(), 250, "within the 1000 cap");
    let bad = server
        .operator(Method::GET, &format!("{}?cursor=zz", paths::AGENTS))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn listings_are_paged_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    paging(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn listings_are_paged_on_postgres() {
    let Some(schema) = postgres_schema("listings_are_paged_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    paging(dir.path(), Store::Postgres(schema.server_url.clone())).await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn the_operator_api_can_live_on_its_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        args: vec!["--operator-listen".into(), "127.0.0.1:0".into()],
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    assert_ne!(server.operator_base, server.base);
    let on_agents_side = server
        .http
        .get(server.url(paths::AGENTS))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        on_agents_side.status(),
        404,
        "no operator API where agents connect"
    );
    let agent = server.register_ok("host-a").await;
    let agents = server.agents().await;
    assert_eq!(agents[0].agent_id, agent.agent_id);
    let register_on_operator_side = server
        .http
        .post(server.operator_url(paths::REGISTER))
        .json(&json!({"hostname": "h", "platform": "linux-x86_64", "version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register_on_operator_side.status(), 404);
    for base in [&server.base, &server.operator_base] {
        let health = server.http.get(format!("{base}{}", paths::HEALTHZ)).send();
        assert_eq!(health.await.unwrap().status(), 200);
    }
    assert_eq!(server.stop().await, Some(0));
}
