//! What every reconcile shares ([`Context`]), what a failed one returns
//! ([`ReconcileError`]), and the failure counters behind the retry backoff and the drain's
//! patience with pods that do not answer ([`FailureCounts`]).

use kube::runtime::events::Recorder;
use kube::Client;

use super::generated_secrets;
use crate::autoscaling::control_loop;
use crate::build::BuildError;
use crate::discovery;
use crate::http_client::HttpClient;
use crate::metrics::OperatorMetrics;
use crate::ownership::key_of_cluster;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// Which optional APIs (Gateway API, KEDA, PodMonitors) the cluster serves.
    pub apis: discovery::Cache,
    /// Publishes Events about ChatClusters (events.k8s.io, deduplicated into series).
    pub recorder: Recorder,
    /// Consecutive failed reconciles per ChatCluster (`cluster_key`), for the retry
    /// backoff.
    pub failures: FailureCounts,
    /// Reads the pods' `/metrics` (bounded in time and size).
    pub http: HttpClient,
    /// Queries Prometheus for the autoscaler (bounded in time and size).
    pub prometheus_http: HttpClient,
    /// The autoscaler's stabilization histories.
    pub autoscaler: control_loop::Histories,
    /// The operator's metrics (autoscaler decisions are counted here).
    pub metrics: OperatorMetrics,
    /// The operator's own namespace (`POD_NAMESPACE`), when known: the NetworkPolicy
    /// lets it reach the pods' admin port. Unknown (run outside a pod), no namespace is
    /// let in for it.
    pub operator_namespace: Option<String>,
    /// Failed admin calls in a row per pod, so one that never answers or refuses every
    /// drain does not hold a scale-down forever (`drain::plan::MAX_FAILURES`).
    pub drain_failures: FailureCounts,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("generated Secret: {0}")]
    GeneratedSecret(#[from] generated_secrets::GeneratedSecretError),
}

impl ReconcileError {
    /// The `reason` label of `chatcluster_reconcile_errors_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "api",
            ReconcileError::Build(_) => "build",
            ReconcileError::GeneratedSecret(_) => "generated_secret",
        }
    }
}

/// Consecutive failures per key, reset by a success: failed reconciles per ChatCluster
/// (`cluster_key`), failed admin calls per pod (`ownership::pod_key`).
#[derive(Default)]
pub struct FailureCounts(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl FailureCounts {
    /// The map, even if a panicking reconcile poisoned the lock (plain counters).
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure; returns how many in a row.
    pub fn failed(&self, key: &str) -> u32 {
        let mut map = self.map();
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn get(&self, key: &str) -> u32 {
        self.map().get(key).copied().unwrap_or(0)
    }

    pub fn reset(&self, key: &str) {
        self.map().remove(key);
    }

    /// Forgets the keys of cluster `cluster_uid` ([`pod_key`]) that are not in `keep`,
    /// and no other cluster's: the scope is the uid, not a name prefix (which `chat`
    /// shares with `chat-b`).
    pub fn retain_cluster(&self, cluster_uid: &str, keep: &[String]) {
        self.map()
            .retain(|k, _| !key_of_cluster(k, cluster_uid) || keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatCluster;
    use crate::ownership::{cluster_key, pod_key};

    #[test]
    fn a_success_resets_the_count() {
        let spec: crate::crd::ChatClusterSpec =
            serde_json::from_value(serde_json::json!({})).unwrap();
        let c = ChatCluster::new("chat", spec);
        let f = FailureCounts::default();
        let key = cluster_key(&c);
        assert_eq!(f.failed(&key), 1);
        assert_eq!(f.failed(&key), 2);
        f.reset(&key);
        assert_eq!(f.failed(&key), 1);
    }

    /// Cleaning up after cluster `chat` used to forget every key starting with
    /// `ns/chat-`, which includes the pods of cluster `chat-b`.
    #[test]
    fn forgetting_one_clusters_pods_leaves_a_cluster_with_a_longer_name_alone() {
        let f = FailureCounts::default();
        let chat_gone = pod_key("uid-chat", "chat-2");
        let chat_kept = pod_key("uid-chat", "chat-0");
        let other = pod_key("uid-chat-b", "chat-b-0");
        for key in [&chat_gone, &chat_kept, &other] {
            f.failed(key);
        }
        f.retain_cluster("uid-chat", std::slice::from_ref(&chat_kept));
        assert_eq!(f.get(&chat_gone), 0, "a pod that is gone is forgotten");
        assert_eq!(f.get(&chat_kept), 1);
        assert_eq!(f.get(&other), 1, "chat-b's pods are not chat's");
        // Reconcile failures (namespace/name keys) are not per-pod state either.
        f.failed("ns/chat");
        f.retain_cluster("uid-chat", &[]);
        assert_eq!(f.get("ns/chat"), 1);
    }
}
