//! `cms-server` for the tasks that need a backend (demo, wine-e2e, sign-check, bench): one
//! program and data folder ([`Server`]), which publishes releases (`cms-server release
//! publish`) and starts `cms-server serve` on loopback ([`RunningServer`]), printing what it
//! does or quietly with its log in a file, over plain HTTP or (with [`Server::with_tls`]) HTTPS
//! with a certificate of a throwaway CA ([`crate::pki`]). A running server knows its URL and PID,
//! stops politely, and can be restarted on the same port. Every request xtask makes to it goes
//! through [`RunningServer::client`], which trusts that CA.
//!
//! Must never: listen on anything but 127.0.0.1, or outlive its handle (dropping a
//! [`RunningServer`] kills the process).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cms_protocol::{AgentSummary, MAX_PAGE_SIZE, StoredError};
use serde::de::DeserializeOwned;

use crate::host;
use crate::pki::TestPki;
use crate::util::{self, describe, run_checked, step};

/// How long the server may take to stop, and an agent to answer a push.
const WAIT: Duration = Duration::from_secs(60);

/// Where the server's own output goes.
#[derive(Debug, Clone)]
pub enum ServerOutput {
    /// To ours, with a line for each start, stop and publish (the demo, wine-e2e).
    Print,
    /// Its log appended to this file, and nothing printed (the bench).
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    LogFile(PathBuf),
}

/// A `cms-server` program and its data folder (SQLite, packages, TUF metadata).
#[derive(Debug, Clone)]
pub struct Server {
    exe: PathBuf,
    data_dir: PathBuf,
    output: ServerOutput,
    tls: Option<TestPki>,
    serve_args: Vec<String>,
    database_url: Option<String>,
}

/// A release to publish: `version` of `agent` + `updater` for `platform` (the server's own
/// platform when `None`).
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    /// `X.Y.Z`.
    pub version: &'a str,
    /// `--platform`, such as `windows-x86_64`.
    pub platform: Option<&'a str>,
    /// The agent program.
    pub agent: &'a Path,
    /// The updater program.
    pub updater: &'a Path,
}

impl Server {
    /// The server `exe` with its data in `data_dir`.
    pub fn new(exe: &Path, data_dir: &Path, output: ServerOutput) -> Self {
        Self {
            exe: exe.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            output,
            tls: None,
            serve_args: Vec::new(),
            database_url: None,
        }
    }

    /// The same server on PostgreSQL (`--database-url`) instead of its SQLite file: every
    /// command (serve, token, publish) goes to that database.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn with_database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    /// `--data-dir DIR [--database-url URL]`, as every command takes them.
    fn store_args(&self, cmd: &mut Command) {
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
    }

    /// Serves HTTPS and WSS with `pki`'s server certificate (`--tls-cert/--tls-key`).
    pub fn with_tls(mut self, pki: &TestPki) -> Self {
        self.tls = Some(pki.clone());
        self
    }

    /// The same server started with `args` added to `serve` (limits, say).
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn with_serve_args(mut self, args: &[&str]) -> Self {
        self.serve_args = args.iter().map(|arg| (*arg).to_owned()).collect();
        self
    }

    /// A new admin operator token (`cms-server token create`): every operator route but
    /// `/healthz` needs one.
    fn create_operator_token(&self) -> Result<String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let name = format!("xtask-{}-{nanos}", std::process::id());
        let mut cmd = Command::new(&self.exe);
        cmd.args(["token", "create", "--role", "admin", "--name", &name]);
        self.store_args(&mut cmd);
        Ok(util::output_checked(&mut cmd)?.trim().to_owned())
    }

    /// `cms-server release publish` of `release` into the data folder; a running server sees
    /// it within its release-watch interval.
    pub fn publish(&self, release: &Release) -> Result<()> {
        self.publish_with(release, &[])
    }

    /// [`Self::publish`] with `extra` options of `release publish` (`--delta-from 0`, say).
    pub fn publish_with(&self, release: &Release, extra: &[&str]) -> Result<()> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["release", "publish"]);
        self.store_args(&mut cmd);
        cmd.args(["--version", release.version]);
        if let Some(platform) = release.platform {
            cmd.args(["--platform", platform]);
        }
        cmd.arg("--agent")
            .arg(release.agent)
            .arg("--updater")
            .arg(release.updater)
            // The whole fleet at once: a demo (or end-to-end run) watches one agent update now,
            // not a staged plan waiting for its soak time. And a fleet's halt rule, not one
            // machine's: the end-to-end run's broken release must stay offered to the next
            // installs after the first rollback (the halt is tested by the server's tests).
            .args(["--rollout", "100", "--halt-min-attempts", "20"])
            .args(extra);
        match self.output {
            ServerOutput::Print => run_checked(&mut cmd),
            ServerOutput::LogFile(_) => util::output_checked(&mut cmd).map(drop),
        }
    }

    /// Starts `cms-server serve` on a free loopback port.
    pub fn start(&self) -> Result<RunningServer> {
        self.start_on("127.0.0.1:0")
    }

    /// Starts `cms-server serve` on `listen`; returns once it accepts connections.
    pub fn start_on(&self, listen: &str) -> Result<RunningServer> {
        let printing = matches!(self.output, ServerOutput::Print);
        if printing {
            step(&format!(
                "starting cms-server (SQLite in {})",
                self.data_dir.display()
            ));
        }
        let operator_token = self.create_operator_token()?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["serve", "--listen", listen]);
        self.store_args(&mut cmd);
        cmd.args(&self.serve_args).stdout(Stdio::piped());
        if !self
            .serve_args
            .iter()
            .any(|arg| arg == "--enrollment-token")
        {
            // The demo, bench and end-to-end fleets register without a token: say so.
            cmd.arg("--open-enrollment");
        }
        if let Some(pki) = &self.tls {
            cmd.arg("--tls-cert")
                .arg(&pki.cert)
                .arg("--tls-key")
                .arg(&pki.key);
        }
        let client = self.client()?;
        if let ServerOutput::LogFile(log) = &self.output {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("cannot open the server log {}", log.display()))?;
            cmd.stderr(file);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&cmd)))?;
        let url = match listening_url(&mut child) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.context(self.where_to_look()));
            }
        };
        if printing {
            println!("    listening on {url}");
        }
        Ok(RunningServer {
            server: self.clone(),
            child,
            url,
            client,
            operator_token,
        })
    }

    /// An HTTP client for this server: trusting its CA when it serves HTTPS.
    fn client(&self) -> Result<reqwest::blocking::Client> {
        let mut builder = reqwest::blocking::Client::builder();
        if let Some(pki) = &self.tls {
            let ca = reqwest::Certificate::from_pem(pki.ca_pem()?.as_bytes())
                .context("cannot read the test CA")?;
            builder = builder.tls_certs_merge([ca]);
        }
        builder.build().context("cannot build an HTTP client")
    }

    /// Where the server said why it did not start.
    fn where_to_look(&self) -> String {
        match &self.output {
            ServerOutput::Print => "cms-server did not start (its messages are above)".into(),
            ServerOutput::LogFile(log) => {
                format!("cms-server did not start; see {}", log.display())
            }
        }
    }
}

/// The URL in the server's first line of output, `listening on http(s)://127.0.0.1:PORT`.
fn listening_url(child: &mut Child) -> Result<String> {
    let stdout = child.stdout.take().context("cms-server has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("cannot read cms-server's address")?;
    match line.trim().strip_prefix("listening on ") {
        Some(url) => Ok(url.to_owned()),
        None => bail!("cms-server did not report its address (said {line:?})"),
    }
}

/// A running `cms-server serve`; killed when dropped.
#[derive(Debug)]
pub struct RunningServer {
    server: Server,
    child: Child,
    url: String,
    client: reqwest::blocking::Client,
    operator_token: String,
}

impl RunningServer {
    /// Its base URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`.
    pub fn listen_addr(&self) -> &str {
        self.url
            .split_once("://")
            .map_or(&self.url, |(_, addr)| addr)
    }

    /// The CA file that signed its certificate, when it serves HTTPS.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn ca_file(&self) -> Option<&Path> {
        self.server.tls.as_ref().map(|pki| pki.ca.as_path())
    }

    /// The HTTP client every request to this server goes through (it trusts the server's CA).
    /// It also makes agent-API calls for the bench, so operator credentials go per request in
    /// [`RunningServer::get_json`] and [`RunningServer::push_update_check`], the only operator
    /// API calls.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// The process id (for `/proc` readings).
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// [`Server::publish`] into its data folder.
    pub fn publish(&self, release: &Release) -> Result<()> {
        self.server.publish(release)
    }

    /// [`Server::publish_with`] into its data folder.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn publish_with(&self, release: &Release, extra: &[&str]) -> Result<()> {
        self.server.publish_with(release, extra)
    }

    /// Its TUF root, `DIR/tuf/metadata/root.json` (`serve` creates it at start): what an agent
    /// is given with `--trusted-root`.
    pub fn tuf_root(&self) -> PathBuf {
        self.server.data_dir.join("tuf/metadata/root.json")
    }

    /// Asks it to stop as the OS would ([`host::stop_child`]) and waits for its exit, which must
    /// be clean where the stop was polite.
    pub fn stop(&mut self) -> Result<()> {
        let printing = matches!(self.server.output, ServerOutput::Print);
        if printing {
            step("stopping cms-server");
        }
        if self.child.try_wait()?.is_none() {
            host::stop_child(&mut self.child)?;
        }
        let status = util::wait_child(&mut self.child, "cms-server", WAIT)?;
        if printing {
            println!("    cms-server exited with {status}");
        }
        if host::STOPS_POLITELY && !status.success() {
            bail!("cms-server did not exit cleanly ({status})");
        }
        Ok(())
    }

    /// Ends it with SIGKILL, as a crash would, and reaps it.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("cannot kill cms-server")?;
        self.child.wait().context("cannot reap cms-server")?;
        Ok(())
    }

    /// Stops it, runs `while_stopped` (a publish it must not see happen, say), and starts it
    /// again on the same port.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn restart(&mut self, while_stopped: impl FnOnce(&Server) -> Result<()>) -> Result<()> {
        let listen = self.listen_addr().to_owned();
        self.stop()?;
        while_stopped(&self.server)?;
        *self = self.server.start_on(&listen)?;
        Ok(())
    }

    /// `GET path` of its operator API as JSON, with its admin token.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.url);
        self.client
            .get(&url)
            .bearer_auth(&self.operator_token)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .with_context(|| format!("GET {url}"))
    }

    /// `POST path` of its operator API with the JSON `body`, with its admin token.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.url);
        self.client
            .post(&url)
            .bearer_auth(&self.operator_token)
            .json(body)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .with_context(|| format!("POST {url}"))
    }

    /// `GET /api/v1/agents` (the first page of up to [`MAX_PAGE_SIZE`]).
    pub fn agents(&self) -> Result<Vec<AgentSummary>> {
        self.get_json(&format!(
            "{}?limit={MAX_PAGE_SIZE}",
            cms_protocol::paths::AGENTS
        ))
    }

    /// Waits up to `timeout` until the server lists an agent for which `wanted` holds.
    pub fn wait_for_agent(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&AgentSummary) -> bool,
    ) -> Result<AgentSummary> {
        util::wait_for(what, timeout, || {
            Ok(self.agents()?.into_iter().find(&wanted))
        })
    }

    /// `GET /api/v1/errors` (the newest [`MAX_PAGE_SIZE`]).
    pub fn errors(&self) -> Result<Vec<StoredError>> {
        self.get_json(&format!(
            "{}?limit={MAX_PAGE_SIZE}",
            cms_protocol::paths::OPERATOR_ERRORS
        ))
    }

    /// Pushes `agent:update_required` to the agent `agent_id` until the server accepts it (202:
    /// the agent holds a live WebSocket).
    pub fn push_update_check(&self, agent_id: &str) -> Result<()> {
        let url = format!("{}/api/v1/agents/{agent_id}/check-update", self.url);
        util::wait_for("the push to be accepted", WAIT, || {
            let request = self.client.post(&url).bearer_auth(&self.operator_token);
            let status = request.send()?.status();
            Ok((status.as_u16() == 202).then_some(()))
        })
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Best effort: after a stop this only reaps what has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
