-- The operator dashboard: sessions, each agent's last metrics and version history, the agents'
-- update progress, error signatures, rollout control and the indexes the fleet page sorts by.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.

-- A browser session opened with an operator token. Only the SHA-256 of the session id is
-- stored; the session dies with the token it was opened with (joined by the token's hash, so a
-- new token of the same name does not revive it).
CREATE TABLE operator_sessions (
    session_hash TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX operator_sessions_token ON operator_sessions (token_hash);
CREATE INDEX operator_sessions_expires ON operator_sessions (expires_at);

-- The metrics of the agent's latest heartbeat (JSON text).
ALTER TABLE agents ADD COLUMN metrics TEXT;
CREATE INDEX agents_last_seen ON agents (last_seen, agent_id);
CREATE INDEX agents_version ON agents (version, agent_id);
CREATE INDEX agents_state ON agents (state, agent_id);
CREATE INDEX agents_platform ON agents (platform, agent_id);
-- A state filter with each sort: the filter and the order from one index.
CREATE INDEX agents_state_hostname ON agents (state, hostname, agent_id);
CREATE INDEX agents_state_last_seen ON agents (state, last_seen, agent_id);
CREATE INDEX agents_state_version ON agents (state, version, agent_id);
CREATE INDEX agents_state_platform ON agents (state, platform, agent_id);

-- Each version an agent has reported, with when it was first seen running it.
CREATE TABLE agent_versions (
    agent_id   TEXT NOT NULL,
    version    TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (agent_id, version)
);

-- The agents' own reports of an update's progress (kind update_progress on the agent API).
CREATE TABLE update_events (
    -- Chosen by the agent (the report id); a re-sent event is stored once.
    event_id    TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    version     TEXT NOT NULL,
    platform    TEXT NOT NULL,
    -- offered, downloading, verified, handed_over, healthy, refused, failed, rolled_back
    step        TEXT NOT NULL,
    -- For failed: the update step that failed.
    failed_step TEXT,
    detail      TEXT,
    created_at  TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX update_events_release ON update_events (version, platform, step, agent_id);
CREATE INDEX update_events_agent ON update_events (agent_id, received_at);

-- Error reports grouped by kind and message signature (ids, hex and numbers stripped).
ALTER TABLE error_reports ADD COLUMN signature TEXT;
CREATE INDEX error_reports_signature ON error_reports (kind, signature);

-- Rollout control per release: paused by an operator or halted by the failure threshold.
ALTER TABLE releases ADD COLUMN paused BIGINT NOT NULL DEFAULT 0;
ALTER TABLE releases ADD COLUMN halted_at TEXT;
ALTER TABLE releases ADD COLUMN halt_percent BIGINT NOT NULL DEFAULT 5;
ALTER TABLE releases ADD COLUMN halt_min_attempts BIGINT NOT NULL DEFAULT 20;
