//! The agent's use of the operating system.
//!
//! The OS seam itself (one API, `windows.rs` and `unix.rs` behind it) lives in `cms-platform`,
//! because the updater needs it too; it is re-exported here so agent code says `system::...`
//! whatever the OS. On top of it this module adds what only the agent does: the lock manager
//! that keeps one agent per storage path, and whether an MSI installed it
//! ([`updates_left_to_msi`]). Nothing here may say `cfg(windows)`.

pub use cms_platform::system::*;

pub mod lock_manager;

/// The file the MSI package installs beside `cms_agent.exe` (build_scripts/cms_agent.wxs):
/// updates of this install are the MSI's (Intune, SCCM, Group Policy), not the agent's.
pub const MSI_MARKER: &str = "installed-by-msi.txt";

/// Whether this program was installed by the MSI package (its marker lies beside the
/// installed exe); the agent then leaves updates to the MSI (docs/DEPLOYMENT.md).
pub fn updates_left_to_msi() -> bool {
    installed_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(MSI_MARKER)))
        .is_some_and(|marker| marker.is_file())
}
