//! The agent's half of a self-update (docs/ARCHITECTURE.md, "One self-update, end to end").
//!
//! [`Update::run`] (`steps`) walks one attempt up to the launch of the updater;
//! [`settle_journal`] (`journal`) is the other end: at start, the agent finishes, undoes or
//! reports an update that the updater left behind.
//! Nothing here stops the agent: the caller does, after a launch.

mod journal;
mod steps;

pub use journal::{Settlement, read_journal, retry_delay, settle_journal, updater_running};
pub use steps::{Relaunch, Update, UpdateError};
