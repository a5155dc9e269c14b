//! Revoking an agent: its credential refused at once by every replica (the agent extractor
//! reads the database at each request), its live WebSocket closed wherever it is held (here
//! through the hub, on the other replicas through the event bus), and the action audited.
//!
//! The agent's row is kept, marked revoked, so the operator still sees it (apart from the
//! fleet's counts). This module must never delete an agent's history or log its credential.

use crate::access::{Actor, Outcome, audit};
use crate::clock;
use crate::db::{Db, DbError, Revocation};
use crate::events::{ClusterEvent, EventBus};
use crate::ws::Hub;

/// The audit action of a revocation.
pub const ACTION: &str = "agent.revoke";

/// Revokes `agent_id` as `actor` (audited: `ok`, or `refused` for an unknown agent), closes
/// its socket in `hub` when given (a running server) and tells the other replicas on `bus`.
pub async fn revoke_agent(
    db: &Db,
    bus: &EventBus,
    hub: Option<&Hub>,
    agent_id: &str,
    actor: &Actor,
) -> Result<Revocation, DbError> {
    let revocation = db.revoke_agent(agent_id, &clock::now()).await?;
    let outcome = match revocation {
        Revocation::Unknown => Outcome::Refused,
        Revocation::Revoked | Revocation::AlreadyRevoked => Outcome::Ok,
    };
    audit(db, actor, ACTION, Some(agent_id), outcome).await;
    if revocation == Revocation::Unknown {
        return Ok(revocation);
    }
    if hub.is_some_and(|hub| hub.disconnect(agent_id)) {
        tracing::info!(agent_id, "revoked agent's WebSocket closed");
    }
    let event = ClusterEvent::AgentRevoked {
        agent_id: agent_id.to_owned(),
    };
    if let Err(error) = bus.publish(&event).await {
        // The credential is refused anyway; the other replica closes the socket at its next
        // heartbeat, which is refused too.
        tracing::warn!(agent_id, %error, "cannot tell the other replicas of a revocation");
    }
    Ok(revocation)
}
