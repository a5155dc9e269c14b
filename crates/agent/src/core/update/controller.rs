//! `UpdateController`: when an update may start, and what the agent records and reports
//! around one (docs/ARCHITECTURE.md, "One self-update, end to end", steps 2 and 9).
//!
//! It owns the sequencing state of updates: whether the last run's journal is settled, a
//! trigger held until then, the refusals already reported in this run. Everything else it
//! works with (the state cell, config.json, the backend, the error reporter, the agent's
//! shutdown) is lent by the agent for each call as [`UpdateDeps`], so an update race is fixed
//! here and the agent keeps its lifecycle, timers and state. This module must never stop the
//! agent other than through the `shut_down` it is lent, after the updater was launched, and
//! never spawn a task: the agent's tasks call it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cms_protocol::update::UpdateJournal;
use cms_protocol::{
    AgentState, BUILD_VERSION, DeferReason, Transfer, UpdateInfo, UpdateProgress, UpdateStep,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::download::BusyWaits;
use super::steps::remove_update_files;
use super::{
    Relaunch, Settlement, TransferLimits, Update, read_journal, retry_delay, settle_journal,
    updater_running,
};
use crate::core::agent_state::StateCell;
use crate::core::config::{self, ConfigManager, UpdateRetry};
use crate::core::error_reporter::ErrorReporter;
use crate::core::metered::{self, MeteredMode};
use crate::core::storage::StateManager;
use crate::core::supervisor::sleep_or_cancel;
use crate::net::http_client::HttpClient;
use crate::net::server_text;
use crate::net::trust::TrustedMetadata;
use crate::system;

/// The update sequencing state of one run.
#[derive(Debug, Default)]
pub struct UpdateController {
    /// Versions whose refusal was reported in this run (reported once, not at every offer).
    refusals_reported: Mutex<Vec<String>>,
    /// Versions whose deferral on a metered connection was reported in this run.
    deferrals_reported: Mutex<Vec<String>>,
    /// Set once the last run's update journal is settled (or there was none). No update starts
    /// before: the updater that started this run may still be at work in `updates/`, and the
    /// settlement may add the offered version to `rolled_back_versions`.
    journal_settled: AtomicBool,
    /// Set when an update trigger came before that; the settlement then checks once.
    trigger_held: AtomicBool,
}

/// What became of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferOutcome {
    /// It waits (outside the maintenance window, or on a metered connection): the same offer
    /// in a later answer may start it.
    Deferred,
    /// Acted on, turned down or ignored.
    Handled,
}

/// A list of versions behind a mutex, usable after a panic elsewhere poisoned it.
fn lock_list(list: &Mutex<Vec<String>>) -> MutexGuard<'_, Vec<String>> {
    list.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the controller works with, lent by the agent for one call.
pub struct UpdateDeps<'a> {
    /// The agent's state; an update runs from `IDLE` only.
    pub state: &'a StateCell,
    /// config.json: rolled-back versions, the retry after an abort, the version running.
    pub config: &'a Mutex<ConfigManager>,
    /// The backend.
    pub http: &'a HttpClient,
    /// The pinned root and last verified metadata.
    pub trust: &'a TrustedMetadata,
    /// Error reports and update progress for the backend.
    pub reporter: &'a ErrorReporter,
    /// Where `updates/` and the journal are.
    pub storage: &'a StateManager,
    /// The agent's stop: an update in progress is dropped, a settlement stops waiting.
    pub cancel: &'a CancellationToken,
    /// How the updater starts the next version.
    pub relaunch: &'a Relaunch,
    /// The first wait after an aborted update (`update_retry_secs` in effect).
    pub retry_base: Duration,
    /// The agent's graceful shutdown, called once the updater runs.
    pub shut_down: &'a (dyn Fn() + Sync),
}

impl std::fmt::Debug for UpdateDeps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateDeps")
            .field("state", &self.state.get())
            .field("relaunch", &self.relaunch)
            .field("retry_base", &self.retry_base)
            .finish_non_exhaustive()
    }
}

impl UpdateController {
    /// Waits for a still-running updater (it is verifying this very process) to finish, then
    /// settles its journal; with no updater running, settles at once. After an aborted update it
    /// stays to try again once the backoff has passed.
    pub async fn settle_last_run(&self, deps: &UpdateDeps<'_>) {
        let retry = match read_journal(deps.storage) {
            Some(journal) => match deps.settle_once_the_updater_exits(journal).await {
                Some(retry) => retry,
                None => return, // stopped first
            },
            None => None,
        };
        self.journal_settled.store(true, Ordering::SeqCst);
        if let Some(retry) = retry {
            // A second more than the recorded time, so the deferral has passed by the wall clock too.
            if sleep_or_cancel(deps.cancel, retry + Duration::from_secs(1)).await {
                self.check_for_update(deps, "retry").await;
            }
        } else if self.trigger_held.swap(false, Ordering::SeqCst) {
            self.check_for_update(deps, "held until settled").await;
        }
    }

    /// Asks the backend for an update and starts the one it offers. A busy backend (`503` or
    /// `429` with `Retry-After`: after a push, its line of update checks is full) is asked
    /// again after the same waits as a busy download; only once those run out is the check
    /// reported failed.
    pub async fn check_for_update(&self, deps: &UpdateDeps<'_>, trigger: &'static str) {
        let mut waits = BusyWaits::default();
        let answer = loop {
            let answer = deps
                .http
                .check_for_update(BUILD_VERSION, system::PLATFORM)
                .await;
            let wait = answer
                .as_ref()
                .err()
                .and_then(|error| error.retry_after())
                .and_then(|asked| waits.next(asked));
            let Some(wait) = wait else {
                break answer;
            };
            tracing::info!(
                trigger,
                wait_ms = wait.as_millis() as u64,
                busy_answers = waits.taken(),
                "update check: the server is busy; asking again after a wait"
            );
            if !sleep_or_cancel(deps.cancel, wait).await {
                return;
            }
        };
        match answer {
            Ok(None) => tracing::info!(trigger, version = BUILD_VERSION, "no update available"),
            Ok(Some(update)) => {
                self.initiate_update(deps, trigger, &update).await;
            }
            Err(err) => {
                let message = format!("update check failed: {err}");
                deps.report(
                    "update_check_failed",
                    &message,
                    json!({ "trigger": trigger }),
                )
                .await;
            }
        }
    }

    /// Runs an update from `IDLE` only; a trigger in any other state is logged and ignored,
    /// so a second push during an update does not start a second one.
    pub async fn initiate_update(
        &self,
        deps: &UpdateDeps<'_>,
        trigger: &'static str,
        info: &UpdateInfo,
    ) -> OfferOutcome {
        if !is_plain_version(&info.version) {
            let version = server_text(&info.version, MAX_VERSION_LEN);
            tracing::warn!(trigger, %version, "offer ignored: its version is not SemVer");
            return OfferOutcome::Handled;
        }
        if system::updates_left_to_msi() {
            tracing::info!(trigger, version = %info.version, "update offered but not started: installed by the MSI, which updates this agent (docs/DEPLOYMENT.md)");
            return OfferOutcome::Handled;
        }
        if !self.journal_settled.load(Ordering::SeqCst) {
            // Held before the second look: a settlement in between then sees it and checks.
            self.trigger_held.store(true, Ordering::SeqCst);
            if !self.journal_settled.load(Ordering::SeqCst) {
                tracing::info!(trigger, version = %info.version, "update trigger held: the last update is not settled yet");
                return OfferOutcome::Handled;
            }
        }
        if deps
            .config()
            .config()
            .rolled_back_versions
            .contains(&info.version)
        {
            tracing::info!(trigger, version = %info.version, "update skipped: this version was rolled back here before");
            self.report_refusal(deps, &info.version).await;
            return OfferOutcome::Handled;
        }
        if !is_in_window(info) {
            tracing::info!(trigger, version = %info.version, "update deferred: outside the group's maintenance window; a later offer starts it");
            return OfferOutcome::Deferred;
        }
        if self.defers_on_metered(deps, trigger, info).await {
            return OfferOutcome::Deferred;
        }
        if let Some(retry_in) = deps.update_deferred(&info.version) {
            tracing::info!(trigger, version = %info.version, retry_in_secs = retry_in, "update deferred: the last attempt was aborted before the swap");
            return OfferOutcome::Handled;
        }
        if deps
            .state
            .transition_if(|s| s == AgentState::Idle, AgentState::UpdatingStarting)
            .is_err()
        {
            tracing::info!(trigger, version = %info.version, "update trigger ignored: not idle");
            return OfferOutcome::Handled;
        }
        tracing::info!(trigger, from = BUILD_VERSION, to = %info.version, "update starting");
        deps.progress(&info.version, UpdateStep::Offered, None);
        let (reserve_free_bytes, limits) = {
            let config = deps.config();
            let config = config.config();
            let limits = TransferLimits {
                kilobytes_per_sec: config.download_limit_kbps,
            };
            (config.update_reserve_free_bytes, limits)
        };
        let on_step =
            |step, transfer| deps.progress_with(&info.version, (step, None), transfer, None);
        let update = Update {
            http: deps.http,
            trust: deps.trust,
            state: deps.state,
            storage: deps.storage,
            reserve_free_bytes,
            limits,
            relaunch: deps.relaunch,
            on_step: &on_step,
        };
        let outcome = tokio::select! {
            _ = deps.cancel.cancelled() => return OfferOutcome::Handled,
            outcome = update.run(info) => outcome,
        };
        match outcome {
            Ok(updater_pid) => {
                tracing::info!(updater_pid, version = %info.version, "handing over to the updater");
                deps.progress(&info.version, UpdateStep::HandedOver, None);
                deps.reporter.flush(deps.http).await;
                (deps.shut_down)();
            }
            Err(err) => {
                let reason = err.to_string();
                let failed = (UpdateStep::Failed, Some(err.step()));
                deps.progress_with(&info.version, failed, None, Some(&reason));
                let details = json!({ "step": err.step(), "version": info.version });
                deps.report(
                    "update_failed",
                    &format!(
                        "update to {} failed while {}: {err}",
                        info.version,
                        err.step()
                    ),
                    details,
                )
                .await;
                deps.reporter.flush(deps.http).await;
                let _ = deps.state.set_state(AgentState::Idle);
            }
        }
        OfferOutcome::Handled
    }

    /// Whether the offer waits for an unmetered connection (`--metered`, docs/CONTRACT.md): a
    /// deferral is logged at each offer and reported to the server once per release and run
    /// (step `deferred`, reason `metered`), so it holds no slot of the rollout.
    async fn defers_on_metered(
        &self,
        deps: &UpdateDeps<'_>,
        trigger: &'static str,
        info: &UpdateInfo,
    ) -> bool {
        let mode = deps.config().config().metered.unwrap_or_default();
        let decision = metered::decide(mode, info.urgent).await;
        if !decision.defer {
            if info.urgent && mode != MeteredMode::No {
                tracing::info!(trigger, version = %info.version, metered = %mode, "urgent update taken whatever the connection costs");
            }
            return false;
        }
        tracing::info!(trigger, version = %info.version, metered = %decision.mode, detected = %decision.detected, "update deferred: the connection is metered and the release is not urgent; a later offer on an unmetered connection starts it");
        let first = {
            let mut reported = lock_list(&self.deferrals_reported);
            let first = !reported.contains(&info.version);
            if first {
                reported.push(info.version.clone());
            }
            first
        };
        if first {
            deps.progress_deferred(&info.version, DeferReason::Metered);
            deps.reporter.flush(deps.http).await;
        }
        true
    }

    /// Reports once per run that the offer of `version` was turned down.
    async fn report_refusal(&self, deps: &UpdateDeps<'_>, version: &str) {
        {
            let mut reported = lock_list(&self.refusals_reported);
            if reported.iter().any(|v| v == version) {
                return;
            }
            reported.push(version.to_owned());
        }
        deps.progress(version, UpdateStep::Refused, None);
        deps.reporter.flush(deps.http).await;
    }
}

impl UpdateDeps<'_> {
    async fn report(&self, kind: &str, message: &str, details: Value) {
        self.reporter
            .report(self.http, kind, message, details)
            .await;
    }

    fn config(&self) -> MutexGuard<'_, ConfigManager> {
        config::lock(self.config)
    }

    /// Buffers an update progress event for the server's rollout funnel (sent at the next
    /// flush, which follows every end of an update attempt).
    fn progress(&self, version: &str, step: UpdateStep, failed_step: Option<&str>) {
        self.progress_with(version, (step, failed_step), None, None);
    }

    /// [`Self::progress`] saying how the package came (`details.transfer`, with its bytes) and
    /// the reason of a failure or rollback (for the operator's agent list).
    fn progress_with(
        &self,
        version: &str,
        (step, failed_step): (UpdateStep, Option<&str>),
        transfer: Option<(Transfer, u64)>,
        reason: Option<&str>,
    ) {
        let progress = UpdateProgress {
            failed_step: failed_step.map(str::to_owned),
            transfer: transfer.map(|(kind, _)| kind),
            transfer_bytes: transfer.map(|(_, bytes)| bytes),
            ..progress_of(version, step)
        };
        self.reporter.store_progress(&progress, reason);
    }

    /// Buffers a `deferred` progress event: the offer of `version` waits, for `reason`.
    fn progress_deferred(&self, version: &str, reason: DeferReason) {
        let progress = UpdateProgress {
            reason: Some(reason),
            ..progress_of(version, UpdateStep::Deferred)
        };
        self.reporter.store_progress(&progress, None);
    }

    /// Acts on what the last update left: record the new version, or report what went wrong.
    /// Returns when to try again after an aborted update.
    async fn settle(&self, journal: &UpdateJournal) -> Option<Duration> {
        let retry = self.settle_and_report(journal).await;
        self.reporter.flush(self.http).await;
        retry
    }

    async fn settle_and_report(&self, journal: &UpdateJournal) -> Option<Duration> {
        match settle_journal(self.storage, journal) {
            Settlement::Completed { version } => {
                tracing::info!(version = %version, "update verified by the updater");
                self.record_version();
                self.progress(&version, UpdateStep::Healthy, None);
            }
            Settlement::FinishedByAgent { version, phase } => {
                self.record_version();
                self.progress(&version, UpdateStep::Healthy, None);
                let message = format!(
                    "the updater stopped during {phase:?}; the agent finished the update to {version}"
                );
                self.report("update_finished_by_agent", &message, Value::Null)
                    .await;
            }
            Settlement::RolledBack { version, reason } => {
                self.remember_rollback(&version);
                self.progress_with(
                    &version,
                    (UpdateStep::RolledBack, None),
                    None,
                    Some(&reason),
                );
                self.report(
                    "update_rolled_back",
                    &format!("update to {version} was rolled back: {reason}"),
                    Value::Null,
                )
                .await;
            }
            Settlement::RollbackInterrupted { version, reason } => {
                self.remember_rollback(&version);
                let rolled_back = (UpdateStep::RolledBack, None);
                self.progress_with(&version, rolled_back, None, Some(&reason));
                let message = format!(
                    "rollback from {version} was interrupted ({reason}); the previous exe is kept as .old"
                );
                self.report("update_rollback_interrupted", &message, Value::Null)
                    .await;
            }
            Settlement::Aborted { version, reason } => {
                self.progress(&version, UpdateStep::Failed, Some("handing_over"));
                let retry = self.remember_abort(&version);
                let message = format!(
                    "update to {version} stopped before the swap: {reason}; still running {BUILD_VERSION}, trying again in {} s",
                    retry.as_secs()
                );
                let details = json!({ "version": version, "retry_in_secs": retry.as_secs() });
                self.report("update_aborted", &message, details).await;
                return Some(retry);
            }
            Settlement::Interrupted { version, phase } => {
                self.progress(&version, UpdateStep::Failed, Some("handing_over"));
                let message = format!(
                    "update to {version} was interrupted during {phase:?}; still running {BUILD_VERSION}"
                );
                self.report("update_interrupted", &message, Value::Null)
                    .await;
            }
        }
        None
    }

    /// An aborted update is tried again after a wait that doubles with each abort; returns
    /// the wait.
    fn remember_abort(&self, version: &str) -> Duration {
        let base = self.retry_base;
        let mut wait = base;
        let result = self.config().update(|c| {
            let earlier = c.update_retry.as_ref().filter(|r| r.version == version);
            let aborted = earlier.map_or(0, |r| r.aborted).saturating_add(1);
            wait = retry_delay(aborted, base);
            c.update_retry = Some(UpdateRetry {
                version: version.to_owned(),
                aborted,
                not_before_unix: unix_now().saturating_add(wait.as_secs()),
            });
        });
        if let Err(err) = result {
            tracing::error!(error = %err, "cannot record when to retry the aborted update");
        }
        wait
    }

    /// Seconds until an aborted update of `version` may be tried again, if it must still wait.
    fn update_deferred(&self, version: &str) -> Option<u64> {
        let config = self.config();
        let retry = config.config().update_retry.as_ref()?;
        let left = retry.not_before_unix.saturating_sub(unix_now());
        (retry.version == version && left > 0).then_some(left)
    }

    /// The updater suspends the service's recovery actions and restores them at its end;
    /// after an updater that died midway, this is where they come back.
    fn restore_service_recovery(&self) {
        match system::service::set_restart_on_failure(true) {
            Ok(recovery) => tracing::info!(%recovery, "service recovery actions in place"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot restore the service's recovery actions")
            }
        }
    }

    fn remember_rollback(&self, version: &str) {
        let result = self.config().update(|c| {
            if !c.rolled_back_versions.iter().any(|v| v == version) {
                c.rolled_back_versions.push(version.to_owned());
            }
        });
        if let Err(err) = result {
            tracing::error!(error = %err, "cannot record the rolled-back version");
        }
    }

    /// After a verified update the new agent writes its version to config.json (and forgets
    /// an earlier aborted attempt).
    fn record_version(&self) {
        if let Err(err) = self.config().update(|c| {
            c.current_version = Some(BUILD_VERSION.to_owned());
            c.update_retry = None;
        }) {
            tracing::error!(error = %err, "cannot record the new version in config.json");
        }
    }

    /// Waits until the updater `journal` names has exited, then settles what it left; the retry
    /// delay of an aborted update, or `None` when the agent is stopped first.
    async fn settle_once_the_updater_exits(
        &self,
        journal: UpdateJournal,
    ) -> Option<Option<Duration>> {
        while updater_running(&journal) {
            if !sleep_or_cancel(self.cancel, Duration::from_millis(500)).await {
                return None;
            }
        }
        let journal = read_journal(self.storage).unwrap_or(journal);
        let retry = self.settle(&journal).await;
        self.clear_what_the_updater_left().await;
        if matches!(self.relaunch, Relaunch::Service(_)) {
            self.restore_service_recovery();
        }
        Some(retry)
    }
}

/// How long files the updater left in `updates/` may resist removal: on Windows an exe that
/// has just exited stays mapped for a moment, and a scanner may hold a fresh one.
const LEFTOVER_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between two attempts to remove them.
const LEFTOVER_RETRY: Duration = Duration::from_millis(250);

impl UpdateDeps<'_> {
    /// Removes what the updater left in `updates/`, its own exe above all (on Windows the
    /// updater never deletes itself: that would run code from a folder standard users can
    /// write), retrying while the OS still holds a file.
    async fn clear_what_the_updater_left(&self) {
        let dir = self.storage.updates_dir();
        let deadline = Instant::now() + LEFTOVER_PATIENCE;
        loop {
            let stuck = remove_update_files(&dir, None);
            if stuck.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for (path, err) in stuck {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove a file the updater left");
                }
                return;
            }
            if !sleep_or_cancel(self.cancel, LEFTOVER_RETRY).await {
                return;
            }
        }
    }
}

/// A progress event of `step` for `version` on this platform, with no details.
fn progress_of(version: &str, step: UpdateStep) -> UpdateProgress {
    UpdateProgress {
        version: version.to_owned(),
        platform: system::PLATFORM.to_owned(),
        step,
        failed_step: None,
        transfer: None,
        transfer_bytes: None,
        reason: None,
    }
}

/// Longest version an offer may carry (docs/CONTRACT.md).
const MAX_VERSION_LEN: usize = 64;

/// Whether an offered version is SemVer (an optional `v` before it) of at most
/// [`MAX_VERSION_LEN`] bytes; anything else is never acted on nor logged as it came.
fn is_plain_version(version: &str) -> bool {
    version.len() <= MAX_VERSION_LEN
        && semver::Version::parse(version.trim_start_matches('v')).is_ok()
}

/// Whether `info` may start now: it carries no maintenance window, or one of its windows is
/// open on this machine's clock (local time read as UTC when the time zone cannot be read).
/// The server offers only inside the windows; this second look defers an offer that raced the
/// window's end.
fn is_in_window(info: &UpdateInfo) -> bool {
    let Some(windows) = &info.window else {
        return true;
    };
    let offset = cms_platform::clock::local_utc_offset_minutes().unwrap_or(0);
    windows.is_open(cms_platform::clock::now_unix_seconds(), offset)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cms_protocol::{UpdateWindows, WindowClock};

    use super::*;

    #[test]
    fn only_a_plain_semver_offer_is_acted_on() {
        assert!(is_plain_version("1.5.0"));
        assert!(is_plain_version("v2.0.0-rc.1+build.7"));
        assert!(!is_plain_version(
            "1.5.0\n2026-01-01T00:00:00Z  INFO forged"
        ));
        assert!(!is_plain_version("not a version"));
        let long = format!("1.0.0-{}", "a".repeat(MAX_VERSION_LEN));
        assert!(!is_plain_version(&long), "over {MAX_VERSION_LEN} bytes");
    }

    fn offer(window: Option<UpdateWindows>) -> UpdateInfo {
        UpdateInfo {
            version: "2.0.0".into(),
            platform: system::PLATFORM.into(),
            package_url: String::new(),
            target: String::new(),
            length: 1,
            sha256: String::new(),
            window,
            urgent: false,
            rollback: None,
        }
    }

    /// A daily UTC window `from`..`to` minutes around the current minute.
    fn utc_window(from: i64, to: i64) -> UpdateWindows {
        let now = cms_platform::clock::now_unix_seconds() / 60;
        let hm = |m: i64| {
            let m = m.rem_euclid(24 * 60);
            format!("{:02}:{:02}", m / 60, m % 60)
        };
        UpdateWindows {
            clock: WindowClock::Utc,
            windows: vec![format!("daily {}-{}", hm(now + from), hm(now + to))],
        }
    }

    #[test]
    fn an_offer_starts_only_inside_its_window() {
        assert!(is_in_window(&offer(None)));
        assert!(is_in_window(&offer(Some(utc_window(-5, 60)))));
        assert!(!is_in_window(&offer(Some(utc_window(60, 120)))));
        let garbled = UpdateWindows {
            clock: WindowClock::Agent,
            windows: vec!["whenever".into()],
        };
        assert!(!is_in_window(&offer(Some(garbled))));
    }
}
