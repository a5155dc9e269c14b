-- Agent identities an operator can manage: revocation, the enrollment token that enrolled each
-- agent, the credential's age, and enrollment tokens as objects. Portable SQL: the same file
-- runs on SQLite and PostgreSQL.

-- When an operator revoked the agent (RFC 3339); NULL while its credential is valid.
ALTER TABLE agents ADD COLUMN revoked_at TEXT;
-- Name of the enrollment token that enrolled it (`default` for the server's --enrollment-token);
-- NULL for an agent enrolled without a token or before this column existed.
ALTER TABLE agents ADD COLUMN enrolled_by TEXT;
-- When its current credential was issued (RFC 3339); NULL for agents enrolled before this
-- column existed (their registration time stands for it).
ALTER TABLE agents ADD COLUMN credential_at TEXT;

CREATE TABLE enrollment_tokens (
    -- Unique, chosen at creation; agents' enrolled_by names the token by it.
    name        TEXT PRIMARY KEY,
    -- SHA-256 (lower-case hex) of the token; the token itself is never stored.
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    -- RFC 3339; NULL: never expires.
    expires_at  TEXT,
    -- Registrations allowed; NULL: unlimited.
    max_uses    BIGINT,
    uses        BIGINT NOT NULL DEFAULT 0,
    -- The group its agents join (issue 25 wires it to the agents' group).
    group_name  TEXT,
    -- RFC 3339 when revoked; a revoked token is kept so that agents still name it.
    revoked_at  TEXT
);

-- Credential rotation: the SHA-256 of the credential the agent proposed and has not used yet
-- (both it and token_hash are accepted until it is used), and an operator's request to rotate
-- at the next heartbeat.
ALTER TABLE agents ADD COLUMN pending_token_hash TEXT;
ALTER TABLE agents ADD COLUMN rotate_requested_at TEXT;
CREATE INDEX agents_pending_token ON agents (pending_token_hash);
