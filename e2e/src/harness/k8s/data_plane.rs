//! The data-plane suite's set-up (`tests/k8s_data_plane.rs`): chat-server pods that the
//! cluster's own operator made, on a real kubelet, reached through a real ingress
//! controller (or a Gateway API Gateway) with the test's own host name; and the lossless
//! check of a disruption (resuming subscribers, a publisher, then every acknowledged
//! message exactly once). A failure shows the namespace's pods and the operator's log.
//!
//! `e2e/node/run-suite.sh` and `e2e/kind/run.sh` set what it reads from the environment:
//! `CHATCLUSTER_E2E_INGRESS`, `CHATCLUSTER_E2E_GATEWAY(_ADDRESS)`,
//! `CHATCLUSTER_E2E_IMAGE(_B)`, `CHATCLUSTER_E2E_REDIS_IMAGE`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{
    condition, pod_kind, ready_at_generation, shared_cluster, PodKind, TestCluster, TestNamespace,
};
use super::disruption::Disruption;
use crate::clients::lossless::{every_subscriber_got_every_message_once, subscribers_joined};
use crate::clients::publisher::{run_publisher, PublisherLog};
use crate::clients::ws::{connect, resolve_host};
use crate::wait::eventually;

/// Where the chart installed the operator.
const OPERATOR_NAMESPACE: &str = "chatcluster-system";

pub const READY_WITHIN: Duration = Duration::from_secs(180);

/// The tests' drain: short, so scale-downs and rollouts are quick.
pub const TEST_DRAIN: &str =
    "    reconnectWindowSeconds: 3\n    deadlineSeconds: 15\n    preStopSeconds: 2\n";

/// `var` from the environment the suite's runner sets; panics naming the runners
/// without it.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run this suite through e2e/node/run-suite.sh or e2e/kind/run.sh")
    })
}

/// The chat-server image (`CHATCLUSTER_E2E_IMAGE`).
pub fn image_a() -> String {
    env("CHATCLUSTER_E2E_IMAGE")
}

/// How clients reach the pods: an Ingress of class "nginx", or an HTTPRoute attached to
/// the test Gateway with cookie session persistence.
#[derive(Clone, Copy, PartialEq)]
pub enum Front {
    Ingress,
    Gateway,
}

/// One test's cluster, namespace, front and host name.
pub struct Setup {
    pub cluster: &'static TestCluster,
    pub ns: TestNamespace<'static>,
    pub host: String,
    pub front: Front,
}

/// `address:port` from `var` (kind's `localhost:PORT` form resolved).
fn socket_address(var: &str) -> SocketAddr {
    let value = env(var);
    std::net::ToSocketAddrs::to_socket_addrs(&value)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("{var}={value}: expected address:port"))
}

impl Setup {
    /// A namespace `e2e-TAG-PID` on a cluster with real pods, and the host `NS.e2e.test`
    /// that this process's clients connect to through `front`.
    pub async fn new(tag: &str, front: Front) -> Setup {
        let cluster = shared_cluster().expect("cluster");
        let client = cluster.client().await.expect("client");
        assert_eq!(
            pod_kind(&client).await.expect("nodes"),
            PodKind::Real,
            "the data-plane suite needs real pods"
        );
        let ns = TestNamespace::create(cluster, &client, tag)
            .await
            .expect("namespace");
        let host = format!("{}.e2e.test", ns.name);
        let address = socket_address(match front {
            Front::Ingress => "CHATCLUSTER_E2E_INGRESS",
            Front::Gateway => "CHATCLUSTER_E2E_GATEWAY_ADDRESS",
        });
        resolve_host(&host, address);
        Setup {
            cluster,
            ns,
            host,
            front,
        }
    }

    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.ns
            .kubectl_ok(args, stdin)
            .unwrap_or_else(|e| panic!("{e:#}{}", self.diagnostics()))
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.ns.get(kind, name)
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.host)
    }

    /// The operator's recent log and this namespace's pods, for a failure message.
    pub fn diagnostics(&self) -> String {
        let text = |args: &[&str]| self.cluster.kubectl_text(args);
        format!(
            "\n--- pods ---\n{}\n--- operator log ---\n{}",
            text(&["-n", &self.ns.name, "get", "pods", "-o", "wide"]),
            text(&[
                "-n",
                OPERATOR_NAMESPACE,
                "logs",
                "deploy/chatcluster-operator",
                "--tail",
                "40"
            ])
        )
    }

    /// A ChatCluster exposed through the test's front (an Ingress of class "nginx":
    /// ingress-nginx, or Traefik's ingress-nginx provider; or an HTTPRoute with cookie
    /// session persistence on the test Gateway), with a short drain so scale-downs are
    /// quick.
    pub fn apply_chat(&self, replicas: i32, image: &str, persistence: bool) {
        self.apply_chat_with(replicas, image, persistence, "");
    }

    /// [`Setup::apply_chat`] with more of the spec (`extra`: YAML lines under `spec:`).
    pub fn apply_chat_with(&self, replicas: i32, image: &str, persistence: bool, extra: &str) {
        self.apply_chat_drained(replicas, image, persistence, TEST_DRAIN, extra);
    }

    /// [`Setup::apply_chat_with`] with its own `drain:` fields (`drain`: YAML lines under
    /// `drain:`).
    pub fn apply_chat_drained(
        &self,
        replicas: i32,
        image: &str,
        persistence: bool,
        drain: &str,
        extra: &str,
    ) {
        self.apply_chat_full(replicas, image, persistence, drain, extra, "");
    }

    /// [`Setup::apply_chat_drained`] with more of the managed Redis (`redis`: YAML lines
    /// under `redis.managed:`).
    pub fn apply_chat_full(
        &self,
        replicas: i32,
        image: &str,
        persistence: bool,
        drain: &str,
        extra: &str,
        redis: &str,
    ) {
        let redis_image = std::env::var("CHATCLUSTER_E2E_REDIS_IMAGE")
            .map(|i| format!("      image: {i}\n"))
            .unwrap_or_default();
        let expose = match self.front {
            Front::Ingress => format!(
                "    ingress:\n      host: {}\n      className: nginx\n",
                self.host
            ),
            Front::Gateway => {
                let gateway = env("CHATCLUSTER_E2E_GATEWAY");
                let (namespace, name) = gateway
                    .split_once('/')
                    .expect("CHATCLUSTER_E2E_GATEWAY is namespace/name");
                format!(
                    "    httpRoute:\n      gatewayName: {name}\n      gatewayNamespace: {namespace}\n\
                     \x20     hostnames: [{}]\n      sessionPersistence: true\n",
                    self.host
                )
            }
        };
        let manifest = format!(
            "apiVersion: chatcluster.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: chat\n\
             spec:\n  replicas: {replicas}\n  image: {image}\n  imagePullPolicy: IfNotPresent\n\
             \x20 redis:\n    managed:\n{redis_image}      persistence: {persistence}\n{redis}\
             \x20 expose:\n{expose}\
             \x20 drain:\n{drain}\
             \x20 limits:\n    messagesPerSecond: 100\n    burst: 100\n{extra}"
        );
        self.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    }

    /// Waits until the ChatCluster is Ready at its generation with `replicas` ready pods
    /// and the ingress routes to it; returns the ChatCluster.
    pub async fn wait_ready(&self, replicas: i64, within: Duration) -> Value {
        let result = eventually("ChatCluster chat Ready", within, || async {
            let Some(cc) = self.get("chatcluster", "chat") else {
                return Ok(None);
            };
            let done = ready_at_generation(&cc)
                && cc["status"]["readyReplicas"].as_i64() == Some(replicas);
            Ok(done.then_some(cc))
        })
        .await;
        let cc = result.unwrap_or_else(|e| {
            panic!(
                "{e}\nlast seen: {}{}",
                self.get("chatcluster", "chat")
                    .map(|v| v["status"].to_string())
                    .unwrap_or_default(),
                self.diagnostics()
            )
        });
        // The ingress controller learns of endpoints on its own schedule: wait until
        // cookie-less clients have reached every pod.
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + within;
        while (seen.len() as i64) < replicas && Instant::now() < deadline {
            match connect(&self.url(), "user=probe", None).await {
                Ok((_ws, _, w)) => {
                    seen.insert(w["node"].as_str().unwrap_or_default().to_owned());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        assert!(
            seen.len() as i64 >= replicas,
            "the ingress did not route to every pod within {within:?} (reached {seen:?}){}",
            self.diagnostics()
        );
        cc
    }

    /// Names of this cluster's chat-server pods that are Ready.
    pub fn ready_pods(&self) -> Vec<String> {
        let Some(list) = self.cluster.kubectl_json(&[
            "-n",
            &self.ns.name,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=chat-server",
            "-o",
            "json",
        ]) else {
            return Vec::new();
        };
        list["items"]
            .as_array()
            .map(|pods| {
                pods.iter()
                    .filter(|p| {
                        p["metadata"]["deletionTimestamp"].is_null()
                            && condition(p, "Ready").is_some_and(|c| c["status"] == "True")
                    })
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How often `pod`'s chat-server container was restarted.
    pub fn container_restarts(&self, pod: &str) -> i64 {
        self.get("pod", pod)
            .and_then(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64())
            .unwrap_or(0)
    }

    /// Kills `pod`'s containerd shim on this node (see
    /// [`kill_container_shim`](crate::harness::node::kill_container_shim)).
    pub fn kill_container_shim(&self, pod: &str) {
        let uid = self
            .get("pod", pod)
            .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
            .expect("pod uid");
        crate::harness::node::kill_container_shim(pod, &uid);
    }

    /// Publishes `total` messages over two rooms at `rate`/s while six resuming
    /// subscribers listen; runs `disrupt` once a tenth are acknowledged, then checks that
    /// every subscriber got every acknowledged message exactly once, in order. Returns
    /// where the subscribers went ([`Disruption`]).
    pub async fn lossless_through<F, Fut>(
        &self,
        tag: &str,
        total: usize,
        rate: u32,
        disrupt: F,
    ) -> Disruption
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let url = self.url();
        let rooms: Vec<String> = (0..2).map(|i| format!("{tag}{i}")).collect();
        let (logs, tasks, stop) = subscribers_joined(6, |_| vec![url.clone()], &rooms).await;
        let (publisher, publog) = self.publishing(&url, &rooms, rate, total).await;
        disrupt().await;
        publisher.await.expect("publisher task").expect("publisher");
        let acked = publog.lock().expect("log").acked.clone();
        assert_eq!(
            acked.values().map(|m| m.len()).sum::<usize>(),
            total,
            "every message acknowledged: {:?}",
            publog.lock().expect("log").errors
        );
        every_subscriber_got_every_message_once(&acked, &logs, stop, tasks).await;
        // Read once the subscribers have stopped: every reconnect is counted.
        Disruption::from_logs(&logs)
    }

    /// A publisher task sending `total` messages over `rooms` at `rate`/s, returned once
    /// a tenth are acknowledged (traffic is flowing), with its log.
    pub async fn publishing(
        &self,
        url: &str,
        rooms: &[String],
        rate: u32,
        total: usize,
    ) -> (
        tokio::task::JoinHandle<anyhow::Result<()>>,
        Arc<Mutex<PublisherLog>>,
    ) {
        let publog = Arc::new(Mutex::new(PublisherLog::default()));
        let publisher = tokio::spawn(run_publisher(
            url.to_owned(),
            rooms.to_vec(),
            rate,
            total,
            publog.clone(),
        ));
        let flowing = eventually(
            "the publisher's first acks",
            Duration::from_secs(30),
            || async {
                let acked: usize = publog
                    .lock()
                    .map_or(0, |l| l.acked.values().map(|room| room.len()).sum());
                Ok((acked >= total / 10).then_some(()))
            },
        )
        .await;
        assert!(flowing.is_ok(), "{flowing:?}{}", self.diagnostics());
        (publisher, publog)
    }
}

/// The figures a lossless test reports (docs/kubernetes-e2e.md quotes them).
pub fn report(what: &str, started: Instant, d: &Disruption) {
    println!(
        "data-plane figure: {what}: 0 lost, 0 duplicated; longest time a subscriber had no \
         connection {} ms; {} reconnects; {:.1} s in all",
        d.longest.as_millis(),
        d.reconnects,
        started.elapsed().as_secs_f64()
    );
}
