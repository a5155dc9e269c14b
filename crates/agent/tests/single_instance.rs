//! One agent per storage path, with real processes: concurrent starts, crash takeover.

#![cfg(unix)] // real processes and signals; the Windows lock is tested under Wine in-module
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::process::Stdio;

use util::{Agent, Server, agent_command, agent_status, lock_pid, sigkill, wait_exit, wait_for};

#[test]
fn twelve_concurrent_starts_leave_exactly_one_agent_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut children: Vec<_> = (0..12)
        .map(|_| {
            agent_command(&data, &["--server", &server.url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();

    // Eleven give up with exit code 1; the twelfth keeps running.
    let exited = wait_for("eleven agents to exit", || {
        let done: Vec<_> = children
            .iter_mut()
            .filter_map(|c| c.try_wait().unwrap())
            .collect();
        (done.len() >= 11).then_some(done)
    });
    assert_eq!(exited.len(), 11, "more than eleven exited: {exited:?}");
    assert!(exited.iter().all(|s| s.code() == Some(1)), "{exited:?}");
    let winner_index = (0..children.len())
        .find(|i| children[*i].try_wait().unwrap().is_none())
        .unwrap();
    let mut winner = children.swap_remove(winner_index);
    server.wait_for_agent_state("IDLE");
    assert_eq!(server.agents().len(), 1);
    assert_eq!(lock_pid(&data), Some(winner.id()));
    assert!(winner.try_wait().unwrap().is_none());

    util::sigterm(&winner);
    assert_eq!(wait_exit(&mut winner).code(), Some(0));
    assert!(!data.join("agent.lock").exists());
}

#[test]
fn after_kill_9_of_the_holder_the_next_start_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let first = Agent::start(&data, &["--server", &server.url]);
    server.wait_for_agent_state("IDLE");
    first.wait_for_log("IPC server listening");
    let mut first = first;
    sigkill(&first.child);
    wait_exit(&mut first.child);
    assert!(
        data.join("agent.lock").exists(),
        "a killed agent cannot clean up"
    );
    assert_eq!(
        agent_status(&data).status.code(),
        Some(3),
        "nothing answers after kill -9"
    );

    let mut second = Agent::start(&data, &[]);
    second.wait_for_log("recovered a stale lock");
    wait_for("the new agent's record in agent.lock", || {
        (lock_pid(&data) == Some(second.child.id())).then_some(())
    });
    let status = wait_for("--status from the new agent", || {
        let out = agent_status(&data);
        out.status.success().then_some(out)
    });
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains(&format!("pid: {}", second.child.id())),
        "{stdout}"
    );
    assert_eq!(second.stop().code(), Some(0));
}

#[test]
fn a_fast_lock_heartbeat_from_config_json_moves_the_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    std::fs::create_dir_all(&data).unwrap();
    let config = serde_json::json!({
        "config_version": 2,
        "server_url": server.url,
        "intervals": { "lock_heartbeat_secs": 1 }
    });
    std::fs::write(data.join("config.json"), config.to_string()).unwrap();
    let mut agent = Agent::start(&data, &[]);
    let read = || {
        let text = std::fs::read_to_string(data.join("agent.lock")).ok()?;
        serde_json::from_str::<cms_protocol::LockRecord>(&text).ok()
    };
    let first = wait_for("a lock record", read);
    wait_for("a newer heartbeat", || {
        read()
            .filter(|r| r.timestamp != first.timestamp)
            .map(|_| ())
    });
    assert_eq!(agent.stop().code(), Some(0));
}
