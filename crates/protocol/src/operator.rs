//! Types of the operator API's access control: token roles, token listings and the audit log.
//!
//! Who may do what is the server's policy; this module only names the roles (ordered, so a
//! higher role includes every lower one) and shapes what `cms-server token ...` and the admin
//! routes exchange. It must never carry a token anywhere but [`CreatedOperatorToken`], which
//! exists to hand a new token out once.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What an operator token may do: `viewer` reads; `operator` also acts (rollouts,
/// check-update); `admin` also manages tokens and reads the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorRole {
    /// Reads the fleet, errors and releases.
    Viewer,
    /// Also asks agents to act.
    Operator,
    /// Also manages operator tokens and reads the audit log.
    Admin,
}

impl OperatorRole {
    /// Every role, lowest first.
    pub const ALL: [OperatorRole; 3] = [
        OperatorRole::Viewer,
        OperatorRole::Operator,
        OperatorRole::Admin,
    ];

    /// The role's wire name: `viewer`, `operator` or `admin`.
    pub const fn name(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Operator => "operator",
            OperatorRole::Admin => "admin",
        }
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role {:?} (expected viewer, operator or admin)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for OperatorRole {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        OperatorRole::ALL
            .into_iter()
            .find(|role| role.name() == text)
            .ok_or_else(|| UnknownRole(text.to_owned()))
    }
}

/// An operator token as `token list` and `GET /api/v1/tokens` show it: never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorToken {
    /// Unique name chosen at creation (who the audit log names).
    pub name: String,
    /// What the token may do.
    pub role: OperatorRole,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it was last used, to the minute; `None` if never.
    #[serde(default)]
    pub last_used_at: Option<String>,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOperatorToken {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
    pub name: String,
    /// What the token may do.
    pub role: OperatorRole,
}

/// A token just created: the only time the token itself is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedOperatorToken {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: OperatorRole,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The bearer token; the server keeps only its hash. Never log it.
    pub token: String,
}

impl fmt::Debug for CreatedOperatorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedOperatorToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// One entry of the audit log (`GET /api/v1/audit`): who did what, when, with what outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unique id of the entry.
    pub audit_id: String,
    /// When (RFC 3339).
    pub at: String,
    /// The operator token's name, or `cli:USER` for a command run on the server.
    pub actor: String,
    /// What was attempted, such as `agent.check_update` or `token.create`.
    pub action: String,
    /// What it was done to (an agent id, a token name, a version), when anything.
    #[serde(default)]
    pub target: Option<String>,
    /// `ok`, `denied` (role too low) or `refused` (valid request the server turned down).
    pub outcome: String,
    /// Where the request came from (the peer address), or `local` for a command.
    pub source: String,
    /// How many times this happened: the denials of one actor and action within one minute
    /// share one row (shown as "xN"); 1 for everything else.
    #[serde(default = "one")]
    pub repeats: u64,
    /// When the last of the `repeats` happened (RFC 3339), when there were more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<String>,
}

fn one() -> u64 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(OperatorRole::Viewer < OperatorRole::Operator);
        assert!(OperatorRole::Operator < OperatorRole::Admin);
        for role in OperatorRole::ALL {
            assert_eq!(role.name().parse::<OperatorRole>().unwrap(), role);
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.name()));
        }
        assert!("root".parse::<OperatorRole>().is_err());
    }

    #[test]
    fn created_token_debug_hides_the_token() {
        let created = CreatedOperatorToken {
            name: "ci".into(),
            role: OperatorRole::Viewer,
            created_at: "2026-12-01T00:00:00Z".into(),
            token: "very-secret".into(),
        };
        assert!(!format!("{created:?}").contains("very-secret"));
    }
}
