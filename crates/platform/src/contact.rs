//! `backend-contact.json`: "the backend accepted a heartbeat from agent PID at version X".
//!
//! The agent records it after its first accepted heartbeat; the updater reads it to make its
//! health check more than local: when the old agent could reach the backend, the new one must
//! too before it counts as healthy (docs/ARCHITECTURE.md, "One self-update, end to end").
//! This module only reads and writes the record; it never talks to the backend itself.

use std::io;
use std::path::Path;

use cms_protocol::update::BackendContact;

use crate::clock;
use crate::fs::{read_no_follow, write_atomic};
use crate::layout::backend_contact_path;

/// Records that the backend just accepted a heartbeat from this process at `version`.
pub fn record_backend_contact(storage: &Path, version: &str) -> io::Result<()> {
    let record = BackendContact {
        pid: std::process::id(),
        version: version.to_owned(),
        accepted_at: clock::now_rfc3339(),
    };
    let bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
    write_atomic(&backend_contact_path(storage), &bytes)
}

/// The last record in `storage`; `None` when no agent ever reached the backend from here (or
/// the file is unreadable).
pub fn read_backend_contact(storage: &Path) -> Option<BackendContact> {
    let bytes = read_no_follow(&backend_contact_path(storage)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_contact_names_this_process_and_the_version() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_backend_contact(dir.path()).is_none());
        record_backend_contact(dir.path(), "2.0.0").unwrap();
        let record = read_backend_contact(dir.path()).unwrap();
        assert_eq!(record.pid, std::process::id());
        assert_eq!(record.version, "2.0.0");
        std::fs::write(backend_contact_path(dir.path()), b"{torn").unwrap();
        assert!(read_backend_contact(dir.path()).is_none());
    }
}
