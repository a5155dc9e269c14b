//! Messages between `cms_agent --force`/`--stop`/`--status` and the running agent.
//!
//! One JSON request and one JSON response per connection, each on one line (`\n`-terminated)
//! and at most [`IPC_MAX_MESSAGE_BYTES`] long. This module only names the messages: it must
//! never compare secrets, read sockets or decide what an answer should be.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::AgentState;

/// Largest request or response, newline included; anything longer is refused unread.
pub const IPC_MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// What the client asks the running agent to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpcCommand {
    /// Shut down gracefully so the caller can take over with new arguments.
    ForceRestart,
    /// Shut down gracefully and stay stopped (`--stop`).
    Stop,
    /// Report state and version.
    Status,
}

/// A request; every command carries the IPC secret, because the endpoint is reachable by
/// more processes than the one that should be obeyed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpcRequest {
    /// The command.
    pub command: IpcCommand,
    /// The IPC secret (hex); never logged, redacted from `Debug`.
    pub secret: String,
    /// Arguments the new instance will run with (`force_restart`; informational).
    #[serde(default)]
    pub args: Vec<String>,
}

impl fmt::Debug for IpcRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpcRequest")
            .field("command", &self.command)
            .field("secret", &"<redacted>")
            .field("args", &self.args)
            .finish()
    }
}

/// The answer's verdict (docs/CONTRACT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpcStatus {
    /// Done (status) or accepted: the agent is shutting down (force_restart, stop).
    Acknowledged,
    /// Refused: an update is in progress and must not be interrupted.
    BusyUpdating,
    /// Refused: the secret did not match.
    InvalidSecret,
    /// The request could not be read or understood; `message` says why.
    Error,
}

/// A response; `state` and `version` are present on authenticated answers only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcResponse {
    /// The verdict.
    pub status: IpcStatus,
    /// State of the running agent when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AgentState>,
    /// Version of the running agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// PID of the running agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Human-readable detail (errors, refusals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl IpcResponse {
    /// An answer with only a verdict and a message (refusals and errors).
    pub fn refusal(status: IpcStatus, message: impl Into<String>) -> Self {
        IpcResponse {
            status,
            state: None,
            version: None,
            pid: None,
            message: Some(message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form_matches_the_contract() {
        let text = r#"{"command":"force_restart","secret":"ab","args":["--server","x"]}"#;
        let request: IpcRequest = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.command, IpcCommand::ForceRestart);
        assert_eq!(request.args, ["--server", "x"]);
        assert!(!format!("{request:?}").contains("ab\""));
        let status: IpcRequest = serde_json::from_str(r#"{"command":"status","secret":""}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(status.args.is_empty());
        let stop: IpcRequest = serde_json::from_str(r#"{"command":"stop","secret":""}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stop.command, IpcCommand::Stop);
    }

    #[test]
    fn response_wire_form_matches_the_contract() {
        let response = IpcResponse {
            status: IpcStatus::BusyUpdating,
            state: Some(AgentState::UpdatingDownloading),
            version: Some("1.2.3".into()),
            pid: None,
            message: None,
        };
        let text = serde_json::to_string(&response).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"status":"busy_updating","state":"UPDATING_DOWNLOADING","version":"1.2.3"}"#
        );
    }
}
