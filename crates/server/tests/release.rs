//! End-to-end tests of `cms-server release publish` with the real binary: the package on disk,
//! the update check, the package download (whole and by range), and the push to connected
//! agents when a release is published while the server runs. On SQLite, and on PostgreSQL when
//! `CMS_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cms_protocol::update::{MANIFEST_NAME, PackageManifest};
use cms_protocol::{ReleaseSummary, ServerEvent, UpdateCheckResponse, UpdateRequired, paths};
use common::{
    Inputs, Options, Server, Store, WsStream, inputs, next_text, postgres_schema, publish,
};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Publishes, asserting success and the one-line output; returns the package path.
async fn publish_ok(
    data_dir: &Path,
    store: &Store,
    version: &str,
    files: &Inputs,
    extra: &[&str],
) -> PathBuf {
    let (code, stdout, stderr) = publish(data_dir, store, version, files, extra).await;
    assert_eq!(code, Some(0), "publish failed: {stderr}");
    let package = data_dir.join(format!(
        "packages/linux-x86_64/{version}/cms_agent-{version}-linux-x86_64.zip"
    ));
    let bytes = std::fs::read(&package).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(
        stdout,
        format!(
            "published {version} for linux-x86_64 ({} bytes, sha256 {sha})\n",
            bytes.len()
        )
    );
    package
}

async fn update_check(server: &Server, token: &str, version: &str) -> UpdateCheckResponse {
    let response = ask_update_check(server, token, version).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The update check of a linux-x86_64 agent running `version`, with bearer `token`, as answered.
async fn ask_update_check(server: &Server, token: &str, version: &str) -> reqwest::Response {
    server
        .http
        .get(server.url(paths::UPDATE_CHECK))
        .query(&[("version", version), ("platform", "linux-x86_64")])
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// GET of a package URL: (status, headers, body).
async fn download(
    server: &Server,
    url: &str,
    token: Option<&str>,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = server.http.get(server.url(url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).unwrap().to_str().unwrap()
}

fn zip_entry(package: &[u8], name: &str) -> (Vec<u8>, Option<u32>) {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap();
    let mut entry = archive.by_name(name).unwrap();
    let mode = entry.unix_mode();
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    (bytes, mode)
}

/// Publish before start, then update check, download (whole and ranges) and refusals.
async fn publish_and_download(dir: &Path, store: Store) {
    let files = inputs(dir);
    let data = dir.join("data");
    let package = publish_ok(&data, &store, "1.1.0", &files, &[]).await;
    let on_disk = std::fs::read(&package).unwrap();

    let server = Server::start(&data, &store, &Options::default()).await;
    let identity = server.register_ok("host-a").await;
    let token = identity.agent_token.as_str();

    // The update check offers the package with its exact length and hash.
    let update = update_check(&server, token, "1.0.0")
        .await
        .update
        .expect("1.1.0 offered");
    assert_eq!(update.version, "1.1.0");
    assert_eq!(update.length, on_disk.len() as u64);
    assert_eq!(update.sha256, hex::encode(Sha256::digest(&on_disk)));
    assert!(!update.urgent, "published without --urgent");

    // Whole download.
    let (status, headers, body) = download(&server, &update.package_url, Some(token), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-length"),
        on_disk.len().to_string()
    );
    assert_eq!(header(&headers, "accept-ranges"), "bytes");
    assert_eq!(body, on_disk);

    // The package carries both executables byte for byte, runnable, and the manifest.
    let (agent, mode) = zip_entry(&body, "cms_agent");
    assert_eq!(
        (agent, mode.map(|m| m & 0o777)),
        (files.agent_bytes.clone(), Some(0o755))
    );
    let (updater, mode) = zip_entry(&body, "updater");
    assert_eq!(
        (updater, mode.map(|m| m & 0o777)),
        (files.updater_bytes.clone(), Some(0o755))
    );
    let manifest: PackageManifest =
        serde_json::from_slice(&zip_entry(&body, MANIFEST_NAME).0).unwrap();
    assert_eq!(
        manifest,
        PackageManifest {
            version: "1.1.0".into(),
            platform: "linux-x86_64".into(),
            agent: "cms_agent".into(),
            updater: "updater".into(),
        }
    );

    // Resume from byte 10, a bounded range, and a range past the end.
    let total = on_disk.len();
    let (status, headers, body) =
        download(&server, &update.package_url, Some(token), Some("bytes=10-")).await;
    assert_eq!(status, 206);
    assert_eq!(
        header(&headers, "content-range"),
        format!("bytes 10-{}/{total}", total - 1)
    );
    assert_eq!(header(&headers, "content-length"), (total - 10).to_string());
    assert_eq!(body, on_disk[10..]);
    let (status, headers, body) =
        download(&server, &update.package_url, Some(token), Some("bytes=0-9")).await;
    assert_eq!(status, 206);
    assert_eq!(
        header(&headers, "content-range"),
        format!("bytes 0-9/{total}")
    );
    assert_eq!(body, on_disk[..10]);
    let past_end = format!("bytes={total}-");
    let (status, headers, _) =
        download(&server, &update.package_url, Some(token), Some(&past_end)).await;
    assert_eq!(status, 416);
    assert_eq!(
        header(&headers, "content-range"),
        format!("bytes */{total}")
    );

    // Unknown release -> 404 JSON; no or bad bearer -> 401 JSON.
    let unknown = "/api/v1/agent/packages/9.9.9/linux-x86_64";
    let (status, _, body) = download(&server, unknown, Some(token), None).await;
    assert_eq!(status, 404);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (status, _, body) = download(&server, &update.package_url, None, None).await;
    assert_eq!(status, 401);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (status, _, _) = download(&server, &update.package_url, Some("nope"), None).await;
    assert_eq!(status, 401);

    // The operator listing shows it, with the extra fields.
    let listing: serde_json::Value = server.operator_json(paths::RELEASES).await;
    let releases: Vec<ReleaseSummary> = serde_json::from_value(listing.clone()).unwrap();
    assert_eq!(releases.len(), 1);
    assert_eq!(
        (releases[0].version.as_str(), releases[0].platform.as_str()),
        ("1.1.0", "linux-x86_64")
    );
    assert!(releases[0].published_at.ends_with('Z'));
    assert_eq!(listing[0]["length"], json!(total));
    assert_eq!(listing[0]["sha256"], json!(update.sha256));
    assert_eq!(listing[0]["rollout_percent"], json!(100));
    assert_eq!(listing[0]["urgent"], json!(false));

    // Releases are immutable: a second publish of 1.1.0 is refused with exit code 2.
    let (code, stdout, stderr) = publish(&data, &store, "1.1.0", &files, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("already published"), "{stderr}");
    assert_eq!(
        std::fs::read(&package).unwrap(),
        on_disk,
        "package untouched"
    );

    // Two publishers racing for the same new version: exactly one wins.
    let (a, b) = tokio::join!(
        publish(&data, &store, "1.5.0", &files, &[]),
        publish(&data, &store, "1.5.0", &files, &[])
    );
    let mut codes = [a.0, b.0];
    codes.sort();
    assert_eq!(codes, [Some(0), Some(2)], "{} / {}", a.2, b.2);

    // `--urgent` is stored, offered and listed as such.
    publish_ok(&data, &store, "1.6.0", &files, &["--urgent"]).await;
    let urgent = update_check(&server, token, "1.0.0").await.update.unwrap();
    assert_eq!((urgent.version.as_str(), urgent.urgent), ("1.6.0", true));
    let listing: serde_json::Value = server.operator_json(paths::RELEASES).await;
    let releases: Vec<ReleaseSummary> = serde_json::from_value(listing).unwrap();
    let urgent: Vec<(&str, bool)> = releases
        .iter()
        .map(|r| (r.version.as_str(), r.urgent))
        .collect();
    assert_eq!(
        urgent,
        [("1.6.0", true), ("1.5.0", false), ("1.1.0", false)]
    );
    assert!(!server.log().contains(token), "token logged");
    assert_eq!(server.stop().await, Some(0));
}

#[tokio::test]
async fn publish_update_check_and_download_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    publish_and_download(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn publish_update_check_and_download_on_postgres() {
    let Some(schema) = postgres_schema("publish_update_check_and_download_on_postgres").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    publish_and_download(dir.path(), Store::Postgres(schema.server_url.clone())).await;
    assert!(!dir.path().join("data/cms-server.db").exists());
    schema.drop_schema().await;
}

#[tokio::test]
async fn bad_publish_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let files = inputs(dir.path());
    let data = dir.path().join("data");
    let missing = Inputs {
        agent: dir.path().join("missing"),
        ..inputs(dir.path())
    };
    let a_dir = Inputs {
        updater: dir.path().to_owned(),
        ..inputs(dir.path())
    };
    let cases: [(&str, &Inputs, &[&str], &str); 5] = [
        ("1.2", &files, &[], "not a semantic version"),
        ("1.2.0", &missing, &[], "--agent"),
        ("1.2.0", &a_dir, &[], "not a regular file"),
        ("1.2.0", &files, &["--rollout", "101"], "101"),
        ("1.2.0", &files, &["--platform", "mac"], "mac"),
    ];
    for (version, inputs, extra, needle) in cases {
        let (code, stdout, stderr) = publish(&data, &Store::Sqlite, version, inputs, extra).await;
        assert_eq!(code, Some(2), "{version} {extra:?}: {stderr}");
        assert!(stdout.is_empty());
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!data.join("packages/linux-x86_64/1.2.0").exists());
}

/// Registers an agent for `platform` and returns its token.
async fn register(server: &Server, hostname: &str, platform: &str) -> (String, String) {
    let body = json!({"hostname": hostname, "platform": platform, "version": "1.0.0"});
    let response = server
        .http
        .post(server.url(paths::REGISTER))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let identity: cms_protocol::RegisterResponse = response.json().await.unwrap();
    (identity.agent_id, identity.agent_token)
}

/// Opens the agent's WebSocket and waits until the hub has registered it (an operator
/// `check-update` reaches it), draining that first event.
async fn connect(server: &Server, agent_id: &str, token: &str) -> WsStream {
    let mut ws = server.connect_ws(token).await.unwrap();
    let path = format!("/api/v1/agents/{agent_id}/check-update");
    for _ in 0..100 {
        let sent = server.operator(reqwest::Method::POST, &path).send().await;
        if sent.unwrap().status() == 202 {
            let text = next_text(&mut ws, 10).await.expect("check-update event");
            let event: ServerEvent = serde_json::from_str(&text).unwrap();
            assert_eq!(
                event,
                ServerEvent::UpdateRequired(UpdateRequired::default())
            );
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the WebSocket never registered");
}

#[tokio::test]
async fn publishing_while_running_pushes_to_connected_agents_in_the_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let files = inputs(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, &Store::Sqlite, &Options::default()).await;
    let (linux_id, linux_token) = register(&server, "linux", "linux-x86_64").await;
    let (win_id, win_token) = register(&server, "win", "windows-x86_64").await;
    let mut linux = connect(&server, &linux_id, &linux_token).await;
    let mut windows = connect(&server, &win_id, &win_token).await;

    // Rollout 0: nobody is in the cohort, so no push and no offer.
    publish_ok(&data, &Store::Sqlite, "1.1.0", &files, &["--rollout", "0"]).await;
    assert_eq!(
        next_text(&mut linux, 3).await,
        None,
        "rollout 0 must not notify"
    );
    assert_eq!(
        update_check(&server, &linux_token, "1.0.0").await.update,
        None
    );

    // Rollout 100: the connected Linux agent is told within seconds; Windows is not.
    let published = std::time::Instant::now();
    publish_ok(&data, &Store::Sqlite, "1.2.0", &files, &[]).await;
    let text = next_text(&mut linux, 10)
        .await
        .expect("update_required pushed");
    assert!(
        published.elapsed() < Duration::from_secs(5),
        "{:?}",
        published.elapsed()
    );
    let event: ServerEvent = serde_json::from_str(&text).unwrap();
    assert_eq!(
        event,
        ServerEvent::UpdateRequired(UpdateRequired {
            version: Some("1.2.0".into()),
            spread_secs: None,
        })
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        json!({"event": "agent:update_required", "data": {"version": "1.2.0"}})
    );
    assert_eq!(
        next_text(&mut windows, 2).await,
        None,
        "other platform not notified"
    );
    let offered = update_check(&server, &linux_token, "1.0.0")
        .await
        .update
        .unwrap();
    assert_eq!(offered.version, "1.2.0");
    let log = server.log();
    assert!(log.contains("notified=1"), "{log}");
    assert!(log.contains("notified=0"), "{log}");
    assert_eq!(server.stop().await, Some(0));
}

/// The race path of `publish` (the insert itself hits the unique key) is told apart from other
/// database failures on PostgreSQL too (SQLite is covered by the unit tests).
#[tokio::test]
async fn duplicate_release_row_is_a_duplicate_on_postgres() {
    use cms_server::db::{Db, DbError, NewRelease};
    let Some(schema) = postgres_schema("duplicate_release_row_is_a_duplicate_on_postgres").await
    else {
        return;
    };
    let db = Db::connect(&schema.server_url, cms_server::db::PoolUse::Command)
        .await
        .unwrap();
    let release = NewRelease {
        version: "1.0.0",
        platform: "linux-x86_64",
        package_path: "packages/p.zip",
        length: 1,
        sha256: "00",
        rollout_percent: 100,
        published_at: "2026-11-25T10:00:00.000000Z",
        urgent: false,
    };
    db.begin_release(&release)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    let error = db.begin_release(&release).await.unwrap_err();
    assert!(matches!(error, DbError::Duplicate(_)), "{error:?}");
    db.close().await;
    schema.drop_schema().await;
}

/// Writes `len` bytes that do not compress (xorshift) to `path`.
fn incompressible(path: &Path, len: usize, seed: u64) {
    let mut state = seed;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// A package download that reads the answer's head and then nothing: with a tiny receive
/// buffer and a package larger than the socket buffers, the server cannot finish its body, so
/// the stream (and its slot in the download budget) stays open until this is dropped.
async fn slow_reader(server: &Server, url: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.socket_addr()).await.unwrap();
    let head = format!("GET {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the slow reader's download starts");
    stream
}

/// The server's `/healthz` answer.
async fn healthz(server: &Server) -> serde_json::Value {
    let health = server.http.get(server.url(paths::HEALTHZ)).send().await;
    health.unwrap().json().await.unwrap()
}

async fn download_counts(server: &Server) -> serde_json::Value {
    healthz(server).await["downloads"].clone()
}

/// A SQLite server in `dir` started with `args`, release 1.1.0 for linux-x86_64 published.
async fn serving_1_1_0(dir: &Path, args: &[&str]) -> Server {
    let files = inputs(dir);
    let data = dir.join("data");
    publish_ok(&data, &Store::Sqlite, "1.1.0", &files, &[]).await;
    let options = Options {
        args: args.iter().map(|&arg| arg.to_owned()).collect(),
        ..Options::default()
    };
    Server::start(&data, &Store::Sqlite, &options).await
}

/// Download slots and update-check turns are taken before the credential is checked (a refusal
/// or a queued check costs no database work): requests with a credential the server does not
/// know are refused 401 and give both back, so a flood of them leaves the budget (here one
/// slot) and the turns (two on SQLite) to the agents.
#[tokio::test]
async fn requests_without_a_valid_credential_hold_no_download_slot_or_check_turn() {
    let dir = tempfile::tempdir().unwrap();
    let server = serving_1_1_0(dir.path(), &["--max-downloads", "1"]).await;
    let identity = server.register_ok("host-a").await;
    let url = "/api/v1/agent/packages/1.1.0/linux-x86_64";
    for _ in 0..5 {
        let (status, _, _) = download(&server, url, Some("cmsa_not-a-token"), None).await;
        assert_eq!(status, 401);
        let check = ask_update_check(&server, "cmsa_not-a-token", "1.0.0").await;
        assert_eq!(check.status(), 401);
    }
    assert_eq!(
        download_counts(&server).await,
        json!({"active": 0, "limit": 1, "peak": 1, "refused": 0})
    );
    let token = identity.agent_token.as_str();
    let checked = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        update_check(&server, token, "1.0.0"),
    )
    .await
    .expect("a turn is free for the agent's check");
    assert_eq!(checked.update.unwrap().package_url, url);
    let (status, _, _) = download(&server, url, Some(token), None).await;
    assert_eq!(status, 200);
    assert_eq!(server.stop().await, Some(0));
}

/// Issue 27: `--max-downloads 2` with two streams held open by slow readers: a third download
/// is answered 503 with `Retry-After` and a JSON error, `/healthz` counts it, and once the slow
/// readers go away their slots are free again (the slot is held by the body, not the handler).
#[tokio::test]
async fn downloads_past_the_budget_are_answered_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = inputs(dir.path());
    // Larger than any socket buffer on loopback (send buffers grow to 4 MiB at most).
    incompressible(&files.agent, 12 * 1024 * 1024, 0x27);
    files.agent_bytes.clear();
    let data = dir.path().join("data");
    publish_ok(&data, &Store::Sqlite, "1.1.0", &files, &[]).await;
    let options = Options {
        args: vec!["--max-downloads".into(), "2".into()],
        ..Options::default()
    };
    let server = Server::start(&data, &Store::Sqlite, &options).await;
    let identity = server.register_ok("host-a").await;
    let token = identity.agent_token.as_str();
    let url = update_check(&server, token, "1.0.0")
        .await
        .update
        .unwrap()
        .package_url;

    let first = slow_reader(&server, &url, token).await;
    let second = slow_reader(&server, &url, token).await;
    let (status, headers, body) = download(&server, &url, Some(token), None).await;
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "retry-after"), "2");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("2 packages at once"),
        "{error}"
    );
    assert_eq!(
        download_counts(&server).await,
        json!({"active": 2, "limit": 2, "peak": 2, "refused": 1})
    );

    drop((first, second));
    common::wait_until("the slow readers' slots to be free", 20, || async {
        (download_counts(&server).await["active"] == 0).then_some(())
    })
    .await;
    let package = data.join("packages/linux-x86_64/1.1.0/cms_agent-1.1.0-linux-x86_64.zip");
    let (status, _, body) = download(&server, &url, Some(token), None).await;
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(package).unwrap());
    assert!(
        server.log().contains("download budget is full"),
        "the refusal is logged"
    );
    assert_eq!(server.stop().await, Some(0));
}

/// Issue 27: `--max-waiting-checks 0` (the two turns of SQLite and no line): of 200 update
/// checks sent at once, those past the turns are answered 503 at once with a `Retry-After`, a
/// JSON error and `Connection: close` (a refused agent's connection is not kept while it waits),
/// `/healthz` counts them, and each one asked again after its wait gets its offer.
#[tokio::test]
async fn update_checks_past_the_line_are_answered_503_and_come_back_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = serving_1_1_0(dir.path(), &["--max-waiting-checks", "0"]).await;
    let identity = server.register_ok("host-a").await;
    let token = identity.agent_token.as_str();

    let answers =
        futures_util::future::join_all((0..200).map(|_| ask_update_check(&server, token, "1.0.0")))
            .await;
    let mut refused = Vec::new();
    for answer in answers {
        match answer.status().as_u16() {
            200 => {}
            503 => refused.push(answer),
            other => panic!("an update check answered {other}"),
        }
    }
    assert!(!refused.is_empty(), "200 checks at once on two turns");
    let mut waits = Vec::new();
    for answer in refused {
        let headers = answer.headers().clone();
        assert_eq!(header(&headers, "connection"), "close");
        let wait: u64 = header(&headers, "retry-after").parse().unwrap();
        assert!((1..=120).contains(&wait), "Retry-After: {wait}");
        waits.push(wait);
        let error: serde_json::Value = answer.json().await.unwrap();
        let text = error["error"].as_str().unwrap();
        assert!(text.contains("update checks are already waiting"), "{text}");
    }
    assert_eq!(
        healthz(&server).await["update_checks"],
        json!({"waiting": 0, "limit": 0, "peak": 0, "refused": waits.len()})
    );
    assert!(server.log().contains("update checks refused"), "logged");

    // Asked again after the longest wait given, one at a time, every check gets its offer.
    tokio::time::sleep(Duration::from_secs(*waits.iter().max().unwrap())).await;
    for _ in &waits {
        let offer = update_check(&server, token, "1.0.0").await.update.unwrap();
        assert_eq!(offer.version, "1.1.0");
    }
    assert_eq!(server.stop().await, Some(0));
}
