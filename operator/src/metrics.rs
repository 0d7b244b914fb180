//! Operator metrics: reconciles, errors by reason, reconcile duration, leadership.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: IntCounter,
    pub errors: IntCounterVec,
    pub duration: Histogram,
    pub leader: IntGauge,
}

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
            registry,
        };
        for c in [
            Box::new(m.reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.errors.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.leader.clone()),
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
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
