//! Updates in flight: at most a release's `max_in_flight` agents between a recorded offer and
//! an end step (healthy, failed, rolled back, refused) at once (`cms-server rollout set
//! --max-in-flight N`); the next agents are offered the release as those finish. An agent
//! offered longer ago than the release's stuck timeout (`--stuck-after-mins`, 30 by default)
//! without an end step is **stuck**: counted apart on the releases page and in the funnel, freed
//! from the in-flight count, and announced once on the live feed by [`watch_stuck`].
//!
//! A group may have its own cap for a release besides the release's (`--group G
//! --max-in-flight N`): both hold, so a branch office on a thin link takes a few at a time
//! while the rest of the fleet goes at the release's pace.
//!
//! An agent that put its offer off (`deferred`, on a metered connection) holds no slot: it is
//! not in flight, never stuck, and is offered the release again under the cap.
//!
//! The cap is checked before each new offer; offers the server answers at the same instant on
//! several replicas may pass it together (at most one per replica). This module must never
//! refuse a re-offer to an agent already in flight.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::cluster::leader;
use crate::db::{Db, DbError, ReleaseRow, RolloutRow};
use crate::events::live::{LiveEvent, LiveFeed};

/// How often [`watch_stuck`] looks for offers that became stuck (`serve --stuck-check-secs`,
/// hidden, for tests).
pub const STUCK_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The advisory lock under which one replica announces stuck agents.
const STUCK_WATCH: &str = "cms-server:stuck-watch";

/// Releases the stuck watch looks at, newest first.
const RELEASES_WATCHED: i64 = 200;

/// The stored time before which an offer of a release with `stuck_after_secs` is stuck.
fn stuck_cutoff(stuck_after_secs: i64) -> String {
    clock::from_now(-time::Duration::seconds(stuck_after_secs))
}

/// Whether `release` may be offered to `agent_id` (of `group`) now: no cap applies, the agent
/// is in flight already (offered, and not deferred), or fewer than each cap are: the release's over all its agents, and the
/// group's own over the group's agents (`rollout set --group G --max-in-flight N`).
pub async fn admits(
    db: &Db,
    release: &ReleaseRow,
    agent_id: &str,
    group: Option<&str>,
) -> Result<bool, DbError> {
    let key = (release.version.as_str(), release.platform.as_str());
    let group_cap = match group {
        Some(group) => group_cap(db, key, group).await?,
        None => None,
    };
    let caps = [(None, release.max_in_flight), (group, group_cap)];
    if caps.iter().all(|(_, cap)| cap.is_none())
        || db.offered_not_deferred(agent_id, key.0, key.1).await?
    {
        return Ok(true);
    }
    let cutoff = stuck_cutoff(release.stuck_after_secs);
    for (scope, cap) in caps {
        let Some(cap) = cap else { continue };
        let (in_flight, _) = db.offers_in_flight(key, scope, &cutoff).await?;
        if in_flight >= cap {
            tracing::debug!(
                agent_id,
                version = key.0,
                group = scope,
                in_flight,
                cap,
                "no offer: an in-flight cap is reached (the group's, when named)"
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// `group`'s own cap of updates in flight for the release `key`, if it has one.
async fn group_cap(db: &Db, key: (&str, &str), group: &str) -> Result<Option<i64>, DbError> {
    let caps = db.group_in_flight_caps(key.0, key.1).await?;
    Ok(super::group::find(&caps, group))
}

/// `(in_flight, stuck)` of a release, over its agents of `group` only when given.
pub async fn counts(
    db: &Db,
    rollout: &RolloutRow,
    group: Option<&str>,
) -> Result<(i64, i64), DbError> {
    let cutoff = stuck_cutoff(rollout.stuck_after_secs);
    let key = (rollout.version.as_str(), rollout.platform.as_str());
    db.offers_in_flight(key, group, &cutoff).await
}

/// Every `interval`, on one replica, announces on `live` each agent whose offer became stuck
/// since the last look, until `stop`.
///
/// Each look covers the offers that crossed the stuck timeout since the previous look's
/// cutoff (the first, those of the last `interval`), so a late tick (a busy box, a lost lock)
/// leaves no offer unannounced. A replica that finds the lock held counts that look as done:
/// the holder's look reaches up to the moment it began, a moment before.
pub async fn watch_stuck(db: Db, live: LiveFeed, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let span = time::Duration::try_from(interval).unwrap_or(time::Duration::MINUTE);
    let mut covered_until: Option<time::OffsetDateTime> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = time::OffsetDateTime::now_utc();
        let since = covered_until.unwrap_or(now - span);
        let look = announce_newly_stuck(&db, &live, (since, now));
        match leader::unless_taken(&db, STUCK_WATCH, look).await {
            Ok(_) => covered_until = Some(now),
            // Not covered: the next look starts from the same place.
            Err(error) => tracing::warn!(%error, "cannot look for stuck updates"),
        }
    }
}

/// Announces the agents whose offer crossed its release's stuck timeout between `since`
/// (inclusive) and `until` (exclusive).
async fn announce_newly_stuck(
    db: &Db,
    live: &LiveFeed,
    (since, until): (time::OffsetDateTime, time::OffsetDateTime),
) -> Result<(), DbError> {
    for rollout in db.list_rollouts(false, RELEASES_WATCHED).await? {
        let timeout = time::Duration::seconds(rollout.stuck_after_secs);
        let (from, to) = (
            clock::format_utc(since - timeout),
            clock::format_utc(until - timeout),
        );
        let stuck = db
            .offers_without_end(&rollout.version, &rollout.platform, &from, &to)
            .await?;
        if stuck.is_empty() {
            continue;
        }
        tracing::warn!(version = %rollout.version, platform = %rollout.platform, agents = stuck.len(), "agents stuck in an update: offered, no end step within the stuck timeout");
        for agent_id in stuck {
            live.publish(LiveEvent::UpdateStuck {
                agent_id,
                version: rollout.version.clone(),
                platform: rollout.platform.clone(),
            });
        }
    }
    Ok(())
}
