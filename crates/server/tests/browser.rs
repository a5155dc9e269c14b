//! The operator dashboard in a real browser: `browser/dashboard.mjs` (Playwright driving the
//! system's Chromium, headless) against the real `cms-server` and real agents.
//!
//! This file builds what the script needs (this server, the agent, the agent and updater as
//! 2.0.0 and as 3.0.1) and runs it with node; screenshots of each page land in
//! `target/screenshots/`. Without Chromium, node or `npm ci`'s `node_modules/playwright-core` it
//! skips, loudly, unless `CMS_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs them) makes
//! that a failure.

#![cfg(unix)] // drives Linux Chromium against Linux builds; the Windows lane runs its own scenarios
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::agent::{agent_exe, versioned_build};

/// The server binary of this crate.
fn server_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cms-server"))
}

/// The workspace root (two levels above this crate).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// What the browser test needs and this machine lacks, if anything.
fn missing_tools(chromium: &Path) -> Option<String> {
    if !chromium.exists() {
        return Some(format!("no Chromium at {}", chromium.display()));
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|out| out.status.success()) {
        return Some("no node on PATH".into());
    }
    let playwright = workspace().join("node_modules/playwright-core");
    (!playwright.exists()).then(|| format!("no {} (run npm ci)", playwright.display()))
}

#[test]
fn dashboard_in_a_real_browser() {
    let chromium =
        std::env::var_os("CMS_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    if let Some(missing) = missing_tools(&chromium) {
        let required = std::env::var("CMS_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(!required, "the browser test cannot run: {missing}");
        eprintln!("SKIPPED dashboard_in_a_real_browser: {missing}");
        return;
    }
    let v2 = versioned_build("2.0.0");
    let fixed = versioned_build("3.0.1");
    let work = tempfile::tempdir().unwrap();
    let screenshots = agent_exe()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("screenshots");
    let run = Command::new("node")
        .arg(workspace().join("crates/server/tests/browser/dashboard.mjs"))
        .current_dir(workspace())
        .env("CMS_SERVER_EXE", server_exe())
        .env("CMS_AGENT_EXE", agent_exe())
        .env("CMS_AGENT_V2_DIR", &v2)
        .env("CMS_AGENT_V301_DIR", &fixed)
        .env("CMS_WORK_DIR", work.path())
        .env("CMS_SCREENSHOTS", &screenshots)
        .env("CMS_CHROMIUM", &chromium)
        .env_remove("CMS_AGENT_DATA_DIR")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    if !run.status.success() {
        let log = std::fs::read_to_string(work.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "the browser test failed (screenshots in {}); the server's log ends:\n{}\n\n\
             what failed:\n{}",
            screenshots.display(),
            tail.join("\n"),
            failed_subtests(&report)
        );
    }
}

/// The `not ok` blocks of a node:test (TAP) report, each with its error and where it was
/// thrown, so the failure's reason ends the panic message instead of sitting above the log.
fn failed_subtests(report: &str) -> String {
    let mut failed = Vec::new();
    let mut inside = false;
    for line in report.lines() {
        if line.starts_with("not ok") {
            inside = true;
        }
        if inside {
            failed.push(line);
            inside = line.trim_end() != "...";
        }
    }
    failed.join("\n")
}
