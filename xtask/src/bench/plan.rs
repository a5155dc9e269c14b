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
    /// Heartbeats in a row per run of the TLS against plain HTTP comparison.
    pub heartbeats: u32,
    /// The fleet steps.
    pub scale: ScalePlan,
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

/// A full run: 7 repeats, a minute idle, a fleet from `first` agents up by 5000.
pub fn full(bins: Binaries, work: PathBuf, first: usize, max: usize, budget: Budget) -> Plan {
    Plan {
        bins,
        work,
        repeats: 7,
        idle_window: Duration::from_secs(60),
        settle: Duration::from_secs(3),
        download_bytes: 50 * 1024 * 1024,
        heartbeats: 1000,
        scale: ScalePlan {
            first,
            increment: 5000,
            max,
            heartbeat_secs: 60, // the agent's default
            first_window: Duration::from_secs(60),
            window: Duration::from_secs(30),
        },
        budget,
    }
}

/// A quick run: 2 repeats, seconds-long windows, small fleet steps.
pub fn quick(bins: Binaries, work: PathBuf, first: usize, max: usize, budget: Budget) -> Plan {
    Plan {
        bins,
        work,
        repeats: 2,
        idle_window: Duration::from_secs(3),
        settle: Duration::from_millis(300),
        download_bytes: 4 * 1024 * 1024,
        heartbeats: 100,
        scale: ScalePlan {
            first,
            increment: first.max(1),
            max,
            heartbeat_secs: 1,
            first_window: Duration::from_secs(3),
            window: Duration::from_secs(3),
        },
        budget,
    }
}
