//! The real parts every measurement runs on: a `cms-server serve` process, an installed agent
//! (its exe in `install/`, its storage path in `data/`, like a machine), releases published with
//! `cms-server release publish`, and the agent's `agent.lock` watched from outside.
//!
//! Every process started here is stopped when its handle is dropped, also on error paths; an
//! installed agent's drop stops whatever its own lock file and update journal name, and nothing
//! else. Nothing here measures: callers time what they need.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cms_protocol::LockRecord;

use super::procfs;
use crate::util::{self, describe};

/// Longest any single wait of the bench may take before it fails with what it waited for.
pub const WAIT: Duration = Duration::from_secs(60);
/// How often the lock file is read while a handover is timed.
const LOCK_POLL: Duration = Duration::from_millis(1);

/// A running `cms-server serve` on loopback.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory (SQLite, packages).
    pub data_dir: PathBuf,
    exe: PathBuf,
}

impl Server {
    /// Starts `exe serve` on a free loopback port with its data in `data_dir`.
    pub fn start(exe: &Path, data_dir: &Path) -> Result<Server> {
        Server::start_on(exe, data_dir, "127.0.0.1:0")
    }

    /// Starts it on `listen` (to come back on the same port after a stop); returns once it
    /// accepts connections. Its log goes to `<data_dir>.log`.
    pub fn start_on(exe: &Path, data_dir: &Path, listen: &str) -> Result<Server> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .context("cannot open the server log")?;
        let mut command = Command::new(exe);
        command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&command)))?;
        let stdout = child.stdout.take().context("cms-server has no stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "cms-server did not start ({read:?}, said {line:?}); see its log next to {}",
                data_dir.display()
            );
        };
        Ok(Server {
            url: url.to_owned(),
            child,
            data_dir: data_dir.to_path_buf(),
            exe: exe.to_path_buf(),
        })
    }

    /// The server's process id (for `/proc` readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` it listens on.
    pub fn listen_addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Stops it with SIGTERM and waits for its exit.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        procfs::terminate(self.child.id())?;
        wait_for("cms-server to exit", || {
            Ok(self.child.try_wait()?.map(drop))
        })
    }

    /// Publishes `agent` + `updater` as release `version` for `platform` into this server's
    /// data directory (the running server sees it within its release-watch interval).
    pub fn publish(
        &self,
        version: &str,
        agent: &Path,
        updater: &Path,
        platform: &str,
    ) -> Result<()> {
        publish(&self.exe, &self.data_dir, version, agent, updater, platform)
    }

    /// `GET path` of the operator API as JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.url);
        reqwest::blocking::get(&url)
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .with_context(|| format!("GET {url}"))
    }

    /// Waits until the agent `agent_id` holds a live WebSocket (the operator push is accepted).
    pub fn wait_for_websocket(&self, agent_id: &str) -> Result<()> {
        let url = format!("{}/api/v1/agents/{agent_id}/check-update", self.url);
        let client = reqwest::blocking::Client::new();
        wait_for("the agent's WebSocket", || {
            let status = client.post(&url).send()?.status();
            Ok((status.as_u16() == 202).then_some(()))
        })
    }

    /// Registers an identity the way an agent does and returns its bearer token.
    pub fn register(&self, hostname: &str) -> Result<String> {
        let request = cms_protocol::RegisterRequest {
            hostname: hostname.into(),
            platform: "linux-x86_64".into(),
            version: "0.0.1".into(),
            enrollment_token: None,
        };
        let url = format!("{}{}", self.url, cms_protocol::paths::REGISTER);
        let response: cms_protocol::RegisterResponse = reqwest::blocking::Client::new()
            .post(&url)
            .json(&request)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .with_context(|| format!("POST {url}"))?;
        Ok(response.agent_token)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cms-server release publish` into `data_dir`; fails with its stderr.
pub fn publish(
    server_exe: &Path,
    data_dir: &Path,
    version: &str,
    agent: &Path,
    updater: &Path,
    platform: &str,
) -> Result<()> {
    let mut command = util::publish_command(
        server_exe,
        data_dir,
        version,
        Some(platform),
        (agent, updater),
    );
    util::output_checked(&mut command).map(drop)
}

/// An agent installed on this machine: `install/cms_agent` and its storage path `data/`.
#[derive(Debug)]
pub struct Installed {
    /// The installed exe (replaced in place by updates).
    pub exe: PathBuf,
    /// Its `--data-dir`.
    pub data: PathBuf,
    children: Vec<Child>,
}

impl Installed {
    /// Copies `agent` into `root/install/` and prepares `root/data/`.
    pub fn new(root: &Path, agent: &Path) -> Result<Installed> {
        let install = root.join("install");
        std::fs::create_dir_all(&install)?;
        let exe = install.join("cms_agent");
        std::fs::copy(agent, &exe)
            .with_context(|| format!("cannot install {}", agent.display()))?;
        Ok(Installed {
            exe,
            data: root.join("data"),
            children: Vec::new(),
        })
    }

    /// Starts the installed exe with `--data-dir` and `args`, quiet, with a short updater
    /// grace period (it only delays the end of an update run, never what is measured).
    pub fn start(&mut self, args: &[&str]) -> Result<u32> {
        let mut command = self.command(args);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&command)))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// The command [`Installed::start`] runs.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("CMS_AGENT_DATA_DIR")
            .env("CMS_UPDATER_GRACE_SECS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// The record in `agent.lock` now, when readable.
    pub fn lock(&self) -> Option<LockRecord> {
        let bytes = std::fs::read(self.data.join("agent.lock")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Reads the lock every millisecond until `holds` accepts its record; returns the record
    /// and when it was first seen.
    pub fn wait_lock(&self, holds: impl Fn(&LockRecord) -> bool) -> Result<(LockRecord, Instant)> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(record) = self.lock().filter(|r| holds(r)) {
                return Ok((record, Instant::now()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "no agent took the lock in {} within {WAIT:?}",
                    self.data.display()
                );
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// Times a handover of the lock from `old_pid` to a holder that `is_new` accepts: returns
    /// when the old record was last seen and when the new one was first seen.
    pub fn watch_handover(
        &self,
        old_pid: u32,
        is_new: impl Fn(&LockRecord) -> bool,
    ) -> Result<Handover> {
        let mut last_old = Instant::now();
        let deadline = last_old + WAIT;
        loop {
            match self.lock() {
                Some(record) if record.pid == old_pid => last_old = Instant::now(),
                Some(record) if is_new(&record) => {
                    return Ok(Handover {
                        last_old,
                        first_new: Instant::now(),
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "the lock in {} was not handed over within {WAIT:?}",
                    self.data.display()
                );
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// Stops the lock holder with SIGTERM and waits until its lock is gone.
    pub fn stop_holder(&self) -> Result<()> {
        let Some(record) = self.lock() else {
            return Ok(());
        };
        procfs::terminate(record.pid)?;
        wait_for("the agent to release its lock", || {
            Ok(self
                .lock()
                .is_none_or(|r| r.pid != record.pid)
                .then_some(()))
        })
    }

    /// Waits until no update is in flight (the update journal is settled and removed).
    pub fn wait_update_settled(&self) -> Result<()> {
        let journal = self.data.join("updates/update-journal.json");
        wait_for("the update journal to be settled", || {
            Ok((!journal.exists()).then_some(()))
        })
    }

    /// Reaps the processes this handle started that have exited.
    pub fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(record) = self.lock() {
            procfs::kill(record.pid);
        }
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// When a lock changed hands, seen from outside.
#[derive(Debug)]
pub struct Handover {
    /// Last read that still showed the old holder.
    pub last_old: Instant,
    /// First read that showed the new holder.
    pub first_new: Instant,
}

/// Polls `probe` every 10 ms until it yields a value, failing after [`WAIT`]; errors count as
/// "not yet" (a server that is still starting refuses connections).
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    util::wait_for_every(Duration::from_millis(10), what, WAIT, probe)
}

/// Milliseconds from `earlier` to `later`.
pub fn millis(earlier: Instant, later: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64() * 1000.0
}
