-- Report and event ids are chosen by agents: scope them to the agent, so one agent's ids can
-- never occupy (and silently drop) another's. Portable SQL: each table is rebuilt with the key
-- (agent_id, id) and its indexes made again.

CREATE TABLE error_reports_scoped (
    report_id     TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    message       TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    details       TEXT,
    created_at    TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    signature     TEXT,
    PRIMARY KEY (agent_id, report_id)
);
INSERT INTO error_reports_scoped (report_id, agent_id, kind, message, agent_version, details,
    created_at, received_at, signature)
SELECT report_id, agent_id, kind, message, agent_version, details, created_at, received_at,
    signature
FROM error_reports;
DROP TABLE error_reports;
ALTER TABLE error_reports_scoped RENAME TO error_reports;
CREATE INDEX error_reports_received_at ON error_reports (received_at);
CREATE INDEX error_reports_agent_received_at ON error_reports (agent_id, received_at);
CREATE INDEX error_reports_received ON error_reports (received_at, report_id);
CREATE INDEX error_reports_agent_received ON error_reports (agent_id, received_at, report_id);
CREATE INDEX error_reports_signature ON error_reports (kind, signature);

CREATE TABLE update_events_scoped (
    event_id    TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    version     TEXT NOT NULL,
    platform    TEXT NOT NULL,
    step        TEXT NOT NULL,
    failed_step TEXT,
    detail      TEXT,
    created_at  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (agent_id, event_id)
);
INSERT INTO update_events_scoped (event_id, agent_id, version, platform, step, failed_step,
    detail, created_at, received_at)
SELECT event_id, agent_id, version, platform, step, failed_step, detail, created_at, received_at
FROM update_events;
DROP TABLE update_events;
ALTER TABLE update_events_scoped RENAME TO update_events;
CREATE INDEX update_events_release ON update_events (version, platform, step, agent_id);
CREATE INDEX update_events_agent ON update_events (agent_id, received_at);
CREATE INDEX update_events_agent_version ON update_events (agent_id, version, step);
CREATE INDEX update_events_received ON update_events (received_at);
