//! The agent's tasks besides the IPC server: the OS-signal watcher, the lock heartbeat, the
//! heartbeat and update-poll timers, the server-event handler, the WebSocket and the journal
//! settlement, each a loop over the shared `Inner` until its cancellation token fires (the
//! services that talk to the backend on `backend`, which also fires when the agent is revoked).
//! Nothing here decides about updates (that is `UpdateController`) or stops the agent other
//! than through `graceful_shutdown`.

use std::sync::Arc;
use std::time::Duration;

use cms_protocol::{HeartbeatAck, ServerEvent, UpdateInfo};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Inner, panic_if_a_test_asks};
use crate::core::supervisor::{Role, Tasks, sleep_or_cancel};
use crate::core::update::OfferOutcome;
use crate::system;

/// How long the first heartbeat waits for the WebSocket, so that it does not open an HTTP
/// connection just before the socket is up.
const FIRST_HEARTBEAT_WAIT: Duration = Duration::from_secs(5);

pub(super) fn spawn_services(inner: &Arc<Inner>, tasks: &mut Tasks) {
    let (events_tx, events_rx) = mpsc::channel(16);
    tasks.spawn("status_loop", Role::Essential, status_loop(inner.clone()));
    tasks.spawn("poll_loop", Role::Essential, poll_loop(inner.clone()));
    let events = event_loop(inner.clone(), events_rx);
    tasks.spawn("event_loop", Role::Essential, events);
    let ws_inner = inner.clone();
    tasks.spawn("websocket", Role::Essential, async move {
        let token = || ws_inner.http.bearer_token();
        ws_inner
            .ws
            .run(token, events_tx, ws_inner.backend.clone())
            .await;
    });
}

/// Waits for a still-running updater (it is verifying this very process) to finish, then
/// settles its journal; with no updater running, settles at once. After an aborted update it
/// stays to try again once the backoff has passed.
pub(super) async fn settle_update_journal(inner: Arc<Inner>) {
    let shut_down = || inner.graceful_shutdown();
    let deps = inner.update_deps(&shut_down);
    inner.updates.settle_last_run(&deps).await;
}
pub(super) async fn watch_os_signals(inner: Arc<Inner>) {
    tokio::select! {
        _ = inner.cancel.cancelled() => {}
        result = system::shutdown_signal() => {
            if let Err(err) = result {
                tracing::error!(error = %err, "cannot watch for OS stop signals");
                return;
            }
            inner.graceful_shutdown();
        }
    }
}

pub(super) async fn lock_heartbeat(inner: Arc<Inner>) {
    let every = Duration::from_secs(inner.options.intervals.lock_heartbeat_secs.max(1));
    inner.lock.run_heartbeat(every, inner.cancel.clone()).await;
}

async fn status_loop(inner: Arc<Inner>) {
    let every = Duration::from_secs(inner.options.intervals.status_secs.max(1));
    inner.ws_link.wait_up(FIRST_HEARTBEAT_WAIT).await;
    loop {
        panic_if_a_test_asks();
        inner.send_status().await;
        if !sleep_or_cancel(&inner.backend, jittered(every)).await {
            return;
        }
    }
}

async fn poll_loop(inner: Arc<Inner>) {
    let every = Duration::from_secs(inner.options.intervals.update_poll_secs.max(1));
    while sleep_or_cancel(&inner.backend, jittered(every)).await {
        inner.reporter.flush(&inner.http).await;
        inner.check_for_update("poll").await;
    }
}

/// Acts on server events: a push checks for updates now, or at a random moment of the spread
/// it asks for (the other events are handled meanwhile); a heartbeat answer that offers a
/// release not offered by the previous answer starts that update (so a push that was lost waits
/// no longer than the next heartbeat, and a failed update is not retried at every heartbeat).
async fn event_loop(inner: Arc<Inner>, mut events: mpsc::Receiver<ServerEvent>) {
    let mut last_offer: Option<String> = None;
    let mut push_check: Option<Instant> = None;
    loop {
        let due = async {
            match push_check {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = inner.backend.cancelled() => return,
            () = due => {
                push_check = None;
                inner.check_for_update("push").await;
                continue;
            }
            event = events.recv() => event,
        };
        match event {
            Some(ServerEvent::UpdateRequired(push)) => match push.check_delay(fastrand::f64()) {
                Some(wait) => {
                    let at = Instant::now() + wait;
                    push_check = Some(push_check.map_or(at, |earlier| earlier.min(at)));
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        spread_secs = push.spread_secs.unwrap_or(0),
                        "update pushed: checking at a random moment of the push's spread"
                    );
                }
                None => {
                    push_check = None;
                    inner.check_for_update("push").await;
                }
            },
            Some(ServerEvent::HeartbeatAck(ack)) => {
                if ack.rotate_credential {
                    inner.rotate_credential().await;
                }
                if let Some(update) = new_offer(&mut last_offer, ack)
                    && inner.initiate_update("heartbeat", &update).await == OfferOutcome::Deferred
                {
                    // The same offer in a later answer (inside the window, unmetered) starts it.
                    last_offer = None;
                }
            }
            None => return,
        }
    }
}

/// The release a heartbeat answer offers, when the previous answer (`last`, updated here)
/// offered another one or none.
fn new_offer(last: &mut Option<String>, ack: HeartbeatAck) -> Option<UpdateInfo> {
    let offered = ack.update.as_ref().map(|u| u.version.clone());
    let is_new = offered.is_some() && offered != *last;
    *last = offered;
    ack.update.filter(|_| is_new)
}

/// `every` +/- 10 %, so a fleet's timers drift apart instead of hitting the server together.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.9 + fastrand::f64() * 0.2)
}

#[cfg(test)]
mod offer_tests {
    use super::*;

    fn ack(version: Option<&str>) -> HeartbeatAck {
        HeartbeatAck {
            rotate_credential: false,
            update: version.map(|version| UpdateInfo {
                version: version.into(),
                platform: "linux-x86_64".into(),
                package_url: String::new(),
                target: String::new(),
                length: 1,
                sha256: String::new(),
                window: None,
                urgent: false,
                rollback: None,
            }),
        }
    }

    #[test]
    fn an_offer_starts_an_update_once_until_another_one_comes() {
        let mut last = None;
        assert!(new_offer(&mut last, ack(None)).is_none());
        assert_eq!(
            new_offer(&mut last, ack(Some("2.0.0"))).unwrap().version,
            "2.0.0"
        );
        assert!(
            new_offer(&mut last, ack(Some("2.0.0"))).is_none(),
            "not at every heartbeat"
        );
        assert_eq!(
            new_offer(&mut last, ack(Some("2.1.0"))).unwrap().version,
            "2.1.0"
        );
        assert!(new_offer(&mut last, ack(None)).is_none());
        assert!(
            new_offer(&mut last, ack(Some("2.1.0"))).is_some(),
            "offered again after none"
        );
    }
}
