//! What the backend believes about its clients, with the real binary on loopback: enrollment is
//! closed unless a token or `--open-enrollment` says otherwise, `X-Forwarded-For` and
//! `X-Forwarded-Proto` count only from a `--trusted-proxy`, the database URL can come from a
//! file, and registration's `platform` is one of the documented values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Options, Server, Store};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client whose connections come from the loopback address `source`.
fn client_from(source: &str) -> reqwest::Client {
    let source: IpAddr = source.parse().unwrap();
    reqwest::Client::builder()
        .local_address(source)
        .build()
        .unwrap()
}

async fn register_as(
    server: &Server,
    http: &reqwest::Client,
    forwarded_for: Option<&str>,
) -> StatusCode {
    let mut request = http
        .post(server.url(cms_protocol::paths::REGISTER))
        .json(&json!({"hostname": "h", "platform": "linux-x86_64", "version": "1.0.0"}));
    if let Some(addr) = forwarded_for {
        request = request.header("X-Forwarded-For", format!("6.6.6.6, {addr}"));
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn loopback_without_a_token_or_open_enrollment_refuses_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let closed = Options {
        closed_enrollment: true,
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &closed).await;
    let refused = server.register("host", None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--open-enrollment"),
        "{body}"
    );
    server.stop().await;

    let open = Server::start(dir.path(), &Store::Sqlite, &Options::default()).await;
    open.register_ok("host").await;
    let html = open
        .http
        .post(open.url(cms_protocol::paths::REGISTER))
        .json(&json!({"hostname": "h", "platform": "<b>x</b>", "version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        html.status(),
        StatusCode::BAD_REQUEST,
        "platform not documented"
    );
    open.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        args: [
            "--trusted-proxy",
            "127.0.0.2",
            "--registration-burst",
            "2",
            "--registrations-per-minute",
            "1",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    let proxy = client_from("127.0.0.2");
    for _ in 0..2 {
        assert_eq!(register_as(&server, &proxy, Some("203.0.113.1")).await, 200);
    }
    assert_eq!(
        register_as(&server, &proxy, Some("203.0.113.1")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "one client behind the proxy spent its burst"
    );
    assert_eq!(
        register_as(&server, &proxy, Some("203.0.113.2")).await,
        200,
        "another client behind the proxy counts apart"
    );
    let direct = client_from("127.0.0.3");
    let forged = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
    let mut statuses = Vec::new();
    for addr in forged {
        statuses.push(register_as(&server, &direct, Some(addr)).await);
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "X-Forwarded-For from a peer that is no trusted proxy is ignored"
    );

    let viewer = server.token("viewer", "viewer").await;
    let mut secure = None;
    for (http, expect_secure) in [(&direct, false), (&proxy, true)] {
        let response = http
            .post(server.url("/api/v1/session"))
            .header("X-Forwarded-Proto", "https")
            .json(&json!({ "token": viewer }))
            .send()
            .await
            .unwrap();
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(cookie.contains("; Secure"), expect_secure, "{cookie}");
        assert_eq!(cookie.starts_with("__Host-cms_session="), expect_secure);
        secure = Some(cookie);
    }
    let cookie = secure.unwrap().split(';').next().unwrap().to_owned();
    let who = proxy
        .get(server.url("/api/v1/session"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(who.status(), StatusCode::OK, "the __Host- cookie signs in");
    let denied = proxy
        .post(server.url("/api/v1/rollouts/linux-x86_64/2.0.0"))
        .bearer_auth(&viewer)
        .header("X-Forwarded-For", "203.0.113.7")
        .json(&json!({ "action": "pause" }))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let audit: serde_json::Value = server.operator_json("/api/v1/audit?limit=100").await;
    assert!(
        audit.to_string().contains("203.0.113.7"),
        "the audit log names the client behind the proxy: {audit}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_database_url_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let db_file = dir.path().join("elsewhere.db");
    let url_file = dir.path().join("database-url");
    std::fs::write(
        &url_file,
        format!("sqlite://{}?mode=rwc\n", db_file.display()),
    )
    .unwrap();
    let output = common::command(
        &["token", "create", "--role", "viewer", "--name", "v"],
        &dir.path().join("data"),
        &Store::Sqlite,
    )
    .arg("--database-url-file")
    .arg(&url_file)
    .output()
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(db_file.exists(), "the URL in the file was used");
    let missing = common::command(&["token", "list"], dir.path(), &Store::Sqlite)
        .arg("--database-url-file")
        .arg(dir.path().join("missing"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--database-url-file"), "{stderr}");
}

#[tokio::test]
async fn idle_and_slow_connections_from_sixteen_hosts_leave_the_fleet_served() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        open_files: Some(256),
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    let agent = server.register_ok("steady").await;
    // Each of 16 hosts opens up to 40 connections, half of them in a request head that never
    // ends: together far more than the budget (about 160 at 256 open files).
    let mut flood = Vec::new();
    for host in 10..26 {
        for n in 0..40 {
            let Ok(mut stream) = server.connect_from(&format!("127.0.0.{host}")).await else {
                continue;
            };
            if n % 2 == 0 {
                let _ = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .await;
            }
            flood.push(stream);
        }
    }
    let fresh = reqwest::Client::new();
    let health = fresh
        .get(server.url(cms_protocol::paths::HEALTHZ))
        .send()
        .await;
    assert_eq!(health.unwrap().status(), 200);
    let beat = server
        .post_status(&agent.agent_token, cms_protocol::AgentState::Idle, "1.0.0")
        .await;
    assert_eq!(beat.status(), 204);
    assert_eq!(register_as(&server, &fresh, None).await, 200);
    drop(flood);
    server.stop().await;
}

#[tokio::test]
async fn a_live_feed_ends_with_its_token_and_feeds_are_capped_per_token() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        args: vec!["--live-feed-recheck-secs".into(), "1".into()],
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    let viewer = server.token("viewer", "watcher").await;
    let open = || {
        server
            .http
            .get(server.url("/api/v1/events"))
            .bearer_auth(&viewer)
            .send()
    };
    let mut feeds = Vec::new();
    for _ in 0..4 {
        let feed = open().await.unwrap();
        assert_eq!(feed.status(), StatusCode::OK);
        feeds.push(feed);
    }
    assert_eq!(
        open().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let revoked = common::command(&["token", "revoke", "watcher"], dir.path(), &Store::Sqlite)
        .output()
        .await
        .unwrap();
    assert!(revoked.status.success());
    let mut stream = feeds.pop().unwrap().bytes_stream();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the feed outlived its revoked token");
    server.stop().await;
}

/// Opens a live feed with `token` on a raw connection from `source`; returns the connection
/// (kept open) and the status the server answered (0: refused or closed before answering
/// within 10 s).
async fn open_feed(server: &Server, source: String, token: String) -> (Option<TcpStream>, u16) {
    open_request(server, source, "/api/v1/events", token).await
}

/// Sends `GET path` with `token` on a raw keep-alive connection from `source`; returns the
/// connection (kept open) and the status, as [`open_feed`].
async fn open_request(
    server: &Server,
    source: String,
    path: &str,
    token: String,
) -> (Option<TcpStream>, u16) {
    let Ok(mut stream) = server.connect_from(&source).await else {
        return (None, 0);
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (None, 0);
    }
    let mut head = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head)).await;
    let status = match read {
        Ok(Ok(_)) => std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|code| code.parse().ok())
            .unwrap_or(0),
        Ok(Err(_)) => 0,
        Err(_) => 1,
    };
    (Some(stream), status)
}

#[tokio::test]
async fn nine_hundred_live_feeds_from_nine_hosts_leave_the_fleet_served() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        open_files: Some(1024),
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    let agent = server.register_ok("steady").await;
    let viewer = server.token("viewer", "flooder").await;
    // 900 feeds of one viewer token from 9 hosts, all at once: more than the whole connection
    // budget (about 920 connections at 1,024 open files).
    let opening: Vec<_> = (0..900)
        .map(|n| open_feed(&server, format!("127.0.0.{}", 10 + n % 9), viewer.clone()))
        .collect();
    let mut feeds = futures_util::future::join_all(opening).await;
    let mut tally = std::collections::BTreeMap::new();
    for (_, status) in &feeds {
        *tally.entry(*status).or_insert(0) += 1;
    }
    // Every one answered at once: 200 (a feed), 429/503 (over the caps) or closed by the
    // connection budget before its request was read (0); none left waiting (1).
    assert_eq!(tally.get(&1), None, "feeds left unanswered: {tally:?}");
    let count = |status: u16| tally.get(&status).copied().unwrap_or(0);
    // Refused by a cap, or closed by the budget (operator connections are not protected).
    assert!(count(0) + count(429) + count(503) >= 600, "{tally:?}");
    // A 200 on a connection the budget was closing ends at once; at most 4 stay open.
    let mut live = 0;
    for (stream, status) in &mut feeds {
        if *status == 200 && !common::closed_within(stream.as_mut().unwrap(), 1).await {
            live += 1;
        }
    }
    assert!(
        (1..=4).contains(&live),
        "{live} live feeds for one token: {tally:?}"
    );
    // Every refused feed's connection is closed, not held (its token authenticated it, so the
    // budget would never close it to make room).
    let closing = feeds
        .iter_mut()
        .filter(|(_, status)| matches!(status, 429 | 503))
        .map(|(stream, _)| common::closed_within(stream.as_mut().unwrap(), 5));
    let closed = futures_util::future::join_all(closing).await;
    let held = closed.iter().filter(|closed| !**closed).count();
    assert_eq!(
        held, 0,
        "refused feeds whose connections stayed open: {tally:?}"
    );

    // With the flood's connections still held.
    the_fleet_is_served(&server, &agent).await;
    drop(feeds);
    server.stop().await;
}

/// `/healthz` (five times), a heartbeat of `agent` and a new registration are all served.
async fn the_fleet_is_served(server: &Server, agent: &cms_protocol::RegisterResponse) {
    let fresh = reqwest::Client::new();
    for _ in 0..5 {
        let health = fresh
            .get(server.url(cms_protocol::paths::HEALTHZ))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
    let beat = server
        .post_status(&agent.agent_token, cms_protocol::AgentState::Idle, "1.0.0")
        .await;
    assert_eq!(beat.status(), 204);
    assert_eq!(register_as(server, &fresh, None).await, 200);
}

/// Answered requests leave keep-alive connections behind: a viewer token's 900 of them, from 9
/// hosts, must not hold the connection budget (only agents' connections are kept when it is
/// short).
#[tokio::test]
async fn a_viewers_keep_alive_connections_cannot_hold_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        open_files: Some(1024),
        ..Options::default()
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    let agent = server.register_ok("steady").await;
    let viewer = server.token("viewer", "holder").await;
    let opening: Vec<_> = (0..900)
        .map(|n| {
            let source = format!("127.0.0.{}", 10 + n % 9);
            open_request(&server, source, "/api/v1/agents", viewer.clone())
        })
        .collect();
    let held = futures_util::future::join_all(opening).await;
    let answered = held.iter().filter(|(_, status)| *status == 200).count();
    assert!(answered > 0, "no request was answered");
    // With the viewer's connections still held.
    the_fleet_is_served(&server, &agent).await;
    drop(held);
    server.stop().await;
}

/// Every route of `api/mod.rs` (the single-listener router), with concrete parameters.
const ROUTES: [(&str, &str); 41] = [
    ("POST", "/api/v1/agent/register"),
    ("POST", "/api/v1/agent/status"),
    (
        "GET",
        "/api/v1/agent/update?version=1.0.0&platform=linux-x86_64",
    ),
    ("POST", "/api/v1/agent/errors"),
    ("GET", "/api/v1/agent/ws"),
    ("GET", "/api/v1/agent/packages/1.0.0/linux-x86_64"),
    ("GET", "/api/v1/agent/deltas/0.9.0/1.0.0/linux-x86_64"),
    ("GET", "/api/v1/tuf/timestamp.json"),
    ("GET", "/healthz"),
    ("GET", "/api/v1/agents"),
    ("POST", "/api/v1/agents/x/check-update"),
    ("GET", "/api/v1/errors"),
    ("GET", "/api/v1/releases"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/nobody"),
    ("GET", "/api/v1/audit"),
    ("GET", "/"),
    ("GET", "/assets/app.js"),
    ("GET", "/api/v1/session"),
    ("POST", "/api/v1/session"),
    ("DELETE", "/api/v1/session"),
    ("GET", "/api/v1/fleet"),
    ("GET", "/api/v1/fleet/agents"),
    ("GET", "/api/v1/fleet/agents/x"),
    ("GET", "/api/v1/error-groups"),
    ("GET", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/linux-x86_64/1.0.0/reasons"),
    ("POST", "/api/v1/rollouts/linux-x86_64/1.0.0"),
    ("GET", "/api/v1/events"),
    ("POST", "/api/v1/agent/credential"),
    ("DELETE", "/api/v1/agents/x"),
    ("POST", "/api/v1/agents/x/rotate-credential"),
    ("GET", "/api/v1/enrollment-tokens"),
    ("POST", "/api/v1/enrollment-tokens"),
    ("DELETE", "/api/v1/enrollment-tokens/nobody"),
    ("PUT", "/api/v1/agents/x/group"),
    ("GET", "/api/v1/groups"),
    ("PUT", "/api/v1/rollouts/linux-x86_64/1.0.0/groups/canary"),
    ("PUT", "/api/v1/groups/canary/window"),
    ("DELETE", "/api/v1/groups/canary/window"),
];

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let source = include_str!("../src/api/mod.rs");
    // 37 `.route(` calls: /healthz is routed twice, the session, enrollment-token and window
    // routes have more than one method.
    assert_eq!(
        source.matches(".route(").count(),
        37,
        "a route was added or removed: update ROUTES"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &Store::Sqlite, &Options::default()).await;
    for (method, path) in ROUTES.iter().copied().chain([("GET", "/nope")]) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = server
            .operator(method.clone(), path)
            .header("X-CMS-CSRF", "1")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let headers = response.headers();
        let what = format!("{method} {path} ({})", response.status());
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        if path.starts_with("/api/") {
            assert_eq!(headers["cache-control"], "no-store", "{what}");
        }
        let html = headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"));
        if html {
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{what}");
        }
        assert!(
            headers.get("strict-transport-security").is_none(),
            "plain HTTP: {what}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_announced_body_over_the_limit_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &Store::Sqlite, &Options::default()).await;
    let mut stream = server.connect_from("127.0.0.1").await.unwrap();
    let head = "POST /api/v1/agent/register HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 12];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_exact(&mut answer),
    )
    .await;
    assert!(
        read.is_ok(),
        "no answer before the body (a 408 comes only after 30 s)"
    );
    assert_eq!(String::from_utf8_lossy(&answer), "HTTP/1.1 413");
    server.stop().await;
}
