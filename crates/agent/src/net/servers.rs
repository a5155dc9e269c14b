//! `ServerList`: the backend's base URLs (replicas of one backend) and which one is in use.
//!
//! The agent talks to one server at a time, the first one given until it fails; then the HTTP
//! client and the WebSocket move on to the next (round robin), both through [`ServerList::failed`],
//! which moves on only if the failed URL is still the one in use, so two failures seen at once
//! move one step, not two. With a single URL (or a load balancer in front of the replicas)
//! nothing ever moves. This module must never decide when to retry: callers back off.

use std::sync::atomic::{AtomicUsize, Ordering};

use url::Url;

use crate::net::{UrlError, parse_server_url};

/// The backend's servers (at least one) and the one in use.
#[derive(Debug)]
pub struct ServerList {
    urls: Vec<Url>,
    current: AtomicUsize,
}

impl ServerList {
    /// Checks every URL (`https`, or `http` to loopback); at least one is required.
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, UrlError> {
        let urls = raw
            .iter()
            .map(|url| parse_server_url(url.as_ref()))
            .collect::<Result<Vec<Url>, UrlError>>()?;
        if urls.is_empty() {
            return Err(UrlError::Invalid {
                url: String::new(),
                reason: "no server URL".into(),
            });
        }
        Ok(Self::from_urls(urls))
    }

    /// One server.
    pub fn single(url: Url) -> Self {
        Self::from_urls(vec![url])
    }

    fn from_urls(urls: Vec<Url>) -> Self {
        ServerList {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// The server in use.
    pub fn current(&self) -> Url {
        self.urls[self.current.load(Ordering::Acquire) % self.urls.len()].clone()
    }

    /// The first server given (for settings that are looked up once, like the system proxy).
    pub fn primary(&self) -> &Url {
        &self.urls[0]
    }

    /// `failed` could not be reached: use the next server, unless another failure already moved
    /// on from it. Returns the server in use afterwards.
    pub fn failed(&self, failed: &Url) -> Url {
        let index = self.current.load(Ordering::Acquire);
        let in_use = &self.urls[index % self.urls.len()];
        if self.urls.len() > 1 && in_use == failed {
            let next = (index + 1) % self.urls.len();
            if self
                .current
                .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::warn!(failed = %failed, next = %self.urls[next], "server unreachable; switching to the next one");
            }
        }
        self.current()
    }

    /// Whether `url` belongs to one of the servers (same scheme, host and port): only there
    /// does the agent's credential go.
    pub fn is_backend(&self, url: &Url) -> bool {
        self.urls
            .iter()
            .any(|server| server.origin() == url.origin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_moves_on_once_and_wraps_around() {
        let list = ServerList::parse(&["http://127.0.0.1:1", "http://127.0.0.1:2"]).unwrap();
        let first = list.current();
        assert_eq!(first.port(), Some(1));
        let second = list.failed(&first);
        assert_eq!(second.port(), Some(2));
        // A second report of the same failure (HTTP and WebSocket both saw it) changes nothing.
        assert_eq!(list.failed(&first).port(), Some(2));
        assert_eq!(list.failed(&second).port(), Some(1));
    }

    #[test]
    fn one_server_never_moves() {
        let list = ServerList::parse(&["https://cms.example.com"]).unwrap();
        let only = list.current();
        assert_eq!(list.failed(&only), only);
    }

    #[test]
    fn every_url_is_checked_and_one_is_needed() {
        let refused = ServerList::parse(&["https://a.example", "http://b.example"]).unwrap_err();
        assert!(matches!(refused, UrlError::Insecure { .. }), "{refused}");
        assert!(ServerList::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn the_credential_goes_to_every_server_of_the_list_only() {
        let list = ServerList::parse(&["https://a.example", "https://b.example:8443"]).unwrap();
        assert!(list.is_backend(&Url::parse("https://b.example:8443/x").unwrap()));
        assert!(!list.is_backend(&Url::parse("https://b.example/x").unwrap()));
        assert!(!list.is_backend(&Url::parse("https://mirror.example/x").unwrap()));
    }
}
