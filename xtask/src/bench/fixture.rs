//! The real parts every measurement runs on, as the bench uses them: a quiet `cms-server`
//! ([`crate::server`]) with its log beside its data folder, an agent installed like on a
//! machine ([`crate::installed_agent`]), and its `agent.lock` read every millisecond from
//! outside to time handovers.
//!
//! Every process started here is stopped when its handle is dropped, also on error paths.
//! Nothing here measures: callers time what they need.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cms_protocol::LockRecord;

use super::plan::Plan;
use crate::installed_agent::InstalledAgent;
use crate::server::{Release, RunningServer, Server, ServerOutput};
use crate::util;

/// Longest any single wait of the bench may take before it fails with what it waited for.
pub const WAIT: Duration = Duration::from_secs(60);
/// How often the lock file is read while a handover is timed.
const LOCK_POLL: Duration = Duration::from_millis(1);
/// The updater's grace period for the bench's agents: it only delays the end of an update
/// run, never what is measured.
const UPDATER_GRACE_SECS: u32 = 1;

/// The per-source guards lifted: the bench plays thousands of agents from a few loopback
/// addresses, which is exactly the flood those guards stop on a real network.
const FLEET_ON_LOOPBACK: [&str; 6] = [
    "--registration-burst",
    "1000000",
    "--registrations-per-minute",
    "1000000",
    "--max-connections-per-source",
    "1000000",
];

/// The bench's server with its data in `data_dir` and its log in `<data_dir>.log`.
pub fn server(plan: &Plan, data_dir: &Path) -> Server {
    fleet_server(&plan.bins.server, data_dir, &data_dir.with_extension("log"))
}

/// The server `exe` with its data in `data_dir`, its log in `log`, and the per-source guards
/// lifted for a simulated fleet on loopback.
pub fn fleet_server(exe: &Path, data_dir: &Path, log: &Path) -> Server {
    Server::new(exe, data_dir, ServerOutput::LogFile(log.to_path_buf()))
        .with_serve_args(&FLEET_ON_LOOPBACK)
}

/// The Linux release `version` of `agent` + `updater`.
pub fn linux_release<'a>(version: &'a str, agent: &'a Path, updater: &'a Path) -> Release<'a> {
    Release {
        version,
        platform: Some("linux-x86_64"),
        agent,
        updater,
    }
}

/// `agent` installed under `root` (`root/install`, `root/data`), like a machine.
pub fn install(root: &Path, agent: &Path) -> Result<InstalledAgent> {
    InstalledAgent::install(
        agent,
        &root.join("install"),
        &root.join("data"),
        UPDATER_GRACE_SECS,
    )
}

/// Waits until the agent has registered with `server` and holds its WebSocket; returns its id.
pub fn wait_registered(server: &RunningServer) -> Result<String> {
    let agent_id = wait_for("the agent to register", || {
        Ok(server.agents()?.into_iter().next().map(|a| a.agent_id))
    })?;
    server.push_update_check(&agent_id)?;
    Ok(agent_id)
}

/// Registers an identity the way an agent does and returns its bearer token.
pub fn register(server: &RunningServer, hostname: &str) -> Result<String> {
    register_as(server, hostname, "0.0.1")
}

/// Registers an identity of agent `version` the way an agent does; returns its bearer token.
pub fn register_as(server: &RunningServer, hostname: &str, version: &str) -> Result<String> {
    let request = cms_protocol::RegisterRequest {
        hostname: hostname.into(),
        platform: "linux-x86_64".into(),
        version: version.into(),
        enrollment_token: None,
        group: None,
    };
    let url = format!("{}{}", server.url(), cms_protocol::paths::REGISTER);
    let response: cms_protocol::RegisterResponse = server
        .client()
        .post(&url)
        .json(&request)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .with_context(|| format!("POST {url}"))?;
    Ok(response.agent_token)
}

/// Reads the lock every millisecond until `holds` accepts its record; returns the record and
/// when it was first seen.
pub fn wait_lock(
    agent: &InstalledAgent,
    holds: impl Fn(&LockRecord) -> bool,
) -> Result<(LockRecord, Instant)> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(record) = agent.lock().filter(|r| holds(r)) {
            return Ok((record, Instant::now()));
        }
        if Instant::now() >= deadline {
            bail!(
                "no agent took the lock in {} within {WAIT:?}",
                agent.data().display()
            );
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// When a lock changed hands, seen from outside.
#[derive(Debug)]
pub struct Handover {
    /// Last read that still showed the old holder.
    pub last_old: Instant,
    /// First read that showed the new holder.
    pub first_new: Instant,
}

/// Times a handover of the lock from `old_pid` to a holder that `is_new` accepts.
pub fn watch_handover(
    agent: &InstalledAgent,
    old_pid: u32,
    is_new: impl Fn(&LockRecord) -> bool,
) -> Result<Handover> {
    let mut last_old = Instant::now();
    let deadline = last_old + WAIT;
    loop {
        match agent.lock() {
            Some(record) if record.pid == old_pid => last_old = Instant::now(),
            Some(record) if is_new(&record) => {
                return Ok(Handover {
                    last_old,
                    first_new: Instant::now(),
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "the lock in {} was not handed over within {WAIT:?}",
                agent.data().display()
            );
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// Polls `probe` every 10 ms until it yields a value, failing after [`WAIT`]; errors count as
/// "not yet" (a server that is still starting refuses connections).
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    util::wait_for_every(Duration::from_millis(10), what, WAIT, probe)
}

/// Milliseconds from `earlier` to `later`.
pub fn millis(earlier: Instant, later: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64() * 1000.0
}
