//! The agent's identity as the server sees it: registration, unless an operator revoked this
//! agent, what a revocation does here, and a new identity when this data folder turns out to be
//! a copy of a live agent's (the server refuses the WebSocket with 409, docs/protocol.md), and
//! the credential's rotation when the server asks for it.
//!
//! Rotation is crash-safe by its order: the new credential (this agent's own 256 random bits)
//! is written to config.json before it is proposed, it replaces the current one there only
//! once the server stored it, and it is used only after that; the server accepts both until it
//! is used. A run that dies at any step resumes at the next start.
//!
//! A revoked agent (the server answers 410, docs/protocol.md "Revocation") says so once in its
//! log, records it in config.json, stops every task that talks to the backend and waits for a
//! person: it never registers again by itself, at this run or the next, until
//! `cms_agent --reset-identity` clears the identity. This module must never register after a
//! revocation or log a credential.

use cms_protocol::BUILD_VERSION;
use serde_json::json;

use super::Inner;
use crate::core::agent_state::AgentState;
use crate::net::Credentials;
use crate::system;

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
        let registered = self.register_until_done().await;
        if registered && self.config().config().pending_credentials.is_some() {
            self.rotate_credential().await; // a rotation an earlier run did not finish
        }
        registered
    }

    /// Rotates the credential (the server asked, or an earlier run stopped halfway): choose
    /// and save a new one (unless one is saved already), propose it, make it the current one,
    /// and use it at once so the server retires the old one. A failure leaves the old one
    /// working; the next ask, or the next start, goes on from the step reached.
    pub(super) async fn rotate_credential(&self) {
        let Some(pending) = self.pending_credential() else {
            return;
        };
        die_if_a_test_asks("saved");
        if let Err(err) = self.http.propose_credential(&pending.agent_token).await {
            tracing::warn!(error = %err, "credential rotation: the server did not take the new credential; the current one stays");
            return;
        }
        die_if_a_test_asks("proposed");
        let promoted = self.config().update(|c| {
            c.credentials = Some(pending.clone());
            c.pending_credentials = None;
        });
        if let Err(err) = promoted {
            tracing::error!(error = %err, "credential rotation: cannot save the new credential; the current one stays");
            return;
        }
        self.http.set_credentials(pending);
        die_if_a_test_asks("promoted");
        match self
            .http
            .check_for_update(BUILD_VERSION, system::PLATFORM)
            .await
        {
            Ok(_) => tracing::info!("credential rotated"),
            Err(err) => {
                tracing::info!(error = %err, "credential rotated; the server sees it at the next call")
            }
        }
    }

    /// The credential to rotate to: the one saved by an unfinished rotation of this identity,
    /// or a new one, written to config.json before anything is sent. `None` when there is no
    /// identity or nothing could be saved.
    fn pending_credential(&self) -> Option<Credentials> {
        let mut config = self.config();
        let current = config.config().credentials.clone()?;
        let saved = config.config().pending_credentials.clone();
        if let Some(saved) = saved.filter(|saved| saved.agent_id == current.agent_id) {
            return Some(saved);
        }
        let mut bytes = [0u8; 32];
        if let Err(err) = getrandom::fill(&mut bytes) {
            tracing::error!(error = %err, "credential rotation: no randomness; the current credential stays");
            return None;
        }
        let pending = Credentials {
            agent_id: current.agent_id,
            agent_token: hex::encode(bytes),
        };
        let saved = config.update(|c| c.pending_credentials = Some(pending.clone()));
        if let Err(err) = saved {
            tracing::error!(error = %err, "credential rotation: cannot save the new credential; the current one stays");
            return None;
        }
        Some(pending)
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

/// Debug builds only (the tests' fault injection): with `CMS_AGENT_TEST_ROTATION_ABORT=STEP`
/// the process dies at once, like a kill, right after the rotation step `STEP` (`saved`,
/// `proposed`, `promoted`). Release builds do not contain this code.
#[cfg(debug_assertions)]
fn die_if_a_test_asks(step: &str) {
    if std::env::var("CMS_AGENT_TEST_ROTATION_ABORT").is_ok_and(|asked| asked == step) {
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
fn die_if_a_test_asks(_step: &str) {}
