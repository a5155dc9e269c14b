//! What the last update left: the journal the updater writes in `updates/`, and its settlement
//! at the next start (docs/ARCHITECTURE.md, "One self-update, end to end", step 9).
//!
//! [`settle_journal`] finishes, undoes or reports an update that the updater left behind; it
//! must only be called once that updater has exited ([`updater_running`]). This module never
//! touches config.json or the backend: it says what happened, and the caller records and
//! reports it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cms_platform::fs::read_no_follow;
use cms_platform::layout;
use cms_protocol::BUILD_VERSION;
use cms_protocol::update::{UpdateJournal, UpdatePhase};

use super::steps::clear_updates_dir;
use crate::core::storage::StateManager;
use crate::system;

/// What an earlier update left for this start to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The updater verified this version; the agent records it.
    Completed {
        /// The version now running.
        version: String,
    },
    /// The new version was unhealthy and the old one was restored.
    RolledBack {
        /// The version that failed.
        version: String,
        /// Why.
        reason: String,
    },
    /// The updater died after the swap; this (new) agent finished the cleanup itself.
    FinishedByAgent {
        /// The version now running.
        version: String,
        /// Where the updater stopped.
        phase: UpdatePhase,
    },
    /// The updater died while rolling back; `.old` (the last good version) is kept beside the
    /// exe for an operator, because this process may be the version that failed.
    RollbackInterrupted {
        /// The version that failed its check.
        version: String,
        /// Why it failed.
        reason: String,
    },
    /// The updater gave up before the swap (staging, install-volume space, the swap itself):
    /// the release never ran, so it is retried later rather than refused.
    Aborted {
        /// The version that was not installed.
        version: String,
        /// Why.
        reason: String,
    },
    /// The updater died before the new version ran; the old one runs and cleaned up.
    Interrupted {
        /// The version that was not installed.
        version: String,
        /// Where the updater stopped.
        phase: UpdatePhase,
    },
}

/// The journal in `updates/`, if an update left one.
pub fn read_journal(storage: &StateManager) -> Option<UpdateJournal> {
    let bytes = read_no_follow(&layout::journal_path(storage.storage_path())).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the updater that wrote `journal` still runs (PID and start time both match).
pub fn updater_running(journal: &UpdateJournal) -> bool {
    system::process_start_time(journal.updater_pid) == Some(journal.updater_start)
}

/// Finishes or undoes what the journal describes (the updater must be gone), removes the
/// journal and leftovers, and says what happened.
pub fn settle_journal(storage: &StateManager, journal: &UpdateJournal) -> Settlement {
    let exe = PathBuf::from(&journal.exe_path);
    let running_new = journal.new_version == BUILD_VERSION;
    let settlement = match journal.phase {
        UpdatePhase::Succeeded => Settlement::Completed {
            version: journal.new_version.clone(),
        },
        UpdatePhase::RolledBack => Settlement::RolledBack {
            version: journal.new_version.clone(),
            reason: journal.reason.clone().unwrap_or_else(|| "unknown".into()),
        },
        UpdatePhase::RollingBack => Settlement::RollbackInterrupted {
            version: journal.new_version.clone(),
            reason: journal.reason.clone().unwrap_or_else(|| "unknown".into()),
        },
        UpdatePhase::Aborted => Settlement::Aborted {
            version: journal.new_version.clone(),
            reason: journal.reason.clone().unwrap_or_else(|| "unknown".into()),
        },
        phase if running_new => Settlement::FinishedByAgent {
            version: journal.new_version.clone(),
            phase,
        },
        phase => Settlement::Interrupted {
            version: journal.new_version.clone(),
            phase,
        },
    };
    if !matches!(settlement, Settlement::RollbackInterrupted { .. }) {
        remove_leftovers(&exe);
    }
    clear_updates_dir(&storage.updates_dir(), None);
    if let Err(err) = fs::remove_file(layout::journal_path(storage.storage_path())) {
        tracing::warn!(error = %err, "cannot remove the update journal");
    }
    settlement
}

/// Longest wait before an aborted update is tried again.
const MAX_UPDATE_RETRY: Duration = Duration::from_secs(24 * 3600);

/// Wait before the next try after `aborted` aborted attempts: `base`, doubling with each
/// abort, at most a day.
pub fn retry_delay(aborted: u32, base: Duration) -> Duration {
    let doublings = aborted.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings).min(MAX_UPDATE_RETRY)
}

/// `.old` and `.new` beside the exe: once settled, the running exe is the one to keep.
fn remove_leftovers(exe: &Path) {
    for path in [layout::backup_path(exe), layout::staged_path(exe)] {
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove an update leftover");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aborted_update_waits_longer_after_each_abort_but_at_most_a_day() {
        let base = Duration::from_secs(600);
        assert_eq!(retry_delay(1, base), base);
        assert_eq!(retry_delay(2, base), base * 2);
        assert_eq!(retry_delay(3, base), base * 4);
        assert_eq!(retry_delay(40, base), MAX_UPDATE_RETRY);
    }
}
