//! The release watcher: pushes `agent:update_required` to the agents connected to this server
//! when a release is published or its rollout widens.
//!
//! `release publish` is a separate process writing to the same database. On PostgreSQL it
//! notifies every replica (`crate::events`), which wakes the watcher; on SQLite `serve` polls a
//! cheap count of the releases (and sum of their rollouts) every [`RELEASE_POLL_INTERVAL`]. Either way the watcher then
//! reads the list, finds the new (version, platform) pairs and those whose rollout grew, and
//! notifies every connected agent of that platform whose rollout cohort includes the release
//! and whose reported version is older, and whose group's maintenance window is open (see
//! `crate::rollout::window::may_push`) and that is not pinned, recording each push as an offer
//! (`crate::rollout::offer`). The event only says "check now"; the update check decides what
//! to install. A push to more agents than the server checks in a second (`--push-checks-per-sec`)
//! also says over how many seconds to spread those checks ([`push_spread`]), so the fleet does not
//! all ask in the same second. This module must never block the hub (it uses `notify`, which never
//! waits) and never tell an agent outside a release's cohort.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cms_protocol::{MAX_PUSH_SPREAD_SECS, ServerEvent, UpdateRequired};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{cohort, offer, window};
use crate::db::{Db, DbError, ReleaseRecord};
use crate::release::parse_version;
use crate::ws::Hub;

/// How often the watcher looks for new releases.
pub const RELEASE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Update checks per second a push aims at, per check worked on at once, by default.
pub const PUSH_CHECKS_PER_TURN: u32 = 100;
/// Seconds over which `agents` told at once should spread their update checks so they come at
/// about `per_sec`: none when they fit in a second, at most [`MAX_PUSH_SPREAD_SECS`].
pub fn push_spread(agents: usize, per_sec: u32) -> Option<u32> {
    let agents = u32::try_from(agents).unwrap_or(u32::MAX);
    let per_sec = per_sec.max(1);
    (agents > per_sec).then(|| agents.div_ceil(per_sec).min(MAX_PUSH_SPREAD_SECS))
}

type Key = (String, String);

/// Watches the releases table and notifies agents (see the module docs).
#[derive(Debug)]
pub struct ReleaseWatcher {
    db: Db,
    hub: Hub,
    /// Releases already known with their rollout, `None` until the first successful read.
    known: Option<HashMap<Key, i64>>,
    /// Row count and rollout sum at the last read.
    fingerprint: (i64, i64),
    /// Whether the last poll failed (to log failures once, not every second).
    failing: bool,
    /// Update checks per second a push aims at ([`push_spread`]).
    push_rate: u32,
}

impl ReleaseWatcher {
    /// A watcher whose baseline is the releases published now (they are not pushed: agents
    /// check for updates when they connect).
    pub async fn new(db: Db, hub: Hub, push_rate: u32) -> Self {
        let mut watcher = Self {
            db,
            hub,
            known: None,
            fingerprint: (-1, -1),
            failing: false,
            push_rate,
        };
        if let Err(error) = watcher.poll(true).await {
            tracing::warn!(%error, "cannot read releases; the watcher retries");
            watcher.failing = true;
        }
        watcher
    }

    /// Re-reads the releases when `changed` is notified, and polls every `interval` when one
    /// is given (without a bus to tell it), until `shutdown` is cancelled.
    pub async fn run(
        mut self,
        interval: Option<Duration>,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval.unwrap_or(RELEASE_POLL_INTERVAL));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let polls = interval.map(|every| every.as_millis() as u64);
        tracing::info!(
            poll_ms = polls,
            "release watcher started ({})",
            if polls.is_some() {
                "polling"
            } else {
                "told of changes, never polling"
            }
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = changed.notified() => self.tick(true).await,
                _ = ticker.tick(), if interval.is_some() => self.tick(false).await,
            }
        }
        tracing::debug!("release watcher stopped");
    }

    async fn tick(&mut self, told: bool) {
        match self.poll(told).await {
            Ok(()) if self.failing => {
                tracing::info!("release watcher reads the database again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                tracing::warn!(%error, "release watcher cannot read the database");
                self.failing = true;
            }
            Err(error) => tracing::debug!(%error, "release watcher still failing"),
        }
    }

    /// One look at the table (the whole list when `told` that it changed, else only when the
    /// row count or the rollout sum moved); notifies for releases not seen before and rollouts that grew.
    async fn poll(&mut self, told: bool) -> Result<(), DbError> {
        let fingerprint = self.db.releases_fingerprint().await?;
        if !told && fingerprint == self.fingerprint && self.known.is_some() {
            return Ok(());
        }
        let releases = self.db.list_releases().await?;
        let current: HashMap<Key, i64> = releases
            .iter()
            .map(|r| (key(r), r.rollout_percent))
            .collect();
        if let Some(known) = &self.known {
            let widened = |r: &&ReleaseRecord| {
                known
                    .get(&key(r))
                    .is_none_or(|before| r.rollout_percent > *before)
            };
            for release in releases.iter().filter(widened) {
                self.announce(release).await?;
            }
        }
        self.known = Some(current);
        self.fingerprint = fingerprint;
        Ok(())
    }

    /// Notifies the connected agents `release` is meant for.
    async fn announce(&self, release: &ReleaseRecord) -> Result<(), DbError> {
        let capped = self
            .db
            .rollout(&release.version, &release.platform)
            .await?
            .is_some_and(|rollout| rollout.max_in_flight.is_some());
        if capped {
            // A push is recorded as an offer to every agent it reaches: with an in-flight cap
            // the agents hear of the release in their heartbeat answers, as the cap admits them.
            tracing::info!(version = %release.version, platform = %release.platform, "release has an in-flight cap; no push, agents are offered it as the cap admits them");
            return Ok(());
        }
        let Some(version) = parse_version(&release.version) else {
            tracing::warn!(version = %release.version, "new release has no SemVer version");
            return Ok(());
        };
        let connected: HashSet<String> = self.hub.connected_ids().into_iter().collect();
        let agents = self.db.agents_on_platform(&release.platform).await?;
        let pushable = self.groups_that_may_be_pushed_to(&release.platform).await?;
        let (mut notified, mut missed) = (Vec::new(), 0usize);
        let targets: Vec<_> = agents
            .iter()
            .filter(|(agent_id, agent_version, group)| {
                connected.contains(agent_id)
                    && pushable(group)
                    && cohort::should_notify(
                        agent_id,
                        agent_version,
                        &version,
                        release.rollout_percent,
                    )
            })
            .collect();
        let spread_secs = push_spread(targets.len(), self.push_rate);
        let event = ServerEvent::UpdateRequired(UpdateRequired {
            version: Some(release.version.clone()),
            spread_secs,
        });
        for (agent_id, _, _) in targets {
            match self.hub.notify(agent_id, event.clone()) {
                Ok(()) => notified.push(agent_id.as_str()),
                Err(error) => {
                    missed += 1;
                    tracing::debug!(agent_id, %error, "release notification not delivered");
                }
            }
        }
        let via = offer::OfferVia::Push;
        offer::record(
            &self.db,
            &notified,
            &release.version,
            &release.platform,
            via,
        )
        .await?;
        tracing::info!(
            version = %release.version,
            platform = %release.platform,
            rollout_percent = release.rollout_percent,
            connected = connected.len(),
            notified = notified.len(),
            missed,
            spread_secs = spread_secs.unwrap_or(0),
            "release published or its rollout widened; connected agents notified"
        );
        Ok(())
    }
}

impl ReleaseWatcher {
    /// Whether a group's agents may be pushed a new release for `platform` now: not outside
    /// their maintenance window (`crate::rollout::window::may_push`), and not when the group is
    /// pinned on that platform (its agents are offered their pin only).
    async fn groups_that_may_be_pushed_to(
        &self,
        platform: &str,
    ) -> Result<impl Fn(&str) -> bool, DbError> {
        let closed = self
            .db
            .all_group_windows()
            .await?
            .into_iter()
            .filter(|stored| !window::may_push(Some(&window::from_stored(stored))))
            .map(|stored| stored.agent_group);
        let pinned = self
            .db
            .all_group_pins()
            .await?
            .into_iter()
            .filter(|pin| pin.platform == platform)
            .map(|pin| pin.agent_group);
        let held: HashSet<String> = closed.chain(pinned).collect();
        Ok(move |group: &str| !held.contains(group))
    }
}

fn key(release: &ReleaseRecord) -> Key {
    (release.version.clone(), release.platform.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_spreads_its_checks_only_past_a_seconds_worth() {
        assert_eq!(push_spread(0, 200), None);
        assert_eq!(push_spread(200, 200), None);
        assert_eq!(push_spread(201, 200), Some(2));
        assert_eq!(push_spread(5000, 200), Some(25));
        assert_eq!(push_spread(10_000_000, 200), Some(MAX_PUSH_SPREAD_SECS));
        assert_eq!(
            push_spread(3, 0),
            Some(3),
            "a zero rate counts as one a second"
        );
    }
}
