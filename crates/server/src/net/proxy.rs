//! Who the client is: the TCP peer, or, when that peer is a trusted reverse proxy
//! (`--trusted-proxy CIDR`), the address it reports in `X-Forwarded-For`.
//!
//! The client address is the rightmost `X-Forwarded-For` hop that is not itself a trusted
//! proxy (hops further left were written by the client and prove nothing). A trusted proxy's
//! `X-Forwarded-Proto: https` also says the request came over HTTPS. From any other peer both
//! headers are ignored. The listener puts a [`Client`] into every request's extensions; the
//! per-source rate limits, the audit log and the session cookie read it. This module must
//! never believe a forwarded header from a peer outside the trusted networks.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// One network, such as `10.0.0.0/8` or `127.0.0.1` (a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a `--trusted-proxy` value is not a network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address or network such as 10.0.0.0/8, 127.0.0.1 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| error())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| error())?,
            None => width,
        };
        if prefix > width {
            return Err(error());
        }
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    /// Whether `addr` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn same_prefix(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let host_bits = width - u32::from(prefix);
    a.checked_shr(host_bits).unwrap_or(0) == b.checked_shr(host_bits).unwrap_or(0)
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

/// The client of one request, as the listener determined it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address (the peer's, unless a trusted proxy reported another).
    pub addr: IpAddr,
    /// Whether a trusted proxy said the request came over HTTPS.
    pub forwarded_https: bool,
}

/// The `--trusted-proxy` networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts the peers in `networks`.
    pub fn new(networks: Vec<Cidr>) -> Self {
        TrustedProxies(networks)
    }

    /// Whether `peer` is a trusted proxy.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(peer))
    }

    /// The client behind `peer` for a request with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        if !self.trusts(peer) {
            return Client {
                addr: peer,
                forwarded_https: false,
            };
        }
        Client {
            addr: self.forwarded_for(headers).unwrap_or(peer),
            forwarded_https: last_value(headers, "x-forwarded-proto")
                .is_some_and(|proto| proto.eq_ignore_ascii_case("https")),
        }
    }

    /// The rightmost hop of every `X-Forwarded-For` header that is not a trusted proxy (the
    /// leftmost trusted one when all are); `None` when a hop is not an address.
    fn forwarded_for(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = None;
        for hop in hops.iter().rev() {
            let addr: IpAddr = hop.parse().ok()?;
            client = Some(addr);
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    value.rsplit(',').next().map(str::trim)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|c| c.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "host", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rightmost_untrusted_hop_of_a_trusted_peer_is_the_client() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let forged = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = trusted.client(ip("127.0.0.1"), &forged);
        assert_eq!(client.addr, ip("203.0.113.9"));
        assert!(client.forwarded_https);
        let bare = trusted.client(ip("127.0.0.1"), &HeaderMap::new());
        assert_eq!(bare.addr, ip("127.0.0.1"));
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            trusted.client(ip("10.0.0.2"), &garbage).addr,
            ip("10.0.0.2")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_forward() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let forged = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = trusted.client(ip("192.0.2.1"), &forged);
        assert_eq!(client.addr, ip("192.0.2.1"));
        assert!(!client.forwarded_https);
        let nobody = TrustedProxies::default();
        assert_eq!(nobody.client(ip("10.0.0.1"), &forged).addr, ip("10.0.0.1"));
    }
}
