//! `LockManager`: the one-agent-per-storage-path guarantee.
//!
//! The OS lock on `agent.lock` decides ownership: it dies with its process, so a crashed agent
//! never blocks the next start, and a stale file is simply taken over. The file's content (PID,
//! process start time, heartbeat timestamp, version) is for other processes to read. This module
//! must never decide what to do when the lock is held (exit, wait, ask over IPC): callers do.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cms_protocol::{BUILD_VERSION, LockRecord};
use tokio_util::sync::CancellationToken;

use cms_platform::clock;
use cms_platform::fs::open_no_follow;
use cms_platform::layout::lock_path;
use cms_platform::lock_file::{HolderHealth, holder_health, read_lock_record};

use crate::system;

/// How often to retry when the file was swapped under us between open and lock.
const OPEN_ATTEMPTS: usize = 5;
/// A holder whose heartbeat is older than this is reported as possibly hung (never killed).
pub const DEFAULT_HUNG_AFTER: Duration = Duration::from_secs(5 * 60);
/// Pause between attempts of [`LockManager::acquire_with_timeout`]: `--force` waits there
/// while the old instance shuts down, so this is part of the handover time.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Why the lock could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file system refused; the message names the file.
    #[error("cannot use lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The lock file kept being replaced while we tried to lock it.
    #[error("lock file {0} kept changing while it was being locked; is another agent starting?")]
    Unstable(PathBuf),
}

impl LockError {
    /// Whether the disk was full: the lock is fine, its record could not be written.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, LockError::Io { source, .. } if cms_platform::fs::is_out_of_space(source))
    }
}

/// Outcome of [`LockManager::acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// This process now owns the lock.
    Acquired,
    /// A live process owns it; its record, when readable.
    HeldBy(Option<LockRecord>),
}

/// Owns `agent.lock` while the agent runs; releases it on `release()` and on drop.
#[derive(Debug)]
pub struct LockManager {
    path: PathBuf,
    held: Mutex<Option<File>>,
    hung_after: Duration,
}

impl LockManager {
    /// A manager for `storage_path/agent.lock`; nothing is touched until `acquire`.
    pub fn new(storage_path: &Path) -> Self {
        LockManager {
            path: lock_path(storage_path),
            held: Mutex::new(None),
            hung_after: DEFAULT_HUNG_AFTER,
        }
    }

    /// Sets the heartbeat age past which a live holder is reported as possibly hung (it
    /// should be several heartbeat intervals).
    pub fn with_hung_after(mut self, hung_after: Duration) -> Self {
        self.hung_after = hung_after;
        self
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock if no live process holds it, taking over a stale file left by a crash.
    pub fn acquire(&self) -> Result<Acquire, LockError> {
        let outcome = self.attempt()?;
        if let Acquire::HeldBy(record) = &outcome {
            self.log_holder(record.as_ref());
        }
        Ok(outcome)
    }

    /// [`LockManager::acquire`] without logging the holder.
    fn attempt(&self) -> Result<Acquire, LockError> {
        for _ in 0..OPEN_ATTEMPTS {
            let mut file = self.open()?;
            if !system::try_lock_exclusive(&file).map_err(|e| self.io(e))? {
                return Ok(Acquire::HeldBy(read_lock_record(&self.path)));
            }
            if !system::is_same_file(&file, &self.path).map_err(|e| self.io(e))? {
                continue; // the previous owner deleted it between our open and lock
            }
            log_takeover(&mut file);
            write_record(&mut file).map_err(|e| self.io(e))?;
            *self.lock_held() = Some(file);
            tracing::info!(path = %self.path.display(), pid = std::process::id(), "lock acquired");
            return Ok(Acquire::Acquired);
        }
        Err(LockError::Unstable(self.path.clone()))
    }

    /// Keeps trying [`LockManager::acquire`] until it succeeds or `timeout` passes (`--force`
    /// waits here while the old instance shuts down); the last holder is returned on timeout.
    /// The holder is logged once, not at every attempt.
    pub fn acquire_with_timeout(&self, timeout: Duration) -> Result<Acquire, LockError> {
        let deadline = Instant::now() + timeout;
        let mut outcome = self.acquire()?;
        while matches!(outcome, Acquire::HeldBy(_)) && Instant::now() < deadline {
            std::thread::sleep(RETRY_PAUSE);
            outcome = self.attempt()?;
        }
        Ok(outcome)
    }

    /// Logs who holds the lock, and warns when that holder looks hung. Never acts on it.
    fn log_holder(&self, record: Option<&LockRecord>) {
        let Some(record) = record else {
            tracing::info!(path = %self.path.display(), "lock held by another process (record unreadable)");
            return;
        };
        match holder_health(record, self.hung_after) {
            HolderHealth::Hung { age_secs } => tracing::warn!(
                holder_pid = record.pid,
                heartbeat_age_secs = age_secs,
                "the lock holder is alive but its heartbeat is stale; it may be hung (not killing it)"
            ),
            health => {
                tracing::info!(holder_pid = record.pid, holder = ?health, "lock held by another process")
            }
        }
    }

    /// Rewrites the heartbeat timestamp so readers can tell a live owner from a hung one.
    pub fn refresh(&self) -> Result<(), LockError> {
        let mut held = self.lock_held();
        let Some(file) = held.as_mut() else {
            return Ok(());
        };
        if !system::is_same_file(file, &self.path).map_err(|e| self.io(e))? {
            return Err(self.io(io::Error::new(
                io::ErrorKind::NotFound,
                "the lock file was removed or replaced by another process",
            )));
        }
        write_record(file).map_err(|e| self.io(e))
    }

    /// Refreshes the timestamp every `every` until `cancel`; a lock that cannot be kept
    /// cancels the agent, because two agents must never run at once.
    pub async fn run_heartbeat(&self, every: Duration, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.refresh() {
                Ok(()) => tracing::debug!("lock heartbeat written"),
                // The OS lock is still ours; only the timestamp could not be written.
                Err(err) if err.is_out_of_space() => {
                    tracing::warn!(error = %err, "disk full: lock heartbeat not written; still holding the lock");
                }
                Err(err) => {
                    tracing::error!(error = %err, "lost the instance lock; stopping");
                    cancel.cancel();
                    return;
                }
            }
        }
    }

    /// Deletes the file and drops the OS lock; safe to call more than once.
    pub fn release(&self) {
        let Some(file) = self.lock_held().take() else {
            return;
        };
        // Delete while still locked, so no other process can lock the old file and think it
        // owns the path; `acquire` re-checks the path's identity for the same reason.
        if let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot delete lock file");
        }
        drop(file);
        tracing::info!(path = %self.path.display(), "lock released");
    }

    /// Creates the file exclusively; when it exists, opens it so a stale one can
    /// be taken over. The OS lock, not the creation, decides who owns it.
    fn open(&self) -> Result<File, LockError> {
        let created = open_no_follow(
            &self.path,
            OpenOptions::new().read(true).write(true).create_new(true),
        );
        match created {
            Ok(file) => return Ok(file),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(self.io(err)),
        }
        open_no_follow(
            &self.path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
        .map_err(|e| self.io(e))
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn io(&self, source: io::Error) -> LockError {
        LockError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for LockManager {
    fn drop(&mut self) {
        self.release();
    }
}

fn log_takeover(file: &mut File) {
    let mut previous = String::new();
    if file.read_to_string(&mut previous).is_err() || previous.trim().is_empty() {
        return;
    }
    match serde_json::from_str::<LockRecord>(&previous) {
        Ok(record) => tracing::warn!(
            stale_pid = record.pid,
            last_heartbeat = %record.timestamp,
            "recovered a stale lock left by an agent that is gone"
        ),
        Err(_) => tracing::warn!("recovered a stale lock file with unreadable content"),
    }
}

fn write_record(file: &mut File) -> io::Result<()> {
    let pid = std::process::id();
    let record = LockRecord {
        pid,
        process_start: system::process_start_time(pid).unwrap_or(0),
        timestamp: clock::now_rfc3339(),
        version: BUILD_VERSION.to_owned(),
    };
    let bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
    // Overwrite, then cut: the blocks of the previous record are reused, so a heartbeat still
    // lands on a full disk.
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_manager_on_the_same_path_sees_the_first_as_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = LockManager::new(dir.path());
        assert!(matches!(first.acquire().unwrap(), Acquire::Acquired));
        let second = LockManager::new(dir.path());
        match second.acquire().unwrap() {
            Acquire::HeldBy(Some(record)) => assert_eq!(record.pid, std::process::id()),
            other => panic!("expected HeldBy with a record, got {other:?}"),
        }
    }

    #[test]
    fn release_deletes_the_file_and_frees_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = LockManager::new(dir.path());
        assert!(matches!(first.acquire().unwrap(), Acquire::Acquired));
        first.release();
        assert!(!first.path().exists());
        let second = LockManager::new(dir.path());
        assert!(matches!(second.acquire().unwrap(), Acquire::Acquired));
    }

    #[test]
    fn a_stale_file_without_a_live_owner_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let stale = r#"{"pid":999999,"process_start":1,"timestamp":"2020-01-01T00:00:00Z","version":"0.0.1"}"#;
        std::fs::write(lock_path(dir.path()), stale).unwrap();
        let manager = LockManager::new(dir.path());
        assert!(matches!(manager.acquire().unwrap(), Acquire::Acquired));
        let record = read_lock_record(manager.path()).unwrap();
        assert_eq!(record.pid, std::process::id());
        assert_eq!(record.version, BUILD_VERSION);
    }

    /// Set in the child process of the two-process test: the folder to lock.
    const CHILD_DIR_VAR: &str = "CMS_TEST_LOCK_CHILD_DIR";

    #[test]
    fn a_lock_held_by_another_process_is_held_until_that_process_dies() {
        if let Some(dir) = std::env::var_os(CHILD_DIR_VAR) {
            // Child: take the lock, say so, and hold it until killed.
            let manager = LockManager::new(Path::new(&dir));
            assert!(matches!(manager.acquire().unwrap(), Acquire::Acquired));
            println!("LOCKED");
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "system::lock_manager::tests::a_lock_held_by_another_process_is_held_until_that_process_dies",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("LOCKED") {
            line.clear();
            assert_ne!(
                io::BufRead::read_line(&mut stdout, &mut line).unwrap(),
                0,
                "child ended"
            );
        }
        let manager = LockManager::new(dir.path());
        match manager.acquire().unwrap() {
            Acquire::HeldBy(Some(record)) => assert_eq!(record.pid, child.id()),
            other => panic!("expected the child to hold the lock, got {other:?}"),
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let outcome = manager
            .acquire_with_timeout(Duration::from_secs(20))
            .unwrap();
        assert!(
            matches!(outcome, Acquire::Acquired),
            "a dead holder's lock is taken over"
        );
        assert_eq!(
            read_lock_record(manager.path()).unwrap().pid,
            std::process::id()
        );
    }

    #[test]
    fn acquire_with_timeout_waits_for_the_holder_to_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = std::sync::Arc::new(LockManager::new(dir.path()));
        assert!(matches!(first.acquire().unwrap(), Acquire::Acquired));
        let second = LockManager::new(dir.path());
        let started = Instant::now();
        let outcome = second
            .acquire_with_timeout(Duration::from_millis(300))
            .unwrap();
        assert!(matches!(outcome, Acquire::HeldBy(_)));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let releaser = std::thread::spawn({
            let first = first.clone();
            move || {
                std::thread::sleep(Duration::from_millis(400));
                first.release();
            }
        });
        let outcome = second
            .acquire_with_timeout(Duration::from_secs(20))
            .unwrap();
        assert!(matches!(outcome, Acquire::Acquired));
        releaser.join().unwrap();
    }

    #[test]
    fn refresh_moves_the_timestamp_and_notices_a_deleted_file() {
        let dir = tempfile::tempdir().unwrap();
        let manager = LockManager::new(dir.path());
        manager.acquire().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let before = read_lock_record(manager.path()).unwrap().timestamp;
        manager.refresh().unwrap();
        assert_ne!(read_lock_record(manager.path()).unwrap().timestamp, before);
        #[cfg(windows)]
        if system::running_under_wine() {
            return; // Wine still opens a delete-pending file by name; Windows does not
        }
        std::fs::remove_file(manager.path()).unwrap();
        assert!(manager.refresh().is_err());
    }
}
