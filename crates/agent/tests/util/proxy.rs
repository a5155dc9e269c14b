//! A throttling TCP proxy between an agent and the real `cms-server`, for tests that need a
//! download to be slow (to catch the agent mid-update) or need to see what the agent asked for
//! (a `Range` header when it resumes).
//!
//! It is a byte pipe: every byte is forwarded unchanged in both directions, so plain HTTP,
//! keep-alive and WebSocket upgrades all pass. The server-to-agent direction is paced to the
//! current rate (set at run time); the agent-to-server direction is read to record each HTTP
//! request head it carries. It never drops or reorders a byte (it can cut every connection off,
//! as a dead network would) and alters one only when a test asks ([`Proxy::tamper`]: one byte
//! of each answer to the requests it names, as an attacker on the path would), and it shuts
//! every connection down when dropped, so no thread or socket outlives the test.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest read forwarded at once, and the most a request head may grow before recording stops.
const BUFFER: usize = 64 * 1024;
/// Pacing slices per second: a throttled read takes at most 1/20 of the rate.
const SLICES_PER_SEC: u64 = 20;
/// How far into a tampered answer the flipped byte lies: past any response head, in the body.
const TAMPER_OFFSET: u64 = 2048;

/// A running proxy; dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    /// Base URL to give the agent, such as `http://127.0.0.1:41235`.
    pub url: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the proxy's threads share with the test.
#[derive(Debug, Default)]
struct Shared {
    /// Server-to-agent bytes per second; 0 means unlimited.
    rate: AtomicU64,
    /// Server-to-agent bytes forwarded so far, over all connections.
    to_client: AtomicU64,
    /// Every HTTP request head seen, in order of arrival.
    requests: Mutex<Vec<RequestHead>>,
    /// Live sockets of both sides, to shut down on drop.
    sockets: Mutex<Vec<Weak<TcpStream>>>,
    /// Set by `drop`: the accept loop returns at its next wake-up.
    stopping: AtomicBool,
    /// Set by `cut_off`: new connections are closed at once, as by an unreachable network.
    cut_off: AtomicBool,
    /// Set by `tamper`: answers to requests whose path starts with it get one byte flipped.
    tamper: Mutex<Option<String>>,
}

/// One HTTP request head the agent sent (request line and headers, no body).
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `GET /path HTTP/1.1`.
    pub line: String,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The request target, such as `/api/v1/agent/packages/2.0.0/linux-x86_64`.
    pub fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or_default()
    }

    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`host:port`), unthrottled.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_owned();
        let accept_shared = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, &upstream, &accept_shared));
        Proxy {
            url,
            shared,
            accept: Some(accept),
        }
    }

    /// Paces server-to-agent bytes to `bytes_per_sec` on every connection, live ones included.
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.shared
            .rate
            .store(bytes_per_sec.max(1), Ordering::SeqCst);
    }

    /// Forwards at full speed again.
    pub fn unthrottle(&self) {
        self.shared.rate.store(0, Ordering::SeqCst);
    }

    /// Cuts the agent off from the server: live connections are shut down and new ones
    /// closed at once, until [`Proxy::reconnect`].
    pub fn cut_off(&self) {
        self.shared.cut_off.store(true, Ordering::SeqCst);
        shut_down_all(&self.shared);
    }

    /// Lets connections through again.
    pub fn reconnect(&self) {
        self.shared.cut_off.store(false, Ordering::SeqCst);
    }

    /// Flips one byte (`TAMPER_OFFSET` bytes in) of every answer to a request whose path
    /// starts with `path_prefix`, from the next such request on.
    pub fn tamper(&self, path_prefix: &str) {
        *lock(&self.shared.tamper) = Some(path_prefix.to_owned());
    }

    /// Every request head seen so far.
    pub fn requests(&self) -> Vec<RequestHead> {
        lock(&self.shared.requests).clone()
    }

    /// Server-to-agent bytes forwarded so far, over all connections.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it sees `stopping` and returns.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        shut_down_all(&self.shared);
    }
}

fn shut_down_all(shared: &Shared) {
    for socket in lock(&shared.sockets).drain(..) {
        if let Some(socket) = socket.upgrade() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: TcpListener, upstream: &str, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.cut_off.load(Ordering::SeqCst) {
            drop(client); // the agent sees a closed connection, as on a dead network
            continue;
        }
        match TcpStream::connect(upstream) {
            Ok(server) => connect_pair(client, server, shared),
            Err(_) => drop(client), // the agent sees a closed connection, as without a proxy
        }
    }
}

/// Starts one pump thread per direction for an accepted connection.
fn connect_pair(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) {
    let client = Arc::new(client);
    let server = Arc::new(server);
    {
        let mut sockets = lock(&shared.sockets);
        sockets.retain(|s| s.strong_count() > 0);
        sockets.extend([Arc::downgrade(&client), Arc::downgrade(&server)]);
    }
    // Server-to-agent bytes of this connection so far, and where a byte is to be flipped
    // (`u64::MAX`: nowhere): the agent-to-server side sets it when it sees a request to tamper.
    let answered = Arc::new(AtomicU64::new(0));
    let flip_at = Arc::new(AtomicU64::new(u64::MAX));
    let (up_from, up_to, up_shared) = (client.clone(), server.clone(), shared.clone());
    let (up_answered, up_flip_at) = (answered.clone(), flip_at.clone());
    std::thread::spawn(move || {
        let mut recorder = HeadRecorder::default();
        let result = pump(
            &up_from,
            &up_to,
            || BUFFER,
            |bytes| {
                for head in recorder.feed(bytes) {
                    if tampered(&up_shared, &head) {
                        let at = up_answered.load(Ordering::SeqCst) + TAMPER_OFFSET;
                        up_flip_at.store(at, Ordering::SeqCst);
                    }
                    lock(&up_shared.requests).push(head);
                }
                Duration::ZERO
            },
        );
        finish(result, &up_from, &up_to);
    });
    let down_shared = shared.clone();
    std::thread::spawn(move || {
        let rate = || down_shared.rate.load(Ordering::SeqCst);
        let result = pump(
            &server,
            &client,
            || slice_at(rate()),
            |bytes| {
                let start = answered.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                flip_within(bytes, start, flip_at.load(Ordering::SeqCst));
                down_shared
                    .to_client
                    .fetch_add(bytes.len() as u64, Ordering::SeqCst);
                pace(bytes.len(), rate())
            },
        );
        finish(result, &server, &client);
    });
}

/// Whether answers to `head` are to be tampered with.
fn tampered(shared: &Shared, head: &RequestHead) -> bool {
    lock(&shared.tamper)
        .as_deref()
        .is_some_and(|prefix| head.path().starts_with(prefix))
}

/// Flips the byte at stream offset `at` when it lies in `bytes`, which start at offset `start`.
fn flip_within(bytes: &mut [u8], start: u64, at: u64) {
    if let Some(i) = at.checked_sub(start).and_then(|i| usize::try_from(i).ok())
        && let Some(byte) = bytes.get_mut(i)
    {
        *byte ^= 0x01;
    }
}

/// Copies `from` to `to` until end of stream, reading at most `read_cap()` bytes at a time;
/// `before_write` sees (and may alter) each slice before it is forwarded and says how long to
/// wait after it before the next read.
fn pump(
    mut from: &TcpStream,
    mut to: &TcpStream,
    read_cap: impl Fn() -> usize,
    mut before_write: impl FnMut(&mut [u8]) -> Duration,
) -> io::Result<()> {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let read = from.read(&mut buffer[..read_cap().clamp(1, BUFFER)])?;
        if read == 0 {
            return Ok(());
        }
        let pause = before_write(&mut buffer[..read]);
        to.write_all(&buffer[..read])?;
        std::thread::sleep(pause);
    }
}

/// The largest read that keeps pacing smooth at `rate` bytes per second (0: unlimited).
fn slice_at(rate: u64) -> usize {
    match rate {
        0 => BUFFER,
        rate => usize::try_from(rate / SLICES_PER_SEC).unwrap_or(BUFFER),
    }
}

/// How long `bytes` take at `rate` bytes per second (0: no pause).
fn pace(bytes: usize, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / rate as f64)
}

/// End of one direction: pass the end of stream on, or on an error close both sides.
fn finish(result: io::Result<()>, from: &TcpStream, to: &TcpStream) {
    match result {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

/// Finds HTTP/1 request heads in the agent-to-server byte stream of one connection: skips
/// `Content-Length` bodies, and stops looking after an upgrade (WebSocket frames follow), a
/// chunked body or a head too large to be one.
#[derive(Debug, Default)]
struct HeadRecorder {
    pending: Vec<u8>,
    body_left: u64,
    raw: bool,
}

impl HeadRecorder {
    /// Takes the next bytes of the stream; answers the request heads they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<RequestHead> {
        let mut heads = Vec::new();
        if self.raw {
            return heads;
        }
        self.pending.extend_from_slice(bytes);
        while !self.raw {
            if self.body_left > 0 {
                let skip = self
                    .pending
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                self.pending.drain(..skip);
                self.body_left -= skip as u64;
                if self.body_left > 0 {
                    return heads;
                }
                continue;
            }
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                self.raw = self.pending.len() > BUFFER;
                return heads;
            };
            let head = parse_head(&String::from_utf8_lossy(&self.pending[..end]));
            self.pending.drain(..end + 4);
            self.after_head(&head);
            heads.push(head);
        }
        heads
    }

    fn after_head(&mut self, head: &RequestHead) {
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        self.raw = chunked || head.header("upgrade").is_some();
        self.body_left = head
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
    }
}

fn parse_head(text: &str) -> RequestHead {
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    RequestHead { line, headers }
}
