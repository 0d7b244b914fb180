//! The drain's I/O: what each chat-server pod says on `/admin/status`, and the
//! `/admin/drain` and `/admin/undrain` calls the plan ([`super::plan`]) asks for. Every
//! call carries the cluster's admin token and goes through the operator's bounded HTTP
//! client.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::plan::{AdminStatus, PodView, StartDrain};
use crate::build::ADMIN_PORT;
use crate::http_client::{HttpClient, HttpError};

/// The ordinal of StatefulSet pod `pod` of cluster `name` (`NAME-<ordinal>`).
pub fn ordinal(name: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(name)?.strip_prefix('-')?.parse().ok()
}

/// The admin address of a pod with an IP (ready or not: a draining pod is not ready).
fn admin_address(pod: &Pod) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, ADMIN_PORT as u16))
}

/// Asks every pod of cluster `name` (not being deleted) for its `/admin/status`,
/// concurrently. A pod without an IP or that does not answer has `status: None`;
/// `failures` is left at 0 for the caller, which keeps the counts.
pub async fn view_pods(http: &HttpClient, name: &str, pods: &[Pod], token: &str) -> Vec<PodView> {
    let asks = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let pod_name = p.metadata.name.clone()?;
            let running = p
                .status
                .as_ref()
                .is_some_and(|s| s.phase.as_deref() == Some("Running"));
            Some((
                ordinal(name, &pod_name)?,
                pod_name,
                admin_address(p),
                running,
            ))
        })
        .map(|(ordinal, pod_name, addr, running)| async move {
            let status = match addr {
                Some(addr) => admin_status(http, addr, token)
                    .await
                    .map_err(|e| tracing::debug!(pod = %pod_name, error = %e, "no /admin/status"))
                    .ok(),
                None => None,
            };
            PodView {
                name: pod_name,
                ordinal,
                status,
                running: running && addr.is_some(),
                failures: 0,
            }
        });
    futures_util::future::join_all(asks).await
}

#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: not a chat-server admin answer: {reason}")]
    Unexpected { url: String, reason: String },
}

async fn admin_status(
    http: &HttpClient,
    addr: SocketAddr,
    token: &str,
) -> Result<AdminStatus, AdminCallError> {
    let url = format!("http://{addr}/admin/status");
    let body = http.get_with_token(&url, token).await?;
    serde_json::from_str(&body).map_err(|e| AdminCallError::Unexpected {
        url,
        reason: e.to_string(),
    })
}

/// The pod's admin address, looked up by name among `pods`.
pub fn address_of(pods: &[Pod], pod: &str) -> Option<SocketAddr> {
    pods.iter()
        .find(|p| p.metadata.name.as_deref() == Some(pod))
        .and_then(admin_address)
}

/// `POST /admin/drain` with the plan's notice delay and window; the pod stays up,
/// drained, until SIGTERM. A pod that refuses (400) is asked again with less: first the
/// window without the delay (a chat-server older than the delay), then neither (it still
/// runs with a shorter deadline than the spec now says), to drain over its own window.
pub async fn start_drain(
    http: &HttpClient,
    addr: SocketAddr,
    token: &str,
    drain: &StartDrain,
) -> Result<(), HttpError> {
    let url = format!("http://{addr}/admin/drain");
    let window = json!({
        "reconnect_window_seconds": drain.window.max(Duration::from_millis(1)).as_secs_f64(),
        "keep_running": true,
    });
    let mut attempts = Vec::new();
    if !drain.notice_delay.is_zero() {
        let mut delayed = window.clone();
        delayed["notice_delay_seconds"] = json!(drain.notice_delay.as_secs_f64());
        attempts.push(delayed);
    }
    attempts.push(window);
    attempts.push(json!({"keep_running": true}));
    let last = attempts.len() - 1;
    for (i, body) in attempts.iter().enumerate() {
        match http.post_json(&url, token, body).await {
            Err(HttpError::Status { status: 400, .. }) if i < last => {
                tracing::warn!(pod = %drain.pod, refused = %body, "the pod refused the drain request; asking with less");
            }
            other => return other.map(drop),
        }
    }
    Ok(())
}

/// `POST /admin/undrain`: the pod serves again.
pub async fn undrain(http: &HttpClient, addr: SocketAddr, token: &str) -> Result<(), HttpError> {
    http.post_json(&format!("http://{addr}/admin/undrain"), token, &json!({}))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_the_pod_name_of_this_cluster_only() {
        assert_eq!(ordinal("chat", "chat-0"), Some(0));
        assert_eq!(ordinal("chat", "chat-12"), Some(12));
        assert_eq!(ordinal("chat", "chat-redis-0"), None);
        assert_eq!(ordinal("chat", "chatty-1"), None);
        assert_eq!(ordinal("my-chat", "my-chat-3"), Some(3));
    }
}
