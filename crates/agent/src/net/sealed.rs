//! Secrets sealed at rest: the serde `with` module for the fields of `config.json` that hold a
//! secret (the credential's `agent_token`, the enrollment token).
//!
//! Where the platform seals ([`system::SEALS_AT_REST`]: Windows), such a field is written as
//! `"dpapi:<base64 of the DPAPI blob>"`, sealed with the machine key for the machine-wide
//! agent and with the user's key for a per-user agent, and read back transparently. A plain
//! value (a file from before sealing, a hand edit) is still read, noted, and sealed at the next
//! write. Elsewhere the value is written as given (the folder's 0700 protects it), and a sealed
//! value cannot be read. The scope comes from the [`ConfigManager`] doing the (de)serializing,
//! through [`sealing_as`]; outside it, the process's own (machine when elevated).
//!
//! This module must never log, print or put in an error message the secret, sealed or not.
//!
//! [`ConfigManager`]: crate::core::config::ConfigManager

use std::cell::Cell;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serializer};

use crate::system::{self, SecretScope};

/// Prefix of a sealed value.
pub const SEALED_MARK: &str = "dpapi:";

thread_local! {
    /// The scope secrets are sealed with on this thread, set by [`sealing_as`].
    static SCOPE: Cell<Option<SecretScope>> = const { Cell::new(None) };
    /// Whether a plain value was read since [`sealing_as`] began.
    static PLAIN_SEEN: Cell<bool> = const { Cell::new(false) };
}

/// What [`sealing_as`] returns: the closure's result, and whether it read a plain secret
/// where the platform seals (the file should be written again, sealed).
#[derive(Debug)]
pub struct Sealing<R> {
    /// The closure's result.
    pub result: R,
    /// A plain secret was read on a platform that seals.
    pub plain_seen: bool,
}

/// Runs `f` with secrets sealed in `scope` on this thread (the agent's storage decides:
/// machine-wide or per user); the scope before is restored after.
pub fn sealing_as<R>(scope: SecretScope, f: impl FnOnce() -> R) -> Sealing<R> {
    let before = SCOPE.replace(Some(scope));
    let seen_before = PLAIN_SEEN.replace(false);
    let result = f();
    SCOPE.set(before);
    let plain_seen = PLAIN_SEEN.replace(seen_before);
    Sealing { result, plain_seen }
}

fn current_scope() -> SecretScope {
    SCOPE
        .get()
        .unwrap_or_else(|| SecretScope::current(system::is_running_as_admin()))
}

/// The form of `plain` written to disk.
fn seal(plain: &str) -> Result<String, system::SystemError> {
    if !system::SEALS_AT_REST {
        return Ok(plain.to_owned());
    }
    let blob = system::seal_at_rest(current_scope(), plain.as_bytes())?;
    Ok(format!("{SEALED_MARK}{}", STANDARD.encode(blob)))
}

/// Why a stored value cannot be opened (never holding the value itself).
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    /// Sealed, on a platform that does not seal.
    #[error("a secret sealed with DPAPI on Windows cannot be read on this system")]
    NotHere,
    /// The base64 after the mark is damaged.
    #[error("a sealed secret is not valid base64")]
    Encoding,
    /// The platform refused to open it.
    #[error("{0}")]
    System(#[from] system::SystemError),
    /// It opened to something that is not text.
    #[error("a sealed secret does not open to text")]
    NotText,
}

/// The plain value of `stored` (sealed or not).
pub fn unseal(stored: &str) -> Result<String, UnsealError> {
    let Some(encoded) = stored.strip_prefix(SEALED_MARK) else {
        if system::SEALS_AT_REST {
            PLAIN_SEEN.set(true);
        }
        return Ok(stored.to_owned());
    };
    if !system::SEALS_AT_REST {
        return Err(UnsealError::NotHere);
    }
    let blob = STANDARD
        .decode(encoded)
        .map_err(|_| UnsealError::Encoding)?;
    let plain = system::unseal_at_rest(&blob)?;
    String::from_utf8(plain).map_err(|_| UnsealError::NotText)
}

/// Serde: writes `plain` sealed.
pub fn serialize<S: Serializer>(plain: &str, serializer: S) -> Result<S::Ok, S::Error> {
    let stored = seal(plain).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&stored)
}

/// Serde: reads a sealed or plain value.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let stored = String::deserialize(deserializer)?;
    unseal(&stored).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        secret: String,
    }

    const SECRET: &str = "5f0c8e1d2a3b4c5d6e7f80910a1b2c3d4e5f60718293a4b5c6d7e8f901a2b3c4";

    #[test]
    fn a_secret_is_sealed_where_the_platform_seals_and_read_back_in_both_scopes() {
        for scope in [SecretScope::User, SecretScope::System] {
            let holder = Holder {
                secret: SECRET.into(),
            };
            let written = sealing_as(scope, || serde_json::to_string(&holder).unwrap()).result;
            assert_eq!(
                written.contains(SECRET),
                !system::SEALS_AT_REST,
                "{written}"
            );
            assert_eq!(written.contains(SEALED_MARK), system::SEALS_AT_REST);
            let read = sealing_as(scope, || serde_json::from_str::<Holder>(&written).unwrap());
            assert_eq!(read.result, holder);
            assert!(!read.plain_seen);
        }
    }

    #[test]
    fn a_plain_value_is_read_and_noted_where_the_platform_seals() {
        let plain = format!(r#"{{"secret":"{SECRET}"}}"#);
        let read = sealing_as(SecretScope::User, || {
            serde_json::from_str::<Holder>(&plain).unwrap()
        });
        assert_eq!(read.result.secret, SECRET);
        assert_eq!(read.plain_seen, system::SEALS_AT_REST);
    }

    #[test]
    fn a_damaged_sealed_value_is_refused_without_showing_it() {
        for stored in ["dpapi:not base64!", "dpapi:AAAAAAAAAAAAAAAA"] {
            let text = format!(r#"{{"secret":"{stored}"}}"#);
            let err = serde_json::from_str::<Holder>(&text).unwrap_err();
            assert!(
                !err.to_string().contains(&stored[SEALED_MARK.len()..]),
                "{err}"
            );
        }
    }
}
