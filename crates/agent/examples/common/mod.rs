//! What the examples that talk to (or impersonate) a running agent share: the agent's IPC
//! endpoint for a storage path, and a small runtime. Never an agent's secret.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cms_agent::ipc::IpcEndpoint;
use cms_agent::system;

/// The IPC endpoint of the agent that owns `data_dir` (default: the per-machine storage path
/// when elevated, else the per-user one), with the rights this process has.
pub fn agent_endpoint(data_dir: Option<PathBuf>) -> Result<IpcEndpoint> {
    let is_admin = system::is_running_as_admin();
    let storage = match data_dir {
        Some(dir) => dir,
        None => system::default_data_dir(is_admin)
            .context("no default storage path here; pass --data-dir")?,
    };
    Ok(IpcEndpoint::for_agent(&storage, is_admin)?)
}

/// A current-thread runtime with I/O and timers.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
