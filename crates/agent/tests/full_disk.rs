//! A full disk, for real: the agent's storage path is a small tmpfs that the test fills to the
//! last byte. At start the agent waits (its lock cannot be written) and comes up once space
//! returns, then reports the wait; while running, reports it cannot append are counted and
//! reported, even after a restart before the backend returns, and no torn line is left in the
//! buffer.
//!
//! Mounting needs root (`mount -t tmpfs`); without it the test says so on stderr and does
//! nothing (a skip, counted by no one as a pass).

#![cfg(unix)] // real processes, signals, tmpfs; not for Wine
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use util::{Agent, Server, wait_for};

/// A tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `path`; `None` when this process is not root.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        if !cms_agent::system::is_running_as_admin() {
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t tmpfs failed although running as root"
        );
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system of `dir` until a write of even one byte fails with "no space";
/// returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    for size in [64 * 1024, 4096, 1] {
        let chunk = vec![0u8; size];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(err) if cms_platform::fs::is_out_of_space(&err) => break,
                Err(err) => panic!("filling {}: {err}", dir.display()),
            }
        }
    }
    filler
}

fn stderr_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_full_storage_path_is_waited_out_and_every_lost_report_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("data"), "8m") else {
        eprintln!("SKIPPED full_disk: mounting a tmpfs needs root");
        return;
    };
    let data = tmpfs.path.clone();
    let server_dir = dir.path().join("server");
    let server = Server::start(&server_dir);
    let listen = server.listen_addr();
    let mut agent = Agent::start(&data, &["--server", &server.url]);
    let identity = server.wait_for_agent_state("IDLE").agent_id;
    assert_eq!(agent.stop().code(), Some(0));

    // At start: the lock cannot be written. The agent waits instead of exiting.
    let filler = fill(&data);
    let stderr = dir.path().join("stderr");
    let args = ["--status-interval", "1", "--update-poll-interval", "3600"];
    let mut agent = Agent::start_with_stderr(&data, &args, &stderr);
    wait_for("the agent to wait for free space", || {
        stderr_of(&stderr)
            .contains("waiting for free space")
            .then_some(())
    });
    assert!(agent.is_running(), "{}", stderr_of(&stderr));
    std::fs::remove_file(&filler).unwrap();
    let waited = server.wait_for_report("storage_full");
    assert!(
        waited.message.contains("was full at start"),
        "{}",
        waited.message
    );
    let agents = server.agents();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].agent_id, identity);

    // While running, with the backend down: reports that cannot be appended are counted.
    server.stop();
    let filler = fill(&data);
    wait_for("a report dropped for want of space", || {
        stderr_of(&stderr)
            .contains("cannot buffer error report; dropped")
            .then_some(())
    });
    std::fs::remove_file(&filler).unwrap();
    // A restart before the backend is back: the count, kept in memory while it could not be
    // written, is written once a write succeeds again (at the latest when the agent stops).
    assert_eq!(agent.stop().code(), Some(0));
    let mut agent = Agent::start_with_stderr(&data, &args, &stderr);
    let server = Server::start_on(&server_dir, &listen);
    let overflow = server.wait_for_report("error_buffer_overflow");
    assert!(overflow.message.contains("dropped"), "{}", overflow.message);
    let buffer = std::fs::read(data.join("error_reports.jsonl")).unwrap_or_default();
    for line in buffer.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let parsed = serde_json::from_slice::<cms_protocol::ErrorReport>(line);
        assert!(
            parsed.is_ok(),
            "torn line left: {}",
            String::from_utf8_lossy(line)
        );
    }
    assert!(agent.is_running());
    assert_eq!(agent.stop().code(), Some(0));
}
