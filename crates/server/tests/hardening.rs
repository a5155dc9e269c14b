//! The attacks of an untrusted network, each against the real `cms-server`: slowloris and
//! idle floods under a low open-file limit, a full server, floods of registrations and of
//! error reports, retention, big operator listings next to heartbeats, log injection, an open
//! public address, and file modes. On loopback; other hosts are played from 127.0.0.2 and up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use cms_protocol::{
    AgentState, ErrorBatch, ErrorBatchResponse, ErrorReport, Metrics, StatusReport, StoredError,
    paths,
};
use common::{Options, Server, Store, closed_within, postgres_schema};
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn options(args: &[&str]) -> Options {
    Options {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    }
}

fn report(n: usize, message_bytes: usize) -> ErrorReport {
    ErrorReport {
        report_id: uuid::Uuid::new_v4().to_string(),
        kind: "flood".into(),
        message: format!("{n}:{}", "m".repeat(message_bytes)),
        agent_version: "1.0.0".into(),
        created_at: "2026-12-01T10:00:00Z".into(),
        details: serde_json::Value::Null,
    }
}

async fn post_errors(server: &Server, token: &str, count: usize) -> reqwest::Response {
    let batch = ErrorBatch {
        reports: (0..count).map(|n| report(n, 10)).collect(),
    };
    server.post_errors(token, &batch).await
}

async fn heartbeat(server: &Server, token: &str) -> reqwest::Response {
    server.post_status(token, AgentState::Idle, "1.0.0").await
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn slowloris_and_idle_floods_under_a_low_file_limit_leave_the_fleet_served() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        open_files: Some(256),
        ..options(&["--header-read-timeout-secs", "2"])
    };
    let server = Server::start(dir.path(), &Store::Sqlite, &options).await;
    // 1,100 connections from one host, half of them sending a request head that never ends.
    let mut flood = Vec::new();
    for n in 0..1100 {
        let Ok(mut stream) = server.connect_from("127.0.0.2").await else {
            continue;
        };
        if n % 2 == 0 {
            let _ = stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        flood.push(stream);
    }
    // Another host still gets through: health, registration, heartbeat, WebSocket.
    let health = server.http.get(server.url(paths::HEALTHZ)).send().await;
    assert_eq!(health.unwrap().status(), 200);
    let agent = server.register_ok("survivor").await;
    assert_eq!(heartbeat(&server, &agent.agent_token).await.status(), 204);
    let ws = server.connect_ws(&agent.agent_token).await;
    assert!(ws.is_ok(), "WebSocket refused during the flood");
    // A head trickled one header a time is cut by the header-read timeout, not kept alive.
    let mut trickle = server.connect_from("127.0.0.3").await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(30) {
        if trickle.write_all(b"X-Slow: 1\r\n").await.is_err()
            || closed_within(&mut trickle, 0).await
        {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(cut, "a trickled request head was never cut off");
    // Every flood connection ends: refused at once, or cut by the timeout.
    for stream in &mut flood {
        assert!(
            closed_within(stream, 30).await,
            "a flood connection stayed open"
        );
    }
    let log = server.log();
    assert!(
        !log.contains("Too many open files"),
        "the server ran out of descriptors"
    );
    assert!(
        log.contains("connections refused"),
        "refusals are summarised"
    );
    assert!(
        log.contains("connection budget"),
        "the budget is logged at start"
    );
    drop(ws);
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn a_full_server_refuses_at_once_and_recovers_when_idle_connections_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--max-connections",
        "20",
        "--max-connections-per-source",
        "20",
        "--header-read-timeout-secs",
        "2",
    ];
    let server = Server::start(dir.path(), &Store::Sqlite, &options(&args)).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(server.connect_from("127.0.0.2").await.unwrap());
    }
    // The budget is spent: a new connection is closed at once, it does not hang.
    let mut refused = server.connect_from("127.0.0.3").await.unwrap();
    assert!(closed_within(&mut refused, 5).await);
    for stream in &mut idle {
        assert!(
            closed_within(stream, 30).await,
            "an idle connection stayed open"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = server.http.get(server.url(paths::HEALTHZ)).send().await;
        if health.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the server never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn a_body_trickled_slower_than_the_idle_timeout_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--idle-timeout-secs",
        "2",
        "--header-read-timeout-secs",
        "30",
    ];
    let server = Server::start(dir.path(), &Store::Sqlite, &options(&args)).await;
    let mut stream = server.connect_from("127.0.0.2").await.unwrap();
    let head = "POST /api/v1/agent/register HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"host";
    stream.write_all(head.as_bytes()).await.unwrap();
    assert!(
        closed_within(&mut stream, 30).await,
        "a stalled body kept its connection"
    );
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn a_registration_flood_is_throttled_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--registration-burst",
        "5",
        "--registrations-per-minute",
        "1",
    ];
    let server = Server::start(dir.path(), &Store::Sqlite, &options(&args)).await;
    for n in 0..5 {
        server.register_ok(&format!("fake-{n}")).await;
    }
    let mut throttled = 0;
    for n in 5..50 {
        let response = server.register(&format!("fake-{n}"), None).await;
        assert_eq!(response.status(), 429);
        assert!(retry_after(&response) >= 1);
        throttled += 1;
    }
    assert_eq!(throttled, 45);
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let request = json!({"hostname": "real", "platform": "linux-x86_64", "version": "1.0.0"});
    let response = elsewhere
        .post(server.url(paths::REGISTER))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "another source is not throttled");
    assert_eq!(server.agents().await.len(), 6);
    let log = server.log();
    assert_eq!(
        log.matches("registrations throttled").count(),
        1,
        "one summary line"
    );
    assert_eq!(server.stop().await, Some(0));
}

async fn error_flood(dir: &std::path::Path, store: Store) {
    let server = Server::start(
        dir,
        &store,
        &options(&[
            "--error-retention-per-agent",
            "300",
            "--new-agent-retention",
            "300",
        ]),
    )
    .await;
    let flooder = server.register_ok("flooder").await;
    let quiet = server.register_ok("quiet").await;
    let first = post_errors(&server, &flooder.agent_token, 500).await;
    assert_eq!(first.status(), 200);
    let first: ErrorBatchResponse = first.json().await.unwrap();
    assert_eq!(first.stored, 500);
    for _ in 0..5 {
        let again = post_errors(&server, &flooder.agent_token, 500).await;
        assert_eq!(again.status(), 429);
        assert!(retry_after(&again) >= 1);
        let body: serde_json::Value = again.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    let other = post_errors(&server, &quiet.agent_token, 3).await;
    assert_eq!(other.status(), 200, "another agent's reports are stored");
    let (mine, pages) = server
        .all_pages::<StoredError>(&format!(
            "{}?agent_id={}&limit=100",
            paths::OPERATOR_ERRORS,
            flooder.agent_id
        ))
        .await;
    assert_eq!(
        (mine.len(), pages),
        (300, 3),
        "the newest 300 are kept per agent"
    );
    let (all, _) = server
        .all_pages::<StoredError>(paths::OPERATOR_ERRORS)
        .await;
    assert_eq!(all.len(), 303);
    assert_eq!(
        all.iter().filter(|e| e.agent_id == quiet.agent_id).count(),
        3
    );
    assert!(server.log().contains("error reports throttled"));
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn an_error_flood_is_throttled_per_agent_and_capped_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    error_flood(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn an_error_flood_is_throttled_per_agent_and_capped_on_postgres() {
    let Some(schema) = postgres_schema("an_error_flood_is_throttled_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    error_flood(dir.path(), Store::Postgres(schema.server_url.clone())).await;
    schema.drop_schema().await;
}

/// Inserts `count` reports of one agent received at `received_at`, straight into the database.
async fn seed_reports(url: &str, count: usize, received_at: &str, message_bytes: usize) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for n in 0..count {
        sqlx::query(
            "INSERT INTO error_reports (report_id, agent_id, kind, message, agent_version, \
             details, created_at, received_at) VALUES ($1, 'seeded', 'seed', $2, '1.0.0', NULL, \
             $3, $3)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(format!("{n}:{}", "m".repeat(message_bytes)))
        .bind(received_at)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn retention_removes_old_reports_and_keeps_the_newest_within_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cms-server.db").display());
    common::create_token(dir.path(), &Store::Sqlite, "admin", "seed").await; // migrates
    seed_reports(&url, 30, "2020-01-01T00:00:00.000000Z", 10).await;
    let recent = cms_server::clock::now();
    seed_reports(&url, 80, &recent, 10).await;
    let args = [
        "--error-retention-days",
        "30",
        "--error-retention-count",
        "50",
    ];
    let server = Server::start(dir.path(), &Store::Sqlite, &options(&args)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = loop {
        let (kept, _) = server
            .all_pages::<StoredError>(&format!("{}?limit=1000", paths::OPERATOR_ERRORS))
            .await;
        if kept.len() == 50 {
            break kept;
        }
        assert!(
            Instant::now() < deadline,
            "retention never ran: {} kept",
            kept.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        kept.iter().all(|e| e.created_at == recent),
        "only recent reports are kept"
    );
    assert!(server.log().contains("deleted by the retention policy"));
    assert_eq!(server.stop().await, Some(0));
}

/// Heartbeats of `agent_token`, one every 20 ms, on a thread and runtime of their own (so the
/// test's own JSON parsing cannot delay them), until `stop`; returns each one's latency.
fn heartbeats_until(
    base: String,
    agent_token: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let http = reqwest::Client::new();
            let report = StatusReport {
                state: AgentState::Idle,
                version: "1.0.0".into(),
                metrics: Metrics::default(),
                network: None,
                group: None,
                utc_offset_minutes: None,
            };
            let mut latencies = Vec::new();
            while latencies.len() < 50 || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                let response = http
                    .post(format!("{base}{}", paths::STATUS))
                    .bearer_auth(&agent_token)
                    .json(&report)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 204);
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_listings_never_hold_up_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cms-server.db").display());
    common::create_token(dir.path(), &Store::Sqlite, "admin", "seed").await;
    // 4,000 reports of 16 KiB (the longest message stored): 64 MB to list.
    seed_reports(&url, 4000, &cms_server::clock::now(), 16 * 1024 - 8).await;
    // One heartbeat every 20 ms: far above the per-agent heartbeat limit, lifted here.
    let unthrottled = [
        "--heartbeats-per-minute",
        "100000",
        "--heartbeat-burst",
        "100000",
    ];
    let server = Server::start(dir.path(), &Store::Sqlite, &options(&unthrottled)).await;
    let server = std::sync::Arc::new(server);
    let agent = server.register_ok("busy").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beats = heartbeats_until(server.base.clone(), agent.agent_token, stop.clone());
    let listings: Vec<_> = (0..8)
        .map(|_| {
            let server = std::sync::Arc::clone(&server);
            tokio::spawn(async move {
                for _ in 0..2 {
                    let path = format!("{}?limit=1000", paths::OPERATOR_ERRORS);
                    let (items, _) = server.all_pages::<StoredError>(&path).await;
                    assert_eq!(items.len(), 4000);
                }
            })
        })
        .collect();
    for listing in listings {
        listing.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut latencies = beats.join().unwrap();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "heartbeats during 16 listings of 64 MB: {} beats, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    // A correctness bound (heartbeats are not queued behind listings), not a benchmark.
    assert!(
        p99 < Duration::from_secs(1),
        "heartbeat p99 {p99:?} over {} beats",
        latencies.len()
    );
    let server = std::sync::Arc::into_inner(server).unwrap();
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn untrusted_text_is_logged_escaped_on_one_bounded_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &Store::Sqlite,
        &options(&["--enrollment-token", "join"]),
    )
    .await;
    let forged = "evil\n2026-12-01T00:00:00Z  INFO cms_server: FORGED admin login\0\u{202e}";
    let huge = "h".repeat(900 * 1024);
    for (hostname, token) in [
        (forged, Some("join")),
        (forged, Some("wrong")),
        (huge.as_str(), Some("join")),
    ] {
        let _ = server.register(hostname, token).await;
    }
    let response = server.register("ok-host", Some("join")).await;
    assert_eq!(response.status(), 200);
    let identity: cms_protocol::RegisterResponse = response.json().await.unwrap();
    let status = StatusReport {
        state: AgentState::Idle,
        version: "1.0.0\nFORGED version line".into(),
        metrics: Metrics::default(),
        network: None,
        group: None,
        utc_offset_minutes: None,
    };
    let _ = server
        .http
        .post(server.url(paths::STATUS))
        .bearer_auth(&identity.agent_token)
        .json(&status)
        .send()
        .await
        .unwrap();
    let log = std::fs::read(&server.log).unwrap();
    assert!(!log.contains(&0), "a NUL reached the log");
    let log = String::from_utf8(log).unwrap();
    // A forged line would start with the text after a raw newline.
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-12-01T00:00:00Z"),
            "forged line: {line}"
        );
        assert!(!line.starts_with("FORGED"), "forged line: {line}");
        assert!(line.len() < 4096, "a {} byte log line", line.len());
    }
    assert_eq!(
        log.matches(r"evil\n2026-12-01").count(),
        1,
        "registered once, logged escaped"
    );
    assert!(log.contains(r#"\0\u{202e}"#));
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn a_public_address_needs_an_enrollment_token_or_open_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let mut refused = common::command(
        &["serve", "--listen", "0.0.0.0:0"],
        dir.path(),
        &Store::Sqlite,
    );
    let output = refused
        .env_remove("CMS_ENROLLMENT_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--enrollment-token") && stderr.contains("--open-enrollment"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "it must not start listening");
    for extra in [["--open-enrollment", ""], ["--enrollment-token", "t"]] {
        let mut cmd = common::command(
            &["serve", "--listen", "0.0.0.0:0"],
            dir.path(),
            &Store::Sqlite,
        );
        cmd.args(extra.iter().filter(|a| !a.is_empty()))
            .env_remove("CMS_ENROLLMENT_TOKEN")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(line.starts_with("listening on http://0.0.0.0:"), "{line}");
        child.kill().await.unwrap();
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(&dir, &Store::Sqlite, &Options::default()).await;
    server.register_ok("host").await;
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("cms-server.db"), 0o600);
    assert_eq!(mode("cms-server.db-wal"), 0o600);
    assert_eq!(mode("tuf/keys"), 0o700);
    assert_eq!(mode("tuf/keys/timestamp.pk8"), 0o600);
    assert_eq!(server.stop().await, Some(0));
}
