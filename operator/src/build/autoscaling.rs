//! The KEDA ScaledObject for `autoscaling.engine: keda`: KEDA's HPA scales the
//! ChatCluster through its `/scale` subresource with a Prometheus trigger that asks what
//! the built-in autoscaler asks, and HPA behaviour that mirrors its rules (see
//! docs/autoscaling.md).

use kube::Resource;
use serde_json::{json, Value};

use super::Names;
use crate::autoscaling::decision::SYNC_PERIOD;
use crate::crd::{AutoscalingSpec, ChatCluster};

/// The ScaledObject (no typed struct: KEDA's CRD is not in k8s-openapi), named like the
/// ChatCluster. `query` is the PromQL for the cluster's total connections.
pub(super) fn scaled_object(n: &Names, spec: &AutoscalingSpec, url: &str, query: &str) -> Value {
    let meta = n.meta(n.name.to_owned(), "chat-server");
    json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {
                "apiVersion": ChatCluster::api_version(&()),
                "kind": ChatCluster::kind(&()),
                "name": n.name,
            },
            "pollingInterval": SYNC_PERIOD.as_secs(),
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        // Up at once, by at most double and at least one pod per period.
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "selectPolicy": "Max",
                            "policies": [
                                {"type": "Percent", "value": 100, "periodSeconds": SYNC_PERIOD.as_secs()},
                                {"type": "Pods", "value": 1, "periodSeconds": SYNC_PERIOD.as_secs()},
                            ],
                        },
                        // Down only to the highest recommendation of the window.
                        "scaleDown": {
                            "stabilizationWindowSeconds": spec.scale_down_stabilization_seconds,
                        },
                    },
                },
            },
            "triggers": [{
                "type": "prometheus",
                // desired = ceil(total / threshold), HPA's default 10 % tolerance.
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": url,
                    "query": query,
                    "threshold": spec.target_connections_per_pod.to_string(),
                    // No series is an error (no scaling), not zero connections.
                    "ignoreNullValues": "false",
                },
            }],
        },
    })
}
