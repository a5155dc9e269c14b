//! The names the agent and the updater must agree on, in one place: where each file lives in
//! the storage path (`docs/ARCHITECTURE.md`, "Files on disk") and beside the installed exe.
//!
//! Both programs build these paths only through this module; a name written anywhere else is
//! a name the other side may not know.

use std::path::{Path, PathBuf};

/// The single-instance lock file, in the storage path.
pub const LOCK_FILE_NAME: &str = "agent.lock";
/// The update journal, in `updates/`.
pub const JOURNAL_NAME: &str = "update-journal.json";
/// The updater's log file, in `logs/`.
pub const UPDATER_LOG_NAME: &str = "updater.log";
/// The agent's record of its last heartbeat the backend accepted, in the storage path.
pub const BACKEND_CONTACT_NAME: &str = "backend-contact.json";

/// `agent.lock` in `storage`.
pub fn lock_path(storage: &Path) -> PathBuf {
    storage.join(LOCK_FILE_NAME)
}

/// `logs/` in `storage`: the agent's and the updater's logs.
pub fn logs_dir(storage: &Path) -> PathBuf {
    storage.join("logs")
}

/// `updates/` in `storage`: downloads and the journal of an update in flight.
pub fn updates_dir(storage: &Path) -> PathBuf {
    storage.join("updates")
}

/// `updates/update-journal.json` in `storage`.
pub fn journal_path(storage: &Path) -> PathBuf {
    updates_dir(storage).join(JOURNAL_NAME)
}

/// `backend-contact.json` in `storage`: which agent process the backend last heard from.
pub fn backend_contact_path(storage: &Path) -> PathBuf {
    storage.join(BACKEND_CONTACT_NAME)
}

/// The storage path that holds `logs_dir` (the updater is given the logs folder).
pub fn storage_of_logs_dir(logs_dir: &Path) -> Option<&Path> {
    logs_dir.parent()
}

/// `<exe>.old`: the backup of the version being replaced, beside the installed exe.
pub fn backup_path(exe: &Path) -> PathBuf {
    with_suffix(exe, ".old")
}

/// `<exe>.new`: the new version staged beside the installed exe before it is moved in.
pub fn staged_path(exe: &Path) -> PathBuf {
    with_suffix(exe, ".new")
}

fn with_suffix(exe: &Path, suffix: &str) -> PathBuf {
    let mut name = exe.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_neighbours_keep_the_whole_file_name() {
        let exe = Path::new("/opt/cms/cms_agent.exe");
        assert_eq!(backup_path(exe), Path::new("/opt/cms/cms_agent.exe.old"));
        assert_eq!(staged_path(exe), Path::new("/opt/cms/cms_agent.exe.new"));
    }

    #[test]
    fn the_journal_and_the_logs_live_in_the_storage_path() {
        let storage = Path::new("/var/lib/cms-agent");
        assert_eq!(
            journal_path(storage),
            Path::new("/var/lib/cms-agent/updates/update-journal.json")
        );
        assert_eq!(storage_of_logs_dir(&logs_dir(storage)), Some(storage));
    }
}
