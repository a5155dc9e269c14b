-- Several `cms-server serve` processes on one database (replicas). Portable SQL.

-- Each running replica renews its lease; one whose lease ran out is dead, and the agent
-- connections it recorded no longer count.
CREATE TABLE replicas (
    replica_id  TEXT PRIMARY KEY,
    started_at  TEXT NOT NULL,
    lease_until TEXT NOT NULL
);

-- Which replica holds each agent's WebSocket (at most one: a newer connection replaces the row).
CREATE TABLE agent_connections (
    agent_id      TEXT PRIMARY KEY,
    replica_id    TEXT NOT NULL,
    connection_id BIGINT NOT NULL,
    connected_at  TEXT NOT NULL
);

CREATE INDEX agent_connections_replica ON agent_connections (replica_id);
