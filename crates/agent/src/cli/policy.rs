//! The machine's policy at work ([`crate::core::policy`] judges it): read at start and applied
//! over config.json after the command line (so it wins over both), shown by `--status`, and
//! watched while the agent runs: a change logs "policy changed" and stops the agent, which
//! [`super::run`] starts again in the same process (the service stays running) with the new
//! policy.
//!
//! Applied values are saved in config.json as the command line's are: a policy value removed
//! later leaves the last one applied in place (docs/DEPLOYMENT.md).
//!
//! Must never: stop the agent over a change that leaves the policy's values as they were
//! (the watch fires for any key under `HKLM\SOFTWARE\Policies`), or fail the start over it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::core::agent::Agent;
use crate::core::config::ConfigManager;
use crate::core::error_reporter::ErrorReporter;
use crate::core::policy::{Policy, Setting};
use crate::system;

/// The policy's values as read (name, text).
pub(super) type RawPolicy = Vec<(String, Option<String>)>;

/// Reads the policy; a registry that cannot be read counts as no policy (logged).
pub(super) fn read() -> RawPolicy {
    system::read_policy().unwrap_or_else(|err| {
        tracing::warn!(error = %err, place = system::POLICY_PLACE, "cannot read the machine policy; none applied");
        Vec::new()
    })
}

/// Applies `raw` over `config` (saved), logs each value applied, and reports each ignored.
pub(super) fn apply(
    config: &mut ConfigManager,
    raw: &RawPolicy,
    reporter: &ErrorReporter,
) -> Result<()> {
    let policy = Policy::judge(raw);
    for rejected in &policy.rejected {
        let message = format!(
            "policy value {} in {} ignored: {}",
            rejected.name,
            system::POLICY_PLACE,
            rejected.reason
        );
        tracing::warn!(name = %rejected.name, reason = %rejected.reason, "policy value ignored");
        reporter.store("policy_value_invalid", &message);
    }
    for (name, setting) in &policy.settings {
        tracing::info!(name, value = %setting.shown(), place = system::POLICY_PLACE, "policy value applied (wins over config.json and the command line)");
        config.update(|c| match setting {
            Setting::Server(url) => c.set_servers(std::slice::from_ref(url)),
            Setting::Proxy(proxy) => c.proxy = Some(proxy.clone()),
            Setting::CaCert { pem, .. } => c.ca_certs_pem = Some(pem.clone()),
            Setting::Group(group) => c.group = Some(group.clone()),
            Setting::DownloadLimit(kbps) => c.download_limit_kbps = (*kbps > 0).then_some(*kbps),
            Setting::Metered(mode) => c.metered = mode.saved(),
        })?;
    }
    Ok(())
}

/// `--status`'s lines on the policy: each value applied and each ignored.
pub(super) fn print() {
    let policy = Policy::judge(&read());
    for (name, setting) in &policy.settings {
        println!(
            "policy: {name} = {} (Group Policy, {}; wins over config.json)",
            setting.shown(),
            system::POLICY_PLACE
        );
    }
    for rejected in &policy.rejected {
        println!("policy ignored: {}: {}", rejected.name, rejected.reason);
    }
}

/// The running agent and the policy it started with, for the watch thread.
#[derive(Default)]
struct Watched {
    agent: Option<(Agent, RawPolicy)>,
}

/// The policy watch of this process: one thread for every run of the agent in it.
#[derive(Clone, Default)]
pub(super) struct PolicyWatch {
    watched: Arc<Mutex<Watched>>,
    changed: Arc<AtomicBool>,
}

impl PolicyWatch {
    /// Starts the watch thread (none where there is no policy to watch, or it cannot start).
    pub(super) fn start() -> Self {
        let watch = PolicyWatch::default();
        let thread = watch.clone();
        let spawned = std::thread::Builder::new()
            .name("policy_watch".into())
            .spawn(move || thread.run());
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot watch the machine policy for changes");
        }
        watch
    }

    /// Watches on behalf of `agent`, started with `applied`; a change since `applied` was read
    /// (while no agent was watched) stops it at once.
    pub(super) fn watch(&self, agent: Agent, applied: RawPolicy) {
        self.changed.store(false, Ordering::SeqCst);
        lock(&self.watched).agent = Some((agent, applied));
        self.on_change();
    }

    /// Whether the last run was stopped because the policy changed.
    pub(super) fn changed(&self) -> bool {
        self.changed.load(Ordering::SeqCst)
    }

    fn run(&self) {
        loop {
            match system::wait_policy_change() {
                Ok(true) => self.on_change(),
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(error = %err, place = system::POLICY_PLACE, "cannot watch the machine policy for changes; it is read at the next start");
                    return;
                }
            }
        }
    }

    fn on_change(&self) {
        let now = read();
        let watched = lock(&self.watched);
        if let Some((agent, applied)) = &watched.agent
            && *applied != now
            && !self.changed.swap(true, Ordering::SeqCst)
        {
            tracing::info!(
                place = system::POLICY_PLACE,
                "policy changed: restarting the agent with it"
            );
            agent.graceful_shutdown();
        }
    }
}

fn lock(watched: &Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    watched
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
