//! Remembers the problem on the way to the backend (a refused certificate, a proxy that wants
//! other credentials or cannot be reached) so that it is logged once per change, not at every
//! retry, and reported once the backend answers again, with how long it lasted.
//!
//! It never retries, waits or reports by itself: the agent tells it what happened and sends
//! the report it hands back.

use std::sync::Mutex;

use cms_platform::clock;
use serde_json::{Value, json};

/// One ongoing problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetProblem {
    /// What failed, in an operator's words.
    pub problem: String,
    /// The exchange that first met it (`status`, `registration`).
    pub during: &'static str,
    /// When it was first seen (RFC 3339).
    pub since: String,
    /// Failed exchanges since then.
    pub failures: u64,
}

impl NetProblem {
    /// The report's message once the problem is over.
    pub fn message(&self) -> String {
        format!(
            "the backend was unreachable from {} on ({} failed attempts): {}",
            self.since, self.failures, self.problem
        )
    }

    /// The report's details.
    pub fn details(&self) -> Value {
        json!({ "problem": self.problem, "during": self.during, "since": self.since, "failures": self.failures })
    }
}

/// The agent's memory of the current network problem.
#[derive(Debug, Default)]
pub struct NetHealth {
    current: Mutex<Option<NetProblem>>,
}

impl NetHealth {
    /// An exchange failed with `problem`: logged as an error when it is new or different
    /// from the last one, counted otherwise.
    pub fn failed(&self, during: &'static str, problem: String) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_mut() {
            Some(known) if known.problem == problem => {
                known.failures += 1;
                tracing::debug!(during, failures = known.failures, %problem, "backend still unreachable");
            }
            _ => {
                tracing::error!(during, %problem, "cannot reach the backend");
                *current = Some(NetProblem {
                    problem,
                    during,
                    since: clock::now_rfc3339(),
                    failures: 1,
                });
            }
        }
    }

    /// An exchange worked: the problem it ended, if there was one, to report now.
    pub fn recovered(&self) -> Option<NetProblem> {
        let ended = self.take_open()?;
        tracing::info!(problem = %ended.problem, failures = ended.failures, "backend reachable again");
        Some(ended)
    }

    /// The problem still going on, forgotten here: the agent stops, and keeps it for the next
    /// start to report.
    pub fn take_open(&self) -> Option<NetProblem> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_counted_while_it_lasts_and_handed_back_once() {
        let health = NetHealth::default();
        assert_eq!(health.recovered(), None);
        health.failed("status", "certificate has expired".into());
        health.failed("status", "certificate has expired".into());
        health.failed("status", "certificate has expired".into());
        let ended = health.recovered().unwrap();
        assert_eq!(ended.failures, 3);
        assert!(ended.message().contains("certificate has expired"));
        assert_eq!(health.recovered(), None);
    }

    #[test]
    fn a_different_problem_starts_a_new_count() {
        let health = NetHealth::default();
        health.failed("status", "proxy refused the credentials".into());
        health.failed("registration", "certificate has expired".into());
        let ended = health.recovered().unwrap();
        assert_eq!((ended.failures, ended.during), (1, "registration"));
    }
}
