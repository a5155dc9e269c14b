//! `MetricsSampler`: the agent's own resource use (memory, CPU, uptime) for its heartbeats.
//! It only reads this process's figures; it never reports or stores them itself.

use std::time::Instant;

use cms_protocol::Metrics;

/// Samples the agent's own resource use for heartbeats.
#[derive(Debug)]
pub(super) struct MetricsSampler {
    system: Option<sysinfo::System>,
    pid: sysinfo::Pid,
    started: Instant,
}

impl MetricsSampler {
    pub(super) fn new() -> Self {
        MetricsSampler {
            system: sysinfo::System::new().ok(),
            pid: sysinfo::Pid::from_u32(std::process::id()),
            started: Instant::now(),
        }
    }

    pub(super) fn sample(&mut self, buffered_errors: u64) -> Metrics {
        let (rss_bytes, cpu_percent) = self.process_usage().unwrap_or((0, 0.0));
        Metrics {
            rss_bytes,
            cpu_percent,
            uptime_secs: self.started.elapsed().as_secs(),
            buffered_errors,
        }
    }

    fn process_usage(&mut self) -> Option<(u64, f32)> {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
        let system = self.system.as_mut()?;
        let kind = ProcessRefreshKind::nothing().with_memory().with_cpu();
        system.refresh_processes_specifics(ProcessesToUpdate::Some(&[self.pid]), true, kind);
        let process = system.process(self.pid)?;
        Some((process.memory(), process.cpu_usage()))
    }
}
