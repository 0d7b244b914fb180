//! `status.connections`: the open client connections over all chat-server pods, read
//! from each ready pod's `chat_connections` gauge on its admin port (`/metrics`).
//!
//! The operator runs in the cluster and reaches pod IPs directly (no Service exposes the
//! admin port). A pod that does not answer within a second is left out; when no
//! pod answers, the previous figure is kept rather than reported as zero.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::http_client::{HttpClient, HttpError};

/// Per-pod limit on connect + request + response.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// A metrics page is a few KiB; more than this is not a chat-server.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The client for pod scrapes: `SCRAPE_TIMEOUT` and `MAX_RESPONSE_BYTES`.
pub fn scrape_client() -> Result<HttpClient, HttpError> {
    HttpClient::new(SCRAPE_TIMEOUT, MAX_RESPONSE_BYTES)
}

/// One exposition line split into metric name, label block (without braces) and the rest
/// (value and optional timestamp). Label values may contain `}`, `"` and `\` escaped
/// as the text format allows, so the block ends at the first `}` outside quotes.
fn split_sample(line: &str) -> Option<(&str, &str, &str)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    let Some(labels_and_rest) = rest.strip_prefix('{') else {
        return Some((name, "", rest));
    };
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in labels_and_rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => {
                return Some((name, &labels_and_rest[..i], &labels_and_rest[i + 1..]));
            }
            _ => {}
        }
    }
    None
}

/// The value of the `chat_connections` gauge in a Prometheus text exposition: finite and
/// not negative, or `None` (missing, `NaN`, `±Inf`, negative or malformed).
pub fn parse_connections(exposition: &str) -> Option<i64> {
    exposition.lines().find_map(|line| {
        let (name, _labels, rest) = split_sample(line.trim_start())?;
        if name != "chat_connections" {
            return None;
        }
        // `value [timestamp]`: the value is the first field.
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value as i64)
    })
}

/// The pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Admin addresses of the pods that are Ready and have an IP.
pub fn ready_pod_addresses(pods: &[Pod], admin_port: u16) -> Vec<SocketAddr> {
    pods.iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, admin_port))
        .collect()
}

/// What the ready pods' `/metrics` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodConnections {
    /// Ready pods asked.
    pub asked: usize,
    /// Pods that answered with a usable `chat_connections`.
    pub answered: usize,
    /// Sum over the pods that answered (saturating: the figures come from pods).
    pub total: i64,
}

impl PodConnections {
    /// The figure for `status.connections`: `Some(0)` when there is no ready pod to ask,
    /// `None` when pods exist but none answered.
    pub fn best_effort_total(&self) -> Option<i64> {
        (self.asked == 0 || self.answered > 0).then_some(self.total)
    }

    /// Every ready pod answered, so the total counts every connection.
    pub fn complete(&self) -> bool {
        self.answered == self.asked
    }
}

/// Scrapes every address's `/metrics` concurrently (each bounded by the client's timeout).
pub async fn scrape_connections(client: &HttpClient, addresses: &[SocketAddr]) -> PodConnections {
    let scrapes = addresses.iter().map(|addr| async move {
        match client.get_text(&format!("http://{addr}/metrics")).await {
            Ok(text) => {
                let value = parse_connections(&text);
                if value.is_none() {
                    tracing::debug!(%addr, "no usable chat_connections in /metrics");
                }
                value
            }
            Err(e) => {
                tracing::debug!(error = %e, "metrics scrape failed");
                None
            }
        }
    });
    let answers: Vec<i64> = futures_util::future::join_all(scrapes)
        .await
        .into_iter()
        .flatten()
        .collect();
    PodConnections {
        asked: addresses.len(),
        answered: answers.len(),
        total: answers.iter().fold(0i64, |a, b| a.saturating_add(*b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    #[test]
    fn reads_escaped_labels_exponents_and_refuses_non_finite_values() {
        // A `}` and an escaped quote inside a label value do not end the label block.
        assert_eq!(
            parse_connections("chat_connections{a=\"x}\\\"y\",b=\"\\\\\"} 9\n"),
            Some(9)
        );
        assert_eq!(parse_connections("chat_connections 1.5e3\n"), Some(1500));
        assert_eq!(parse_connections("chat_connections 2E+2\n"), Some(200));
        assert_eq!(parse_connections("chat_connections +Inf\n"), None);
        assert_eq!(parse_connections("chat_connections -Inf\n"), None);
        assert_eq!(
            parse_connections("chat_connections{a=\"unterminated} 3\n"),
            None
        );
        // A later valid line is still found after an unusable one for another metric.
        assert_eq!(
            parse_connections("chat_draining 0\nchat_connections 4\n"),
            Some(4)
        );
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
    async fn sums_the_pods_that_answer_and_counts_the_rest() {
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
        let client = scrape_client().unwrap();
        let a = serve(5).await;
        let b = serve(7).await;
        // A port with nothing listening: refused, left out.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let three = scrape_connections(&client, &[a, b, closed]).await;
        assert_eq!(
            three,
            PodConnections {
                asked: 3,
                answered: 2,
                total: 12
            }
        );
        assert_eq!(three.best_effort_total(), Some(12));
        assert!(!three.complete());
        let none = scrape_connections(&client, &[closed]).await;
        assert_eq!(none.best_effort_total(), None, "pods, none answering");
        let empty = scrape_connections(&client, &[]).await;
        assert_eq!(
            empty.best_effort_total(),
            Some(0),
            "no ready pod: no clients"
        );
        assert!(empty.complete());
    }
}
