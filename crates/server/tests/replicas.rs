//! One connection per agent, and several servers as one backend, with real processes: the
//! `cms-server` binary (SQLite, or PostgreSQL when `CMS_TEST_POSTGRES_URL` is set) and the
//! real `cms_agent`.
//!
//! Heartbeats travel on the agent's WebSocket while it is up, and agents that still post them
//! over HTTP keep working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cms_protocol::{
    AgentMessage, AgentState, HeartbeatAck, Metrics, ServerEvent, StatusReport, paths,
};
use common::agent::AgentProcess;
use common::{Options, Server, Store, WsStream, inputs, next_text, publish, wait_until};
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
    }
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
    let response = server
        .http
        .post(server.url(paths::STATUS))
        .bearer_auth(&old.agent_token)
        .json(&idle_report("1.0.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
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
    let identity = server.register_ok("raw-client").await;
    let mut ws = server.connect_ws(&identity.agent_token).await.unwrap();
    assert_eq!(
        heartbeat_on(&mut ws, "1.0.0").await,
        HeartbeatAck::default()
    );

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
