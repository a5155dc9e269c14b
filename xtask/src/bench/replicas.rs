//! The replica step: `cms-server serve` replicas on one PostgreSQL schema of their own
//! (created for the run, dropped after it) sharing one data folder, behind a real haproxy
//! ([`haproxy::config`]), and the simulated fleet spread over several `cms-loadgen` processes
//! ([`Fleet`]), all on this machine over loopback.
//!
//! The fleet grows in steps as in the single-server step: each step holds when p99 heartbeat
//! latency is under [`P99_GOAL_MS`] with no failed heartbeat and no dropped WebSocket, and
//! reports the replicas' memory per connected agent and the time from the start of `release
//! publish` to the last agent pushed. Under the largest fleet reached, one replica is killed
//! with SIGKILL and the step times until every agent holds a WebSocket again (through haproxy,
//! on the others). Without PostgreSQL, psql or haproxy the step is skipped with a loud line,
//! never failed: this module measures and must never judge the run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::agent::MB;
use super::fixture;
use super::haproxy::{self, RunningProxy};
use super::plan::{Budget, Ladder, ReplicaPlan};
use super::postgres::{self, Schema};
use super::procfs::{self, Sample};
use super::swarm::{self, Fleet, Heartbeats, PushSpread, Status, Window, unix_micros};
use crate::server::{RunningServer, Server};

/// A step holds when its p99 heartbeat latency is below this (the goal).
pub const P99_GOAL_MS: f64 = 100.0;
/// Descriptors kept for everything else (listeners, database pools, logs).
const FD_SLACK: u64 = 1024;
/// The fleet a replica is killed under when the largest one reached does not fit in the
/// replicas left (the number).
const FAILOVER_FLEET: usize = 20_000;

/// What the replica step found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaResults {
    /// Not measured, and why (no PostgreSQL, psql or haproxy).
    Skipped(String),
    /// Measured.
    Measured(Box<ReplicaRun>),
}

/// One measured replica step.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaRun {
    /// Replicas behind haproxy.
    pub replicas: usize,
    /// `cms-loadgen` processes, and agents in each at most.
    pub loadgen_processes: usize,
    /// See `loadgen_processes`.
    pub agents_per_loadgen: usize,
    /// Heartbeat interval of each simulated agent, seconds.
    pub heartbeat_secs: u64,
    /// Open-file limit every process ran with.
    pub open_file_limit: u64,
    /// `haproxy -v`.
    pub haproxy: String,
    /// PostgreSQL's `server_version`.
    pub postgres: String,
    /// Load average (1, 5, 15 min) when the step started: the machine is shared.
    pub load_at_start: [f64; 3],
    /// Every step, in order.
    pub steps: Vec<ReplicaStep>,
    /// Largest N that held, if any.
    pub largest_held: Option<usize>,
    /// Why the search stopped.
    pub stopped_because: String,
    /// One replica killed under the largest fleet reached (`None`: not measured, see
    /// `failover_error`).
    pub failover: Option<Failover>,
    /// Why the failover was not measured.
    pub failover_error: Option<String>,
}

/// One step of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStep {
    /// Agents, latencies and failures of the window, over every load generator.
    #[serde(flatten)]
    pub window: Heartbeats,
    /// Resident memory of all replicas together at the end of the window, MB.
    pub replicas_rss_mb: f64,
    /// That memory per connected agent, KB (10^3 bytes).
    pub replica_kb_per_agent: f64,
    /// CPU of all replicas over the window, percent of one core.
    pub replicas_cpu_percent: f64,
    /// haproxy's resident memory, MB, and CPU, percent of one core.
    pub haproxy_rss_mb: f64,
    /// See `haproxy_rss_mb`.
    pub haproxy_cpu_percent: f64,
    /// CPU of all load generators over the window (they share the machine).
    pub loadgen_cpu_percent: f64,
    /// 1-minute load average at the end of the window.
    pub load_average: f64,
    /// How long `release publish` itself took, milliseconds.
    pub publish_ms: f64,
    /// Start of `release publish` -> first and last agent pushed (`None`: not all were).
    pub push_first_ms: Option<f64>,
    /// See `push_first_ms`.
    pub push_all_ms: Option<f64>,
    /// Whether the step holds (see the module docs).
    pub holds: bool,
}

/// A replica killed with SIGKILL under the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// Agents in the fleet.
    pub agents: usize,
    /// WebSockets that broke (the killed replica's agents).
    pub dropped: u64,
    /// Kill -> the last of them connected again (`None`: not all within the wait).
    pub all_back_ms: Option<f64>,
    /// Agents connected when the wait ended.
    pub connected_at_end: usize,
}

/// Everything the step runs on; dropped in reverse order of start.
struct Rig {
    fleet: Fleet,
    proxies: Vec<RunningProxy>,
    replicas: Vec<RunningServer>,
    store: Server,
    /// What the releases carry: a small real program (the simulated agents never download
    /// it, and a large one would time `release publish` packing it rather than the push).
    payload: PathBuf,
}

/// What every rig of one run is made of.
struct Parts<'a> {
    plan: &'a ReplicaPlan,
    server_exe: &'a Path,
    loadgen: &'a Path,
    haproxy_exe: &'a Path,
    work: &'a Path,
    database_url: String,
    open_file_limit: u64,
}

/// Runs the replica step with `server` and `loadgen`, in `work`.
pub fn measure(plan: &ReplicaPlan, server: &Path, loadgen: &Path, work: &Path) -> ReplicaResults {
    let (haproxy_exe, admin_url) = match prerequisites() {
        Ok(found) => found,
        Err(why) => {
            eprintln!();
            eprintln!("!!! bench: the replica step is SKIPPED: {why}");
            eprintln!();
            return ReplicaResults::Skipped(why);
        }
    };
    match run(plan, server, loadgen, work, &haproxy_exe, &admin_url) {
        Ok(run) => ReplicaResults::Measured(Box::new(run)),
        Err(err) => {
            let why = format!("the replica step failed: {err:#}");
            eprintln!("!!! bench: {why}");
            ReplicaResults::Skipped(why)
        }
    }
}

fn prerequisites() -> Result<(PathBuf, String), String> {
    let haproxy = haproxy::find().ok_or("haproxy is not installed (apt-get install haproxy)")?;
    postgres::require_psql()?;
    let url = postgres::find_url()?;
    Ok((haproxy, url))
}

fn run(
    plan: &ReplicaPlan,
    server_exe: &Path,
    loadgen: &Path,
    work: &Path,
    haproxy_exe: &Path,
    admin_url: &str,
) -> Result<ReplicaRun> {
    std::fs::create_dir_all(work)?;
    let open_file_limit = procfs::raise_open_file_limit(plan.max as u64 + FD_SLACK);
    let proxy_fds = 2 * proxy_maxconn(plan) as u64 + FD_SLACK;
    if proxy_fds > open_file_limit {
        bail!(
            "one haproxy for {} agents needs {proxy_fds} descriptors, over the open-file limit \
             ({open_file_limit})",
            plan.per_loadgen
        );
    }
    let schema = Schema::create(admin_url)?;
    println!(
        "    PostgreSQL schema {} (dropped at the end)",
        schema.name()
    );
    let parts = Parts {
        plan,
        server_exe,
        loadgen,
        haproxy_exe,
        work,
        database_url: schema.server_url(),
        open_file_limit,
    };
    let outcome = search(&parts, &schema);
    let dropped = schema.drop_schema();
    let run = outcome?;
    dropped?;
    Ok(run)
}

/// Connections one haproxy takes: its load generator's agents, plus room for reconnects.
fn proxy_maxconn(plan: &ReplicaPlan) -> usize {
    plan.per_loadgen + 1000
}

impl Rig {
    /// Replicas, then one haproxy per load generator in front of all of them (one process may
    /// hold `open_file_limit` descriptors and haproxy holds two per agent), then enough load
    /// generators for `max_agents`, each through its own haproxy.
    fn start(parts: &Parts, max_agents: usize) -> Result<Rig> {
        let plan = parts.plan;
        let store_dir = parts.work.join("store");
        std::fs::create_dir_all(&store_dir)?;
        let replicas = (1..=plan.replicas)
            .map(|i| {
                let log = parts.work.join(format!("replica-{i}.log"));
                fixture::fleet_server(parts.server_exe, &store_dir, &log)
                    .with_database_url(&parts.database_url)
                    .start()
                    .with_context(|| format!("replica {i} did not start"))
            })
            .collect::<Result<Vec<_>>>()?;
        let addresses: Vec<String> = replicas
            .iter()
            .map(|r| r.listen_addr().to_owned())
            .collect();
        let proxies = (1..=max_agents.div_ceil(plan.per_loadgen.max(1)))
            .map(|k| start_proxy(parts, &addresses, k))
            .collect::<Result<Vec<_>>>()?;
        let urls: Vec<String> = proxies.iter().map(|p| p.url().to_owned()).collect();
        println!(
            "    {} replicas ({}) behind {} haproxy ({})",
            replicas.len(),
            addresses.join(", "),
            proxies.len(),
            urls.join(", ")
        );
        let fleet = Fleet::start(
            parts.loadgen,
            &urls,
            plan.heartbeat_secs,
            max_agents,
            plan.per_loadgen,
        )?;
        let store = fixture::fleet_server(
            parts.server_exe,
            &store_dir,
            &parts.work.join("publish.log"),
        )
        .with_database_url(&parts.database_url);
        Ok(Rig {
            fleet,
            proxies,
            replicas,
            store,
            payload: small_program()?,
        })
    }

    fn replica_pids(&self) -> Vec<u32> {
        self.replicas.iter().map(RunningServer::pid).collect()
    }

    fn proxy_pids(&self) -> Vec<u32> {
        self.proxies.iter().map(RunningProxy::pid).collect()
    }

    /// Stops everything; a slow stop is worth a line, not the numbers already taken.
    fn stop(mut self) {
        let stopped = (|| {
            self.fleet.quit()?;
            for replica in &mut self.replicas {
                replica.stop()?;
            }
            self.proxies.iter_mut().try_for_each(RunningProxy::stop)
        })();
        if let Err(err) = stopped {
            eprintln!("bench: the replica step did not stop cleanly: {err:#}");
        }
    }
}

/// haproxy number `k` (from 1) in front of `replicas`, on a free loopback port, connecting
/// to them from 127.0.1.`k`.
fn start_proxy(parts: &Parts, replicas: &[String], k: usize) -> Result<RunningProxy> {
    if k > 254 {
        bail!("haproxy number {k}: the bench gives at most 254 a source address of its own");
    }
    let bind = free_loopback_address()?;
    let source = format!("127.0.1.{k}");
    let config = haproxy::config(&bind, &source, replicas, proxy_maxconn(parts.plan));
    RunningProxy::start(
        parts.haproxy_exe,
        &parts.work.join(format!("haproxy-{k}.cfg")),
        &config,
        &bind,
        &parts.work.join(format!("haproxy-{k}.log")),
    )
}

/// `true` from the system (tens of KB): a real executable for the releases to carry.
fn small_program() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    crate::util::find_on_path(&path, "true").context("no `true` program on PATH")
}

/// A free port on 127.0.0.1 for haproxy to bind (taken from the OS, then released).
fn free_loopback_address() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Agents `replicas` replicas can hold within the open-file limit, one descriptor each.
fn replicas_hold(replicas: usize, open_file_limit: u64) -> usize {
    let each = usize::try_from(open_file_limit.saturating_sub(FD_SLACK)).unwrap_or(usize::MAX);
    replicas.saturating_mul(each)
}

fn search(parts: &Parts, schema: &Schema) -> Result<ReplicaRun> {
    let plan = parts.plan;
    let open_file_limit = parts.open_file_limit;
    let load_at_start = load_average();
    let cap = replicas_hold(plan.replicas, open_file_limit);
    let mut rig = Rig::start(parts, plan.max.min(cap))?;
    let loadgen_processes = rig.fleet.processes();
    let ladder = Ladder {
        first: plan.first,
        increment: plan.increment,
        max: plan.max,
        cap,
        cap_reason: format!(
            "the open-file limit ({open_file_limit}) leaves {} replicas room for {cap} agents",
            plan.replicas
        ),
        budget: Budget::starting_now(plan.budget),
    };
    let (steps, stopped_because) = ladder.climb(
        |agents, index| {
            let step = measure_step(plan, &mut rig, agents, index)?;
            print_step(&step);
            Ok(step)
        },
        |step: &ReplicaStep| step.holds,
    );
    let reached = steps.last().map_or(0, |s| s.window.agents);
    let (failover, failover_error) = match failover(parts, rig, reached) {
        Ok(failover) => (Some(failover), None),
        Err(err) => (None, Some(format!("{err:#}"))),
    };
    Ok(ReplicaRun {
        replicas: plan.replicas,
        loadgen_processes,
        agents_per_loadgen: plan.per_loadgen,
        heartbeat_secs: plan.heartbeat_secs,
        open_file_limit,
        haproxy: haproxy::version(parts.haproxy_exe),
        postgres: schema
            .server_version()
            .unwrap_or_else(|e| format!("unknown ({e:#})")),
        load_at_start,
        largest_held: steps
            .iter()
            .filter(|s| s.holds)
            .map(|s| s.window.agents)
            .max(),
        steps,
        stopped_because,
        failover,
        failover_error,
    })
}

fn print_step(step: &ReplicaStep) {
    println!(
        "    N={}: p50 {:.1} ms, p99 {:.1} ms, {} failures, replicas {:.0} MB ({:.1} KB/agent) / {:.0} % CPU, haproxy {:.0} % CPU, load {:.1}, push to all {:?} ms",
        step.window.agents,
        step.window.p50_ms,
        step.window.p99_ms,
        step.window.failures,
        step.replicas_rss_mb,
        step.replica_kb_per_agent,
        step.replicas_cpu_percent,
        step.haproxy_cpu_percent,
        step.load_average,
        step.push_all_ms.map(|ms| ms.round())
    );
}

/// The processes one window samples: replicas, haproxy, load generators.
struct Readings {
    replicas: Vec<Sample>,
    haproxy: Vec<Sample>,
    loadgens: Vec<Sample>,
}

impl Readings {
    fn take(rig: &Rig) -> Result<Readings> {
        let all = |pids: Vec<u32>| {
            pids.into_iter()
                .map(procfs::sample)
                .collect::<Result<Vec<_>>>()
        };
        Ok(Readings {
            replicas: all(rig.replica_pids())?,
            haproxy: all(rig.proxy_pids())?,
            loadgens: all(rig.fleet.pids())?,
        })
    }
}

fn cpu_since(after: &[Sample], before: &[Sample]) -> f64 {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.cpu_percent_since(b))
        .sum()
}

fn measure_step(
    plan: &ReplicaPlan,
    rig: &mut Rig,
    agents: usize,
    index: usize,
) -> Result<ReplicaStep> {
    let grown = rig.fleet.grow(agents)?;
    let ramp_secs = swarm::ramp_secs(&grown, agents)?;
    println!(
        "    N={agents}: {} connected after {ramp_secs:.1} s",
        grown.iter().map(|g| g.connected).sum::<usize>()
    );
    std::thread::sleep(plan.settle);
    let window_secs = plan.window.as_secs_f64();
    let before = Readings::take(rig)?;
    let windows: Vec<Window> = rig.fleet.ask_all(&format!("measure {window_secs}"))?;
    let after = Readings::take(rig)?;
    let load = load_average()[0];
    let heartbeats = Heartbeats::of(agents, ramp_secs, window_secs, &windows)?;
    let replicas_rss: u64 = after.replicas.iter().map(|s| s.rss_bytes).sum();
    let push = push(plan, rig, index)?;
    let connected = heartbeats.connected.max(1);
    Ok(ReplicaStep {
        holds: heartbeats.hold(P99_GOAL_MS),
        window: heartbeats,
        replicas_rss_mb: replicas_rss as f64 / MB,
        replica_kb_per_agent: replicas_rss as f64 / 1000.0 / connected as f64,
        replicas_cpu_percent: cpu_since(&after.replicas, &before.replicas),
        haproxy_rss_mb: after.haproxy.iter().map(|s| s.rss_bytes).sum::<u64>() as f64 / MB,
        haproxy_cpu_percent: cpu_since(&after.haproxy, &before.haproxy),
        loadgen_cpu_percent: cpu_since(&after.loadgens, &before.loadgens),
        load_average: load,
        publish_ms: push.publish_ms,
        push_first_ms: push.first_ms,
        push_all_ms: push.all_ms,
    })
}

/// How one release reached the fleet.
struct Push {
    publish_ms: f64,
    first_ms: Option<f64>,
    all_ms: Option<f64>,
}

/// Publishes release `200+index.0.0` through the shared store and times it from the start of
/// `release publish` to the first and last agent pushed, over every load generator.
fn push(plan: &ReplicaPlan, rig: &mut Rig, index: usize) -> Result<Push> {
    let version = format!("{}.0.0", 200 + index);
    let payload = rig.payload.clone();
    let started = Instant::now();
    let published = unix_micros(SystemTime::now());
    rig.store
        .publish(&fixture::linux_release(&version, &payload, &payload))?;
    let publish_ms = started.elapsed().as_secs_f64() * 1000.0;
    let wait = plan.wait.as_secs_f64();
    let spreads: Vec<PushSpread> = rig.fleet.ask_all(&format!("await-push {version} {wait}"))?;
    let expected: usize = spreads.iter().map(|s| s.expected).sum();
    let received: usize = spreads.iter().map(|s| s.received).sum();
    let since = |at: Option<u64>| at.map(|t| t.saturating_sub(published) as f64 / 1000.0);
    if received < expected {
        println!(
            "    push {version}: only {received} of {expected} agents notified within {wait} s"
        );
        return Ok(Push {
            publish_ms,
            first_ms: None,
            all_ms: None,
        });
    }
    Ok(Push {
        publish_ms,
        first_ms: since(spreads.iter().filter_map(|s| s.first_unix_us).min()),
        all_ms: since(spreads.iter().filter_map(|s| s.last_unix_us).max()),
    })
}

/// The failover under the fleet `reached` when the replicas left can hold it, else under a
/// fresh fleet of [`FAILOVER_FLEET`] (or what they can hold) on a fresh rig.
fn failover(parts: &Parts, mut rig: Rig, reached: usize) -> Result<Failover> {
    let survivors = replicas_hold(parts.plan.replicas - 1, parts.open_file_limit);
    if reached <= survivors {
        let failover = kill_one(parts.plan, &mut rig, reached);
        rig.stop();
        return failover;
    }
    rig.stop();
    let agents = FAILOVER_FLEET.min(survivors);
    println!(
        "    {reached} agents do not fit in {} replicas' open files: failover under {agents} on a fresh rig",
        parts.plan.replicas - 1
    );
    let mut fresh = Rig::start(parts, agents)?;
    let failover = fresh
        .fleet
        .grow(agents)
        .and_then(|grown| swarm::ramp_secs(&grown, agents))
        .and_then(|_| {
            std::thread::sleep(parts.plan.settle);
            kill_one(parts.plan, &mut fresh, agents)
        });
    fresh.stop();
    failover
}

/// Kills the first replica with SIGKILL and waits until every agent holds a WebSocket again
/// (and the break was seen); times the kill -> the last agent connected again.
fn kill_one(plan: &ReplicaPlan, rig: &mut Rig, agents: usize) -> Result<Failover> {
    let before: Vec<Status> = rig.fleet.ask_all("status")?;
    let drops_before: u64 = before.iter().map(|s| s.ws_drops).sum();
    let victim = rig.replicas.first_mut().context("no replica to kill")?;
    println!(
        "    killing replica 1 (PID {}) with SIGKILL under {agents} agents",
        victim.pid()
    );
    let killed_at = unix_micros(SystemTime::now());
    victim.kill()?;
    let deadline = Instant::now() + plan.wait;
    loop {
        let now: Vec<Status> = rig.fleet.ask_all("status")?;
        let total: usize = now.iter().map(|s| s.agents).sum();
        let connected: usize = now.iter().map(|s| s.connected).sum();
        let dropped = now.iter().map(|s| s.ws_drops).sum::<u64>() - drops_before;
        let back = dropped > 0 && connected == total;
        if back || Instant::now() >= deadline {
            let last = now.iter().filter_map(|s| s.last_connected_unix_us).max();
            let failover = Failover {
                agents: total,
                dropped,
                all_back_ms: last
                    .filter(|_| back)
                    .map(|t| t.saturating_sub(killed_at) as f64 / 1000.0),
                connected_at_end: connected,
            };
            println!("    failover: {failover:?}");
            // The killed replica's handle must not be stopped again.
            rig.replicas.remove(0);
            return Ok(failover);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages (zeros if unreadable).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|()| fields.next().unwrap_or(0.0))
}
