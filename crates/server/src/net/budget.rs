//! The connection budget: how many connections the server may hold, overall and per source,
//! sized from the open-file limit.
//!
//! At start the soft open-file limit is raised to the hard limit; what is left after a reserve
//! (database connections, package files being served, logs, metadata, listeners) is the
//! connection cap, so accepting one more connection can never make `accept` or `open` fail
//! with "Too many open files". Each source network (an IPv4 address, an IPv6 /64) may hold at
//! most a share of it, so one host flooding the port cannot lock the fleet out. A connection
//! counts as unauthenticated until one of its requests authenticates (an agent or operator
//! token, a session); those hold at most half of the cap whatever the number of sources, and
//! when that half (or the whole cap) is full the oldest of them is closed to make room, so
//! idle and slow connections from many hosts cannot keep out a registration, `/healthz` or an
//! agent's reconnection. A refused connection is closed at once. This module must never block and never count a connection
//! twice or not at all (the slot is released by `Drop`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::net::ratelimit::source_network;

/// File descriptors kept out of the connection cap for everything but connections.
const RESERVED_FDS: u64 = 64;
/// Share of the cap one source network may hold, by default: 1/8.
const DEFAULT_SOURCE_SHARE: usize = 8;
/// Smallest default per-source bound, so a small server still serves a NAT'd site.
const MIN_PER_SOURCE: usize = 16;
/// Share of the cap connections that have not authenticated may hold: 1/2.
const UNAUTHENTICATED_SHARE: usize = 2;
/// `--max-downloads` by default (docs/protocol.md, "The download budget", says why).
pub const DEFAULT_MAX_DOWNLOADS: usize = 32;
/// Cap when the platform has no open-file limit to size it from (Windows).
const CAP_WITHOUT_LIMIT: usize = 16_384;

/// The process's open-file limit before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// Soft limit found at start.
    pub found: u64,
    /// Soft limit now (the hard limit, if raising worked).
    pub now: u64,
    /// Hard limit.
    pub hard: u64,
}

/// How the budget was sized, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// The open-file limit, if the platform has one.
    pub file_limit: Option<FileLimit>,
    /// Descriptors kept for databases, package downloads and the rest.
    pub reserved: u64,
    /// Connections held at most.
    pub max_connections: usize,
    /// Connections one source network holds at most.
    pub max_per_source: usize,
    /// Package downloads served at the same time.
    pub download_slots: usize,
}

/// Raises the soft open-file limit to the hard limit (Unix); `None` where there is none.
#[cfg(unix)]
pub fn raise_file_limit() -> Option<FileLimit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let unlimited = u64::MAX;
    let found = limit.current.unwrap_or(unlimited);
    let hard = limit.maximum.unwrap_or(unlimited);
    let mut now = found;
    if found < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => now = hard,
            Err(error) => {
                tracing::warn!(%error, found, hard, "cannot raise the open-file limit");
            }
        }
    }
    Some(FileLimit { found, now, hard })
}

/// Raises the soft open-file limit to the hard limit (Unix); `None` where there is none.
#[cfg(not(unix))]
pub fn raise_file_limit() -> Option<FileLimit> {
    None
}

/// Sizes the budget from the open-file limit: download slots (`--max-downloads`, one open
/// package file each; by default [`DEFAULT_MAX_DOWNLOADS`], fewer under a small limit: 1/16 of
/// it, at least 4), `db_connections` and [`RESERVED_FDS`] are kept, connections get the rest.
/// Explicit values win.
pub fn size(
    file_limit: Option<FileLimit>,
    db_connections: u32,
    max_downloads: Option<usize>,
    max_connections: Option<usize>,
    max_per_source: Option<usize>,
) -> Sizing {
    let limit = file_limit.map(|l| l.now);
    let by_limit = |l: u64| {
        usize::try_from(l / 16)
            .unwrap_or(usize::MAX)
            .clamp(4, DEFAULT_MAX_DOWNLOADS)
    };
    let download_slots = max_downloads
        .unwrap_or_else(|| limit.map_or(DEFAULT_MAX_DOWNLOADS, by_limit))
        .max(1);
    let reserved = RESERVED_FDS + u64::from(db_connections) + download_slots as u64;
    let derived = match limit {
        Some(limit) => usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX),
        None => CAP_WITHOUT_LIMIT,
    };
    let max_connections = max_connections.unwrap_or(derived).max(1);
    let max_per_source = max_per_source
        .unwrap_or((max_connections / DEFAULT_SOURCE_SHARE).max(MIN_PER_SOURCE))
        .clamp(1, max_connections);
    Sizing {
        file_limit,
        reserved,
        max_connections,
        max_per_source,
        download_slots,
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds its maximum of connections.
    Full,
    /// This source network holds its maximum.
    SourceFull,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Connections no request has authenticated yet, oldest (lowest id) first.
    unauthenticated: BTreeMap<u64, Arc<Shared>>,
    next_id: u64,
}

/// What a slot and its [`SlotHandle`]s share.
#[derive(Debug)]
struct Shared {
    source: IpAddr,
    /// Cancelled when the budget closes the connection to make room.
    closed: CancellationToken,
    /// Set (under the budget's lock) once the slot no longer counts.
    released: AtomicBool,
}

/// Open connections, overall and per source network (see the module docs).
#[derive(Debug)]
pub struct ConnectionBudget {
    max_total: usize,
    max_per_source: usize,
    max_unauthenticated: usize,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot {
    handle: SlotHandle,
}

/// A handle on an admitted connection: requests use it to say the connection authenticated,
/// the connection to learn that the budget closed it.
#[derive(Debug, Clone)]
pub struct SlotHandle {
    budget: Arc<ConnectionBudget>,
    id: u64,
    shared: Arc<Shared>,
}

impl ConnectionBudget {
    /// A budget of `max_total` connections, `max_per_source` per source network, and half of
    /// the total for connections that have not authenticated.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(ConnectionBudget {
            max_total,
            max_per_source,
            max_unauthenticated: (max_total / UNAUTHENTICATED_SHARE).max(1),
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admits a connection from `peer`, or says why not; a `proxied` peer (a trusted proxy,
    /// carrying many clients) counts in the total only, not against the per-source cap. When
    /// the total or the unauthenticated share is full, the oldest unauthenticated connection
    /// is closed to make room.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, proxied: bool) -> Result<ConnectionSlot, Refusal> {
        let source = source_network(peer);
        let mut counts = self.lock();
        let held = counts.per_source.get(&source).copied().unwrap_or_default();
        if held >= self.max_per_source && !proxied {
            return Err(Refusal::SourceFull);
        }
        let full = counts.total >= self.max_total;
        if (full || counts.unauthenticated.len() >= self.max_unauthenticated)
            && !counts.evict_oldest()
        {
            return Err(Refusal::Full);
        }
        *counts.per_source.entry(source).or_default() += 1;
        counts.total += 1;
        counts.next_id += 1;
        let id = counts.next_id;
        let shared = Arc::new(Shared {
            source,
            closed: CancellationToken::new(),
            released: AtomicBool::new(false),
        });
        counts.unauthenticated.insert(id, Arc::clone(&shared));
        Ok(ConnectionSlot {
            handle: SlotHandle {
                budget: Arc::clone(self),
                id,
                shared,
            },
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Connections held now that no request has authenticated.
    pub fn unauthenticated(&self) -> usize {
        self.lock().unauthenticated.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Counts {
    /// Frees the place of one connection (once).
    fn release(&mut self, shared: &Shared) {
        if shared.released.swap(true, Ordering::SeqCst) {
            return;
        }
        self.total = self.total.saturating_sub(1);
        if let Some(held) = self.per_source.get_mut(&shared.source) {
            *held -= 1;
            if *held == 0 {
                self.per_source.remove(&shared.source);
            }
        }
    }

    /// Closes the oldest unauthenticated connection and frees its place; `false` if none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, oldest)) = self.unauthenticated.pop_first() else {
            return false;
        };
        self.release(&oldest);
        oldest.closed.cancel();
        true
    }
}

impl ConnectionSlot {
    /// A handle for the connection's requests.
    pub fn handle(&self) -> SlotHandle {
        self.handle.clone()
    }
}

impl SlotHandle {
    /// Marks the connection as authenticated (an agent or operator request succeeded on it):
    /// it no longer counts in the unauthenticated share and is never closed to make room.
    pub fn authenticated(&self) {
        self.budget.lock().unauthenticated.remove(&self.id);
    }

    /// Cancelled when the budget closes this connection to make room for a newer one.
    pub fn closed(&self) -> &CancellationToken {
        &self.shared.closed
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.handle.budget.lock();
        counts.unauthenticated.remove(&self.handle.id);
        counts.release(&self.handle.shared);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sized_from_the_file_limit() {
        let limit = FileLimit {
            found: 1024,
            now: 1024,
            hard: 1024,
        };
        let sizing = size(Some(limit), 6, None, None, None);
        assert_eq!(sizing.download_slots, 32);
        assert_eq!(sizing.reserved, 64 + 6 + 32);
        assert_eq!(sizing.max_connections, 1024 - 102);
        assert_eq!(sizing.max_per_source, (1024 - 102) / 8);
        let small = FileLimit {
            found: 256,
            now: 256,
            hard: 256,
        };
        assert_eq!(size(Some(small), 6, None, None, None).download_slots, 16);
        assert_eq!(size(Some(small), 6, Some(2), None, None).download_slots, 2);
        let explicit = size(Some(limit), 6, Some(64), Some(100), Some(500));
        assert_eq!(explicit.download_slots, 64);
        assert_eq!(
            (explicit.max_connections, explicit.max_per_source),
            (100, 100)
        );
        let tiny = size(
            Some(FileLimit {
                found: 64,
                now: 64,
                hard: 64,
            }),
            6,
            None,
            None,
            None,
        );
        assert_eq!(tiny.max_connections, 1, "never zero");
        let unlimited = size(None, 6, None, None, None);
        assert_eq!(unlimited.max_connections, CAP_WITHOUT_LIMIT);
        assert_eq!(unlimited.download_slots, DEFAULT_MAX_DOWNLOADS);
    }

    #[test]
    fn caps_hold_overall_and_per_source_and_slots_free_on_drop() {
        let budget = ConnectionBudget::new(4, 2);
        let a1 = budget.admit(ip("10.0.0.1"), false).unwrap();
        let a2 = budget.admit(ip("10.0.0.1"), false).unwrap();
        a1.handle().authenticated();
        a2.handle().authenticated();
        assert_eq!(
            budget.admit(ip("10.0.0.1"), false).unwrap_err(),
            Refusal::SourceFull
        );
        let b = budget.admit(ip("10.0.0.2"), false).unwrap();
        let c = budget.admit(ip("10.0.0.3"), false).unwrap();
        assert_eq!((budget.open(), budget.unauthenticated()), (4, 2));
        let d = budget.admit(ip("10.0.0.4"), false).unwrap();
        assert!(
            b.handle().closed().is_cancelled(),
            "the oldest unauthenticated made room"
        );
        assert!(!c.handle().closed().is_cancelled());
        drop(b);
        assert_eq!(budget.open(), 4, "an evicted slot is not freed twice");
        c.handle().authenticated();
        d.handle().authenticated();
        assert_eq!(
            budget.admit(ip("10.0.0.5"), false).unwrap_err(),
            Refusal::Full,
            "authenticated connections are never closed to make room"
        );
        drop(a1);
        assert_eq!(budget.open(), 3);
        let _e = budget.admit(ip("10.0.0.5"), false).unwrap();
        let proxy = ConnectionBudget::new(4, 1);
        let _p1 = proxy.admit(ip("10.0.0.9"), true).unwrap();
        let _p2 = proxy.admit(ip("10.0.0.9"), true).unwrap();
        assert_eq!(
            proxy.open(),
            2,
            "a trusted proxy is not held to the per-source cap"
        );
        assert_eq!(
            proxy.admit(ip("10.0.0.9"), false).unwrap_err(),
            Refusal::SourceFull
        );
    }

    #[test]
    fn unauthenticated_connections_from_many_sources_hold_half_at_most() {
        let budget = ConnectionBudget::new(10, 10);
        let agent = budget.admit(ip("10.0.1.1"), false).unwrap();
        agent.handle().authenticated();
        let flood: Vec<_> = (0..40)
            .map(|n| budget.admit(ip(&format!("10.0.2.{n}")), false).unwrap())
            .collect();
        assert_eq!(budget.unauthenticated(), 5);
        assert_eq!(budget.open(), 6);
        assert!(!agent.handle().closed().is_cancelled());
        let open = flood.iter().filter(|s| !s.handle().closed().is_cancelled());
        assert_eq!(open.count(), 5, "the newest five are kept");
    }

    #[test]
    fn ipv6_hosts_of_one_64_share_a_bound() {
        let budget = ConnectionBudget::new(10, 1);
        let _first = budget.admit(ip("2001:db8::1"), false).unwrap();
        assert_eq!(
            budget.admit(ip("2001:db8::2"), false).unwrap_err(),
            Refusal::SourceFull
        );
        budget.admit(ip("2001:db8:0:1::1"), false).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn raising_reaches_the_hard_limit() {
        let limit = raise_file_limit().unwrap();
        assert_eq!(limit.now, limit.hard);
        assert!(limit.found <= limit.now);
    }
}
