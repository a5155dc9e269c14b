//! What the agents send, and the rules it is stored by: registration ([`registration`]),
//! error reports and the update progress among them ([`errors`]), heartbeats and the live event of a
//! change ([`heartbeat`]), update progress and the halt it may trigger ([`progress`]), message
//! signatures of error reports ([`signature`]), how long error reports are kept
//! ([`retention`]) and how large the database may grow ([`guard`]).
//!
//! The agent API (`api/agent.rs`) parses and authenticates; this module decides what is
//! kept. It must never trust an agent id or platform from a body, and never log a token.

pub mod bounds;
pub mod errors;
pub mod guard;
pub mod heartbeat;
pub mod progress;
pub mod registration;
pub mod retention;
pub mod signature;
