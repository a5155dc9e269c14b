//! What Linux says about a process: CPU time, resident memory and wakeups from `/proc`, plus
//! the open-file limit the bench needs.
//!
//! Readings are taken from outside the measured process, so they cost it nothing. This module
//! must never change the measured process.

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result};
use rustix::process::{Resource, Rlimit};

/// One reading of a process's counters.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// User + system CPU time of all its threads, in clock ticks (dead threads included).
    pub cpu_ticks: u64,
    /// Resident memory (`VmRSS`).
    pub rss_bytes: u64,
    /// Voluntary context switches per live thread: each is the thread going to sleep, so the
    /// growth of this count is the number of wakeups.
    voluntary_switches: HashMap<String, u64>,
}

/// Reads `pid`'s counters now.
pub fn sample(pid: u32) -> Result<Sample> {
    let at = Instant::now();
    let stat = read(&format!("/proc/{pid}/stat"))?;
    let status = read(&format!("/proc/{pid}/status"))?;
    Ok(Sample {
        at,
        cpu_ticks: cpu_ticks(&stat).with_context(|| format!("unexpected /proc/{pid}/stat"))?,
        rss_bytes: status_kb(&status, "VmRSS:")
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?
            * 1024,
        voluntary_switches: thread_switches(pid)?,
    })
}

impl Sample {
    /// CPU used between `earlier` and this sample, in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &Sample) -> f64 {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        let ticks = self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64;
        if secs <= 0.0 {
            return 0.0;
        }
        ticks / rustix::param::clock_ticks_per_second() as f64 / secs * 100.0
    }

    /// Wakeups per second between `earlier` and this sample, summed over threads. A thread
    /// that ended in between takes its last wakeups with it (the agent's threads are long-lived).
    pub fn wakeups_per_sec_since(&self, earlier: &Sample) -> f64 {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        let wakeups: u64 = self
            .voluntary_switches
            .iter()
            .map(|(tid, now)| {
                now.saturating_sub(*earlier.voluntary_switches.get(tid).unwrap_or(&0))
            })
            .sum();
        if secs <= 0.0 {
            return 0.0;
        }
        wakeups as f64 / secs
    }
}

fn read(path: &str) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {path} (is the process gone?)"))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   123 kB` line of `/proc/PID/status`, in kB.
fn status_kb(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

fn thread_switches(pid: u32) -> Result<HashMap<String, u64>> {
    let dir = format!("/proc/{pid}/task");
    let mut switches = HashMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let tid = entry?.file_name().to_string_lossy().into_owned();
        // A thread may end between the listing and the read; it simply does not count.
        if let Ok(status) = fs::read_to_string(format!("{dir}/{tid}/status"))
            && let Some(count) = status_kb(&status, "voluntary_ctxt_switches:")
        {
            switches.insert(tid, count);
        }
    }
    Ok(switches)
}

/// Raises this process's open-file limit (inherited by everything it starts) to at least
/// `wanted`, raising the hard limit too when allowed (root); returns the limit now in effect.
pub fn raise_open_file_limit(wanted: u64) -> u64 {
    let current = rustix::process::getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= wanted {
        return soft;
    }
    let hard = current.maximum.unwrap_or(u64::MAX);
    let raised = Rlimit {
        current: Some(wanted),
        maximum: Some(hard.max(wanted)),
    };
    if rustix::process::setrlimit(Resource::Nofile, raised).is_ok() {
        return wanted;
    }
    // Not allowed past the hard limit (not root): take all of it.
    let capped = Rlimit {
        current: Some(hard.min(wanted)),
        maximum: current.maximum,
    };
    match rustix::process::setrlimit(Resource::Nofile, capped) {
        Ok(()) => hard.min(wanted),
        Err(_) => soft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(cpu_ticks(stat), Some(10));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_can_be_sampled() -> Result<()> {
        let first = sample(std::process::id())?;
        let busy = Instant::now();
        while busy.elapsed().as_millis() < 30 {
            std::hint::black_box(busy.elapsed());
        }
        let second = sample(std::process::id())?;
        assert!(second.rss_bytes > 0);
        assert!(second.cpu_ticks >= first.cpu_ticks);
        assert!(!second.voluntary_switches.is_empty());
        Ok(())
    }

    #[test]
    fn the_open_file_limit_never_goes_down() {
        let before = rustix::process::getrlimit(Resource::Nofile).current;
        let now = raise_open_file_limit(64);
        assert!(Some(now) >= before.map(|b| b.min(64)));
        assert_eq!(rustix::process::getrlimit(Resource::Nofile).current, before);
    }
}
