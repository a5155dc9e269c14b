-- The funnel counts a release from its own rows: its events, and the agents on its version
-- (each probed for whether it reported the release). Without these indexes SQLite answered the
-- probes from update_events_release, scanning every event of the release once per agent (4.5 s
-- for the releases page at 5,000 agents, again at each failure the halt rule counted), and
-- found the agents on a version through the platform's whole fleet.
CREATE INDEX update_events_agent_version ON update_events (agent_id, version, step);
CREATE INDEX agents_version_platform ON agents (version, platform, agent_id);
