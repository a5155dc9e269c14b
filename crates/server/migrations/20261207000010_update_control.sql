-- A group's maintenance windows: outside them its agents are offered no update. One row per
-- group that has windows; `windows` holds their text forms ("Mon-Fri 22:00-05:00"), one per
-- line, and `clock` says whether they are read in UTC or on each agent's own clock.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE group_windows (
    agent_group TEXT PRIMARY KEY,
    windows     TEXT NOT NULL,
    clock       TEXT NOT NULL CHECK (clock IN ('utc', 'agent')),
    updated_at  TEXT NOT NULL
);

-- A group pinned to one published release per platform: its agents are offered exactly that
-- version. A pin to a version older than the newest published one carries the rollback
-- statement signed by the root key (JSON), without which agents refuse to go back.
CREATE TABLE group_pins (
    agent_group TEXT NOT NULL,
    platform    TEXT NOT NULL,
    version     TEXT NOT NULL,
    rollback    TEXT,
    pinned_at   TEXT NOT NULL,
    PRIMARY KEY (agent_group, platform)
);

-- Updates in flight: at most `max_in_flight` agents between a recorded offer of the release and
-- an end step (healthy, failed, rolled back, refused) at once (NULL: no cap). An offer older than
-- `stuck_after_secs` without an end step is stuck: counted apart and no longer in flight.
ALTER TABLE releases ADD COLUMN max_in_flight BIGINT;
ALTER TABLE releases ADD COLUMN stuck_after_secs BIGINT NOT NULL DEFAULT 1800;

-- A group's own halt rule for a release (either number may be left to the release's): when
-- the group's own failures pass it, the whole release halts (a canary group stops everyone).
CREATE TABLE group_halt_rules (
    version           TEXT NOT NULL,
    platform          TEXT NOT NULL,
    agent_group       TEXT NOT NULL,
    halt_percent      BIGINT CHECK (halt_percent BETWEEN 0 AND 100),
    halt_min_attempts BIGINT CHECK (halt_min_attempts >= 0),
    PRIMARY KEY (platform, agent_group, version)
);
