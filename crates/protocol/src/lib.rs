//! Wire types shared by `cms_agent`, `updater` and `cms-server`.
//!
//! Everything that crosses a process boundary as JSON is defined here once, so the agent and
//! the reference server cannot drift apart. This crate holds data and names only: it must never
//! do I/O, hold policy (which transitions are allowed, how often to poll) or depend on a runtime.
//! `docs/protocol.md` describes the HTTP and WebSocket API these types travel over.

#[cfg(feature = "delta")]
pub mod delta;
mod group;
mod ipc;
mod operator;
mod progress;
mod rollback;
mod state;
pub mod update;
mod window;

pub use group::{DEFAULT_GROUP, MAX_GROUP_LEN, is_valid_group};
pub use ipc::{IPC_MAX_MESSAGE_BYTES, IpcCommand, IpcRequest, IpcResponse, IpcStatus};
pub use operator::{
    AuditEntry, CreatedOperatorToken, NewOperatorToken, OperatorRole, OperatorToken, UnknownRole,
};
pub use progress::{DeferReason, Transfer, UPDATE_PROGRESS_KIND, UpdateProgress, UpdateStep};
pub use rollback::{ROLLBACK_TYPE, RollbackSignature, RollbackStatement, RollbackTerms};
pub use state::{AgentState, UnknownState};
pub use window::{MAX_WINDOWS, MaintenanceWindow, UpdateWindows, WindowClock, WindowError};

use serde::{Deserialize, Serialize};

/// The version compiled into the agent and the updater: `CMS_BUILD_VERSION` when the build set
/// it (release pipelines and tests build several versions this way), else the crate version.
pub const BUILD_VERSION: &str = match option_env!("CMS_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// URL paths of the agent-facing API, relative to the server's base URL.
pub mod paths {
    /// `POST` [`crate::RegisterRequest`] -> [`crate::RegisterResponse`].
    pub const REGISTER: &str = "/api/v1/agent/register";
    /// `POST` [`crate::StatusReport`] -> 204 (bearer auth).
    pub const STATUS: &str = "/api/v1/agent/status";
    /// `GET ?version=&platform=` -> [`crate::UpdateCheckResponse`] (bearer auth).
    pub const UPDATE_CHECK: &str = "/api/v1/agent/update";
    /// `POST` [`crate::ErrorBatch`] -> [`crate::ErrorBatchResponse`] (bearer auth).
    pub const ERRORS: &str = "/api/v1/agent/errors";
    /// `POST` [`crate::NewCredential`] -> 204 (bearer auth): the credential rotation.
    pub const CREDENTIAL: &str = "/api/v1/agent/credential";
    /// WebSocket upgrade (bearer auth); the server sends [`crate::ServerEvent`] text frames.
    pub const WEBSOCKET: &str = "/api/v1/agent/ws";
    /// Operator API (docs/protocol.md): agents, paged (viewer).
    pub const AGENTS: &str = "/api/v1/agents";
    /// Operator API (docs/protocol.md): stored error reports, paged (viewer).
    pub const OPERATOR_ERRORS: &str = "/api/v1/errors";
    /// Operator API (docs/protocol.md): published releases, paged (viewer).
    pub const RELEASES: &str = "/api/v1/releases";
    /// Operator tokens: `GET` lists, `POST` creates, `DELETE /{name}` revokes (admin).
    pub const TOKENS: &str = "/api/v1/tokens";
    /// The audit log of operator actions, newest first, paged (admin).
    pub const AUDIT: &str = "/api/v1/audit";
    /// Base of the signed release metadata (The Update Framework): `GET` + `root.json`,
    /// `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`. Public: the
    /// metadata is signed, so it may equally come from a mirror or CDN.
    pub const TUF_METADATA: &str = "/api/v1/tuf/";
    /// Liveness of the server.
    pub const HEALTHZ: &str = "/healthz";
}

/// Items per page of an operator listing when `?limit=` is not given.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest `?limit=` of an operator listing; larger values are cut to it.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Name of the WebSocket event that tells an agent a newer release is waiting for it.
pub const EVENT_UPDATE_REQUIRED: &str = "agent:update_required";
/// Longest spread of update checks a push asks for ([`UpdateRequired::spread_secs`]); an agent
/// takes a larger value as this, so a wrong one cannot put its check off for days.
pub const MAX_PUSH_SPREAD_SECS: u32 = 600;
/// Name of the WebSocket message that carries an agent's heartbeat to the server.
pub const EVENT_HEARTBEAT: &str = "agent:heartbeat";
/// Name of the WebSocket event that answers a heartbeat.
pub const EVENT_HEARTBEAT_ACK: &str = "agent:heartbeat_ack";

/// Largest WebSocket message or frame either side accepts: events are a few hundred bytes, and
/// a peer that sends more is refused rather than buffered.
pub const WS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Read buffer of each WebSocket. The library's default (128 KiB) is zero-filled per socket,
/// which would make an idle agent, and a server holding thousands of sockets, pay for buffer
/// space that small events never use.
pub const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

/// What `agent.lock` holds, for other processes to read (the updater's health check, a second
/// instance explaining why it exits). The OS lock, not this record, decides who owns the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// PID of the owning agent.
    pub pid: u32,
    /// Opaque start time of that process, so a reused PID is not mistaken for the owner.
    pub process_start: u64,
    /// Last heartbeat of the owner (RFC 3339, UTC).
    pub timestamp: String,
    /// Version of the owning agent.
    pub version: String,
}

/// First contact of an agent, or a re-enrollment after the server forgot it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Machine name shown to operators.
    pub hostname: String,
    /// `windows-x86_64` or `linux-x86_64`: which release packages fit this agent.
    pub platform: String,
    /// Version of the running agent binary.
    pub version: String,
    /// Required when the server was started with an enrollment token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<String>,
    /// The group the agent was given (`cms_agent --group`); an operator's assignment wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The identity the agent keeps in `config.json` and presents on every later call.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Stable id of this agent in the fleet.
    pub agent_id: String,
    /// Per-agent bearer credential; the server keeps only its hash. Never log it.
    pub agent_token: String,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("agent_id", &self.agent_id)
            .field("agent_token", &"<redacted>")
            .finish()
    }
}

/// Cheap numbers an operator wants on the fleet dashboard; sampled at each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Resident memory of the agent process.
    pub rss_bytes: u64,
    /// CPU used by the agent since the previous heartbeat, in percent of one core.
    pub cpu_percent: f32,
    /// Seconds since the agent process started.
    pub uptime_secs: u64,
    /// Error reports waiting in `error_reports.jsonl` for the backend to come back.
    pub buffered_errors: u64,
}

/// The heartbeat: proves the agent is alive and says what it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Current state of the agent's state machine.
    pub state: AgentState,
    /// Version of the running agent binary.
    pub version: String,
    /// Resource use of the agent.
    pub metrics: Metrics,
    /// How the agent reaches the backend: `direct`, `explicit proxy` or `system proxy (...)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The group the agent was given (`cms_agent --group`); an operator's assignment wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How many minutes the agent's local clock is ahead of UTC, for maintenance windows read
    /// on the agent's clock ([`WindowClock::Agent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_minutes: Option<i32>,
}

/// Where and what to download when a newer release exists for this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateInfo {
    /// Version of the release.
    pub version: String,
    /// Platform the package is built for.
    pub platform: String,
    /// Absolute URL, or a path relative to the server's base URL.
    pub package_url: String,
    /// Name of the package in the signed TUF targets metadata; the agent takes the length and
    /// hash it trusts from there, never from this message.
    pub target: String,
    /// Length of the package as the server's database has it; the agent refuses the update when
    /// it differs from the signed length.
    pub length: u64,
    /// Lower-case hex SHA-256 as the server's database has it; checked against the signed one.
    pub sha256: String,
    /// The agent's group's maintenance windows: the agent starts the update only while one is
    /// open on its clock, else it waits for a later offer. Absent: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<UpdateWindows>,
    /// With an offer of a release older than the agent runs (its group is pinned to it): the
    /// root-signed statement that allows it. Without one an agent never installs an older
    /// version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Box<RollbackStatement>>,
    /// The release was published urgent (a security fix): an agent on a metered connection
    /// takes it at once instead of deferring it. Absent (an older server): not urgent.
    #[serde(default)]
    pub urgent: bool,
}

/// Answer to an update check: `update` is absent when the agent is current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCheckResponse {
    /// The release this agent should move to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateInfo>,
}

/// Body of `POST` [`paths::CREDENTIAL`]: the credential the agent chose to use next (its own
/// 256 random bits in hex); the server accepts both until the new one is used.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCredential {
    /// The new bearer token.
    pub agent_token: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewCredential { agent_token: <redacted> }")
    }
}

/// One problem the agent wants an operator to see; `report_id` makes re-sends idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Unique id chosen by the agent (UUID v4): the server stores each id once.
    pub report_id: String,
    /// Short machine-readable category, such as `update_download` or `config_migration`.
    pub kind: String,
    /// Human-readable description; never contains secrets.
    pub message: String,
    /// Agent version that produced the report.
    pub agent_version: String,
    /// When the agent saw the problem (RFC 3339, UTC).
    pub created_at: String,
    /// Optional structured context.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// Error reports travel in batches so a buffer flushed after an outage costs one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBatch {
    /// The reports, oldest first.
    pub reports: Vec<ErrorReport>,
}

/// How many reports of a batch were new; duplicates are re-sends the server already had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBatchResponse {
    /// Reports stored for the first time.
    pub stored: u32,
    /// Reports whose `report_id` was already stored.
    pub duplicates: u32,
}

/// Payload of [`EVENT_UPDATE_REQUIRED`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequired {
    /// The version the server wants the agent to move to, when it knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When a release is pushed to more agents than the server checks in a second: the agent
    /// checks at a random moment within this many seconds, not at once (the push's spread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_secs: Option<u32>,
}

impl UpdateRequired {
    /// How long an agent waits before the update check this push asks for: `random` (0 to 1)
    /// of its spread, taken as [`MAX_PUSH_SPREAD_SECS`] at most; `None` (check now) when it
    /// asks for none.
    pub fn check_delay(&self, random: f64) -> Option<std::time::Duration> {
        let secs = self
            .spread_secs
            .filter(|&s| s > 0)?
            .min(MAX_PUSH_SPREAD_SECS);
        let spread = std::time::Duration::from_secs(u64::from(secs));
        Some(spread.mul_f64(random.clamp(0.0, 1.0)))
    }
}

/// Payload of [`EVENT_HEARTBEAT_ACK`]: the server stored a heartbeat sent over the WebSocket,
/// and says what the HTTP update check would say right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The release this agent should move to, if any (same rule as the update check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateInfo>,
    /// The server asks the agent to rotate its credential ([`NewCredential`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rotate_credential: bool,
}

/// A message pushed by the server over the agent's WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum ServerEvent {
    /// A newer release is waiting: check for updates now instead of at the next poll.
    #[serde(rename = "agent:update_required")]
    UpdateRequired(UpdateRequired),
    /// The answer to an [`AgentMessage::Heartbeat`].
    #[serde(rename = "agent:heartbeat_ack")]
    HeartbeatAck(HeartbeatAck),
}

/// A message the agent sends over its WebSocket (a server that predates it ignores it, so the
/// agent falls back to HTTP when no answer comes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum AgentMessage {
    /// The heartbeat, the same body as `POST /api/v1/agent/status`; answered with
    /// [`ServerEvent::HeartbeatAck`].
    #[serde(rename = "agent:heartbeat")]
    Heartbeat(StatusReport),
}

/// One agent as operators see it (`GET /api/v1/agents`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSummary {
    /// Stable id of the agent.
    pub agent_id: String,
    /// Machine name reported at registration.
    pub hostname: String,
    /// Platform reported at registration.
    pub platform: String,
    /// Version from the latest heartbeat.
    pub version: String,
    /// State from the latest heartbeat (an [`AgentState`] name).
    pub state: String,
    /// Time of the latest contact (RFC 3339).
    pub last_seen: String,
    /// Whether the agent holds a WebSocket or was seen recently.
    pub online: bool,
    /// How the agent reaches the backend (`direct`, `explicit proxy`, `system proxy (...)`),
    /// from its latest heartbeat; absent for agents that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// When an operator revoked the agent (RFC 3339); absent while its credential is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// One stored error report as operators see it (`GET /api/v1/errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredError {
    /// Id chosen by the agent.
    pub report_id: String,
    /// Agent that sent the report.
    pub agent_id: String,
    /// Category of the problem.
    pub kind: String,
    /// Human-readable description.
    pub message: String,
    /// When the agent saw the problem (RFC 3339).
    pub created_at: String,
}

/// One published release (`GET /api/v1/releases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSummary {
    /// Version of the release.
    pub version: String,
    /// Platform the package is built for.
    pub platform: String,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// Published `--urgent` (absent from an older server: not urgent).
    #[serde(default)]
    pub urgent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_required_event_has_the_documented_shape() {
        let event = ServerEvent::UpdateRequired(UpdateRequired {
            version: Some("2.0.0".into()),
            spread_secs: None,
        });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "agent:update_required", "data": {"version": "2.0.0"}})
        );
        assert_eq!(serde_json::from_value::<ServerEvent>(json).unwrap(), event);
    }

    #[test]
    fn a_push_with_a_spread_delays_the_check_a_random_part_of_it() {
        use std::time::Duration;
        let push = |spread_secs| UpdateRequired {
            version: None,
            spread_secs,
        };
        assert_eq!(push(None).check_delay(0.5), None);
        assert_eq!(push(Some(0)).check_delay(0.5), None);
        assert_eq!(push(Some(10)).check_delay(0.0), Some(Duration::ZERO));
        assert_eq!(
            push(Some(10)).check_delay(0.25),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            push(Some(10)).check_delay(7.0),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            push(Some(u32::MAX)).check_delay(1.0),
            Some(Duration::from_secs(600)),
            "never longer than ten minutes"
        );
    }

    #[test]
    fn heartbeat_messages_have_the_documented_shape() {
        let heartbeat = AgentMessage::Heartbeat(StatusReport {
            state: AgentState::Idle,
            version: "1.0.0".into(),
            metrics: Metrics::default(),
            network: None,
            group: None,
            utc_offset_minutes: None,
        });
        let json = serde_json::to_value(&heartbeat).unwrap();
        assert_eq!(json["event"], EVENT_HEARTBEAT);
        assert_eq!(json["data"]["state"], "IDLE");
        assert_eq!(
            serde_json::from_value::<AgentMessage>(json).unwrap(),
            heartbeat
        );
        let ack = ServerEvent::HeartbeatAck(HeartbeatAck::default());
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            serde_json::json!({"event": EVENT_HEARTBEAT_ACK, "data": {}})
        );
    }

    #[test]
    fn register_response_debug_hides_the_token() {
        let response = RegisterResponse {
            agent_id: "a1".into(),
            agent_token: "very-secret".into(),
        };
        assert!(!format!("{response:?}").contains("very-secret"));
    }

    #[test]
    fn empty_update_check_serializes_without_update() {
        let json = serde_json::to_string(&UpdateCheckResponse::default()).unwrap();
        assert_eq!(json, "{}");
    }
}
