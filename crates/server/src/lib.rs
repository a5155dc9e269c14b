//! `cms-server`: the reference backend the CMS agent talks to.
//!
//! It registers agents, records their heartbeats and error reports, answers update checks,
//! serves release packages and pushes events over a WebSocket per agent; operators read the
//! fleet through a small JSON API and publish releases with `cms-server release publish`.
//! The library holds everything the `cms-server` binary runs so tests and the binary share one
//! code path. It must never read the process environment or command line itself (that is
//! `main.rs`'s job) and never log a bearer or enrollment token.

pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod db;
pub mod events;
pub mod leader;
pub mod notify;
pub mod release;
pub mod rollout;
pub mod server;
pub mod tls;
pub mod ws;

pub use server::{ServeConfig, ServeError, serve};
