//! Test harness: real `cms-server` and `cms_agent` processes on loopback, one temp dir each.
//!
//! Nothing here is a mock: the server is the workspace's own binary (built on demand when a
//! test runs before it exists), the agent is `CARGO_BIN_EXE_cms_agent`, and all checks go
//! through the operator HTTP API and the files the agent writes.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod endless;
pub mod forward_proxy;
#[cfg(unix)]
pub mod machine;
pub mod pki;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use cms_protocol::{AgentSummary, StoredError};

/// How long any single wait may take before the test fails with a message.
pub const WAIT: Duration = Duration::from_secs(40);

/// The agent binary under test.
pub fn agent_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cms_agent"))
}

/// The server binary, built next to the agent if a test runs before it exists.
pub fn server_exe() -> PathBuf {
    static BUILD: Once = Once::new();
    let exe = agent_exe().with_file_name(format!("cms-server{}", std::env::consts::EXE_SUFFIX));
    BUILD.call_once(|| {
        if !exe.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "cms-server"])
                .status()
                .unwrap();
            assert!(status.success(), "cannot build cms-server for the tests");
        }
    });
    exe
}

/// Polls `probe` until it returns `Some`, failing the test with `what` after [`WAIT`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends SIGTERM (the OS's polite stop) to `child`.
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` to exit, failing the test after [`WAIT`].
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    wait_for("process exit", || child.try_wait().unwrap())
}

/// A running `cms-server serve`.
pub struct Server {
    child: Child,
    /// Base URL, such as `http://127.0.0.1:41234`.
    pub url: String,
    data_dir: PathBuf,
    /// An admin operator token for the operator API (made with `cms-server token create`).
    pub operator_token: String,
    http: reqwest::blocking::Client,
}

/// Runs `cms-server ARGS --data-dir DIR` and returns its exit status and output.
pub fn server_command_output(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(server_exe())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

/// Runs `cms-server ARGS --data-dir DIR` to success and returns what it printed.
pub fn server_command(data_dir: &Path, args: &[&str]) -> String {
    let output = server_command_output(data_dir, args);
    assert!(
        output.status.success(),
        "cms-server {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `cms-server token create` on `data_dir` and returns the token it prints.
pub fn create_operator_token(data_dir: &Path, role: &str) -> String {
    let name = format!("tests-{}", uuid::Uuid::new_v4().simple());
    let args = ["token", "create", "--role", role, "--name", &name];
    server_command(data_dir, &args).trim().to_owned()
}

impl Server {
    /// Starts a server on a free loopback port with its SQLite database in `data_dir`.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_on(data_dir, "127.0.0.1:0")
    }

    /// Starts a server on `listen` (to come back on the same port after a stop).
    pub fn start_on(data_dir: &Path, listen: &str) -> Server {
        Server::start_with(data_dir, &["--listen", listen], None)
    }

    /// Starts a server with `args` after `serve --data-dir DIR` (give `--listen`), with
    /// `--open-enrollment` unless `args` has `--enrollment-token`; its operator API is read
    /// with an admin token, trusting `ca_pem` too (for `--tls-cert`).
    pub fn start_with(data_dir: &Path, args: &[&str], ca_pem: Option<&str>) -> Server {
        let operator_token = create_operator_token(data_dir, "admin");
        let mut http = reqwest::blocking::Client::builder();
        if let Some(pem) = ca_pem {
            http = http.tls_certs_merge([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]);
        }
        let open = (!args.contains(&"--enrollment-token")).then_some("--open-enrollment");
        let mut child = Command::new(server_exe())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .args(open)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from cms-server: {line:?}"))
            .to_owned();
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            operator_token,
            http: http.build().unwrap(),
        }
    }

    /// `host:port` the server listens on.
    pub fn listen_addr(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        rest.to_owned()
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(mut self) {
        sigterm(&self.child);
        wait_exit(&mut self.child);
    }

    /// `GET /api/v1/agents` (one page of up to 1000: every agent a test starts).
    pub fn agents(&self) -> Vec<AgentSummary> {
        self.get_json("/api/v1/agents?limit=1000")
    }

    /// `GET /api/v1/errors` (one page of up to 1000).
    pub fn errors(&self) -> Vec<StoredError> {
        self.get_json("/api/v1/errors?limit=1000")
    }

    /// Waits until exactly one agent is listed in `state`, and returns it.
    pub fn wait_for_agent_state(&self, state: &str) -> AgentSummary {
        wait_for(&format!("an agent in state {state}"), || {
            self.agents().into_iter().find(|a| a.state == state)
        })
    }

    /// Waits until an error report of `kind` is stored, and returns the first one.
    pub fn wait_for_report(&self, kind: &str) -> StoredError {
        wait_for(&format!("a {kind} report"), || {
            self.errors().into_iter().find(|e| e.kind == kind)
        })
    }

    /// `POST url` on the operator API with an empty body; returns the status code.
    pub fn post(&self, path: &str) -> u16 {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.operator_token)
            .send()
            .unwrap();
        response.status().as_u16()
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.operator_token)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `cms_agent` with its own storage path.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
}

impl Agent {
    /// Starts an agent on `data_dir` with `args` (for example `--server URL`).
    pub fn start(data_dir: &Path, args: &[&str]) -> Agent {
        Agent::start_with_env(data_dir, args, &[])
    }

    /// Starts an agent with extra environment variables (`CMS_AGENT_LOG=debug`, ...).
    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let child = agent_command(data_dir, args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent {
            child,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Starts an agent whose stderr goes to `stderr` (to watch it while its disk is full).
    pub fn start_with_stderr(data_dir: &Path, args: &[&str], stderr: &Path) -> Agent {
        let child = agent_command(data_dir, args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap();
        Agent {
            child,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// How many starts reached IDLE, by the log.
    pub fn idle_count(&self) -> usize {
        self.log()
            .matches("State transition: STARTING -> IDLE")
            .count()
    }

    /// The agent's `logs/agent.log` so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("logs/agent.log")).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub fn wait_for_log(&self, text: &str) {
        wait_for(&format!("{text:?} in agent.log"), || {
            self.log().contains(text).then_some(())
        });
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops the agent with SIGTERM and returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        sigterm(&self.child);
        wait_exit(&mut self.child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent command with its storage path and quiet defaults, for tests that run it to exit.
pub fn agent_command(data_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(agent_exe());
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("CMS_AGENT_DATA_DIR");
    command
}

/// Agent and updater built with `CMS_BUILD_VERSION=version`, in `target/versioned/<version>/`.
/// Built once per test process in their own target dir (the tests' own build is untouched);
/// copies land by atomic rename, so a test running one never sees it half written.
pub fn versioned_build(version: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let target = agent_exe()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("versioned");
    let out = target.join(version);
    if built.iter().any(|v| v == version) {
        return out;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "cms-agent", "-p", "cms-updater"])
        .env("CMS_BUILD_VERSION", version)
        .env("CARGO_TARGET_DIR", target.join("build"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot build version {version}");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["cms_agent", "updater"] {
        let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
        let temp = out.join(format!("{file}.tmp-{}", std::process::id()));
        std::fs::copy(target.join("build/debug").join(&file), &temp).unwrap();
        std::fs::rename(&temp, out.join(&file)).unwrap();
    }
    built.push(version.to_owned());
    out
}

/// `cms-server release publish` into `server_dir`; panics with its output on failure. The
/// release goes to the whole fleet at once (`--rollout 100`, unless `extra` sets it) with the
/// halt rule these tests were written for (20 attempts, unless `extra` sets it), and no delta
/// is made unless `extra` asks (`--delta-from N`), so a test downloads the full package.
pub fn publish(server_dir: &Path, version: &str, agent: &Path, updater: &Path, extra: &[&str]) {
    let mut defaults: Vec<&str> = Vec::new();
    if !extra.contains(&"--rollout") {
        defaults.extend(["--rollout", "100"]);
    }
    if !extra.contains(&"--halt-min-attempts") {
        defaults.extend(["--halt-min-attempts", "20"]);
    }
    if !extra.contains(&"--delta-from") {
        defaults.extend(["--delta-from", "0"]);
    }
    let output = Command::new(server_exe())
        .args(["release", "publish", "--data-dir"])
        .arg(server_dir)
        .args(["--version", version, "--agent"])
        .arg(agent)
        .arg("--updater")
        .arg(updater)
        .args(extra)
        .args(defaults)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The record in `data_dir/agent.lock`, when readable.
pub fn lock_record(data_dir: &Path) -> Option<cms_protocol::LockRecord> {
    cms_platform::lock_file::read_lock_record(&cms_platform::layout::lock_path(data_dir))
}

/// Sends SIGKILL to `pid` (ignoring a process that is already gone).
pub fn kill9(pid: u32) {
    let _ = cms_agent::system::terminate_process(pid);
}

/// Runs `cms_agent --data-dir DIR --status` to completion.
pub fn agent_status(data_dir: &Path) -> std::process::Output {
    agent_command(data_dir, &["--status"]).output().unwrap()
}

/// The PID in `agent.lock`, if the file is there and readable.
pub fn lock_pid(data_dir: &Path) -> Option<u32> {
    lock_record(data_dir).map(|record| record.pid)
}

/// Sends SIGKILL (no cleanup at all) to `child`.
pub fn sigkill(child: &Child) {
    cms_agent::system::terminate_process(child.id()).unwrap();
}
