//! NetworkPolicies (`spec.networkPolicy`, on by default). They only take effect where the
//! cluster's network plugin enforces NetworkPolicy; elsewhere they are accepted and do
//! nothing.
//!
//! - `NAME`: the chat-server pods take their public port from anywhere (the ingress
//!   controller, in-cluster clients) and their admin port (`/metrics`, `/admin/*`) only
//!   from the operator's namespace and the namespaces listed in
//!   `networkPolicy.adminFromNamespaces` (your Prometheus'). With neither, no one
//!   reaches the admin port over the network (kubelet probes from the pod's own node
//!   are let through by the usual implementations).
//! - `NAME-redis` (managed Redis only): Redis takes connections only from this cluster's
//!   chat-server pods.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

use super::{selector_labels, Names, ADMIN_PORT, PUBLIC_PORT, REDIS_PORT};

/// The label every namespace carries with its own name (Kubernetes ≥ 1.21).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn pods(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

/// An ingress-only policy for the pods of `component`, allowing `rules` (everything else
/// in is dropped).
fn ingress_policy(
    n: &Names,
    name: String,
    component: &str,
    rules: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: n.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(selector_labels(n.name, component))),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The chat-server pods' policy. `admin_namespaces`: who may reach the admin port (the
/// operator's namespace first, then the spec's list), deduplicated, empty ones dropped.
pub(super) fn chat_network_policy(n: &Names, admin_namespaces: &[&str]) -> NetworkPolicy {
    let mut namespaces: Vec<&str> = Vec::new();
    for ns in admin_namespaces {
        if !ns.is_empty() && !namespaces.contains(ns) {
            namespaces.push(ns);
        }
    }
    let mut rules = vec![NetworkPolicyIngressRule {
        ports: Some(vec![tcp(PUBLIC_PORT)]),
        // No `from`: every source.
        from: None,
    }];
    // An empty `from` would mean every source: with no namespace there is no rule.
    if !namespaces.is_empty() {
        rules.push(NetworkPolicyIngressRule {
            ports: Some(vec![tcp(ADMIN_PORT)]),
            from: Some(
                namespaces
                    .iter()
                    .map(|ns| NetworkPolicyPeer {
                        namespace_selector: Some(pods(BTreeMap::from([(
                            NAMESPACE_NAME_LABEL.to_owned(),
                            (*ns).to_owned(),
                        )]))),
                        ..NetworkPolicyPeer::default()
                    })
                    .collect(),
            ),
        });
    }
    ingress_policy(n, n.name.to_owned(), "chat-server", rules)
}

/// The managed Redis' policy: only this cluster's chat-server pods, on the Redis port.
pub(super) fn redis_network_policy(n: &Names) -> NetworkPolicy {
    ingress_policy(
        n,
        n.redis_name(),
        "redis",
        vec![NetworkPolicyIngressRule {
            ports: Some(vec![tcp(REDIS_PORT)]),
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(pods(selector_labels(n.name, "chat-server"))),
                ..NetworkPolicyPeer::default()
            }]),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{build, BuildContext};

    use crate::build::test_cluster as cluster;

    fn admin_sources(p: &NetworkPolicy) -> Option<Vec<String>> {
        let rules = p.spec.as_ref()?.ingress.as_ref()?;
        let admin = rules.iter().find(|r| {
            r.ports.as_ref().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p.port == Some(IntOrString::Int(ADMIN_PORT)))
            })
        })?;
        Some(
            admin
                .from
                .iter()
                .flatten()
                .filter_map(|peer| {
                    peer.namespace_selector
                        .as_ref()?
                        .match_labels
                        .as_ref()?
                        .get(NAMESPACE_NAME_LABEL)
                        .cloned()
                })
                .collect(),
        )
    }

    #[test]
    fn the_admin_port_is_open_only_to_the_operator_and_listed_namespaces() {
        let c = cluster(serde_json::json!({
            "networkPolicy": {"adminFromNamespaces": ["monitoring", "ops", "monitoring"]}
        }));
        let ctx = BuildContext {
            operator_namespace: Some("chatcluster-system".into()),
            ..BuildContext::default()
        };
        let d = build(&c, ctx).unwrap();
        let chat = d.network_policy.expect("on by default");
        assert_eq!(
            admin_sources(&chat).unwrap(),
            ["chatcluster-system", "monitoring", "ops"]
        );
        let rules = chat.spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert!(
            rules[0].from.is_none(),
            "the public port takes every source"
        );
        assert_eq!(
            rules[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(PUBLIC_PORT))
        );
    }

    #[test]
    fn with_no_namespace_to_allow_the_admin_port_gets_no_rule_at_all() {
        // An empty `from` would open it to everyone.
        let d = build(&cluster(serde_json::json!({})), BuildContext::default()).unwrap();
        let chat = d.network_policy.unwrap();
        assert_eq!(admin_sources(&chat), None);
        assert_eq!(chat.spec.unwrap().ingress.unwrap().len(), 1);
    }

    #[test]
    fn redis_takes_only_this_clusters_chat_pods_and_only_when_managed() {
        let d = build(&cluster(serde_json::json!({})), BuildContext::default()).unwrap();
        let redis = d.redis_network_policy.expect("managed Redis");
        assert_eq!(redis.metadata.name.as_deref(), Some("chat-redis"));
        let spec = redis.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            selector_labels("chat", "redis")
        );
        let rule = &spec.ingress.unwrap()[0];
        assert_eq!(
            rule.from.as_ref().unwrap()[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap(),
            &selector_labels("chat", "chat-server")
        );
        let external = cluster(serde_json::json!({"redis": {"external": {"secretName": "r"}}}));
        assert!(build(&external, BuildContext::default())
            .unwrap()
            .redis_network_policy
            .is_none());
        let off = cluster(serde_json::json!({"networkPolicy": {"enabled": false}}));
        let d = build(&off, BuildContext::default()).unwrap();
        assert!(d.network_policy.is_none() && d.redis_network_policy.is_none());
    }
}
