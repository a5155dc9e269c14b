//! Queries of the database size guard (`intake/guard.rs` has the policy): the database's size,
//! one chunk of the oldest error reports or update events shed, and the record of each shed.

use serde::Serialize;

use super::{Backend, Db, DbError};

/// Sheds kept in `database_sheds` (the newest).
const SHEDS_KEPT: i64 = 50;

/// One table the guard may shed from, oldest rows first, and how to size its rows.
struct Sheddable {
    oldest: &'static str,
    cut: &'static str,
    count: &'static str,
    /// PostgreSQL: the table's bytes (with indexes and TOAST) per row.
    weight: &'static str,
    delete: &'static str,
}

const REPORTS: Sheddable = Sheddable {
    oldest: "SELECT MIN(received_at) FROM error_reports",
    cut: "SELECT received_at, report_id FROM (SELECT received_at, report_id FROM error_reports \
          ORDER BY received_at, report_id LIMIT $1) t \
          ORDER BY received_at DESC, report_id DESC LIMIT 1",
    count: "SELECT COUNT(*) FROM error_reports WHERE (received_at, report_id) <= ($1, $2)",
    weight: "SELECT CAST(pg_total_relation_size('error_reports') \
             / GREATEST((SELECT COUNT(*) FROM error_reports), 1) AS BIGINT)",
    delete: "DELETE FROM error_reports WHERE (received_at, report_id) <= ($1, $2)",
};

const EVENTS: Sheddable = Sheddable {
    oldest: "SELECT MIN(received_at) FROM update_events",
    cut: "SELECT received_at, event_id FROM (SELECT received_at, event_id FROM update_events \
          ORDER BY received_at, event_id LIMIT $1) t \
          ORDER BY received_at DESC, event_id DESC LIMIT 1",
    count: "SELECT COUNT(*) FROM update_events WHERE (received_at, event_id) <= ($1, $2)",
    weight: "SELECT CAST(pg_total_relation_size('update_events') \
             / GREATEST((SELECT COUNT(*) FROM update_events), 1) AS BIGINT)",
    delete: "DELETE FROM update_events WHERE (received_at, event_id) <= ($1, $2)",
};

/// What one shed chunk removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShedChunk {
    /// Error reports deleted.
    pub reports: u64,
    /// Update events deleted.
    pub events: u64,
    /// Their estimated size in bytes on PostgreSQL (their share of the table's size); 0 on
    /// SQLite, where the database's size is measured again instead.
    pub bytes: u64,
}

/// A shed as recorded, for the dashboard and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseShed {
    /// When (RFC 3339).
    pub shed_at: String,
    /// Error reports deleted.
    pub reports: i64,
    /// Update events deleted.
    pub events: i64,
    /// The database's size before, in bytes.
    pub bytes_before: i64,
    /// Its size after, in bytes.
    pub bytes_after: i64,
    /// The limit (`--max-database-mb`), in bytes.
    pub limit_bytes: i64,
}

impl Db {
    /// Whether [`Db::database_bytes`] falls when rows are deleted (SQLite counts its free
    /// pages apart; PostgreSQL keeps deleted rows' space in its tables).
    pub fn size_falls_after_delete(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    /// Bytes the database holds: SQLite's pages in use (free pages left by deletes are not
    /// counted), or on PostgreSQL the tables of the current schema with their indexes and
    /// TOAST (which PostgreSQL does not give back after deletes, only reuses).
    pub async fn database_bytes(&self) -> Result<u64, DbError> {
        let query = match self.backend {
            Backend::Sqlite => {
                "SELECT (p.page_count - f.freelist_count) * s.page_size \
                 FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s"
            }
            Backend::Postgres => {
                "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            }
        };
        let bytes = sqlx::query_scalar::<_, i64>(query)
            .fetch_one(&self.pool)
            .await?;
        Ok(bytes.max(0).unsigned_abs())
    }

    /// Deletes up to `chunk` of the oldest rows of error reports or update events, from
    /// whichever holds the older one; `None` when both are empty.
    pub async fn shed_oldest(&self, chunk: i64) -> Result<Option<ShedChunk>, DbError> {
        let report = self.oldest(&REPORTS).await?;
        let event = self.oldest(&EVENTS).await?;
        let (table, is_report) = match (report, event) {
            (None, None) => return Ok(None),
            (Some(_), None) => (&REPORTS, true),
            (None, Some(_)) => (&EVENTS, false),
            (Some(r), Some(e)) if r <= e => (&REPORTS, true),
            (Some(_), Some(_)) => (&EVENTS, false),
        };
        let Some((at, id)) = sqlx::query_as::<_, (String, String)>(table.cut)
            .bind(chunk.max(1))
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let weight = match self.backend {
            Backend::Sqlite => 0,
            Backend::Postgres => {
                sqlx::query_scalar::<_, i64>(table.weight)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        let rows = sqlx::query_scalar::<_, i64>(table.count)
            .bind(&at)
            .bind(&id)
            .fetch_one(&self.pool)
            .await?;
        let deleted = sqlx::query(table.delete)
            .bind(&at)
            .bind(&id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let bytes = rows.saturating_mul(weight).max(0).unsigned_abs();
        Ok(Some(if is_report {
            ShedChunk {
                reports: deleted,
                bytes,
                ..ShedChunk::default()
            }
        } else {
            ShedChunk {
                events: deleted,
                bytes,
                ..ShedChunk::default()
            }
        }))
    }

    async fn oldest(&self, table: &Sheddable) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar::<_, Option<String>>(table.oldest)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Records a shed and keeps only the newest [`SHEDS_KEPT`].
    pub async fn record_shed(&self, shed: &DatabaseShed) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO database_sheds (shed_id, shed_at, reports, events, bytes_before, \
             bytes_after, limit_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&shed.shed_at)
        .bind(shed.reports)
        .bind(shed.events)
        .bind(shed.bytes_before)
        .bind(shed.bytes_after)
        .bind(shed.limit_bytes)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM database_sheds WHERE shed_id NOT IN (SELECT shed_id FROM \
             database_sheds ORDER BY shed_at DESC, shed_id DESC LIMIT $1)",
        )
        .bind(SHEDS_KEPT)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest shed, if any.
    pub async fn last_shed(&self) -> Result<Option<DatabaseShed>, DbError> {
        type Row = (String, i64, i64, i64, i64, i64);
        let row = sqlx::query_as::<_, Row>(
            "SELECT shed_at, reports, events, bytes_before, bytes_after, limit_bytes \
             FROM database_sheds ORDER BY shed_at DESC, shed_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(shed_at, reports, events, bytes_before, bytes_after, limit_bytes)| DatabaseShed {
                shed_at,
                reports,
                events,
                bytes_before,
                bytes_after,
                limit_bytes,
            },
        ))
    }
}
