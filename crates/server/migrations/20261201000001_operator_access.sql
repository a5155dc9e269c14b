-- Operator tokens with roles, the audit log of operator actions, and the indexes that keyset
-- paging and retention read in order. Portable SQL: the same file runs on SQLite and PostgreSQL.

CREATE TABLE operator_tokens (
    -- Unique, chosen at creation; the audit log names the token by it.
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- SHA-256 (lower-case hex) of the token; the token itself is never stored.
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
);

CREATE TABLE audit_log (
    audit_id  TEXT PRIMARY KEY,
    at        TEXT NOT NULL,
    -- Token name, or cli:USER for a command run on the server.
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT,
    -- ok, denied (role too low) or refused (valid request the server turned down).
    outcome   TEXT NOT NULL,
    -- Peer address, or local for a command.
    source    TEXT NOT NULL
);

CREATE INDEX audit_log_at ON audit_log (at, audit_id);

-- Listings and retention walk error reports by (received_at, report_id).
DROP INDEX error_reports_received_at;
DROP INDEX error_reports_agent_received_at;
CREATE INDEX error_reports_received ON error_reports (received_at, report_id);
CREATE INDEX error_reports_agent_received ON error_reports (agent_id, received_at, report_id);

CREATE INDEX agents_hostname ON agents (hostname, agent_id);
CREATE INDEX releases_published ON releases (published_at, platform, version);
