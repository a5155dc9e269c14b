//! Which way the agent's traffic goes to its backend: directly, through the proxy given with
//! `--proxy`, or through the system's proxy; and the HTTP `CONNECT` tunnel that carries the
//! WebSocket through a proxy (the HTTP client tunnels on its own).
//!
//! A proxy password is a secret: it never appears in `Debug`, `Display`, logs or error
//! messages, only in the `Proxy-Authorization` header sent to the proxy itself. This module
//! decides nothing about retries; it resolves a route and opens one tunnel.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

use crate::system;

/// Longest proxy answer to a `CONNECT` the agent reads (the status line and headers).
const MAX_CONNECT_RESPONSE: usize = 16 * 1024;

/// Why a proxy setting or a tunnel is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Not `none` and not an `http://[user:password@]host:port` URL.
    #[error("invalid proxy {shown}: {reason} (expected http://[user:password@]host:port or none)")]
    Invalid {
        /// The setting with any password masked.
        shown: String,
        /// What is wrong.
        reason: String,
    },
    /// The proxy cannot be reached.
    #[error("proxy {proxy} unreachable: {reason}")]
    Unreachable {
        /// The proxy, without credentials.
        proxy: String,
        /// What the OS said.
        reason: String,
    },
    /// The proxy wants (other) credentials: HTTP 407.
    #[error(
        "proxy {proxy} refused the credentials (407 Proxy Authentication Required); check the user and password given with --proxy"
    )]
    AuthenticationRequired {
        /// The proxy, without credentials.
        proxy: String,
    },
    /// The proxy refused to open the tunnel.
    #[error("proxy {proxy} refused the tunnel: {status_line}")]
    Refused {
        /// The proxy, without credentials.
        proxy: String,
        /// Its status line.
        status_line: String,
    },
}

/// A proxy: where it is and, optionally, the Basic credentials it wants.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// `http://host:port/`, without credentials.
    url: Url,
    credentials: Option<(String, String)>,
}

impl ProxyUrl {
    /// Parses `http://[user:password@]host:port` (or `host:port`, as Windows stores it).
    pub fn parse(raw: &str) -> Result<Self, ProxyError> {
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let invalid = |reason: &str| ProxyError::Invalid {
            shown: mask_password(raw),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(invalid(
                "only http:// proxies are supported (HTTPS is tunnelled through them)",
            ));
        }
        if url.host_str().is_none_or(str::is_empty) || url.port_or_known_default().is_none() {
            return Err(invalid("a host and port are required"));
        }
        let credentials = (!url.username().is_empty()).then(|| {
            let password = url.password().unwrap_or("");
            (percent_decode(url.username()), percent_decode(password))
        });
        url.set_username("")
            .map_err(|()| invalid("cannot remove the user name"))?;
        url.set_password(None)
            .map_err(|()| invalid("cannot remove the password"))?;
        Ok(ProxyUrl { url, credentials })
    }

    /// The proxy URL without credentials: safe to log.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The user name and password for Basic authentication.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// `host:port` of the proxy.
    fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        let port = self.url.port_or_known_default().unwrap_or(80);
        format!("{host}:{port}")
    }

    /// The URL as saved in config.json, with credentials.
    fn to_saved(&self) -> String {
        let mut url = self.url.clone();
        if let Some((user, password)) = &self.credentials {
            let _ = url.set_username(&percent_encode(user));
            let _ = url.set_password(Some(&percent_encode(password)));
        }
        url.to_string()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.credentials {
            Some((user, _)) => write!(f, "{} (user {user})", self.url),
            None => write!(f, "{}", self.url),
        }
    }
}

/// `--proxy`, as saved in config.json: `none`, or a proxy URL. Absent means "the system's".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetting {
    /// `--proxy none`: always direct, whatever the system says.
    Direct,
    /// `--proxy URL`.
    Explicit(ProxyUrl),
}

impl ProxySetting {
    /// Parses the command-line form.
    pub fn parse(raw: &str) -> Result<Self, ProxyError> {
        if raw.trim().eq_ignore_ascii_case("none") {
            Ok(ProxySetting::Direct)
        } else {
            ProxyUrl::parse(raw.trim()).map(ProxySetting::Explicit)
        }
    }
}

impl Serialize for ProxySetting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ProxySetting::Direct => serializer.serialize_str("none"),
            ProxySetting::Explicit(proxy) => serializer.serialize_str(&proxy.to_saved()),
        }
    }
}

impl<'de> Deserialize<'de> for ProxySetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        ProxySetting::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Where a route's proxy came from, as the heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// `--proxy`.
    Explicit,
    /// The system's setting.
    System(&'static str),
}

/// The way to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No proxy.
    Direct,
    /// Through `proxy`; `bypass` lists hosts reached directly anyway.
    Proxy {
        /// The proxy.
        proxy: ProxyUrl,
        /// Where the setting came from.
        source: RouteSource,
        /// Hosts that skip the proxy (system settings only).
        bypass: String,
    },
}

impl Route {
    /// Resolves the route to `server` from the saved setting, else the system's proxy.
    pub fn resolve(setting: Option<&ProxySetting>, server: &Url) -> Result<Self, ProxyError> {
        match setting {
            Some(ProxySetting::Direct) => Ok(Route::Direct),
            Some(ProxySetting::Explicit(proxy)) => Ok(Route::Proxy {
                proxy: proxy.clone(),
                source: RouteSource::Explicit,
                bypass: String::new(),
            }),
            None => Self::from_system(system::system_proxy(server.scheme() == "https"), server),
        }
    }

    fn from_system(found: Option<system::SystemProxy>, server: &Url) -> Result<Self, ProxyError> {
        let Some(found) = found else {
            return Ok(Route::Direct);
        };
        if bypasses(server.host_str().unwrap_or_default(), &found.bypass) {
            return Ok(Route::Direct);
        }
        Ok(Route::Proxy {
            proxy: ProxyUrl::parse(&found.proxy)?,
            source: RouteSource::System(found.source),
            bypass: found.bypass,
        })
    }

    /// `direct`, `explicit proxy` or `system proxy (SOURCE)`: what the heartbeat says.
    pub fn label(&self) -> String {
        match self {
            Route::Direct => "direct".into(),
            Route::Proxy {
                source: RouteSource::Explicit,
                ..
            } => "explicit proxy".into(),
            Route::Proxy {
                source: RouteSource::System(from),
                ..
            } => format!("system proxy ({from})"),
        }
    }

    /// The proxy of this route for `host`, unless the bypass list names it.
    pub fn proxy_for(&self, host: &str) -> Option<&ProxyUrl> {
        match self {
            Route::Proxy { proxy, bypass, .. } if !bypasses(host, bypass) => Some(proxy),
            _ => None,
        }
    }
}

/// Whether `host` is in a bypass list (`NO_PROXY` or the Windows list): `*`, `host`,
/// `.suffix`, `*.suffix`, `<local>` (a name without dots), separated by `,`, `;` or spaces.
pub fn bypasses(host: &str, list: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split([',', ';', ' '])
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .any(|entry| match entry.as_str() {
            "*" => true,
            "<local>" => !host.contains('.') && !host.contains(':'),
            suffix if suffix.starts_with("*.") => host.ends_with(&suffix[1..]),
            suffix if suffix.starts_with('.') => host.ends_with(suffix),
            exact => host == without_port(exact),
        })
}

/// `host` of a `host:port` bypass entry; an IPv6 address (several colons) stays whole.
fn without_port(entry: &str) -> &str {
    let entry = entry.trim_start_matches('[');
    match entry.split_once("]:") {
        Some((v6, _port)) => v6,
        None if entry.matches(':').count() == 1 => entry.split(':').next().unwrap_or(entry),
        None => entry.trim_end_matches(']'),
    }
}

/// Opens a TCP tunnel to `target` (`host:port`) through `proxy` with `CONNECT`, sending
/// Basic credentials when it has them; the stream is then the target's.
pub async fn connect_tunnel(
    proxy: &ProxyUrl,
    target: &str,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let shown = proxy.url().to_string();
    let unreachable = |reason: String| ProxyError::Unreachable {
        proxy: shown.clone(),
        reason,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(proxy.authority())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        stream
            .write_all(connect_request(proxy, target).as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let head = read_response_head(&mut stream)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        check_connect_answer(&head, &shown)?;
        Ok(stream)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}

fn connect_request(proxy: &ProxyUrl, target: &str) -> String {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = proxy.credentials() {
        let token = base64_encode(format!("{user}:{password}").as_bytes());
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Reads up to the blank line that ends the proxy's answer; never past it, because the bytes
/// after it already belong to the tunnelled connection.
async fn read_response_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_RESPONSE {
            return Err(std::io::Error::other("proxy answer too long"));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("proxy closed the connection"));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn check_connect_answer(head: &str, proxy: &str) -> Result<(), ProxyError> {
    let status_line = head.lines().next().unwrap_or_default().trim().to_owned();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    match code {
        c if c.starts_with('2') => Ok(()),
        // 401 is what some proxies (tinyproxy 1.11) send instead of 407.
        "407" | "401" => Err(ProxyError::AuthenticationRequired {
            proxy: proxy.to_owned(),
        }),
        _ => Err(ProxyError::Refused {
            proxy: proxy.to_owned(),
            status_line,
        }),
    }
}

/// The setting as an operator may see it: `user:***@` instead of the password.
fn mask_password(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &raw[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &raw[..scheme_end + 3], &raw[at..])
        }
        (None, Some(at)) => {
            let user = raw[..at].split(':').next().unwrap_or_default();
            format!("{user}:***{}", &raw[at..])
        }
        _ => raw.to_owned(),
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_url_keeps_its_password_out_of_every_printed_form() {
        let setting = ProxySetting::parse("http://agent:s%40cret@proxy.corp:3128").unwrap();
        let ProxySetting::Explicit(proxy) = &setting else {
            panic!("expected a proxy");
        };
        assert_eq!(proxy.credentials(), Some(("agent", "s@cret")));
        assert_eq!(proxy.url().as_str(), "http://proxy.corp:3128/");
        for shown in [
            format!("{proxy}"),
            format!("{proxy:?}"),
            format!("{setting:?}"),
        ] {
            assert!(!shown.contains("cret"), "{shown}");
        }
        let saved = serde_json::to_string(&setting).unwrap();
        let back: ProxySetting = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, setting);
    }

    #[test]
    fn bad_proxies_are_refused_without_showing_the_password() {
        for bad in [
            "https://u:pw1@proxy:443",
            "http://u:pw1@:3128",
            "socks5://u:pw1@h:1",
        ] {
            let err = ProxySetting::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("pw1"), "{err}");
        }
        assert_eq!(ProxySetting::parse(" None ").unwrap(), ProxySetting::Direct);
        assert!(ProxySetting::parse("proxy.corp:8080").is_ok());
    }

    #[test]
    fn bypass_lists_follow_no_proxy_and_windows_rules() {
        assert!(bypasses("backend.corp", "localhost, .corp"));
        assert!(bypasses("a.b.corp", "*.corp"));
        assert!(bypasses("intranet", "<local>"));
        assert!(!bypasses("intranet.corp", "<local>"));
        assert!(bypasses("anything", "*"));
        assert!(bypasses("10.0.0.5", "10.0.0.5;other"));
        assert!(!bypasses("backend.example", "corp,.corp"));
        assert!(bypasses("[::1]", "::1"));
        assert!(bypasses("[::1]", "[::1]:8080"));
        assert!(bypasses("proxyless.corp", "proxyless.corp:443"));
    }

    #[test]
    fn explicit_and_none_win_over_the_system() {
        let server = Url::parse("https://backend.example/").unwrap();
        assert_eq!(
            Route::resolve(Some(&ProxySetting::Direct), &server).unwrap(),
            Route::Direct
        );
        let explicit = ProxySetting::parse("http://p:1").unwrap();
        let route = Route::resolve(Some(&explicit), &server).unwrap();
        assert_eq!(route.label(), "explicit proxy");
        let system = system::SystemProxy {
            proxy: "sys:8080".into(),
            bypass: ".example".into(),
            source: "HTTPS_PROXY",
        };
        assert_eq!(
            Route::from_system(Some(system.clone()), &server).unwrap(),
            Route::Direct
        );
        let elsewhere = Url::parse("https://backend.other/").unwrap();
        let route = Route::from_system(Some(system), &elsewhere).unwrap();
        assert_eq!(route.label(), "system proxy (HTTPS_PROXY)");
    }

    #[test]
    fn connect_answers_are_told_apart() {
        assert!(check_connect_answer("HTTP/1.1 200 Connection established\r\n\r\n", "p").is_ok());
        assert!(matches!(
            check_connect_answer("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "p"),
            Err(ProxyError::AuthenticationRequired { .. })
        ));
        assert!(matches!(
            check_connect_answer("HTTP/1.0 403 Forbidden\r\n\r\n", "p"),
            Err(ProxyError::Refused { .. })
        ));
    }

    #[test]
    fn basic_credentials_are_base64() {
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"a"), "YQ==");
        assert_eq!(base64_encode(b"ab"), "YWI=");
    }
}
