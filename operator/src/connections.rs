//! `status.connections`: the open client connections over all chat-server pods, read
//! from each ready pod's `chat_connections` gauge on its admin port (`/metrics`).
//!
//! The operator runs in the cluster and reaches pod IPs directly; the admin port is never
//! exposed by a Service. A pod that does not answer within a second is left out; when no
//! pod answers, the previous figure is kept rather than reported as zero.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Per-pod limit on connect + request + response.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// A metrics page is a few KiB; more than this is not a chat-server.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The value of the `chat_connections` gauge in a Prometheus text exposition.
pub fn parse_connections(exposition: &str) -> Option<i64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix("chat_connections")?;
        // `chat_connections 12` or `chat_connections{...} 12`, not `chat_connections_total`.
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        // `name{labels} value [timestamp]`: the value is the first field after the name.
        let after_labels = match rest.find('}') {
            Some(end) if rest.starts_with('{') => &rest[end + 1..],
            _ => rest,
        };
        let value: f64 = after_labels.split_whitespace().next()?.parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value as i64)
    })
}

/// Admin addresses of the pods that are Ready and have an IP.
pub fn ready_pod_addresses(pods: &[Pod], admin_port: u16) -> Vec<SocketAddr> {
    pods.iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, admin_port))
        .collect()
}

/// Sum of `chat_connections` over the pods that answered; `Some(0)` when there is no
/// ready pod to ask; `None` when pods exist but none answered.
pub async fn total_connections(addresses: &[SocketAddr]) -> Option<i64> {
    if addresses.is_empty() {
        return Some(0);
    }
    let scrapes = addresses.iter().map(|addr| async move {
        match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(*addr)).await {
            Ok(Ok(text)) => parse_connections(&text),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "metrics scrape failed");
                None
            }
            Err(_) => {
                tracing::debug!(%addr, "metrics scrape timed out");
                None
            }
        }
    });
    let answers: Vec<i64> = futures_util::future::join_all(scrapes)
        .await
        .into_iter()
        .flatten()
        .collect();
    // Saturating: the figures come from pods, whose image the user chooses.
    (!answers.is_empty()).then(|| answers.iter().fold(0i64, |a, b| a.saturating_add(*b)))
}

async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other("metrics response too large"));
        }
    }
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "metrics answered {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gauge_and_not_the_counters() {
        let text = "# HELP chat_connections Open connections.\n# TYPE chat_connections gauge\n\
                    chat_connections_accepted_total 90\nchat_connections 42\n";
        assert_eq!(parse_connections(text), Some(42));
        assert_eq!(
            parse_connections("chat_connections{pod=\"a\"} 7\n"),
            Some(7)
        );
        assert_eq!(
            parse_connections("chat_connections_accepted_total 3\n"),
            None
        );
        assert_eq!(parse_connections("chat_connections NaN\n"), None);
        assert_eq!(parse_connections("chat_connections -1\n"), None);
        assert_eq!(
            parse_connections("chat_connections 5 1700000000000\n"),
            Some(5)
        );
        assert_eq!(
            parse_connections("chat_connections{a=\"x y\"} 6\n"),
            Some(6)
        );
        assert_eq!(parse_connections(""), None);
    }

    fn pod(ip: Option<&str>, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn only_ready_pods_with_an_ip_are_scraped() {
        let pods = [
            pod(Some("127.10.0.2"), true),
            pod(Some("127.10.0.3"), false),
            pod(None, true),
            pod(Some("not-an-ip"), true),
        ];
        assert_eq!(
            ready_pod_addresses(&pods, 9090),
            ["127.10.0.2:9090".parse::<SocketAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn sums_the_pods_that_answer_and_skips_the_rest() {
        async fn serve(count: i64) -> SocketAddr {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = format!("chat_connections {count}\n");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
            addr
        }
        let a = serve(5).await;
        let b = serve(7).await;
        // A port with nothing listening: refused, left out.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(total_connections(&[a, b, closed]).await, Some(12));
        assert_eq!(
            total_connections(&[closed]).await,
            None,
            "pods, none answering"
        );
        assert_eq!(
            total_connections(&[]).await,
            Some(0),
            "no ready pod: no clients"
        );
    }
}
