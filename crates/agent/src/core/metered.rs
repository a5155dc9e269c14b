//! `--metered auto|yes|no`: whether this machine's connection counts as metered, and so whether
//! an offered update waits for an unmetered one (docs/CONTRACT.md, `--metered`).
//!
//! `yes` and `no` are the operator's word; `auto` asks the OS (`cms_platform::network`), and
//! an OS that cannot say counts as not metered, so an agent is never held back by a question
//! its machine cannot answer. An urgent release ([`cms_protocol::UpdateInfo::urgent`]) is never
//! deferred. This module must never reach the backend or start an update: it only decides.

use std::fmt;
use std::str::FromStr;

use cms_platform::network::{Metered, detect_metered};
use serde::{Deserialize, Serialize};

/// The `--metered` setting (config.json `metered`; absent: `auto`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeteredMode {
    /// Ask the OS.
    #[default]
    Auto,
    /// Always metered: only urgent releases are taken.
    Yes,
    /// Never metered.
    No,
}

/// `--metered` given something other than `auto`, `yes` or `no`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not auto, yes or no")]
pub struct BadMeteredMode(String);

impl FromStr for MeteredMode {
    type Err = BadMeteredMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(MeteredMode::Auto),
            "yes" => Ok(MeteredMode::Yes),
            "no" => Ok(MeteredMode::No),
            _ => Err(BadMeteredMode(text.to_owned())),
        }
    }
}

impl MeteredMode {
    /// `auto`, `yes` or `no`.
    pub fn name(self) -> &'static str {
        match self {
            MeteredMode::Auto => "auto",
            MeteredMode::Yes => "yes",
            MeteredMode::No => "no",
        }
    }

    /// How config.json keeps it: `auto`, the default, is left out.
    pub fn saved(self) -> Option<MeteredMode> {
        (self != MeteredMode::Auto).then_some(self)
    }

    /// Whether the connection counts as metered, given what the OS says.
    fn counts_as_metered(self, detected: Metered) -> bool {
        match self {
            MeteredMode::Yes => true,
            MeteredMode::No => false,
            MeteredMode::Auto => detected == Metered::Yes,
        }
    }
}

impl fmt::Display for MeteredMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What was decided about one offer, and on what grounds (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The setting in effect.
    pub mode: MeteredMode,
    /// What the OS said (asked for `auto` only; `unknown` otherwise).
    pub detected: Metered,
    /// The offer waits for an unmetered connection.
    pub defer: bool,
}

/// Whether an offer (`urgent` or not) waits, under `mode`: the OS is asked only when `auto`
/// needs it.
pub async fn decide(mode: MeteredMode, urgent: bool) -> Decision {
    let detected = match (mode, urgent) {
        (MeteredMode::Auto, false) => detect_metered().await,
        _ => Metered::Unknown,
    };
    Decision {
        mode,
        detected,
        defer: !urgent && mode.counts_as_metered(detected),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_their_names() {
        for mode in [MeteredMode::Auto, MeteredMode::Yes, MeteredMode::No] {
            assert_eq!(mode.name().parse::<MeteredMode>().unwrap(), mode);
        }
        assert_eq!(" YES ".parse::<MeteredMode>().unwrap(), MeteredMode::Yes);
        assert!("sometimes".parse::<MeteredMode>().is_err());
        assert_eq!(MeteredMode::Auto.saved(), None);
        assert_eq!(MeteredMode::No.saved(), Some(MeteredMode::No));
    }

    #[test]
    fn auto_follows_the_os_and_unknown_is_not_metered() {
        assert!(MeteredMode::Auto.counts_as_metered(Metered::Yes));
        assert!(!MeteredMode::Auto.counts_as_metered(Metered::No));
        assert!(!MeteredMode::Auto.counts_as_metered(Metered::Unknown));
        assert!(MeteredMode::Yes.counts_as_metered(Metered::No));
        assert!(!MeteredMode::No.counts_as_metered(Metered::Yes));
    }

    #[tokio::test]
    async fn an_urgent_offer_is_never_deferred() {
        assert!(decide(MeteredMode::Yes, false).await.defer);
        assert!(!decide(MeteredMode::Yes, true).await.defer);
        assert!(!decide(MeteredMode::No, false).await.defer);
    }
}
