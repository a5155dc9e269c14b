//! A one-thread TCP server on 127.0.0.1 for xtask's helpers (the Sign Tool hook ISCC calls,
//! [`crate::signing::hook`]). Connections are handled one at a time, in order, until
//! [`LoopbackServer::stop`].
//!
//! Must never: listen on anything but the loopback address.

use anyhow::{Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A running server; stop it with [`LoopbackServer::stop`].
#[derive(Debug)]
pub struct LoopbackServer {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LoopbackServer {
    /// Listens on a free port of 127.0.0.1 and calls `handle` for each connection; its errors
    /// are printed prefixed with `name` (the client learns of them through its own connection).
    pub fn start(
        name: &'static str,
        mut handle: impl FnMut(TcpStream) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .with_context(|| format!("{name}: cannot listen on 127.0.0.1"))?;
        let address = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stopping);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_seen.load(Ordering::SeqCst) {
                    break;
                }
                let outcome = stream
                    .context("accepting a connection")
                    .and_then(&mut handle);
                if let Err(e) = outcome {
                    eprintln!("{name}: {e:#}");
                }
            }
        });
        Ok(Self {
            address,
            stopping,
            thread,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting and waits for the connection being handled, if any.
    pub fn stop(self) -> Result<()> {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(); if it fails the thread has ended already.
        let _ = TcpStream::connect(self.address);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("a loopback server thread panicked"))
    }
}
