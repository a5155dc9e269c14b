//! What one bench run measures and for how long: a full run (release builds, minutes-long
//! windows, the shipped defaults) or a quick one (a smoke test of the bench itself).
//!
//! Must never: make a quick run's numbers look like a full run's (the report says which).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::binaries::Binaries;

/// Repetitions of each timed operation in a full run.
pub const FULL_REPEATS: usize = 7;
/// Repetitions of each timed operation in a quick run.
pub const QUICK_REPEATS: usize = 2;

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
    /// The replica step.
    pub replicas: ReplicaPlan,
    /// Agents the server holds while the dashboard's agent list is timed.
    pub fleet_page_agents: usize,
    /// How long the download push may take before the bench stops waiting for it.
    pub push_wait: Duration,
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

/// How a fleet is stepped up: N = `first`, `first + increment`, ... up to `max`, never past
/// `cap` (what the machine can hold, `cap_reason` saying why), while the time budget lasts.
#[derive(Debug, Clone)]
pub struct Ladder {
    /// First N.
    pub first: usize,
    /// Growth per further step.
    pub increment: usize,
    /// Largest N asked for.
    pub max: usize,
    /// Largest N the machine can hold.
    pub cap: usize,
    /// Why it cannot hold more than `cap`.
    pub cap_reason: String,
    /// Time left for the steps.
    pub budget: Budget,
}

impl Ladder {
    /// Runs `measure(N, step index)` on each rung until a step does not hold (`holds`), cannot
    /// be measured, or the next would pass `max` or `cap` or not fit in the budget; returns the
    /// steps measured and why it stopped.
    pub fn climb<S>(
        &self,
        mut measure: impl FnMut(usize, usize) -> anyhow::Result<S>,
        holds: impl Fn(&S) -> bool,
    ) -> (Vec<S>, String) {
        let mut steps = Vec::new();
        let mut agents = self.first.min(self.cap);
        let stopped_because = loop {
            let started = Instant::now();
            let step = match measure(agents, steps.len()) {
                Ok(step) => step,
                Err(err) => break format!("N={agents} could not be measured: {err:#}"),
            };
            let held = holds(&step);
            steps.push(step);
            let next = agents + self.increment;
            if !held {
                break format!("N={agents} did not hold");
            }
            if next > self.max {
                break format!("reached the largest N asked for ({})", self.max);
            }
            if agents >= self.cap {
                break self.cap_reason.clone();
            }
            // Growing by the same increment again, with a longer ramp, fits if the budget allows.
            if started.elapsed() * 3 / 2 > self.budget.remaining() {
                break format!("the next step (N={next}) would not fit in the time budget");
            }
            agents = next.min(self.cap);
        };
        (steps, stopped_because)
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
/// replica step up to `replica_max`, the dashboard's agent list at `fleet_page_agents`.
pub fn full(
    bins: Binaries,
    work: PathBuf,
    [first, max, replica_max, fleet_page_agents]: [usize; 4],
    budget: Budget,
) -> Plan {
    let replicas = ReplicaPlan::full(replica_max);
    Plan {
        bins,
        work,
        repeats: FULL_REPEATS,
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
        replicas,
        fleet_page_agents,
        push_wait: Duration::from_secs(600),
        budget,
    }
}

/// A quick run: 2 repeats, seconds-long windows, small fleet steps (fleet sizes as in [`full`]).
pub fn quick(
    bins: Binaries,
    work: PathBuf,
    [first, max, replica_max, fleet_page_agents]: [usize; 4],
    budget: Budget,
) -> Plan {
    let replicas = ReplicaPlan::quick(replica_max);
    Plan {
        bins,
        work,
        repeats: QUICK_REPEATS,
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
        replicas,
        fleet_page_agents,
        push_wait: Duration::from_secs(120),
        budget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder(max: usize, cap: usize) -> Ladder {
        Ladder {
            first: 10,
            increment: 10,
            max,
            cap,
            cap_reason: "full".into(),
            budget: Budget::starting_now(Duration::from_secs(3600)),
        }
    }

    #[test]
    fn the_ladder_stops_at_the_first_step_that_does_not_hold() {
        let (steps, why) = ladder(100, 100).climb(|n, i| Ok((n, i)), |&(n, _)| n < 30);
        assert_eq!(steps, [(10, 0), (20, 1), (30, 2)]);
        assert_eq!(why, "N=30 did not hold");
    }

    #[test]
    fn the_ladder_stops_at_max_at_the_cap_and_on_errors() {
        let (steps, why) = ladder(25, 100).climb(|n, _| Ok(n), |_| true);
        assert_eq!(
            (steps, why.as_str()),
            (vec![10, 20], "reached the largest N asked for (25)")
        );
        let (steps, why) = ladder(100, 15).climb(|n, _| Ok(n), |_| true);
        assert_eq!((steps, why.as_str()), (vec![10, 15], "full"));
        let (steps, why) = ladder(100, 100).climb(
            |n, _| if n < 20 { Ok(n) } else { anyhow::bail!("gone") },
            |_| true,
        );
        assert_eq!(
            (steps, why.as_str()),
            (vec![10], "N=20 could not be measured: gone")
        );
    }
}
