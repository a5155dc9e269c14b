//! The CMS endpoint agent (`cms_agent`): stays up, stays single, reports to its backend, and
//! updates itself. `main.rs` parses the command line and calls `cli::run`; everything else
//! lives in these modules.
//!
//! Layers, each using only the ones after it (`docs/ARCHITECTURE.md`): `cli` (the command line;
//! imported by `main.rs` only) -> `core` (agent, state, config, storage, updates, errors) ->
//! `ipc` (the local control channel) and `net` (HTTP, WebSocket and update-metadata clients) ->
//! `system` (the OS seam from `cms-platform`, plus the lock manager) and `logging`.

pub mod cli;
pub mod core;
pub mod ipc;
pub mod logging;
pub mod net;
pub mod system;
