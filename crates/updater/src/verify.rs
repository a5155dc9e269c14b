//! Proving the new agent healthy: the plan's `verify_new_agent`.
//!
//! Healthy means: the process is alive, `agent.lock` names its PID with the expected version and
//! a fresh heartbeat timestamp, the backend accepted a heartbeat from it (required when the old
//! agent had one accepted: a release that cannot reach the backend could never be sent a fix),
//! and it is still so after a grace period. Anything else is a reason to roll back, returned as
//! text for the journal and the error report.

use std::path::Path;
use std::time::{Duration, Instant};

use cms_platform::contact::read_backend_contact;
use cms_platform::lock_file::read_lock_record;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A lock timestamp older than this is not a live heartbeat.
const FRESH_FOR: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(100);

/// How long the checks may take (configurable for tests through the environment).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the new agent to take the lock.
    pub lock: Duration,
    /// For the backend to accept its heartbeat, once it holds the lock.
    pub backend_contact: Duration,
    /// For it to stay healthy afterwards.
    pub grace: Duration,
}

/// What the new agent must show.
#[derive(Debug)]
pub struct Expected<'a> {
    /// `agent.lock` of the storage path.
    pub lock_path: &'a Path,
    /// The version being installed.
    pub version: &'a str,
    /// The storage path whose `backend-contact.json` must name the new agent, when the old
    /// one reached the backend; `None` when only local checks apply.
    pub backend_contact_in: Option<&'a Path>,
}

/// The new agent as the updater watches it: its own child, or the service's process.
pub trait Watched {
    /// Its PID.
    fn pid(&self) -> u32;
    /// `Err` (saying how) once it has exited.
    fn still_running(&mut self) -> Result<(), String>;
}

/// Checks the new agent; `Err` says why it is not healthy.
pub fn verify_new_agent(
    child: &mut impl Watched,
    expected: &Expected<'_>,
    timeouts: Timeouts,
) -> Result<(), String> {
    let pid = child.pid();
    let (lock_path, version) = (expected.lock_path, expected.version);
    wait_until(child, timeouts.lock, "take the lock", || {
        holds_lock(pid, lock_path, version)
    })?;
    tracing::info!(pid, version, "new agent holds the lock");
    if let Some(storage) = expected.backend_contact_in {
        let what = "have a heartbeat accepted by the backend (the old agent had)";
        wait_until(child, timeouts.backend_contact, what, || {
            Ok(reached_backend(pid, storage, version))
        })?;
        tracing::info!(
            pid,
            version,
            "the backend accepted the new agent's heartbeat"
        );
    }
    tracing::info!(pid, "grace period");
    let grace_end = Instant::now() + timeouts.grace;
    while Instant::now() < grace_end {
        child.still_running()?;
        std::thread::sleep(POLL);
    }
    if !holds_lock(pid, lock_path, version)? {
        return Err("new agent lost the lock during the grace period".into());
    }
    Ok(())
}

/// Polls `done` until it says yes while the agent runs; an error after `timeout`.
fn wait_until(
    child: &mut impl Watched,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        child.still_running()?;
        if Instant::now() >= deadline {
            return Err(format!("new agent did not {what} within {timeout:?}"));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Whether the storage path's backend-contact record names this process at this version.
fn reached_backend(pid: u32, storage: &Path, version: &str) -> bool {
    read_backend_contact(storage).is_some_and(|c| c.pid == pid && c.version == version)
}

/// Whether the lock names `pid`, `version` and a fresh timestamp; a different version under
/// our PID is an immediate failure (the wrong binary was started).
fn holds_lock(pid: u32, lock_path: &Path, version: &str) -> Result<bool, String> {
    let Some(record) = read_lock_record(lock_path) else {
        return Ok(false);
    };
    if record.pid != pid {
        return Ok(false);
    }
    if record.version != version {
        return Err(format!(
            "new agent reports version {} instead of {version}",
            record.version
        ));
    }
    Ok(is_fresh(&record.timestamp))
}

fn is_fresh(timestamp: &str) -> bool {
    OffsetDateTime::parse(timestamp, &Rfc3339).is_ok_and(|at| {
        let age = OffsetDateTime::now_utc() - at;
        age.whole_seconds().unsigned_abs() <= FRESH_FOR.as_secs()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_accepts_now_and_refuses_old_or_garbage() {
        let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
        assert!(is_fresh(&now));
        assert!(!is_fresh("2020-01-01T00:00:00Z"));
        assert!(!is_fresh("yesterday"));
    }
}
