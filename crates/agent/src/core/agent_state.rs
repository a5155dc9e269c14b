//! `AgentState` and the table of transitions the agent may make (docs/ARCHITECTURE.md).
//!
//! The state names live in `cms_protocol` (they travel in heartbeats); the policy lives here:
//! [`ALLOWED`] is the only place that says which move is legal, and [`StateCell`] is the only
//! way to move. A refused move is logged and leaves the state as it was; it must never panic.

use std::sync::Mutex;

pub use cms_protocol::AgentState;

use AgentState::*;

/// Every legal `(from, to)` move. Updates walk their states in order and may fall back to
/// `IDLE` on failure; an OS stop (`SHUTTING_DOWN`) may interrupt anything but a stop.
pub const ALLOWED: &[(AgentState, AgentState)] = &[
    (Starting, Idle),
    (Starting, ShuttingDown),
    (Idle, ForceRestarting),
    (Idle, UpdatingStarting),
    (Idle, ShuttingDown),
    (ForceRestarting, ShuttingDown),
    (ForceRestarting, Idle),
    (UpdatingStarting, UpdatingDownloading),
    (UpdatingStarting, Idle),
    (UpdatingStarting, ShuttingDown),
    (UpdatingDownloading, UpdatingVerifying),
    (UpdatingDownloading, Idle),
    (UpdatingDownloading, ShuttingDown),
    (UpdatingVerifying, UpdatingExtractingUpdater),
    (UpdatingVerifying, Idle),
    (UpdatingVerifying, ShuttingDown),
    (UpdatingExtractingUpdater, UpdatingPreparingShutdown),
    (UpdatingExtractingUpdater, Idle),
    (UpdatingExtractingUpdater, ShuttingDown),
    (UpdatingPreparingShutdown, ShuttingDown),
    (UpdatingPreparingShutdown, Idle),
    (ShuttingDown, Stopped),
];

/// Whether the table allows moving from `from` to `to`.
pub fn is_allowed(from: AgentState, to: AgentState) -> bool {
    ALLOWED.contains(&(from, to))
}

/// A move the table does not allow; the state did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("refused state transition: {from} -> {to}")]
pub struct Refused {
    /// State at the time of the attempt.
    pub from: AgentState,
    /// The state that was asked for.
    pub to: AgentState,
}

/// The agent's current state behind a lock, so a check and a move happen as one step.
#[derive(Debug)]
pub struct StateCell {
    state: Mutex<AgentState>,
}

impl Default for StateCell {
    fn default() -> Self {
        StateCell {
            state: Mutex::new(Starting),
        }
    }
}

impl StateCell {
    /// The current state (it may change right after; use `transition_if` to act on it).
    pub fn get(&self) -> AgentState {
        *self.guard()
    }

    /// Moves to `new_state` if the table allows it; logs `State transition: OLD -> NEW`.
    pub fn set_state(&self, new_state: AgentState) -> Result<AgentState, Refused> {
        self.transition_if(|_| true, new_state)
    }

    /// Moves to `new_state` only if `guard(current)` holds and the table allows it, under one
    /// lock: sensitive triggers (update, force restart) use it so two of them cannot both win.
    pub fn transition_if(
        &self,
        guard: impl FnOnce(AgentState) -> bool,
        new_state: AgentState,
    ) -> Result<AgentState, Refused> {
        let mut state = self.guard();
        let old = *state;
        if !guard(old) || !is_allowed(old, new_state) {
            tracing::warn!(from = %old, to = %new_state, "Refused state transition: {old} -> {new_state}");
            return Err(Refused {
                from: old,
                to: new_state,
            });
        }
        *state = new_state;
        tracing::info!(from = %old, to = %new_state, "State transition: {old} -> {new_state}");
        Ok(old)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan's flow, written out by name independently of `ALLOWED`.
    const EXPECTED: &[(&str, &str)] = &[
        ("STARTING", "IDLE"),
        ("STARTING", "SHUTTING_DOWN"),
        ("IDLE", "FORCE_RESTARTING"),
        ("IDLE", "UPDATING_STARTING"),
        ("IDLE", "SHUTTING_DOWN"),
        ("FORCE_RESTARTING", "SHUTTING_DOWN"),
        ("FORCE_RESTARTING", "IDLE"),
        ("UPDATING_STARTING", "UPDATING_DOWNLOADING"),
        ("UPDATING_DOWNLOADING", "UPDATING_VERIFYING"),
        ("UPDATING_VERIFYING", "UPDATING_EXTRACTING_UPDATER"),
        ("UPDATING_EXTRACTING_UPDATER", "UPDATING_PREPARING_SHUTDOWN"),
        ("UPDATING_PREPARING_SHUTDOWN", "SHUTTING_DOWN"),
        ("SHUTTING_DOWN", "STOPPED"),
    ];

    fn expected(from: AgentState, to: AgentState) -> bool {
        let failure_or_stop = from.is_updating() && matches!(to, Idle | ShuttingDown);
        failure_or_stop || EXPECTED.contains(&(from.name(), to.name()))
    }

    fn cell_in(state: AgentState) -> StateCell {
        StateCell {
            state: Mutex::new(state),
        }
    }

    #[test]
    fn every_pair_is_allowed_exactly_when_the_plan_says_so() {
        for from in AgentState::ALL {
            for to in AgentState::ALL {
                assert_eq!(is_allowed(from, to), expected(from, to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_refused_transition_leaves_the_state_unchanged() {
        let mut refused = 0;
        for from in AgentState::ALL {
            for to in AgentState::ALL
                .into_iter()
                .filter(|to| !expected(from, *to))
            {
                let cell = cell_in(from);
                assert_eq!(cell.set_state(to), Err(Refused { from, to }));
                assert_eq!(cell.get(), from);
                refused += 1;
            }
        }
        assert_eq!(refused, 100 - ALLOWED.len());
    }

    #[test]
    fn stopped_is_terminal_and_self_moves_are_refused() {
        for to in AgentState::ALL {
            assert!(!is_allowed(Stopped, to));
            assert!(!is_allowed(to, to));
        }
    }

    #[test]
    fn guarded_transition_checks_and_moves_as_one_step() {
        let cell = cell_in(Idle);
        assert!(cell.transition_if(|s| s == Idle, UpdatingStarting).is_ok());
        assert!(cell.transition_if(|s| s == Idle, UpdatingStarting).is_err());
        assert_eq!(cell.get(), UpdatingStarting);
    }

    #[test]
    fn a_full_update_walk_is_allowed() {
        let cell = cell_in(Idle);
        for next in [
            UpdatingStarting,
            UpdatingDownloading,
            UpdatingVerifying,
            UpdatingExtractingUpdater,
            UpdatingPreparingShutdown,
            ShuttingDown,
            Stopped,
        ] {
            cell.set_state(next).unwrap();
        }
    }
}
