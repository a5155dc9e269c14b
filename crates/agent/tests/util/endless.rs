//! A hostile backend on loopback: it answers every HTTP request with a body that never ends
//! (256 MiB of JSON-looking bytes, no `Content-Length`), alternately as `200 OK` and as
//! `503`, and counts how many bytes each connection took before the agent hung up.
//!
//! It reads each request head only as far as its end, writes from one small buffer, and its
//! thread ends when the test drops it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What each answer would send in full.
pub const BODY_BYTES: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A running endless server; dropping it stops accepting.
#[derive(Debug)]
pub struct EndlessServer {
    /// Base URL to give the agent.
    pub url: String,
    /// Bytes of body sent on each finished connection, in order.
    finished: Arc<Mutex<Vec<u64>>>,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl EndlessServer {
    /// Starts on a free loopback port.
    pub fn start() -> EndlessServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let finished = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (done, stop) = (finished.clone(), stopping.clone());
        let accept = std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let sent = answer_endlessly(client, n % 2 == 1);
                done.lock().unwrap().push(sent);
            }
        });
        EndlessServer {
            url,
            finished,
            stopping,
            accept: Some(accept),
        }
    }

    /// Body bytes sent on each connection the agent has given up on so far.
    pub fn finished_connections(&self) -> Vec<u64> {
        self.finished.lock().unwrap().clone()
    }
}

impl Drop for EndlessServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Reads one request head, then streams the body until the client hangs up (or all of it is
/// sent); returns the body bytes written.
fn answer_endlessly(client: TcpStream, as_error: bool) -> u64 {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let status = if as_error {
        "503 Service Unavailable"
    } else {
        "200 OK"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n["
    );
    let mut client = client;
    if client.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let chunk = b"1,".repeat(CHUNK / 2);
    let mut sent = 1;
    while sent < BODY_BYTES {
        if client.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    sent
}
