//! What travels between the server, the agent and the updater during a self-update: the
//! package layout and the update journal.
//!
//! The journal (`updates/update-journal.json`) is how an update survives a kill at any moment:
//! the updater records each phase before acting on it, and whichever process starts next (the
//! new agent, the old one after a rollback, or an agent started by autostart after the updater
//! died) reads it to finish, undo or report the update. This module only defines the records.

use serde::{Deserialize, Serialize};

/// Name of the manifest inside a release package.
pub const MANIFEST_NAME: &str = "manifest.json";

/// Name of the journal file inside the agent's `updates/` folder.
pub const JOURNAL_NAME: &str = "update-journal.json";

/// The small manifest every release package carries next to the two executables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageManifest {
    /// Version of the agent and updater inside.
    pub version: String,
    /// Platform the executables are built for.
    pub platform: String,
    /// File name of the agent inside the package.
    pub agent: String,
    /// File name of the updater inside the package.
    pub updater: String,
}

/// File names of the two executables for `platform` (`.exe` on Windows).
pub fn executable_names(platform: &str) -> (&'static str, &'static str) {
    if platform.starts_with("windows") {
        ("cms_agent.exe", "updater.exe")
    } else {
        ("cms_agent", "updater")
    }
}

/// File name of a release package; also its name in the signed TUF targets metadata.
pub fn package_file_name(version: &str, platform: &str) -> String {
    format!("cms_agent-{version}-{platform}.zip")
}

/// Keys of the `custom` object of each TUF target: what the signed metadata says the package
/// holds, so a renamed or replayed package cannot pass for another version.
pub mod target_custom {
    /// The release version (`X.Y.Z`).
    pub const VERSION: &str = "version";
    /// The platform (`linux-x86_64`, `windows-x86_64`).
    pub const PLATFORM: &str = "platform";
}

/// How far an update has come; each phase is written before it is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// The updater started and waits for the old agent to exit.
    WaitingForOldAgent,
    /// The old exe is being backed up and the new one moved in.
    Swapping,
    /// The new agent was started and is being checked.
    Verifying,
    /// The new agent failed its check; the old exe is being restored.
    RollingBack,
    /// Verified; `.old` and the package are being removed.
    Succeeded,
    /// The old version runs again.
    RolledBack,
    /// The update stopped before the swap (staging failed, the install volume is full, the
    /// journal or the swap could not be written) and the old agent runs again, unchanged: the
    /// release never ran, so it is retried later instead of being refused for good.
    Aborted,
}

/// The update journal (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateJournal {
    /// Phase reached.
    pub phase: UpdatePhase,
    /// Version being installed.
    pub new_version: String,
    /// Version being replaced.
    pub old_version: String,
    /// PID of the updater writing the journal.
    pub updater_pid: u32,
    /// Start time of that process (see [`crate::LockRecord::process_start`]).
    pub updater_start: u64,
    /// The install path of the agent exe.
    pub exe_path: String,
    /// Why a rollback happened, for the error report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What `backend-contact.json` in the storage path holds: the last agent process whose heartbeat
/// the backend accepted. The updater reads it to learn whether the old agent could reach the
/// backend, and then requires the same of the new one before it calls it healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendContact {
    /// PID of that agent process.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// When the backend accepted its heartbeat (RFC 3339, UTC).
    pub accepted_at: String,
}
