//! `StateManager`: where the agent keeps its files, and how it writes them safely.
//!
//! The storage path follows docs/CONTRACT.md ("Files on disk"): `--data-dir`/`CMS_AGENT_DATA_DIR`, else the
//! per-machine folder for the machine-wide agent (elevated, not `--per-user`), else the
//! per-user one; it and `logs/` are private to their owner (0700 on Linux, a protected DACL
//! for the machine-wide folder on Windows). An elevated agent (root) uses a folder only once it
//! is its own: one someone else made or linked (a standard user may create
//! `C:\ProgramData\CMSAgent` before the install) is taken over, links removed and never
//! followed, with a warning naming the folder and its previous owner, or the agent exits 2
//! naming them (`system::secure_data_dir`). Nothing is ever written next to the executable.
//! Every file that must survive a crash mid-write goes through
//! `cms_platform::fs::write_atomic`; the names the updater must find too come from
//! `cms_platform::layout`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cms_platform::layout;

use crate::system;

/// Why the storage path cannot be used; the agent exits with code 2 on these.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Neither an override nor the environment says where the data lives.
    #[error(
        "cannot choose a storage path: the environment has no PROGRAMDATA/LOCALAPPDATA/HOME; pass --data-dir DIR"
    )]
    NoDefault,
    /// The folder cannot be created or protected.
    #[error("cannot prepare storage path {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// The agent's storage path and the well-known files inside it.
#[derive(Debug, Clone)]
pub struct StateManager {
    storage_path: PathBuf,
    machine_wide: bool,
    takeover: Option<String>,
}

impl StateManager {
    /// Chooses the storage path (override first) of the machine-wide agent or the user's,
    /// creates it and restricts it to its owner.
    pub fn new(override_dir: Option<PathBuf>, machine_wide: bool) -> Result<Self, StorageError> {
        let storage_path = match override_dir {
            Some(dir) => absolute(dir),
            None => system::default_data_dir(machine_wide).ok_or(StorageError::NoDefault)?,
        };
        let mut manager = StateManager {
            storage_path,
            machine_wide,
            takeover: None,
        };
        manager.ensure_directory_permissions()?;
        Ok(manager)
    }

    /// The storage path itself.
    pub fn storage_path(&self) -> &Path {
        &self.storage_path
    }

    /// Whether this is the machine-wide agent's storage (its IPC endpoint, secret and
    /// autostart entry are the machine's) rather than a user's.
    pub fn machine_wide(&self) -> bool {
        self.machine_wide
    }

    /// Whose key seals this storage's secrets (config.json's credential, the IPC secret): the
    /// machine's for the machine-wide agent, else the user's.
    pub fn secret_scope(&self) -> system::SecretScope {
        system::SecretScope::current(self.machine_wide)
    }

    /// The warning of a data folder someone else had made or linked and this start took over
    /// (printed to stderr when it happened, before the log exists), for the log once it runs.
    pub fn takeover_warning(&self) -> Option<&str> {
        self.takeover.as_deref()
    }

    /// `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.storage_path.join("config.json")
    }

    /// `logs/`: the agent's and the updater's log files.
    pub fn logs_dir(&self) -> PathBuf {
        layout::logs_dir(&self.storage_path)
    }

    /// `error_reports.jsonl`: reports waiting for the backend.
    pub fn error_buffer_path(&self) -> PathBuf {
        self.storage_path.join("error_reports.jsonl")
    }

    /// `updates/`: downloads in progress.
    pub fn updates_dir(&self) -> PathBuf {
        layout::updates_dir(&self.storage_path)
    }

    /// `tuf/`: the pinned root and the last verified release metadata.
    pub fn tuf_dir(&self) -> PathBuf {
        self.storage_path.join("tuf")
    }

    fn ensure_directory_permissions(&mut self) -> Result<(), StorageError> {
        let io_err = |source| StorageError::Io {
            path: self.storage_path.clone(),
            source,
        };
        if system::is_running_as_admin() {
            let report =
                system::secure_data_dir(&self.storage_path, self.machine_wide).map_err(io_err)?;
            self.takeover = takeover_warning(&self.storage_path, &report.changes);
            if let Some(warning) = &self.takeover {
                // The log lives in this folder and starts after it: stderr has it now.
                eprintln!("cms_agent: warning: {warning}");
                tracing::warn!("{warning}");
            }
        } else {
            fs::create_dir_all(&self.storage_path).map_err(io_err)?;
        }
        // Inside a folder only its owner can reach now: `logs/` may be made, then protected.
        system::set_directory_acls(&self.storage_path, self.machine_wide).map_err(io_err)?;
        fs::create_dir_all(self.logs_dir()).map_err(io_err)?;
        system::set_directory_acls(&self.logs_dir(), self.machine_wide).map_err(io_err)?;
        tracing::debug!(path = %self.storage_path.display(), "storage path ready");
        Ok(())
    }
}

/// The warning for a data folder someone else had made or linked, naming the folder and whose
/// it was; `None` when nothing had to change.
fn takeover_warning(folder: &Path, changes: &[system::DataDirChange]) -> Option<String> {
    if changes.is_empty() {
        return None;
    }
    let owner = changes.iter().find_map(|change| match change {
        system::DataDirChange::TakenOver {
            path,
            previous_owner,
        } if path == folder => Some(previous_owner.as_str()),
        _ => None,
    });
    let whose = match owner {
        Some(owner) => format!("was owned by {owner}"),
        None => "held something that is not the agent's".to_owned(),
    };
    let done: Vec<String> = changes.iter().map(ToString::to_string).collect();
    Some(format!(
        "the data folder {} {whose}; taken over: {}",
        folder.display(),
        done.join("; ")
    ))
}

fn absolute(dir: PathBuf) -> PathBuf {
    std::path::absolute(&dir).unwrap_or(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_is_created_and_holds_the_well_known_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage = StateManager::new(Some(dir.path().join("nested/data")), false).unwrap();
        assert!(storage.storage_path().is_dir());
        assert!(storage.logs_dir().is_dir());
        assert_eq!(
            storage.config_path(),
            storage.storage_path().join("config.json")
        );
    }

    #[test]
    fn the_takeover_warning_names_the_folder_and_its_previous_owner() {
        let folder = Path::new("/var/lib/cms-agent");
        assert_eq!(takeover_warning(folder, &[]), None);
        let changes = [
            system::DataDirChange::TakenOver {
                path: folder.to_path_buf(),
                previous_owner: "uid 65534".into(),
            },
            system::DataDirChange::Removed {
                path: folder.join("logs"),
                what: "a link",
            },
        ];
        let warning = takeover_warning(folder, &changes).unwrap();
        assert!(
            warning.starts_with("the data folder /var/lib/cms-agent was owned by uid 65534;"),
            "{warning}"
        );
        let removed = format!("removed {} (a link", folder.join("logs").display());
        assert!(warning.contains(&removed), "{warning}");
        let only_a_link = takeover_warning(folder, &changes[1..]).unwrap();
        assert!(only_a_link.contains("held something"), "{only_a_link}");
    }
}
