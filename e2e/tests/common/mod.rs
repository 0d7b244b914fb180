//! Helpers shared by the test files that run chat-server the way the operator's pods do.

use std::collections::BTreeMap;

use chatcluster_operator::build::{build, BuildContext, Desired};
use chatcluster_operator::crd::ChatCluster;
use k8s_openapi::api::core::v1::PodSpec;

/// One of the manifests under examples/, as the API server would store it (namespace
/// `default`, uid `uid-1`).
pub fn cluster_for_example(example: &str) -> ChatCluster {
    let path = chatcluster_e2e::harness::binaries::repo_root()
        .join("examples")
        .join(example);
    let text = std::fs::read_to_string(path).unwrap();
    let mut cluster: ChatCluster = chatcluster_operator::parse_manifest(&text).unwrap();
    cluster
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    cluster.metadata.uid = Some("uid-1".into());
    cluster
}

/// The objects the operator builds for one of the manifests under examples/.
pub fn desired_for_example(example: &str) -> Desired {
    build(&cluster_for_example(example), BuildContext::default()).unwrap()
}

/// The chat-server pod template of those objects.
pub fn pod_spec(desired: &Desired) -> PodSpec {
    let sts = desired.chat_statefulset.spec.clone().unwrap();
    sts.template.spec.unwrap()
}

/// The environment a chat-server pod of `example` gets (ConfigMap + container env, with
/// Downward API and Secret values filled in as the kubelet would). Listen addresses are
/// moved to 127.0.0.1 ephemeral ports and Redis to a closed loopback port: callers
/// override them as they need.
pub fn pod_environment(example: &str) -> BTreeMap<String, String> {
    let d = desired_for_example(example);
    let container = pod_spec(&d).containers.remove(0);
    let mut env: BTreeMap<String, String> = d.config_map.data.unwrap();
    for e in container.env.clone().unwrap() {
        let value = match (e.value, e.value_from) {
            (Some(v), _) => v,
            // Downward API and Secret values, as the kubelet would fill them in.
            (None, Some(from)) if from.field_ref.is_some() => {
                match from.field_ref.unwrap().field_path.as_str() {
                    "metadata.name" => "chat-0".into(),
                    "status.podIP" => "127.0.0.1".into(),
                    other => panic!("unexpected fieldRef {other}"),
                }
            }
            (None, Some(from)) if from.secret_key_ref.is_some() => {
                match from.secret_key_ref.unwrap().key.as_str() {
                    "hs256Secret" => "an-hs256-secret-that-is-at-least-32-bytes".into(),
                    "url" => "redis://127.0.0.1:1/".into(),
                    "token" => "an-admin-token-the-operator-generated".into(),
                    "password" => "a-redis-password-the-operator-generated".into(),
                    "hookSecret" => "a-join-hook-secret-at-least-32-bytes-long".into(),
                    "secret" => "an-events-signing-key-at-least-32-bytes".into(),
                    other => panic!("unexpected secret key {other}"),
                }
            }
            other => panic!("unexpected env source {other:?}"),
        };
        env.insert(e.name, value);
    }
    env.insert("CHAT_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("CHAT_ADMIN_LISTEN".into(), "127.0.0.1:0".into());
    // The mounted public key (the kubelet would project the Secret's `publicKey` there).
    if env.contains_key("CHAT_JWT_PUBLIC_KEY_FILE") {
        let key = chatcluster_e2e::harness::binaries::repo_root()
            .join("server/tests/fixtures/test-ed25519-public.pem");
        env.insert("CHAT_JWT_PUBLIC_KEY_FILE".into(), key.display().to_string());
    }
    // The identity provider's JWKS is off this machine (no traffic off loopback): the
    // URL is checked, then dropped; the attacker suite runs the JWKS path on loopback.
    if let Some(url) = env.remove("CHAT_JWKS_URL") {
        assert!(url.starts_with("https://"), "{url}");
    }
    // The in-cluster Redis name must not be resolved here (no traffic off loopback):
    // check it, then point at a closed loopback port.
    let url = env.insert("CHAT_REDIS_URL".into(), "redis://127.0.0.1:1/".into());
    assert!(
        url.is_some_and(|u| u.starts_with("redis://")),
        "pods get a Redis URL"
    );
    env
}
