//! The agent's identity as the server sees it: registration, unless an operator revoked this
//! agent, what a revocation does here, and a new identity when this data folder turns out to be
//! a copy of a live agent's (the server refuses the WebSocket with 409, docs/protocol.md).
//!
//! A revoked agent (the server answers 410, docs/protocol.md "Revocation") says so once in its
//! log, records it in config.json, stops every task that talks to the backend and waits for a
//! person: it never registers again by itself, at this run or the next, until
//! `cms_agent --reset-identity` clears the identity. This module must never register after a
//! revocation or log a credential.

use serde_json::json;

use super::Inner;
use crate::core::agent_state::AgentState;

/// What the log says, once, about a revoked agent.
const REVOKED: &str = "an operator revoked this agent on the server: it no longer contacts the \
     backend. To enrol this machine again: stop the agent, run `cms_agent --reset-identity`, and \
     start it";

impl Inner {
    /// Registers unless credentials exist (retrying with backoff), or, when an earlier run
    /// recorded a revocation, says so and stops the backend's services instead. `false` when
    /// the services must not start.
    pub(super) async fn register_unless_revoked(&self) -> bool {
        if self.config().config().identity_revoked {
            tracing::error!(at_start = true, "{REVOKED}");
            self.stop_backend();
            return false;
        }
        self.register_until_done().await
    }

    /// The server answered that this agent is revoked: recorded in config.json, logged once,
    /// and the services that talk to the backend stopped.
    pub(super) fn revoked(&self) {
        tracing::error!(at_start = false, "{REVOKED}");
        if let Err(err) = self.config().update(|c| c.identity_revoked = true) {
            tracing::error!(error = %err, "cannot record the revocation in config.json; the next start asks the server again");
        }
        self.stop_backend();
    }

    /// The server refused the WebSocket of the credential `refused` because another live agent
    /// holds the identity (a copy of this data folder): unless a newer credential replaced it
    /// already, register as a new agent (same hostname) and report `identity_conflict` with the
    /// old id. The original keeps its id.
    pub(super) async fn identity_conflict(&self, refused: Option<String>) {
        if refused.is_none() || refused != self.http.bearer_token() {
            return;
        }
        let old_id = self
            .config()
            .config()
            .credentials
            .as_ref()
            .map(|c| c.agent_id.clone());
        let old_id = old_id.unwrap_or_default();
        tracing::warn!(old_agent_id = %old_id, "another live agent holds this identity (this data folder is a copy of its); registering as a new agent");
        self.http.clear_credentials();
        if let Err(err) = self.config().update(|c| c.credentials = None) {
            tracing::error!(error = %err, "cannot clear the cloned identity from config.json");
        }
        if self.register_until_done().await {
            let message = format!(
                "this data folder is a copy of agent {old_id}, which is still running elsewhere; registered as a new agent"
            );
            let details = json!({ "old_agent_id": old_id });
            self.report("identity_conflict", &message, details).await;
        }
    }

    fn stop_backend(&self) {
        self.backend.cancel();
        if self.state.get() == AgentState::Starting {
            let _ = self.state.set_state(AgentState::Idle);
        }
    }
}
