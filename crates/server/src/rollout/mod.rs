//! Rollouts: which agents a release is offered to, and how an operator or the server itself
//! changes that.
//!
//! [`cohort`] picks the release an agent should move to (versions and stable cohorts, pure);
//! [`offer`] turns that pick into the update an agent is told about;
//! [`control`] sets a release's percentage and halt rule, pauses and resumes it with an audit
//! entry, and runs the automatic halt; [`funnel`] counts the agents at each step of an update
//! and holds the halt rule (pure); [`group`] puts agents in groups; [`window`] holds groups' maintenance windows and [`pin`]
//! their pins (and rollbacks); [`inflight`] caps the agents updating at once and finds stuck
//! ones; [`plan`] runs staged rollouts (a canary, then wider stages that start by themselves
//! once the one before stayed healthy) and the halt rule a release is published with. The API and the
//! command line both call [`control`]. This
//! module must never change a rollout without an audit entry, and never read the network.

pub mod cohort;
pub mod control;
pub mod funnel;
pub mod group;
pub mod inflight;
pub mod offer;
pub mod pin;
pub mod plan;
pub mod watcher;
pub mod window;
