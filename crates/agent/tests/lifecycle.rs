//! Register -> IDLE -> SIGTERM -> clean exit, with real processes; plus the WebSocket push.

#![cfg(unix)] // real processes, signals and the Linux server binary; not for Wine
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use util::{Agent, Server, agent_command, wait_for};

#[test]
fn agent_registers_goes_idle_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut agent = Agent::start(&data, &["--server", &server.url, "--status-interval", "1"]);

    let listed = server.wait_for_agent_state("IDLE");
    assert!(listed.online);
    assert_eq!(listed.version, cms_protocol::BUILD_VERSION);
    assert!(data.join("agent.lock").exists());

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["config_version"], 3);
    assert_eq!(config["credentials"]["agent_id"], listed.agent_id.as_str());
    assert_eq!(config["current_version"], cms_protocol::BUILD_VERSION);

    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(!data.join("agent.lock").exists(), "lock file left behind");
    let log = agent.log();
    assert!(log.contains("Shutdown complete"), "log:\n{log}");
    assert!(log.contains("State transition: STARTING -> IDLE"));
    assert!(log.contains("State transition: IDLE -> SHUTTING_DOWN"));
    assert!(
        !log.contains(&config["credentials"]["agent_token"].as_str().unwrap()[..16]),
        "token in log"
    );
}

#[test]
fn a_second_agent_on_the_same_storage_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut first = Agent::start(&data, &["--server", &server.url]);
    server.wait_for_agent_state("IDLE");

    let second = agent_command(&data, &["--server", &server.url])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "stderr: {stderr}"
    );
    assert!(first.is_running());
    assert_eq!(first.stop().code(), Some(0));
}

#[test]
fn a_restarted_agent_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut agent = Agent::start(&data, &["--server", &server.url]);
    let first = server.wait_for_agent_state("IDLE");
    assert_eq!(agent.stop().code(), Some(0));

    let mut again = Agent::start(&data, &[]);
    // The log is the same file as the first run's: wait for the second IDLE.
    wait_for("the restarted agent to reach IDLE", || {
        (again.idle_count() == 2).then_some(())
    });
    assert_eq!(server.agents().len(), 1);
    assert_eq!(server.agents()[0].agent_id, first.agent_id);
    assert_eq!(again.stop().code(), Some(0));
}

#[test]
fn update_required_pushed_over_websocket_reaches_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut agent = Agent::start(&data, &["--server", &server.url]);
    let listed = server.wait_for_agent_state("IDLE");
    agent.wait_for_log("websocket connected");

    let path = format!("/api/v1/agents/{}/check-update", listed.agent_id);
    wait_for("the push to be accepted", || {
        (server.post(&path) == 202).then_some(())
    });
    agent.wait_for_log("server event received");
    agent.wait_for_log("trigger=\"push\"");
    assert_eq!(agent.stop().code(), Some(0));
    assert!(agent.log().contains("websocket disconnected"));
}

#[test]
fn no_server_anywhere_is_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = agent_command(dir.path(), &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--server URL"), "stderr: {stderr}");
    assert!(!dir.path().join("agent.lock").exists());
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = agent_command(dir.path(), &["--server", "http://cms.example.com"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("use https"));
}

/// A panic in a running agent, while its backend is down: the agent stops with exit code 4
/// (so a service manager restarts it) instead of running on half alive, the panic waits in the
/// error buffer, and the next start delivers it. The panic is forced through the debug-only
/// `CMS_AGENT_TEST_PANIC_FILE` (docs/ARCHITECTURE.md).
#[test]
fn a_panic_stops_the_agent_with_exit_4_and_is_reported_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = Server::start(&server_dir);
    let listen = server.listen_addr();
    let data = dir.path().join("agent");
    let trigger = dir.path().join("panic-now");
    let mut panicking =
        util::agent_command(&data, &["--server", &server.url, "--status-interval", "1"]);
    let mut agent = util::Agent {
        child: panicking
            .env("CMS_AGENT_TEST_PANIC_FILE", &trigger)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        data_dir: data.clone(),
    };
    server.wait_for_agent_state("IDLE");
    server.stop();

    std::fs::write(&trigger, b"").unwrap();
    let status = util::wait_exit(&mut agent.child);
    assert_eq!(status.code(), Some(4), "{}", agent.log());
    let buffered = std::fs::read_to_string(data.join("error_reports.jsonl")).unwrap();
    assert!(buffered.contains("agent_panic"), "{buffered}");
    assert!(agent.log().contains("test panic requested"));

    let server = Server::start_on(&server_dir, &listen);
    let mut restarted = Agent::start(&data, &[]);
    let report = server.wait_for_report("agent_panic");
    assert!(
        report.message.contains("test panic requested"),
        "{}",
        report.message
    );
    assert!(
        report.message.contains("agent.rs"),
        "the panic's place: {}",
        report.message
    );
    assert_eq!(restarted.stop().code(), Some(0));
}

#[test]
fn service_mode_from_a_console_says_so_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent_command(&dir.path().join("agent"), &["--service"])
        .env_remove("INVOCATION_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not started by the service manager"),
        "{stderr}"
    );
    assert!(!dir.path().join("agent").exists(), "it touched the storage");
}

/// `cms_agent --per-user ARGS` with its XDG autostart entry in `config_home`.
fn per_user(
    data: &std::path::Path,
    config_home: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    agent_command(data, args)
        .arg("--per-user")
        .env("XDG_CONFIG_HOME", config_home)
        .env_remove("CMS_ENROLLMENT_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn enable_autostart_saves_the_settings_first_and_disable_removes_the_entry_and_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (data, home) = (dir.path().join("agent"), dir.path().join("config"));
    let server = Server::start(&dir.path().join("server"));
    let enable = [
        "--enable-autostart",
        "--server",
        &server.url,
        "--enrollment-token",
        "tok-123",
        "--download-limit",
        "300",
    ];
    let out = per_user(&data, &home, &enable);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = std::fs::read_to_string(home.join("autostart/cmsagent.desktop")).unwrap();
    assert!(entry.contains(r#""--per-user" "--data-dir""#), "{entry}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["server_url"], server.url.as_str());
    assert_eq!(config["enrollment_token"], "tok-123");
    assert_eq!(config["download_limit_kbps"], 300);
    assert!(!data.join("agent.lock").exists(), "the lock was kept");

    // What the entry starts needs nothing more.
    let mut agent = Agent::start(&data, &["--per-user"]);
    server.wait_for_agent_state("IDLE");
    let busy = per_user(
        &data,
        &home,
        &["--enable-autostart", "--server", "http://127.0.0.1:9"],
    );
    assert_eq!(
        busy.status.code(),
        Some(1),
        "settings changed under a running agent"
    );
    assert!(String::from_utf8_lossy(&busy.stderr).contains("--force"));
    assert_eq!(agent.stop().code(), Some(0));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["server_url"], server.url.as_str());
    assert_eq!(
        config["enrollment_token"], "tok-123",
        "kept for a re-enrollment"
    );
    assert!(data.join("ipc.secret").exists());
    // `--download-limit 0` (the installer's /DOWNLOADLIMIT=0) removes the limit.
    let unlimited = ["--enable-autostart", "--download-limit", "0"];
    assert_eq!(per_user(&data, &home, &unlimited).status.code(), Some(0));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("config.json")).unwrap()).unwrap();
    assert!(config.get("download_limit_kbps").is_none(), "{config}");

    let out = per_user(&data, &home, &["--disable-autostart"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!home.join("autostart/cmsagent.desktop").exists());
    assert!(!data.join("ipc.secret").exists(), "the IPC secret is left");
    assert!(data.join("config.json").exists(), "the data is kept");
}
