//! One connection per agent, and several servers as one backend, with real processes: the
//! `cms-server` binary (SQLite, or PostgreSQL when `CMS_TEST_POSTGRES_URL` is set) and the
//! real `cms_agent`.
//!
//! Heartbeats travel on the agent's WebSocket while it is up, and agents that still post them
//! over HTTP keep working. Two replicas on one PostgreSQL database (and one release store) are
//! one backend: a release published once is pushed to the agents of both, a check-update sent
//! to one reaches an agent on the other, both say the same about who is online, and an agent
//! whose replica is killed goes on with the other and loses no error report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;

use cms_protocol::{
    AgentMessage, AgentState, HeartbeatAck, Metrics, ServerEvent, StatusReport, paths,
};
use common::agent::AgentProcess;
use common::{
    Options, Server, Store, WsStream, inputs, next_text, postgres_schema, publish, set_rollout,
    wait_until,
};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// Heartbeat lines the server logged for `agent_id` that came `via` HTTP or the WebSocket.
fn heartbeats(log: &str, agent_id: &str, via: &str) -> usize {
    let id = format!("agent_id=\"{agent_id}\"");
    let via = format!("via=\"{via}\"");
    log.lines()
        .filter(|line| line.contains(" heartbeat ") || line.ends_with(" heartbeat"))
        .filter(|line| line.contains(&id) && line.contains(&via))
        .count()
}

fn idle_report(version: &str) -> StatusReport {
    StatusReport {
        state: AgentState::Idle,
        version: version.into(),
        metrics: Metrics::default(),
        network: None,
        group: None,
        utc_offset_minutes: None,
    }
}

/// Posts an `IDLE` heartbeat over HTTP, as agents of the old protocol do; returns the status.
async fn http_heartbeat(server: &Server, token: &str) -> u16 {
    let response = server
        .http
        .post(server.url(paths::STATUS))
        .bearer_auth(token)
        .json(&idle_report("1.0.0"))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// A raw client registered on `server` whose WebSocket heartbeat (as 1.0.0) was answered with
/// no offer: from then on the socket is in the hub and hears pushes.
async fn raw_agent_on_socket(server: &Server) -> WsStream {
    let identity = server.register_ok("raw-client").await;
    let mut ws = server.connect_ws(&identity.agent_token).await.unwrap();
    assert_eq!(
        heartbeat_on(&mut ws, "1.0.0").await,
        HeartbeatAck::default()
    );
    ws
}

/// Sends a heartbeat on `ws` and returns the server's answer (skipping pushes in between).
async fn heartbeat_on(ws: &mut WsStream, version: &str) -> HeartbeatAck {
    let message = AgentMessage::Heartbeat(idle_report(version));
    let text = serde_json::to_string(&message).unwrap();
    ws.send(Message::Text(text.into())).await.unwrap();
    loop {
        let text = next_text(ws, 20).await.expect("an answer to the heartbeat");
        if let ServerEvent::HeartbeatAck(ack) = serde_json::from_str(&text).unwrap() {
            return ack;
        }
    }
}

#[tokio::test]
async fn heartbeats_travel_on_the_websocket_and_http_heartbeats_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("server"),
        &Store::Sqlite,
        &Options::default(),
    )
    .await;
    let agent = AgentProcess::start(
        &dir.path().join("agent"),
        &["--server", &server.base, "--status-interval", "1"],
    );
    let agent_id = wait_until("the agent to register", 60, || async { agent.agent_id() }).await;
    wait_until("three heartbeats on the WebSocket", 60, || async {
        (heartbeats(&server.log(), &agent_id, "websocket") >= 3).then_some(())
    })
    .await;
    assert_eq!(
        heartbeats(&server.log(), &agent_id, "http"),
        0,
        "no HTTP heartbeat while the WebSocket is up; server log:\n{}",
        server.log()
    );
    let listed = server.agents().await;
    let listed = listed.iter().find(|a| a.agent_id == agent_id).unwrap();
    assert_eq!((listed.state.as_str(), listed.online), ("IDLE", true));

    // An agent of the old protocol posts its heartbeat over HTTP.
    let old = server.register_ok("old-agent").await;
    assert_eq!(http_heartbeat(&server, &old.agent_token).await, 204);
    assert_eq!(heartbeats(&server.log(), &old.agent_id, "http"), 1);
    let listed = server.agents().await;
    let listed = listed.iter().find(|a| a.agent_id == old.agent_id).unwrap();
    assert_eq!((listed.state.as_str(), listed.online), ("IDLE", true));

    assert_eq!(agent.stop().await, Some(0));
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn a_heartbeat_on_the_websocket_is_answered_with_the_update_offer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data, &Store::Sqlite, &Options::default()).await;
    let mut ws = raw_agent_on_socket(&server).await;

    let files = inputs(dir.path());
    let (code, _, stderr) = publish(&data, &Store::Sqlite, "1.1.0", &files, &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    // The release watcher sees it within a second; each heartbeat answer reads the database.
    let offered = loop {
        if let Some(update) = heartbeat_on(&mut ws, "1.0.0").await.update {
            break update;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(offered.version, "1.1.0");
    assert_eq!(offered.target, "cms_agent-1.1.0-linux-x86_64.zip");
    // The agent that runs it is offered nothing.
    assert_eq!(
        heartbeat_on(&mut ws, "1.1.0").await,
        HeartbeatAck::default()
    );

    // A message this server does not know is ignored; the socket stays usable.
    let unknown = r#"{"event": "agent:from_the_future", "data": {}}"#;
    ws.send(Message::Text(unknown.into())).await.unwrap();
    assert_eq!(
        heartbeat_on(&mut ws, "1.1.0").await,
        HeartbeatAck::default()
    );
    let listed = server.agents().await;
    assert_eq!(listed[0].version, "1.1.0");
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn a_widened_rollout_is_pushed_and_offered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data, &Store::Sqlite, &Options::default()).await;
    let mut ws = raw_agent_on_socket(&server).await;
    let files = inputs(dir.path());
    let (code, _, stderr) =
        publish(&data, &Store::Sqlite, "1.1.0", &files, &["--rollout", "0"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        heartbeat_on(&mut ws, "1.0.0").await,
        HeartbeatAck::default()
    );

    let (code, stdout, stderr) = set_rollout(&data, &Store::Sqlite, "1.1.0", 100).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "rollout of 1.1.0 for linux-x86_64 set to 100%\n");
    let text = next_text(&mut ws, 20)
        .await
        .expect("a push for the widened rollout");
    assert_eq!(
        serde_json::from_str::<ServerEvent>(&text).unwrap(),
        ServerEvent::UpdateRequired(cms_protocol::UpdateRequired {
            version: Some("1.1.0".into()),
            spread_secs: None,
        })
    );
    let offered = heartbeat_on(&mut ws, "1.0.0")
        .await
        .update
        .expect("an offer");
    assert_eq!(offered.version, "1.1.0");

    let (code, _, stderr) = set_rollout(&data, &Store::Sqlite, "7.7.7", 50).await;
    assert_eq!(code, Some(2), "an unknown release is refused: {stderr}");
    assert!(stderr.contains("no release 7.7.7"), "{stderr}");
    assert_eq!(server.stop().await, Some(0));
}

/// Whether `server`'s log shows `agent_id`'s WebSocket connecting to it.
fn holds_socket_of(server: &Server, agent_id: &str) -> bool {
    server
        .log()
        .lines()
        .any(|line| line.contains("agent WebSocket connected") && line.contains(agent_id))
}

/// An agent data dir whose config lists `servers` and keeps more free disk than any machine
/// has, so an offered update is started (the push is seen) and then fails, reported, while the
/// agent stays on its version; its WebSocket retries at most 5 s apart.
fn agent_dir(root: &Path, name: &str, servers: &[&str]) -> std::path::PathBuf {
    let data = root.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let config = serde_json::json!({
        "config_version": 2,
        "server_url": servers[0],
        "server_urls": servers,
        "update_reserve_free_bytes": u64::MAX / 4,
        "intervals": {"ws_reconnect_max_secs": 5},
    });
    std::fs::write(data.join("config.json"), config.to_string()).unwrap();
    data
}

/// Starts an agent on `data` and waits until `server` holds its socket; returns its id.
async fn connected_agent(data: &Path, server: &Server, args: &[&str]) -> (AgentProcess, String) {
    let agent = AgentProcess::start(data, args);
    let agent_id = wait_until("the agent to register", 60, || async { agent.agent_id() }).await;
    wait_until("the agent's WebSocket", 60, || async {
        holds_socket_of(server, &agent_id).then_some(())
    })
    .await;
    (agent, agent_id)
}

/// Lines of the agent's log that show `what` triggered by `trigger`.
fn triggered(agent: &AgentProcess, trigger: &str, what: &str) -> bool {
    let trigger = format!("trigger=\"{trigger}\"");
    agent
        .log()
        .lines()
        .any(|line| line.contains(&trigger) && line.contains(what))
}

/// Whether `server` lists `agent_id` as online.
async fn online_on(server: &Server, agent_id: &str) -> bool {
    server
        .agents()
        .await
        .iter()
        .any(|a| a.agent_id == agent_id && a.online)
}

#[tokio::test]
async fn two_replicas_on_postgres_are_one_backend() {
    let Some(schema) = postgres_schema("two_replicas_on_postgres_are_one_backend").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store"); // the release store both replicas share
    let store = Store::Postgres(schema.server_url.clone());
    // Started together on a fresh schema: the migrations run once, under sqlx's advisory lock.
    let options = Options::default();
    let (a, b) = tokio::join!(
        Server::start(&store_dir, &store, &options),
        Server::start(&store_dir, &store, &options)
    );
    let data_a = agent_dir(dir.path(), "agent-a", &[&a.base]);
    let data_b = agent_dir(dir.path(), "agent-b", &[&b.base]);
    let (agent_a, id_a) = connected_agent(&data_a, &a, &[]).await;
    let (agent_b, id_b) = connected_agent(&data_b, &b, &[]).await;

    // Online is the same whichever replica answers.
    for server in [&a, &b] {
        for id in [&id_a, &id_b] {
            assert!(
                online_on(server, id).await,
                "{id} offline on {}",
                server.base
            );
        }
    }

    // A dashboard's live feed on A shows an agent that registers through B.
    let mut feed = a
        .operator(reqwest::Method::GET, "/api/v1/events")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let on_b = b.register_ok("registered-on-b").await;
    let needle = format!("\"agent_id\":\"{}\"", on_b.agent_id);
    let mut seen = String::new();
    while !(seen.contains("event: agent_registered") && seen.contains(&needle)) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), feed.chunk())
            .await
            .expect("the live event from the other replica within 30 s")
            .unwrap()
            .expect("the live feed stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(feed);

    // An agent of the old protocol registered through A posts its heartbeat to B.
    let old = a.register_ok("old-agent").await;
    assert_eq!(http_heartbeat(&b, &old.agent_token).await, 204);
    assert!(online_on(&a, &old.agent_id).await);

    // A check-update sent to replica A reaches the agent on replica B.
    assert_eq!(a.check_update(&id_b).await.status(), 202);
    wait_until("the check-update through the other replica", 30, || async {
        triggered(&agent_b, "push", "no update available").then_some(())
    })
    .await;
    assert!(
        b.log()
            .contains("update check requested by another replica")
    );

    // A release published once reaches the agents of both replicas, pushed (the watcher of a
    // replica on PostgreSQL never polls: only a notification makes it read the releases).
    let files = inputs(dir.path());
    let (code, _, stderr) = publish(&store_dir, &store, "99.0.0", &files, &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    for agent in [&agent_a, &agent_b] {
        wait_until("the pushed release", 30, || async {
            triggered(agent, "push", "to=99.0.0").then_some(())
        })
        .await;
    }
    // So does a rollout that widens: published to nobody, then to everybody.
    let (code, _, stderr) =
        publish(&store_dir, &store, "100.0.0", &files, &["--rollout", "0"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = set_rollout(&store_dir, &store, "100.0.0", 100).await;
    assert_eq!(code, Some(0), "{stderr}");
    for agent in [&agent_a, &agent_b] {
        wait_until("the pushed rollout", 30, || async {
            triggered(agent, "push", "to=100.0.0").then_some(())
        })
        .await;
    }
    // And a rollout widened through one replica's operator API (the dashboard's action).
    let (code, _, stderr) =
        publish(&store_dir, &store, "101.0.0", &files, &["--rollout", "0"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let widened = a
        .operator(
            reqwest::Method::POST,
            "/api/v1/rollouts/linux-x86_64/101.0.0",
        )
        .json(&serde_json::json!({"action": "set", "percent": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(widened.status(), 200);
    for agent in [&agent_a, &agent_b] {
        wait_until("the rollout widened through the API", 30, || async {
            triggered(agent, "push", "to=101.0.0").then_some(())
        })
        .await;
    }
    for id in [&id_a, &id_b] {
        wait_until("the short-disk failure to be reported", 30, || async {
            let errors = a.errors().await;
            errors
                .iter()
                .any(|e| e.agent_id == *id && e.kind == "update_failed")
                .then_some(())
        })
        .await;
    }
    for server in [&a, &b] {
        let log = server.log();
        assert!(log.contains("told of changes, never polling"), "{log}");
        assert!(
            log.contains("releases changed; the watcher re-reads them"),
            "{log}"
        );
    }

    assert_eq!(agent_a.stop().await, Some(0));
    assert_eq!(agent_b.stop().await, Some(0));
    // A replica that stops leaves the cluster: its agents are no longer counted as connected.
    assert_eq!(a.stop().await, Some(0));
    assert_eq!(b.check_update(&id_a).await.status(), 409);
    assert_eq!(b.stop().await, Some(0));
    schema.drop_schema().await;
}

#[tokio::test]
async fn an_agent_whose_replica_is_killed_goes_on_with_the_other_and_loses_no_report() {
    let Some(schema) = postgres_schema("agent_failover_between_replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::Postgres(schema.server_url.clone());
    let a = Server::start(&store_dir, &store, &Options::default()).await;
    let b = Server::start(&store_dir, &store, &Options::default()).await;
    let addr_a = a.listen_addr();
    let data = agent_dir(dir.path(), "agent", &[&a.base, &b.base]);
    let (agent, agent_id) = connected_agent(&data, &a, &["--status-interval", "1"]).await;

    // Replica A dies: the agent goes on with B, the next server of its list.
    a.kill().await;
    wait_until("the agent on replica B", 60, || async {
        holds_socket_of(&b, &agent_id).then_some(())
    })
    .await;
    wait_until("B to route a check-update to it", 30, || async {
        (b.check_update(&agent_id).await.status() == 202).then_some(())
    })
    .await;
    wait_until("the check-update to arrive", 30, || async {
        triggered(&agent, "push", "no update available").then_some(())
    })
    .await;
    assert!(online_on(&b, &agent_id).await);

    // B dies too: the agent buffers its reports (both servers down) ...
    b.kill().await;
    let mut held: HashSet<String> = HashSet::new();
    wait_until("reports buffered while no replica answers", 60, || {
        held.extend(agent.buffered_report_ids());
        let enough = held.len() >= 3;
        async move { enough.then_some(()) }
    })
    .await;
    // ... and once a replica is back (on A's address), delivers every one of them, once.
    let options = Options {
        listen: Some(addr_a),
        ..Options::default()
    };
    let back = Server::start(&store_dir, &store, &options).await;
    wait_until("the buffer to drain", 60, || {
        held.extend(agent.buffered_report_ids());
        let drained = agent.buffered_report_ids().is_empty() && held.len() >= 3;
        async move { drained.then_some(()) }
    })
    .await;
    let stored: Vec<String> = back
        .errors()
        .await
        .into_iter()
        .filter(|e| e.agent_id == agent_id)
        .map(|e| e.report_id)
        .collect();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a report was stored twice");
    for id in &held {
        assert!(unique.contains(id), "buffered report {id} lost");
    }
    wait_until(
        "the agent's WebSocket on the revived replica",
        30,
        || async { holds_socket_of(&back, &agent_id).then_some(()) },
    )
    .await;
    assert_eq!(agent.stop().await, Some(0));
    assert_eq!(back.stop().await, Some(0));
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_replica_whose_listener_was_cut_off_reads_the_releases_again() {
    let Some(schema) = postgres_schema("listener_cut_off").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::Postgres(schema.server_url.clone());
    let server = Server::start(&store_dir, &store, &Options::default()).await;
    let mut ws = raw_agent_on_socket(&server).await;

    // The database ends the listening session, as a failover of PostgreSQL or a proxy would.
    wait_until("the listener's session to be ended", 30, || async {
        (terminate_listeners(&schema).await > 0).then_some(())
    })
    .await;
    wait_until("the listener to come back and re-read", 30, || async {
        server
            .log()
            .contains("event listener lost its connection and reconnected; re-reading")
            .then_some(())
    })
    .await;
    let files = inputs(dir.path());
    let (code, _, stderr) = publish(&store_dir, &store, "1.1.0", &files, &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let text = next_text(&mut ws, 20)
        .await
        .expect("the push after the reconnect");
    assert!(text.contains("agent:update_required"), "{text}");
    assert_eq!(server.stop().await, Some(0));
    schema.drop_schema().await;
}

/// Ends the database sessions that listen on the schema's event channel; returns how many.
async fn terminate_listeners(schema: &common::PgSchema) -> usize {
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(&schema.admin_url)
        .await
        .unwrap();
    let pattern = format!("LISTEN \"cms_events:{}\"%", schema.schema);
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE $1",
    )
    .bind(pattern)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    ended.len()
}
