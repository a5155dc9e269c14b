-- How each agent reaches the backend (direct, explicit proxy, system proxy), from its latest
-- heartbeat; NULL for agents that do not say (older versions).
ALTER TABLE agents ADD COLUMN network TEXT;
