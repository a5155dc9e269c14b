//! The machine-wide autostart entry runs the agent as root (SYSTEM on Windows) at every boot,
//! so it is refused for an exe that another user could replace or plant files beside: the real
//! `cms_agent --enable-autostart`, run as root from a folder everyone may write, and from one
//! another user owns. Needs root (it says SKIPPED otherwise); the refusal happens before any
//! entry is written, so nothing lands in `/etc/systemd/system`.

#![cfg(unix)] // Windows: the same rule reads DACLs, which Wine does not keep (a unit test there)
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The root systemd unit's modification time, if there is one.
fn unit_written_at() -> Option<std::time::SystemTime> {
    let unit = Path::new("/etc/systemd/system/cms-agent.service");
    std::fs::metadata(unit).and_then(|m| m.modified()).ok()
}

/// `--enable-autostart` from a copy of the agent in `folder`: refused with exit 2 saying `why`,
/// and no unit written.
fn assert_refused_from(folder: &Path, data: &Path, why: &str) {
    let exe = folder.join("cms_agent");
    std::fs::copy(env!("CARGO_BIN_EXE_cms_agent"), &exe).unwrap();
    let before = unit_written_at();
    let output = Command::new(&exe)
        .args(["--enable-autostart", "--server", "http://127.0.0.1:9"])
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to register") && stderr.contains(why),
        "{stderr}"
    );
    assert_eq!(unit_written_at(), before, "a systemd unit was written");
}

#[test]
fn a_service_is_never_registered_from_a_folder_others_can_write() {
    if !cms_agent::system::is_running_as_admin() {
        eprintln!("SKIPPED autostart: registering the machine-wide entry needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("downloads");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused_from(
        &open,
        &dir.path().join("data1"),
        "writable by its group or by everyone",
    );

    let theirs = dir.path().join("home");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    assert_refused_from(&theirs, &dir.path().join("data2"), "belongs to uid 65534");
}
