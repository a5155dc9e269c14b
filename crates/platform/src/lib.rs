//! What the CMS agent (`cms_agent`) and its updater (`updater`) share: the OS seam, the names of
//! the files both must agree on, the lock file's record, the release package format, atomic
//! writes, the backend-contact record and the clock.
//!
//! The updater is the safety net of a self-update, so it depends on this crate and never on the
//! agent: nothing here may make a network connection, start an async runtime (the tokio items,
//! `system::shutdown_signal` and `network::detect_metered`, which asks the OS over a local
//! D-Bus socket, are behind the `signals` and `network` features, which only the agent
//! enables), or hold agent policy
//! (when to update, what to do when a lock is held). The map of the crates and what each may
//! depend on is `docs/ARCHITECTURE.md`.

pub mod agent_args;
pub mod clock;
pub mod contact;
pub mod fs;
pub mod layout;
pub mod lock_file;
#[cfg(feature = "network")]
pub mod network;
pub mod package;
pub mod system;
