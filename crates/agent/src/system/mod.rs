//! The agent's use of the operating system.
//!
//! The OS seam itself (one API, `windows.rs` and `unix.rs` behind it) lives in `cms-platform`,
//! because the updater needs it too; it is re-exported here so agent code says `system::...`
//! whatever the OS. On top of it this module adds what only the agent does: the lock manager
//! that keeps one agent per storage path. Nothing here may say `cfg(windows)`.

pub use cms_platform::system::*;

pub mod lock_manager;
