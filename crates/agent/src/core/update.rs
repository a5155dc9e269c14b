//! The agent's half of a self-update (docs/ARCHITECTURE.md, "One self-update, end to end").
//!
//! [`Update::run`] (`steps`) walks one attempt up to the launch of the updater, its package
//! fetched by `download` (resumed, rate-limited, waiting out a busy server);
//! [`settle_journal`] (`journal`) is the other end: at start, the agent finishes, undoes or
//! reports an update that the updater left behind. [`UpdateController`] (`controller`) decides
//! when an attempt may start and what the agent records and reports around both, so the
//! sequencing of updates (journal settled, trigger held, refusals reported, retry after an
//! abort) lives in one place. Nothing here stops the agent on its own account: the controller
//! is lent the agent's shutdown, and calls it once the updater runs.

mod controller;
mod delta;
mod download;
mod journal;
mod steps;

pub use controller::{OfferOutcome, UpdateController, UpdateDeps};
pub use download::TransferLimits;
pub use journal::{Settlement, read_journal, retry_delay, settle_journal, updater_running};
pub use steps::{Relaunch, Update, UpdateError};
