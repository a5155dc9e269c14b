//! Registration: whether a new agent may enrol, and what it is given: a fresh id and a bearer
//! token, of which only the hash is stored. The route (`api/agent.rs`) parses the request,
//! bounds its fields and throttles registrations per source; this module decides.
//!
//! It must never log or store a token in clear, and never let an agent choose its own id.

use cms_protocol::{AgentState, RegisterRequest, RegisterResponse};

use crate::access::auth::{self, RandomError};
use crate::clock;
use crate::db::{Db, DbError, NewAgent};
use crate::events::live::{LiveEvent, LiveFeed};

/// Why a registration did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The server requires an enrollment token and this one is missing or wrong.
    #[error("missing or invalid enrollment token")]
    BadEnrollmentToken,
    /// The server has no enrollment token and was not started with `--open-enrollment`.
    #[error(
        "registration is closed: this server needs an enrollment token (cms-server serve \
         --enrollment-token T) or --open-enrollment"
    )]
    EnrollmentClosed,
    /// No token could be minted.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The store failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

/// Whether `request` may enrol: it must carry `required_token` (the server's enrollment token,
/// when it has one), compared in constant time; without one, only an `open` server
/// (`--open-enrollment`) takes it, whatever its address.
pub fn admit(
    required_token: Option<&str>,
    open: bool,
    request: &RegisterRequest,
) -> Result<(), RegistrationError> {
    let Some(expected) = required_token else {
        return if open {
            Ok(())
        } else {
            Err(RegistrationError::EnrollmentClosed)
        };
    };
    let presented = request.enrollment_token.as_deref().unwrap_or_default();
    if auth::secrets_equal(presented, expected) {
        Ok(())
    } else {
        Err(RegistrationError::BadEnrollmentToken)
    }
}

/// Enrols the agent of an admitted `request`: a fresh id and token (only its hash stored),
/// stored as `STARTING`, and the dashboards told.
pub async fn enrol(
    db: &Db,
    live: &LiveFeed,
    request: &RegisterRequest,
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
    };
    db.insert_agent(&agent, &clock::now()).await?;
    live.publish(LiveEvent::AgentRegistered {
        agent_id: agent_id.clone(),
    });
    Ok(RegisterResponse {
        agent_id,
        agent_token,
    })
}
