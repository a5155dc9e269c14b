//! The database size guard (`serve --max-database-mb`): when the database holds more than the
//! limit, the oldest error reports and update events are shed, in chunks, down to nine tenths
//! of it; each shed is logged as one warning and recorded for the dashboard's overview.
//!
//! SQLite's size is its pages in use, so a shed shows at once. PostgreSQL keeps the space of
//! deleted rows for reuse rather than returning it, so its size does not fall after a shed:
//! the guard then sheds again only once the tables have grown past the size they had after the
//! last shed (the freed space used up). This module must never delete anything but error
//! reports and update events.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::cluster::leader;
use crate::db::{DatabaseShed, Db, DbError, ShedChunk};

/// Default `--max-database-mb`.
pub const DEFAULT_MAX_MB: u64 = 4096;
/// Default `--database-check-secs`.
pub const DEFAULT_CHECK_SECS: u64 = 60;
/// Rows the first shed statement deletes.
const FIRST_CHUNK: i64 = 100;
/// Fewest rows a later shed statement deletes.
const MIN_CHUNK: i64 = 10;
/// Rows one shed statement deletes at most.
const MAX_CHUNK: i64 = 5_000;

/// The guard's state between checks.
#[derive(Debug)]
pub struct SizeGuard {
    limit: u64,
    /// The size measured after the last shed (0 before any).
    after_last_shed: u64,
}

impl SizeGuard {
    /// A guard for a database of at most `limit_mb` MiB.
    pub fn new(limit_mb: u64) -> Self {
        SizeGuard {
            limit: limit_mb.saturating_mul(1024 * 1024),
            after_last_shed: 0,
        }
    }

    /// Measures the database and sheds when it is over the limit; returns the shed, if any.
    pub async fn check(&mut self, db: &Db) -> Result<Option<DatabaseShed>, DbError> {
        let before = db.database_bytes().await?;
        if before <= self.limit.max(self.after_last_shed) {
            return Ok(None);
        }
        let target = if self.after_last_shed > self.limit {
            self.after_last_shed
        } else {
            self.limit / 10 * 9
        };
        let shed = shed_down_to(db, before, target).await?;
        let after = db.database_bytes().await?;
        self.after_last_shed = after;
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let record = DatabaseShed {
            shed_at: clock::now(),
            reports: signed(shed.reports),
            events: signed(shed.events),
            bytes_before: signed(before),
            bytes_after: signed(after),
            limit_bytes: signed(self.limit),
        };
        db.record_shed(&record).await?;
        Ok(Some(record))
    }
}

/// Sheds chunks of the oldest rows until the database is down to `target` bytes as measured
/// (SQLite), or the rows' estimated size, their share of their table's (PostgreSQL, whose size
/// does not fall), reaches `before - target`, or nothing is left; returns the totals. The
/// first chunk is small; each next one is sized from what a row of the last one weighed, at
/// most twice the last (rows stored meanwhile make a measured chunk look lighter).
async fn shed_down_to(db: &Db, before: u64, target: u64) -> Result<ShedChunk, DbError> {
    let measured = db.size_falls_after_delete();
    let mut total = ShedChunk::default();
    let mut chunk = FIRST_CHUNK;
    let mut size = before;
    loop {
        let Some(shed) = db.shed_oldest(chunk).await? else {
            break;
        };
        total.reports += shed.reports;
        total.events += shed.events;
        total.bytes += shed.bytes;
        let rows = (shed.reports + shed.events).max(1);
        let (left, freed) = if measured {
            let now = db.database_bytes().await?;
            let freed = size.saturating_sub(now);
            size = now;
            (now.saturating_sub(target), freed)
        } else {
            ((before - target).saturating_sub(total.bytes), shed.bytes)
        };
        if left == 0 {
            break;
        }
        let wanted = i64::try_from(left / (freed / rows).max(1) + 1).unwrap_or(MAX_CHUNK);
        chunk = wanted.clamp(MIN_CHUNK, (chunk * 2).min(MAX_CHUNK));
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// The advisory lock under which one replica checks the size and sheds.
const SIZE_GUARD: &str = "cms-server:size-guard";

/// Checks at start and every `interval` until `stop`, on one replica at a time.
pub async fn run(db: Db, mut guard: SizeGuard, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // One replica at a time checks and sheds; the others leave this round to it.
        match leader::unless_taken(&db, SIZE_GUARD, guard.check(&db)).await {
            Ok(None | Some(None)) => {}
            Ok(Some(Some(shed))) => tracing::warn!(
                reports = shed.reports,
                events = shed.events,
                bytes_before = shed.bytes_before,
                bytes_after = shed.bytes_after,
                limit_bytes = shed.limit_bytes,
                "database over its size limit (--max-database-mb): shed the oldest error reports and update events"
            ),
            Err(error) => tracing::error!(%error, "database size check failed"),
        }
    }
}
