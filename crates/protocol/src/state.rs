//! The names of the agent's ten states, as they appear on the wire and in logs.
//!
//! Which transitions are allowed is the agent's policy and lives in the agent crate; this module
//! only names the states so the server can validate and display them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The plan's ten states of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentState {
    /// Process started, not yet serving.
    Starting,
    /// Registered and waiting for work; the only state an update may start from.
    Idle,
    /// A `--force` request was accepted; the agent is handing over to a new instance.
    ForceRestarting,
    /// An update was accepted and is being prepared.
    UpdatingStarting,
    /// The package is being downloaded.
    UpdatingDownloading,
    /// The package is being checked against its signed metadata.
    UpdatingVerifying,
    /// The updater is being unpacked from the package.
    UpdatingExtractingUpdater,
    /// The updater was launched; the agent is about to stop.
    UpdatingPreparingShutdown,
    /// Tasks are being cancelled and joined.
    ShuttingDown,
    /// Everything has stopped.
    Stopped,
}

impl AgentState {
    /// Every state, in the plan's order.
    pub const ALL: [AgentState; 10] = [
        AgentState::Starting,
        AgentState::Idle,
        AgentState::ForceRestarting,
        AgentState::UpdatingStarting,
        AgentState::UpdatingDownloading,
        AgentState::UpdatingVerifying,
        AgentState::UpdatingExtractingUpdater,
        AgentState::UpdatingPreparingShutdown,
        AgentState::ShuttingDown,
        AgentState::Stopped,
    ];

    /// The state's wire and log name, such as `UPDATING_DOWNLOADING`.
    pub const fn name(self) -> &'static str {
        match self {
            AgentState::Starting => "STARTING",
            AgentState::Idle => "IDLE",
            AgentState::ForceRestarting => "FORCE_RESTARTING",
            AgentState::UpdatingStarting => "UPDATING_STARTING",
            AgentState::UpdatingDownloading => "UPDATING_DOWNLOADING",
            AgentState::UpdatingVerifying => "UPDATING_VERIFYING",
            AgentState::UpdatingExtractingUpdater => "UPDATING_EXTRACTING_UPDATER",
            AgentState::UpdatingPreparingShutdown => "UPDATING_PREPARING_SHUTDOWN",
            AgentState::ShuttingDown => "SHUTTING_DOWN",
            AgentState::Stopped => "STOPPED",
        }
    }

    /// Whether an update is in progress: `--force` and new update triggers are refused then.
    pub const fn is_updating(self) -> bool {
        matches!(
            self,
            AgentState::UpdatingStarting
                | AgentState::UpdatingDownloading
                | AgentState::UpdatingVerifying
                | AgentState::UpdatingExtractingUpdater
                | AgentState::UpdatingPreparingShutdown
        )
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A state name that is not one of the ten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown agent state {:?}", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for AgentState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentState::ALL
            .into_iter()
            .find(|state| state.name() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for state in AgentState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.name()));
            assert_eq!(state.name().parse::<AgentState>().unwrap(), state);
        }
        assert!("BOGUS".parse::<AgentState>().is_err());
    }

    #[test]
    fn exactly_the_five_updating_states_are_updating() {
        let updating = AgentState::ALL.iter().filter(|s| s.is_updating()).count();
        assert_eq!(updating, 5);
    }
}
