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

/// A backend that answers every request `503` with `body`; dropping it stops accepting.
struct ErrorBodyServer {
    url: String,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ErrorBodyServer {
    fn start(body: &'static str) -> ErrorBodyServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stopping.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut client) = client else { continue };
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = client.write_all(head.as_bytes());
                let _ = client.write_all(body.as_bytes());
            }
        });
        ErrorBodyServer { url, stopping }
    }
}

impl Drop for ErrorBodyServer {
    fn drop(&mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

#[test]
fn a_servers_error_body_cannot_forge_lines_in_agent_log() {
    const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO cms_agent: FORGED update verified";
    let body: &'static str =
        Box::leak(format!("maintenance\n{FORGED}\r\n{FORGED}\n\x1b[2J{FORGED}\n").into_boxed_str());
    let dir = tempfile::tempdir().unwrap();
    let hostile = ErrorBodyServer::start(body);
    let mut agent = Agent::start(dir.path(), &["--server", &hostile.url]);
    agent.wait_for_log("server answered 503");
    let log = agent.log();
    assert!(
        log.contains("maintenance\\n2026-01-01T00:00:00.000000Z  INFO cms_agent: FORGED"),
        "the body is not quoted escaped: {log}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00.000000Z") && !line.contains('\x1b'),
            "a forged line in agent.log: {line:?}\n{log}"
        );
    }
    assert_eq!(agent.stop().code(), Some(0));
}
