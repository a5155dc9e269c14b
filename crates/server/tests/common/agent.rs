//! The real `cms_agent` binary for tests that need a whole agent against the real server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, Once};

use tokio::process::{Child, Command};

/// The agent binary next to the server's, built on demand when a test runs before it exists.
pub fn agent_exe() -> PathBuf {
    static BUILD: Once = Once::new();
    let server = PathBuf::from(env!("CARGO_BIN_EXE_cms-server"));
    let exe = server.with_file_name(format!("cms_agent{}", std::env::consts::EXE_SUFFIX));
    BUILD.call_once(|| {
        if !exe.exists() {
            cargo_build(&["-p", "cms-agent"], &[], "cms_agent for the tests");
        }
    });
    exe
}

/// `cms_agent` and `updater` built as `version` (`CMS_BUILD_VERSION`), in
/// `target/versioned/VERSION/`: built once per test process, in a target folder of their own
/// so the tests' own build is left as it is.
pub fn versioned_build(version: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
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
    let build_dir = target.join("build");
    let env = [
        ("CMS_BUILD_VERSION", Path::new(version)),
        ("CARGO_TARGET_DIR", &build_dir),
    ];
    cargo_build(&["-p", "cms-agent", "-p", "cms-updater"], &env, version);
    std::fs::create_dir_all(&out).unwrap();
    for name in ["cms_agent", "updater"] {
        let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
        let temp = out.join(format!("{file}.tmp-{}", std::process::id()));
        std::fs::copy(build_dir.join("debug").join(&file), &temp).unwrap();
        std::fs::rename(&temp, out.join(&file)).unwrap();
    }
    built.push(version.to_owned());
    out
}

/// `cargo build ARGS` with `env`, failing the test (naming `what`) when it fails.
fn cargo_build(args: &[&str], env: &[(&str, &Path)], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .arg("build")
        .args(args)
        .envs(env.iter().copied())
        .status()
        .unwrap();
    assert!(status.success(), "cannot build {what}");
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
