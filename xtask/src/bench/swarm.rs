//! `cms-loadgen swarm` processes as the bench steers them: one process ([`Swarm`]) for the
//! single-server step, several ([`Fleet`]) for the replica step, each a line-protocol child
//! (one command, one JSON answer; see `crates/loadgen/src/swarm/mod.rs`).
//!
//! A fleet sends a command to every process before it reads any answer, so the processes work
//! at the same time. Every process is killed when its handle is dropped, also on error paths.
//! Nothing here judges a measurement: the answers are handed back as they came.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::stats;
use crate::util::describe;

/// Answer of the swarm to `grow`.
#[derive(Debug, Deserialize)]
pub struct Grown {
    /// Agents holding a WebSocket.
    pub connected: usize,
    /// Agents that could not be set up, since the start.
    pub failed: usize,
    /// Seconds the growth took.
    pub ramp_secs: f64,
    /// Why the first failed agent failed.
    pub first_error: Option<String>,
}

/// Answer to `measure`.
#[derive(Debug, Deserialize)]
pub struct Window {
    /// Its length, seconds.
    pub secs: f64,
    /// Agents holding a WebSocket at the end.
    pub connected: usize,
    /// Every heartbeat answered in the window, microseconds.
    pub latencies_us: Vec<u64>,
    /// Heartbeats that failed in the window.
    pub heartbeat_errors: u64,
    /// WebSockets dropped in the window.
    pub ws_drops: u64,
}

/// Answer to `await-push`.
#[derive(Debug, Deserialize)]
pub struct PushSpread {
    /// Agents connected when the wait began.
    pub expected: usize,
    /// Agents notified.
    pub received: usize,
    /// First notification, microseconds since the Unix epoch.
    pub first_unix_us: Option<u64>,
    /// Last notification, microseconds since the Unix epoch.
    pub last_unix_us: Option<u64>,
    /// The longest spread of update checks a notification asked for, seconds.
    #[serde(default)]
    pub check_spread_secs: Option<u32>,
}

/// Answer to `status`.
#[derive(Debug, Deserialize)]
pub struct Status {
    /// Agents of the process.
    pub agents: usize,
    /// Agents holding a WebSocket now.
    pub connected: usize,
    /// WebSockets dropped since the process started.
    pub ws_drops: u64,
    /// When the last WebSocket came up, microseconds since the Unix epoch.
    pub last_connected_unix_us: Option<u64>,
}

/// What a fleet step's measurement window saw, over every process of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Heartbeats {
    /// Simulated agents.
    pub agents: usize,
    /// Agents holding a WebSocket at the end of the window.
    pub connected: usize,
    /// Seconds it took to add this step's agents (register, connect).
    pub ramp_secs: f64,
    /// Length of the measurement window, seconds.
    pub window_secs: f64,
    /// Heartbeats answered in the window.
    pub heartbeats: usize,
    /// Heartbeat latency percentiles, milliseconds: p50, p99, max.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
    /// Heartbeats that failed, and WebSockets dropped, in the window.
    pub failures: u64,
}

impl Heartbeats {
    /// Sums up `windows` (one per process) of `agents` grown in `ramp_secs`.
    pub fn of(agents: usize, ramp_secs: f64, window_secs: f64, windows: &[Window]) -> Result<Self> {
        let latencies: Vec<u64> = windows
            .iter()
            .flat_map(|w| w.latencies_us.iter().copied())
            .collect();
        let Some([p50, p99, max]) = latency_ms(&latencies) else {
            bail!("no heartbeat was answered in the {window_secs} s window at N={agents}");
        };
        Ok(Heartbeats {
            agents,
            connected: windows.iter().map(|w| w.connected).sum(),
            ramp_secs,
            window_secs,
            heartbeats: latencies.len(),
            p50_ms: p50,
            p99_ms: p99,
            max_ms: max,
            failures: windows
                .iter()
                .map(|w| w.heartbeat_errors + w.ws_drops)
                .sum(),
        })
    }

    /// p99 under `goal_ms`, no failure, every agent connected.
    pub fn hold(&self, goal_ms: f64) -> bool {
        self.p99_ms < goal_ms && self.failures == 0 && self.connected == self.agents
    }
}

/// The ramp's length (the slowest process); an agent that could not be set up fails the step.
pub fn ramp_secs(grown: &[Grown], agents: usize) -> Result<f64> {
    let failed: usize = grown.iter().map(|g| g.failed).sum();
    if failed > 0 {
        let error = grown.iter().find_map(|g| g.first_error.clone());
        bail!(
            "{failed} of {agents} simulated agents could not be set up: {}",
            error.unwrap_or_default()
        );
    }
    Ok(grown.iter().map(|g| g.ramp_secs).fold(0.0, f64::max))
}

/// Heartbeat latency percentiles of `latencies_us` in milliseconds: p50, p99, max.
fn latency_ms(latencies_us: &[u64]) -> Option<[f64; 3]> {
    let millis: Vec<f64> = latencies_us.iter().map(|us| *us as f64 / 1000.0).collect();
    match stats::percentiles(&millis, &[50.0, 99.0, 100.0]).as_deref() {
        Some(&[p50, p99, max]) => Some([p50, p99, max]),
        _ => None,
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The running `cms-loadgen swarm`, steered line by line.
#[derive(Debug)]
pub struct Swarm {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Swarm {
    /// Starts `loadgen swarm` against `server_url`, its agents heartbeating every
    /// `heartbeat_secs` and numbered from `first_agent`.
    pub fn start(
        loadgen: &Path,
        server_url: &str,
        heartbeat_secs: u64,
        first_agent: usize,
    ) -> Result<Swarm> {
        let mut command = Command::new(loadgen);
        command
            .args(["swarm", "--server", server_url, "--heartbeat-secs"])
            .arg(heartbeat_secs.to_string())
            .arg("--first-agent")
            .arg(first_agent.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&command)))?;
        let stdin = child.stdin.take().context("cms-loadgen has no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("cms-loadgen has no stdout")?);
        Ok(Swarm {
            child,
            stdin,
            stdout,
        })
    }

    /// The process id (for `/proc` readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command and reads its one-line answer.
    pub fn ask<T: DeserializeOwned>(&mut self, command: &str) -> Result<T> {
        self.send(command)?;
        self.answer(command)
    }

    fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}").context("cms-loadgen stopped reading")?;
        self.stdin.flush().context("cms-loadgen stopped reading")
    }

    fn answer<T: DeserializeOwned>(&mut self, command: &str) -> Result<T> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("cms-loadgen exited while answering {command:?}");
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("cms-loadgen answered {line:?}"))?;
        if let Some(error) = value.get("error") {
            bail!("cms-loadgen refused {command:?}: {error}");
        }
        serde_json::from_value(value).with_context(|| format!("cms-loadgen answered {line:?}"))
    }

    /// Asks it to close its connections and exit, and waits for that.
    pub fn quit(mut self) -> Result<()> {
        writeln!(self.stdin, "quit")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("cms-loadgen did not quit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Several swarms sharing one fleet: process `k` simulates agents `k * per_process` to
/// `(k + 1) * per_process - 1` against server URL `k` (round robin over the URLs given), and
/// is filled before the next one starts.
#[derive(Debug)]
pub struct Fleet {
    swarms: Vec<Swarm>,
    per_process: usize,
}

impl Fleet {
    /// Enough processes for `max_agents`, `per_process` agents each at most.
    pub fn start(
        loadgen: &Path,
        server_urls: &[String],
        heartbeat_secs: u64,
        max_agents: usize,
        per_process: usize,
    ) -> Result<Fleet> {
        let per_process = per_process.max(1);
        if server_urls.is_empty() {
            bail!("a fleet needs a server URL");
        }
        let swarms = (0..max_agents.div_ceil(per_process))
            .map(|k| {
                let url = &server_urls[k % server_urls.len()];
                Swarm::start(loadgen, url, heartbeat_secs, k * per_process)
            })
            .collect::<Result<_>>()?;
        Ok(Fleet {
            swarms,
            per_process,
        })
    }

    /// How many processes there are.
    pub fn processes(&self) -> usize {
        self.swarms.len()
    }

    /// Their process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.swarms.iter().map(Swarm::pid).collect()
    }

    /// Grows the fleet to `agents` (filling processes in order); one answer per process asked.
    pub fn grow(&mut self, agents: usize) -> Result<Vec<Grown>> {
        let targets = share(agents, self.per_process, self.swarms.len())?;
        let asked: Vec<(usize, String)> = targets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k, format!("grow {n}")))
            .collect();
        for (k, command) in &asked {
            self.swarms[*k].send(command)?;
        }
        asked
            .iter()
            .map(|(k, command)| self.swarms[*k].answer(command))
            .collect()
    }

    /// Sends `command` to every process, then reads every answer.
    pub fn ask_all<T: DeserializeOwned>(&mut self, command: &str) -> Result<Vec<T>> {
        for swarm in &mut self.swarms {
            swarm.send(command)?;
        }
        self.swarms
            .iter_mut()
            .map(|swarm| swarm.answer(command))
            .collect()
    }

    /// Asks every process to quit, and waits for each.
    pub fn quit(self) -> Result<()> {
        self.swarms.into_iter().try_for_each(Swarm::quit)
    }
}

/// Agents per process for a fleet of `agents`: full processes of `per_process` first.
fn share(agents: usize, per_process: usize, processes: usize) -> Result<Vec<usize>> {
    if agents > per_process * processes {
        bail!("{agents} agents do not fit in {processes} load generators of {per_process}");
    }
    Ok((0..processes)
        .map(|k| agents.saturating_sub(k * per_process).min(per_process))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_filled_in_order() {
        assert_eq!(share(25, 10, 3).unwrap(), [10, 10, 5]);
        assert_eq!(share(10, 10, 3).unwrap(), [10, 0, 0]);
        assert_eq!(share(0, 10, 2).unwrap(), [0, 0]);
        assert!(share(31, 10, 3).is_err());
    }

    #[test]
    fn latencies_are_summarized_in_milliseconds() {
        assert_eq!(latency_ms(&[1000, 3000, 2000]), Some([2.0, 3.0, 3.0]));
        assert_eq!(latency_ms(&[]), None);
    }
}
