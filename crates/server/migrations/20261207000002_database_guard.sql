-- The database size guard (issue 23, `serve --max-database-mb`): each time it sheds the oldest
-- error reports and update events, one row says how many, so the dashboard and the API can
-- say so on every replica. The newest rows only are kept. Portable SQL (SQLite, PostgreSQL).

CREATE TABLE database_sheds (
    shed_id        TEXT PRIMARY KEY,
    shed_at        TEXT NOT NULL,
    reports        BIGINT NOT NULL,
    events         BIGINT NOT NULL,
    -- The database's size before and after, and the limit, in bytes.
    bytes_before   BIGINT NOT NULL,
    bytes_after    BIGINT NOT NULL,
    limit_bytes    BIGINT NOT NULL
);

CREATE INDEX database_sheds_at ON database_sheds (shed_at, shed_id);
