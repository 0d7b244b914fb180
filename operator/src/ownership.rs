//! Which chat pods belong to a ChatCluster, by owner uid. Pure.
//!
//! The operator sends each pod the cluster's admin token (`/admin/status`, `/admin/drain`)
//! and reads its connection count. Names and labels do not say whose a pod is: anyone who
//! may create pods in the namespace can give one the cluster's labels and a name such as
//! `chat-7`, and the pods of a cluster named `chat-b` start with `chat-` too. Owner
//! references with uids do: the ChatCluster controls its StatefulSet, and the StatefulSet
//! controls its pods, each reference naming the owner's uid, which no other object has.
//! A pod that is not in that chain gets neither the token nor a say in the counts.
//!
//! Also the keys of the state kept between reconciles: per ChatCluster ([`cluster_key`])
//! and per pod ([`pod_key`]).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::ChatCluster;

/// Whether `meta` names `owner_uid` as its controller (the owner reference with
/// `controller: true`; there is at most one).
pub fn controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    !owner_uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == owner_uid)
}

/// The uid of the chat StatefulSet `sts`, if it is the one ChatCluster `cluster_uid`
/// controls (a StatefulSet of the same name made by someone else is not).
pub fn owned_statefulset_uid(sts: Option<&StatefulSet>, cluster_uid: &str) -> Option<String> {
    let sts = sts?;
    if !controlled_by(&sts.metadata, cluster_uid) {
        return None;
    }
    sts.metadata.uid.clone().filter(|uid| !uid.is_empty())
}

/// The pods among `pods` that StatefulSet `statefulset_uid` controls; none without one.
pub fn owned_pods(pods: Vec<Pod>, statefulset_uid: Option<&str>) -> Vec<Pod> {
    let Some(uid) = statefulset_uid else {
        return Vec::new();
    };
    pods.into_iter()
        .filter(|p| controlled_by(&p.metadata, uid))
        .collect()
}

/// `namespace/name` of a ChatCluster: the key of the per-cluster state kept between
/// reconciles (failed reconciles, autoscaler histories).
pub fn cluster_key(cluster: &ChatCluster) -> String {
    format!(
        "{}/{}",
        cluster.metadata.namespace.as_deref().unwrap_or_default(),
        cluster.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The key of per-pod state (failed admin calls) of cluster `cluster_uid`'s pod `pod`:
/// scoped by the cluster's uid, so clusters whose names share a prefix (`chat`,
/// `chat-b`) never share or clear each other's entries.
pub fn pod_key(cluster_uid: &str, pod: &str) -> String {
    format!("{cluster_uid}/{pod}")
}

/// Whether `key` (from [`pod_key`]) belongs to cluster `cluster_uid`.
pub fn key_of_cluster(key: &str, cluster_uid: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(uid, _)| uid == cluster_uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owner(uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "chat".into(),
            uid: uid.into(),
            controller: Some(controller),
            ..OwnerReference::default()
        }
    }

    fn pod(name: &str, owners: Vec<OwnerReference>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.owner_references = Some(owners);
        p
    }

    fn names(pods: &[Pod]) -> Vec<&str> {
        pods.iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect()
    }

    #[test]
    fn only_pods_the_statefulset_controls_by_uid_are_kept() {
        let pods = vec![
            pod("chat-0", vec![owner("sts-uid", true)]),
            // Same name pattern and (presumably) labels, made by hand: no owner.
            pod("chat-1", vec![]),
            // Claims the StatefulSet's name, not its uid.
            pod("chat-2", vec![owner("other-uid", true)]),
            // Names the uid, but not as controller.
            pod("chat-3", vec![owner("sts-uid", false)]),
            pod("chat-4", vec![owner("x", false), owner("sts-uid", true)]),
        ];
        assert_eq!(
            names(&owned_pods(pods.clone(), Some("sts-uid"))),
            ["chat-0", "chat-4"]
        );
        assert!(
            owned_pods(pods, None).is_empty(),
            "no StatefulSet (yet): no pod is trusted"
        );
        let mut no_refs = Pod::default();
        no_refs.metadata.name = Some("chat-5".into());
        assert!(owned_pods(vec![no_refs], Some("sts-uid")).is_empty());
        assert!(
            owned_pods(vec![pod("chat-6", vec![owner("", true)])], Some("")).is_empty(),
            "an empty uid matches nothing"
        );
    }

    #[test]
    fn a_statefulset_counts_only_when_the_cluster_controls_it() {
        let mut sts = StatefulSet::default();
        sts.metadata.uid = Some("sts-uid".into());
        assert_eq!(owned_statefulset_uid(Some(&sts), "cluster-uid"), None);
        sts.metadata.owner_references = Some(vec![owner("cluster-uid", true)]);
        assert_eq!(
            owned_statefulset_uid(Some(&sts), "cluster-uid").as_deref(),
            Some("sts-uid")
        );
        assert_eq!(owned_statefulset_uid(Some(&sts), "another-cluster"), None);
        assert_eq!(owned_statefulset_uid(None, "cluster-uid"), None);
        sts.metadata.uid = None;
        assert_eq!(owned_statefulset_uid(Some(&sts), "cluster-uid"), None);
    }

    #[test]
    fn a_clusters_key_is_its_namespace_and_name() {
        let spec: crate::crd::ChatClusterSpec =
            serde_json::from_value(serde_json::json!({})).unwrap();
        let mut c = ChatCluster::new("chat", spec);
        c.metadata.namespace = Some("team-a".into());
        assert_eq!(cluster_key(&c), "team-a/chat");
        c.metadata.name = Some("chat-b".into());
        assert_eq!(cluster_key(&c), "team-a/chat-b");
    }

    #[test]
    fn pod_keys_are_scoped_by_cluster_uid_not_name_prefix() {
        let chat = pod_key("uid-chat", "chat-0");
        let chat_b = pod_key("uid-chat-b", "chat-b-0");
        assert!(key_of_cluster(&chat, "uid-chat"));
        assert!(!key_of_cluster(&chat_b, "uid-chat"), "{chat_b}");
        assert!(key_of_cluster(&chat_b, "uid-chat-b"));
        assert!(!key_of_cluster("no-slash", "no-slash"));
    }
}
