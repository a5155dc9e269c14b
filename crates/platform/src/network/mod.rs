//! Whether the machine's connection is metered (a mobile hotspot, a capped link), so the agent
//! can put a large download off: one API, [`detect_metered`], answered by `windows.rs` (the
//! network cost hint, `GetNetworkConnectivityHint`) and `linux.rs` (NetworkManager's `Metered`
//! property on the D-Bus system bus).
//!
//! Behind the `network` feature, which only the agent enables: the updater never asks. This
//! module must never fail, block for long or decide anything: where the OS cannot say (no
//! API, no bus, no NetworkManager, an error), the answer is [`Metered::Unknown`], at once or
//! within [`DETECT_TIMEOUT`]. What a metered connection means for an update is the agent's.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(windows)]
mod windows;

#[cfg(target_os = "linux")]
use linux as imp;
#[cfg(windows)]
use windows as imp;

use std::fmt;
use std::time::Duration;

/// The longest a detection waits for the OS (a D-Bus daemon that does not answer).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the OS says about the connection's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metered {
    /// Metered, or guessed metered: data costs or is capped.
    Yes,
    /// Not metered (or guessed not).
    No,
    /// The OS cannot say (no cost API, no NetworkManager, not connected, an error).
    Unknown,
}

impl Metered {
    /// `yes`, `no` or `unknown`, as `--status` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Metered::Yes => "yes",
            Metered::No => "no",
            Metered::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Asks the OS whether the connection is metered; [`Metered::Unknown`] when it cannot say,
/// within [`DETECT_TIMEOUT`] at most.
#[cfg(any(target_os = "linux", windows))]
pub async fn detect_metered() -> Metered {
    match tokio::time::timeout(DETECT_TIMEOUT, imp::detect()).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::debug!(
                timeout_ms = DETECT_TIMEOUT.as_millis(),
                "metered detection timed out"
            );
            Metered::Unknown
        }
    }
}

/// Asks the OS whether the connection is metered: this OS has no way to say.
#[cfg(not(any(target_os = "linux", windows)))]
pub async fn detect_metered() -> Metered {
    Metered::Unknown
}
