//! A backend that answers with bodies that never end: the agent refuses them with bounded
//! memory (it reads at most about 1 MiB of any JSON answer, a few hundred bytes of an error
//! body) and keeps running.

#![cfg(unix)] // real processes and /proc; not for Wine
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use util::endless::{BODY_BYTES, EndlessServer};
use util::{Agent, wait_for};

/// Peak resident memory of `pid` (`VmHWM` in `/proc/PID/status`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn endless_answers_are_refused_with_bounded_memory_and_the_agent_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = EndlessServer::start();
    let mut agent = Agent::start(dir.path(), &["--server", &hostile.url]);

    // Registration answers: 200 with an endless body, then 503 with one, then 200 again.
    let finished = wait_for("three refused answers", || {
        let finished = hostile.finished_connections();
        (finished.len() >= 3).then_some(finished)
    });
    for sent in &finished {
        assert!(
            *sent < BODY_BYTES / 4,
            "the agent read on: {sent} of {BODY_BYTES} bytes went out before it hung up"
        );
    }
    let peak = peak_rss(agent.child.id());
    assert!(
        peak < 100 * 1024 * 1024,
        "peak RSS {peak} bytes: the body was buffered"
    );
    assert!(agent.is_running());
    let log = agent.log();
    assert!(
        log.contains("the server's answer is larger than 1048576 bytes; refused"),
        "{log}"
    );
    assert!(log.contains("server answered 503"), "{log}");
    assert_eq!(agent.stop().code(), Some(0));
}
