//! The Prometheus-operator PodMonitor that scrapes the chat pods' `/metrics`.

use serde_json::{json, Value};

use super::{selector_labels, Names};
use crate::crd::PodMonitorSpec;

/// The PodMonitor (no typed struct in k8s-openapi), named like the ChatCluster. Its
/// targets get the `namespace` and `pod` labels the default autoscaling query and the
/// dashboard select on.
pub(super) fn pod_monitor(n: &Names, spec: &PodMonitorSpec) -> Value {
    let mut meta = n.meta(n.name.to_owned(), "chat-server");
    let labels = meta.labels.get_or_insert_with(Default::default);
    for (k, v) in &spec.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(n.name, "chat-server")},
            "podMetricsEndpoints": [{
                "port": "admin",
                "path": "/metrics",
                "interval": format!("{}s", spec.interval_seconds),
            }],
        },
    })
}
