//! The simulated fleet, and the line protocol `cargo xtask bench` steers it with.
//!
//! Each simulated agent is one task that does what a real agent does on the wire: it registers
//! over HTTP/1.1, opens its WebSocket (`/api/v1/agent/ws`), answers the server's pings, and
//! sends a `StatusReport` heartbeat every `--heartbeat-secs` (+/- 10 %, first one at a random
//! point of the interval so the load is steady, as in a fleet that has been up for a while):
//! on the WebSocket, holding one connection per agent (`--heartbeat-over websocket`, what the
//! agent does), or over a keep-alive HTTP connection beside the socket (`--heartbeat-over
//! http`, what older agents do). The server cannot tell it from a real agent.
//!
//! Commands, one per line on stdin; each is answered by exactly one JSON line on stdout:
//!
//! | command | answer |
//! |---|---|
//! | `grow N` | adds agents until N exist: `{"agents", "connected", "failed", "ramp_secs", "first_error"}` |
//! | `measure SECS` | heartbeat latencies of the next SECS seconds: `{"secs", "connected", "latencies_us": [...], "heartbeat_errors", "ws_drops"}` |
//! | `status` | at once: `{"agents", "connected", "ws_drops", "last_connected_unix_us"}` (drops since the start; when the last WebSocket came up) |
//! | `await-push VERSION SECS` | waits up to SECS for every connected agent to be pushed `agent:update_required` for VERSION: `{"expected", "received", "first_unix_us", "last_unix_us", "check_spread_secs"}` (the longest `spread_secs` a notification asked for) |
//! | `download SECS` | every agent does what a push asks (update check, at a random moment of the spread the push asked for, then the offered package; see [`download`]); answers when all are done or after SECS: `{"expected", "completed", "failed", "first_error", "busy", "bytes", "started_unix_us", "last_done_unix_us", "window"}` (`busy`: `503` answers waited out; `window`: the heartbeats meanwhile, as `measure` gives them) |
//! | `quit` (or end of input) | closes every connection and exits |
//!
//! A command that cannot be understood is answered with `{"error": "..."}`. Latencies are raw
//! samples (microseconds, request written to response read) so the caller computes every
//! statistic in one place. This module must never retry a failed heartbeat silently: every
//! failure is counted and reported.

mod agent;
mod download;
mod http;
mod record;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use record::Recorder;

/// How long `quit` waits for the agents to close their WebSockets.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Simulated agents per loopback source address: two connections each (with HTTP heartbeats)
/// stay well inside one address's ephemeral port range (28,232 ports by default on Linux).
const AGENTS_PER_SOURCE_IP: usize = 10_000;

/// Which way the simulated agents send their heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatRoute {
    /// On the WebSocket (the agent's way while its socket is up): one connection per agent.
    WebSocket,
    /// `POST /api/v1/agent/status` on a keep-alive connection (agents before that).
    Http,
}

/// How the fleet behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server (loopback).
    pub server: SocketAddr,
    /// Interval between heartbeats of one agent.
    pub heartbeat: Duration,
    /// Which way they go.
    pub heartbeat_route: HeartbeatRoute,
    /// Version the agents report.
    pub agent_version: String,
    /// Platform the agents register for.
    pub platform: String,
    /// Agents set up at once while growing.
    pub concurrency: usize,
    /// Number of the first agent of this process (see [`Shared::source_ip`]).
    pub first_agent: usize,
}

/// What every agent task shares.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    recorder: Recorder,
    setup_slots: Semaphore,
    /// Bumped by each `download` order; every agent watches it.
    download_orders: watch::Sender<u64>,
}

impl Shared {
    /// The local address agent `index` (counted from 0 across every process of the fleet)
    /// connects from: IPv4 loopback servers are reached from 127.0.0.1, 127.0.0.2, ... so that
    /// large fleets do not run out of ephemeral ports.
    fn source_ip(&self, index: usize) -> Option<IpAddr> {
        if !self.settings.server.is_ipv4() {
            return None;
        }
        let block = u32::try_from(index / AGENTS_PER_SOURCE_IP).ok()?;
        let ip = u32::from(Ipv4Addr::new(127, 0, 0, 1)).checked_add(block)?;
        Some(IpAddr::V4(Ipv4Addr::from(ip)))
    }
}

/// Runs the fleet until `quit` or the end of stdin.
pub async fn run(settings: Settings) -> Result<()> {
    let concurrency = settings.concurrency;
    let fleet = Fleet {
        shared: Arc::new(Shared {
            settings,
            recorder: Recorder::default(),
            setup_slots: Semaphore::new(concurrency),
            download_orders: watch::Sender::new(0),
        }),
        tasks: JoinSet::new(),
        stop: CancellationToken::new(),
        agents: 0,
        failed: 0,
    };
    fleet.serve_commands().await
}

struct Fleet {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
    agents: usize,
    failed: usize,
}

/// Answer to `grow`.
#[derive(Debug, Serialize)]
struct Grown {
    agents: usize,
    connected: usize,
    failed: usize,
    ramp_secs: f64,
    first_error: Option<String>,
}

/// Answer to `download`.
#[derive(Debug, Serialize)]
struct Pushed {
    /// Agents told to download (every agent that was set up).
    expected: usize,
    #[serde(flatten)]
    downloads: record::Downloads,
    /// When the order was given (microseconds since the Unix epoch).
    started_unix_us: u64,
    /// Heartbeats from the order until every download ended (or the wait did).
    window: record::Window,
}

/// Answer to `status`.
#[derive(Debug, Serialize)]
struct Status {
    agents: usize,
    connected: usize,
    ws_drops: u64,
    last_connected_unix_us: Option<u64>,
}

impl Fleet {
    async fn serve_commands(mut self) -> Result<()> {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.next_line().await.context("cannot read stdin")? {
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["grow", n] => match n.parse() {
                    Ok(n) => to_json(&self.grow(n).await),
                    Err(_) => error_json(&format!("grow needs a number, not {n:?}")),
                },
                ["measure", secs] => match secs.parse::<f64>() {
                    Ok(secs) if secs > 0.0 => to_json(&self.measure(secs).await),
                    _ => error_json(&format!("measure needs seconds, not {secs:?}")),
                },
                ["await-push", version, secs] => match secs.parse::<f64>() {
                    Ok(secs) if secs > 0.0 => to_json(&self.await_push(version, secs).await),
                    _ => error_json(&format!("await-push needs seconds, not {secs:?}")),
                },
                ["download", secs] => match secs.parse::<f64>() {
                    Ok(secs) if secs > 0.0 => to_json(&self.download(secs).await),
                    _ => error_json(&format!("download needs seconds, not {secs:?}")),
                },
                ["status"] => to_json(&self.status()),
                ["quit"] => break,
                [] => continue,
                _ => error_json(&format!("unknown command {line:?}")),
            };
            stdout
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .context("cannot write stdout")?;
            stdout.flush().await.context("cannot write stdout")?;
        }
        self.close().await;
        Ok(())
    }

    /// Adds agents until `target` exist; answers once each new one is set up or has failed.
    async fn grow(&mut self, target: usize) -> Grown {
        let started = Instant::now();
        let mut pending = Vec::new();
        while self.agents < target {
            let (ready, setup) = oneshot::channel();
            let index = self.shared.settings.first_agent + self.agents;
            let task = agent::SimulatedAgent::new(self.shared.clone(), index);
            self.tasks.spawn(task.run(ready, self.stop.child_token()));
            pending.push(setup);
            self.agents += 1;
        }
        let mut first_error = None;
        for setup in pending {
            let outcome = setup
                .await
                .unwrap_or_else(|_| Err("agent task ended during setup".into()));
            if let Err(error) = outcome {
                self.failed += 1;
                first_error.get_or_insert(error);
            }
        }
        Grown {
            agents: self.agents,
            connected: self.shared.recorder.connected(),
            failed: self.failed,
            ramp_secs: started.elapsed().as_secs_f64(),
            first_error,
        }
    }

    fn status(&self) -> Status {
        let recorder = &self.shared.recorder;
        Status {
            agents: self.agents,
            connected: recorder.connected(),
            ws_drops: recorder.total_ws_drops(),
            last_connected_unix_us: recorder.last_connected_unix_us(),
        }
    }

    async fn measure(&self, secs: f64) -> record::Window {
        let recorder = &self.shared.recorder;
        recorder.start_window();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        recorder.end_window(secs)
    }

    async fn await_push(&self, version: &str, secs: f64) -> record::PushSpread {
        let recorder = &self.shared.recorder;
        let expected = recorder.connected();
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while recorder.pushes(version).received < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        record::PushSpread {
            expected,
            ..recorder.pushes(version)
        }
    }

    /// Orders every agent to download the offered package; waits up to `secs` for all of them,
    /// timing the heartbeats meanwhile.
    async fn download(&self, secs: f64) -> Pushed {
        let recorder = &self.shared.recorder;
        let expected = self.agents - self.failed;
        recorder.reset_downloads();
        recorder.start_window();
        let started = Instant::now();
        let started_unix_us = record::unix_micros(std::time::SystemTime::now());
        self.shared.download_orders.send_modify(|order| *order += 1);
        let deadline = started + Duration::from_secs_f64(secs);
        while recorder.downloads().ended() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Pushed {
            expected,
            downloads: recorder.downloads(),
            started_unix_us,
            window: recorder.end_window(started.elapsed().as_secs_f64()),
        }
    }

    async fn close(mut self) {
        self.stop.cancel();
        let joined = tokio::time::timeout(CLOSE_WAIT, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!("some agents did not close in time");
        }
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|err| error_json(&format!("cannot encode the answer: {err}")))
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(server: &str) -> Shared {
        Shared {
            settings: Settings {
                server: server.parse().unwrap(),
                heartbeat: Duration::from_secs(60),
                heartbeat_route: HeartbeatRoute::WebSocket,
                agent_version: "1.0.0".into(),
                platform: "linux-x86_64".into(),
                concurrency: 1,
                first_agent: 0,
            },
            recorder: Recorder::default(),
            setup_slots: Semaphore::new(1),
            download_orders: watch::Sender::new(0),
        }
    }

    #[test]
    fn large_fleets_spread_over_loopback_source_addresses() {
        let v4 = shared("127.0.0.1:8080");
        assert_eq!(v4.source_ip(0), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(v4.source_ip(9_999), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(v4.source_ip(10_000), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(v4.source_ip(2_560_000), Some("127.0.1.1".parse().unwrap()));
        assert_eq!(shared("[::1]:8080").source_ip(10_000), None);
    }
}
