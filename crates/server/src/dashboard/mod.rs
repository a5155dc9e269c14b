//! The operator dashboard's logic: sessions, the live feed, rollout control with the automatic
//! halt, message signatures and the funnel.
//!
//! The HTTP handlers are in `crate::api::dashboard` and the page itself in `crates/server/web/`
//! (embedded in the binary by [`assets`]); the command line (`cms-server rollout ...`) calls
//! [`rollouts`] like the API does, so both are audited the same way. This module must never
//! log a token or session id, and never change a rollout without an audit entry.

pub mod assets;
pub mod funnel;
pub mod live;
pub mod rollouts;
pub mod session;
pub mod signature;
