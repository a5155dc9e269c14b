//! Error reports: a batch an agent sent, split into update progress (the rollout funnel's,
//! [`progress`]) and error reports proper, which are stored with their message signature, at
//! most [`PerAgent`] reports and update events kept for each agent, and told to the
//! dashboards. The route bounds and
//! throttles the batch first.
//!
//! It must never store a report under another agent than the caller, nor count a report the
//! store already had (a re-sent report is a duplicate).

use cms_protocol::ErrorReport;

use super::progress;
use super::retention;
use super::signature::signature;
use crate::clock;
use crate::db::{Db, DbError, NewErrorReport};
use crate::events::live::{LiveEvent, LiveFeed};

/// How many of one agent's reports and update events are kept (its oldest go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerAgent {
    /// Error reports.
    pub reports: i64,
    /// Update progress events.
    pub events: i64,
    /// What a just-registered agent keeps of each (it grows to the counts above).
    pub new_agent: i64,
}

/// Stores the bounded `reports` of `agent_id`, keeping at most its share of `full` (see
/// [`retention::allowance`]); returns how many were new.
pub async fn store(
    db: &Db,
    live: &LiveFeed,
    agent_id: &str,
    reports: Vec<ErrorReport>,
    full: PerAgent,
) -> Result<u32, DbError> {
    let per_agent = share(db, agent_id, full).await?;
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
        db.insert_error_reports(agent_id, &rows, &clock::now(), per_agent.reports)
            .await?
    };
    if stored > 0 {
        live.publish(LiveEvent::ErrorsReported {
            agent_id: agent_id.to_owned(),
        });
    }
    stored += progress::record(db, live, agent_id, &progress, &reports).await?;
    if !progress.is_empty() {
        db.trim_update_events(agent_id, per_agent.events).await?;
    }
    Ok(stored)
}

/// The part of `full` the agent may keep at its age.
async fn share(db: &Db, agent_id: &str, full: PerAgent) -> Result<PerAgent, DbError> {
    let registered = db.agent_registered_at(agent_id).await?;
    let age = registered
        .and_then(|at| clock::age(&at, time::OffsetDateTime::now_utc()))
        .unwrap_or_default();
    Ok(PerAgent {
        reports: retention::allowance(full.reports, full.new_agent, age),
        events: retention::allowance(full.events, full.new_agent, age),
        new_agent: full.new_agent,
    })
}
