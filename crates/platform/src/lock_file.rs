//! The record in `agent.lock`: who holds the single-instance lock, since when, at which version.
//!
//! The agent writes it (its `LockManager` owns the OS lock); the updater, `--force` and
//! `--status` read it. This module only reads and judges records: it never takes or breaks a
//! lock, and never kills the process a record names.

use std::path::Path;
use std::time::Duration;

use cms_protocol::LockRecord;

use crate::system;

/// What the record of a lock held by another process says about that process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderHealth {
    /// Its PID runs with the recorded start time and its heartbeat is recent.
    Alive,
    /// It runs, but its heartbeat is `age_secs` old: it may be hung. Reported, never killed.
    Hung {
        /// Seconds since the last heartbeat.
        age_secs: u64,
    },
    /// The record names no running process (PID gone or reused), or cannot be read.
    Unknown,
}

/// Reads the record of whoever holds (or held) the lock at `path`; `None` when absent or torn.
pub fn read_lock_record(path: &Path) -> Option<LockRecord> {
    let text = crate::fs::read_to_string_no_follow(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Judges a holder's record: is its process the recorded one (PID plus start time, so a reused
/// PID does not count), and is its heartbeat younger than `hung_after`?
pub fn holder_health(record: &LockRecord, hung_after: Duration) -> HolderHealth {
    let started = system::process_start_time(record.pid);
    if started.is_none() || (record.process_start != 0 && started != Some(record.process_start)) {
        return HolderHealth::Unknown;
    }
    let Some(age) = age_of(&record.timestamp) else {
        return HolderHealth::Unknown;
    };
    if age > hung_after {
        HolderHealth::Hung {
            age_secs: age.as_secs(),
        }
    } else {
        HolderHealth::Alive
    }
}

/// How long ago an RFC 3339 timestamp was; `None` when unreadable (a future one is age 0).
fn age_of(timestamp: &str) -> Option<Duration> {
    use time::format_description::well_known::Rfc3339;
    let then = time::OffsetDateTime::parse(timestamp, &Rfc3339).ok()?;
    let age = time::OffsetDateTime::now_utc() - then;
    Some(age.try_into().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    #[test]
    fn holder_health_tells_alive_hung_and_gone_apart() {
        let pid = std::process::id();
        let record = |pid, process_start, timestamp: &str| LockRecord {
            pid,
            process_start,
            timestamp: timestamp.into(),
            version: "x".into(),
        };
        let start = system::process_start_time(pid).unwrap();
        let hour = Duration::from_secs(3600);
        let fresh = record(pid, start, &clock::now_rfc3339());
        assert_eq!(holder_health(&fresh, hour), HolderHealth::Alive);
        let old = record(pid, start, "2020-01-01T00:00:00Z");
        assert!(
            matches!(holder_health(&old, hour), HolderHealth::Hung { age_secs } if age_secs > 3600)
        );
        // Same PID, different start time: the PID was reused, the record's owner is gone.
        let reused = record(pid, start.wrapping_add(1), &clock::now_rfc3339());
        assert_eq!(holder_health(&reused, hour), HolderHealth::Unknown);
        let gone = record(u32::MAX, 1, &clock::now_rfc3339());
        assert_eq!(holder_health(&gone, hour), HolderHealth::Unknown);
    }
}
