//! Issue 22, item 1: an elevated agent (root) never uses a data folder someone else owns or
//! links. A folder pre-created by another user with mode 0777, or with `logs/` or `updates/`
//! linked elsewhere, is taken over: it ends root's and 0700, the links are gone, nothing was
//! written through them, a warning names the folder and its previous owner, and the agent
//! registers and runs.

#![cfg(unix)] // ownership and modes; Wine cannot show owners or DACLs
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};

use util::{Agent, Server};

/// The user that pre-creates the folder: `nobody`.
const OTHER_UID: u32 = 65534;

/// Whether the test can run (it changes owners); prints why not.
fn root() -> bool {
    let root = cms_agent::system::is_running_as_admin();
    if !root {
        println!("SKIPPED: needs root");
    }
    root
}

/// Makes `path` the other user's, with `mode`.
fn give_away(path: &Path, mode: u32) {
    chown(path, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `agent/` in `dir`, the data folder, made by root or (`theirs`) given to the other user 0777.
fn data_folder(dir: &Path, theirs: bool) -> PathBuf {
    let data = dir.join("agent");
    fs::create_dir(&data).unwrap();
    if theirs {
        give_away(&data, 0o777);
    }
    data
}

/// Links `data/name` to an empty folder of the other user's outside `data`, which it returns.
fn link_elsewhere(dir: &Path, data: &Path, name: &str) -> PathBuf {
    let outside = dir.join(format!("elsewhere-{name}"));
    fs::create_dir(&outside).unwrap();
    give_away(&outside, 0o777);
    symlink(&outside, data.join(name)).unwrap();
    outside
}

/// Checks that `outside` is still empty and that the warning says `data/name` was removed.
fn assert_link_removed(stderr: &str, data: &Path, name: &str, outside: &Path) {
    let left: Vec<_> = fs::read_dir(outside).unwrap().collect();
    assert!(left.is_empty(), "written through {name}: {left:?}");
    let removed = format!("removed {} (a link", data.join(name).display());
    assert!(stderr.contains(&removed), "stderr:\n{stderr}");
}

/// Starts an agent on `data` against a fresh server, waits until it is IDLE, stops it, and
/// returns its stderr; checks that `data` ended root's, 0700, with no link at its top.
fn run_agent(dir: &Path, data: &Path) -> String {
    let server = Server::start(&dir.join("server"));
    let stderr = dir.join("agent.stderr");
    let mut agent = Agent::start_with_stderr(
        data,
        &["--server", &server.url, "--status-interval", "1"],
        &stderr,
    );
    server.wait_for_agent_state("IDLE");
    assert!(agent.is_running());
    assert!(agent.log().contains("State transition: STARTING -> IDLE"));
    assert_eq!(agent.stop().code(), Some(0));

    let meta = fs::symlink_metadata(data).unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700), "{data:?}");
    for entry in fs::read_dir(data).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        assert!(!meta.file_type().is_symlink(), "{:?}", entry.path());
        assert_eq!(meta.uid(), 0, "{:?}", entry.path());
    }
    let logs = fs::symlink_metadata(data.join("logs")).unwrap();
    assert!(logs.is_dir() && logs.mode() & 0o7777 == 0o700);
    fs::read_to_string(stderr).unwrap()
}

#[test]
fn a_folder_pre_created_by_another_user_is_taken_over() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = data_folder(dir.path(), true);
    fs::write(data.join("planted.txt"), b"theirs").unwrap();
    give_away(&data.join("planted.txt"), 0o666);

    let stderr = run_agent(dir.path(), &data);

    let planted = fs::symlink_metadata(data.join("planted.txt")).unwrap();
    assert_eq!((planted.uid(), planted.mode() & 0o777), (0, 0o600));
    let warning = format!(
        "the data folder {} was owned by uid {OTHER_UID}",
        data.display()
    );
    assert!(stderr.contains(&warning), "stderr:\n{stderr}");
}

#[test]
fn a_linked_logs_folder_is_removed_not_written_through() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = data_folder(dir.path(), false);
    let logs = link_elsewhere(dir.path(), &data, "logs");

    let stderr = run_agent(dir.path(), &data);

    assert_link_removed(&stderr, &data, "logs", &logs);
    assert!(data.join("logs/agent.log").is_file());
}

#[test]
fn linked_updates_and_tuf_folders_are_removed_not_written_through() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = data_folder(dir.path(), true);
    let updates = link_elsewhere(dir.path(), &data, "updates");
    let tuf = link_elsewhere(dir.path(), &data, "tuf");

    let stderr = run_agent(dir.path(), &data);

    assert_link_removed(&stderr, &data, "updates", &updates);
    assert_link_removed(&stderr, &data, "tuf", &tuf);
}
