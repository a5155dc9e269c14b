//! The replica relay: this replica's live events sent to the others over the bus, so a
//! dashboard on any replica sees the agents of all (they arrive at the others' [`Dispatcher`]s).
//!
//! This module must never block a publisher (the feed hands events over a bounded channel) and
//! never retry: an event the bus cannot take is dropped, the dashboards reload anyway.
//!
//! [`Dispatcher`]: super::Dispatcher

use std::sync::Arc;

use tokio::sync::mpsc;

use super::live::LiveEvent;
use super::{ClusterEvent, EventBus};

/// Sends the live events of this replica (`origin`) to the others until the feed is gone; an
/// event the bus cannot take is dropped (the dashboards reload anyway).
pub async fn relay_live(bus: EventBus, origin: Arc<str>, mut events: mpsc::Receiver<LiveEvent>) {
    while let Some(change) = events.recv().await {
        let event = ClusterEvent::Live {
            origin: origin.to_string(),
            change,
        };
        if let Err(error) = bus.publish(&event).await {
            tracing::debug!(%error, "live event not sent to the other replicas");
        }
    }
}
