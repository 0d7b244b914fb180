//! The autoscaling loop around the pure decision ([`decide`]): each reconcile of a
//! ChatCluster with `spec.autoscaling` reads the connections from a source
//! ([`super::sources`]) as a sample, asks the decision for a replica count and, when it
//! differs, writes `spec.replicas` through the `/scale` subresource under its own field
//! manager (as an HPA does). I/O; [`plan`], the part between reading and writing, is
//! pure and unit-tested below.
//!
//! Connection counts come from Prometheus' query API when `autoscaling.prometheusUrl` is
//! set (the spec's `query`, or a default over this cluster's pods), otherwise from each
//! ready pod's `chat_connections` gauge (the same scrape as `status.connections`). A pod
//! sample counts only when every ready pod answered: a total with pods missing would
//! under-count and scale down wrongly.
//!
//! The stabilization history lives in this process: after an operator restart, a
//! scale-down waits for a fresh window (the history starts empty, so the first
//! recommendations after a restart are the only ones held).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use super::decision::{self, decide, Input, Outcome, Reason, Recommendation, Sample};
use super::promql::connections_query;
use super::sources::pods::PodConnections;
use super::sources::prometheus::{self, PrometheusError};
use crate::crd::{AutoscalingSpec, ChatCluster};
use crate::http_client::HttpClient;
use crate::ownership::cluster_key;

/// Field manager of the autoscaler's writes to `spec.replicas`, distinct from the
/// operator's own apply so `managedFields` shows who set the count.
pub const FIELD_MANAGER: &str = "chatcluster-autoscaler";
/// What the autoscaler read this time, before deciding.
#[derive(Debug)]
pub enum Reading {
    /// The ready pods' own `/metrics`.
    Pods(PodConnections),
    /// Prometheus' answer to the connections query (`url` is the base URL).
    Prometheus {
        url: String,
        result: Result<Sample, PrometheusError>,
    },
}

/// Reads the connection count from where the spec says: Prometheus or the pods.
pub async fn read(
    cluster: &ChatCluster,
    prometheus_http: &HttpClient,
    pods: PodConnections,
) -> Reading {
    match cluster
        .spec
        .autoscaling
        .as_ref()
        .and_then(|a| a.prometheus_url.clone())
    {
        Some(url) => {
            let result =
                prometheus::query(prometheus_http, &url, &connections_query(cluster)).await;
            Reading::Prometheus { url, result }
        }
        None => Reading::Pods(pods),
    }
}

/// Recommendation histories per ChatCluster (namespace/name), kept between reconciles.
#[derive(Default)]
pub struct Histories(Mutex<HashMap<String, Vec<Recommendation>>>);

impl Histories {
    /// The map, even if a panicking reconcile poisoned the lock (the histories are plain
    /// data; the worst case is a shorter stabilization window).
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Recommendation>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, key: &str) -> Vec<Recommendation> {
        self.map().remove(key).unwrap_or_default()
    }

    fn put(&self, key: String, history: Vec<Recommendation>) {
        self.map().insert(key, history);
    }

    /// Forgets a cluster whose autoscaling was turned off.
    pub fn forget(&self, key: &str) {
        self.map().remove(key);
    }
}

/// The decision's sample from a pod scrape taken at `at`. Pure. No ready pod means no
/// data (pods starting or restarting), not zero connections: scaling down on it would
/// shrink a cluster exactly while it recovers.
pub fn sample_from_pods(pods: &PodConnections, at: Timestamp) -> Sample {
    if pods.asked > 0 && pods.complete() {
        Sample::Value {
            total: pods.total as f64,
            at,
        }
    } else {
        Sample::NoData
    }
}

/// Why a Prometheus query gave no sample, as a condition reason: the URL is not one the
/// operator calls (`InvalidPrometheusUrl`), the server could not be asked
/// (`PrometheusUnavailable`) or it refused or mis-answered the query (`QueryFailed`).
fn prometheus_reason(e: &PrometheusError) -> &'static str {
    match e {
        PrometheusError::InvalidUrl { .. } => "InvalidPrometheusUrl",
        PrometheusError::Rejected { .. }
        | PrometheusError::Failed { .. }
        | PrometheusError::NotInstantVector { .. } => "QueryFailed",
        _ => "PrometheusUnavailable",
    }
}

/// Decides for `cluster` from `reading` (pure): the outcome without any write, and the
/// history to keep. `None` when the spec has no autoscaling.
pub fn plan(
    cluster: &ChatCluster,
    reading: &Reading,
    history: &[Recommendation],
    now: Timestamp,
) -> Option<(Outcome, Vec<Recommendation>)> {
    let spec: &AutoscalingSpec = cluster.spec.autoscaling.as_ref()?;
    let current = cluster.spec.replicas;
    let sample = match reading {
        Reading::Pods(pods) => sample_from_pods(pods, now),
        Reading::Prometheus {
            result: Ok(sample), ..
        } => *sample,
        Reading::Prometheus { result: Err(e), .. } => {
            // No data: keep the count (clamped to the bounds, which need no data).
            let desired = cluster.spec.effective_replicas();
            return Some((
                Outcome {
                    active: false,
                    reason: prometheus_reason(e).into(),
                    message: format!("{e}; keeping {desired} replicas"),
                    desired_replicas: desired,
                    scaled: (desired != current).then_some((current, desired)),
                },
                history.to_vec(),
            ));
        }
    };
    let decision = decide(&Input {
        current_replicas: current,
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        target_per_pod: spec.target_connections_per_pod,
        tolerance: decision::DEFAULT_TOLERANCE,
        scale_down_stabilization: Duration::from_secs(
            u64::try_from(spec.scale_down_stabilization_seconds).unwrap_or(0),
        ),
        staleness_limit: decision::DEFAULT_STALENESS_LIMIT,
        sample,
        history,
        now,
    });
    let message = match reading {
        Reading::Pods(pods) if decision.reason == Reason::NoData && pods.asked == 0 => format!(
            "no chat-server pod is ready to report its connections; keeping {} replicas",
            decision.desired_replicas
        ),
        Reading::Pods(pods) if decision.reason == Reason::NoData => format!(
            "only {} of {} ready pods answered /metrics with chat_connections; not scaling on a partial count (keeping {} replicas)",
            pods.answered, pods.asked, decision.desired_replicas
        ),
        Reading::Prometheus { url, .. } => format!("Prometheus at {url}: {}", decision.message),
        Reading::Pods(_) => decision.message.clone(),
    };
    let scaled =
        (decision.desired_replicas != current).then_some((current, decision.desired_replicas));
    Some((
        Outcome {
            active: decision.scaling_active,
            reason: decision.reason.as_str().to_owned(),
            message,
            desired_replicas: decision.desired_replicas,
            scaled,
        },
        decision.history,
    ))
}

/// Runs the autoscaler for `cluster` on what was read: decides and, when the count
/// changes, writes `spec.replicas` through `/scale`. `Ok(None)` without
/// `spec.autoscaling`.
pub async fn run(
    client: &Client,
    histories: &Histories,
    cluster: &ChatCluster,
    reading: &Reading,
    now: Timestamp,
) -> Result<Option<Outcome>, kube::Error> {
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let key = cluster_key(cluster);
    let history = histories.take(&key);
    let Some((outcome, history)) = plan(cluster, reading, &history, now) else {
        histories.forget(&key);
        return Ok(None);
    };
    histories.put(key, history);
    if let Some((from, to)) = outcome.scaled {
        let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch_scale(
            &name,
            &params,
            &Patch::Merge(&json!({"spec": {"replicas": to}})),
        )
        .await?;
        tracing::info!(%ns, %name, from, to, reason = %outcome.reason, message = %outcome.message, "autoscaled");
    }
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatClusterSpec;

    fn cluster(spec: serde_json::Value) -> ChatCluster {
        let spec: ChatClusterSpec = serde_json::from_value(spec).unwrap();
        ChatCluster::new("chat", spec)
    }

    fn pods(asked: usize, answered: usize, total: i64) -> PodConnections {
        PodConnections {
            asked,
            answered,
            total,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn no_autoscaling_no_plan() {
        assert!(plan(
            &cluster(serde_json::json!({})),
            &Reading::Pods(pods(3, 3, 10)),
            &[],
            now()
        )
        .is_none());
    }

    #[test]
    fn scales_up_from_the_pods_total() {
        let c = cluster(serde_json::json!({
            "replicas": 2,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "targetConnectionsPerPod": 100}
        }));
        let (outcome, history) = plan(&c, &Reading::Pods(pods(2, 2, 350)), &[], now()).unwrap();
        assert!(outcome.active);
        assert_eq!(outcome.desired_replicas, 4);
        assert_eq!(outcome.scaled, Some((2, 4)));
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn no_ready_pod_is_no_data_not_zero_connections() {
        let c = cluster(serde_json::json!({
            "replicas": 3,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "targetConnectionsPerPod": 100}
        }));
        let (outcome, _) = plan(&c, &Reading::Pods(pods(0, 0, 0)), &[], now()).unwrap();
        assert_eq!(outcome.reason, "NoData");
        assert_eq!(outcome.scaled, None, "no scale-down while no pod is ready");
        assert!(
            outcome.message.contains("no chat-server pod is ready"),
            "{}",
            outcome.message
        );
    }

    #[test]
    fn a_partial_scrape_keeps_the_count_and_says_why() {
        let c = cluster(serde_json::json!({
            "replicas": 3,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "targetConnectionsPerPod": 100}
        }));
        // One pod did not answer: its connections are unknown, so 10 is not the total.
        let (outcome, _) = plan(&c, &Reading::Pods(pods(3, 2, 10)), &[], now()).unwrap();
        assert!(!outcome.active);
        assert_eq!(outcome.reason, "NoData");
        assert_eq!(outcome.scaled, None);
        assert!(outcome.message.contains("2 of 3"), "{}", outcome.message);
    }

    #[test]
    fn a_prometheus_answer_is_decided_on_and_an_error_never_scales() {
        let mut c = cluster(serde_json::json!({
            "replicas": 3,
            "autoscaling": {"maxReplicas": 10, "targetConnectionsPerPod": 100,
                            "prometheusUrl": "http://prometheus:9090"}
        }));
        c.metadata.namespace = Some("chat".into());
        assert_eq!(
            connections_query(&c),
            "sum(chat_connections{namespace=\"chat\", pod=~\"chat-[0-9]+\"})"
        );
        let answered = Reading::Prometheus {
            url: "http://prometheus:9090".into(),
            result: Ok(Sample::Value {
                total: 550.0,
                at: now(),
            }),
        };
        let (outcome, _) = plan(&c, &answered, &[], now()).unwrap();
        assert_eq!(outcome.scaled, Some((3, 6)));
        assert!(outcome
            .message
            .starts_with("Prometheus at http://prometheus:9090"));

        let down = Reading::Prometheus {
            url: "http://prometheus:9090".into(),
            result: Err(PrometheusError::Unreachable {
                url: "http://prometheus:9090".into(),
                reason: "connection refused".into(),
            }),
        };
        let (outcome, _) = plan(&c, &down, &[], now()).unwrap();
        assert_eq!(outcome.reason, "PrometheusUnavailable");
        assert!(!outcome.active);
        assert_eq!(outcome.scaled, None);
        assert!(
            outcome.message.contains("connection refused"),
            "{}",
            outcome.message
        );

        c.spec.autoscaling.as_mut().unwrap().query =
            Some("sum(my_conns{ns=\"{{namespace}}\", app=\"{{name}}\"})".into());
        assert_eq!(
            connections_query(&c),
            "sum(my_conns{ns=\"chat\", app=\"chat\"})"
        );
    }
}
