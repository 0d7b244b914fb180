//! The data plane through Kubernetes: chat-server pods that the operator made, running
//! on a real kubelet, reached by WebSocket clients through a real ingress controller.
//!
//! Run by `e2e/node/run-suite.sh` (the README's test command: a native node with
//! containerd, Traefik's ingress-nginx provider and the operator installed by its chart as
//! a pod) and by `e2e/kind/run.sh` (kind with ingress-nginx). Both set:
//! - `CHATCLUSTER_KUBECONFIG`, `CHATCLUSTER_KUBECTL`: the cluster;
//! - `CHATCLUSTER_E2E_INGRESS`: `address:port` of the ingress controller. Clients connect
//!   there with the test's own Ingress host in the `Host` header;
//! - `CHATCLUSTER_E2E_GATEWAY` (`namespace/name`) and `CHATCLUSTER_E2E_GATEWAY_ADDRESS`
//!   (`address:port`): a Gateway API Gateway (Envoy Gateway) that HTTPRoutes attach to;
//! - `CHATCLUSTER_E2E_PROMETHEUS_IMAGE`: the Prometheus image the autoscaler test runs
//!   as a pod;
//! - `CHATCLUSTER_E2E_IMAGE`, `CHATCLUSTER_E2E_IMAGE_B`: the chat-server image and a
//!   second tag of it (the rollout); `CHATCLUSTER_E2E_REDIS_IMAGE` (optional): the managed
//!   Redis image.
//!
//! Every test's name starts with `data_plane_`: the workspace-wide `cargo test` of the
//! README's test command skips them (it has no node), and run-suite.sh runs them.
//!
//! The operator is the cluster's own (the chart's Deployment, watching every namespace);
//! each test has a namespace. Every lossless check is by offsets: each subscriber got
//! every acknowledged message exactly once, and every resume was recovered.

// A heavy suite: compiled only with CHATCLUSTER_HEAVY_TESTS=1 (e2e/build.rs).
#![cfg(chatcluster_heavy)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatcluster_e2e::clients::lossless::{
    every_subscriber_got_every_message_once, subscribers_joined,
};
use chatcluster_e2e::clients::ws::{connect, join, recv_json, recv_type, send_and_ack, send_json};
use chatcluster_e2e::harness::k8s::cluster::condition;
use chatcluster_e2e::harness::k8s::data_plane::{env, image_a, report, Front, Setup, READY_WITHIN};
use chatcluster_e2e::harness::k8s::disruption::Disruption;
use chatcluster_e2e::wait::eventually;
use serde_json::Value;

async fn setup(tag: &str) -> Setup {
    Setup::new(tag, Front::Ingress).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_chat_is_sticky_spans_pods_and_status_counts_real_connections() {
    let s = setup("sticky").await;
    let applied = Instant::now();
    s.apply_chat(3, &image_a(), false);
    s.wait_ready(3, READY_WITHIN).await;
    println!(
        "data-plane figure: kubectl apply to Ready with 3 real pods (and the ingress routing): {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    sticky_chat_across_pods(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_gateway_api_route_is_sticky_and_a_scale_down_loses_nothing() {
    let s = Setup::new("gateway", Front::Gateway).await;
    s.apply_chat(3, &image_a(), false);
    s.wait_ready(3, READY_WITHIN).await;
    let route = s
        .get("httproute", "chat")
        .expect("the operator made the HTTPRoute");
    assert_eq!(
        route["spec"]["rules"][0]["sessionPersistence"]["sessionName"],
        "CHATNODE"
    );
    sticky_chat_across_pods(&s).await;
    lossless_scale_down(&s, "scale 3 -> 1 through Envoy Gateway").await;
}

/// Scales the ChatCluster from 3 to 1 mid-traffic (the operator drains the two leaving
/// pods; their clients resume on the survivor), checks nothing was lost and that one pod
/// is left, and reports the figures as `what`.
async fn lossless_scale_down(s: &Setup, what: &str) {
    let started = Instant::now();
    let leaving = ["chat-1", "chat-2"];
    let (d, times) = s
        .watch_drain(
            &leaving,
            s.lossless_through("scale", 400, 20, || async {
                s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=1"], None);
            }),
        )
        .await;
    let scaled = eventually("one pod left", Duration::from_secs(120), || async {
        Ok(s.get("chatcluster", "chat")
            .filter(|c| c["status"]["replicas"] == 1))
    })
    .await;
    assert!(scaled.is_ok(), "{scaled:?}{}", s.diagnostics());
    d.assert_moved_off(&leaving, &["chat-0"]);
    times.assert_drained_before_lowered(&leaving);
    s.assert_operator_drained(&leaving);
    report(what, started, &d);
}

/// Through the test's front: a cookie pins a client to its pod; cookie-less clients
/// spread over all three pods; chat, DMs and presence cross them; `status.connections`
/// counts the open clients from the real pods' metrics.
async fn sticky_chat_across_pods(s: &Setup) {
    let url = s.url();

    // The sticky cookie keeps a client on its pod.
    let (_first, cookie, welcome) = connect(&url, "user=sticky", None).await.expect("connect");
    let cookie = cookie.expect("the ingress sets the affinity cookie");
    assert!(cookie.starts_with("CHATNODE="), "{cookie}");
    let pod = welcome["node"].as_str().expect("node").to_owned();
    for _ in 0..5 {
        let (_ws, _, w) = connect(&url, "user=sticky", Some(&cookie))
            .await
            .expect("connect");
        assert_eq!(w["node"], pod.as_str(), "the cookie pins the pod");
    }

    // Without a cookie, clients spread over pods; chat, DMs and presence cross them.
    let mut by_pod: BTreeMap<String, (String, _)> = BTreeMap::new();
    let mut extra = Vec::new();
    for i in 0..60 {
        let (ws, _, w) = connect(&url, &format!("user=u{i}"), None)
            .await
            .expect("connect");
        let node = w["node"].as_str().unwrap_or_default().to_owned();
        match by_pod.entry(node) {
            std::collections::btree_map::Entry::Occupied(_) => extra.push(ws),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((format!("u{i}"), ws));
            }
        }
        if by_pod.len() == 3 {
            break;
        }
    }
    assert_eq!(
        by_pod.len(),
        3,
        "60 cookie-less clients did not reach all 3 pods"
    );
    let mut pods = by_pod.into_values();
    let (alice, mut alice_ws) = pods.next().expect("first pod");
    let (bob, mut bob_ws) = pods.next().expect("second pod");
    let (carol, mut carol_ws) = pods.next().expect("third pod");
    join(&mut alice_ws, "lobby", None).await.expect("join");
    join(&mut bob_ws, "lobby", None).await.expect("join");
    // Presence is cluster-wide: carol, on the third pod, sees both in `members`.
    let joined = join(&mut carol_ws, "lobby", None).await.expect("join");
    let members: Vec<&str> = joined["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for user in [alice.as_str(), bob.as_str(), carol.as_str()] {
        assert!(members.contains(&user), "{user} in {members:?}");
    }
    send_and_ack(&mut alice_ws, "lobby", "hello across pods", "r1")
        .await
        .expect("ack");
    for ws in [&mut bob_ws, &mut carol_ws] {
        let got = recv_type(ws, "message").await.expect("message");
        assert_eq!(got["body"], "hello across pods");
        assert_eq!(got["from"], alice.as_str());
    }
    send_json(
        &mut bob_ws,
        serde_json::json!({"type": "dm", "to": alice, "body": "psst", "ref": "d1"}),
    )
    .await
    .expect("dm");
    let dm = loop {
        let v = recv_json(&mut alice_ws, Duration::from_secs(5))
            .await
            .expect("read")
            .expect("open");
        if v["type"] == "dm" {
            break v;
        }
    };
    assert_eq!(dm["from"], bob.as_str());

    // status.connections is read from the real pods' metrics: once the closed probes'
    // connections are gone, exactly the clients still open. A Ready cluster with nothing
    // changing is reconciled (and its status refreshed) once a minute, so the wait must
    // span one such period after the probes closed, with room to spare.
    let open = 4 + extra.len() as i64; // alice, bob, carol, the sticky first + extras
    let refreshed_within =
        chatcluster_operator::reconcile::requeue_after(true) + Duration::from_secs(30);
    let counted = eventually(
        &format!("status.connections to equal the {open} open clients"),
        refreshed_within,
        || async {
            Ok(s.get("chatcluster", "chat")
                .and_then(|cc| cc["status"]["connections"].as_i64())
                .filter(|n| *n == open))
        },
    )
    .await;
    let last = s
        .get("chatcluster", "chat")
        .map(|cc| cc["status"]["connections"].clone());
    assert!(
        counted.is_ok(),
        "{counted:?} (last: {last:?}){}",
        s.diagnostics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_a_scale_down_from_3_to_1_drains_the_pods_without_losing_a_message() {
    let s = setup("scaledown").await;
    s.apply_chat(3, &image_a(), false);
    s.wait_ready(3, READY_WITHIN).await;
    lossless_scale_down(&s, "scale 3 -> 1 through Traefik").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_a_rolling_update_to_another_image_loses_nothing() {
    let s = setup("rollout").await;
    s.apply_chat(3, &image_a(), false);
    s.wait_ready(3, READY_WITHIN).await;
    let image_b = env("CHATCLUSTER_E2E_IMAGE_B");
    let started = Instant::now();
    let progressing_seen = Arc::new(Mutex::new(false));
    let d = s
        .lossless_through("roll", 600, 20, || async {
            s.apply_chat(3, &image_b, false);
            let seen = eventually(
                "Progressing during the rollout",
                Duration::from_secs(60),
                || async {
                    Ok(s.get("chatcluster", "chat")
                        .and_then(|cc| condition(&cc, "Progressing").cloned())
                        .filter(|c| c["status"] == "True"))
                },
            )
            .await;
            *progressing_seen.lock().expect("flag") = seen.is_ok();
        })
        .await;
    assert!(
        *progressing_seen.lock().expect("flag"),
        "Progressing=True during the rollout"
    );
    s.wait_ready(3, READY_WITHIN).await;
    let sts = s.get("statefulset", "chat").expect("statefulset");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        image_b.as_str()
    );
    assert_eq!(sts["status"]["updatedReplicas"], 3, "{sts}");
    // Every pod was replaced: every subscriber moved at least once.
    let pods = ["chat-0", "chat-1", "chat-2"];
    d.assert_moved_off(&pods, &pods);
    report("rolling update of 3 pods", started, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_a_force_deleted_pod_loses_nothing_and_its_users_presence_expires() {
    let s = setup("forcedel").await;
    s.apply_chat(2, &image_a(), false);
    s.wait_ready(2, READY_WITHIN).await;
    let url = s.url();
    // A watcher and a user who will vanish with their pod, on different pods.
    let (mut watcher, _, w) = connect(&url, "user=watcher", None).await.expect("connect");
    let watcher_pod = w["node"].as_str().expect("node").to_owned();
    let mut other_pod = None;
    for _ in 0..60 {
        let (ws, _, w) = connect(&url, "user=ghost", None).await.expect("connect");
        let node = w["node"].as_str().expect("node").to_owned();
        if node != watcher_pod {
            other_pod = Some((ws, node));
            break;
        }
    }
    let (mut ghost, ghost_pod) =
        other_pod.expect("60 cookie-less connections all landed on the watcher's pod");
    join(&mut watcher, "hall", None).await.expect("join");
    join(&mut ghost, "hall", None).await.expect("join");

    let started = Instant::now();
    let d = s
        .lossless_through("force", 400, 20, || async {
            s.kubectl_ok(
                &[
                    "delete",
                    "pod",
                    &ghost_pod,
                    "--force",
                    "--grace-period=0",
                    "--wait=false",
                ],
                None,
            );
        })
        .await;
    // The pod comes back under its name: its subscribers moved, to either pod.
    d.assert_moved_off(&[ghost_pod.as_str()], &["chat-0", "chat-1"]);
    report("a pod force-deleted", started, &d);

    // The ghost's session died with its pod, unannounced: its presence expires.
    drop(ghost);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut left = false;
    while !left && Instant::now() < deadline {
        match recv_json(&mut watcher, Duration::from_secs(1)).await {
            Ok(Some(v)) if v["type"] == "presence" => {
                left = v["left"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|u| u == "ghost"));
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the watcher's connection closed{}", s.diagnostics()),
        }
    }
    assert!(
        left,
        "the ghost's presence did not expire within 120 s{}",
        s.diagnostics()
    );
    s.wait_ready(2, READY_WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_a_killed_container_shim_is_recovered_by_kubelet_and_loses_nothing() {
    let s = setup("kill").await;
    s.apply_chat(2, &image_a(), false);
    s.wait_ready(2, READY_WITHIN).await;
    let pod = s.ready_pods().into_iter().next().expect("a ready pod");
    let restarts_before = s.container_restarts(&pod);
    let started = Instant::now();
    let d = s
        .lossless_through("kill", 400, 20, || async {
            // A failure on the node, not through the API: the pod's containerd shim is
            // killed; kubelet finds the sandbox gone, re-creates it and restarts the container.
            s.kill_container_shim(&pod);
        })
        .await;
    let restarted = eventually(
        "kubelet to restart the container",
        Duration::from_secs(120),
        || async { Ok((s.container_restarts(&pod) > restarts_before).then_some(())) },
    )
    .await;
    assert!(restarted.is_ok(), "{restarted:?}{}", s.diagnostics());
    s.wait_ready(2, READY_WITHIN).await;
    d.assert_moved_off(&[pod.as_str()], &["chat-0", "chat-1"]);
    report("the container's shim killed on the node", started, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_the_managed_redis_pod_deleted_without_persistence_starts_a_new_epoch() {
    let s = setup("redisgone").await;
    s.apply_chat(2, &image_a(), false);
    s.wait_ready(2, READY_WITHIN).await;
    redis_pod_deleted(&s, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_the_managed_redis_pod_deleted_with_persistence_keeps_the_history() {
    let s = setup("redispersist").await;
    s.apply_chat(2, &image_a(), true);
    s.wait_ready(2, READY_WITHIN).await;
    // Mid-traffic: publishes fail with `unavailable` while Redis is away and are resent;
    // subscribers lose and duplicate nothing, and their resumes are recovered.
    let started = Instant::now();
    let d = s
        .lossless_through("redis", 300, 20, || async {
            s.kubectl_ok(&["delete", "pod", "chat-redis-0", "--wait=false"], None);
        })
        .await;
    report(
        "the managed Redis pod deleted (persistence on)",
        started,
        &d,
    );
    s.wait_ready(2, READY_WITHIN).await;
    redis_pod_deleted(&s, true).await;
}

/// Sends a message, deletes the managed Redis pod, waits for it to come back, then
/// resumes from the message's offset: with persistence the history survives (recovered,
/// same epoch); without, the room starts a new epoch and the resume says so.
async fn redis_pod_deleted(s: &Setup, persistence: bool) {
    let url = s.url();
    let (mut alice, _, _) = connect(&url, "user=alice", None).await.expect("connect");
    let joined = join(&mut alice, "vault", None).await.expect("join");
    let epoch = joined["epoch"].as_str().expect("epoch").to_owned();
    let offset = send_and_ack(&mut alice, "vault", "before the loss", "v1")
        .await
        .expect("ack");
    if persistence {
        // appendonly with the default fsync policy (everysec): give it its second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    drop(alice);
    s.kubectl_ok(&["delete", "pod", "chat-redis-0", "--wait=true"], None);
    s.wait_ready(2, READY_WITHIN).await;
    let resumed = eventually(
        "a resume after Redis came back",
        Duration::from_secs(60),
        || async {
            let Ok((mut ws, _, _)) = connect(&url, "user=alice", None).await else {
                return Ok(None);
            };
            let Ok(j) = join(&mut ws, "vault", Some((&epoch, offset - 1))).await else {
                return Ok(None);
            };
            Ok((j["type"] == "joined").then_some((ws, j)))
        },
    )
    .await;
    let (mut ws, j) = resumed.unwrap_or_else(|e| panic!("{e}{}", s.diagnostics()));
    if persistence {
        assert_eq!(
            j["recovered"], true,
            "history survives a Redis restart: {j}"
        );
        assert_eq!(j["epoch"], epoch.as_str(), "{j}");
        let replayed = recv_type(&mut ws, "message").await.expect("replayed");
        assert_eq!(replayed["body"], "before the loss");
        assert_eq!(replayed["offset"].as_u64(), Some(offset));
    } else {
        assert_eq!(
            j["recovered"], false,
            "the history is gone, and the resume says so: {j}"
        );
        assert_ne!(j["epoch"], epoch.as_str(), "a new epoch: {j}");
    }
    // Chat works again either way: the next message follows the offset the join reported.
    let next = send_and_ack(&mut ws, "vault", "after", "v2")
        .await
        .expect("ack");
    assert_eq!(Some(next), j["offset"].as_u64().map(|o| o + 1), "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_the_autoscaler_follows_prometheus_scraping_real_pods_up_and_down() {
    autoscaled_up_and_down(Engine::Builtin).await;
}

/// KEDA as users run it (run-suite.sh installs KEDA's operator and metrics API server as
/// pods from KEDA's own manifests, registered through the APIService): with
/// `engine: keda` the operator only makes the ScaledObject, KEDA's HPA scales the
/// ChatCluster 1 → 3 → 1 through `/scale`, and the operator drains the scale-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_the_autoscaler_on_keda_scales_through_its_hpa_up_and_down() {
    autoscaled_up_and_down(Engine::Keda).await;
}

/// Who writes `spec.replicas` in [`autoscaled_up_and_down`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    /// The operator's own loop.
    Builtin,
    /// KEDA's HorizontalPodAutoscaler, from the operator's ScaledObject.
    Keda,
}

/// KEDA's HPA for the ScaledObject `chat` (KEDA names it `keda-hpa-<name>`).
const KEDA_HPA: &str = "keda-hpa-chat";

async fn autoscaled_up_and_down(engine: Engine) {
    let tag = match engine {
        Engine::Builtin => "autoscale",
        Engine::Keda => "keda",
    };
    let s = setup(tag).await;
    // Prometheus as users run it: a pod in its own namespace, with its own RBAC, that
    // discovers the chat pods through the API server (kubernetes_sd_configs, pod role)
    // and scrapes their admin port, which the ChatCluster's NetworkPolicy (enforced on
    // this node) opens to it through adminFromNamespaces. The operator pod (builtin) or
    // KEDA's operator pod (keda) queries it with the default query: 20 connections per
    // pod, a 10 s window.
    let client = s.cluster.client().await.expect("client");
    let monitoring = chatcluster_e2e::harness::k8s::cluster::TestNamespace::create(
        s.cluster,
        &client,
        &format!("{tag}-mon"),
    )
    .await
    .expect("namespace");
    let prometheus = tokio::task::block_in_place(|| {
        chatcluster_e2e::harness::k8s::prometheus_pod::PrometheusPod::deploy(
            s.cluster,
            &monitoring,
            &s.ns.name,
            &env("CHATCLUSTER_E2E_PROMETHEUS_IMAGE"),
            READY_WITHIN,
        )
    })
    .unwrap_or_else(|e| panic!("Prometheus as a pod: {e:#}{}", s.diagnostics()));
    let engine_line = match engine {
        Engine::Builtin => "",
        Engine::Keda => "    engine: keda\n",
    };
    let autoscaling = format!(
        "  autoscaling:\n{engine_line}    minReplicas: 1\n    maxReplicas: 3\n    targetConnectionsPerPod: 20\n\
         \x20   scaleDownStabilizationSeconds: 10\n    prometheusUrl: {}\n\
         \x20 networkPolicy:\n    adminFromNamespaces: [{}]\n",
        prometheus.base_url, monitoring.name
    );
    // What failed, with KEDA's side when KEDA scales.
    let diagnostics = || match engine {
        Engine::Builtin => s.diagnostics(),
        Engine::Keda => format!("{}{}", s.diagnostics(), keda_diagnostics(&s)),
    };
    s.apply_chat_with(1, &image_a(), false, &autoscaling);
    s.wait_ready(1, READY_WITHIN).await;
    if engine == Engine::Keda {
        // The operator made the ScaledObject, KEDA took it (Ready) and made its HPA on
        // the ChatCluster's /scale.
        let taken = eventually("KEDA's HPA for the ScaledObject", READY_WITHIN, || async {
            let ready = s
                .get("scaledobject", "chat")
                .and_then(|so| condition(&so, "Ready").cloned())
                .is_some_and(|c| c["status"] == "True");
            Ok(s.get("hpa", KEDA_HPA).filter(|_| ready))
        })
        .await;
        let hpa = taken.unwrap_or_else(|e| panic!("{e}{}", diagnostics()));
        let target = &hpa["spec"]["scaleTargetRef"];
        assert_eq!(
            (target["kind"].as_str(), target["name"].as_str()),
            (Some("ChatCluster"), Some("chat")),
            "{hpa}"
        );
    }

    // Load step: 50 idle clients need 3 pods.
    let url = s.url();
    let mut idle = Vec::new();
    for i in 0..50 {
        let (ws, _, _) = connect(&url, &format!("user=idle{i}"), None)
            .await
            .expect("connect");
        idle.push(ws);
    }
    let stepped = Instant::now();
    let up = eventually("3 ready pods after the load step", READY_WITHIN, || async {
        Ok(s.get("chatcluster", "chat")
            .filter(|c| c["status"]["readyReplicas"] == 3 && c["spec"]["replicas"] == 3))
    })
    .await;
    assert!(up.is_ok(), "{up:?}{}", diagnostics());
    println!(
        "data-plane figure: autoscaler ({engine:?}), load step (50 connections, 20 per pod) to 3 ready pods: {:.1} s",
        stepped.elapsed().as_secs_f64()
    );
    s.wait_ready(3, READY_WITHIN).await;

    // Load drop mid-traffic: the idle clients leave; the scale-down to 1 comes after the
    // window, and the operator drains the two highest pods while subscribers listen and
    // a publisher sends (long enough to span the window and the drains: 60 s, or 120 s
    // through KEDA, whose HPA samples every 15 s).
    // A watcher notes when the scale-down is done (spec and status at one replica).
    let times: Arc<Mutex<(Option<Instant>, Option<Instant>)>> = Arc::new(Mutex::new((None, None)));
    let (cluster, ns) = (s.cluster, s.ns.name.clone());
    let watch_times = times.clone();
    let started = Instant::now();
    let leaving = ["chat-1", "chat-2"];
    let messages = match engine {
        Engine::Builtin => 1200,
        Engine::Keda => 2400,
    };
    let traffic = s.lossless_through(tag, messages, 20, move || async move {
        drop(idle);
        watch_times.lock().expect("times").0 = Some(Instant::now());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            while Instant::now() < deadline {
                let cc =
                    cluster.kubectl_json(&["-n", &ns, "get", "chatcluster", "chat", "-o", "json"]);
                if cc.is_some_and(|c| c["status"]["replicas"] == 1 && c["spec"]["replicas"] == 1) {
                    watch_times.lock().expect("times").1 = Some(Instant::now());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    });
    let ((d, traffic_ended), drain_times) = s
        .watch_drain(&leaving, async {
            let d = traffic.await;
            (d, Instant::now())
        })
        .await;
    let down = eventually(
        "one pod left after the load drop",
        Duration::from_secs(120),
        || async {
            Ok(s.get("chatcluster", "chat")
                .filter(|c| c["status"]["replicas"] == 1 && c["spec"]["replicas"] == 1))
        },
    )
    .await;
    assert!(down.is_ok(), "{down:?}{}", diagnostics());
    let (Some(dropped), Some(done)) = *times.lock().expect("times") else {
        panic!("the load drop or the scale-down was not timed");
    };
    assert!(
        done <= traffic_ended,
        "the scale-down finished after the subscribers stopped: the loss check did not cover it"
    );
    println!(
        "data-plane figure: autoscaler ({engine:?}), load drop to the scale-down done (10 s window, drains included): {:.1} s",
        done.duration_since(dropped).as_secs_f64()
    );
    d.assert_moved_off(&leaving, &["chat-0"]);
    drain_times.assert_drained_before_lowered(&leaving);
    s.assert_operator_drained(&leaving);
    report(
        &format!("autoscaler ({engine:?}) scale-down 3 -> 1"),
        started,
        &d,
    );
    let scaling = s
        .get("chatcluster", "chat")
        .and_then(|cc| condition(&cc, "ScalingActive").cloned());
    assert_eq!(
        scaling.as_ref().map(|c| c["status"].clone()),
        Some(Value::from("True")),
        "the autoscaler read Prometheus: {scaling:?}"
    );
    if engine == Engine::Keda {
        assert_eq!(
            scaling.as_ref().and_then(|c| c["reason"].as_str()),
            Some("KedaScaledObject"),
            "{scaling:?}"
        );
        // KEDA's HPA made both changes: its own Events say so.
        let rescales = hpa_rescales(&s);
        for size in [3, 1] {
            assert!(
                rescales
                    .iter()
                    .any(|m| m.starts_with(&format!("New size: {size};"))),
                "KEDA's HPA did not rescale to {size}: {rescales:?}{}",
                diagnostics()
            );
        }
    }
    drop(prometheus);
}

/// The messages of KEDA's HPA's `SuccessfulRescale` Events ("New size: N; reason: …").
fn hpa_rescales(s: &Setup) -> Vec<String> {
    s.ns.events()
        .iter()
        .filter(|e| e["involvedObject"]["name"] == KEDA_HPA && e["reason"] == "SuccessfulRescale")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// The ScaledObject, KEDA's HPA and the last lines of KEDA's two pods, for a failure.
fn keda_diagnostics(s: &Setup) -> String {
    let text = |args: &[&str]| s.cluster.kubectl_text(args);
    let ns = s.ns.name.as_str();
    format!(
        "\n--- ScaledObject and HPA ---\n{}\n{}\n--- KEDA operator log ---\n{}\n--- KEDA metrics API server log ---\n{}",
        text(&["-n", ns, "get", "scaledobject", "chat", "-o", "yaml"]),
        text(&["-n", ns, "describe", "hpa", KEDA_HPA]),
        text(&["-n", "keda", "logs", "deploy/keda-operator", "--tail", "40"]),
        text(&["-n", "keda", "logs", "deploy/keda-metrics-apiserver", "--tail", "20"]),
    )
}

/// Connections held by the 4 → 1 scale-down below (several thousand, in rooms of 100).
const HELD_CONNECTIONS: usize = 3_000;
/// Its reconnect budget (`drain.maxReconnectsPerSecond`).
const SCALE_DOWN_BUDGET: u32 = 150;

/// A scale-down from 4 to 1 pods holding 3,000 connections mid-traffic: the operator
/// drains the three leaving pods paced by the cluster's reconnect budget (together, over
/// one shared window: 2,250 connections at 150/s fit the default 25 s deadline after the
/// default 5 s notice delay, during which Traefik stops routing to them), every client
/// resumes on the survivor once, and no message is lost or duplicated. The pacing holds:
/// no second over 1.1 × the budget, the mean within it. Reports the peak and mean
/// reconnects per second against the budget (docs/benchmarks.md quotes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_a_scale_down_from_4_to_1_with_thousands_of_connections_is_paced_and_lossless() {
    let s = setup("paced").await;
    // The default deadline and preStop (the notice delay), and the test's budget.
    let drain = format!(
        "    reconnectWindowSeconds: 3\n    deadlineSeconds: 25\n    preStopSeconds: 5\n    \
         maxReconnectsPerSecond: {SCALE_DOWN_BUDGET}\n"
    );
    s.apply_chat_drained(4, &image_a(), false, &drain, "");
    s.wait_ready(4, READY_WITHIN).await;
    let url = s.url();
    // Rooms of 100 subscribers each; every subscriber resumes its room after a drain.
    let rooms: Vec<String> = (0..HELD_CONNECTIONS / 100)
        .map(|i| format!("paced{i}"))
        .collect();
    let mut groups = Vec::new();
    for room in &rooms {
        let group =
            subscribers_joined(100, |_| vec![url.clone()], std::slice::from_ref(room)).await;
        groups.push((room.clone(), group));
    }
    let cc = eventually("status.connections counts them", READY_WITHIN, || async {
        Ok(s.get("chatcluster", "chat").filter(|c| {
            c["status"]["connections"]
                .as_u64()
                .is_some_and(|n| n >= HELD_CONNECTIONS as u64)
        }))
    })
    .await;
    assert!(cc.is_ok(), "{cc:?}{}", s.diagnostics());
    let (publisher, publog) = s.publishing(&url, &rooms, 30, 900).await;

    let scaled_at = Instant::now();
    s.kubectl_ok(&["scale", "chatcluster/chat", "--replicas=1"], None);
    let scaled = eventually("one pod left", Duration::from_secs(240), || async {
        Ok(s.get("chatcluster", "chat")
            .filter(|c| c["status"]["replicas"] == 1))
    })
    .await;
    assert!(scaled.is_ok(), "{scaled:?}{}", s.diagnostics());
    let scale_down = scaled_at.elapsed();
    publisher.await.expect("publisher task").expect("publisher");
    let acked = publog.lock().expect("log").acked.clone();
    assert_eq!(
        acked.values().map(|m| m.len()).sum::<usize>(),
        900,
        "every message acknowledged"
    );

    let mut reconnect_times = Vec::new();
    let mut all_logs = Vec::new();
    for (room, (logs, tasks, stop)) in groups {
        let room_acked: std::collections::HashMap<String, BTreeMap<u64, String>> = acked
            .get(&room)
            .map(|m| (room.clone(), m.clone()))
            .into_iter()
            .collect();
        every_subscriber_got_every_message_once(&room_acked, &logs, stop, tasks).await;
        for l in &logs {
            reconnect_times.extend(l.lock().expect("log").reconnect_times.iter().copied());
        }
        all_logs.extend(logs);
    }
    let d = Disruption::from_logs(&all_logs);
    // The three leaving pods were drained together, over one shared window.
    let windows: Vec<String> =
        s.ns.events()
            .iter()
            .filter(|e| e["reason"] == "DrainStarted")
            .filter_map(|e| e["message"].as_str())
            .filter_map(|m| m.split(" connections over ").nth(1))
            .filter_map(|rest| rest.split(' ').next().map(str::to_owned))
            .collect();
    assert_eq!(
        windows.len(),
        3,
        "one DrainStarted per leaving pod: {windows:?}"
    );
    assert!(
        windows.iter().all(|w| *w == windows[0]),
        "one shared window: {windows:?}"
    );
    let rate = chatcluster_e2e::clients::lossless::reconnect_rate(&reconnect_times);
    println!(
        "data-plane figure: scale 4 -> 1 holding {HELD_CONNECTIONS} connections, budget \
         {SCALE_DOWN_BUDGET} reconnects/s: 0 lost, 0 duplicated; {} reconnects, peak {}/s, \
         mean {:.1}/s (each second: {:?}); longest time a subscriber had no connection {} ms; \
         scale-down done in {:.1} s",
        reconnect_times.len(),
        rate.peak,
        rate.mean,
        rate.per_second,
        d.longest.as_millis(),
        scale_down.as_secs_f64()
    );
    let leaving = ["chat-1", "chat-2", "chat-3"];
    s.assert_operator_drained(&leaving);
    let moved = d.assert_moved_off(&leaving, &["chat-0"]);
    assert_eq!(
        reconnect_times.len(),
        moved,
        "each client of a leaving pod reconnected once, the others not at all"
    );
    // The pacing holds: no second over 1.1 × the budget, the mean within it.
    let budget = f64::from(SCALE_DOWN_BUDGET);
    assert!(
        f64::from(rate.peak) <= 1.1 * budget,
        "peak {}/s over 1.1 × {budget}/s: {:?}",
        rate.peak,
        rate.per_second
    );
    assert!(
        rate.mean <= budget,
        "mean {:.1}/s over {budget}/s",
        rate.mean
    );
}

/// Redis' `used_memory` and `maxmemory` from the managed Redis pod, asked directly (the
/// test runs in the node's network namespace, where pod IPs are reachable), with the
/// password from the operator's Secret.
fn managed_redis_memory(s: &Setup) -> Option<(u64, u64)> {
    let ip = s.get("pod", "chat-redis-0")?["status"]["podIP"]
        .as_str()?
        .to_owned();
    let password = s.kubectl_ok(
        &[
            "get",
            "secret",
            "chat-redis-auth",
            "-o",
            "jsonpath={.data.password}",
        ],
        None,
    );
    let decoded = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(password.trim().as_bytes())?;
            child.wait_with_output()
        })
        .ok()?;
    let info = std::process::Command::new("redis-cli")
        .args(["-h", &ip, "-p", "6379", "INFO", "memory"])
        .env(
            "REDISCLI_AUTH",
            String::from_utf8_lossy(&decoded.stdout).trim(),
        )
        .output()
        .ok()?;
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("used_memory:")?, field("maxmemory:")?))
}

/// The managed Redis capped at a 64Mi memory limit, with persistence: the operator gives
/// it `maxmemory` 48 MiB (`noeviction`) and the pods a 24 MiB history budget. Flooders
/// send maximum-size messages through the ingress at twice what Redis could hold over the
/// run, while the usual publisher and subscribers chat. Redis stays under `maxmemory`, is
/// never OOM-killed or restarted (so never replays its append-only file in a loop), and
/// every acknowledged message reaches every subscriber exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_a_flood_cannot_fill_the_managed_redis() {
    use chatcluster_e2e::clients::hostile::{flood, HostileTally};
    use chatcluster_e2e::harness::k8s::data_plane::TEST_DRAIN;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let s = setup("flood").await;
    s.apply_chat_full(
        2,
        &image_a(),
        true,
        TEST_DRAIN,
        "",
        "      resources:\n        requests: {cpu: 50m, memory: 32Mi}\n        limits: {memory: 64Mi}\n",
    );
    s.wait_ready(2, READY_WITHIN).await;
    let config = s.get("configmap", "chat-config").expect("config map");
    assert_eq!(
        config["data"]["CHAT_HISTORY_MAX_BYTES"],
        (24u64 << 20).to_string(),
        "half of maxmemory"
    );
    let (_, maxmemory) = eventually("Redis answers", Duration::from_secs(30), || async {
        Ok(managed_redis_memory(&s))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}{}", s.diagnostics()));
    assert_eq!(maxmemory, 48 << 20, "maxmemory is 3/4 of the 64Mi limit");

    let url = s.url();
    let tally = Arc::new(HostileTally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let run_started = Instant::now();
    let d = s
        .lossless_through("flood", 300, 10, || {
            let (url, tally, stop, peak) = (url.clone(), tally.clone(), stop.clone(), peak.clone());
            let s = &s;
            async move {
                // 12 flooders × 80 messages/s × 4 KiB ≈ 3.9 MB/s for 25 s: about 98 MB.
                let flooders: Vec<_> = (0..12)
                    .map(|f| {
                        let rooms = (0..10).map(|r| format!("flood-{f}-{r}")).collect();
                        tokio::spawn(flood(
                            url.clone(),
                            format!("flooder{f}"),
                            rooms,
                            80,
                            tally.clone(),
                            stop.clone(),
                        ))
                    })
                    .collect();
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(25) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Some((used, _)) = tokio::task::block_in_place(|| managed_redis_memory(s))
                    {
                        peak.fetch_max(used, Ordering::Relaxed);
                    }
                }
                stop.store(true, Ordering::Relaxed);
                for f in flooders {
                    let _ = f.await;
                }
            }
        })
        .await;
    report("a flood against the managed Redis (64Mi)", run_started, &d);
    let accepted = tally.acks.load(Ordering::Relaxed);
    let peak = peak.load(Ordering::Relaxed);
    let errors = chat_server::sync::lock(&tally.errors).clone();
    println!(
        "flood: {accepted} messages of 4 KiB accepted ({:.0} MB), Redis used_memory peak {:.1} MiB of {} MiB, flooders' errors {errors:?}",
        accepted as f64 * 4096.0 / 1e6,
        peak as f64 / 1048576.0,
        maxmemory >> 20
    );
    assert!(
        accepted * 4096 > maxmemory,
        "the flood was more than Redis could hold ({accepted} messages){}",
        s.diagnostics()
    );
    assert!(
        peak > 0 && peak < maxmemory,
        "Redis used {peak} of {maxmemory} bytes"
    );
    let redis = s.get("pod", "chat-redis-0").expect("the Redis pod");
    let status = &redis["status"]["containerStatuses"][0];
    assert_eq!(
        status["restartCount"].as_i64(),
        Some(0),
        "Redis was never restarted: {status}"
    );
    assert!(
        status["lastState"]["terminated"].is_null(),
        "never OOM-killed: {status}"
    );
}

/// What one probe pod found reaching each target, round by round: `(target, open)`.
type Probed = Vec<Vec<(String, bool)>>;

/// Runs a pod in `namespace` (the Redis image's `redis-cli`, a plain TCP client) that
/// tries each target (`name=address:port`) once a second for `rounds` rounds. A
/// connection refused (the policy's REJECT), unroutable or not answered within 5 s is
/// closed; anything else (a `PONG`, an HTTP server closing on the unexpected request) is
/// open. (The image's static busybox `wget` cannot be the client: it crashes resolving
/// an address in a pod.) kube-router adds a new pod's address to its sets on its own
/// schedule, so allowed targets are judged by the last round, denied ones by every round.
fn probe_from(s: &Setup, namespace: &str, targets: &[(&str, String)], rounds: u32) -> Probed {
    let list = targets
        .iter()
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "for round in $(busybox seq 1 {rounds}); do for t in {list}; do addr=${{t#*=}}; \
         out=$(busybox timeout 5 /usr/bin/redis-cli -h ${{addr%:*}} -p ${{addr##*:}} PING 2>&1); \
         rc=$?; case \"$out\" in *refused*|*'No route'*) v=closed;; \
         *) if [ $rc -ge 124 ]; then v=closed; else v=open; fi;; esac; \
         echo \"$round ${{t%%=*}} $v\"; done; busybox sleep 1; done"
    );
    let image = std::env::var("CHATCLUSTER_E2E_REDIS_IMAGE")
        .unwrap_or_else(|_| "docker.io/chatcluster/redis:e2e".into());
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "probe", "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", script],
        }]},
    });
    s.cluster
        .kubectl_ok(&["apply", "-f", "-"], Some(&pod.to_string()))
        .unwrap_or_else(|e| panic!("probe pod in {namespace}: {e:#}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let phase = s
            .cluster
            .kubectl_json(&["-n", namespace, "get", "pod", "probe", "-o", "json"])
            .and_then(|p| p["status"]["phase"].as_str().map(str::to_owned));
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probe pod in {namespace}: {phase:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = s
        .cluster
        .kubectl_ok(&["-n", namespace, "logs", "probe"], None)
        .expect("probe log");
    let mut by_round: BTreeMap<u32, Vec<(String, bool)>> = BTreeMap::new();
    for line in log.lines() {
        let mut f = line.split_whitespace();
        if let (Some(r), Some(name), Some(v)) = (f.next(), f.next(), f.next()) {
            if let Ok(r) = r.parse() {
                by_round
                    .entry(r)
                    .or_default()
                    .push((name.to_owned(), v == "open"));
            }
        }
    }
    assert_eq!(
        by_round.len() as u32,
        rounds,
        "probe log from {namespace}:\n{log}"
    );
    by_round.into_values().collect()
}

/// Asserts what `probed` found: each target in `open` reachable in the last round, each
/// other target closed in every round.
fn assert_reach(from: &str, probed: &Probed, open: &[&str]) {
    for (i, round) in probed.iter().enumerate() {
        for (target, reached) in round {
            let allowed = open.contains(&target.as_str());
            if !allowed {
                assert!(
                    !reached,
                    "from {from}: {target} must be closed, reached in round {}",
                    i + 1
                );
            } else if i + 1 == probed.len() {
                assert!(
                    reached,
                    "from {from}: {target} must be open, closed in the last round: {probed:?}"
                );
            }
        }
    }
}

/// The operator's NetworkPolicies, enforced on a real node by kube-router's policy
/// controller: from another namespace only the public port answers; the namespace listed
/// in `adminFromNamespaces` and the operator's reach the admin port; only the cluster's
/// own namespace reaches the server API; nobody but the chat pods reaches the managed
/// Redis. (The node itself is always let through: clients in the node's network, like
/// the ingress controller and this test, are not what is under test here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_network_policies_are_enforced() {
    let s = setup("netpol").await;
    let client = s.cluster.client().await.expect("client");
    let other = chatcluster_e2e::harness::k8s::cluster::TestNamespace::create(
        s.cluster, &client, "np-other",
    )
    .await
    .expect("namespace");
    let monitoring =
        chatcluster_e2e::harness::k8s::cluster::TestNamespace::create(s.cluster, &client, "np-mon")
            .await
            .expect("namespace");
    let extra = format!(
        "  api:\n    enabled: true\n  networkPolicy:\n    adminFromNamespaces: [{}]\n",
        monitoring.name
    );
    s.apply_chat_with(1, &image_a(), false, &extra);
    s.wait_ready(1, READY_WITHIN).await;
    let ip_of = |component: &str| {
        let pods = s
            .cluster
            .kubectl_json(&[
                "-n",
                &s.ns.name,
                "get",
                "pods",
                "-l",
                &format!("app.kubernetes.io/component={component}"),
                "-o",
                "json",
            ])
            .expect("pods");
        pods["items"][0]["status"]["podIP"]
            .as_str()
            .unwrap_or_else(|| panic!("no {component} pod IP: {pods}"))
            .to_owned()
    };
    let (chat, redis) = (ip_of("chat-server"), ip_of("redis"));
    let targets = [
        ("public", format!("{chat}:8080")),
        ("admin", format!("{chat}:9090")),
        ("api", format!("{chat}:8081")),
        ("redis", format!("{redis}:6379")),
    ];
    let rounds = 12;
    let from_other = probe_from(&s, &other.name, &targets, rounds);
    let from_monitoring = probe_from(&s, &monitoring.name, &targets, rounds);
    let from_own = probe_from(&s, &s.ns.name, &targets, rounds);
    println!(
        "network policies: other {from_other:?}\nmonitoring {from_monitoring:?}\nown {from_own:?}"
    );
    assert_reach("another namespace", &from_other, &["public"]);
    assert_reach(
        "adminFromNamespaces",
        &from_monitoring,
        &["public", "admin"],
    );
    assert_reach("the cluster's own namespace", &from_own, &["public", "api"]);
}
