-- Urgent releases (`release publish --urgent`): the offer says so, and an agent on a metered
-- connection takes it at once instead of deferring it until the connection is unmetered.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
ALTER TABLE releases ADD COLUMN urgent BIGINT NOT NULL DEFAULT 0;
