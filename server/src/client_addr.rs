//! Which address a connection comes from, for the per-source accept bucket. Behind a
//! proxy every TCP peer is the proxy, so the client's address is taken from the
//! forwarding header the proxies set (`X-Forwarded-For`, or `Forwarded` when configured:
//! one of them, never both, because a proxy that sets one passes a client's forged other
//! one through untouched), and only when the peer is a trusted proxy: anyone else could
//! write any address there and so escape, or frame someone else into, a per-source
//! limit. Pure: no I/O.

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
        let written: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        // Peers are compared as IPv4 when they are IPv4-mapped, so a mapped range is
        // turned into the IPv4 range it covers (it must lie within ::ffff:0:0/96).
        let network = canonical(written);
        let prefix = match (written, network) {
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix.checked_sub(96).ok_or_else(bad)?,
            _ => prefix,
        };
        Ok(Cidr { network, prefix })
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

/// Which header the trusted proxies write the client into (`CHAT_FORWARDED_HEADER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, Traefik, Envoy, HAProxy's `option forwardfor`, cloud
    /// load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (`for=`).
    Forwarded,
}

/// The proxies whose forwarding header is believed (`CHAT_TRUSTED_PROXIES`), and which
/// header that is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Parses a comma-separated list; empty means no proxy is trusted.
    pub fn parse(list: &str) -> Result<Self, CidrError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(|ranges| TrustedProxies {
                ranges,
                header: ForwardedHeader::default(),
            })
    }

    /// The same proxies, writing the client into `header`.
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    pub fn trusts(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|c| c.contains(addr))
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
/// forwarding chain is walked from the nearest hop back, and the first address that is
/// not a trusted proxy is the client. A hop that cannot be read (`unknown`, an
/// obfuscated name, junk) ends the walk at the last trusted hop, so a garbled header
/// never yields an address the proxy did not vouch for. When every hop is a trusted
/// address the nearest one is used: entries further back may have been written by the
/// client itself.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.trusts(peer) {
        return peer;
    }
    let mut last_trusted = peer;
    let mut nearest = None;
    for hop in forwarded_chain(headers, trusted.header).iter().rev() {
        let Some(addr) = hop else {
            return last_trusted;
        };
        let addr = canonical(*addr);
        if !trusted.trusts(addr) {
            return addr;
        }
        last_trusted = addr;
        nearest.get_or_insert(addr);
    }
    nearest.unwrap_or(peer)
}

/// The forwarding chain from `header`, client first; `None` for a hop that is not an
/// address.
fn forwarded_chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let (name, hop): (&str, fn(&str) -> Option<IpAddr>) = match header {
        ForwardedHeader::Forwarded => ("forwarded", forwarded_for),
        ForwardedHeader::XForwardedFor => ("x-forwarded-for", parse_node),
    };
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(v) => v.split(',').map(hop).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect()
}

/// The `for=` node of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
        .and_then(|(_, v)| parse_node(v))
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
        // IPv4-mapped ranges are the IPv4 ranges they cover.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().expect("mapped range");
        assert!(mapped.contains(ip("10.200.0.1")) && !mapped.contains(ip("11.0.0.1")));
        let mapped_one: Cidr = "::ffff:10.0.0.1".parse().expect("mapped address");
        assert!(mapped_one.contains(ip("10.0.0.1")) && !mapped_one.contains(ip("10.0.0.2")));
        for bad in [
            "10.0.0.0/33",
            "nonsense",
            "10.0.0/8",
            "::/129",
            "10.0.0.0/x",
            "",
            "::ffff:10.0.0.0/95",
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
        // Only the configured header counts: a client's own `Forwarded` passes through an
        // X-Forwarded-For proxy untouched and is ignored, and the other way round. Ports
        // and IPv6 brackets are read.
        let h = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::5]:4711";proto=https, for=10.0.0.3:80"#,
            ),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        assert_eq!(client_address(peer, &h, &trusted), ip("198.51.100.9"));
        let rfc7239 = trusted.clone().with_header(ForwardedHeader::Forwarded);
        assert_eq!(client_address(peer, &h, &rfc7239), ip("2001:db8::5"));
        // No header: the proxy itself.
        assert_eq!(client_address(peer, &HeaderMap::new(), &trusted), peer);
        // An unreadable hop stops the walk at the last trusted one.
        let h = headers(&[("x-forwarded-for", "198.51.100.1, unknown, 10.0.0.4")]);
        assert_eq!(client_address(peer, &h, &trusted), ip("10.0.0.4"));
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_address(peer, &h, &rfc7239), peer);
        // Every hop trusted: the nearest, since the client may have written the others.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.4")]);
        assert_eq!(client_address(peer, &h, &trusted), ip("10.0.0.4"));
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
