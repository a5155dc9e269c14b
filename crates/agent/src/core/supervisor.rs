//! The agent's tasks on one `JoinSet`, and how their ends are judged.
//!
//! A task is [`Role::Essential`] (it must run until shutdown: the lock heartbeat, heartbeats
//! to the backend, update polling, the WebSocket and its event handler) or
//! [`Role::MayFinish`] (its job can be done: settling an update journal, watching OS signals,
//! an IPC server that could not start). A task that panics, or an essential one that returns
//! before shutdown, has died: an agent must not run on half alive, with a lock heartbeat that
//! keeps the updater's health check green while it no longer talks to its backend. The caller
//! reports the death and exits non-zero so the service manager restarts it. This module only
//! watches: it never reports, stops or restarts anything itself.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// What a task's end means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs until shutdown; returning earlier is a death.
    Essential,
    /// May return once its job is done; only a panic is a death.
    MayFinish,
}

/// A task that ended while the agent was meant to run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDeath {
    /// The task's name.
    pub task: &'static str,
    /// The panic message, when it panicked; `None` when it returned.
    pub panic: Option<String>,
}

impl fmt::Display for TaskDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.panic {
            Some(message) => write!(f, "the {} task panicked: {message}", self.task),
            None => write!(f, "the {} task stopped", self.task),
        }
    }
}

/// The running tasks and what each one is.
#[derive(Debug, Default)]
pub struct Tasks {
    set: JoinSet<()>,
    roles: HashMap<Id, (&'static str, Role)>,
}

impl Tasks {
    /// Starts `task` under `name`.
    pub fn spawn(
        &mut self,
        name: &'static str,
        role: Role,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.roles.insert(handle.id(), (name, role));
    }

    /// Waits for the first task death; ends that are not deaths (a task that may finish, any
    /// end once `cancel` fired) are passed over. Never completes when no task is left.
    pub async fn next_death(&mut self, cancel: &CancellationToken) -> TaskDeath {
        loop {
            let Some(ended) = self.set.join_next_with_id().await else {
                return std::future::pending().await;
            };
            let (id, panic) = match ended {
                Ok((id, ())) => (id, None),
                Err(err) if err.is_cancelled() => continue,
                Err(err) => (err.id(), Some(panic_text(err))),
            };
            let (task, role) = self
                .roles
                .remove(&id)
                .unwrap_or(("unnamed", Role::MayFinish));
            if cancel.is_cancelled() || (role == Role::MayFinish && panic.is_none()) {
                continue;
            }
            return TaskDeath { task, panic };
        }
    }

    /// Waits for every task to end, up to `timeout`, then aborts the rest; `false` when some
    /// had to be aborted.
    pub async fn stop(mut self, timeout: Duration) -> bool {
        let joined = tokio::time::timeout(timeout, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            self.set.abort_all();
        }
        joined.is_ok()
    }
}

fn panic_text(err: JoinError) -> String {
    let payload = err.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Sleeps `delay` unless cancelled first; `true` when the full delay passed.
pub async fn sleep_or_cancel(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn death_among(
        role: Role,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Option<TaskDeath> {
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::default();
        tasks.spawn("job", role, task);
        tasks.spawn("forever", Role::Essential, std::future::pending());
        tokio::time::timeout(Duration::from_millis(200), tasks.next_death(&cancel))
            .await
            .ok()
    }

    #[tokio::test]
    async fn an_essential_task_that_returns_has_died() {
        let death = death_among(Role::Essential, async {}).await;
        let death = death.unwrap();
        assert_eq!(
            death,
            TaskDeath {
                task: "job",
                panic: None
            }
        );
        assert_eq!(death.to_string(), "the job task stopped");
    }

    #[tokio::test]
    async fn a_task_that_may_finish_returning_is_no_death_but_its_panic_is() {
        assert_eq!(death_among(Role::MayFinish, async {}).await, None);
        let death = death_among(Role::MayFinish, async { panic!("boom") }).await;
        assert_eq!(death.unwrap().panic.as_deref(), Some("boom"));
    }

    #[tokio::test]
    async fn nothing_is_a_death_once_shutdown_began() {
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::default();
        tasks.spawn("job", Role::Essential, async {});
        cancel.cancel();
        let waited = tokio::time::timeout(Duration::from_millis(200), tasks.next_death(&cancel));
        assert!(waited.await.is_err());
        assert!(tasks.stop(Duration::from_secs(1)).await);
    }
}
