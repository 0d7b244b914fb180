//! Operator metrics: reconciles, errors by reason, reconcile duration, leadership,
//! autoscaler decisions by reason, drain actions.

use axum::routing::get;
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

    /// Drops a deleted ChatCluster's series.
    pub fn forget_cluster(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        // Absent series are fine: the cluster may never have been reported.
        let _ = self.desired_replicas.remove_label_values(&labels);
        let _ = self.ready_replicas.remove_label_values(&labels);
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
