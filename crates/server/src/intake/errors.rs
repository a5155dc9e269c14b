//! Error reports: a batch an agent sent, split into update progress (the rollout funnel's,
//! [`progress`]) and error reports proper, which are stored with their message signature, at
//! most `per_agent` kept for each agent, and told to the dashboards. The route bounds and
//! throttles the batch first.
//!
//! It must never store a report under another agent than the caller, nor count a report the
//! store already had (a re-sent report is a duplicate).

use cms_protocol::ErrorReport;

use super::progress;
use super::signature::signature;
use crate::clock;
use crate::db::{Db, DbError, NewErrorReport};
use crate::events::live::{LiveEvent, LiveFeed};

/// Stores the bounded `reports` of `agent_id`; returns how many were new.
pub async fn store(
    db: &Db,
    live: &LiveFeed,
    agent_id: &str,
    reports: Vec<ErrorReport>,
    per_agent: i64,
) -> Result<u32, DbError> {
    let (progress, reports) = progress::split(reports);
    let rows: Vec<NewErrorReport<'_>> = reports
        .iter()
        .map(|report| NewErrorReport {
            report,
            details_json: (!report.details.is_null()).then(|| report.details.to_string()),
            signature: signature(&report.message),
        })
        .collect();
    let mut stored = if rows.is_empty() {
        0
    } else {
        db.insert_error_reports(agent_id, &rows, &clock::now(), per_agent)
            .await?
    };
    if stored > 0 {
        live.publish(LiveEvent::ErrorsReported {
            agent_id: agent_id.to_owned(),
        });
    }
    stored += progress::record(db, live, agent_id, &progress, &reports).await?;
    Ok(stored)
}
