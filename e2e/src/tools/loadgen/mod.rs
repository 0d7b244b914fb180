//! The `chat-loadgen` benchmark scenarios (loopback only): [`fanout`] measures deliveries,
//! loss and latency and server CPU per delivery; [`idle`] measures server memory per
//! held connection; [`join_storm`] measures what a big room costs while it fills.
//! [`tally`] is fanout's pure loss accounting. [`bench`] runs a scenario
//! with the servers it needs, on ephemeral ports.
//!
//! Every loop here is bounded in count and time, and only loopback targets are accepted
//! (docs: DESIGN.md, "Test tiers").

pub mod bench;
pub mod fanout;
pub mod idle;
pub mod join_storm;
pub mod tally;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::clients::ws::{self as client, ConnectOptions, Refused, Ws};
use crate::harness::procstat::{self, ProcSample};

/// What a scenario hands back to the binary to print.
#[derive(Debug)]
pub struct Report {
    /// One human-readable line.
    pub summary: String,
    /// The machine-readable report (docs/benchmarks.md figures come from it).
    pub json: Value,
    /// Why the run failed; empty when it passed. Non-empty makes the binary exit 1.
    pub failures: Vec<String>,
}

/// A checked server address: `url` names the same loopback IP literal as `addr`, so the
/// connection goes to exactly the address that was checked (no name lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Client `i`'s source address, one of 127.0.0.1 ..= 127.0.0.`spread` (IPv4
    /// targets only), so ephemeral ports last for more connections.
    pub fn source(&self, i: usize, spread: u8) -> Option<IpAddr> {
        let spread = usize::from(spread.max(1));
        self.addr
            .is_ipv4()
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % spread) as u8)))
    }
}

/// Parses a ws:// URL and refuses anything that is not a loopback address.
pub fn loopback_target(url: &str) -> Result<Target> {
    let req = url
        .into_client_request()
        .with_context(|| format!("bad URL {url}"))?;
    let uri = req.uri();
    if uri.scheme_str() != Some("ws") {
        bail!("{url}: only ws:// URLs are supported");
    }
    let host = uri.host().context("URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .with_context(|| format!("{url}: host must be a loopback IP literal"))?
    };
    if !ip.is_loopback() {
        bail!("{url}: benchmarks may only target loopback addresses (127.0.0.0/8, ::1)");
    }
    let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok(Target {
        url: format!("ws://{addr}{path}"),
        addr,
    })
}

/// Checks every URL (all must be loopback) before any connection is made.
pub fn loopback_targets(urls: &[String]) -> Result<Vec<Target>> {
    urls.iter().map(|u| loopback_target(u)).collect()
}

/// Connects (past `welcome`) through the suites' client, retrying while the server
/// refuses with 503 (it is full or still starting): at most 50 tries, 200 ms apart.
pub async fn connect_retrying(target: &Target, query: &str, source: Option<IpAddr>) -> Result<Ws> {
    let opts = ConnectOptions {
        source,
        // A busy 2-core machine may take a while to answer one of thousands of upgrades.
        within: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    for _ in 0..50 {
        match client::connect_with(&target.url, query, opts).await {
            Ok((ws, _, _)) => return Ok(ws),
            Err(e) if e.downcast_ref::<Refused>().is_some_and(|r| r.status == 503) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context(format!("connecting to {}", target.url))),
        }
    }
    bail!("{}: refused with 503 fifty times", target.url)
}

/// CPU time and RSS summed over `pids` (several server processes count as one server).
pub fn sample_all(pids: &[u32]) -> Result<ProcSample> {
    let mut total = ProcSample {
        cpu_micros: 0,
        rss_bytes: 0,
    };
    for pid in pids {
        let s = procstat::sample(*pid).with_context(|| format!("reading /proc/{pid}"))?;
        total.cpu_micros += s.cpu_micros;
        total.rss_bytes += s.rss_bytes;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_loopback_and_pins_the_checked_address() {
        let t = loopback_target("ws://localhost:8080/ws").unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(t.source(9, 8), Some("127.0.0.2".parse().unwrap()));
        let t = loopback_target("ws://[::1]:9/ws?x=1").unwrap();
        assert_eq!(t.url, "ws://[::1]:9/ws?x=1");
        assert_eq!(t.source(0, 8), None, "no 127.0.0.x source for IPv6");
        assert!(loopback_target("ws://127.3.4.5/ws").is_ok());
        for bad in [
            "ws://192.0.2.1:8080/ws",
            "ws://10.0.0.1/ws",
            "ws://example.com/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
        ] {
            assert!(loopback_target(bad).is_err(), "{bad} accepted");
        }
    }
}
