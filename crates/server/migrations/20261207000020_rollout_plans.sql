-- A release's rollout plan (`release publish` without `--rollout`): its stages, in order, as
-- typed ("3" is three agents, "10%" a share of the fleet) and how many there are, the soak time each stage must stay
-- healthy before the next one starts, and where it stands. `stage` is the 0-based index of the
-- current stage; `healthy_since` is when the current stage was first seen healthy (NULL: not
-- healthy now). `scaled_halt` is 1 when the halt rule's minimum of attempts follows the stage's
-- size (none was given at publish). Releases published with `--rollout N` have no plan.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE rollout_plans (
    version          TEXT NOT NULL,
    platform         TEXT NOT NULL,
    stages           TEXT NOT NULL,
    stage_count      BIGINT NOT NULL CHECK (stage_count >= 1),
    soak_secs        BIGINT NOT NULL CHECK (soak_secs >= 0),
    stage            BIGINT NOT NULL DEFAULT 0 CHECK (stage >= 0),
    stage_started_at TEXT NOT NULL,
    healthy_since    TEXT,
    canary_group     TEXT,
    scaled_halt      BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (version, platform)
);
