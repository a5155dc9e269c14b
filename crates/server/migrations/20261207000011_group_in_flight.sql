-- A group's own cap of updates in flight for a release (`rollout set --group G --max-in-flight
-- N`): at most N of the group's agents between a recorded offer and an end step at once, beside
-- the release's own cap (both hold). A branch office on a thin link takes a few at a time.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE group_in_flight (
    version       TEXT NOT NULL,
    platform      TEXT NOT NULL,
    agent_group   TEXT NOT NULL,
    max_in_flight BIGINT NOT NULL CHECK (max_in_flight >= 1),
    PRIMARY KEY (platform, agent_group, version)
);
