//! An installer ships the backend's release-signing root beside the agent (`root.json`, from
//! `cargo xtask installer --trusted-root`): the agent pins it at its first start instead of
//! trusting the root the server serves on first use, even when the install gave it no server
//! (so no `--trusted-root` reached `--enable-autostart`).

#![cfg(unix)] // the Windows install is the Wine lane's (wine-e2e checks the pinned root)
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::path::Path;
use std::process::{Command, Stdio};

use util::{Server, agent_exe, wait_for};

#[test]
fn a_root_shipped_beside_the_exe_is_pinned_and_nothing_is_trusted_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = Server::start(&server_dir);
    let served_root = server_dir.join("tuf/metadata/root.json");
    let root = wait_for("the server's TUF root", || std::fs::read(&served_root).ok());

    let install = dir.path().join("program");
    std::fs::create_dir(&install).unwrap();
    let exe = install.join("cms_agent");
    std::fs::copy(agent_exe(), &exe).unwrap();
    std::fs::write(install.join("root.json"), &root).unwrap();

    let data = dir.path().join("data");
    let mut agent = Command::new(&exe)
        .args(["--server", &server.url, "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for_agent_state("IDLE");
    let pinned = std::fs::read(data.join("tuf/pinned-root.json")).unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(pinned, root, "the pinned root is not the shipped one");
    let log = std::fs::read_to_string(Path::new(&data).join("logs/agent.log")).unwrap();
    assert!(
        log.contains("pinned the release-signing root shipped beside the agent"),
        "{log}"
    );
    assert!(!log.contains("on first use"), "trusted on first use: {log}");
}
