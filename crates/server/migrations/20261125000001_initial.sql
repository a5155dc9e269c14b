-- Initial schema of cms-server. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Timestamps are TEXT in RFC 3339 (UTC); integers are BIGINT (INTEGER affinity on SQLite).

CREATE TABLE agents (
    agent_id      TEXT PRIMARY KEY,
    -- SHA-256 (lower-case hex) of the agent's bearer token; the token itself is never stored.
    token_hash    TEXT NOT NULL UNIQUE,
    hostname      TEXT NOT NULL,
    platform      TEXT NOT NULL,
    version       TEXT NOT NULL,
    state         TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    last_seen     TEXT NOT NULL
);

CREATE TABLE error_reports (
    -- Chosen by the agent (UUID v4); a re-sent report is stored once.
    report_id     TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    message       TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    -- JSON text, NULL when the agent sent no details.
    details       TEXT,
    created_at    TEXT NOT NULL,
    received_at   TEXT NOT NULL
);

CREATE INDEX error_reports_received_at ON error_reports (received_at);
CREATE INDEX error_reports_agent_received_at ON error_reports (agent_id, received_at);

CREATE TABLE releases (
    version         TEXT NOT NULL,
    platform        TEXT NOT NULL,
    published_at    TEXT NOT NULL,
    package_path    TEXT NOT NULL,
    length          BIGINT NOT NULL,
    sha256          TEXT NOT NULL,
    rollout_percent BIGINT NOT NULL DEFAULT 100 CHECK (rollout_percent BETWEEN 0 AND 100),
    UNIQUE (version, platform)
);
