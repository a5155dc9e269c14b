-- Offers are facts the server records: each release the server offered to an agent (in the
-- answer to its update check or heartbeat, or pushed on its WebSocket), once per agent and
-- release. Update progress counts for a release only from agents that were offered it.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE update_offers (
    agent_id         TEXT NOT NULL,
    version          TEXT NOT NULL,
    platform         TEXT NOT NULL,
    -- check, heartbeat or push: how the first offer went out.
    via              TEXT NOT NULL,
    first_offered_at TEXT NOT NULL,
    PRIMARY KEY (agent_id, version, platform)
);
CREATE INDEX update_offers_release ON update_offers (version, platform, agent_id);

-- Whether the server could check an event when it stored it (the agent was offered that
-- release on the platform it registered with). Unverified events are kept for the agent's
-- page and never counted. Events stored before this migration stay counted as they were.
ALTER TABLE update_events ADD COLUMN verified BIGINT NOT NULL DEFAULT 1;
CREATE INDEX update_events_release_verified ON update_events (version, platform, verified, step, agent_id);

-- Groups: every agent is in one (default `default`). The agent's own `--group` is taken at
-- registration and from its heartbeats until an operator assigns one (then the operator's
-- assignment wins).
ALTER TABLE agents ADD COLUMN agent_group TEXT NOT NULL DEFAULT 'default';
ALTER TABLE agents ADD COLUMN group_by_operator BIGINT NOT NULL DEFAULT 0;
CREATE INDEX agents_group ON agents (agent_group, agent_id);

-- A group's own rollout percentage of a release, overriding the release's for that group's
-- agents (a paused or halted release is offered to no group).
CREATE TABLE group_rollouts (
    version         TEXT NOT NULL,
    platform        TEXT NOT NULL,
    agent_group     TEXT NOT NULL,
    rollout_percent BIGINT NOT NULL CHECK (rollout_percent BETWEEN 0 AND 100),
    PRIMARY KEY (platform, agent_group, version)
);
