//! `--status`, `--stop`, `--force` and the IPC socket, with real agent processes.

#![cfg(unix)] // real processes and a Unix socket; the named pipe is tested under Wine in-module
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cms_protocol::BUILD_VERSION;
use util::{Agent, Server, agent_command, agent_status, lock_pid, wait_exit, wait_for};

/// Sends raw `bytes` to the agent's socket and returns the raw answer (empty if none).
fn exchange(data: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(data.join("agent.sock")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn start_idle(server: &Server, data: &Path) -> Agent {
    let agent = Agent::start(data, &["--server", &server.url]);
    agent.wait_for_log("State transition: STARTING -> IDLE");
    agent.wait_for_log("IPC server listening");
    agent
}

#[test]
fn status_prints_state_and_version_or_exits_3_when_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let none = agent_status(&data);
    assert_eq!(none.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no agent is running"));

    let server = Server::start(&dir.path().join("server"));
    let mut agent = start_idle(&server, &data);
    let out = agent_status(&data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("state: IDLE"), "{stdout}");
    assert!(
        stdout.contains(&format!("version: {BUILD_VERSION}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("pid: {}", agent.child.id())),
        "{stdout}"
    );

    let socket = std::fs::metadata(data.join("agent.sock")).unwrap();
    let secret = std::fs::metadata(data.join("ipc.secret")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);

    assert_eq!(agent.stop().code(), Some(0));
    assert!(!data.join("agent.sock").exists(), "socket left behind");
    assert_eq!(agent_status(&data).status.code(), Some(3));
}

#[test]
fn stop_ends_the_agent_gracefully_and_exits_3_when_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let none = agent_command(&data, &["--stop"]).output().unwrap();
    assert_eq!(none.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no agent is running"));

    let server = Server::start(&dir.path().join("server"));
    let mut agent = start_idle(&server, &data);
    let pid = agent.child.id();
    let out = agent_command(&data, &["--stop"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&format!("pid {pid}")), "{stdout}");
    // `--stop` returned only after the agent was gone: its exit is already there to collect.
    let status = agent.child.try_wait().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(
        !data.join("agent.lock").exists(),
        "the lock was not released"
    );
    let log = agent.log();
    assert!(log.contains("stop requested over IPC"), "{log}");
    assert!(
        log.contains("State transition: IDLE -> SHUTTING_DOWN"),
        "{log}"
    );
    assert!(log.contains("Shutdown complete"), "{log}");
    assert_eq!(
        agent_command(&data, &["--stop"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(3)
    );
}

#[test]
fn force_hands_over_to_a_new_instance_with_the_new_args() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut old = start_idle(&server, &data);

    let new = agent_command(&data, &["--force", "--status-interval", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut new = Agent {
        child: new,
        data_dir: data.clone(),
    };
    assert_eq!(
        wait_exit(&mut old.child).code(),
        Some(0),
        "the old agent stops cleanly"
    );
    wait_for("the new agent to own the lock", || {
        (lock_pid(&data) == Some(new.child.id())).then_some(())
    });
    let out = wait_for("--status from the new agent", || {
        let out = agent_status(&data);
        out.status.success().then_some(out)
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("pid: {}", new.child.id())));
    let log = new.log();
    assert!(
        log.contains("State transition: IDLE -> FORCE_RESTARTING"),
        "{log}"
    );
    assert!(log.contains("State transition: FORCE_RESTARTING -> SHUTTING_DOWN"));
    assert!(log.contains("--force acknowledged; waiting for the lock"));
    assert!(new.is_running());
    assert_eq!(
        server.agents().len(),
        1,
        "the new instance keeps the identity"
    );
    assert_eq!(new.stop().code(), Some(0));
}

#[test]
fn force_with_nothing_running_just_starts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut agent = Agent::start(&data, &["--force", "--server", &server.url]);
    server.wait_for_agent_state("IDLE");
    assert!(agent.log().contains("--force: no "), "{}", agent.log());
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn a_wrong_secret_is_refused_and_the_agent_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut agent = start_idle(&server, &data);
    let secret = std::fs::read_to_string(data.join("ipc.secret")).unwrap();

    let wrong = format!(
        r#"{{"command":"force_restart","secret":"{}","args":[]}}"#,
        "0".repeat(64)
    );
    let answer = exchange(&data, format!("{wrong}\n").as_bytes());
    assert!(answer.contains(r#""status":"invalid_secret""#), "{answer}");
    assert!(
        !answer.contains("IDLE"),
        "no state for an unauthenticated client: {answer}"
    );
    let answer = exchange(&data, b"this is not json\n");
    assert!(answer.contains(r#""status":"error""#), "{answer}");

    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.is_running());
    assert!(agent_status(&data).status.success());
    let log = agent.log();
    assert!(log.contains("IPC request refused: invalid secret"), "{log}");
    assert!(!log.contains(secret.trim()), "the secret was logged");
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn garbage_on_the_socket_never_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut agent = start_idle(&server, &data);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut cases: Vec<Vec<u8>> = vec![
        b"\n".to_vec(),
        b"{\"command\":\"force_restart\"}\n".to_vec(),
        b"{\"command\":\"force_restart\",\"secret\":\"\"}\n".to_vec(),
        b"{\"command\":\"force_rest".to_vec(),
        vec![b'x'; 200_000],
        [vec![b'['; 10_000], b"\n".to_vec()].concat(),
    ];
    cases.extend((0..60).map(|_| {
        let len = rng.usize(..40_000);
        (0..len).map(|_| rng.u8(..)).collect()
    }));
    for case in &cases {
        let answer = exchange(&data, case);
        assert!(!answer.contains("acknowledged"), "obeyed garbage: {answer}");
        assert!(agent.is_running(), "the agent died");
    }
    let out = agent_status(&data);
    assert!(String::from_utf8_lossy(&out.stdout).contains("state: IDLE"));
    assert!(!agent.log().contains("SHUTTING_DOWN"));
    assert_eq!(agent.stop().code(), Some(0));
}
