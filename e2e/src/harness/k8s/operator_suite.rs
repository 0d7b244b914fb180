//! The operator suite's set-up (`tests/k8s_operator.rs`): per test, a namespace on the
//! shared cluster and its own operator process watching only that namespace (with its
//! Lease there), the ChatCluster manifests it applies, and the waits on what the operator
//! writes. A failed wait panics with the operator's log.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;

use super::cluster::{condition, ready_at_generation, shared_cluster, TestCluster, TestNamespace};
use super::operator::{OperatorOptions, OperatorProcess};
use crate::harness::binaries::workspace_binary;
use crate::wait::eventually;

/// The chat-server image of the test clusters: any name on simulated pods; on kind, the
/// image e2e/kind/run.sh built and loaded (`CHATCLUSTER_E2E_IMAGE`, and a second tag of it
/// in `CHATCLUSTER_E2E_IMAGE_B` for the rollout).
pub static IMAGE_A: LazyLock<String> = LazyLock::new(|| {
    std::env::var("CHATCLUSTER_E2E_IMAGE")
        .unwrap_or_else(|_| "ghcr.io/chatcluster/chat-server:0.1.0".into())
});
pub static IMAGE_B: LazyLock<String> = LazyLock::new(|| {
    std::env::var("CHATCLUSTER_E2E_IMAGE_B")
        .unwrap_or_else(|_| "ghcr.io/chatcluster/chat-server:0.1.1".into())
});
pub const READY_WITHIN: Duration = Duration::from_secs(90);

/// A ChatCluster with a managed Redis and an Ingress, small enough for a quick rollout.
pub fn manifest(name: &str, replicas: i32, image: &str, ingress_host: Option<&str>) -> String {
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

/// Everything one test needs: the cluster, an admin client, a namespace and (when asked
/// for) an operator watching that namespace.
pub struct Setup {
    pub cluster: &'static TestCluster,
    pub client: Client,
    pub ns: TestNamespace<'static>,
    pub operator: Option<OperatorProcess>,
    /// A binary of the test's build (`CARGO_BIN_EXE_chat-loadgen`): the operator and
    /// chat-server binaries are found next to it.
    pub sibling: &'static str,
}

impl Setup {
    /// A namespace `e2e-TAG-PID` with the CRD installed, and an operator for it when
    /// `with_operator`. `sibling` is a binary of the test's build.
    pub async fn new(sibling: &'static str, tag: &str, with_operator: bool) -> Setup {
        let cluster = shared_cluster().expect("cluster");
        cluster.install_crds().expect("CRD installed");
        let client = cluster.client().await.expect("client");
        let ns = TestNamespace::create(cluster, &client, tag)
            .await
            .expect("namespace");
        let operator =
            with_operator.then(|| start_operator(sibling, cluster, &ns.name, "op-a", 15));
        Setup {
            cluster,
            client,
            ns,
            operator,
            sibling,
        }
    }

    /// Another operator process for this namespace (`identity`, with a Lease of
    /// `lease_seconds`), not kept in [`Setup::operator`].
    pub fn start_operator(&self, identity: &str, lease_seconds: u64) -> OperatorProcess {
        start_operator(
            self.sibling,
            self.cluster,
            &self.ns.name,
            identity,
            lease_seconds,
        )
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        self.ns.kubectl(args, stdin).expect("kubectl runs")
    }

    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
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
    pub fn ingress_host(&self) -> String {
        format!("{}.e2e.example", self.ns.name)
    }

    pub fn operator_log(&self) -> String {
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
    pub fn stop_operator(&mut self) {
        if let Some(mut op) = self.operator.take() {
            assert!(op.stop().is_some_and(|st| st.success()), "graceful exit");
        }
    }

    /// Starts another operator (`identity`) for this namespace and waits for its first
    /// reconcile.
    pub async fn start_new_operator(&mut self, identity: &str) {
        let op = self.start_operator(identity, 15);
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
    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.ns.get(kind, name)
    }

    pub fn apply(&self, manifest: &str) {
        self.kubectl_ok(&["apply", "-f", "-"], Some(manifest));
    }

    /// Waits until the ChatCluster is Ready for its current generation; returns it.
    pub async fn wait_ready(&self, name: &str, within: Duration) -> Value {
        let what = format!("ChatCluster {name} Ready at its generation");
        let result = eventually(&what, within, || async {
            let Some(cc) = self.get("chatcluster", name) else {
                return Ok(None);
            };
            Ok(ready_at_generation(&cc).then_some(cc))
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
    pub async fn wait_rolled_out(&self, name: &str) {
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
    pub async fn wait_operator_idle(&self) {
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
    pub async fn wait_gone(&self, kind: &str, name: &str, within: Duration) {
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
    pub async fn wait_exists(&self, kind: &str, name: &str, within: Duration) -> Value {
        let what = format!("{kind}/{name} to exist");
        match eventually(&what, within, || async { Ok(self.get(kind, name)) }).await {
            Ok(v) => v,
            Err(e) => panic!("{e}{}", self.operator_log()),
        }
    }

    /// Waits until ChatCluster `name`'s Degraded condition has `reason`; returns its
    /// message.
    pub async fn wait_degraded(&self, name: &str, reason: &str) -> String {
        let what = format!("Degraded/{reason} on {name}");
        let found = eventually(&what, READY_WITHIN, || async {
            Ok(self.get("chatcluster", name).and_then(|cc| {
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
                self.get("chatcluster", name)
                    .map(|c| c["status"].to_string()),
                self.operator_log()
            ),
        }
    }

    /// Waits until an Event about ChatCluster `chat` contains `text` (Events are
    /// published after the status write that follows the change, so they can trail it a
    /// little).
    pub async fn wait_event(&self, text: &str) {
        let found = eventually(&format!("an Event with {text:?}"), READY_WITHIN, || async {
            Ok(self.chat_events().contains(text).then_some(()))
        })
        .await;
        if let Err(e) = found {
            panic!("{e}{}", self.operator_log());
        }
    }

    /// The Events about ChatCluster `chat`, as kubectl's JSON list.
    pub fn chat_events(&self) -> String {
        self.kubectl_ok(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=ChatCluster,involvedObject.name=chat",
                "-o",
                "json",
            ],
            None,
        )
    }

    /// Waits until ChatCluster `chat` satisfies `check`; returns it.
    pub async fn wait_chat(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        match eventually(what, READY_WITHIN, || async {
            Ok(self.get("chatcluster", "chat").filter(|cc| check(cc)))
        })
        .await
        {
            Ok(cc) => cc,
            Err(e) => panic!(
                "{e}\nlast seen: {:?}{}",
                self.get("chatcluster", "chat")
                    .map(|c| c["status"].to_string()),
                self.operator_log()
            ),
        }
    }

    /// Annotates ChatCluster `name` (`e2e/poke=N`, a new N each time): any change brings
    /// a reconcile, and with it a fresh scrape of the pods, now.
    pub fn poke(&self, name: &str) {
        static POKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = POKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.kubectl_ok(
            &[
                "annotate",
                "chatcluster",
                name,
                &format!("e2e/poke={n}"),
                "--overwrite",
            ],
            None,
        );
    }

    /// Waits until ChatCluster `name`'s `status.connections` is `n`; panics with the
    /// status and the operator's log after 30 s.
    pub async fn wait_connections(&self, name: &str, n: i64) {
        let counted = eventually(
            &format!("status.connections = {n}"),
            Duration::from_secs(30),
            || async {
                Ok(self
                    .get("chatcluster", name)
                    .filter(|c| c["status"]["connections"] == n))
            },
        )
        .await;
        if let Err(e) = counted {
            let status = self.get("chatcluster", name).map(|c| c["status"].clone());
            panic!("{e}: {status:?}{}", self.operator_log());
        }
    }

    /// The value under `key` of Secret `name`, decoded.
    pub fn secret_value(&self, name: &str, key: &str) -> String {
        self.ns.secret_value(name, key)
    }
}

/// An operator process for namespace `ns` (its Lease there too), found next to
/// `sibling`.
fn start_operator(
    sibling: &str,
    cluster: &TestCluster,
    ns: &str,
    identity: &str,
    lease_seconds: u64,
) -> OperatorProcess {
    let binary = workspace_binary(sibling, "chatcluster-operator").expect("operator binary");
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
