//! Rows of the `error_reports` table: ingest with a per-agent cap, the paged listing and the
//! retention sweep (age and total count).

use cms_protocol::StoredError;

use super::{Db, DbError, split_page};

/// Sorts after every stored timestamp (`2026-...`), in any collation: the start of a listing.
const NEWEST_SENTINEL: &str = "9999";

/// One error report to store.
#[derive(Debug, Clone)]
pub struct NewErrorReport<'a> {
    /// Id chosen by the agent.
    pub report: &'a cms_protocol::ErrorReport,
    /// `details` serialized as JSON text, `None` when absent.
    pub details_json: Option<String>,
    /// The message's signature (the intake's message signature).
    pub signature: String,
}

/// Where a page of the error listing starts: after this (received_at, report_id), going back
/// in time. [`ErrorKey::default`] is the newest end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorKey {
    /// When the last report of the previous page was received.
    pub received_at: String,
    /// Its id.
    pub report_id: String,
}

impl Default for ErrorKey {
    fn default() -> Self {
        ErrorKey {
            received_at: NEWEST_SENTINEL.to_owned(),
            report_id: String::new(),
        }
    }
}

/// How many reports one retention sweep removed, and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionSweep {
    /// Older than the age limit.
    pub expired: u64,
    /// Beyond the total count limit (oldest first).
    pub over_count: u64,
}

type StoredTuple = (String, String, String, String, String, String);

impl Db {
    /// Stores a batch of reports in one transaction, then keeps only the agent's newest
    /// `per_agent_cap` reports; returns how many were new.
    pub async fn insert_error_reports(
        &self,
        agent_id: &str,
        reports: &[NewErrorReport<'_>],
        now: &str,
        per_agent_cap: i64,
    ) -> Result<u32, DbError> {
        let mut tx = self.pool.begin().await?;
        let mut stored = 0u32;
        for new in reports {
            let r = new.report;
            let result = sqlx::query(
                "INSERT INTO error_reports (report_id, agent_id, kind, message, agent_version, \
                 details, created_at, received_at, signature) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (agent_id, report_id) DO NOTHING",
            )
            .bind(r.report_id.as_str())
            .bind(agent_id)
            .bind(r.kind.as_str())
            .bind(r.message.as_str())
            .bind(r.agent_version.as_str())
            .bind(new.details_json.clone())
            .bind(r.created_at.as_str())
            .bind(now)
            .bind(new.signature.as_str())
            .execute(&mut *tx)
            .await?;
            if result.rows_affected() > 0 {
                stored += 1;
            }
        }
        let cut = sqlx::query_as::<_, (String, String)>(
            "SELECT received_at, report_id FROM error_reports WHERE agent_id = $1 \
             ORDER BY received_at DESC, report_id DESC LIMIT 1 OFFSET $2",
        )
        .bind(agent_id)
        .bind(per_agent_cap.max(1) - 1)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((received_at, report_id)) = cut {
            sqlx::query(
                "DELETE FROM error_reports WHERE agent_id = $1 \
                 AND (received_at, report_id) < ($2, $3)",
            )
            .bind(agent_id)
            .bind(received_at)
            .bind(report_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// One page of stored reports, newest received first, optionally for one agent, starting
    /// after `after`; `true` when more follow.
    pub async fn list_errors(
        &self,
        agent_id: Option<&str>,
        after: &ErrorKey,
        limit: i64,
    ) -> Result<(Vec<(StoredError, ErrorKey)>, bool), DbError> {
        let query = match agent_id {
            Some(agent_id) => sqlx::query_as::<_, StoredTuple>(
                "SELECT report_id, agent_id, kind, message, created_at, received_at \
                 FROM error_reports WHERE agent_id = $4 AND (received_at, report_id) < ($1, $2) \
                 ORDER BY received_at DESC, report_id DESC LIMIT $3",
            )
            .bind(after.received_at.as_str())
            .bind(after.report_id.as_str())
            .bind(limit + 1)
            .bind(agent_id.to_owned()),
            None => sqlx::query_as::<_, StoredTuple>(
                "SELECT report_id, agent_id, kind, message, created_at, received_at \
                 FROM error_reports WHERE (received_at, report_id) < ($1, $2) \
                 ORDER BY received_at DESC, report_id DESC LIMIT $3",
            )
            .bind(after.received_at.as_str())
            .bind(after.report_id.as_str())
            .bind(limit + 1),
        };
        let rows = query.fetch_all(&self.pool).await?;
        let rows = rows
            .into_iter()
            .map(
                |(report_id, agent_id, kind, message, created_at, received_at)| {
                    let key = ErrorKey {
                        received_at,
                        report_id: report_id.clone(),
                    };
                    let stored = StoredError {
                        report_id,
                        agent_id,
                        kind,
                        message,
                        created_at,
                    };
                    (stored, key)
                },
            )
            .collect();
        Ok(split_page(rows, limit))
    }

    /// Removes reports received before `oldest_kept` and, beyond the newest `max_total`, the
    /// oldest ones; in chunks, so agents' writes get their turn in between.
    pub async fn sweep_error_reports(
        &self,
        oldest_kept: &str,
        max_total: i64,
    ) -> Result<RetentionSweep, DbError> {
        // `(T, '')` sorts before every key received at T: "received before T".
        let expired = self.delete_older_than(oldest_kept, "").await?;
        let cut = sqlx::query_as::<_, (String, String)>(
            "SELECT received_at, report_id FROM error_reports \
             ORDER BY received_at DESC, report_id DESC LIMIT 1 OFFSET $1",
        )
        .bind(max_total.max(1) - 1)
        .fetch_optional(&self.pool)
        .await?;
        let over_count = match cut {
            Some((received_at, report_id)) => {
                self.delete_older_than(&received_at, &report_id).await?
            }
            None => 0,
        };
        Ok(RetentionSweep {
            expired,
            over_count,
        })
    }

    /// Deletes every report whose key sorts before (received_at, report_id).
    async fn delete_older_than(&self, received_at: &str, report_id: &str) -> Result<u64, DbError> {
        self.delete_in_chunks(
            "DELETE FROM error_reports WHERE (agent_id, report_id) IN (SELECT agent_id, \
             report_id FROM error_reports WHERE (received_at, report_id) < ($1, $2) LIMIT $3)",
            &[received_at, report_id],
        )
        .await
    }
}
