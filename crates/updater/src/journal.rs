//! The update journal, written before each phase so an interrupted update can be finished or
//! undone by whichever process starts next (see `cms_protocol::update`).

use std::io;
use std::path::{Path, PathBuf};

use cms_platform::fs::write_atomic;
use cms_platform::system;
use cms_protocol::update::{UpdateJournal, UpdatePhase};

/// The journal of this update run.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    record: UpdateJournal,
}

impl Journal {
    /// Starts the journal at `path` in the first phase.
    pub fn start(
        path: PathBuf,
        new_version: &str,
        old_version: &str,
        exe: &Path,
    ) -> io::Result<Self> {
        let pid = std::process::id();
        let record = UpdateJournal {
            phase: UpdatePhase::WaitingForOldAgent,
            new_version: new_version.to_owned(),
            old_version: old_version.to_owned(),
            updater_pid: pid,
            updater_start: system::process_start_time(pid).unwrap_or(0),
            exe_path: exe.display().to_string(),
            reason: None,
        };
        let journal = Journal { path, record };
        journal.save()?;
        Ok(journal)
    }

    /// Records `phase` (and why, for a rollback) before the caller acts on it.
    pub fn advance(&mut self, phase: UpdatePhase, reason: Option<String>) -> io::Result<()> {
        self.record.phase = phase;
        if reason.is_some() {
            self.record.reason = reason;
        }
        tracing::info!(phase = ?phase, "update phase");
        self.save()
    }

    fn save(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.record).map_err(io::Error::other)?;
        write_atomic(&self.path, &bytes)
    }
}
