//! What the agent needs from the operating system, behind one API.
//!
//! Each function here is implemented twice with the same signature: `windows.rs` (Win32) and
//! `unix.rs` (Linux). Nothing outside `system/` and `ipc/` may say `cfg(windows)`; callers use the
//! re-exported functions and stay platform-blind. This module must never hold agent policy
//! (when to lock, what to do when a lock is held): it only answers questions and performs
//! single OS operations.

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
use windows as imp;

pub mod lock_manager;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Release platform name of this build (`windows-x86_64`, `linux-x86_64`): selects packages.
pub const PLATFORM: &str = imp::PLATFORM;

/// Whether the process runs elevated (Windows) or as root (Unix): selects the storage path.
pub fn is_running_as_admin() -> bool {
    imp::is_running_as_admin()
}

/// The storage path of design.md section 3 when no override is given, or `None` when the
/// environment does not say where it should be (no `%PROGRAMDATA%`, no `$HOME`).
pub fn default_data_dir(is_admin: bool) -> Option<PathBuf> {
    imp::default_data_dir(is_admin)
}

/// Makes the storage folder readable by its owner (and, on Windows, SYSTEM and Administrators)
/// only, because it holds the agent's credential and IPC secret.
pub fn restrict_directory(path: &Path) -> io::Result<()> {
    imp::restrict_directory(path)
}

/// Tries to take the OS lock that makes this process the one agent; `Ok(false)` when another
/// process holds it. The lock never covers the bytes other processes read.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    imp::try_lock_exclusive(file)
}

/// Whether `file` is still the file that `path` names, so a lock taken on a file that was just
/// deleted by its previous owner is not mistaken for the lock.
pub fn is_same_file(file: &File, path: &Path) -> io::Result<bool> {
    imp::is_same_file(file, path)
}

/// An opaque, stable number for when process `pid` started, or `None` if it does not run.
/// Together with the PID it names one process, even after the PID is reused.
pub fn process_start_time(pid: u32) -> Option<u64> {
    imp::process_start_time(pid)
}

/// Completes when the OS asks the agent to stop (SIGTERM/SIGINT; console control events on
/// Windows). The caller turns that into one graceful shutdown.
pub async fn shutdown_signal() -> io::Result<()> {
    imp::shutdown_signal().await
}
