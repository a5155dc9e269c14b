//! An installed agent on a machine of its own: its exe in `install/` (a copy of a versioned
//! build), its data in `data/`, and its server's data directory beside them, as the update
//! tests use it. Unix only: the tests that drive updates run Linux builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cms_agent::system::process_alive;
use cms_protocol::AgentSummary;

use super::{Server, kill9, lock_record, publish, versioned_build, wait_for};

/// An installed agent: its exe in `install/`, its data in `data/`, like a real machine.
pub struct Machine {
    _dir: tempfile::TempDir,
    started: std::cell::RefCell<Vec<std::process::Child>>,
    /// Environment given to every agent process started here ([`Machine::set_env`]).
    env: std::cell::RefCell<Vec<(String, String)>>,
    /// The installed exe.
    pub exe: PathBuf,
    /// Its `--data-dir`.
    pub data: PathBuf,
    /// The data directory of its server.
    pub server_dir: PathBuf,
}

impl Machine {
    pub fn new(version: &str) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        std::fs::create_dir_all(&install).unwrap();
        let exe = install.join("cms_agent");
        std::fs::copy(versioned_build(version).join("cms_agent"), &exe).unwrap();
        let data = dir.path().join("data");
        let server_dir = dir.path().join("server");
        Machine {
            exe,
            data,
            server_dir,
            _dir: dir,
            started: Default::default(),
            env: Default::default(),
        }
    }

    /// Sets `key=value` in the environment of every agent process started from now on (the
    /// agent and `--status`), as the machine's own environment would be.
    pub fn set_env(&self, key: &str, value: &str) {
        self.env
            .borrow_mut()
            .push((key.to_owned(), value.to_owned()));
    }

    /// Starts the installed exe as autostart would, with fast updater checks.
    pub fn start(&self, server: &Server, poll_secs: &str) {
        self.start_via(&server.url, poll_secs, &[]);
    }

    /// Starts the installed exe with `--server url` (a proxy in front of the server) and
    /// `extra` arguments.
    pub fn start_via(&self, url: &str, poll_secs: &str, extra: &[&str]) {
        let child = Command::new(&self.exe)
            .args([
                "--server",
                url,
                "--update-poll-interval",
                poll_secs,
                "--data-dir",
            ])
            .arg(&self.data)
            .args(extra)
            .envs(self.env.borrow().iter().map(|(k, v)| (k, v)))
            .env("CMS_UPDATER_GRACE_SECS", "1")
            .env("CMS_UPDATER_VERIFY_SECS", "20")
            .env("CMS_UPDATER_CONTACT_SECS", "20")
            .env("CMS_UPDATER_WAIT_SECS", "20")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.started.borrow_mut().push(child);
    }

    pub fn publish(&self, version: &str) {
        self.publish_with(version, &[]);
    }

    /// `release publish` of `version` with `extra` options (`--platform`, `--timestamp-expiry-secs`).
    pub fn publish_with(&self, version: &str, extra: &[&str]) {
        let build = versioned_build(version);
        publish(
            &self.server_dir,
            version,
            &build.join("cms_agent"),
            &build.join("updater"),
            extra,
        );
    }

    /// The server's current signed `timestamp.json`, which a replay or a freeze would serve.
    pub fn timestamp_metadata(&self) -> PathBuf {
        self.server_dir.join("tuf/metadata/timestamp.json")
    }

    pub fn package(&self, version: &str) -> PathBuf {
        self.server_dir.join(format!(
            "packages/linux-x86_64/{version}/cms_agent-{version}-linux-x86_64.zip"
        ))
    }

    pub fn config(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.data.join("config.json")).unwrap()).unwrap()
    }

    pub fn exe_version(&self) -> String {
        let output = Command::new(&self.exe).arg("--version").output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs the installed exe on this machine's data with `args` (`--status`, `--force`) to
    /// its end, as an operator at the machine would.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.exe)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .envs(self.env.borrow().iter().map(|(k, v)| (k, v)))
            .env_remove("CMS_AGENT_DATA_DIR")
            .output()
            .unwrap()
    }

    /// What `--status` prints (empty when no agent answers).
    pub fn status(&self) -> String {
        String::from_utf8_lossy(&self.cli(&["--status"]).stdout).into_owned()
    }

    /// Kills whatever agent or updater of this machine still runs.
    pub fn stop_everything(&self) {
        for _ in 0..50 {
            let mut alive = Vec::new();
            if let Some(record) = lock_record(&self.data) {
                alive.push(record.pid);
            }
            if let Some(journal) = journal(&self.data) {
                alive.push(journal.updater_pid);
            }
            alive.retain(|pid| process_alive(*pid));
            if alive.is_empty() {
                return;
            }
            alive.into_iter().for_each(kill9);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop_everything();
        for mut child in self.started.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The update journal the updater left in `data`, if any.
pub fn journal(data: &Path) -> Option<cms_protocol::update::UpdateJournal> {
    let bytes = std::fs::read(data.join("updates/update-journal.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Waits until the server shows an IDLE agent online on `version`.
pub fn wait_for_version(server: &Server, version: &str) -> AgentSummary {
    wait_for(&format!("an IDLE agent on {version}"), || {
        server
            .agents()
            .into_iter()
            .find(|a| a.version == version && a.state == "IDLE" && a.online)
    })
}
