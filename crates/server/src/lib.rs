//! `cms-server`: the reference backend the CMS agent talks to.
//!
//! It registers agents, records their heartbeats and error reports, answers update checks,
//! serves release packages and pushes events over a WebSocket per agent; operators read the
//! fleet through a small JSON API with role-bearing tokens or the dashboard served at `/`
//! (with rollout control and an automatic halt), and publish releases with
//! `cms-server release publish`. It is built to face a network: connections are budgeted and
//! timed out, registrations and error reports are rate-limited, reports are kept by a
//! retention policy, untrusted text is escaped in logs, files are private and the TUF root key
//! may live offline.
//! The library holds everything the `cms-server` binary runs so tests and the binary share one
//! code path, its command line included ([`cli`]). Outside `cli` it must never read the process
//! environment or command line, and it must never log a bearer or enrollment token.

pub mod access;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod db;
pub mod events;
pub mod files;
pub mod intake;
pub mod logtext;
pub mod net;
pub mod release;
pub mod rollout;
pub mod server;
pub mod ws;

pub use server::{ConnectionSettings, Listening, ServeConfig, ServeError, serve};
