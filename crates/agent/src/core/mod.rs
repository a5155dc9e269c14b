//! The agent's core: its state machine, configuration, storage, error reporting and the
//! `Agent` that ties them to the network. Nothing here talks to the OS directly; that is
//! `system`'s job.

pub mod agent;
pub mod agent_state;
pub mod config;
pub mod error_reporter;
pub mod metered;
pub mod net_health;
pub mod policy;
pub mod storage;
pub mod supervisor;
pub mod update;
