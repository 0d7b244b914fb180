//! The operator against a real API server: the simulated control plane of
//! `e2e/k8s/start-cluster.sh` (kube-apiserver, kube-controller-manager, kube-scheduler,
//! etcd, KWOK) or any cluster named by `CHATCLUSTER_KUBECONFIG`.
//!
//! Each test gets its own namespace and its own operator process watching only that
//! namespace (with its Lease there), so tests are independent and may run in parallel.
//! On the simulated cluster every address dialled is on loopback: the API server, the
//! operator's metrics port, and stand-in servers on simulated pods' 127.10.x IPs. No
//! Service IP is ever dialled. The data-plane test (kind only) dials the ingress.

// A heavy suite: compiled only with CHATCLUSTER_HEAVY_TESTS=1 (e2e/build.rs).
#![cfg(chatcluster_heavy)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chatcluster_e2e::clients::lossless::{
    every_subscriber_got_every_message_once, subscribers_joined,
};
use chatcluster_e2e::clients::ws::connect_users;
use chatcluster_e2e::harness::k8s::cluster::{
    condition, optional_crd, pod_kind, shared_cluster, PodKind,
};
use chatcluster_e2e::harness::k8s::operator_suite::{
    manifest, Setup, IMAGE_A, IMAGE_B, READY_WITHIN,
};
use chatcluster_e2e::harness::k8s::stand_in::remove_pod;
use chatcluster_e2e::wait::eventually;
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");

async fn setup(tag: &str, with_operator: bool) -> Setup {
    Setup::new(LOADGEN, tag, with_operator).await
}

/// The chat-server container's `env` of StatefulSet `sts`, as JSON text to search.
fn chat_container_env(sts: &Value) -> String {
    sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string()
}

/// Every child object of ChatCluster `name` (kind, object name), as the operator builds
/// it with an Ingress.
fn children(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("serviceaccount", name.to_owned()),
        ("configmap", format!("{name}-config")),
        ("statefulset", name.to_owned()),
        ("service", format!("{name}-headless")),
        ("service", name.to_owned()),
        ("poddisruptionbudget", name.to_owned()),
        ("statefulset", format!("{name}-redis")),
        ("service", format!("{name}-redis")),
        ("ingress", name.to_owned()),
        ("networkpolicy", name.to_owned()),
        ("networkpolicy", format!("{name}-redis")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chatclusters_are_rejected_by_the_api_server_with_the_cel_message() {
    let s = setup("invalid", false).await;
    let cases = [
        (
            "spec:\n  autoscaling:\n    minReplicas: 5\n    maxReplicas: 2\n",
            "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
        ),
        (
            "spec:\n  redis:\n    managed: {}\n    external:\n      secretName: redis\n",
            "redis: set either redis.managed or redis.external, not both",
        ),
        (
            "spec:\n  drain:\n    reconnectWindowSeconds: 30\n    deadlineSeconds: 20\n",
            "drain.reconnectWindowSeconds must be shorter than drain.deadlineSeconds",
        ),
        (
            "spec:\n  expose:\n    ingress:\n      host: Not_A_Host\n",
            "expose.ingress.host must be a DNS name",
        ),
        ("spec:\n  replicas: -1\n", "spec.replicas"),
        (
            "spec:\n  autoscaling:\n    maxReplicas: 3\n    engine: keda\n",
            "autoscaling.engine keda needs autoscaling.prometheusUrl",
        ),
        (
            "spec:\n  autoscaling:\n    maxReplicas: 3\n    engine: hpa\n",
            "spec.autoscaling.engine",
        ),
        (
            "spec:\n  networkPolicy:\n    adminFromNamespaces: [Monitoring]\n",
            "networkPolicy.adminFromNamespaces: each entry must be a namespace name",
        ),
        (
            "spec:\n  limits:\n    trustedProxies: [10.0.0.0/8, 10.0.0.0/33]\n",
            "limits.trustedProxies: each entry must be an address range",
        ),
        // Every URL the operator calls: http(s), no userinfo, query or fragment (a `?`
        // at the end once made the operator request any path on any host).
        (
            "spec:\n  autoscaling:\n    maxReplicas: 3\n    prometheusUrl: 'http://evil.example/x?'\n",
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            "spec:\n  autoscaling:\n    maxReplicas: 3\n    prometheusUrl: 'http://p:9090#'\n",
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            "spec:\n  autoscaling:\n    maxReplicas: 3\n    prometheusUrl: http://admin:pw@p:9090\n",
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            "spec:\n  autoscaling:\n    maxReplicas: 3\n    prometheusUrl: file:///etc/passwd\n",
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            "spec:\n  autoscaling:\n    maxReplicas: 3\n    prometheusUrl: 'http://:9090'\n",
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        // Auth: a key whenever anonymous users are refused, and only real keys.
        (
            "spec:\n  auth:\n    allowAnonymous: false\n",
            "auth: allowAnonymous: false leaves no way in; set auth.jwtSecretName, auth.publicKeySecretName or auth.jwksUrl",
        ),
        (
            "spec:\n  auth:\n    issuer: https://idp.example\n    audience: chat\n",
            "auth: issuer and audience are checked in tokens, and no token key is set",
        ),
        (
            "spec:\n  auth:\n    jwksUrl: http://idp.example/keys\n",
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            "spec:\n  auth:\n    jwksUrl: 'https://idp.example/keys?tenant=1'\n",
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            "spec:\n  auth:\n    jwksUrl: https://user:pw@idp.example/keys\n",
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            "spec:\n  auth:\n    jwksUrl: 'https://idp.example/keys#k1'\n",
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            "spec:\n  auth:\n    publicKeySecretName: Not_A_Secret\n",
            "auth.publicKeySecretName must be a Secret name",
        ),
        (
            "spec:\n  auth:\n    rooms:\n    - pattern: 'lobby room'\n      access: public\n",
            "auth.rooms: pattern must be 1 to 64 of A-Z a-z 0-9 _ - . : @ and *",
        ),
        (
            "spec:\n  auth:\n    rooms:\n    - pattern: 'dm.{user}.*'\n      access: user\n",
            "auth.rooms: a rule with access: user must not hold *",
        ),
        (
            "spec:\n  auth:\n    rooms:\n    - pattern: 'inbox.*'\n      access: user\n",
            "auth.rooms: a rule with access: user needs {user} exactly once in its pattern",
        ),
        (
            "spec:\n  auth:\n    rooms:\n    - pattern: 'dm.{user}.{user}'\n      access: user\n",
            "auth.rooms: a rule with access: user needs {user} exactly once in its pattern",
        ),
        (
            "spec:\n  auth:\n    rooms:\n    - pattern: 'team.{user}'\n      access: grant\n",
            "auth.rooms: {user} is only for rules with access: user",
        ),
        (
            "spec:\n  auth:\n    rooms:\n    - pattern: 'lobby.*'\n      access: private\n",
            "spec.auth.rooms[0].access",
        ),
        (
            "spec:\n  auth:\n    joinHook:\n      url: ftp://app/join\n      secretName: h\n",
            "auth.joinHook.url must be an http:// or https:// URL",
        ),
        (
            "spec:\n  auth:\n    joinHook:\n      url: 'http://app/join#x'\n      secretName: h\n",
            "auth.joinHook.url must be an http:// or https:// URL",
        ),
        (
            "spec:\n  auth:\n    joinHook:\n      url: http://u:p@app/join\n      secretName: h\n",
            "auth.joinHook.url must be an http:// or https:// URL",
        ),
        (
            "spec:\n  auth:\n    joinHook:\n      url: http://app/join\n      secretName: Hook_Secret\n",
            "auth.joinHook.secretName must be a Secret name",
        ),
        (
            "spec:\n  auth:\n    joinHook:\n      url: http://app/join\n      timeoutMilliseconds: 0\n      secretName: h\n",
            "spec.auth.joinHook.timeoutMilliseconds",
        ),
        (
            "spec:\n  auth:\n    joinHook:\n      url: http://app/join\n      concurrency: 2000\n      secretName: h\n",
            "spec.auth.joinHook.concurrency",
        ),
        (
            "spec:\n  auth:\n    dmPolicy: everyone\n",
            "supported values: \"anyone\", \"sharedRoom\", \"nobody\"",
        ),
        (
            "spec:\n  auth:\n    jwtSecretName: Chat_JWT\n",
            "auth.jwtSecretName must be a Secret name",
        ),
        (
            "spec:\n  auth:\n    jwtSecretName: chat-jwt\n    issuer: 'https://idp /chat'\n",
            "auth.issuer must be the tokens' exact iss",
        ),
        (
            "spec:\n  limits:\n    dmPerSecond: 0\n",
            "limits.dmPerSecond must be at least 0.01",
        ),
        (
            "spec:\n  api:\n    enabled: true\n    fromNamespaces: [backend, Backend_2]\n",
            "api.fromNamespaces: each entry must be a namespace name",
        ),
        (
            "spec:\n  api:\n    enabled: true\n    keysSecretName: API_Keys\n",
            "api.keysSecretName must be a Secret name",
        ),
        // Events to the application: the webhook's URL, room patterns, Secret name and
        // bounds, and no events with a Redis Cluster.
        (
            "spec:\n  events:\n    webhookUrl: ftp://app/events\n    secretName: app-events\n",
            "events.webhookUrl must be an http:// or https:// URL",
        ),
        (
            "spec:\n  events:\n    webhookUrl: 'http://app/chat events'\n    secretName: app-events\n",
            "events.webhookUrl must be an http:// or https:// URL",
        ),
        (
            "spec:\n  events:\n    webhookUrl: http://app/events\n    secretName: app-events\n    rooms: ['support.*', '']\n",
            "events.rooms: each pattern must be 1 to 64 of A-Z a-z 0-9 _ - . : @ and *",
        ),
        (
            "spec:\n  events:\n    webhookUrl: http://app/events\n    secretName: app-events\n    rooms: ['lobby,vip']\n",
            "events.rooms: each pattern must be 1 to 64 of A-Z a-z 0-9 _ - . : @ and *",
        ),
        (
            "spec:\n  events:\n    webhookUrl: http://app/events\n    secretName: App_Events\n",
            "events.secretName must be a Secret name",
        ),
        (
            "spec:\n  events:\n    webhookUrl: http://app/events\n    secretName: app-events\n    retryMaxSeconds: 120\n    giveUpAfterSeconds: 60\n",
            "events.retryMaxSeconds (default 30) must be at most events.giveUpAfterSeconds",
        ),
        (
            "spec:\n  events:\n    webhookUrl: http://app/events\n    secretName: app-events\n    shards: 65\n",
            "spec.events.shards",
        ),
        (
            "spec:\n  events:\n    secretName: app-events\n",
            "spec.events.webhookUrl: Required value",
        ),
        (
            "spec:\n  redis:\n    external:\n      secretName: redis-seeds\n      cluster: true\n  events:\n    webhookUrl: http://app/events\n    secretName: app-events\n",
            "events need a single Redis instance, not a Redis Cluster",
        ),
    ];
    let too_many_rooms: String = (0..65)
        .map(|i| format!("    - pattern: room{i}\n      access: public\n"))
        .collect();
    let too_many_rooms = format!("spec:\n  auth:\n    rooms:\n{too_many_rooms}");
    let cases = cases
        .iter()
        .map(|(spec, message)| ((*spec).to_owned(), *message))
        .chain([(too_many_rooms, "must have at most 64 items")]);
    for (spec, message) in cases {
        let doc = format!(
            "apiVersion: chatcluster.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: bad\n{spec}"
        );
        let out = s.kubectl(&["apply", "-f", "-"], Some(&doc));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{doc}");
        assert!(
            stderr.contains(message),
            "the rejection of\n{doc}\nshould say {message:?}; kubectl said: {stderr}"
        );
        assert!(s.get("chatcluster", "bad").is_none(), "nothing stored");
    }

    // The transition rule: a managed Redis volume cannot be resized after creation.
    s.apply(&manifest("vol", 1, &IMAGE_A, None));
    let changed = manifest("vol", 1, &IMAGE_A, None).replace("storage: 1Gi", "storage: 2Gi");
    let out = s.kubectl(&["apply", "-f", "-"], Some(&changed));
    assert!(!out.status.success(), "a volume resize was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be changed after creation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A name-only manifest is valid: every field has a default.
    s.apply(
        "apiVersion: chatcluster.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: minimal\n",
    );
    let minimal = s.get("chatcluster", "minimal").expect("stored");
    assert_eq!(minimal["spec"]["replicas"], 3, "defaulted: {minimal}");
}

/// The auth fields the API server accepts, with the defaults it stores: the example with
/// every field, and the anonymous default that follows the keys (left unset, so the
/// operator can turn guests off when a key is configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_field_of_the_full_example_is_accepted_with_its_defaults() {
    let s = setup("authspec", false).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/full.yaml");
    let full = std::fs::read_to_string(path).expect("examples/full.yaml");
    // Into this test's namespace.
    let full = full.replace("\n  namespace: chat\n", "\n");
    s.apply(&full);
    let stored = s.get("chatcluster", "chat-prod").expect("stored");
    let auth = &stored["spec"]["auth"];
    assert_eq!(auth["allowAnonymous"], false, "{auth}");
    assert_eq!(auth["dmPolicy"], "sharedRoom");
    assert_eq!(auth["rooms"].as_array().map(Vec::len), Some(4), "{auth}");
    assert_eq!(auth["rooms"][1]["presence"], true, "defaulted: {auth}");
    assert_eq!(auth["rooms"][2]["anonymous"], true, "defaulted: {auth}");
    assert_eq!(auth["joinHook"]["timeoutMilliseconds"], 2000);
    assert_eq!(auth["joinHook"]["concurrency"], 64);
    assert_eq!(auth["joinHook"]["cacheTtlSeconds"], 5);
    assert_eq!(stored["spec"]["limits"]["dmPerSecond"].as_f64(), Some(5.0));

    for (name, auth) in [
        ("keyonly", "  auth:\n    jwtSecretName: chat-jwt\n"),
        (
            "guests",
            "  auth:\n    allowAnonymous: true\n    jwksUrl: https://idp.example/keys\n    issuer: https://idp.example\n    audience: chat\n",
        ),
        (
            "userrooms",
            "  auth:\n    rooms:\n    - pattern: '{user}'\n      access: user\n    - pattern: '*'\n      access: grant\n",
        ),
    ] {
        s.apply(&format!(
            "apiVersion: chatcluster.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: {name}\nspec:\n{auth}"
        ));
        let stored = s.get("chatcluster", name).expect("stored");
        assert!(
            name == "guests" || stored["spec"]["auth"].get("allowAnonymous").is_none(),
            "allowAnonymous is not defaulted: the operator derives it from the keys: {stored}"
        );
    }
    let bare = s.get("chatcluster", "keyonly").expect("stored");
    assert_eq!(
        bare["spec"]["limits"]["dmPerSecond"].as_f64(),
        Some(5.0),
        "defaulted: {bare}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_cluster_gets_every_child_with_owner_references_and_labels() {
    let s = setup("children", true).await;
    s.apply(&manifest("chat", 2, &IMAGE_A, Some(&s.ingress_host())));
    let cc = s.wait_exists("chatcluster", "chat", READY_WITHIN).await;
    let uid = cc["metadata"]["uid"].as_str().expect("uid").to_owned();
    for (kind, name) in children("chat") {
        let obj = s.wait_exists(kind, &name, READY_WITHIN).await;
        let owners = obj["metadata"]["ownerReferences"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind}/{name} has no ownerReferences"));
        assert_eq!(owners.len(), 1, "{kind}/{name}: {owners:?}");
        assert_eq!(owners[0]["uid"], uid.as_str(), "{kind}/{name}");
        assert_eq!(owners[0]["kind"], "ChatCluster");
        assert_eq!(owners[0]["controller"], true);
        assert_eq!(owners[0]["blockOwnerDeletion"], true);
        let labels = &obj["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "chatcluster-operator"
        );
        assert_eq!(
            labels["app.kubernetes.io/instance"], "chat",
            "{kind}/{name}"
        );
        assert_eq!(labels["app.kubernetes.io/name"], "chatcluster");
        // One field manager owns what the operator sets.
        let full: Value = serde_json::from_str(&s.kubectl_ok(
            &["get", kind, &name, "-o", "json", "--show-managed-fields"],
            None,
        ))
        .expect("json");
        let managers: Vec<&str> = full["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["operation"] == "Apply")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert_eq!(managers, ["chatcluster-operator"], "{kind}/{name}");
    }
    let ingress = s.get("ingress", "chat").expect("ingress");
    let annotations = &ingress["metadata"]["annotations"];
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/affinity"],
        "cookie"
    );
    // Both Services expose only the public port; the admin port is reached on pod IPs.
    for service in ["chat", "chat-headless"] {
        let svc = s.get("service", service).expect("service");
        let ports: Vec<&str> = svc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(ports, ["ws"], "{service}");
    }
    // The chat StatefulSet's pods learn their name and IP for the user → pod registry.
    let sts = s.get("statefulset", "chat").expect("statefulset");
    let env = chat_container_env(&sts);
    assert!(
        env.contains("metadata.name") && env.contains("status.podIP"),
        "{env}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_become_ready_and_the_cluster_turns_ready_at_its_generation() {
    let s = setup("ready", true).await;
    let kind = pod_kind(&s.client).await.expect("nodes");
    s.apply(&manifest("chat", 3, &IMAGE_A, None));
    let cc = s.wait_ready("chat", READY_WITHIN).await;
    assert_eq!(cc["status"]["replicas"], 3);
    assert_eq!(cc["status"]["readyReplicas"], 3);
    assert_eq!(
        condition(&cc, "RedisReady").map(|c| c["status"].clone()),
        Some("True".into())
    );
    assert_eq!(
        condition(&cc, "Degraded").map(|c| c["status"].clone()),
        Some("False".into())
    );
    let selector = cc["status"]["selector"].as_str().expect("selector");
    let pods: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "pods", "-l", selector, "-o", "json"], None))
            .expect("pod list");
    let pods = pods["items"].as_array().expect("items");
    assert_eq!(pods.len(), 3, "selector {selector} selects the chat pods");
    for pod in pods {
        assert_eq!(pod["status"]["phase"], "Running");
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        match kind {
            PodKind::Simulated => assert!(ip.starts_with("127."), "pod IPs stay on loopback: {ip}"),
            PodKind::Real => assert!(!ip.is_empty(), "a real pod has an IP"),
        }
    }
    // The story is told in Events: `kubectl describe chat` and `kubectl get events` show it.
    let events = eventually("a Ready Event", Duration::from_secs(30), || async {
        let list: Value = serde_json::from_str(&s.chat_events())?;
        let reasons: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reportingComponent"] == "chatcluster-operator")
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
        Ok(reasons
            .iter()
            .any(|r| r == "AllReplicasReady")
            .then_some(reasons))
    })
    .await;
    if let Err(e) = events {
        panic!("{e}{}", s.operator_log());
    }
    // The managed Redis volume claim was provisioned and bound.
    let pvc = s
        .wait_exists("pvc", "data-chat-redis-0", READY_WITHIN)
        .await;
    let bound = eventually("the Redis PVC to be Bound", READY_WITHIN, || async {
        Ok(s.get("pvc", "data-chat-redis-0")
            .filter(|p| p["status"]["phase"] == "Bound"))
    })
    .await;
    assert!(bound.is_ok(), "{pvc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_short_jwt_secret_is_degraded_naming_it_until_fixed() {
    let s = setup("jwt", true).await;
    let with_jwt = format!(
        "{}  auth:\n    allowAnonymous: false\n    jwtSecretName: chat-jwt\n",
        manifest("chat", 1, &IMAGE_A, None)
    );
    s.apply(&with_jwt);
    let message = s.wait_degraded("chat", "SecretMissing").await;
    assert!(
        message.contains("chat-jwt") && message.contains("hs256Secret"),
        "names the Secret and the key: {message}"
    );
    assert!(
        s.get("statefulset", "chat").is_none(),
        "nothing is applied against a missing Secret"
    );

    s.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "chat-jwt",
            "--from-literal=hs256Secret=only-sixteen-byt",
        ],
        None,
    );
    let message = s.wait_degraded("chat", "SecretInvalid").await;
    assert!(message.contains("16 bytes"), "{message}");
    assert!(!message.contains("only-sixteen-byt"), "never the value");

    let key = "k".repeat(32);
    let fixed = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: chat-jwt\nstringData:\n  hs256Secret: {key}\n"
    );
    s.apply(&fixed);
    let cc = s.wait_ready("chat", READY_WITHIN).await;
    assert_eq!(
        condition(&cc, "Degraded").map(|c| c["status"].clone()),
        Some("False".into())
    );
    let sts = s
        .get("statefulset", "chat")
        .expect("applied once the Secret is fixed");
    let env = chat_container_env(&sts);
    assert!(
        env.contains("\"name\":\"chat-jwt\"") && env.contains("\"optional\":false"),
        "the JWT Secret is a required reference: {env}"
    );
}

/// The server API (`spec.api`): the generated keys Secret (one key of the server's shape,
/// owned, never overwritten), the `NAME-api` Service, the pods' port, variables and keys
/// volume, and the NetworkPolicy rule; a Secret of the user's that is missing or lacks
/// key `keys` is Degraded naming it; turning the API off removes the Service, the rule
/// and the pods' port, and keeps the generated keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_gets_keys_a_service_a_port_and_a_network_policy_rule() {
    let s = setup("api", true).await;
    let with_api = |api: &str| format!("{}  api:\n{api}", manifest("chat", 1, &IMAGE_A, None));
    s.apply(&with_api(
        "    enabled: true\n    fromNamespaces: [backend]\n",
    ));
    s.wait_ready("chat", READY_WITHIN).await;

    // The generated Secret: one random key on a line, of the shape the server takes.
    let secret = s.wait_exists("secret", "chat-api-keys", READY_WITHIN).await;
    let owners = secret["metadata"]["ownerReferences"].to_string();
    assert!(owners.contains("ChatCluster"), "owned: {owners}");
    let keys = s.secret_value("chat-api-keys", "keys");
    let key = keys.strip_suffix('\n').unwrap_or(&keys);
    assert!(
        !key.contains('\n'),
        "one key: {} lines",
        keys.lines().count()
    );
    assert!(
        (32..=256).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "a URL-safe random key of 32 to 256 characters, {} here",
        key.len()
    );

    // The Service: the API port of the chat pods, in the cluster only.
    let svc = s.wait_exists("service", "chat-api", READY_WITHIN).await;
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    let ports = svc["spec"]["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["name"], "api");
    assert_eq!(ports[0]["port"], 8081);
    assert_eq!(ports[0]["targetPort"], "api");
    let selector = &svc["spec"]["selector"];
    assert_eq!(selector["app.kubernetes.io/component"], "chat-server");
    assert_eq!(selector["app.kubernetes.io/instance"], "chat");
    let client_ports =
        s.get("service", "chat").expect("client Service")["spec"]["ports"].to_string();
    assert!(
        !client_ports.contains("8081"),
        "clients' Service: {client_ports}"
    );

    // The pods: the port, the variables, the Secret's key `keys` mounted read-only.
    let sts = s.get("statefulset", "chat").expect("statefulset");
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let api_port = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "api")
        .unwrap_or_else(|| panic!("no api port: {}", container["ports"]));
    assert_eq!(api_port["containerPort"], 8081);
    let config = s.get("configmap", "chat-config").expect("configmap");
    assert_eq!(config["data"]["CHAT_API_LISTEN"], "0.0.0.0:8081");
    assert_eq!(config["data"]["CHAT_API_KEYS_FILE"], "/etc/chat/api/keys");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        "chat-config"
    );
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "api-keys")
        .unwrap_or_else(|| panic!("no api-keys volume: {}", pod["volumes"]));
    assert_eq!(volume["secret"]["secretName"], "chat-api-keys");
    assert_eq!(
        volume["secret"]["items"],
        serde_json::json!([{"key": "keys", "path": "keys"}])
    );
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "api-keys")
        .unwrap_or_else(|| panic!("no api-keys mount: {}", container["volumeMounts"]));
    assert_eq!(mount["mountPath"], "/etc/chat/api");
    assert_eq!(mount["readOnly"], true);

    // The NetworkPolicy: the API port from this namespace and `fromNamespaces` only,
    // beside the unchanged public and admin rules.
    let policy = s.get("networkpolicy", "chat").expect("networkpolicy");
    let rules = policy["spec"]["ingress"].as_array().expect("rules").clone();
    let rule_for = |port: i64| {
        rules
            .iter()
            .find(|r| r["ports"][0]["port"] == port)
            .unwrap_or_else(|| panic!("no rule for port {port}: {rules:?}"))
            .clone()
    };
    let sources = |rule: &Value| -> Vec<String> {
        rule["from"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    let api_rule = rule_for(8081);
    assert_eq!(
        api_rule["from"].as_array().map(Vec::len),
        Some(2),
        "nothing but the two namespaces: {api_rule}"
    );
    assert_eq!(sources(&api_rule), [s.ns.name.as_str(), "backend"]);
    assert!(
        rule_for(8080)["from"].is_null(),
        "the public port stays open"
    );
    assert_eq!(
        sources(&rule_for(9090)),
        [s.ns.name.as_str()],
        "the operator's"
    );

    // Never overwritten: a key the user adds stays.
    let rotated = format!(
        "{key}\n# the new key, for the clients that moved\n{}\n",
        "n".repeat(40)
    );
    let patch = serde_json::json!({"stringData": {"keys": rotated}}).to_string();
    s.kubectl_ok(&["patch", "secret", "chat-api-keys", "-p", &patch], None);
    s.poke("chat");
    s.wait_operator_idle().await;
    assert_eq!(
        s.secret_value("chat-api-keys", "keys"),
        rotated,
        "the user's edit is kept"
    );

    // A Secret of the user's that does not exist: Degraded, naming it and the key.
    s.apply(&with_api(
        "    enabled: true\n    keysSecretName: app-api-keys\n    fromNamespaces: [backend]\n",
    ));
    let message = s.wait_degraded("chat", "SecretMissing").await;
    assert!(
        message.contains("app-api-keys")
            && message.contains("spec.api.keysSecretName")
            && message.contains("`keys`"),
        "names the Secret, the field and the key: {message}"
    );
    let sts = s.get("statefulset", "chat").expect("statefulset");
    assert!(
        sts["spec"]["template"]["spec"]["volumes"]
            .to_string()
            .contains("chat-api-keys"),
        "no pod template is applied against a missing Secret"
    );
    // It exists, without key `keys`.
    s.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "app-api-keys",
            "--from-literal=key=0123456789abcdef",
        ],
        None,
    );
    let message = s.wait_degraded("chat", "SecretKeyMissing").await;
    assert!(
        message.contains("app-api-keys") && message.contains("no key `keys`"),
        "{message}"
    );
    // Fixed: the pods mount the user's Secret.
    let app_key = "app-".repeat(8);
    let patch = serde_json::json!({"stringData": {"keys": format!("{app_key}\n")}}).to_string();
    s.kubectl_ok(&["patch", "secret", "app-api-keys", "-p", &patch], None);
    s.wait_ready("chat", READY_WITHIN).await;
    let mounted = eventually("the pods to mount app-api-keys", READY_WITHIN, || async {
        Ok(s.get("statefulset", "chat").filter(|sts| {
            sts["spec"]["template"]["spec"]["volumes"]
                .to_string()
                .contains("\"secretName\":\"app-api-keys\"")
        }))
    })
    .await;
    assert!(mounted.is_ok(), "{mounted:?}{}", s.operator_log());

    // Off: no Service, no rule, no port; the generated keys are kept for a comeback.
    s.apply(&with_api("    enabled: false\n"));
    s.wait_gone("service", "chat-api", READY_WITHIN).await;
    let off = eventually(
        "the API gone from the pods and the policy",
        READY_WITHIN,
        || async {
            let sts = s.get("statefulset", "chat");
            let policy = s.get("networkpolicy", "chat");
            Ok(sts.zip(policy).filter(|(sts, policy)| {
                let pod = sts["spec"]["template"]["spec"].to_string();
                !pod.contains("8081")
                    && !pod.contains("api-keys")
                    && !policy["spec"].to_string().contains("8081")
            }))
        },
    )
    .await;
    assert!(off.is_ok(), "{off:?}{}", s.operator_log());
    let config = s.get("configmap", "chat-config").expect("configmap");
    assert!(
        !config["data"].to_string().contains("CHAT_API_"),
        "{}",
        config["data"]
    );
    assert_eq!(s.secret_value("chat-api-keys", "keys"), rotated);
}

/// Events to the application (`spec.events`; the API server's refusals of bad values are
/// in `invalid_chatclusters_are_rejected_by_the_api_server_with_the_cel_message`): a
/// signing Secret that is missing, lacks key `secret` or holds a key under 32 bytes is
/// Degraded naming it, and nothing is applied; once fixed, the ConfigMap carries the webhook's
/// settings and the pods take the key from the Secret (never the ConfigMap), the
/// NetworkPolicies stay ingress-only (the webhook is reachable), and turning events off
/// removes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_get_the_webhook_settings_and_the_signing_secret_reference() {
    let s = setup("events", true).await;
    // The signing Secret does not exist: Degraded, naming it, and nothing is applied.
    let url = format!("http://app.{}.svc:8000/chat/events", s.ns.name);
    let with_events = format!(
        "{}  events:\n    webhookUrl: {url}\n    secretName: app-events\n    rooms: ['support.*', lobby]\n    retryMaxSeconds: 10\n    shards: 2\n",
        manifest("chat", 1, &IMAGE_A, None)
    );
    s.apply(&with_events);
    let message = s.wait_degraded("chat", "SecretMissing").await;
    assert!(
        message.contains("app-events")
            && message.contains("spec.events.secretName")
            && message.contains("`secret`"),
        "names the Secret, the field and the key: {message}"
    );
    assert!(
        s.get("statefulset", "chat").is_none(),
        "nothing is applied against a missing Secret"
    );
    // It exists, without key `secret`.
    s.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "app-events",
            &format!("--from-literal=hookSecret={}", "h".repeat(40)),
        ],
        None,
    );
    let message = s.wait_degraded("chat", "SecretKeyMissing").await;
    assert!(
        message.contains("app-events") && message.contains("no key `secret`"),
        "{message}"
    );
    // A key the chat-server would refuse: 31 bytes.
    let short = "short-signing-key-of-31-bytes..";
    assert_eq!(short.len(), 31);
    let patch = serde_json::json!({"stringData": {"secret": short}}).to_string();
    s.kubectl_ok(&["patch", "secret", "app-events", "-p", &patch], None);
    let message = s.wait_degraded("chat", "SecretInvalid").await;
    assert!(
        message.contains("app-events")
            && message.contains("31 bytes")
            && message.contains("at least 32"),
        "{message}"
    );
    assert!(!message.contains(short), "never the value: {message}");
    assert!(
        s.get("statefulset", "chat").is_none(),
        "still nothing applied"
    );

    // Fixed: Ready, the settings in the ConfigMap, the key from the Secret.
    let key = "e".repeat(32);
    let patch = serde_json::json!({"stringData": {"secret": key}}).to_string();
    s.kubectl_ok(&["patch", "secret", "app-events", "-p", &patch], None);
    let cc = s.wait_ready("chat", READY_WITHIN).await;
    assert_eq!(
        condition(&cc, "Degraded").map(|c| c["status"].clone()),
        Some("False".into())
    );
    let config = s.get("configmap", "chat-config").expect("configmap");
    let webhook: BTreeMap<String, Value> = config["data"]
        .as_object()
        .expect("data")
        .iter()
        .filter(|(k, _)| k.starts_with("CHAT_WEBHOOK_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        webhook,
        BTreeMap::from([
            ("CHAT_WEBHOOK_RETRY_MAX".to_owned(), "10s".into()),
            ("CHAT_WEBHOOK_ROOMS".to_owned(), "support.*,lobby".into()),
            ("CHAT_WEBHOOK_SHARDS".to_owned(), "2".into()),
            ("CHAT_WEBHOOK_URL".to_owned(), url.clone().into()),
        ]),
        "the settings, and never the signing key"
    );
    assert!(
        !config["data"].to_string().contains(&key),
        "the key is not in the ConfigMap"
    );
    let sts = s.get("statefulset", "chat").expect("statefulset");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let secret_env = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "CHAT_WEBHOOK_SECRET")
        .unwrap_or_else(|| panic!("no CHAT_WEBHOOK_SECRET: {}", container["env"]));
    assert_eq!(
        secret_env["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "app-events", "key": "secret", "optional": false}),
        "a required reference to the Secret's key"
    );
    assert!(secret_env.get("value").is_none(), "{secret_env}");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        "chat-config"
    );
    // The operator's policies restrict ingress only: the pods' POSTs go out.
    for policy in ["chat", "chat-redis"] {
        let p = s.get("networkpolicy", policy).expect("networkpolicy");
        assert_eq!(
            p["spec"]["policyTypes"],
            serde_json::json!(["Ingress"]),
            "{policy}"
        );
        assert!(p["spec"]["egress"].is_null(), "{policy}: {}", p["spec"]);
    }

    // Off: the variables and the reference go, the user's Secret stays.
    s.apply(&manifest("chat", 1, &IMAGE_A, None));
    let off = eventually("the events gone from the pods", READY_WITHIN, || async {
        let sts = s.get("statefulset", "chat");
        let config = s.get("configmap", "chat-config");
        Ok(sts.zip(config).filter(|(sts, config)| {
            !chat_container_env(sts).contains("CHAT_WEBHOOK_")
                && !config["data"].to_string().contains("CHAT_WEBHOOK_")
        }))
    })
    .await;
    assert!(off.is_ok(), "{off:?}{}", s.operator_log());
    assert_eq!(s.secret_value("app-events", "secret"), key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_autoscaling_kubectl_scale_outside_the_bounds_runs_clamped() {
    let s = setup("clamp", true).await;
    let bounded = format!(
        "{}  autoscaling:\n    minReplicas: 1\n    maxReplicas: 2\n",
        manifest("chat", 2, &IMAGE_A, None)
    );
    s.apply(&bounded);
    s.wait_ready("chat", READY_WITHIN).await;
    // Accepted (an HPA-style clamp, not a rejection); the StatefulSet never gets more
    // than the upper bound, and the autoscaler writes the bound back to spec.replicas.
    // (No pod answers /metrics here, so it has no data to scale on: it only clamps.)
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=5"], None);
    let cc = s
        .wait_chat("spec.replicas clamped back to 2", |cc| {
            cc["spec"]["replicas"] == 2 && cc["metadata"]["generation"].as_i64() > Some(2)
        })
        .await;
    assert_eq!(
        s.get("statefulset", "chat").expect("statefulset")["spec"]["replicas"],
        2
    );
    assert_eq!(
        condition(&cc, "ScalingActive").map(|c| c["status"].clone()),
        Some("False".into()),
        "no pod answered, so no data: {}",
        cc["status"]
    );
    s.wait_event("spec.replicas 5 → 2").await;
}

/// The operator generates the admin token and the managed Redis' password once, as owned
/// Secrets the pods reference; they survive reconciles unchanged, their values never reach
/// the operator's log, and a deleted one comes back with a new value that restarts the pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secrets_are_created_once_referenced_and_recreated() {
    let s = setup("gensecrets", true).await;
    s.apply(&manifest("chat", 1, &IMAGE_A, None));
    s.wait_ready("chat", READY_WITHIN).await;
    let admin = s.get("secret", "chat-admin").expect("admin Secret");
    let redis = s
        .get("secret", "chat-redis-auth")
        .expect("Redis password Secret");
    for secret in [&admin, &redis] {
        let owners = secret["metadata"]["ownerReferences"].to_string();
        assert!(owners.contains("ChatCluster"), "owned: {owners}");
    }
    let token = s.secret_value("chat-admin", "token");
    let password = s.secret_value("chat-redis-auth", "password");
    assert_eq!(token.len(), 64, "a 32-byte random token, hex");
    assert_eq!(
        s.secret_value("chat-redis-auth", "redis.conf"),
        format!("requirepass {password}\n")
    );
    let sts = s.get("statefulset", "chat").expect("statefulset");
    let env = chat_container_env(&sts);
    assert!(
        env.contains("chat-admin") && env.contains("CHAT_ADMIN_TOKEN"),
        "{env}"
    );
    assert!(
        env.contains("chat-redis-auth") && env.contains("CHAT_REDIS_PASSWORD"),
        "{env}"
    );
    let redis_sts = s
        .get("statefulset", "chat-redis")
        .expect("redis statefulset");
    let redis_args = redis_sts["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        !redis_args.contains(&password),
        "never in the arguments: {redis_args}"
    );
    let revision = |sts: &Value| {
        sts["spec"]["template"]["metadata"]["annotations"]["chatcluster.dev/secrets-revision"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let before = revision(&sts);
    assert!(
        before.contains(admin["metadata"]["uid"].as_str().expect("uid")),
        "{before}"
    );

    // Deleted by a user: recreated with a new value, and the pods are rolled to read it.
    s.kubectl_ok(&["delete", "secret", "chat-admin", "--wait=true"], None);
    s.poke("chat");
    s.wait_exists("secret", "chat-admin", READY_WITHIN).await;
    assert_ne!(s.secret_value("chat-admin", "token"), token, "a new value");
    let rolled = eventually(
        "the pod template to follow the new Secret",
        READY_WITHIN,
        || async {
            Ok(s.get("statefulset", "chat")
                .filter(|sts| revision(sts) != before))
        },
    )
    .await;
    assert!(rolled.is_ok(), "{rolled:?}{}", s.operator_log());
    let log = s.operator_log();
    assert!(
        !log.contains(&token) && !log.contains(&password),
        "generated values never appear in the operator's log"
    );
    assert_eq!(
        s.secret_value("chat-redis-auth", "password"),
        password,
        "the other Secret is kept as it was"
    );
}

/// The NetworkPolicies are accepted by the real API server as built: the admin port open
/// to the operator's namespace and the listed ones, Redis to the chat pods; turning them
/// off deletes them. (Whether traffic is dropped depends on the network plugin; the
/// simulated control plane has none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_are_created_from_the_spec_and_removed_when_disabled() {
    let s = setup("netpol", true).await;
    let with = |enabled: bool| {
        format!(
            "{}  networkPolicy:\n    enabled: {enabled}\n    adminFromNamespaces: [monitoring]\n",
            manifest("chat", 1, &IMAGE_A, None)
        )
    };
    s.apply(&with(true));
    let chat = s.wait_exists("networkpolicy", "chat", READY_WITHIN).await;
    let redis = s
        .wait_exists("networkpolicy", "chat-redis", READY_WITHIN)
        .await;
    let admin_from: Vec<&str> = chat["spec"]["ingress"][1]["from"]
        .as_array()
        .expect("the admin rule has sources")
        .iter()
        .filter_map(|p| {
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str()
        })
        .collect();
    // The test runs the operator with POD_NAMESPACE = the test namespace.
    assert_eq!(admin_from, [s.ns.name.as_str(), "monitoring"]);
    assert_eq!(chat["spec"]["ingress"][1]["ports"][0]["port"], 9090);
    assert_eq!(chat["spec"]["ingress"][0]["ports"][0]["port"], 8080);
    assert!(chat["spec"]["ingress"][0]["from"].is_null(), "{chat}");
    assert_eq!(
        redis["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
            ["app.kubernetes.io/component"],
        "chat-server"
    );
    assert_eq!(
        redis["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "redis"
    );
    s.apply(&with(false));
    let gone = eventually("both NetworkPolicies deleted", READY_WITHIN, || async {
        Ok((s.get("networkpolicy", "chat").is_none()
            && s.get("networkpolicy", "chat-redis").is_none())
        .then_some(()))
    })
    .await;
    assert!(gone.is_ok(), "{gone:?}{}", s.operator_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_chat_shows_the_printer_columns() {
    let s = setup("columns", true).await;
    s.apply(&manifest("chat", 1, &IMAGE_A, None));
    s.wait_ready("chat", READY_WITHIN).await;
    let table = s.kubectl_ok(&["get", "chat"], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REPLICAS", "CONNECTIONS", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.first(), Some(&"chat"), "{table}");
    assert_eq!(row.get(1), Some(&"True"), "{table}");
    assert_eq!(row.get(2), Some(&"1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_works_through_the_scale_subresource() {
    let s = setup("scale", true).await;
    s.apply(&manifest("chat", 2, &IMAGE_A, None));
    s.wait_ready("chat", READY_WITHIN).await;
    let scale: Value = serde_json::from_str(&s.kubectl_ok(
        &[
            "get",
            "chatcluster",
            "chat",
            "--subresource=scale",
            "-o",
            "json",
        ],
        None,
    ))
    .expect("scale json");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert!(
        scale["status"]["selector"]
            .as_str()
            .is_some_and(|sel| sel.contains("app.kubernetes.io/instance=chat")),
        "{scale}"
    );

    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=4"], None);
    let cc = s.wait_ready("chat", READY_WITHIN).await;
    assert_eq!(cc["spec"]["replicas"], 4);
    assert_eq!(cc["status"]["readyReplicas"], 4);
    let sts = s.get("statefulset", "chat").expect("statefulset");
    assert_eq!(sts["spec"]["replicas"], 4);

    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=1"], None);
    let scaled_down = eventually("status.replicas = 1", READY_WITHIN, || async {
        Ok(s.get("chatcluster", "chat")
            .filter(|c| c["status"]["replicas"] == 1))
    })
    .await;
    if let Err(e) = scaled_down {
        panic!("{e}{}", s.operator_log());
    }
    s.wait_gone("pod", "chat-1", READY_WITHIN).await;
    // At one replica there is no PodDisruptionBudget (it would block every eviction).
    s.wait_gone("poddisruptionbudget", "chat", READY_WITHIN)
        .await;
    let cc = s.wait_ready("chat", READY_WITHIN).await;
    assert_eq!(
        condition(&cc, "Progressing").map(|c| c["status"].clone()),
        Some("False".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_rolls_out_to_every_pod() {
    let s = setup("rollout", true).await;
    s.apply(&manifest("chat", 3, &IMAGE_A, None));
    let before = s.wait_ready("chat", READY_WITHIN).await;
    let generation = before["metadata"]["generation"]
        .as_i64()
        .expect("generation");

    // Record every Progressing the operator writes for the new generation, from a watch
    // started before the change, so a short-lived state cannot be missed by polling.
    let progressing = record_progressing_reasons(&s, "chat", &before, generation + 1).await;
    s.apply(&manifest("chat", 3, &IMAGE_B, None));
    let rolled = eventually("every pod on the new image", READY_WITHIN, || async {
        let Some(sts) = s.get("statefulset", "chat") else {
            return Ok(None);
        };
        let st = &sts["status"];
        let done = st["updateRevision"] == st["currentRevision"]
            && st["updatedReplicas"] == 3
            && st["readyReplicas"] == 3;
        if !done {
            return Ok(None);
        }
        let pods: Value = serde_json::from_str(&s.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=chat-server",
                "-o",
                "json",
            ],
            None,
        ))?;
        let images: Vec<String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["spec"]["containers"][0]["image"].to_string())
            .collect();
        Ok(
            (images.len() == 3 && images.iter().all(|i| i.contains(IMAGE_B.as_str())))
                .then_some(images),
        )
    })
    .await;
    if let Err(e) = rolled {
        panic!("{e}{}", s.operator_log());
    }
    let after = s.wait_ready("chat", READY_WITHIN).await;
    assert_eq!(
        after["status"]["observedGeneration"].as_i64(),
        Some(generation + 1)
    );
    let reasons = match tokio::time::timeout(READY_WITHIN, progressing).await {
        Ok(Ok(reasons)) => reasons,
        other => panic!(
            "no RolloutComplete recorded for the new generation: {other:?}{}",
            s.operator_log()
        ),
    };
    // The bug this catches: reading the StatefulSet's counts before its controller had
    // seen the new template made the first write at the new generation "complete".
    assert_eq!(
        reasons.first().map(String::as_str),
        Some("True/RollingOut"),
        "Progressing at generation {}: {reasons:?}",
        generation + 1
    );
    assert_eq!(
        reasons.last().map(String::as_str),
        Some("False/RolloutComplete"),
        "{reasons:?}"
    );
}

/// Watches ChatCluster `name` from `current`'s resourceVersion and returns, in order, the
/// distinct `status/reason` of Progressing written at `generation`, up to and including
/// the first `RolloutComplete`.
async fn record_progressing_reasons(
    s: &Setup,
    name: &str,
    current: &Value,
    generation: i64,
) -> tokio::task::JoinHandle<Vec<String>> {
    use futures_util::StreamExt;
    use kube::api::{Api, WatchEvent, WatchParams};
    let api: Api<chatcluster_operator::crd::ChatCluster> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let version = current["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_owned();
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(READY_WITHIN.as_secs() as u32);
    let mut events = api
        .watch(&params, &version)
        .await
        .expect("watch the ChatCluster")
        .boxed();
    tokio::spawn(async move {
        let mut reasons: Vec<String> = Vec::new();
        while let Some(Ok(event)) = events.next().await {
            let WatchEvent::Modified(cc) = event else {
                continue;
            };
            let conditions = cc.status.map(|st| st.conditions).unwrap_or_default();
            let Some(p) = conditions
                .iter()
                .find(|c| c.type_ == "Progressing" && c.observed_generation == Some(generation))
            else {
                continue;
            };
            let seen = format!("{}/{}", p.status, p.reason);
            if reasons.last() != Some(&seen) {
                reasons.push(seen);
            }
            if p.reason == "RolloutComplete" {
                break;
            }
        }
        reasons
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_child_is_recreated() {
    let s = setup("recreate", true).await;
    s.apply(&manifest("chat", 2, &IMAGE_A, Some(&s.ingress_host())));
    s.wait_ready("chat", READY_WITHIN).await;
    for (kind, name) in [
        ("service", "chat"),
        ("configmap", "chat-config"),
        ("poddisruptionbudget", "chat"),
        ("ingress", "chat"),
        ("statefulset", "chat-redis"),
        ("networkpolicy", "chat-redis"),
    ] {
        let old = s.get(kind, name).expect("child exists");
        let old_uid = old["metadata"]["uid"].clone();
        s.kubectl_ok(&["delete", kind, name, "--wait=true"], None);
        let what = format!("{kind}/{name} to be recreated");
        let recreated = eventually(&what, Duration::from_secs(30), || async {
            Ok(s.get(kind, name)
                .filter(|o| o["metadata"]["uid"] != old_uid))
        })
        .await;
        if let Err(e) = recreated {
            panic!("{e}{}", s.operator_log());
        }
    }
    s.wait_ready("chat", READY_WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_expose_deletes_the_orphaned_ingress() {
    let s = setup("orphan", true).await;
    s.apply(&manifest("chat", 1, &IMAGE_A, Some(&s.ingress_host())));
    s.wait_exists("ingress", "chat", READY_WITHIN).await;
    s.kubectl_ok(
        &[
            "patch",
            "chatcluster",
            "chat",
            "--type=merge",
            "-p",
            r#"{"spec":{"expose":null}}"#,
        ],
        None,
    );
    s.wait_gone("ingress", "chat", Duration::from_secs(30))
        .await;
    // Only the orphan went: the rest of the cluster stays.
    assert!(s.get("service", "chat").is_some());
    assert!(s.get("statefulset", "chat").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_chatcluster_garbage_collects_everything() {
    let s = setup("gc", true).await;
    s.apply(&manifest("chat", 2, &IMAGE_A, Some(&s.ingress_host())));
    s.wait_ready("chat", READY_WITHIN).await;
    // Foreground: the ChatCluster goes only after its children (blockOwnerDeletion).
    s.kubectl_ok(
        &[
            "delete",
            "chatcluster",
            "chat",
            "--cascade=foreground",
            "--wait=true",
        ],
        None,
    );
    for (kind, name) in children("chat") {
        s.wait_gone(kind, &name, Duration::from_secs(60)).await;
    }
    let left = eventually(
        "the chat pods to be deleted",
        Duration::from_secs(60),
        || async {
            let out = s.kubectl_ok(
                &[
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/instance=chat",
                    "-o",
                    "name",
                ],
                None,
            );
            Ok(out.trim().is_empty().then_some(()))
        },
    )
    .await;
    assert!(left.is_ok(), "{left:?}");
}

/// resourceVersion of the ChatCluster and of each child and pod.
fn resource_versions(s: &Setup) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let kinds = "chatcluster,serviceaccount,configmap,statefulset,service,poddisruptionbudget,ingress,pod,pvc";
    let list: Value = serde_json::from_str(&s.kubectl_ok(&["get", kinds, "-o", "json"], None))
        .expect("list json");
    for item in list["items"].as_array().into_iter().flatten() {
        let key = format!(
            "{}/{}",
            item["kind"].as_str().unwrap_or_default(),
            item["metadata"]["name"].as_str().unwrap_or_default()
        );
        let rv = item["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        out.insert(key, rv.to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_operator_changes_nothing() {
    let mut s = setup("restart", true).await;
    s.apply(&manifest("chat", 2, &IMAGE_A, Some(&s.ingress_host())));
    s.wait_ready("chat", READY_WITHIN).await;
    // Let the first operator finish: its status at the fixed point, then no reconcile for
    // a while (so a reconcile triggered by the last child event has written, if at all).
    s.wait_rolled_out("chat").await;
    s.wait_operator_idle().await;
    s.stop_operator();
    let before = resource_versions(&s);
    assert!(before.len() >= 12, "{before:?}");

    s.start_new_operator("op-b").await;
    // Wait until the new operator has stopped reconciling (its watches' initial events
    // each bring one), so any write a late reconcile would make has landed.
    s.wait_operator_idle().await;
    let after = resource_versions(&s);
    let moved: Vec<String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", after.get(k)))
        .collect();
    assert!(
        moved.is_empty() && after.len() == before.len(),
        "an unchanged cluster was modified: {moved:?}{}",
        s.operator_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_operators_one_reconciles_and_the_standby_takes_over() {
    let lease_seconds = 6;
    let mut s = setup("leader", false).await;
    let mut a = s.start_operator("op-a", lease_seconds);
    let leader = eventually("op-a to lead", Duration::from_secs(30), || async {
        Ok(a.is_leader().then_some(()))
    })
    .await;
    assert!(leader.is_ok(), "{leader:?}\n{}", a.log_text());
    let b = s.start_operator("op-b", lease_seconds);
    s.apply(&manifest("chat", 1, &IMAGE_A, None));
    s.wait_ready("chat", READY_WITHIN).await;
    eventually("op-b to serve metrics", Duration::from_secs(10), || async {
        Ok(b.metric("chatcluster_operator_leader"))
    })
    .await
    .expect("standby metrics");
    assert!(!b.is_leader(), "two leaders");
    assert!(
        b.metric("chatcluster_reconciles_total").unwrap_or(0.0) == 0.0,
        "the standby reconciled"
    );
    let lease = s.get("lease", "chatcluster-operator").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "op-a");

    // SIGKILL: the leader cannot release the Lease; the standby waits for it to expire.
    a.kill();
    let killed = Instant::now();
    let took_over = eventually(
        "op-b to take over",
        Duration::from_secs(3 * lease_seconds),
        || async { Ok(b.is_leader().then_some(())) },
    )
    .await;
    assert!(took_over.is_ok(), "{took_over:?}\n{}", b.log_text());
    let waited = killed.elapsed();
    // The code promises: the Lease expires at most one lease duration after the last
    // renewal (before the kill), and the standby looks every lease/3. Allowed on top: one
    // more retry period for a retry that lands just before expiry, and 3 s for API and
    // scheduling latency on a loaded machine (this holds with two CPU burners alongside).
    let retry = Duration::from_secs(lease_seconds) / 3;
    let bound = Duration::from_secs(lease_seconds) + 2 * retry + Duration::from_secs(3);
    assert!(
        waited <= bound,
        "takeover took {waited:?}, more than the lease duration plus two retry periods and 3 s ({bound:?})"
    );
    eprintln!("standby took over {waited:?} after the leader was killed (lease {lease_seconds} s)");
    let lease = s.get("lease", "chatcluster-operator").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "op-b");
    // The new leader acts: a deleted child comes back.
    s.kubectl_ok(&["delete", "configmap", "chat-config", "--wait=true"], None);
    s.operator = Some(b);
    s.wait_exists("configmap", "chat-config", Duration::from_secs(30))
        .await;
}

/// The harness's own sanity check, so a broken cluster fails loudly and first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_serves_the_chatcluster_api() -> Result<()> {
    let cluster = shared_cluster()?;
    cluster.install_crds()?;
    let out = cluster.kubectl_ok(&["api-resources", "--api-group=chatcluster.dev"], None)?;
    if !out.contains("chatclusters") || !out.contains("chat ") {
        bail!("the CRD is not served with its short name:\n{out}");
    }
    let version = cluster.kubectl_ok(&["version", "-o", "json"], None)?;
    let v: Value = serde_json::from_str(&version).context("version json")?;
    let server = v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    if !server.starts_with("v1.") {
        bail!("unexpected server version {server:?}");
    }
    Ok(())
}

/// status.connections comes from the pods' own metrics. KWOK gives the simulated pod a
/// loopback IP; a real chat-server bound to that IP stands in for the container, so the
/// operator's scrape of `podIP:9090/metrics` reaches a real server (still on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_connections_counts_the_clients_of_every_pod() {
    let s = setup("connections", true).await;
    assert_eq!(
        pod_kind(&s.client).await.expect("nodes"),
        PodKind::Simulated,
        "this test binds stand-in servers to simulated pods' loopback IPs; on real pods \
         (kind) it is skipped by e2e/kind/run.sh"
    );
    s.apply(&manifest("chat", 2, &IMAGE_A, None));
    s.wait_ready("chat", READY_WITHIN).await;
    // One stand-in server per pod; 2 clients on chat-0 and 1 on chat-1.
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for (pod_name, users) in [("chat-0", &["ann", "ben"][..]), ("chat-1", &["cat"][..])] {
        let server = s.stand_in_for(pod_name).await;
        let url = format!("ws://{}/ws", server.public_addr);
        for user in users {
            let (ws, _, _) =
                chatcluster_e2e::clients::ws::connect(&url, &format!("user={user}"), None)
                    .await
                    .expect("client connects");
            clients.push(ws);
        }
        servers.push(server);
    }
    s.poke("chat");
    s.wait_connections("chat", 3).await;
    let table = s.kubectl_ok(&["get", "chat", "chat", "--no-headers"], None);
    let columns: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(columns.get(3), Some(&"3"), "CONNECTIONS column: {table}");
    drop(clients);
    drop(servers);
}

/// A pod that only looks like one of the cluster's (its labels, a name `NAME-5` whose
/// ordinal a scale-down would drain) but that the StatefulSet does not own gets nothing
/// from the operator: no `/admin/*` call with the admin token, no `/metrics` scrape, and
/// its claimed connections are not counted. What answers on its IP records every request
/// and claims 1,000 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_statefulset_does_not_own_never_gets_the_admin_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s = setup("impostor", true).await;
    assert_eq!(
        pod_kind(&s.client).await.expect("nodes"),
        PodKind::Simulated,
        "this test binds listeners to simulated pods' loopback IPs; on real pods (kind) it \
         is skipped by e2e/kind/run.sh"
    );
    s.apply(&manifest("tok", 1, &IMAGE_A, None));
    s.wait_ready("tok", READY_WITHIN).await;
    let server = s.stand_in_for("tok-0").await;
    let url = format!("ws://{}/ws", server.public_addr);
    let mut clients = Vec::new();
    for user in ["ann", "ben"] {
        let (ws, _, _) = chatcluster_e2e::clients::ws::connect(&url, &format!("user={user}"), None)
            .await
            .expect("client connects");
        clients.push(ws);
    }

    // The impostor: tok-0's labels and image under another name, controlled by something
    // else (as a Deployment's pods would be), so the StatefulSet does not adopt it.
    s.kubectl_ok(&["create", "configmap", "decoy"], None);
    let decoy = s.get("configmap", "decoy").expect("decoy");
    let real = s.get("pod", "tok-0").expect("tok-0");
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "tok-5",
            "labels": real["metadata"]["labels"],
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "decoy",
                "uid": decoy["metadata"]["uid"], "controller": true,
            }],
        },
        "spec": {"containers": [{"name": "chat", "image": real["spec"]["containers"][0]["image"]}]},
    });
    s.kubectl_ok(&["apply", "-f", "-"], Some(&pod.to_string()));
    let ip = eventually("tok-5 Ready with an IP", READY_WITHIN, || async {
        Ok(s.get("pod", "tok-5").and_then(|p| {
            let ready = condition(&p, "Ready").is_some_and(|c| c["status"] == "True");
            p["status"]["podIP"]
                .as_str()
                .filter(|ip| ready && ip.starts_with("127."))
                .map(str::to_owned)
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}{}", s.operator_log()));
    let listener = tokio::net::TcpListener::bind(format!("{ip}:9090"))
        .await
        .expect("the impostor's admin port");
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorded = requests.clone();
    let impostor = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            recorded
                .lock()
                .expect("requests")
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let body = "chat_connections 1000\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });

    // Reconciles after the impostor is up: each scrapes the pods and asks the ones a
    // scale-down would drain (ordinal 5 of 1) for their status, with the token.
    for _ in 0..3 {
        s.poke("tok");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    s.wait_connections("tok", 2).await;
    impostor.abort();
    let requests = requests.lock().expect("requests");
    assert!(
        requests.is_empty(),
        "the operator called a pod it does not own: {requests:?}"
    );
    drop(clients);
    drop(server);
}

/// A scale-down is an operator-driven drain: the StatefulSet keeps its 3 pods while the
/// two leaving ones (stand-in servers sharing a real Redis) are drained through their
/// admin port, their clients get reconnect notices and resume on the survivor, and only
/// then does `replicas` drop to 1. Every acknowledged message reaches every subscriber
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_drains_the_leaving_pods_before_the_statefulset_lets_them_go() {
    use chatcluster_e2e::clients::publisher::{run_publisher, PublisherLog};

    let s = setup("drain", true).await;
    let (_redis, _dir, mut servers) = s.three_stand_ins_sharing_redis(2, 20, 100).await;
    let ws = |i: usize| format!("ws://{}/ws", servers[i].public_addr);
    let rooms = vec!["room0".to_owned()];
    // Three subscribers on each leaving pod; each knows the survivor as its next address.
    let (logs, tasks, stop) = subscribers_joined(6, |i| vec![ws(1 + i % 2), ws(0)], &rooms).await;
    let publog = Arc::new(Mutex::new(PublisherLog::default()));
    let publisher = tokio::spawn(run_publisher(ws(0), rooms.clone(), 40, 300, publog.clone()));

    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=1"], None);
    let cc = s
        .wait_chat("Draining True", |cc| {
            condition(cc, "Draining").is_some_and(|c| c["status"] == "True")
        })
        .await;
    let draining = cc["status"]["draining"].to_string();
    assert!(
        draining.contains("chat-2") && draining.contains("chat-1"),
        "{draining}"
    );
    // The leaving pods are drained before the StatefulSet is lowered.
    let sts = s.get("statefulset", "chat").expect("statefulset");
    assert_eq!(
        sts["spec"]["replicas"], 3,
        "no pod goes before it is drained"
    );
    let lowered = eventually("the StatefulSet lowered to 1", READY_WITHIN, || async {
        Ok(s.get("statefulset", "chat")
            .filter(|st| st["spec"]["replicas"] == 1))
    })
    .await;
    assert!(lowered.is_ok(), "{lowered:?}{}", s.operator_log());
    // By then the leaving servers hold no connection and stay up, drained, until the
    // kubelet's SIGTERM.
    for server in &mut servers[1..] {
        let status = s.admin_status_of(server).await;
        assert_eq!(status["phase"], "drained", "{status}");
        assert_eq!(status["connections"], 0, "{status}");
        assert_eq!(status["drain"]["keep_running"], true, "{status}");
        remove_pod(server);
    }
    s.wait_event("DrainStarted").await;
    s.wait_event("DrainFinished").await;
    s.wait_chat("Draining False", |cc| {
        condition(cc, "Draining").is_some_and(|c| c["status"] == "False")
            && cc["status"]["draining"].is_null()
    })
    .await;

    publisher.await.expect("publisher task").expect("publisher");
    let acked = publog.lock().expect("log").acked.clone();
    assert_eq!(acked.values().map(|m| m.len()).sum::<usize>(), 300);
    for (i, l) in logs.iter().enumerate() {
        let l = l.lock().expect("log");
        assert!(l.reconnects >= 1, "sub{i} moved: {:?}", l.nodes_seen);
        assert_eq!(l.nodes_seen.last().map(String::as_str), Some("chat-0"));
    }
    every_subscriber_got_every_message_once(&acked, &logs, stop, tasks).await;
}

/// An operator restart mid-drain resumes from what the pods report: the drain under way
/// is not started again (same start, same connection count) and the new operator
/// finishes the scale-down when the pod is drained (here at its deadline, its clients
/// ignoring the notices).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_mid_drain_resumes_without_draining_twice() {
    let mut s = setup("drainrestart", true).await;
    let (_redis, _dir, mut servers) = s.three_stand_ins_sharing_redis(4, 20, 100).await;
    let url = format!("ws://{}/ws", servers[2].public_addr);
    let stubborn = connect_users(&url, "s", 2).await;
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=2"], None);
    s.wait_chat("Draining True", |cc| {
        condition(cc, "Draining").is_some_and(|c| c["status"] == "True")
    })
    .await;
    s.stop_operator();
    let before = s.admin_status_of(&servers[2]).await;
    assert_eq!(before["phase"], "draining", "{before}");
    s.start_new_operator("op-b").await;
    let after = s.admin_status_of(&servers[2]).await;
    assert_eq!(after["phase"], "draining", "{after}");
    assert_eq!(
        after["drain"]["connections_at_start"], before["drain"]["connections_at_start"],
        "the same drain"
    );
    assert!(
        after["drain"]["elapsed_ms"].as_u64() > before["drain"]["elapsed_ms"].as_u64(),
        "not restarted: {before} then {after}"
    );
    let lowered = eventually("the StatefulSet lowered to 2", READY_WITHIN, || async {
        Ok(s.get("statefulset", "chat")
            .filter(|st| st["spec"]["replicas"] == 2))
    })
    .await;
    assert!(lowered.is_ok(), "{lowered:?}{}", s.operator_log());
    let drained = s.admin_status_of(&servers[2]).await;
    assert_eq!(drained["phase"], "drained", "{drained}");
    remove_pod(&mut servers[2]);
    let log = s.operator_log();
    assert!(
        !log.contains("\"drain started\""),
        "the new operator started no drain: {log}"
    );
    s.wait_event("DrainFinished").await;
    drop(stubborn);
}

/// A scale back up while pods are draining cancels their drains: the operator undrains
/// the pods wanted again (they serve and are counted again) instead of replacing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_back_up_mid_drain_undrains_the_pods() {
    let s = setup("undrain", true).await;
    // A long window: the client on chat-2 is still there when the scale-up comes.
    let (_redis, _dir, servers) = s.three_stand_ins_sharing_redis(60, 90, 100).await;
    let url = format!("ws://{}/ws", servers[2].public_addr);
    let clients = connect_users(&url, "u", 2).await;
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=2"], None);
    s.wait_chat("Draining True for chat-2", |cc| {
        condition(cc, "Draining").is_some_and(|c| {
            c["status"] == "True" && c["message"].as_str().is_some_and(|m| m.contains("chat-2"))
        })
    })
    .await;
    assert_eq!(s.admin_status_of(&servers[2]).await["phase"], "draining");
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=3"], None);
    s.wait_event("Undrained").await;
    let status = s.admin_status_of(&servers[2]).await;
    assert_eq!(status["phase"], "serving", "{status}");
    s.wait_chat("Draining False at 3", |cc| {
        condition(cc, "Draining").is_some_and(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(
        s.get("statefulset", "chat").expect("statefulset")["spec"]["replicas"],
        3
    );
    // The server serves again: a new client is accepted.
    chatcluster_e2e::clients::ws::connect(&url, "user=late", None)
        .await
        .expect("an undrained server accepts clients");
    drop(clients);
}

/// The autoscaler reads `chat_connections` from every ready pod (stand-in servers on
/// the simulated pods' IPs), scales up in bounded steps, refuses to act on a partial
/// count, writes `spec.replicas` through /scale as its own field manager, and scales down
/// once the load is gone and the stabilization window has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_follows_the_pods_connection_counts() {
    let s = setup("autoscale", true).await;
    assert_eq!(
        pod_kind(&s.client).await.expect("nodes"),
        PodKind::Simulated,
        "stand-in servers need simulated pods' loopback IPs"
    );
    // 5 connections at 2 per pod need 3 pods; one step from 1 may only double.
    let (first, clients) = s.autoscaled_with_five_clients("").await;
    // The /scale write comes first, the status with lastScaleTime right after it.
    s.wait_chat("a scale-up from 1, with its lastScaleTime", |cc| {
        cc["spec"]["replicas"].as_i64().is_some_and(|r| r >= 2)
            && cc["status"]["lastScaleTime"].is_string()
    })
    .await;
    // chat-1 comes up with nothing answering on its IP: the count is partial, and the
    // autoscaler says so instead of scaling on it.
    let cc = s
        .wait_chat("ScalingActive False/NoData while chat-1 is silent", |cc| {
            condition(cc, "ScalingActive")
                .is_some_and(|c| c["status"] == "False" && c["reason"] == "NoData")
        })
        .await;
    let message = condition(&cc, "ScalingActive").expect("condition")["message"].to_string();
    assert!(message.contains("ready pods answered"), "{message}");
    let second = s.stand_in_for("chat-1").await;
    s.wait_chat("spec.replicas 3", |cc| cc["spec"]["replicas"] == 3)
        .await;
    let third = s.stand_in_for("chat-2").await;
    let cc = s
        .wait_chat("ScalingActive True at 3 replicas", |cc| {
            condition(cc, "ScalingActive").is_some_and(|c| c["status"] == "True")
                && cc["status"]["readyReplicas"] == 3
        })
        .await;
    assert_eq!(cc["status"]["desiredReplicas"], 3);
    // The write went through /scale under the autoscaler's own field manager.
    let managers = s.kubectl_ok(
        &[
            "get",
            "chatcluster",
            "chat",
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    );
    assert!(managers.contains("chatcluster-autoscaler"), "{managers}");
    assert_eq!(
        s.get("statefulset", "chat").expect("statefulset")["spec"]["replicas"],
        3
    );

    // Load gone: after the 5 s window the autoscaler comes down to minReplicas.
    drop(clients);
    s.wait_chat("spec.replicas 3 → 1 after the window", |cc| {
        cc["spec"]["replicas"] == 1
    })
    .await;
    for reason in ["AutoscaledUp", "AutoscaledDown"] {
        s.wait_event(reason).await;
    }
    // The first step was bounded: from 1 pod at most double, whatever the load asked.
    s.wait_event("spec.replicas 1 → 2 (ScaleUpLimited)").await;
    let metric = s
        .operator
        .as_ref()
        .and_then(|op| op.metric("chatcluster_autoscaler_decisions_total"));
    assert!(
        metric.is_some_and(|n| n > 0.0),
        "decisions counted: {metric:?}"
    );
    drop((first, second, third));
}

/// A real Prometheus discovers the simulated pods through `kubernetes_sd_configs` against
/// the real API server (pod role, the usual relabeling to `namespace` and `pod`), scrapes
/// the stand-in servers on their IPs, and the autoscaler reads the cluster's total from
/// Prometheus' query API with its default query: the load scales the cluster up, its end
/// scales it down after the window, and Prometheus going away stops scaling with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_follows_prometheus_scraping_the_pods() {
    let s = setup("autoscale-prom", true).await;
    assert_eq!(
        pod_kind(&s.client).await.expect("nodes"),
        PodKind::Simulated,
        "stand-in servers need simulated pods' loopback IPs"
    );
    // The pods (kubernetes_sd) and the operator's own /metrics, for the dashboard check.
    let operator_port = s.operator.as_ref().expect("operator").metrics_port;
    let config = format!(
        "{}  - job_name: operator\n    static_configs:\n      - targets: [\"127.0.0.1:{operator_port}\"]\n",
        chatcluster_e2e::harness::prometheus::pod_scrape_config(Some(&s.cluster.kubeconfig), &s.ns.name)
    );
    let binary =
        chatcluster_e2e::harness::prometheus::prometheus_binary().expect("Prometheus binary");
    let mut prometheus = Some(
        tokio::task::block_in_place(|| {
            chatcluster_e2e::harness::prometheus::PrometheusProcess::start(&binary, &config)
        })
        .expect("Prometheus starts"),
    );
    let prometheus_url = prometheus
        .as_ref()
        .map(|p| p.base_url.clone())
        .unwrap_or_default();
    let (first, clients) = s
        .autoscaled_with_five_clients(&format!("    prometheusUrl: {prometheus_url}\n"))
        .await;
    // 5 connections at 2 per pod: up to 3, through 2 (a step at most doubles). The new
    // pods need not answer: Prometheus' sum is the cluster's total either way.
    let cc = s
        .wait_chat("spec.replicas 3 from Prometheus", |cc| {
            cc["spec"]["replicas"] == 3
        })
        .await;
    let active = condition(&cc, "ScalingActive").expect("ScalingActive");
    assert!(
        active["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("Prometheus at {prometheus_url}"))),
        "{active}"
    );
    s.wait_event("spec.replicas 1 → 2 (ScaleUpLimited)").await;
    // Traffic for the dashboard's delivery and resume panels.
    let mut clients = clients;
    let mut room_epoch = None;
    for ws in clients.iter_mut() {
        let joined = chatcluster_e2e::clients::ws::join(ws, "dash", None)
            .await
            .expect("joined");
        room_epoch.get_or_insert(joined["epoch"].as_str().unwrap_or_default().to_owned());
    }
    for i in 0..5 {
        chatcluster_e2e::clients::ws::send_and_ack(
            &mut clients[0],
            "dash",
            "hello",
            &format!("r{i}"),
        )
        .await
        .expect("acked");
    }
    let epoch = room_epoch.unwrap_or_default();
    let (mut resumed, _, _) = chatcluster_e2e::clients::ws::connect(
        &format!("ws://{}/ws", first.public_addr),
        "user=resumer",
        None,
    )
    .await
    .expect("client connects");
    let rejoined = chatcluster_e2e::clients::ws::join(&mut resumed, "dash", Some((&epoch, 1)))
        .await
        .expect("resumed");
    assert_eq!(rejoined["recovered"], true, "{rejoined}");
    clients.push(resumed);

    drop(clients);
    s.wait_chat("spec.replicas 3 → 1 after the window", |cc| {
        cc["spec"]["replicas"] == 1
    })
    .await;

    dashboard_queries_return_data(&prometheus_url, &s.ns.name, "chat").await;

    // Prometheus gone: no data, so no scaling, and the condition says why.
    drop(prometheus.take());
    let cc = s
        .wait_chat("ScalingActive False/PrometheusUnavailable", |cc| {
            condition(cc, "ScalingActive")
                .is_some_and(|c| c["status"] == "False" && c["reason"] == "PrometheusUnavailable")
        })
        .await;
    assert_eq!(cc["spec"]["replicas"], 1);
    drop(first);
}

/// Runs every PromQL expression of the operator chart's Grafana dashboard against
/// Prometheus, with the dashboard's variables set to ChatCluster `namespace/name` (and
/// `$__rate_interval` to 5m), until each returns data: at least one series, and a finite
/// value where there is a single one. Bounded: 60 s.
async fn dashboard_queries_return_data(prometheus_url: &str, namespace: &str, name: &str) {
    use chatcluster_operator::autoscaling::{decision::Sample, sources::prometheus};
    let path = chatcluster_e2e::harness::binaries::repo_root()
        .join("charts/chatcluster-operator/dashboards/chatcluster.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard file"))
            .expect("dashboard JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 8, "every panel's expressions: {exprs:?}");
    let http = chatcluster_operator::http_client::HttpClient::new(Duration::from_secs(5), 1 << 20)
        .expect("HTTP client");
    for expr in exprs {
        let promql = expr
            .replace("$namespace", namespace)
            .replace("$chatcluster", name)
            .replace("$__rate_interval", "5m");
        assert!(!promql.contains('$'), "an unknown variable in {expr}");
        let answered = eventually(
            &format!("data for {promql}"),
            Duration::from_secs(60),
            || async {
                let sample = prometheus::query(&http, prometheus_url, &promql).await;
                Ok(match sample {
                    Ok(Sample::MultipleSeries { .. }) => Some(()),
                    Ok(Sample::Value { total, .. }) if total.is_finite() => Some(()),
                    _ => None,
                })
            },
        )
        .await;
        if let Err(e) = answered {
            panic!("a dashboard query returns no data: {e}");
        }
    }
}

/// `autoscaling.engine: keda` and `monitoring.podMonitor` against the real API server:
/// without their CRDs the ChatCluster is Degraded with a message naming what to install
/// (and its pods still run); once KEDA's and the Prometheus operator's own CRDs are
/// installed, the operator creates a ScaledObject and a PodMonitor the API server accepts
/// (validated against those CRDs' schemas), leaves the replica count to KEDA's HPA, and
/// deletes both when the spec stops asking for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_scaled_object_and_pod_monitor_are_created_only_where_served() {
    let s = setup("keda", true).await;
    let crds = [
        (
            "scaledobjects.keda.sh",
            optional_crd("keda.sh_scaledobjects.yaml"),
        ),
        (
            "podmonitors.monitoring.coreos.com",
            optional_crd("monitoring.coreos.com_podmonitors.yaml"),
        ),
    ];
    // Only this test installs them; a cluster kept from an earlier run may have them.
    for (name, _) in &crds {
        s.cluster
            .kubectl_ok(
                &["delete", "crd", name, "--ignore-not-found", "--wait"],
                None,
            )
            .expect("CRD deleted");
    }
    let spec = format!(
        "{}  autoscaling:\n    engine: keda\n    minReplicas: 1\n    maxReplicas: 4\n    \
         targetConnectionsPerPod: 250\n    scaleDownStabilizationSeconds: 60\n    \
         prometheusUrl: http://127.0.0.1:9\n  monitoring:\n    podMonitor:\n      \
         labels: {{release: prometheus}}\n      intervalSeconds: 20\n",
        manifest("chat", 1, &IMAGE_A, None)
    );
    s.apply(&spec);
    let cc = s
        .wait_chat("Degraded KedaNotInstalled", |cc| {
            condition(cc, "Degraded")
                .is_some_and(|c| c["status"] == "True" && c["reason"] == "KedaNotInstalled")
        })
        .await;
    let message = condition(&cc, "Degraded").expect("Degraded")["message"].to_string();
    assert!(message.contains("install KEDA"), "{message}");
    assert!(
        condition(&cc, "ScalingActive").is_some_and(|c| c["status"] == "False"),
        "{cc}"
    );
    assert!(
        s.get("statefulset", "chat").is_some(),
        "the pods run anyway"
    );

    for (name, file) in &crds {
        s.cluster
            .kubectl_ok(&["apply", "--server-side", "-f", file], None)
            .expect("CRD installed");
        s.cluster
            .kubectl_ok(
                &[
                    "wait",
                    "--for=condition=Established",
                    &format!("crd/{name}"),
                    "--timeout=60s",
                ],
                None,
            )
            .expect("CRD established");
    }
    // Discovery is asked again within 30 s; a Degraded cluster is looked at that often.
    let cc = s
        .wait_chat("ScalingActive KedaScaledObject, not Degraded", |cc| {
            condition(cc, "ScalingActive").is_some_and(|c| c["reason"] == "KedaScaledObject")
                && condition(cc, "Degraded").is_some_and(|c| c["status"] == "False")
        })
        .await;
    let uid = cc["metadata"]["uid"].clone();
    let scaled = s.get("scaledobject", "chat").expect("ScaledObject created");
    let so = &scaled["spec"];
    assert_eq!(so["scaleTargetRef"]["kind"], "ChatCluster", "{scaled}");
    assert_eq!(
        so["scaleTargetRef"]["apiVersion"],
        "chatcluster.dev/v1alpha1"
    );
    assert_eq!(so["scaleTargetRef"]["name"], "chat");
    assert_eq!(
        (so["minReplicaCount"].clone(), so["maxReplicaCount"].clone()),
        (1.into(), 4.into())
    );
    let trigger = &so["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metadata"]["threshold"], "250");
    assert_eq!(
        trigger["metadata"]["query"],
        format!(
            "sum(chat_connections{{namespace=\"{}\", pod=~\"chat-[0-9]+\"}})",
            s.ns.name
        )
    );
    assert_eq!(
        so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            ["stabilizationWindowSeconds"],
        60
    );
    assert_eq!(scaled["metadata"]["ownerReferences"][0]["uid"], uid);
    let monitor = s.get("podmonitor", "chat").expect("PodMonitor created");
    assert_eq!(
        monitor["metadata"]["labels"]["release"], "prometheus",
        "{monitor}"
    );
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["interval"], "20s");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "chat"
    );

    // KEDA's HPA scales through /scale; the operator's own loop stays out of it (with
    // no pod serving metrics here, the builtin engine would report NoData instead).
    s.kubectl_ok(&["scale", "chatcluster", "chat", "--replicas=3"], None);
    s.wait_chat("3 chat pods ready under KEDA", |cc| {
        cc["status"]["readyReplicas"] == 3
            && condition(cc, "ScalingActive").is_some_and(|c| c["reason"] == "KedaScaledObject")
    })
    .await;
    let cc = s.get("chatcluster", "chat").expect("ChatCluster");
    assert_eq!(
        cc["spec"]["replicas"], 3,
        "nobody but KEDA's HPA writes replicas"
    );

    // Back to the builtin engine, without monitoring: both objects go. (Its Prometheus
    // is the discard port on loopback: nothing answers, so nothing is scaled.)
    let builtin = spec
        .replace("    engine: keda\n", "    engine: builtin\n")
        .split("  monitoring:\n")
        .next()
        .expect("spec")
        .replace("  replicas: 1\n", "  replicas: 3\n");
    s.apply(&builtin);
    let gone = eventually(
        "the ScaledObject and PodMonitor deleted",
        READY_WITHIN,
        || async {
            Ok(
                (s.get("scaledobject", "chat").is_none() && s.get("podmonitor", "chat").is_none())
                    .then_some(()),
            )
        },
    )
    .await;
    if let Err(e) = gone {
        panic!("{e}{}", s.operator_log());
    }
}
