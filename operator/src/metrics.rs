//! Operator metrics: reconciles, errors by reason, reconcile duration, leadership,
//! autoscaler decisions by reason, drain actions.

use axum::routing::get;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: IntCounter,
    pub errors: IntCounterVec,
    pub duration: Histogram,
    pub leader: IntGauge,
    /// Autoscaler decisions by reason (`ScaledUp`, `WithinTolerance`, `NoData`…): the bad
    /// data reasons count data errors.
    pub autoscaler_decisions: IntCounterVec,
    /// Drains before a scale-down: `started`, `finished`, `undrained`, `failed` (a drain
    /// or undrain call a pod refused or did not answer).
    pub drain_actions: IntCounterVec,
    /// Per ChatCluster (`chatcluster_namespace`, `chatcluster`): the replicas it should
    /// run (the autoscaler's or the spec's) and the ready ones, for "desired vs actual".
    pub desired_replicas: IntGaugeVec,
    pub ready_replicas: IntGaugeVec,
}

/// Labels of the per-ChatCluster gauges. Not `namespace`: a pod scrape sets that label
/// to the operator's own namespace.
const CLUSTER_LABELS: [&str; 2] = ["chatcluster_namespace", "chatcluster"];

impl OperatorMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = OperatorMetrics {
            reconciles: IntCounter::new("chatcluster_reconciles_total", "Reconciles run.")
                .expect("static metric"),
            errors: IntCounterVec::new(
                Opts::new(
                    "chatcluster_reconcile_errors_total",
                    "Failed reconciles, by reason.",
                ),
                &["reason"],
            )
            .expect("static metric"),
            duration: Histogram::with_opts(HistogramOpts::new(
                "chatcluster_reconcile_duration_seconds",
                "Reconcile duration.",
            ))
            .expect("static metric"),
            leader: IntGauge::new(
                "chatcluster_operator_leader",
                "1 while this replica holds the leader Lease.",
            )
            .expect("static metric"),
            autoscaler_decisions: IntCounterVec::new(
                Opts::new(
                    "chatcluster_autoscaler_decisions_total",
                    "Autoscaler decisions, by reason.",
                ),
                &["reason"],
            )
            .expect("static metric"),
            drain_actions: IntCounterVec::new(
                Opts::new(
                    "chatcluster_drain_actions_total",
                    "Drains before a scale-down, by action (started, finished, undrained, failed).",
                ),
                &["action"],
            )
            .expect("static metric"),
            desired_replicas: IntGaugeVec::new(
                Opts::new(
                    "chatcluster_desired_replicas",
                    "Chat-server pods a ChatCluster should run (status.desiredReplicas).",
                ),
                &CLUSTER_LABELS,
            )
            .expect("static metric"),
            ready_replicas: IntGaugeVec::new(
                Opts::new(
                    "chatcluster_ready_replicas",
                    "Ready chat-server pods of a ChatCluster (status.readyReplicas).",
                ),
                &CLUSTER_LABELS,
            )
            .expect("static metric"),
            registry,
        };
        for c in [
            Box::new(m.reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.errors.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.autoscaler_decisions.clone()),
            Box::new(m.drain_actions.clone()),
            Box::new(m.desired_replicas.clone()),
            Box::new(m.ready_replicas.clone()),
        ] {
            m.registry.register(c).expect("metric registered once");
        }
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Records a ChatCluster's desired and ready replicas.
    pub fn set_replicas(&self, namespace: &str, name: &str, desired: i32, ready: i32) {
        let labels = [namespace, name];
        self.desired_replicas
            .with_label_values(&labels)
            .set(i64::from(desired));
        self.ready_replicas
            .with_label_values(&labels)
            .set(i64::from(ready));
    }

    /// Drops the per-ChatCluster series of every cluster `exists` says is gone (a
    /// ChatCluster without a finalizer is never reconciled again once deleted, so its
    /// series are pruned against the controller's cache instead).
    pub fn retain_clusters(&self, exists: impl Fn(&str, &str) -> bool) {
        let families = self.desired_replicas.collect();
        let gone: Vec<(String, String)> = families
            .iter()
            .flat_map(|f| f.get_metric())
            .filter_map(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                };
                Some((label(CLUSTER_LABELS[0])?, label(CLUSTER_LABELS[1])?))
            })
            .filter(|(ns, name)| !exists(ns, name))
            .collect();
        for (ns, name) in gone {
            // Absent series are fine: both gauges are set together, but need not be.
            let _ = self.desired_replicas.remove_label_values(&[&ns, &name]);
            let _ = self.ready_replicas.remove_label_values(&[&ns, &name]);
        }
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        let router = axum::Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(|| async { "ok\n" }))
            .route("/metrics", get(move || async move { self.render() }));
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_clusters_gauges_are_pruned_and_the_others_kept() {
        let m = OperatorMetrics::new();
        m.set_replicas("chat", "a", 3, 2);
        m.set_replicas("chat", "b", 1, 1);
        let text = m.render();
        assert!(
            text.contains(
                r#"chatcluster_desired_replicas{chatcluster="a",chatcluster_namespace="chat"} 3"#
            ),
            "{text}"
        );
        m.retain_clusters(|ns, name| ns == "chat" && name == "b");
        let text = m.render();
        assert!(!text.contains(r#"chatcluster="a""#), "{text}");
        assert!(
            text.contains(
                r#"chatcluster_ready_replicas{chatcluster="b",chatcluster_namespace="chat"} 1"#
            ),
            "{text}"
        );
    }
}
