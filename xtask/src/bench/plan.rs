//! What one bench run measures and for how long: a full run (release builds, minutes-long
//! windows, the shipped defaults) or a quick one (a smoke test of the bench itself).
//!
//! Must never: make a quick run's numbers look like a full run's (the report says which).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::binaries::Binaries;

/// What a run measures, and how long it looks.
#[derive(Debug)]
pub struct Plan {
    /// The measured programs.
    pub bins: Binaries,
    /// Scratch space for servers and machines (cleaned at the start of a run).
    pub work: PathBuf,
    /// Repetitions of each timed operation.
    pub repeats: usize,
    /// Window over which the idle agent is observed.
    pub idle_window: Duration,
    /// Pause after a process reports ready, before measuring, so start-up work is over.
    pub settle: Duration,
    /// Size of the package for the download comparison.
    pub download_bytes: u64,
    /// The fleet steps.
    pub scale: ScalePlan,
    /// The replica step.
    pub replicas: ReplicaPlan,
    /// Time left for the run.
    pub budget: Budget,
}

/// How the server's fleet is stepped up.
#[derive(Debug, Clone)]
pub struct ScalePlan {
    /// First (reported) N.
    pub first: usize,
    /// Growth per further step.
    pub increment: usize,
    /// Largest N to try.
    pub max: usize,
    /// Heartbeat interval of each simulated agent.
    pub heartbeat_secs: u64,
    /// Measurement window of the first step.
    pub first_window: Duration,
    /// Measurement window of the other steps.
    pub window: Duration,
}

/// How the replica step's fleet is stepped up (see `replicas.rs`).
#[derive(Debug, Clone)]
pub struct ReplicaPlan {
    /// `cms-server serve` processes behind the load balancer.
    pub replicas: usize,
    /// First N.
    pub first: usize,
    /// Growth per further step.
    pub increment: usize,
    /// Largest N to try.
    pub max: usize,
    /// Simulated agents per `cms-loadgen` process (each holds one descriptor per agent).
    pub per_loadgen: usize,
    /// Heartbeat interval of each simulated agent.
    pub heartbeat_secs: u64,
    /// Measurement window of every step.
    pub window: Duration,
    /// Pause after a step's agents are connected, before its window.
    pub settle: Duration,
    /// Longest wait for a push to reach every agent, and for a killed replica's agents.
    pub wait: Duration,
    /// Time the whole step may take.
    pub budget: Duration,
}

impl ReplicaPlan {
    /// A full run: three replicas, 10,000 more agents per step, 8,000 per load generator
    /// (each behind its own haproxy, which holds two descriptors per agent, inside the 20,000
    /// one process may open here), heartbeats every 60 s (the agent's default), up to `max`.
    pub fn full(max: usize) -> Self {
        Self {
            replicas: 3,
            first: 10_000.min(max),
            increment: 10_000,
            max,
            per_loadgen: 8_000,
            heartbeat_secs: 60,
            window: Duration::from_secs(30),
            settle: Duration::from_secs(5),
            wait: Duration::from_secs(60),
            budget: Duration::from_secs(20 * 60),
        }
    }

    /// A quick run: the same parts, a small fleet over two load generators, 1 s heartbeats.
    pub fn quick(max: usize) -> Self {
        Self {
            replicas: 3,
            first: 50.min(max),
            increment: 50,
            max,
            per_loadgen: 50,
            heartbeat_secs: 1,
            window: Duration::from_secs(3),
            settle: Duration::from_millis(500),
            wait: Duration::from_secs(30),
            budget: Duration::from_secs(3 * 60),
        }
    }
}

/// The run's time limit.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    started: Instant,
    limit: Duration,
}

impl Budget {
    /// A budget of `limit` from now.
    pub fn starting_now(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            limit,
        }
    }

    /// Time left.
    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.started.elapsed())
    }
}

/// A full run: 7 repeats, a minute idle, a fleet from `first` agents up by 5000 to `max`, the
/// replica step up to `replica_max`.
pub fn full(
    bins: Binaries,
    work: PathBuf,
    [first, max, replica_max]: [usize; 3],
    budget: Budget,
) -> Plan {
    let replicas = ReplicaPlan::full(replica_max);
    Plan {
        bins,
        work,
        repeats: 7,
        idle_window: Duration::from_secs(60),
        settle: Duration::from_secs(3),
        download_bytes: 50 * 1024 * 1024,
        scale: ScalePlan {
            first,
            increment: 5000,
            max,
            heartbeat_secs: 60, // the agent's default
            first_window: Duration::from_secs(60),
            window: Duration::from_secs(30),
        },
        replicas,
        budget,
    }
}

/// A quick run: 2 repeats, seconds-long windows, small fleet steps (fleet sizes as in [`full`]).
pub fn quick(
    bins: Binaries,
    work: PathBuf,
    [first, max, replica_max]: [usize; 3],
    budget: Budget,
) -> Plan {
    let replicas = ReplicaPlan::quick(replica_max);
    Plan {
        bins,
        work,
        repeats: 2,
        idle_window: Duration::from_secs(3),
        settle: Duration::from_millis(300),
        download_bytes: 4 * 1024 * 1024,
        scale: ScalePlan {
            first,
            increment: first.max(1),
            max,
            heartbeat_secs: 1,
            first_window: Duration::from_secs(3),
            window: Duration::from_secs(3),
        },
        replicas,
        budget,
    }
}
