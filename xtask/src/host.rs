//! What differs between the machines xtask runs on (Linux, Windows): how a process is asked to
//! stop or ended, and how a symbolic link is copied. Every item of xtask compiled for one OS only
//! (`#[cfg(unix)]`, `#[cfg(windows)]`) is here, the bench aside (it reads `/proc`: Linux only);
//! the tasks call one API.
//!
//! Must never: signal a process the caller did not start or find in the agent's own lock file.

use anyhow::Result;
#[cfg(unix)]
use anyhow::{Context, bail};
use std::path::Path;
use std::process::Child;

/// Asks the process `pid` to stop as the OS would ask it: SIGTERM on Unix, `taskkill /PID` on
/// Windows (without `/F`: the polite request).
#[cfg(unix)]
pub fn terminate(pid: u32) -> Result<()> {
    signal(pid, rustix::process::Signal::TERM)
}

/// Ends the process `pid` at once; one that is already gone is fine.
#[cfg(unix)]
pub fn kill(pid: u32) {
    let _ = signal(pid, rustix::process::Signal::KILL);
}

#[cfg(unix)]
fn signal(pid: u32, signal: rustix::process::Signal) -> Result<()> {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        bail!("{pid} is not a process id");
    };
    rustix::process::kill_process(pid, signal)
        .with_context(|| format!("cannot signal process {}", pid.as_raw_nonzero()))
}

/// See the Unix version.
#[cfg(windows)]
pub fn terminate(pid: u32) -> Result<()> {
    crate::util::run_checked(
        std::process::Command::new("taskkill").args(["/PID", &pid.to_string()]),
    )
}

/// See the Unix version.
#[cfg(windows)]
pub fn kill(pid: u32) {
    let mut cmd = std::process::Command::new("taskkill");
    // Best effort: a process that is gone already makes taskkill fail, which is fine.
    let _ = cmd.args(["/F", "/PID", &pid.to_string()]).output();
}

/// Asks our child process `child` to stop politely: SIGTERM on Unix. Windows has no polite
/// signal for a console-less child, so there it is ended at once.
pub fn stop_child(child: &mut Child) -> Result<()> {
    if cfg!(unix) {
        terminate(child.id())
    } else {
        Ok(child.kill()?)
    }
}

/// Whether a child stopped by [`stop_child`] can be judged by its exit status (on Windows it
/// was killed, so it cannot).
pub const STOPS_POLITELY: bool = cfg!(unix);

/// Makes `to` a symbolic link with the same target as the link `from`.
#[cfg(unix)]
pub fn copy_symlink(from: &Path, to: &Path) -> Result<()> {
    std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
        .with_context(|| format!("cannot link {}", to.display()))
}

/// See the Unix version: only Wine prefixes hold links we copy, and Wine prefixes live on
/// Linux, so on Windows this is an error.
#[cfg(windows)]
pub fn copy_symlink(from: &Path, _to: &Path) -> Result<()> {
    anyhow::bail!(
        "cannot copy the link {}: Wine prefixes are made on Linux",
        from.display()
    )
}
