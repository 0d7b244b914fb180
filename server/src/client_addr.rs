//! Which address a connection comes from, for the per-source accept bucket. Behind a
//! proxy every TCP peer is the proxy, so the client's address is taken from
//! `Forwarded` or `X-Forwarded-For`, but only when the peer is a trusted proxy: anyone
//! else could write any address there and so escape, or frame someone else into, a
//! per-source limit. Pure: no I/O.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a trusted-proxy entry is not a range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not an address range: write it like 10.0.0.0/8, fd00::/8 or 192.0.2.7")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr {
            network: canonical(network),
            prefix,
        })
    }
}

impl Cidr {
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => prefix_eq(&net.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => prefix_eq(&net.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, from a dual-stack listener) as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The proxies whose forwarding headers are believed (`CHAT_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses a comma-separated list; empty means no proxy is trusted.
    pub fn parse(list: &str) -> Result<Self, CidrError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn trusts(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(addr))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
/// forwarding chain is walked from the nearest hop back, and the first address that is
/// not a trusted proxy is the client. `Forwarded` is used when present, else
/// `X-Forwarded-For`. A hop that cannot be read (`unknown`, an obfuscated name, junk)
/// ends the walk at the last trusted hop, so a garbled header never yields an address
/// the proxy did not vouch for.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.trusts(peer) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    let mut client = peer;
    for hop in chain.iter().rev() {
        let Some(addr) = hop else {
            return client;
        };
        client = canonical(*addr);
        if !trusted.trusts(client) {
            return client;
        }
    }
    client
}

/// The forwarding chain, client first; `None` for a hop that is not an address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .flat_map(|v| match v {
            Some(v) => v.split(',').map(parse_node).collect::<Vec<_>>(),
            None => vec![None],
        })
        .collect()
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest
            .split_once(']')?
            .0
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The key a source is limited under: an IPv4 address, or an IPv6 /64 (one subscriber
/// usually holds a whole /64, so per-address limits on IPv6 would be no limit).
pub fn source_key(addr: IpAddr) -> IpAddr {
    match canonical(addr) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("test header"));
        }
        h
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().expect("range");
        assert!(c.contains(ip("10.1.255.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        let c: Cidr = "10.0.0.0/9".parse().expect("range");
        assert!(c.contains(ip("10.127.0.1")));
        assert!(!c.contains(ip("10.128.0.1")));
        let one: Cidr = "192.0.2.7".parse().expect("address");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().expect("range");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("range");
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        for bad in [
            "10.0.0.0/33",
            "nonsense",
            "10.0.0/8",
            "::/129",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
        let err = TrustedProxies::parse("10.0.0.0/8, bogus").expect_err("bogus entry");
        assert!(err.to_string().contains("`bogus`"), "{err}");
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").expect("list");
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=198.51.100.2"),
        ]);
        assert_eq!(
            client_address(ip("203.0.113.5"), &h, &trusted),
            ip("203.0.113.5")
        );
        let nobody = TrustedProxies::default();
        assert_eq!(client_address(ip("10.0.0.1"), &h, &nobody), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_proxy_chain_is_walked_from_the_nearest_hop() {
        let trusted = TrustedProxies::parse("10.0.0.0/8,127.0.0.1").expect("list");
        let peer = ip("10.0.0.2");
        // The client forged a first entry; the proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(client_address(peer, &h, &trusted), ip("198.51.100.7"));
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.8"),
        ]);
        assert_eq!(client_address(peer, &h, &trusted), ip("198.51.100.8"));
        // Forwarded wins over X-Forwarded-For, with ports and IPv6 brackets.
        let h = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::5]:4711";proto=https, for=10.0.0.3:80"#,
            ),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        assert_eq!(client_address(peer, &h, &trusted), ip("2001:db8::5"));
        // No header: the proxy itself.
        assert_eq!(client_address(peer, &HeaderMap::new(), &trusted), peer);
        // An unreadable hop stops the walk at the last trusted one.
        let h = headers(&[("x-forwarded-for", "198.51.100.1, unknown, 10.0.0.4")]);
        assert_eq!(client_address(peer, &h, &trusted), ip("10.0.0.4"));
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_address(peer, &h, &trusted), peer);
        // Every hop trusted: the first one.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.4")]);
        assert_eq!(client_address(peer, &h, &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn ipv6_sources_are_limited_per_slash_64() {
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa::1")),
            source_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            source_key(ip("2001:db8:1:2::1")),
            source_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
