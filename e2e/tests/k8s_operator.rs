//! The operator against a real API server: the simulated control plane of
//! `e2e/k8s/start-cluster.sh` (kube-apiserver, kube-controller-manager, kube-scheduler,
//! etcd, KWOK) or any cluster named by `CHATCLUSTER_KUBECONFIG`.
//!
//! Each test gets its own namespace and its own operator process watching only that
//! namespace (with its Lease there), so tests are independent and may run in parallel.
//! On the simulated cluster every address dialled is on loopback: the API server, the
//! operator's metrics port, and stand-in servers on simulated pods' 127.10.x IPs. No
//! Service IP is ever dialled. The data-plane test (kind only) dials the ingress.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chatcluster_e2e::k8s::{
    condition, eventually, pod_kind, shared_cluster, OperatorOptions, OperatorProcess, PodKind,
    TestCluster, TestNamespace,
};
use chatcluster_e2e::lossless::{every_subscriber_got_every_message_once, subscribers_joined};
use chatcluster_e2e::server_process::workspace_binary;
use kube::Client;
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");

/// Everything one test needs: the cluster, an admin client, a namespace and (when asked
/// for) an operator watching that namespace.
struct Setup {
    cluster: &'static TestCluster,
    client: Client,
    ns: TestNamespace<'static>,
    operator: Option<OperatorProcess>,
}

async fn setup(tag: &str, with_operator: bool) -> Setup {
    let cluster = shared_cluster().expect("cluster");
    cluster.install_crds().expect("CRD installed");
    let client = cluster.client().await.expect("client");
    let ns = TestNamespace::create(cluster, &client, tag)
        .await
        .expect("namespace");
    let operator = with_operator.then(|| start_operator(cluster, &ns.name, "op-a", 15));
    Setup {
        cluster,
        client,
        ns,
        operator,
    }
}

fn start_operator(
    cluster: &TestCluster,
    ns: &str,
    identity: &str,
    lease_seconds: u64,
) -> OperatorProcess {
    let binary = workspace_binary(LOADGEN, "chatcluster-operator").expect("operator binary");
    OperatorProcess::start(
        &binary,
        cluster,
        &OperatorOptions {
            watch_namespace: ns,
            lease_namespace: ns,
            lease_name: "chatcluster-operator",
            lease_seconds,
            identity,
            kubeconfig: None,
            run_as: None,
        },
    )
    .expect("operator started")
}

impl Setup {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all, stdin).expect("kubectl runs")
    }

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.operator_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An Ingress host of this test's own: an ingress controller refuses two Ingresses
    /// with the same host and path.
    fn ingress_host(&self) -> String {
        format!("{}.e2e.example", self.ns.name)
    }

    fn operator_log(&self) -> String {
        match &self.operator {
            Some(op) => format!(
                "\n--- operator log ({}) ---\n{}",
                op.log.display(),
                op.log_text()
            ),
            None => String::new(),
        }
    }

    /// Stops this namespace's operator gracefully (it must exit 0).
    fn stop_operator(&mut self) {
        if let Some(mut op) = self.operator.take() {
            assert!(op.stop().is_some_and(|st| st.success()), "graceful exit");
        }
    }

    /// Starts another operator (`identity`) for this namespace and waits for its first
    /// reconcile.
    async fn start_new_operator(&mut self, identity: &str) {
        let op = start_operator(self.cluster, &self.ns.name, identity, 15);
        let reconciled = eventually(
            "the new operator to reconcile",
            Duration::from_secs(30),
            || async {
                Ok(op
                    .metric("chatcluster_reconciles_total")
                    .filter(|n| *n >= 1.0))
            },
        )
        .await;
        self.operator = Some(op);
        if let Err(e) = reconciled {
            panic!("{e}{}", self.operator_log());
        }
    }

    /// `kubectl get KIND NAME -o json`, or None when it does not exist.
    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.cluster
            .kubectl_json(&["-n", &self.ns.name, "get", kind, name, "-o", "json"])
    }

    fn apply(&self, manifest: &str) {
        self.kubectl_ok(&["apply", "-f", "-"], Some(manifest));
    }

    /// Waits until the ChatCluster is Ready for its current generation; returns it.
    async fn wait_ready(&self, name: &str, within: Duration) -> Value {
        let what = format!("ChatCluster {name} Ready at its generation");
        let result = eventually(&what, within, || async {
            let Some(cc) = self.get("chatcluster", name) else {
                return Ok(None);
            };
            let generation = cc["metadata"]["generation"].as_i64();
            let ready = condition(&cc, "Ready");
            let done = ready.is_some_and(|c| {
                c["status"] == "True" && c["observedGeneration"].as_i64() == generation
            }) && cc["status"]["observedGeneration"].as_i64() == generation;
            Ok(done.then_some(cc))
        })
        .await;
        match result {
            Ok(cc) => cc,
            Err(e) => panic!(
                "{e}\nlast seen: {}{}",
                self.get("chatcluster", name)
                    .map(|v| v["status"].to_string())
                    .unwrap_or_default(),
                self.operator_log()
            ),
        }
    }

    /// Waits until Progressing is False/RolloutComplete at the current generation: the
    /// status the operator writes no longer changes.
    async fn wait_rolled_out(&self, name: &str) {
        let what = format!("ChatCluster {name} rolled out at its generation");
        let done = eventually(&what, READY_WITHIN, || async {
            Ok(self.get("chatcluster", name).filter(|cc| {
                condition(cc, "Progressing").is_some_and(|c| {
                    c["reason"] == "RolloutComplete"
                        && c["observedGeneration"] == cc["metadata"]["generation"]
                })
            }))
        })
        .await;
        if let Err(e) = done {
            panic!("{e}{}", self.operator_log());
        }
    }

    /// Waits until the operator's reconcile count has not moved for two seconds (it
    /// requeues a Ready cluster only after 60 s), bounded by 60 s.
    async fn wait_operator_idle(&self) {
        let Some(op) = &self.operator else {
            return;
        };
        let quiet = Duration::from_secs(2);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = op.metric("chatcluster_reconciles_total");
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = op.metric("chatcluster_reconciles_total");
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
        panic!(
            "the operator kept reconciling for 60 s{}",
            self.operator_log()
        );
    }

    /// Waits until `kind/name` no longer exists.
    async fn wait_gone(&self, kind: &str, name: &str, within: Duration) {
        let what = format!("{kind}/{name} to be deleted");
        if let Err(e) = eventually(&what, within, || async {
            Ok(self.get(kind, name).is_none().then_some(()))
        })
        .await
        {
            panic!("{e}{}", self.operator_log());
        }
    }

    /// Waits until `kind/name` exists; returns it.
    async fn wait_exists(&self, kind: &str, name: &str, within: Duration) -> Value {
        let what = format!("{kind}/{name} to exist");
        match eventually(&what, within, || async { Ok(self.get(kind, name)) }).await {
            Ok(v) => v,
            Err(e) => panic!("{e}{}", self.operator_log()),
        }
    }
}

/// The chat-server container's `env` of StatefulSet `sts`, as JSON text to search.
fn chat_container_env(sts: &Value) -> String {
    sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string()
}

/// A ChatCluster with a managed Redis and an Ingress, small enough for a quick rollout.
fn manifest(name: &str, replicas: i32, image: &str, ingress_host: Option<&str>) -> String {
    let expose = ingress_host
        .map(|host| {
            format!("  expose:\n    ingress:\n      host: {host}\n      className: nginx\n")
        })
        .unwrap_or_default();
    format!(
        "apiVersion: chatcluster.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: {name}\n\
         spec:\n  replicas: {replicas}\n  image: {image}\n  imagePullPolicy: IfNotPresent\n\
         \x20 redis:\n    managed:\n      storage: 1Gi\n{expose}"
    )
}

/// The chat-server image of the test clusters: any name on simulated pods; on kind, the
/// image e2e/kind/run.sh built and loaded (`CHATCLUSTER_E2E_IMAGE`, and a second tag of it
/// in `CHATCLUSTER_E2E_IMAGE_B` for the rollout).
static IMAGE_A: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("CHATCLUSTER_E2E_IMAGE")
        .unwrap_or_else(|_| "ghcr.io/chatcluster/chat-server:0.1.0".into())
});
static IMAGE_B: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("CHATCLUSTER_E2E_IMAGE_B")
        .unwrap_or_else(|_| "ghcr.io/chatcluster/chat-server:0.1.1".into())
});
const READY_WITHIN: Duration = Duration::from_secs(90);

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
            "spec:\n  auth:\n    dmPolicy: everyone\n",
            "spec.auth.dmPolicy",
        ),
        (
            "spec:\n  limits:\n    dmPerSecond: 0\n",
            "limits.dmPerSecond must be at least 0.01",
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
        let out = s.kubectl_ok(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=ChatCluster,involvedObject.name=chat",
                "-o",
                "json",
            ],
            None,
        );
        let list: Value = serde_json::from_str(&out)?;
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

/// Waits until ChatCluster `name`'s Degraded condition has `reason`; returns its message.
async fn wait_degraded(s: &Setup, name: &str, reason: &str) -> String {
    let what = format!("Degraded/{reason} on {name}");
    let found = eventually(&what, READY_WITHIN, || async {
        Ok(s.get("chatcluster", name).and_then(|cc| {
            condition(&cc, "Degraded")
                .filter(|c| c["status"] == "True" && c["reason"] == reason)
                .and_then(|c| c["message"].as_str().map(str::to_owned))
        }))
    })
    .await;
    match found {
        Ok(message) => message,
        Err(e) => panic!(
            "{e}\nlast seen: {:?}{}",
            s.get("chatcluster", name).map(|c| c["status"].to_string()),
            s.operator_log()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_short_jwt_secret_is_degraded_naming_it_until_fixed() {
    let s = setup("jwt", true).await;
    let with_jwt = format!(
        "{}  auth:\n    allowAnonymous: false\n    jwtSecretName: chat-jwt\n",
        manifest("chat", 1, &IMAGE_A, None)
    );
    s.apply(&with_jwt);
    let message = wait_degraded(&s, "chat", "SecretMissing").await;
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
    let message = wait_degraded(&s, "chat", "SecretInvalid").await;
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
    let cc = wait_chat(&s, "spec.replicas clamped back to 2", |cc| {
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
    wait_event(&s, "spec.replicas 5 → 2").await;
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
    let token = secret_value(&s, "chat-admin", "token");
    let password = secret_value(&s, "chat-redis-auth", "password");
    assert_eq!(token.len(), 64, "a 32-byte random token, hex");
    assert_eq!(
        secret_value(&s, "chat-redis-auth", "redis.conf"),
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
    s.kubectl_ok(
        &[
            "annotate",
            "chatcluster",
            "chat",
            "e2e/poke=1",
            "--overwrite",
        ],
        None,
    );
    s.wait_exists("secret", "chat-admin", READY_WITHIN).await;
    assert_ne!(
        secret_value(&s, "chat-admin", "token"),
        token,
        "a new value"
    );
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
        secret_value(&s, "chat-redis-auth", "password"),
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
    let mut a = start_operator(s.cluster, &s.ns.name, "op-a", lease_seconds);
    let leader = eventually("op-a to lead", Duration::from_secs(30), || async {
        Ok(a.is_leader().then_some(()))
    })
    .await;
    assert!(leader.is_ok(), "{leader:?}\n{}", a.log_text());
    let b = start_operator(s.cluster, &s.ns.name, "op-b", lease_seconds);
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
        let server = stand_in_for(&s, pod_name).await;
        let url = format!("ws://{}/ws", server.public_addr);
        for user in users {
            let (ws, _, _) = chatcluster_e2e::client::connect(&url, &format!("user={user}"), None)
                .await
                .expect("client connects");
            clients.push(ws);
        }
        servers.push(server);
    }
    // Any change to the ChatCluster brings a reconcile (and a fresh scrape) now.
    s.kubectl_ok(
        &[
            "annotate",
            "chatcluster",
            "chat",
            "e2e/poke=1",
            "--overwrite",
        ],
        None,
    );
    let counted = eventually(
        "status.connections = 3",
        Duration::from_secs(30),
        || async {
            Ok(s.get("chatcluster", "chat")
                .filter(|c| c["status"]["connections"] == 3))
        },
    )
    .await;
    if let Err(e) = counted {
        panic!("{e}{}", s.operator_log());
    }
    let table = s.kubectl_ok(&["get", "chat", "chat", "--no-headers"], None);
    let columns: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(columns.get(3), Some(&"3"), "CONNECTIONS column: {table}");
    drop(clients);
    drop(servers);
}

/// A real chat-server standing in for simulated pod `pod`'s container: bound to the pod's
/// loopback IP, admin port 9090, so the operator's scrape of `podIP:9090/metrics` reaches
/// it. Waits for the pod to be Ready with an IP.
async fn stand_in_for(s: &Setup, pod: &str) -> chatcluster_e2e::server_process::ServerProcess {
    stand_in_with(s, pod, &[]).await
}

/// [`stand_in_for`] with extra chat-server flags.
async fn stand_in_with(
    s: &Setup,
    pod: &str,
    args: &[&str],
) -> chatcluster_e2e::server_process::ServerProcess {
    let what = format!("pod {pod} Ready with an IP");
    let ip = eventually(&what, READY_WITHIN, || async {
        Ok(s.get("pod", pod).and_then(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            p["status"]["podIP"]
                .as_str()
                .filter(|ip| ready && !ip.is_empty())
                .map(str::to_owned)
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}{}", s.operator_log()));
    assert!(ip.starts_with("127."), "{ip}");
    let binary = chatcluster_e2e::server_process::chat_server_binary(LOADGEN).expect("chat-server");
    // The simulated pod's IP may have belonged to a pod another test just removed, whose
    // stand-in is being stopped: try again for a few seconds.
    let started = eventually(
        "a chat-server on the pod's IP",
        Duration::from_secs(10),
        || async {
            Ok(chatcluster_e2e::server_process::ServerProcess::start_on(
                &binary,
                &format!("{ip}:0"),
                &format!("{ip}:9090"),
                args,
            )
            .ok())
        },
    )
    .await;
    started.unwrap_or_else(|e| panic!("{e}"))
}

/// What the kubelet does when the StatefulSet removes a pod: SIGTERM to its container.
/// A pod the operator drained exits at once, successfully.
fn remove_pod(server: &mut chatcluster_e2e::server_process::ServerProcess) {
    let status = chatcluster_e2e::cluster::terminate(&mut server.child, Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "a drained server exits 0 on SIGTERM at once: {status:?}"
    );
}

/// The value under `key` of Secret `name`, decoded.
fn secret_value(s: &Setup, name: &str, key: &str) -> String {
    let secret = s.get("secret", name).expect("Secret");
    let b64 = secret["data"][key].as_str().expect("key").to_owned();
    let out = std::process::Command::new("base64")
        .args(["-d"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64 -d");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// ChatCluster `chat` at 3 replicas with the given drain settings, and stand-in servers for its
/// pods that share one real Redis and the cluster's generated admin token (as the pods
/// get it from the Secret). Returns the Redis and the stand-ins, by ordinal.
async fn three_stand_ins_sharing_redis(
    s: &Setup,
    window_seconds: u32,
    deadline_seconds: u32,
    budget: u32,
) -> (
    chatcluster_e2e::cluster::RedisProcess,
    chatcluster_e2e::cluster::ScratchDir,
    Vec<chatcluster_e2e::server_process::ServerProcess>,
) {
    assert_eq!(
        pod_kind(&s.client).await.expect("nodes"),
        PodKind::Simulated,
        "stand-in servers need simulated pods' loopback IPs"
    );
    s.apply(&format!(
        "{}  drain:\n    reconnectWindowSeconds: {window_seconds}\n    deadlineSeconds: {deadline_seconds}\n    maxReconnectsPerSecond: {budget}\n",
        manifest("chat", 3, &IMAGE_A, None)
    ));
    s.wait_exists("secret", "chat-admin", READY_WITHIN).await;
    let token = secret_value(s, "chat-admin", "token");
    let dir = chatcluster_e2e::cluster::ScratchDir::new("drain-redis").expect("dir");
    let port = chatcluster_e2e::cluster::free_port().expect("port");
    let redis = chatcluster_e2e::cluster::RedisProcess::start(port, &dir.0).expect("redis-server");
    let url = redis.url();
    // What the pods' environment says (CHAT_DRAIN_*, from the spec).
    let (window, deadline) = (format!("{window_seconds}s"), format!("{deadline_seconds}s"));
    let mut servers = Vec::new();
    for i in 0..3 {
        let pod = format!("chat-{i}");
        let args = [
            "--redis-url",
            url.as_str(),
            "--admin-token",
            token.as_str(),
            "--node-name",
            pod.as_str(),
            "--drain-reconnect-window",
            window.as_str(),
            "--drain-deadline",
            deadline.as_str(),
        ];
        servers.push(stand_in_with(s, &pod, &args).await);
    }
    (redis, dir, servers)
}

/// `/admin/status` of a stand-in server, with the cluster's admin token.
async fn admin_status_of(
    s: &Setup,
    server: &chatcluster_e2e::server_process::ServerProcess,
) -> Value {
    let token = secret_value(s, "chat-admin", "token");
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "2", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{}/admin/status", server.admin_addr))
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A scale-down is an operator-driven drain: the StatefulSet keeps its 3 pods while the
/// two leaving ones (stand-in servers sharing a real Redis) are drained through their
/// admin port, their clients get reconnect notices and resume on the survivor, and only
/// then does `replicas` drop to 1. Every acknowledged message reaches every subscriber
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_drains_the_leaving_pods_before_the_statefulset_lets_them_go() {
    use chatcluster_e2e::client::{run_publisher, PublisherLog};
    use std::sync::{Arc, Mutex};

    let s = setup("drain", true).await;
    let (_redis, _dir, mut servers) = three_stand_ins_sharing_redis(&s, 2, 20, 100).await;
    let ws = |i: usize| format!("ws://{}/ws", servers[i].public_addr);
    let rooms = vec!["room0".to_owned()];
    // Three subscribers on each leaving pod; each knows the survivor as its next address.
    let (logs, tasks, stop) = subscribers_joined(6, |i| vec![ws(1 + i % 2), ws(0)], &rooms).await;
    let publog = Arc::new(Mutex::new(PublisherLog::default()));
    let publisher = tokio::spawn(run_publisher(ws(0), rooms.clone(), 40, 300, publog.clone()));

    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=1"], None);
    let cc = wait_chat(&s, "Draining True", |cc| {
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
        let status = admin_status_of(&s, server).await;
        assert_eq!(status["phase"], "drained", "{status}");
        assert_eq!(status["connections"], 0, "{status}");
        assert_eq!(status["drain"]["keep_running"], true, "{status}");
        remove_pod(server);
    }
    wait_event(&s, "DrainStarted").await;
    wait_event(&s, "DrainFinished").await;
    wait_chat(&s, "Draining False", |cc| {
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
    let (_redis, _dir, mut servers) = three_stand_ins_sharing_redis(&s, 4, 20, 100).await;
    let url = format!("ws://{}/ws", servers[2].public_addr);
    let mut stubborn = Vec::new();
    for i in 0..2 {
        let (ws, _, _) = chatcluster_e2e::client::connect(&url, &format!("user=s{i}"), None)
            .await
            .expect("client connects");
        stubborn.push(ws);
    }
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=2"], None);
    wait_chat(&s, "Draining True", |cc| {
        condition(cc, "Draining").is_some_and(|c| c["status"] == "True")
    })
    .await;
    s.stop_operator();
    let before = admin_status_of(&s, &servers[2]).await;
    assert_eq!(before["phase"], "draining", "{before}");
    s.start_new_operator("op-b").await;
    let after = admin_status_of(&s, &servers[2]).await;
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
    let drained = admin_status_of(&s, &servers[2]).await;
    assert_eq!(drained["phase"], "drained", "{drained}");
    remove_pod(&mut servers[2]);
    let log = s.operator_log();
    assert!(
        !log.contains("\"drain started\""),
        "the new operator started no drain: {log}"
    );
    wait_event(&s, "DrainFinished").await;
    drop(stubborn);
}

/// A scale back up while pods are draining cancels their drains: the operator undrains
/// the pods wanted again (they serve and are counted again) instead of replacing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_back_up_mid_drain_undrains_the_pods() {
    let s = setup("undrain", true).await;
    // A long window: the client on chat-2 is still there when the scale-up comes.
    let (_redis, _dir, servers) = three_stand_ins_sharing_redis(&s, 60, 90, 100).await;
    let url = format!("ws://{}/ws", servers[2].public_addr);
    let mut clients = Vec::new();
    for i in 0..2 {
        let (ws, _, _) = chatcluster_e2e::client::connect(&url, &format!("user=u{i}"), None)
            .await
            .expect("client connects");
        clients.push(ws);
    }
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=2"], None);
    wait_chat(&s, "Draining True for chat-2", |cc| {
        condition(cc, "Draining").is_some_and(|c| {
            c["status"] == "True" && c["message"].as_str().is_some_and(|m| m.contains("chat-2"))
        })
    })
    .await;
    assert_eq!(admin_status_of(&s, &servers[2]).await["phase"], "draining");
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=3"], None);
    wait_event(&s, "Undrained").await;
    let status = admin_status_of(&s, &servers[2]).await;
    assert_eq!(status["phase"], "serving", "{status}");
    wait_chat(&s, "Draining False at 3", |cc| {
        condition(cc, "Draining").is_some_and(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(
        s.get("statefulset", "chat").expect("statefulset")["spec"]["replicas"],
        3
    );
    // The server serves again: a new client is accepted.
    chatcluster_e2e::client::connect(&url, "user=late", None)
        .await
        .expect("an undrained server accepts clients");
    drop(clients);
}

/// Waits until an Event about ChatCluster `chat` contains `text` (Events are published
/// after the status write that follows the change, so they can trail it a little).
async fn wait_event(s: &Setup, text: &str) {
    let found = eventually(&format!("an Event with {text:?}"), READY_WITHIN, || async {
        let events = s.kubectl_ok(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=ChatCluster,involvedObject.name=chat",
                "-o",
                "json",
            ],
            None,
        );
        Ok(events.contains(text).then_some(()))
    })
    .await;
    if let Err(e) = found {
        panic!("{e}{}", s.operator_log());
    }
}

/// Waits until the ChatCluster satisfies `check`; returns it.
async fn wait_chat(s: &Setup, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    match eventually(what, READY_WITHIN, || async {
        Ok(s.get("chatcluster", "chat").filter(|cc| check(cc)))
    })
    .await
    {
        Ok(cc) => cc,
        Err(e) => panic!(
            "{e}\nlast seen: {:?}{}",
            s.get("chatcluster", "chat")
                .map(|c| c["status"].to_string()),
            s.operator_log()
        ),
    }
}

/// Applies ChatCluster `chat` at 1 replica with autoscaling 1–3, 2 connections per pod and
/// a 5 s scale-down window (plus `extra` autoscaling lines), starts a stand-in server for
/// `chat-0` and opens 5 client connections to it.
async fn autoscaled_with_five_clients(
    s: &Setup,
    extra: &str,
) -> (
    chatcluster_e2e::server_process::ServerProcess,
    Vec<chatcluster_e2e::client::Ws>,
) {
    let bounded = format!(
        "{}  autoscaling:\n    minReplicas: 1\n    maxReplicas: 3\n    targetConnectionsPerPod: 2\n    scaleDownStabilizationSeconds: 5\n{extra}",
        manifest("chat", 1, &IMAGE_A, None)
    );
    s.apply(&bounded);
    let first = stand_in_for(s, "chat-0").await;
    let url = format!("ws://{}/ws", first.public_addr);
    let mut clients = Vec::new();
    for i in 0..5 {
        let (ws, _, _) = chatcluster_e2e::client::connect(&url, &format!("user=u{i}"), None)
            .await
            .expect("client connects");
        clients.push(ws);
    }
    (first, clients)
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
    let (first, clients) = autoscaled_with_five_clients(&s, "").await;
    // The /scale write comes first, the status with lastScaleTime right after it.
    wait_chat(&s, "a scale-up from 1, with its lastScaleTime", |cc| {
        cc["spec"]["replicas"].as_i64().is_some_and(|r| r >= 2)
            && cc["status"]["lastScaleTime"].is_string()
    })
    .await;
    // chat-1 comes up with nothing answering on its IP: the count is partial, and the
    // autoscaler says so instead of scaling on it.
    let cc = wait_chat(
        &s,
        "ScalingActive False/NoData while chat-1 is silent",
        |cc| {
            condition(cc, "ScalingActive")
                .is_some_and(|c| c["status"] == "False" && c["reason"] == "NoData")
        },
    )
    .await;
    let message = condition(&cc, "ScalingActive").expect("condition")["message"].to_string();
    assert!(message.contains("ready pods answered"), "{message}");
    let second = stand_in_for(&s, "chat-1").await;
    wait_chat(&s, "spec.replicas 3", |cc| cc["spec"]["replicas"] == 3).await;
    let third = stand_in_for(&s, "chat-2").await;
    let cc = wait_chat(&s, "ScalingActive True at 3 replicas", |cc| {
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
    wait_chat(&s, "spec.replicas 3 → 1 after the window", |cc| {
        cc["spec"]["replicas"] == 1
    })
    .await;
    for reason in ["AutoscaledUp", "AutoscaledDown"] {
        wait_event(&s, reason).await;
    }
    // The first step was bounded: from 1 pod at most double, whatever the load asked.
    wait_event(&s, "spec.replicas 1 → 2 (ScaleUpLimited)").await;
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
        chatcluster_e2e::prometheus::pod_scrape_config(&s.cluster.kubeconfig, &s.ns.name)
    );
    let binary = chatcluster_e2e::prometheus::prometheus_binary().expect("Prometheus binary");
    let mut prometheus = Some(
        tokio::task::block_in_place(|| {
            chatcluster_e2e::prometheus::PrometheusProcess::start(&binary, &config)
        })
        .expect("Prometheus starts"),
    );
    let prometheus_url = prometheus
        .as_ref()
        .map(|p| p.base_url.clone())
        .unwrap_or_default();
    let (first, clients) =
        autoscaled_with_five_clients(&s, &format!("    prometheusUrl: {prometheus_url}\n")).await;
    // 5 connections at 2 per pod: up to 3, through 2 (a step at most doubles). The new
    // pods need not answer: Prometheus' sum is the cluster's total either way.
    let cc = wait_chat(&s, "spec.replicas 3 from Prometheus", |cc| {
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
    wait_event(&s, "spec.replicas 1 → 2 (ScaleUpLimited)").await;
    // Traffic for the dashboard's delivery and resume panels.
    let mut clients = clients;
    let mut room_epoch = None;
    for ws in clients.iter_mut() {
        let joined = chatcluster_e2e::client::join(ws, "dash", None)
            .await
            .expect("joined");
        room_epoch.get_or_insert(joined["epoch"].as_str().unwrap_or_default().to_owned());
    }
    for i in 0..5 {
        chatcluster_e2e::client::send_and_ack(&mut clients[0], "dash", "hello", &format!("r{i}"))
            .await
            .expect("acked");
    }
    let epoch = room_epoch.unwrap_or_default();
    let (mut resumed, _, _) = chatcluster_e2e::client::connect(
        &format!("ws://{}/ws", first.public_addr),
        "user=resumer",
        None,
    )
    .await
    .expect("client connects");
    let rejoined = chatcluster_e2e::client::join(&mut resumed, "dash", Some((&epoch, 1)))
        .await
        .expect("resumed");
    assert_eq!(rejoined["recovered"], true, "{rejoined}");
    clients.push(resumed);

    drop(clients);
    wait_chat(&s, "spec.replicas 3 → 1 after the window", |cc| {
        cc["spec"]["replicas"] == 1
    })
    .await;

    dashboard_queries_return_data(&prometheus_url, &s.ns.name, "chat").await;

    // Prometheus gone: no data, so no scaling, and the condition says why.
    drop(prometheus.take());
    let cc = wait_chat(&s, "ScalingActive False/PrometheusUnavailable", |cc| {
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
    use chatcluster_operator::autoscale::Sample;
    let path = chatcluster_e2e::k8s::repo_root()
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
                let sample =
                    chatcluster_operator::prometheus::query(&http, prometheus_url, &promql).await;
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

/// The CRDs of KEDA's ScaledObject and the Prometheus operator's PodMonitor, as
/// e2e/k8s/fetch-crds.sh took them from those projects' pinned releases.
fn optional_crd(file: &str) -> String {
    let dir = chatcluster_e2e::k8s::path_from_env_or_script(
        "CHATCLUSTER_OPTIONAL_CRDS",
        "e2e/k8s/fetch-crds.sh",
        &[],
    )
    .expect("the optional CRDs (e2e/k8s/fetch-crds.sh)");
    dir.join(file).display().to_string()
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
    let cc = wait_chat(&s, "Degraded KedaNotInstalled", |cc| {
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
    let cc = wait_chat(&s, "ScalingActive KedaScaledObject, not Degraded", |cc| {
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
    wait_chat(&s, "3 chat pods ready under KEDA", |cc| {
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
