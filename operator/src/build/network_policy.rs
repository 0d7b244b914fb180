//! NetworkPolicies (`spec.networkPolicy`, on by default). They only take effect where the
//! cluster's network plugin enforces NetworkPolicy; elsewhere they are accepted and do
//! nothing.
//!
//! - `NAME`: the chat-server pods take their public port from anywhere (the ingress
//!   controller, in-cluster clients) and their admin port (`/metrics`, `/admin/*`) only
//!   from the operator's namespace and the namespaces listed in
//!   `networkPolicy.adminFromNamespaces` (your Prometheus'). With neither, no one
//!   reaches the admin port over the network (kubelet probes from the pod's own node
//!   are let through by the usual implementations). With `api.enabled`, their API port
//!   only from the ChatCluster's own namespace and `api.fromNamespaces`: the keys
//!   authenticate each call, the policy keeps everyone else from trying.
//! - `NAME-redis` (managed Redis only): Redis takes connections only from this cluster's
//!   chat-server pods.
//!
//! Both restrict ingress only (`policyTypes: [Ingress]`): what the chat pods dial out to
//! (Redis, a JWKS URL, the join hook, the events' webhook) is never blocked by them. A
//! namespace with its own default-deny egress policy must allow those itself
//! (docs/operator.md, "Events to the application").

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

use super::{selector_labels, Names, ADMIN_PORT, API_PORT, PUBLIC_PORT, REDIS_PORT};

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

/// A rule letting the pods of `namespaces` (by name; deduplicated, empty ones dropped)
/// reach `port`; `None` when no namespace is left, because an empty `from` would let
/// every source in.
fn from_namespaces_rule(port: i32, namespaces: &[&str]) -> Option<NetworkPolicyIngressRule> {
    let mut unique: Vec<&str> = Vec::new();
    for ns in namespaces {
        if !ns.is_empty() && !unique.contains(ns) {
            unique.push(ns);
        }
    }
    (!unique.is_empty()).then(|| NetworkPolicyIngressRule {
        ports: Some(vec![tcp(port)]),
        from: Some(
            unique
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
    })
}

/// The chat-server pods' policy. `admin_namespaces`: who may reach the admin port (the
/// operator's namespace first, then the spec's list). `api_namespaces`: with the server
/// API on, who may reach its port (the cluster's own namespace first, then
/// `api.fromNamespaces`). A port whose list is empty gets no rule, so nothing reaches it.
pub(super) fn chat_network_policy(
    n: &Names,
    admin_namespaces: &[&str],
    api_namespaces: &[&str],
) -> NetworkPolicy {
    let mut rules = vec![NetworkPolicyIngressRule {
        ports: Some(vec![tcp(PUBLIC_PORT)]),
        // No `from`: every source.
        from: None,
    }];
    rules.extend(from_namespaces_rule(ADMIN_PORT, admin_namespaces));
    rules.extend(from_namespaces_rule(API_PORT, api_namespaces));
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

    /// The namespaces (by name) the rule for `port` lets in; `None` without such a rule.
    fn sources(p: &NetworkPolicy, port: i32) -> Option<Vec<String>> {
        let rules = p.spec.as_ref()?.ingress.as_ref()?;
        let rule = rules.iter().find(|r| {
            r.ports
                .as_ref()
                .is_some_and(|ps| ps.iter().any(|p| p.port == Some(IntOrString::Int(port))))
        })?;
        Some(
            rule.from
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

    /// Whether `policy` lets a pod with `pod_labels` in namespace `from_ns` reach `port`
    /// (TCP) of the pods it selects: NetworkPolicy's semantics for the fields these
    /// builders use, so the tests ask what a network plugin would answer instead of
    /// reading the rules' shape. Fields it does not evaluate make it panic, so a builder
    /// that starts using them cannot pass by accident.
    fn admits(
        policy: &NetworkPolicy,
        from_ns: &str,
        pod_labels: &BTreeMap<String, String>,
        port: i32,
    ) -> bool {
        let policy_ns = policy.metadata.namespace.as_deref().expect("namespaced");
        let spec = policy.spec.as_ref().expect("a spec");
        if !spec.policy_types.iter().flatten().any(|t| t == "Ingress") {
            return true;
        }
        let ns_labels = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), from_ns.to_owned())]);
        let selects = |selector: &LabelSelector, labels: &BTreeMap<String, String>| {
            assert!(
                selector
                    .match_expressions
                    .as_ref()
                    .is_none_or(Vec::is_empty),
                "matchExpressions are not evaluated here"
            );
            selector
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v))
        };
        spec.ingress.iter().flatten().any(|rule| {
            let port_ok = rule.ports.as_ref().is_none_or(Vec::is_empty)
                || rule.ports.iter().flatten().any(|p| {
                    let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
                    let same = match &p.port {
                        None => true,
                        Some(IntOrString::Int(n)) => *n == port && p.end_port.is_none(),
                        Some(IntOrString::String(name)) => {
                            panic!("named port {name} is not evaluated here")
                        }
                    };
                    tcp && same
                });
            let from_ok = rule.from.as_ref().is_none_or(Vec::is_empty)
                || rule.from.iter().flatten().any(|peer| {
                    assert!(peer.ip_block.is_none(), "ipBlock is not evaluated here");
                    let ns_ok = match &peer.namespace_selector {
                        None => from_ns == policy_ns,
                        Some(sel) => selects(sel, &ns_labels),
                    };
                    let pod_ok = peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| selects(sel, pod_labels));
                    ns_ok && pod_ok
                });
            port_ok && from_ok
        })
    }

    /// A pod of some application (not a chat pod) in the namespace the question is about.
    fn app_pod() -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_owned(), "backend".to_owned())])
    }

    #[test]
    fn the_api_port_admits_only_the_clusters_namespace_and_the_listed_ones() {
        let c = cluster(serde_json::json!({
            "api": {"enabled": true, "fromNamespaces": ["backend", "apps", "backend"]},
            "networkPolicy": {"adminFromNamespaces": ["monitoring"]}
        }));
        let ctx = BuildContext {
            operator_namespace: Some("chatcluster-system".into()),
            ..BuildContext::default()
        };
        let chat = build(&c, ctx)
            .unwrap()
            .network_policy
            .expect("on by default");
        assert_eq!(
            chat.spec.as_ref().unwrap().pod_selector,
            Some(pods(selector_labels("chat", "chat-server"))),
            "the policy is about the chat pods"
        );
        let pod = app_pod();
        assert!(admits(&chat, "apps", &pod, API_PORT), "own namespace");
        assert!(admits(&chat, "backend", &pod, API_PORT), "listed");
        for outsider in ["elsewhere", "monitoring", "chatcluster-system"] {
            assert!(
                !admits(&chat, outsider, &pod, API_PORT),
                "a pod in {outsider} must not reach the API port"
            );
        }
        // The other rules are as they were: the public port open to every pod, the admin
        // port to the operator's and the admin namespaces only.
        assert!(admits(&chat, "elsewhere", &pod, PUBLIC_PORT));
        assert!(admits(&chat, "monitoring", &pod, ADMIN_PORT));
        assert!(admits(&chat, "chatcluster-system", &pod, ADMIN_PORT));
        assert!(!admits(&chat, "backend", &pod, ADMIN_PORT), "API only");
        assert!(!admits(&chat, "apps", &pod, ADMIN_PORT));
        // Any other port stays closed.
        assert!(!admits(&chat, "apps", &pod, 8082));
        // The cluster's own namespace ("apps") and the listed one, each once.
        assert_eq!(
            sources(&chat, API_PORT).unwrap(),
            ["apps", "backend"],
            "deduplicated, own namespace first"
        );
    }

    #[test]
    fn with_the_api_off_nothing_reaches_its_port() {
        let ctx = || BuildContext {
            operator_namespace: Some("chatcluster-system".into()),
            ..BuildContext::default()
        };
        // `fromNamespaces` alone opens nothing.
        let off = cluster(serde_json::json!({"api": {"fromNamespaces": ["backend"]}}));
        let chat = build(&off, ctx()).unwrap().network_policy.unwrap();
        assert_eq!(sources(&chat, API_PORT), None);
        for ns in ["apps", "backend", "chatcluster-system"] {
            assert!(!admits(&chat, ns, &app_pod(), API_PORT), "{ns}");
        }
        assert_eq!(
            chat.spec.unwrap().ingress.unwrap().len(),
            2,
            "public and admin rules only"
        );
        // And with the NetworkPolicies off, the operator makes none for the API either.
        let unpoliced = cluster(serde_json::json!({
            "api": {"enabled": true}, "networkPolicy": {"enabled": false}
        }));
        assert!(build(&unpoliced, ctx()).unwrap().network_policy.is_none());
    }

    /// The pods' way out is never the operator's to close: with events (a webhook the
    /// pods POST to) every policy it makes is still ingress-only, with no egress rule.
    #[test]
    fn the_policies_never_restrict_egress_so_the_webhook_is_reachable() {
        let c = cluster(serde_json::json!({
            "events": {"webhookUrl": "https://app.example/events", "secretName": "e"},
            "api": {"enabled": true}
        }));
        let d = build(&c, BuildContext::default()).unwrap();
        let policies = [d.network_policy, d.redis_network_policy];
        assert!(policies.iter().all(Option::is_some), "both on by default");
        for policy in policies.iter().flatten() {
            let spec = policy.spec.as_ref().unwrap();
            assert_eq!(
                spec.policy_types.as_deref(),
                Some(&["Ingress".to_owned()][..]),
                "{:?}",
                policy.metadata.name
            );
            assert!(spec.egress.is_none(), "{:?}", policy.metadata.name);
        }
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
            sources(&chat, ADMIN_PORT).unwrap(),
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
        assert_eq!(sources(&chat, ADMIN_PORT), None);
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
