-- Each automatic halt of a release, kept after it is resumed: when, why (the funnel's numbers
-- at the halt, as text), and who resumed it when, with the reason they gave.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE rollout_halts (
    version    TEXT NOT NULL,
    platform   TEXT NOT NULL,
    halted_at  TEXT NOT NULL,
    why        TEXT NOT NULL,
    resumed_at TEXT,
    resumed_by TEXT,
    reason     TEXT,
    PRIMARY KEY (version, platform, halted_at)
);
