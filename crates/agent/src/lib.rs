//! The CMS endpoint agent (`cms_agent`): stays up, stays single, reports to its backend, and
//! updates itself. `main.rs` is the command line; everything else lives in these modules.
//!
//! Layout follows `../shared/spec/design.md` section 1: `core` (agent, state, config,
//! storage, errors), `net` (HTTP and WebSocket clients), `system` (the OS seam, one file per OS).

pub mod clock;
pub mod core;
pub mod ipc;
pub mod logging;
pub mod net;
pub mod system;
