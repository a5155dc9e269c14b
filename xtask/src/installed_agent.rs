//! An agent installed on this machine the way a real one is: its exe copied into an install
//! folder (replaced in place by self-updates), its storage path in a data folder, started with
//! `--data-dir`, watched from outside through its `agent.lock` and its log. The demo and the
//! bench run their agents through it.
//!
//! Must never: stop a process that neither this handle started nor the agent's own lock file
//! names; dropping the handle stops both kinds, also on error paths.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use cms_protocol::LockRecord;

use crate::host;
use crate::util::{self, describe};

/// How long the agent may take to do what it is waited for.
const WAIT: Duration = Duration::from_secs(60);

/// An installed agent; see the module docs.
#[derive(Debug)]
pub struct InstalledAgent {
    exe: PathBuf,
    data: PathBuf,
    updater_grace_secs: u32,
    children: Vec<Child>,
}

impl InstalledAgent {
    /// Copies the program `agent` into `install_dir` as `cms_agent` and uses `data_dir` as its
    /// storage path. The updater waits `updater_grace_secs` before it calls an update healthy
    /// (the agent's `CMS_UPDATER_GRACE_SECS`).
    pub fn install(
        agent: &Path,
        install_dir: &Path,
        data_dir: &Path,
        updater_grace_secs: u32,
    ) -> Result<Self> {
        std::fs::create_dir_all(install_dir)
            .with_context(|| format!("cannot create {}", install_dir.display()))?;
        let exe = install_dir.join(util::host_exe("cms_agent"));
        std::fs::copy(agent, &exe)
            .with_context(|| format!("cannot install {}", agent.display()))?;
        Ok(Self {
            exe,
            data: data_dir.to_path_buf(),
            updater_grace_secs,
            children: Vec::new(),
        })
    }

    /// The installed exe.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Its storage path.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// `cms_agent --data-dir DATA <args>`, its output discarded (the agent logs to its file).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("CMS_AGENT_DATA_DIR")
            .env(
                "CMS_UPDATER_GRACE_SECS",
                self.updater_grace_secs.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Starts [`InstalledAgent::command`]; returns the process id.
    pub fn start(&mut self, args: &[&str]) -> Result<u32> {
        let mut command = self.command(args);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&command)))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// The record in `agent.lock` now, when readable.
    pub fn lock(&self) -> Option<LockRecord> {
        let bytes = std::fs::read(self.data.join("agent.lock")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Asks the lock holder to stop ([`host::terminate`]) and waits until it has released the
    /// lock; nothing to do when no agent holds it.
    pub fn stop_holder(&self) -> Result<()> {
        let Some(record) = self.lock() else {
            return Ok(());
        };
        host::terminate(record.pid)?;
        util::wait_for("the agent to release its lock", WAIT, || {
            Ok(self
                .lock()
                .is_none_or(|r| r.pid != record.pid)
                .then_some(()))
        })
    }

    /// `logs/agent.log` as it is now (empty when there is none yet).
    pub fn log(&self) -> String {
        self.log_file("agent.log")
    }

    /// `logs/<name>` as it is now (empty when there is none yet).
    pub fn log_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.data.join("logs").join(name)).unwrap_or_default()
    }

    /// Waits until the agent's log holds `needle`; returns the log.
    pub fn wait_for_log(&self, needle: &str) -> Result<String> {
        util::wait_for(&format!("{needle} in the agent log"), WAIT, || {
            let log = self.log();
            Ok(log.contains(needle).then_some(log))
        })
    }

    /// Waits until no update is in flight (the update journal is settled and removed).
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn wait_update_settled(&self) -> Result<()> {
        let journal = self.data.join("updates/update-journal.json");
        util::wait_for("the update journal to be settled", WAIT, || {
            Ok((!journal.exists()).then_some(()))
        })
    }

    /// Reaps the processes this handle started that have exited.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
}

impl Drop for InstalledAgent {
    fn drop(&mut self) {
        if let Some(record) = self.lock() {
            host::kill(record.pid);
        }
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
