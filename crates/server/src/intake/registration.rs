//! Registration: whether a new agent may enrol (its enrollment token, checked by
//! `access::enrollment`), and what it is given: a fresh id and a bearer token, of which only the
//! hash is stored, with the name of the token that enrolled it. The route (`api/agent.rs`)
//! parses the request, bounds its fields and throttles registrations per source; this module
//! decides.
//!
//! It must never log or store a token in clear, and never let an agent choose its own id.

use cms_protocol::{AgentState, RegisterRequest, RegisterResponse};

use crate::access::auth::{self, RandomError};
use crate::access::enrollment::{self, Admitted, EnrollmentRefusal};
use crate::clock;
use crate::db::{Db, DbError, NewAgent};
use crate::events::live::{LiveEvent, LiveFeed};

/// Why a registration did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The enrollment token is missing, wrong, expired, used up or revoked.
    #[error(transparent)]
    Refused(#[from] EnrollmentRefusal),
    /// No token could be minted.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The store failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

/// Whether `request` may enrol, and by which token: the server's own `--enrollment-token`
/// (`server_token`) or a stored enrollment token with a use left (one is taken here); without
/// any, only an `open` server (`--open-enrollment`) takes it, whatever its address.
pub async fn admit(
    db: &Db,
    server_token: Option<&str>,
    open: bool,
    request: &RegisterRequest,
) -> Result<Admitted, RegistrationError> {
    let presented = request.enrollment_token.as_deref();
    Ok(enrollment::admit(db, server_token, presented, open).await??)
}

/// Enrols the agent of an admitted `request`: a fresh id and token (only its hash stored),
/// stored as `STARTING` with the name of the token that `admitted` it, and the dashboards told.
pub async fn enrol(
    db: &Db,
    live: &LiveFeed,
    request: &RegisterRequest,
    admitted: &Admitted,
) -> Result<RegisterResponse, RegistrationError> {
    let agent_id = uuid::Uuid::new_v4().to_string();
    let agent_token = auth::mint_token()?;
    let token_hash = auth::hash_token(&agent_token);
    let agent = NewAgent {
        agent_id: &agent_id,
        token_hash: &token_hash,
        hostname: &request.hostname,
        platform: &request.platform,
        version: &request.version,
        state: AgentState::Starting.name(),
        enrolled_by: admitted.token.as_deref(),
    };
    // Issue 25: the agent's group is `admitted.group()` when the token names one.
    db.insert_agent(&agent, &clock::now()).await?;
    live.publish(LiveEvent::AgentRegistered {
        agent_id: agent_id.clone(),
    });
    Ok(RegisterResponse {
        agent_id,
        agent_token,
    })
}
