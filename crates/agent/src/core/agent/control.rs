//! The agent's answers to authenticated IPC requests (`--force`, `--stop`, `--status`) and
//! the task that serves them. A request moves the agent's state in one checked step, so a
//! force restart or a stop and an update never both win; nothing here ever interrupts an
//! update.

use std::sync::Arc;

use cms_protocol::{BUILD_VERSION, IpcCommand, IpcResponse, IpcStatus};
use serde_json::Value;

use super::Inner;
use crate::core::agent_state::{AgentState, StateCell};
use crate::ipc::{self, IpcHandler, NamedPipeIPCServer};

/// Serves the IPC endpoint until shutdown. An endpoint that cannot be opened is reported and
/// the agent runs on without it: serving the backend matters more than `--force`.
pub(super) async fn ipc_server(inner: Arc<Inner>) {
    let path = inner.storage.storage_path().to_path_buf();
    let machine_wide = inner.storage.machine_wide();
    let bound = ipc::IpcEndpoint::for_agent(&path, machine_wide).and_then(|endpoint| {
        let secret = ipc::load_or_create_secret(&path, machine_wide)?;
        NamedPipeIPCServer::bind(endpoint, secret)
    });
    match bound {
        Ok(server) => server.serve(inner.clone(), inner.cancel.clone()).await,
        Err(err) => {
            let message = format!(
                "IPC server not started: {err}; --force and --status cannot reach this agent"
            );
            inner.report("ipc_unavailable", &message, Value::Null).await;
        }
    }
}

impl IpcHandler for Inner {
    fn handle(&self, command: IpcCommand, args: &[String]) -> IpcResponse {
        let status = match command {
            IpcCommand::Status => IpcStatus::Acknowledged,
            IpcCommand::ForceRestart => self.force_restart(args.len()),
            IpcCommand::Stop => self.stop_requested(),
        };
        IpcResponse {
            status,
            state: Some(self.state.get()),
            version: Some(BUILD_VERSION.to_owned()),
            pid: Some(std::process::id()),
            message: None,
        }
    }
}

impl Inner {
    /// `--force` from another process: stop so it can take over, unless an update runs.
    fn force_restart(&self, new_args: usize) -> IpcStatus {
        match force_restart_decision(&self.state) {
            ForceDecision::Shutdown => {
                tracing::info!(
                    new_args,
                    "force restart requested over IPC; shutting down for the new instance"
                );
                self.graceful_shutdown();
                IpcStatus::Acknowledged
            }
            ForceDecision::AlreadyStopping => IpcStatus::Acknowledged,
            ForceDecision::BusyUpdating => {
                tracing::warn!("force restart refused: an update is in progress");
                IpcStatus::BusyUpdating
            }
        }
    }
}

impl Inner {
    /// `--stop` from another process: shut down and stay down, unless an update runs.
    fn stop_requested(&self) -> IpcStatus {
        let status = stop_decision(&self.state);
        if status == IpcStatus::Acknowledged {
            tracing::info!("stop requested over IPC; shutting down");
            self.graceful_shutdown();
        } else {
            tracing::warn!("stop refused: an update is in progress");
        }
        status
    }
}

/// `SHUTTING_DOWN` unless an update runs, checked and moved in one step; a stop that is
/// already under way is acknowledged too (the caller waits for the exit all the same).
fn stop_decision(state: &StateCell) -> IpcStatus {
    match state.transition_if(|s| !s.is_updating(), AgentState::ShuttingDown) {
        Err(refused) if refused.from.is_updating() => IpcStatus::BusyUpdating,
        _ => IpcStatus::Acknowledged,
    }
}

/// What a `force_restart` request leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForceDecision {
    /// Shut down now (from `IDLE` via `FORCE_RESTARTING`, or while still `STARTING`).
    Shutdown,
    /// A shutdown is already under way; the caller just waits for the lock.
    AlreadyStopping,
    /// Refused in every `UPDATING_*` state: an update must not be cut off.
    BusyUpdating,
}

/// Checks and moves the state in one step, so a force restart and an update never both win.
fn force_restart_decision(state: &StateCell) -> ForceDecision {
    match state.transition_if(|s| s == AgentState::Idle, AgentState::ForceRestarting) {
        Ok(_) => ForceDecision::Shutdown,
        Err(refused) if refused.from.is_updating() => ForceDecision::BusyUpdating,
        Err(refused) if refused.from == AgentState::Starting => ForceDecision::Shutdown,
        Err(_) => ForceDecision::AlreadyStopping,
    }
}

#[cfg(test)]
mod ipc_tests {
    use super::*;

    fn cell_in(target: AgentState) -> StateCell {
        let cell = StateCell::default();
        let path: &[AgentState] = match target {
            AgentState::Starting => &[],
            AgentState::ShuttingDown => &[AgentState::ShuttingDown],
            AgentState::Stopped => &[AgentState::ShuttingDown, AgentState::Stopped],
            AgentState::ForceRestarting => &[AgentState::Idle, AgentState::ForceRestarting],
            _ => &[AgentState::Idle],
        };
        for next in path {
            cell.set_state(*next).unwrap_or_else(|e| panic!("{e}"));
        }
        let walk = [
            AgentState::UpdatingStarting,
            AgentState::UpdatingDownloading,
            AgentState::UpdatingVerifying,
            AgentState::UpdatingExtractingUpdater,
            AgentState::UpdatingPreparingShutdown,
        ];
        for next in walk
            .iter()
            .take_while(|_| cell.get() != target && target.is_updating())
        {
            cell.set_state(*next).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(cell.get(), target);
        cell
    }

    #[test]
    fn force_restart_is_refused_in_every_updating_state_and_leaves_it_alone() {
        for state in AgentState::ALL.into_iter().filter(|s| s.is_updating()) {
            let cell = cell_in(state);
            assert_eq!(
                force_restart_decision(&cell),
                ForceDecision::BusyUpdating,
                "{state}"
            );
            assert_eq!(cell.get(), state);
        }
    }

    #[test]
    fn stop_is_refused_while_updating_and_shuts_down_from_anything_else() {
        for state in AgentState::ALL.into_iter().filter(|s| s.is_updating()) {
            let cell = cell_in(state);
            assert_eq!(stop_decision(&cell), IpcStatus::BusyUpdating, "{state}");
            assert_eq!(cell.get(), state);
        }
        for state in [
            AgentState::Starting,
            AgentState::Idle,
            AgentState::ForceRestarting,
        ] {
            let cell = cell_in(state);
            assert_eq!(stop_decision(&cell), IpcStatus::Acknowledged, "{state}");
            assert_eq!(cell.get(), AgentState::ShuttingDown, "from {state}");
        }
        let stopping = cell_in(AgentState::ShuttingDown);
        assert_eq!(stop_decision(&stopping), IpcStatus::Acknowledged);
    }

    #[test]
    fn force_restart_from_idle_moves_to_force_restarting() {
        let cell = cell_in(AgentState::Idle);
        assert_eq!(force_restart_decision(&cell), ForceDecision::Shutdown);
        assert_eq!(cell.get(), AgentState::ForceRestarting);
        assert_eq!(
            force_restart_decision(&cell),
            ForceDecision::AlreadyStopping
        );
    }

    #[test]
    fn force_restart_while_starting_or_stopping() {
        assert_eq!(
            force_restart_decision(&cell_in(AgentState::Starting)),
            ForceDecision::Shutdown
        );
        for state in [AgentState::ShuttingDown, AgentState::Stopped] {
            assert_eq!(
                force_restart_decision(&cell_in(state)),
                ForceDecision::AlreadyStopping
            );
        }
    }
}
