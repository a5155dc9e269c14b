//! The HTTP listener: TCP connections under a budget, each served by hyper with timeouts.
//!
//! [`serve`] accepts connections until shutdown. Each one must first find room in the
//! [`ConnectionBudget`] (overall and per source network) or is closed at once; it is then
//! served as HTTP/1.1 with upgrades (the agents' WebSocket) under a header-read timeout (the
//! head of every request, and the pause before it on a kept-alive connection, must arrive in
//! time) and an idle timeout on the socket (see [`idle`]). The peer address travels to
//! handlers as `ConnectInfo<SocketAddr>`, and the client behind it (see [`proxy`]) as a
//! [`proxy::Client`]; a trusted proxy's connections are exempt from the per-source cap (the
//! proxy carries many clients). On shutdown, idle connections close at once and
//! requests in flight get a grace period. This module must never let a refused or failing
//! connection stop the accept loop, and never log per connection above debug level (a flood
//! would fill the log); refusals are summarised.

pub mod budget;
pub mod idle;
pub mod proxy;
pub mod ratelimit;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::logtext::LogEvery;
use budget::{ConnectionBudget, Refusal, SlotHandle};
use idle::IdleTimeout;
use proxy::TrustedProxies;

/// How long requests in flight may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not about one connection (out of descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Largest read buffer of a connection (request heads must fit; bodies stream through).
const MAX_READ_BUFFER: usize = 32 * 1024;
/// Refusals and accept errors are logged at most this often, with their count.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Timeouts of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Each request head, and the pause before it, must arrive within this.
    pub header_read: Duration,
    /// A socket with no bytes in either direction for this long is closed.
    pub idle: Duration,
}

/// One listening socket and what it serves.
pub struct Listener {
    /// Which API this is (`agents`, `operators`), for the log.
    pub name: &'static str,
    /// The bound socket.
    pub tcp: TcpListener,
    /// Connections it may hold.
    pub budget: Arc<ConnectionBudget>,
    /// The routes it serves.
    pub app: Router,
    /// HTTPS and WSS instead of plain HTTP (`--tls-cert`).
    pub tls: Option<crate::net::tls::TlsAcceptor>,
    /// Peers whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub proxies: Arc<TrustedProxies>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("tcp", &self.tcp)
            .field("budget", &self.budget)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Serves `listener` until `shutdown` is cancelled, then waits (up to [`SHUTDOWN_GRACE`]) for
/// its connections to finish.
pub async fn serve(listener: Listener, timeouts: Timeouts, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let refusals = LogEvery::new(SUMMARY_INTERVAL);
    let accept_errors = LogEvery::new(SUMMARY_INTERVAL);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                on_accept_error(&listener, &error, &accept_errors).await;
                continue;
            }
        };
        let proxied = listener.proxies.trusts(peer.ip());
        let slot = match listener.budget.admit(peer.ip(), proxied) {
            Ok(slot) => slot,
            Err(refusal) => {
                drop(stream);
                log_refusal(&listener, peer, refusal, &refusals);
                continue;
            }
        };
        // Small answers go out at once instead of waiting for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let handle = slot.handle();
        let io = IdleTimeout::new(stream, timeouts.idle, Some(slot));
        let (app, stop) = (listener.app.clone(), shutdown.clone());
        let peer = Peer {
            addr: peer,
            proxies: listener.proxies.clone(),
            slot: handle,
        };
        match listener.tls.clone() {
            None => tracker.spawn(serve_connection(io, peer, app, timeouts, stop)),
            Some(acceptor) => tracker.spawn(async move {
                if let Some(tls) = crate::net::tls::handshake(&acceptor, io, peer.addr).await {
                    serve_connection(tls, peer, app, timeouts, stop).await;
                }
            }),
        };
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = listener.name,
            left = tracker.len(),
            "connections still busy after the shutdown grace period; closing them"
        );
    }
}

async fn on_accept_error(listener: &Listener, error: &io::Error, summary: &LogEvery) {
    let per_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    );
    if per_connection {
        tracing::debug!(listener = listener.name, %error, "connection failed during accept");
        return;
    }
    if let Some(count) = summary.occurrence(Instant::now()) {
        tracing::error!(
            listener = listener.name,
            %error,
            count,
            open = listener.budget.open(),
            "accept failed; pausing briefly"
        );
    }
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

fn log_refusal(listener: &Listener, peer: SocketAddr, refusal: Refusal, summary: &LogEvery) {
    tracing::debug!(listener = listener.name, %peer, ?refusal, "connection refused");
    if let Some(refused) = summary.occurrence(Instant::now()) {
        let reason = match refusal {
            Refusal::Full => "the server holds its maximum of connections",
            Refusal::SourceFull => "this source holds its maximum of connections",
        };
        tracing::warn!(
            listener = listener.name,
            source = %peer.ip(),
            refused,
            open = listener.budget.open(),
            reason,
            "connections refused"
        );
    }
}

/// The TCP peer of a connection, the proxies trusted to name the client behind it, and the
/// connection's place in the budget.
struct Peer {
    addr: SocketAddr,
    proxies: Arc<TrustedProxies>,
    slot: SlotHandle,
}

/// Serves one connection as HTTP/1.1 (with upgrades) until it closes or shutdown.
async fn serve_connection<I>(
    io: I,
    peer: Peer,
    app: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Peer {
        addr: peer,
        proxies,
        slot,
    } = peer;
    let evicted = slot.closed().clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let client = proxies.client(peer.ip(), request.headers());
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(client);
        request.extensions_mut().insert(slot.clone());
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(MAX_READ_BUFFER);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = evicted.cancelled() => {
            tracing::debug!(%peer, "unauthenticated connection closed to make room");
            return;
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
