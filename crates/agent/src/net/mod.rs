//! Everything the agent says to its backend: HTTP calls and the WebSocket that carries pushes.
//!
//! This module must never decide what to do with an answer (retry policy, state changes, error
//! buffering): it performs one exchange and returns a typed result.

pub mod http_client;
pub mod proxy;
pub mod rollback;
pub mod sealed;
pub mod servers;
pub mod throttle;
pub mod tls;
pub mod trust;
pub mod ws_client;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// The agent's identity at the backend, kept across restarts (the token sealed at rest where
/// the platform seals: [`sealed`]). Never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Stable id assigned at registration.
    pub agent_id: String,
    /// Bearer credential for every call after registration.
    #[serde(with = "sealed")]
    pub agent_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("agent_id", &self.agent_id)
            .field("agent_token", &"<redacted>")
            .finish()
    }
}

/// The enrollment token an operator gave once (`--enrollment-token`), kept in config.json with
/// the credential so the agent can enroll again after the server forgot it. Sent only in the
/// registration request; never logged, never put on a command line; sealed at rest where the
/// platform seals ([`sealed`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnrollmentToken(#[serde(with = "sealed")] String);

impl EnrollmentToken {
    /// Wraps a token given on the command line or in the environment.
    pub fn new(token: String) -> Self {
        EnrollmentToken(token)
    }

    /// The token itself, for the registration request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrollmentToken(<redacted>)")
    }
}

/// First retry delay after a failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Why a server URL is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("invalid server URL {url:?}: {reason}")]
    Invalid {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain HTTP to a machine other than this one would expose the agent's credential.
    #[error("refusing plain http to {host}: use https (plain http is allowed only to loopback)")]
    Insecure {
        /// The remote host.
        host: String,
    },
}

/// Parses a backend base URL and enforces HTTPS except to loopback (docs/CONTRACT.md).
pub fn parse_server_url(raw: &str) -> Result<Url, UrlError> {
    let invalid = |reason: String| UrlError::Invalid {
        url: raw.to_owned(),
        reason,
    };
    let url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    let host = url
        .host_str()
        .ok_or_else(|| invalid("no host".into()))?
        .to_owned();
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&host) => Ok(url),
        "http" => Err(UrlError::Insecure { host }),
        other => Err(invalid(format!("scheme {other:?} is not http or https"))),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How the agent reaches its backend, built once from config.json and shared by the HTTP
/// client, the metadata fetches and the WebSocket: whom it trusts and which way it goes.
#[derive(Debug, Clone)]
pub struct Transport {
    /// The OS trust store plus `--ca-cert`.
    pub tls: Arc<rustls::ClientConfig>,
    /// Direct, `--proxy`, or the system's proxy.
    pub route: proxy::Route,
}

/// Why the transport cannot be set up; the agent exits 2 with this message.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `--ca-cert` or the trust store.
    #[error("certificate trust: {0}")]
    Tls(#[from] tls::TlsSetupError),
    /// `--proxy` or the system's proxy setting.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
}

impl Transport {
    /// The transport to `server` with the saved `--ca-cert` PEM and `--proxy` setting.
    pub fn new(
        server: &Url,
        ca_pem: Option<&str>,
        proxy: Option<&proxy::ProxySetting>,
    ) -> Result<Self, TransportError> {
        Ok(Transport {
            tls: Arc::new(tls::client_config(ca_pem)?),
            route: proxy::Route::resolve(proxy, server)?,
        })
    }
}

/// An error with its sources, `outer: inner: innermost`: reqwest and tough keep the useful
/// part (a refused certificate, which role failed) in the sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Text a server sent, made safe for a log line or an error message: control characters
/// (newlines, carriage returns, escapes, tabs) are written as `\n`, `\r`, `\u{1b}` ..., so a
/// hostile body cannot forge log lines or terminal sequences, and the result is clipped to
/// `max_chars` characters (with `…` when clipped). Every piece of server text that reaches the
/// agent's log or one of its errors goes through here.
pub fn server_text(text: &str, max_chars: usize) -> String {
    let mut quoted = String::with_capacity(text.len().min(max_chars * 2));
    for (taken, c) in text.chars().enumerate() {
        if taken == max_chars {
            quoted.push('…');
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            quoted.extend(c.escape_default());
        } else {
            quoted.push(c);
        }
    }
    quoted
}

/// `base` + an absolute API path, keeping any path prefix the base carries.
pub fn endpoint(base: &Url, path: &str) -> String {
    format!("{}{}", base.as_str().trim_end_matches('/'), path)
}

/// Delay before retry number `failures`: exponential from 1 s, capped at `max`, with jitter
/// over its upper half so a fleet that lost its server does not come back in lockstep.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1 << exponent)
        .min(max.max(FIRST_BACKOFF));
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let max = Duration::from_secs(60);
        for failures in 0..40 {
            let delay = backoff(failures, max);
            assert!(delay <= max, "{failures}: {delay:?}");
            assert!(delay >= Duration::from_millis(500));
        }
        assert!(backoff(10, max) >= Duration::from_secs(30));
    }

    #[test]
    fn https_anywhere_and_http_only_to_loopback() {
        assert!(parse_server_url("https://cms.example.com").is_ok());
        assert!(parse_server_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_server_url("http://[::1]:8080").is_ok());
        assert!(parse_server_url("http://localhost").is_ok());
        assert_eq!(
            parse_server_url("http://cms.example.com"),
            Err(UrlError::Insecure {
                host: "cms.example.com".into()
            })
        );
        assert!(parse_server_url("ftp://127.0.0.1").is_err());
        assert!(parse_server_url("not a url").is_err());
    }

    #[test]
    fn server_text_escapes_control_characters_and_clips() {
        let forged = "bad\n2026-01-01T00:00:00Z  INFO forged line\r\x1b[31m\ttab";
        let quoted = server_text(forged, 300);
        assert!(!quoted.chars().any(char::is_control), "{quoted}");
        assert_eq!(
            quoted,
            "bad\\n2026-01-01T00:00:00Z  INFO forged line\\r\\u{1b}[31m\\ttab"
        );
        assert_eq!(server_text("abcdef", 3), "abc…");
        assert_eq!(server_text("ééé", 3), "ééé");
        assert_eq!(server_text("line\u{2028}sep", 30), "line\\u{2028}sep");
    }

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        let base = Url::parse("https://h/cms/").unwrap();
        assert_eq!(endpoint(&base, "/api/v1/x"), "https://h/cms/api/v1/x");
    }
}
