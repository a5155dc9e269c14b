//! The real `cms_agent` binary for tests that need a whole agent against the real server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;

use tokio::process::{Child, Command};

/// The agent binary next to the server's, built on demand when a test runs before it exists.
pub fn agent_exe() -> PathBuf {
    static BUILD: Once = Once::new();
    let server = PathBuf::from(env!("CARGO_BIN_EXE_cms-server"));
    let exe = server.with_file_name(format!("cms_agent{}", std::env::consts::EXE_SUFFIX));
    BUILD.call_once(|| {
        if !exe.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-p", "cms-agent"])
                .status()
                .unwrap();
            assert!(status.success(), "cannot build cms_agent for the tests");
        }
    });
    exe
}

/// A running `cms_agent` with its own storage path.
#[derive(Debug)]
pub struct AgentProcess {
    pub child: Child,
    pub data_dir: PathBuf,
}

impl AgentProcess {
    /// Starts an agent on `data_dir` with `args` (`--server URL`, intervals, ...).
    pub fn start(data_dir: &Path, args: &[&str]) -> AgentProcess {
        let child = Command::new(agent_exe())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("CMS_AGENT_DATA_DIR")
            .env("CMS_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        AgentProcess {
            child,
            data_dir: data_dir.to_owned(),
        }
    }

    /// The agent's `logs/agent.log` so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("logs/agent.log")).unwrap_or_default()
    }

    /// The agent id from its `config.json`, once it registered.
    pub fn agent_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir.join("config.json")).ok()?;
        let config: serde_json::Value = serde_json::from_str(&text).ok()?;
        config["credentials"]["agent_id"]
            .as_str()
            .map(str::to_owned)
    }

    /// Error reports still waiting in the agent's buffer.
    pub fn buffered_report_ids(&self) -> Vec<String> {
        let text =
            std::fs::read_to_string(self.data_dir.join("error_reports.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|report| report["report_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Stops the agent with SIGTERM and returns its exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let exit = super::terminate(&mut self.child, 30)
            .await
            .unwrap_or_else(|| panic!("agent did not stop; log:\n{}", self.log()));
        exit.code()
    }
}
