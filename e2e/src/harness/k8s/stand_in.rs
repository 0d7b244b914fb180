//! Stand-in servers for the operator suite: KWOK gives a simulated pod a loopback IP,
//! and a real chat-server bound to that IP stands in for the pod's container, so what the
//! operator asks of its pods (`podIP:9090/metrics`, the drain calls on the admin port)
//! reaches a real server, still on loopback.

use std::time::Duration;

use serde_json::Value;

use super::cluster::{condition, pod_kind, PodKind};
use super::operator_suite::{manifest, Setup, IMAGE_A, READY_WITHIN};
use crate::clients::ws::{connect_users, Ws};
use crate::harness::binaries::chat_server_binary;
use crate::harness::http;
use crate::harness::process::{free_port, terminate, ScratchDir};
use crate::harness::redis::RedisProcess;
use crate::harness::server_process::ServerProcess;
use crate::wait::eventually;

impl Setup {
    /// A real chat-server standing in for simulated pod `pod`'s container: bound to the
    /// pod's loopback IP, admin port 9090, so the operator's scrape of
    /// `podIP:9090/metrics` reaches it. Waits for the pod to be Ready with an IP.
    pub async fn stand_in_for(&self, pod: &str) -> ServerProcess {
        self.stand_in_with(pod, &[]).await
    }

    /// [`Setup::stand_in_for`] with extra chat-server flags.
    pub async fn stand_in_with(&self, pod: &str, args: &[&str]) -> ServerProcess {
        let what = format!("pod {pod} Ready with an IP");
        let ip = eventually(&what, READY_WITHIN, || async {
            Ok(self.get("pod", pod).and_then(|p| {
                let ready = condition(&p, "Ready").is_some_and(|c| c["status"] == "True");
                p["status"]["podIP"]
                    .as_str()
                    .filter(|ip| ready && !ip.is_empty())
                    .map(str::to_owned)
            }))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}{}", self.operator_log()));
        assert!(ip.starts_with("127."), "{ip}");
        let binary = chat_server_binary(self.sibling).expect("chat-server");
        // The simulated pod's IP may have belonged to a pod another test just removed,
        // whose stand-in is being stopped: try again for a few seconds.
        let started = eventually(
            "a chat-server on the pod's IP",
            Duration::from_secs(10),
            || async {
                Ok(ServerProcess::start_on(
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

    /// ChatCluster `chat` at 3 replicas with the given drain settings, and stand-in
    /// servers for its pods that share one real Redis and the cluster's generated admin
    /// token (as the pods get it from the Secret). Returns the Redis and the stand-ins,
    /// by ordinal.
    pub async fn three_stand_ins_sharing_redis(
        &self,
        window_seconds: u32,
        deadline_seconds: u32,
        budget: u32,
    ) -> (RedisProcess, ScratchDir, Vec<ServerProcess>) {
        assert_eq!(
            pod_kind(&self.client).await.expect("nodes"),
            PodKind::Simulated,
            "stand-in servers need simulated pods' loopback IPs"
        );
        self.apply(&format!(
            "{}  drain:\n    reconnectWindowSeconds: {window_seconds}\n    deadlineSeconds: {deadline_seconds}\n    maxReconnectsPerSecond: {budget}\n",
            manifest("chat", 3, &IMAGE_A, None)
        ));
        self.wait_exists("secret", "chat-admin", READY_WITHIN).await;
        let token = self.secret_value("chat-admin", "token");
        let dir = ScratchDir::new("drain-redis").expect("dir");
        let port = free_port().expect("port");
        let redis = RedisProcess::start(port, &dir.0).expect("redis-server");
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
            servers.push(self.stand_in_with(&pod, &args).await);
        }
        (redis, dir, servers)
    }

    /// `/admin/status` of a stand-in server, with the cluster's admin token; `null` when
    /// it does not answer, or answers an HTTP error, within 2 s.
    pub async fn admin_status_of(&self, server: &ServerProcess) -> Value {
        let token = self.secret_value("chat-admin", "token");
        let opts = http::Options {
            bearer: Some(&token),
            timeout: Some(Duration::from_secs(2)),
            ..http::Options::default()
        };
        match http::request(server.admin_addr, "GET", "/admin/status", opts) {
            Some(r) if r.status < 400 => serde_json::from_str(&r.body).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Applies ChatCluster `chat` at 1 replica with autoscaling 1–3, 2 connections per
    /// pod and a 5 s scale-down window (plus `extra` autoscaling lines), starts a
    /// stand-in server for `chat-0` and opens 5 client connections to it.
    pub async fn autoscaled_with_five_clients(&self, extra: &str) -> (ServerProcess, Vec<Ws>) {
        let bounded = format!(
            "{}  autoscaling:\n    minReplicas: 1\n    maxReplicas: 3\n    targetConnectionsPerPod: 2\n    scaleDownStabilizationSeconds: 5\n{extra}",
            manifest("chat", 1, &IMAGE_A, None)
        );
        self.apply(&bounded);
        let first = self.stand_in_for("chat-0").await;
        let url = format!("ws://{}/ws", first.public_addr);
        let clients = connect_users(&url, "u", 5).await;
        (first, clients)
    }
}

/// What the kubelet does when the StatefulSet removes a pod: SIGTERM to its container.
/// A pod the operator drained exits at once, successfully.
pub fn remove_pod(server: &mut ServerProcess) {
    let status = terminate(&mut server.child, Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "a drained server exits 0 on SIGTERM at once: {status:?}"
    );
}
