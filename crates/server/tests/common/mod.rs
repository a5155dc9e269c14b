//! Test harness: starts the real `cms-server` binary and talks to it over HTTP and WebSocket.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cms_protocol::{AgentSummary, RegisterRequest, RegisterResponse};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How a test server stores its data.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite in the data dir.
    Sqlite,
    /// PostgreSQL at this URL.
    Postgres(String),
}

/// A running `cms-server serve` process.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Base URL of the operator API (`base` unless `--operator-listen` was given).
    pub operator_base: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub http: reqwest::Client,
    /// An admin operator token made with `cms-server token create` before the start.
    pub admin_token: String,
    store: Store,
    extra_stdout: Arc<Mutex<Vec<String>>>,
}

/// Extra options for [`Server::start`].
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub enrollment_token: Option<String>,
    pub enrollment_env: Option<String>,
    pub offline_after: Option<u64>,
    /// `--listen` (default `127.0.0.1:0`, a free port).
    pub listen: Option<String>,
    /// More `serve` arguments.
    pub args: Vec<String>,
    /// Runs the server under `prlimit --nofile=N`.
    pub open_files: Option<u64>,
    /// Leaves out `--open-enrollment` (given by default when no enrollment token is).
    pub closed_enrollment: bool,
}

/// `cms-server` with `args` and the data dir (and database URL) of `store`.
pub fn command(args: &[&str], data_dir: &Path, store: &Store) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cms-server"));
    cmd.args(args).arg("--data-dir").arg(data_dir);
    if let Store::Postgres(url) = store {
        cmd.args(["--database-url", url]);
    }
    cmd
}

/// Runs `cms-server token create` and returns the token it prints.
pub async fn create_token(data_dir: &Path, store: &Store, role: &str, name: &str) -> String {
    let output = command(
        &["token", "create", "--role", role, "--name", name],
        data_dir,
        store,
    )
    .output()
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("cmso_"), "{token}");
    token
}

impl Server {
    /// Starts the binary on a free loopback port and waits for its `listening on` line.
    pub async fn start(data_dir: &Path, store: &Store, options: &Options) -> Server {
        let log = data_dir.join(format!("server-{}.log", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(data_dir).unwrap();
        let admin_name = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let admin_token = create_token(data_dir, store, "admin", &admin_name).await;
        let mut cmd = match options.open_files {
            Some(limit) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={limit}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_cms-server"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_cms-server")),
        };
        let listen = options.listen.as_deref().unwrap_or("127.0.0.1:0");
        cmd.arg("serve")
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(&options.args)
            .env_remove("CMS_ENROLLMENT_TOKEN")
            .env("RUST_LOG", "debug,sqlx=warn,hyper=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        if let Store::Postgres(url) = store {
            cmd.args(["--database-url", url]);
        }
        if let Some(token) = &options.enrollment_token {
            cmd.args(["--enrollment-token", token]);
        }
        if let Some(token) = &options.enrollment_env {
            cmd.env("CMS_ENROLLMENT_TOKEN", token);
        }
        let tokenless = options.enrollment_token.is_none() && options.enrollment_env.is_none();
        if tokenless && !options.closed_enrollment {
            cmd.arg("--open-enrollment");
        }
        if let Some(secs) = options.offline_after {
            cmd.args(["--offline-after", &secs.to_string()]);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no listening line; log:\n{}", read_log(&log)))
            .unwrap()
            .unwrap_or_else(|| panic!("server exited early; log:\n{}", read_log(&log)));
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let operator_base = if options.args.iter().any(|a| a == "--operator-listen") {
            let line = lines.next_line().await.unwrap().unwrap();
            line.strip_prefix("operator API on ")
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                .to_owned()
        } else {
            base.clone()
        };
        // Nothing else may appear on stdout; keep draining it so the pipe never fills.
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&extra_stdout);
        tokio::spawn(async move {
            while let Ok(Some(extra)) = lines.next_line().await {
                sink.lock().unwrap().push(extra);
            }
        });
        Server {
            child,
            base,
            operator_base,
            data_dir: data_dir.to_owned(),
            log,
            http: reqwest::Client::new(),
            admin_token,
            store: store.clone(),
            extra_stdout,
        }
    }

    /// Full operator API URL of `path`.
    pub fn operator_url(&self, path: &str) -> String {
        format!("{}{}", self.operator_base, path)
    }

    /// An operator API request carrying the admin token.
    pub fn operator(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.operator_url(path))
            .bearer_auth(&self.admin_token)
    }

    /// `GET path` on the operator API as admin, asserting 200, as JSON.
    pub async fn operator_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self
            .operator(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// `POST /api/v1/agents/{agent_id}/check-update` as admin.
    pub async fn check_update(&self, agent_id: &str) -> reqwest::Response {
        let path = format!("/api/v1/agents/{agent_id}/check-update");
        self.operator(reqwest::Method::POST, &path)
            .send()
            .await
            .unwrap()
    }

    /// Another operator token for this server's database.
    pub async fn token(&self, role: &str, name: &str) -> String {
        create_token(&self.data_dir, &self.store, role, name).await
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `ws://` URL of `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.base.replacen("http://", "ws://", 1), path)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// `host:port` the server listens on.
    pub fn listen_addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// Sends SIGKILL: the server dies without any cleanup.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let exit = terminate(&mut self.child, 20)
            .await
            .unwrap_or_else(|| panic!("server did not stop; log:\n{}", self.log()));
        let extra = self.extra_stdout.lock().unwrap();
        assert!(
            extra.is_empty(),
            "stdout must hold one line only: {extra:?}"
        );
        exit.code()
    }

    /// Registers an agent and returns its identity.
    pub async fn register(&self, hostname: &str, token: Option<&str>) -> reqwest::Response {
        let request = RegisterRequest {
            hostname: hostname.into(),
            platform: "linux-x86_64".into(),
            version: "1.0.0".into(),
            enrollment_token: token.map(str::to_owned),
            group: None,
        };
        self.http
            .post(self.url(cms_protocol::paths::REGISTER))
            .json(&request)
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/v1/agent/status` as the agent `token`.
    pub async fn post_status(
        &self,
        token: &str,
        state: cms_protocol::AgentState,
        version: &str,
    ) -> reqwest::Response {
        let report = cms_protocol::StatusReport {
            state,
            version: version.into(),
            metrics: cms_protocol::Metrics::default(),
            network: None,
            group: None,
            utc_offset_minutes: None,
        };
        self.http
            .post(self.url(cms_protocol::paths::STATUS))
            .bearer_auth(token)
            .json(&report)
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/v1/agent/errors` as the agent `token`.
    pub async fn post_errors(
        &self,
        token: &str,
        batch: &cms_protocol::ErrorBatch,
    ) -> reqwest::Response {
        self.http
            .post(self.url(cms_protocol::paths::ERRORS))
            .bearer_auth(token)
            .json(batch)
            .send()
            .await
            .unwrap()
    }

    /// Registers an agent, asserting success.
    pub async fn register_ok(&self, hostname: &str) -> RegisterResponse {
        let response = self.register(hostname, None).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `GET /api/v1/agents` (one page of up to 1000).
    pub async fn agents(&self) -> Vec<AgentSummary> {
        self.operator_json(&format!("{}?limit=1000", cms_protocol::paths::AGENTS))
            .await
    }

    /// `GET /api/v1/errors` (one page of up to 1000).
    pub async fn errors(&self) -> Vec<cms_protocol::StoredError> {
        self.operator_json(&format!(
            "{}?limit=1000",
            cms_protocol::paths::OPERATOR_ERRORS
        ))
        .await
    }

    /// Opens the agent WebSocket with a bearer token.
    pub async fn connect_ws(
        &self,
        token: &str,
    ) -> Result<WsStream, tokio_tungstenite::tungstenite::Error> {
        let mut request = self
            .ws_url(cms_protocol::paths::WEBSOCKET)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(stream)
    }
}

/// Sends SIGTERM to `child` and waits up to `secs` for it to exit (`None`: it did not).
pub async fn terminate(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(secs), child.wait()).await;
    exit.ok().map(Result::unwrap)
}

/// The `rel="next"` path of a listing answer's `Link` header, if any.
pub fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().unwrap();
    let path = link
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("unexpected Link header {link:?}"));
    Some(path.to_owned())
}

impl Server {
    /// Every item of a paged operator listing starting at `path`, following `Link` headers;
    /// also returns how many pages it took.
    pub async fn all_pages<T: serde::de::DeserializeOwned>(&self, path: &str) -> (Vec<T>, usize) {
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(path) = next {
            let response = self
                .operator(reqwest::Method::GET, &path)
                .send()
                .await
                .unwrap();
            let status = response.status();
            if status == 503 {
                // Busy building other listings: wait as told, like any client.
                let secs = response.headers()["retry-after"].to_str().unwrap();
                tokio::time::sleep(Duration::from_secs(secs.parse().unwrap())).await;
                next = Some(path);
                continue;
            }
            assert_eq!(status, 200, "GET {path}; log ends:\n{}", self.log_tail(20));
            next = next_link(&response);
            let page: Vec<T> = response.json().await.unwrap();
            items.extend(page);
            pages += 1;
        }
        (items, pages)
    }

    /// The server's `IP:PORT`.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// A raw TCP connection to the server from the loopback address `source` (Linux answers
    /// on all of 127.0.0.0/8, so tests can play several hosts).
    pub async fn connect_from(&self, source: &str) -> std::io::Result<tokio::net::TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().unwrap())?;
        socket.connect(self.socket_addr()).await
    }
}

/// Whether the server closes `stream` (EOF or reset) within `secs`; bytes it sends first
/// (an error answer) are read past.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, secs: u64) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A client WebSocket.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Next text frame of `ws`, within `secs` seconds.
pub async fn next_text(ws: &mut WsStream, secs: u64) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match frame {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A fresh PostgreSQL schema for one test, or `None` (with a SKIPPED line) without a server.
pub async fn postgres_schema(test: &str) -> Option<PgSchema> {
    let Ok(url) = std::env::var("CMS_TEST_POSTGRES_URL") else {
        // Written to the real stderr, not through libtest's output capture, so it shows.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: CMS_TEST_POSTGRES_URL not set ({test})"
        );
        return None;
    };
    use sqlx::Connection;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let server_url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let _ = writeln!(std::io::stderr(), "{test}: PostgreSQL schema {schema}");
    Some(PgSchema {
        admin_url: url,
        schema,
        server_url,
    })
}

/// A per-test PostgreSQL schema; [`PgSchema::drop_schema`] removes it.
#[derive(Debug)]
pub struct PgSchema {
    pub admin_url: String,
    pub schema: String,
    pub server_url: String,
}

impl PgSchema {
    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(&self.admin_url)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
}

/// Fake executables to package.
pub struct Inputs {
    pub agent: PathBuf,
    pub updater: PathBuf,
    pub agent_bytes: Vec<u8>,
    pub updater_bytes: Vec<u8>,
}

/// Writes two fake executables into `dir`.
pub fn inputs(dir: &Path) -> Inputs {
    let mut rng = fastrand_bytes(0x5eed);
    let agent_bytes: Vec<u8> = (0..40_000).map(|_| rng()).collect();
    let updater_bytes = b"#!/bin/sh\necho updater\n".to_vec();
    let agent = dir.join("fake_agent");
    let updater = dir.join("fake_updater");
    std::fs::write(&agent, &agent_bytes).unwrap();
    std::fs::write(&updater, &updater_bytes).unwrap();
    Inputs {
        agent,
        updater,
        agent_bytes,
        updater_bytes,
    }
}

/// A tiny deterministic byte generator (xorshift), so the agent does not compress to nothing.
fn fastrand_bytes(seed: u64) -> impl FnMut() -> u8 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    }
}

/// Runs `cms-server release publish` and returns (exit code, stdout, stderr). Unless `extra`
/// asks for a plan (`--stages`, `--stage-soak`, `--canary-group`), the release is published
/// the way these tests were written for: `--rollout 100` and a halt rule needing 20 attempts
/// (each unless `extra` gives its own); [`publish_as_given`] adds nothing.
pub async fn publish(
    data_dir: &Path,
    store: &Store,
    version: &str,
    files: &Inputs,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let staged = ["--stages", "--stage-soak", "--canary-group"];
    let mut args: Vec<&str> = extra.to_vec();
    if !extra.iter().any(|a| staged.contains(a)) {
        if !extra.contains(&"--rollout") {
            args.extend(["--rollout", "100"]);
        }
        if !extra.contains(&"--halt-min-attempts") {
            args.extend(["--halt-min-attempts", "20"]);
        }
    }
    publish_as_given(data_dir, store, version, files, &args).await
}

/// Runs `cms-server release publish` with exactly `extra` (the defaults: a staged plan).
pub async fn publish_as_given(
    data_dir: &Path,
    store: &Store,
    version: &str,
    files: &Inputs,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cms-server"));
    cmd.args(["release", "publish", "--data-dir"])
        .arg(data_dir)
        .args(["--version", version, "--agent"])
        .arg(&files.agent)
        .arg("--updater")
        .arg(&files.updater)
        .args(extra);
    run_command(cmd, store).await
}

/// Runs `cms-server release rollout` and returns (exit code, stdout, stderr).
pub async fn set_rollout(
    data_dir: &Path,
    store: &Store,
    version: &str,
    percent: u8,
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cms-server"));
    cmd.args(["release", "rollout", "--data-dir"])
        .arg(data_dir)
        .args(["--version", version, "--percent", &percent.to_string()]);
    run_command(cmd, store).await
}

/// Runs a `cms-server` command against `store` and returns (exit code, stdout, stderr).
async fn run_command(mut cmd: Command, store: &Store) -> (Option<i32>, String, String) {
    if let Store::Postgres(url) = store {
        cmd.args(["--database-url", url]);
    }
    let output = cmd.output().await.unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Polls `probe` every 50 ms until it returns `Some`, failing with `what` after `secs`.
pub async fn wait_until<T, F, Fut>(what: &str, secs: u64, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `update_progress` report of `step` for `version` (on linux-x86_64), as an agent sends it.
pub fn progress(
    version: &str,
    step: cms_protocol::UpdateStep,
    failed_step: Option<&str>,
) -> cms_protocol::ErrorReport {
    let details = cms_protocol::UpdateProgress {
        version: version.into(),
        platform: "linux-x86_64".into(),
        step,
        failed_step: failed_step.map(str::to_owned),
        transfer: None,
        transfer_bytes: None,
        reason: None,
    };
    cms_protocol::ErrorReport {
        report_id: uuid::Uuid::new_v4().to_string(),
        kind: cms_protocol::UPDATE_PROGRESS_KIND.into(),
        message: format!("update to {version}: {}", step.name()),
        agent_version: "1.0.0".into(),
        created_at: "2026-12-01T10:00:00Z".into(),
        details: serde_json::to_value(details).unwrap(),
    }
}

/// Sends `reports` as the agent `agent_token`, asserting they were taken.
pub async fn send(server: &Server, agent_token: &str, reports: Vec<cms_protocol::ErrorReport>) {
    let response = server
        .post_errors(agent_token, &cms_protocol::ErrorBatch { reports })
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}
