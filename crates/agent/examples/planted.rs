//! `planted`: what a standard user plants where a program running as SYSTEM might start a
//! program by name (a `cmd.exe` beside the updater, or in a temp folder). If it ever runs, it
//! appends its own path to `%SystemDrive%\cms-planted-ran.txt` (`/tmp/cms-planted-ran.txt` on
//! Linux) and exits.
//!
//! `cargo xtask wine-e2e` plants copies before the update and the rollback of the installed
//! service and fails if that file appears. It must never do anything but leave that mark.

use std::io::Write;
use std::path::PathBuf;

/// Where a run leaves its mark.
fn mark_file() -> PathBuf {
    if cfg!(windows) {
        let drive = std::env::var("SystemDrive").unwrap_or_else(|_| "C:".to_owned());
        PathBuf::from(format!(r"{drive}\cms-planted-ran.txt"))
    } else {
        PathBuf::from("/tmp/cms-planted-ran.txt")
    }
}

fn main() {
    let me = std::env::current_exe().map_or_else(|_| "?".to_owned(), |p| p.display().to_string());
    let mark = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mark_file());
    if let Ok(mut file) = mark {
        let _ = writeln!(file, "{me}");
    }
}
