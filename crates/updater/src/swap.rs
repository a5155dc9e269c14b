//! The swap: at no instant is there no runnable agent at the install path.
//!
//! The current exe is *copied* to `<exe>.old` (the install path keeps a runnable exe) and the
//! new one is staged as `<exe>.new` in the same folder, both while the old agent may still be
//! shutting down ([`back_up`]); once it has exited, the new exe is renamed over the old one: one
//! atomic rename ([`install`]), so the machine is without an agent only for that rename and the
//! new agent's start. A rollback renames `.old` back the same way. Renames are retried for a
//! bounded time because antivirus scanners briefly lock fresh executables (rustup retries for
//! the same reason); each retry is logged.

use std::fs;
use std::io;
use std::path::Path;

use cms_platform::layout::{backup_path, staged_path};
use std::time::{Duration, Instant};

/// How long a rename is retried while the file is locked by someone else.
const RETRY_FOR: Duration = Duration::from_secs(28);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(10);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Copies `exe` to its backup, flushed to disk; reading a running exe is allowed everywhere.
pub fn back_up(exe: &Path) -> io::Result<()> {
    let backup = backup_path(exe);
    copy_synced(exe, &backup)?;
    tracing::info!(backup = %backup.display(), "current agent backed up");
    Ok(())
}

/// Removes the staged exe and the backup: the update stopped before the swap.
pub fn discard(exe: &Path) {
    for path in [staged_path(exe), backup_path(exe)] {
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove");
            }
            _ => {}
        }
    }
}

/// Moves the staged new version over `exe` (after [`back_up`]).
pub fn install(exe: &Path) -> io::Result<()> {
    retry("move the new agent into place", || {
        fs::rename(staged_path(exe), exe)
    })?;
    tracing::info!(exe = %exe.display(), "new agent in place");
    Ok(())
}

/// Puts the backup back over `exe`.
pub fn restore(exe: &Path) -> io::Result<()> {
    retry("restore the previous agent", || {
        fs::rename(backup_path(exe), exe)
    })?;
    tracing::info!(exe = %exe.display(), "previous agent restored");
    Ok(())
}

/// Copies `from` to `to`, whatever was at `to` removed first (a link there is removed, not
/// copied through).
fn copy_synced(from: &Path, to: &Path) -> io::Result<()> {
    match fs::remove_file(to) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    retry("back up the current agent", || fs::copy(from, to))?;
    // Flushing needs write access on Windows (FlushFileBuffers), even for a fresh copy.
    fs::OpenOptions::new().write(true).open(to)?.sync_all()
}

/// Runs `op` until it succeeds or [`RETRY_FOR`] has passed, backing off between attempts.
fn retry<T>(what: &str, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        match op() {
            Ok(value) => return Ok(value),
            Err(err) if err.kind() == io::ErrorKind::NotFound || Instant::now() >= deadline => {
                tracing::error!(what, attempt, error = %err, "giving up");
                return Err(err);
            }
            Err(err) => {
                tracing::warn!(what, attempt, error = %err, retry_in_ms = delay.as_millis() as u64, "file busy; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_link_where_the_backup_goes_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cms_agent");
        let outside = dir.path().join("outside");
        fs::write(&exe, b"old").unwrap();
        fs::write(&outside, b"not yours").unwrap();
        std::os::unix::fs::symlink(&outside, backup_path(&exe)).unwrap();
        back_up(&exe).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"not yours");
        assert_eq!(fs::read(backup_path(&exe)).unwrap(), b"old");
    }

    #[test]
    fn install_keeps_a_backup_and_restore_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cms_agent");
        fs::write(&exe, b"old").unwrap();
        fs::write(staged_path(&exe), b"new").unwrap();
        back_up(&exe).unwrap();
        install(&exe).unwrap();
        assert_eq!(fs::read(&exe).unwrap(), b"new");
        assert_eq!(fs::read(backup_path(&exe)).unwrap(), b"old");
        assert!(!staged_path(&exe).exists());
        restore(&exe).unwrap();
        assert_eq!(fs::read(&exe).unwrap(), b"old");
        assert!(!backup_path(&exe).exists());
    }

    #[test]
    fn discard_removes_what_was_prepared_and_keeps_the_exe() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cms_agent");
        fs::write(&exe, b"old").unwrap();
        fs::write(staged_path(&exe), b"new").unwrap();
        back_up(&exe).unwrap();
        discard(&exe);
        discard(&exe); // nothing left to remove is fine
        assert_eq!(fs::read(&exe).unwrap(), b"old");
        assert!(!staged_path(&exe).exists() && !backup_path(&exe).exists());
    }

    #[test]
    fn a_missing_staged_file_fails_at_once_and_leaves_the_exe() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cms_agent");
        fs::write(&exe, b"old").unwrap();
        let started = Instant::now();
        assert!(install(&exe).is_err());
        assert!(started.elapsed() < RETRY_FOR);
        assert_eq!(fs::read(&exe).unwrap(), b"old");
    }
}
