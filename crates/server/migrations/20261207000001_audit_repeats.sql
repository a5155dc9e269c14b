-- Repeated denials aggregate (issue 23): the denials of one actor and action within one
-- minute share one row (its id is derived from actor, action and minute), whose `repeats`
-- counts them and `last_at` says when the last came, so a flood of denied calls leaves one
-- row a minute, with the count right. Portable SQL: the same file runs on SQLite and PostgreSQL.

ALTER TABLE audit_log ADD COLUMN repeats BIGINT NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN last_at TEXT;
