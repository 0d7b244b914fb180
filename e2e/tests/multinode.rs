//! Several chat-server processes joined through a real redis-server (or a real Redis
//! Cluster of 3 masters and 3 replicas), behind a real haproxy with cookie stickiness,
//! all on loopback. The suites run one at a time: each starts its own Redis, nodes and
//! haproxy and stops them by PID. Suites that hold for both backends run on both.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::sync::lock;
use chatcluster_e2e::clients::publisher::{run_publisher, PublisherLog};
use chatcluster_e2e::clients::ws::{connect, join, recv_json, recv_type, send_and_ack, send_json};
use chatcluster_e2e::harness::binaries::chat_server_binary;
use chatcluster_e2e::harness::local_cluster::{ClusterOptions, LocalCluster};
use chatcluster_e2e::harness::process::free_port;
use chatcluster_e2e::harness::server_process::ServerProcess;
use chatcluster_e2e::harness::toxiproxy::{toxiproxy_binary, Link, Toxiproxy};
use serde_json::json;

#[macro_use]
mod multinode_support;

use multinode_support::{
    after_warm_up, cluster, cluster_with, serial, spawn_subscribers, wait_acked,
    wait_subscribers_live, Backend, LOADGEN,
};

on_both_backends!(
    rooms_dms_and_presence_span_nodes_and_each_node_gets_only_its_rooms,
    resume_on_another_node_replays_the_gap,
    killed_node_clients_resume_elsewhere_and_its_presence_expires,
    rolling_restart_loses_nothing,
    password_prefixes_and_history_bounds,
    history_age_bound_through_redis,
);

/// A node's `/admin/status` once its backplane has either connected or recorded a
/// connection error (bounded). Panics if the status hands out `secret`.
async fn backplane_verdict(admin: std::net::SocketAddr, secret: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = tokio::task::block_in_place(|| {
            chatcluster_e2e::harness::http::status_of(admin, "/admin/status")
        });
        assert!(
            !secret.is_empty() && !body.contains(secret),
            "/admin/status must never show the password: {body}"
        );
        if code == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let b = &v["backplane_status"];
            if b["connected"] == true || b["last_error"].is_string() {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "backplane neither connected nor failed: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node whose backplane cannot use Redis still opens sessions (the upgrade does not
/// depend on Redis), but answers what needs Redis with `unavailable` and acknowledges
/// nothing.
async fn assert_sessions_answer_unavailable(url: &str) {
    let (mut ws, _, _) = connect(url, "user=probe", None).await.unwrap();
    send_json(&mut ws, json!({"type":"join","room":"r"}))
        .await
        .unwrap();
    let e = recv_type(&mut ws, "error").await.unwrap();
    assert_eq!(e["code"], "unavailable", "join: {e}");
    // The join was refused, so the send is not taken either (and never acknowledged).
    send_json(
        &mut ws,
        json!({"type":"send","room":"r","body":"x","ref":"s"}),
    )
    .await
    .unwrap();
    let e = recv_type(&mut ws, "error").await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("not_joined"), Some("s")),
        "{e}"
    );
    send_json(
        &mut ws,
        json!({"type":"dm","to":"someone","body":"x","ref":"d"}),
    )
    .await
    .unwrap();
    let e = recv_type(&mut ws, "error").await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("unavailable"), Some("d")),
        "dm: {e}"
    );
}

async fn rooms_dms_and_presence_span_nodes_and_each_node_gets_only_its_rooms(backend: Backend) {
    let _s = serial().await;
    let c = cluster(backend, 3, &[]);
    let (mut alice, _, w) = connect(&c.nodes[0].ws_url(), "user=alice", None)
        .await
        .unwrap();
    assert_eq!(w["node"], "s1");
    let (mut bob, _, _) = connect(&c.nodes[1].ws_url(), "user=bob", None)
        .await
        .unwrap();
    let (mut carol, _, _) = connect(&c.nodes[2].ws_url(), "user=carol", None)
        .await
        .unwrap();
    let (mut carol2, _, _) = connect(&c.nodes[0].ws_url(), "user=carol", None)
        .await
        .unwrap();

    join(&mut alice, "r", None).await.unwrap();
    let j = join(&mut bob, "r", None).await.unwrap();
    assert_eq!(
        j["members"],
        json!(["alice", "bob"]),
        "presence is cluster-wide"
    );
    // Alice (on s1) sees Bob (on s2) arrive.
    loop {
        let p = recv_json(&mut alice, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if p["type"] == "presence" && p["joined"] == json!(["bob"]) {
            break;
        }
    }
    for i in 0..20 {
        send_json(
            &mut alice,
            json!({"type":"send","room":"r","body":format!("m{i}")}),
        )
        .await
        .unwrap();
    }
    for i in 1..=20u64 {
        let m = recv_type(&mut bob, "message").await.unwrap();
        assert_eq!(m["offset"], i);
        assert_eq!(m["from"], "alice");
    }
    // ... and on s1 too (between Alice's acks), so its counter below is final.
    let mut offsets = Vec::new();
    while offsets.len() < 20 {
        let v = recv_json(&mut alice, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if v["type"] == "message" {
            offsets.push(v["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(offsets, (1..=20).collect::<Vec<u64>>());
    // A DM reaches Carol's sessions on s3 and on s1.
    send_json(
        &mut bob,
        json!({"type":"dm","to":"carol","body":"psst","ref":"d"}),
    )
    .await
    .unwrap();
    assert_eq!(recv_type(&mut bob, "ack").await.unwrap()["ref"], "d");
    assert_eq!(recv_type(&mut carol, "dm").await.unwrap()["body"], "psst");
    assert_eq!(recv_type(&mut carol2, "dm").await.unwrap()["from"], "bob");
    send_json(
        &mut bob,
        json!({"type":"dm","to":"nobody","body":"x","ref":"n"}),
    )
    .await
    .unwrap();
    assert_eq!(
        recv_type(&mut bob, "error").await.unwrap()["code"],
        "user_offline"
    );

    // s3 hosts nobody in room r: it received none of its traffic from Redis. (The DM to
    // Carol on s3 was published after the 20 messages, and Redis delivers one
    // connection's messages in order: had s3 been subscribed to r, it would have counted
    // them before it delivered the DM.)
    let got = |i: usize| {
        c.metric(i, "chat_backplane_messages_received_total")
            .unwrap()
    };
    assert_eq!(got(0), 20.0);
    assert_eq!(got(1), 20.0);
    assert_eq!(got(2), 0.0, "a node receives only the rooms it hosts");

    // Bob leaves: s2 unsubscribes, so further messages do not reach it.
    send_json(&mut bob, json!({"type":"leave","room":"r"}))
        .await
        .unwrap();
    recv_type(&mut bob, "left").await.unwrap();
    send_json(
        &mut alice,
        json!({"type":"send","room":"r","body":"after","ref":"a"}),
    )
    .await
    .unwrap();
    loop {
        let v = recv_json(&mut alice, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if v["type"] == "message" && v["body"] == "after" {
            break;
        }
    }
    // Barrier: a DM to Bob published after "after" reaches s2 on the same pub/sub
    // connection, behind "after" had s2 still been subscribed to r.
    send_json(
        &mut alice,
        json!({"type":"dm","to":"bob","body":"barrier","ref":"b"}),
    )
    .await
    .unwrap();
    assert_eq!(recv_type(&mut bob, "dm").await.unwrap()["body"], "barrier");
    assert_eq!(got(0), 21.0);
    assert_eq!(
        got(1),
        20.0,
        "unsubscribed after the last local member left"
    );
}

async fn resume_on_another_node_replays_the_gap(backend: Backend) {
    let _s = serial().await;
    let c = cluster(backend, 3, &[]);
    let (mut sub, _, _) = connect(&c.nodes[0].ws_url(), "user=sub", None)
        .await
        .unwrap();
    let epoch = join(&mut sub, "r", None).await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut publisher, _, _) = connect(&c.nodes[1].ws_url(), "user=pub", None)
        .await
        .unwrap();
    join(&mut publisher, "r", None).await.unwrap();
    for i in 1..=3 {
        send_json(
            &mut publisher,
            json!({"type":"send","room":"r","body":format!("m{i}")}),
        )
        .await
        .unwrap();
    }
    for _ in 0..3 {
        recv_type(&mut sub, "message").await.unwrap();
    }
    drop(sub);
    for i in 4..=8 {
        send_and_ack(&mut publisher, "r", &format!("m{i}"), &format!("r{i}"))
            .await
            .unwrap();
    }
    let (mut sub, _, _) = connect(&c.nodes[2].ws_url(), "user=sub", None)
        .await
        .unwrap();
    let j = join(&mut sub, "r", Some((&epoch, 3))).await.unwrap();
    assert_eq!(j["recovered"], true);
    assert_eq!(j["offset"], 8);
    for i in 4..=8u64 {
        let m = recv_type(&mut sub, "message").await.unwrap();
        assert_eq!(
            (m["offset"].as_u64(), m["body"].as_str()),
            (Some(i), Some(format!("m{i}").as_str()))
        );
    }
    send_json(
        &mut publisher,
        json!({"type":"send","room":"r","body":"m9"}),
    )
    .await
    .unwrap();
    assert_eq!(recv_type(&mut sub, "message").await.unwrap()["offset"], 9);
    // A stale epoch is never recovered.
    let (mut stale, _, _) = connect(&c.nodes[0].ws_url(), "user=stale", None)
        .await
        .unwrap();
    let j = join(&mut stale, "r", Some(("0000000000000000", 2)))
        .await
        .unwrap();
    assert_eq!(j["recovered"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_fails_loudly_then_recovers_with_a_new_epoch() {
    let _s = serial().await;
    let mut c = cluster(Backend::Single, 2, &["--redis-presence-ttl", "3s"]);
    let (mut a, _, _) = connect(&c.nodes[0].ws_url(), "user=a", None).await.unwrap();
    let old_epoch = join(&mut a, "r", None).await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut b, _, _) = connect(&c.nodes[1].ws_url(), "user=b", None).await.unwrap();
    join(&mut b, "r", None).await.unwrap();
    send_json(
        &mut a,
        json!({"type":"send","room":"r","body":"before","ref":"1"}),
    )
    .await
    .unwrap();
    assert_eq!(
        recv_type(&mut b, "message").await.unwrap()["body"],
        "before"
    );

    tokio::task::block_in_place(|| c.redis.single().stop());
    // Readiness fails and publishes are refused with `unavailable`, never lost silently.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.readyz(0) != 503 || c.readyz(1) != 503 {
        assert!(
            Instant::now() < deadline,
            "readiness did not fail without Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_json(
        &mut a,
        json!({"type":"send","room":"r","body":"during","ref":"2"}),
    )
    .await
    .unwrap();
    let err = loop {
        let v = recv_json(&mut a, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(err["code"], "unavailable");
    assert_eq!(err["ref"], "2");

    tokio::task::block_in_place(|| c.redis.single().restart()).unwrap();
    tokio::task::block_in_place(|| c.wait_ready(Duration::from_secs(20))).unwrap();
    // Both sessions are told their history is gone (new epoch) and carry on.
    for ws in [&mut a, &mut b] {
        let j = loop {
            let v = recv_json(ws, Duration::from_secs(10))
                .await
                .unwrap()
                .unwrap();
            if v["type"] == "joined" {
                break v;
            }
        };
        assert_eq!(j["recovered"], false);
        assert_ne!(j["epoch"], old_epoch.as_str());
    }
    send_json(
        &mut a,
        json!({"type":"send","room":"r","body":"after","ref":"3"}),
    )
    .await
    .unwrap();
    let m = recv_type(&mut b, "message").await.unwrap();
    assert_eq!(
        (m["body"].as_str(), m["offset"].as_u64()),
        (Some("after"), Some(1))
    );
    // Presence was restored: a newcomer sees both users.
    let (mut n, _, _) = connect(&c.nodes[1].ws_url(), "user=n", None).await.unwrap();
    let j = join(&mut n, "r", Some((&old_epoch, 1))).await.unwrap();
    assert_eq!(
        j["recovered"], false,
        "resuming into a lost history is never recovered"
    );
    assert_eq!(j["members"], json!(["a", "b", "n"]));
}

async fn killed_node_clients_resume_elsewhere_and_its_presence_expires(backend: Backend) {
    let _s = serial().await;
    let mut c = cluster(
        backend,
        3,
        &[
            "--redis-presence-ttl",
            "2s",
            "--rate-per-sec",
            "100",
            "--rate-burst",
            "100",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rooms = vec!["k".to_string()];
    let (logs, tasks) = spawn_subscribers(6, &c.haproxy_url(), &rooms, &stop);
    // Kill the node that subscriber 0 landed on, so at least one subscriber must move.
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        if let Some(node) = lock(&logs[0]).nodes_seen.first().cloned() {
            break c
                .nodes
                .iter()
                .position(|n| n.name == node)
                .expect("known node");
        }
        assert!(Instant::now() < deadline, "subscriber 0 never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let survivor = (victim + 1) % c.nodes.len();
    // A user only on the victim, directly: nobody reconnects it, so its presence must expire.
    let (mut ghost, _, _) = connect(&c.nodes[victim].ws_url(), "user=ghost", None)
        .await
        .unwrap();
    join(&mut ghost, "k", None).await.unwrap();
    let (mut watcher, _, _) = connect(&c.nodes[survivor].ws_url(), "user=watcher", None)
        .await
        .unwrap();
    let j = join(&mut watcher, "k", None).await.unwrap();
    assert!(j["members"].as_array().unwrap().contains(&json!("ghost")));
    let warm = wait_subscribers_live(&c.nodes[survivor].ws_url(), &rooms, &logs).await;

    let publog = Arc::new(Mutex::new(PublisherLog::default()));
    let publisher = tokio::spawn(run_publisher(
        c.haproxy_url(),
        rooms.clone(),
        40,
        120,
        publog.clone(),
    ));
    // Kill mid-stream: once a second's worth (40) of messages is acknowledged.
    wait_acked(&publog, 40).await;
    tokio::task::block_in_place(|| c.kill_node(victim)).unwrap();
    let killed_at = Instant::now();
    // The watcher is told the ghost left once the victim's heartbeat key expires.
    loop {
        let v = recv_json(&mut watcher, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("watcher open");
        if v["type"] == "presence" && v["left"] == json!(["ghost"]) {
            break;
        }
    }
    let expired_after = killed_at.elapsed();
    assert!(
        expired_after < Duration::from_secs(5),
        "presence expired after {expired_after:?}"
    );
    send_json(
        &mut watcher,
        json!({"type":"dm","to":"ghost","body":"x","ref":"g"}),
    )
    .await
    .unwrap();
    // The watcher's room is still receiving the publisher's messages: skip them.
    let reply = loop {
        let v = recv_json(&mut watcher, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("watcher open");
        if v["type"] != "message" && v["type"] != "presence" {
            break v;
        }
    };
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "user_offline", "{reply}");
    assert_eq!(reply["ref"], "g", "{reply}");

    publisher.await.unwrap().unwrap();
    let heads: BTreeMap<String, u64> = lock(&publog)
        .acked
        .iter()
        .map(|(r, m)| (r.clone(), *m.keys().max().unwrap_or(&0)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let measured = heads["k"] - warm["k"];
    while logs
        .iter()
        .any(|l| (after_warm_up(&lock(l), "k", warm["k"]).len() as u64) < measured)
    {
        assert!(Instant::now() < deadline, "subscribers did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let mut moved = 0;
    for l in &logs {
        let l = lock(l);
        let offsets: Vec<u64> = after_warm_up(&l, "k", warm["k"]).into_keys().collect();
        assert_eq!(
            offsets,
            (warm["k"] + 1..=heads["k"]).collect::<Vec<_>>(),
            "no gap after the kill"
        );
        assert_eq!(l.duplicates, 0);
        assert_eq!(l.first_disorder(), None, "messages in offset order");
        if l.reconnects > 0 {
            moved += 1;
        }
    }
    assert!(
        moved > 0,
        "some subscribers were on the killed node and reconnected"
    );
    println!("kill -9: presence of the dead node expired after {expired_after:?}; {moved} subscribers moved");
}

/// The mission's promise: a rolling restart drains each node in turn while a publisher
/// sends steadily into several rooms; every subscriber ends with every message exactly
/// once, in offset order.
async fn rolling_restart_loses_nothing(backend: Backend) {
    let _s = serial().await;
    let mut c = cluster(
        backend,
        3,
        &[
            "--drain-reconnect-window",
            "1s",
            "--drain-deadline",
            "5s",
            "--drain-max-jitter",
            "200ms",
            "--rate-per-sec",
            "100",
            "--rate-burst",
            "100",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rooms: Vec<String> = (0..3).map(|i| format!("room{i}")).collect();
    let (logs, tasks) = spawn_subscribers(12, &c.haproxy_url(), &rooms, &stop);
    let warm = wait_subscribers_live(&c.nodes[0].ws_url(), &rooms, &logs).await;
    let publog = Arc::new(Mutex::new(PublisherLog::default()));
    let publisher = tokio::spawn(run_publisher(
        c.haproxy_url(),
        rooms.clone(),
        30,
        360,
        publog.clone(),
    ));
    let started = Instant::now();
    // Start draining once a second's worth (30) of messages is acknowledged.
    wait_acked(&publog, 30).await;
    for i in 0..3 {
        let t = Instant::now();
        let code =
            tokio::task::block_in_place(|| c.drain_node(i, Duration::from_secs(10))).unwrap();
        println!("node s{} drained in {:?}", i + 1, t.elapsed());
        assert_eq!(code, Some(0), "node s{} exits 0 after draining", i + 1);
        tokio::task::block_in_place(|| c.start_node(i)).unwrap();
        // Ready, and UP in haproxy again, so the next node's clients can move to it.
        tokio::task::block_in_place(|| c.wait_ready(Duration::from_secs(10))).unwrap();
    }
    publisher.await.unwrap().unwrap();
    let restart_secs = started.elapsed().as_secs_f64();
    let acked = lock(&publog).acked.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = logs.iter().all(|l| {
            let l = lock(l);
            acked
                .iter()
                .all(|(room, m)| after_warm_up(&l, room, warm[room]).len() >= m.len())
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "subscribers did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let total: usize = acked.values().map(|m| m.len()).sum();
    assert_eq!(total, 360, "every message was acknowledged");
    let mut longest = Duration::ZERO;
    let mut reconnect_times = Vec::new();
    for (i, l) in logs.iter().enumerate() {
        let l = lock(l);
        assert_eq!(l.duplicates, 0, "sub{i} got a duplicate");
        assert_eq!(l.first_disorder(), None, "sub{i}: messages in offset order");
        for (room, expected) in &acked {
            let got = after_warm_up(&l, room, warm[room]);
            assert_eq!(
                &got, expected,
                "sub{i} in {room}: every message exactly once, in offset order"
            );
        }
        assert_eq!(l.not_recovered, 0, "sub{i}: every resume was recovered");
        assert!(l.reconnects >= 1, "sub{i} was drained at least once");
        longest = longest.max(l.longest_disconnect);
        reconnect_times.extend(l.reconnect_times.iter().copied());
    }
    let errors = lock(&publog).errors.clone();
    assert!(
        errors.is_empty(),
        "{} publisher errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    let chatcluster_e2e::clients::lossless::ReconnectRate { peak, mean, .. } =
        chatcluster_e2e::clients::lossless::reconnect_rate(&reconnect_times);
    println!(
        "rolling restart: 3 nodes drained in {restart_secs:.1}s, {total} messages x {} subscribers, 0 lost, 0 duplicated; \
         longest time without a connection {longest:?}; reconnects {} (peak {peak}/s, mean {mean:.1}/s)",
        logs.len(),
        reconnect_times.len(),
    );
}

/// One Redis with a password serves two clusters (key prefixes) without crosstalk, and
/// history is bounded by count through Redis too. A node with the wrong password never
/// becomes ready, says why in `/admin/status`, and refuses what needs Redis.
async fn password_prefixes_and_history_bounds(backend: Backend) {
    let _s = serial().await;
    let c = cluster_with(
        backend,
        ClusterOptions {
            nodes: 2,
            extra: &[
                "--redis-key-prefix",
                "cluster-a",
                "--history-max-messages",
                "5",
            ],
            redis_password: Some("s3cret-pass"),
            ..ClusterOptions::default()
        },
    );
    let binary = chat_server_binary(LOADGEN).unwrap();
    let url = c.redis.url();
    let other = tokio::task::block_in_place(|| {
        ServerProcess::start(
            &binary,
            &[
                "--redis-url",
                &url,
                "--redis-password",
                "s3cret-pass",
                "--redis-key-prefix",
                "cluster-b",
            ]
            .iter()
            .chain(backend.flags())
            .copied()
            .collect::<Vec<_>>(),
        )
    })
    .unwrap();
    let wrong = tokio::task::block_in_place(|| {
        ServerProcess::start(
            &binary,
            &[
                "--redis-url",
                &url,
                "--redis-password",
                WRONG_PASSWORD,
                "--redis-key-prefix",
                "cluster-c",
            ]
            .iter()
            .chain(backend.flags())
            .copied()
            .collect::<Vec<_>>(),
        )
    })
    .unwrap();

    let (mut a1, _, _) = connect(&c.nodes[0].ws_url(), "user=a1", None)
        .await
        .unwrap();
    let epoch = join(&mut a1, "r", None).await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut b1, _, _) = connect(&other.ws_url(), "user=b1", None).await.unwrap();
    let jb = join(&mut b1, "r", None).await.unwrap();
    assert_eq!(
        jb["members"],
        json!(["b1"]),
        "cluster-b does not see cluster-a's presence"
    );
    for i in 1..=10 {
        let offset = send_and_ack(&mut a1, "r", &format!("a{i}"), &format!("{i}"))
            .await
            .unwrap();
        assert_eq!(offset, i);
    }
    send_json(
        &mut b1,
        json!({"type":"send","room":"r","body":"b","ref":"b"}),
    )
    .await
    .unwrap();
    let ack = recv_type(&mut b1, "ack").await.unwrap();
    assert_eq!(ack["offset"], 1, "cluster-b's room r has its own offsets");
    let m = recv_type(&mut b1, "message").await.unwrap();
    assert_eq!(m["body"], "b", "no cluster-a message reached cluster-b");

    // History keeps the last 5 of 10: a gap from offset 2 is gone, from 5 it is whole.
    let (mut late, _, _) = connect(&c.nodes[1].ws_url(), "user=late", None)
        .await
        .unwrap();
    let j = join(&mut late, "r", Some((&epoch, 2))).await.unwrap();
    assert_eq!(j["recovered"], false);
    let (mut ok, _, _) = connect(&c.nodes[1].ws_url(), "user=ok", None)
        .await
        .unwrap();
    let j = join(&mut ok, "r", Some((&epoch, 5))).await.unwrap();
    assert_eq!(j["recovered"], true);
    for i in 6..=10u64 {
        assert_eq!(recv_type(&mut ok, "message").await.unwrap()["offset"], i);
    }

    // Wrong password: Redis refused the authentication (not merely "not connected yet"),
    // the status says so without the password, readiness fails, and sessions are
    // answered `unavailable`.
    let v = backplane_verdict(wrong.admin_addr, WRONG_PASSWORD).await;
    let b = &v["backplane_status"];
    assert_eq!(b["kind"], "redis", "{v}");
    assert_eq!(b["connected"], false, "{v}");
    assert_eq!(v["backplane_ready"], false, "{v}");
    let reason = b["last_error"].as_str().unwrap_or_default();
    // The client library reports Redis' WRONGPASS as `AuthenticationFailed`.
    assert!(
        ["WRONGPASS", "NOAUTH", "AuthenticationFailed"]
            .iter()
            .any(|r| reason.contains(r)),
        "the status names the authentication failure: {reason}"
    );
    let (status, _) = tokio::task::block_in_place(|| {
        chatcluster_e2e::harness::http::status_of(wrong.admin_addr, "/readyz")
    });
    assert_eq!(status, 503);
    assert_sessions_answer_unavailable(&wrong.ws_url()).await;
}

/// Distinctive, so that finding it in `/admin/status` cannot be a coincidence.
const WRONG_PASSWORD: &str = "not-the-pass-7f3a9c";

/// `rediss://`: a real redis-server with TLS on loopback and a certificate from a
/// private CA. A node given the CA (`--redis-ca-file`) works; one without it refuses the
/// untrusted certificate, says so in `/admin/status`, stays unready and answers sessions
/// `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_verifies_the_server_certificate() {
    let _s = serial().await;
    let tls = tokio::task::block_in_place(chatcluster_e2e::harness::tls::TestCa::create).unwrap();
    let (ca, cert, key) = (&tls.ca, &tls.cert, &tls.key);
    let port = chatcluster_e2e::harness::process::free_port().unwrap();
    let redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--tls-cert-file")
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .args(["--tls-auth-clients", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stopped by PID on every path, a failing assertion included.
    let _redis = KillOnDrop(redis);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tokio::task::block_in_place(|| {
        chatcluster_e2e::harness::process::wait_listening(addr, Duration::from_secs(10))
    })
    .unwrap();
    let url = format!("rediss://127.0.0.1:{port}/");
    let binary = chat_server_binary(LOADGEN).unwrap();
    let cert_arg = ca.to_string_lossy().into_owned();
    let trusted = tokio::task::block_in_place(|| {
        ServerProcess::start(
            &binary,
            &["--redis-url", &url, "--redis-ca-file", &cert_arg],
        )
    })
    .unwrap();
    let untrusted =
        tokio::task::block_in_place(|| ServerProcess::start(&binary, &["--redis-url", &url]))
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, _) = tokio::task::block_in_place(|| {
            chatcluster_e2e::harness::http::status_of(trusted.admin_addr, "/readyz")
        });
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node with the CA never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut a, _, _) = connect(&trusted.ws_url(), "user=a", None).await.unwrap();
    join(&mut a, "r", None).await.unwrap();
    assert_eq!(send_and_ack(&mut a, "r", "over tls", "1").await.unwrap(), 1);
    assert_eq!(
        recv_type(&mut a, "message").await.unwrap()["body"],
        "over tls"
    );
    // The refusal is certificate verification (not "not connected yet").
    let v = backplane_verdict(untrusted.admin_addr, "no password here").await;
    let b = &v["backplane_status"];
    assert_eq!(b["connected"], false, "{v}");
    let reason = b["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("certificate") && reason.contains("UnknownIssuer"),
        "the status names the untrusted certificate: {reason}"
    );
    let (code, _) = tokio::task::block_in_place(|| {
        chatcluster_e2e::harness::http::status_of(untrusted.admin_addr, "/readyz")
    });
    assert_eq!(code, 503, "a certificate from an unknown CA is refused");
    assert_sessions_answer_unavailable(&untrusted.ws_url()).await;
}

/// `rediss://` to a Redis Cluster whose clients, replication and cluster bus all speak
/// TLS: a node given the CA works across shards; one without it refuses the certificate
/// and stays unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_over_tls_verifies_the_certificates() {
    let _s = serial().await;
    let redis = tokio::task::block_in_place(|| {
        let tls = chatcluster_e2e::harness::tls::TestCa::create()?;
        chatcluster_e2e::harness::redis_cluster::RedisCluster::start_with(None, Some(tls))
    })
    .unwrap();
    let seeds = redis.seed_urls();
    assert!(seeds.starts_with("rediss://"), "{seeds}");
    let ca = redis.ca_file().unwrap().to_string_lossy().into_owned();
    let binary = chat_server_binary(LOADGEN).unwrap();
    let start = |extra: &[&str]| {
        let mut args = vec!["--redis-cluster", "--redis-url", seeds.as_str()];
        args.extend_from_slice(extra);
        tokio::task::block_in_place(|| ServerProcess::start(&binary, &args)).unwrap()
    };
    let a = start(&["--redis-ca-file", &ca, "--node-name", "a"]);
    let b = start(&["--redis-ca-file", &ca, "--node-name", "b"]);
    let untrusted = start(&["--node-name", "untrusted"]);
    for node in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::task::block_in_place(|| {
            chatcluster_e2e::harness::http::status_of(node.admin_addr, "/readyz")
        })
        .0 != 200
        {
            assert!(
                Instant::now() < deadline,
                "a node with the CA never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Rooms on several shards, across the two nodes.
    let (mut alice, _, _) = connect(&a.ws_url(), "user=alice", None).await.unwrap();
    let (mut bob, _, _) = connect(&b.ws_url(), "user=bob", None).await.unwrap();
    let rooms = ["r1", "r2", "r3", "r4"];
    for room in rooms {
        join(&mut bob, room, None).await.unwrap();
        join(&mut alice, room, None).await.unwrap();
    }
    for room in rooms {
        send_and_ack(&mut alice, room, &format!("over tls in {room}"), room)
            .await
            .unwrap();
        loop {
            let m = recv_type(&mut bob, "message").await.unwrap();
            if m["room"] == room {
                assert_eq!(m["body"], format!("over tls in {room}"));
                break;
            }
        }
    }
    let v = backplane_verdict(untrusted.admin_addr, "no password here").await;
    let status = &v["backplane_status"];
    assert_eq!(status["connected"], false, "{v}");
    let reason = status["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("certificate") || reason.contains("UnknownIssuer"),
        "the status names the untrusted certificate: {reason}"
    );
    assert_sessions_answer_unavailable(&untrusted.ws_url()).await;
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// History through Redis is bounded by age too: a gap older than the history age is
/// not recovered, a younger one is.
async fn history_age_bound_through_redis(backend: Backend) {
    let _s = serial().await;
    let c = cluster(backend, 1, &["--history-max-age", "1s"]);
    let (mut p, _, _) = connect(&c.nodes[0].ws_url(), "user=p", None).await.unwrap();
    let (mut a, _, _) = connect(&c.nodes[0].ws_url(), "user=a", None).await.unwrap();
    let (mut b, _, _) = connect(&c.nodes[0].ws_url(), "user=b", None).await.unwrap();
    let epoch = join(&mut p, "r", None).await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    send_and_ack(&mut p, "r", "old", "1").await.unwrap();
    // This sleep is the test's subject, not a guess: age is measured on the node's clock,
    // and at least 1.2 s have passed since "old" was stored whatever the load, so it is
    // older than the 1 s bound. "new" is read back within milliseconds (both readers are
    // already connected), far inside the bound.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send_and_ack(&mut p, "r", "new", "2").await.unwrap();
    let j = join(&mut a, "r", Some((&epoch, 0))).await.unwrap();
    assert_eq!(j["recovered"], false, "offset 1 aged out of history");
    let j = join(&mut b, "r", Some((&epoch, 1))).await.unwrap();
    assert_eq!(j["recovered"], true);
    assert_eq!(recv_type(&mut b, "message").await.unwrap()["body"], "new");
}

/// `n` nodes (s1..) each reaching Redis through its own Toxiproxy link (named after it).
fn cluster_behind_toxiproxy(n: usize) -> (LocalCluster, Toxiproxy) {
    tokio::task::block_in_place(|| {
        let redis_port = free_port().unwrap();
        let redis = std::net::SocketAddr::from(([127, 0, 0, 1], redis_port));
        let links: Vec<Link> = (1..=n)
            .map(|i| Link::to(&format!("s{i}"), redis).unwrap())
            .collect();
        let proxy = Toxiproxy::start(&toxiproxy_binary().unwrap(), &links).unwrap();
        let c = LocalCluster::start_with(
            &chat_server_binary(LOADGEN).unwrap(),
            ClusterOptions {
                nodes: n,
                redis_port: Some(redis_port),
                node_redis_urls: links
                    .iter()
                    .map(|l| format!("redis://{}/", l.listen))
                    .collect(),
                ..ClusterOptions::default()
            },
        )
        .unwrap();
        c.wait_ready(Duration::from_secs(15)).unwrap();
        (c, proxy)
    })
}

/// A DM is acknowledged only when a node's pub/sub connection took it. A recipient whose
/// node has lost its link to Redis (its alive key not yet expired) is `user_offline`;
/// the DM used to be acknowledged and never delivered (found by the chaos soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_to_a_node_cut_from_redis_is_refused_not_acknowledged() {
    let _s = serial().await;
    let (c, proxy) = cluster_behind_toxiproxy(2);
    let (mut bob, _, _) = connect(&c.nodes[0].ws_url(), "user=bob", None)
        .await
        .unwrap();
    let (mut carol, _, _) = connect(&c.nodes[1].ws_url(), "user=carol", None)
        .await
        .unwrap();
    let dm = |r: &str| json!({"type":"dm","to":"carol","body":r,"ref":r});
    send_json(&mut bob, dm("before")).await.unwrap();
    assert_eq!(recv_type(&mut bob, "ack").await.unwrap()["ref"], "before");
    assert_eq!(recv_type(&mut carol, "dm").await.unwrap()["body"], "before");

    tokio::task::block_in_place(|| proxy.set_enabled("s2", false)).unwrap();
    // Redis sees s2's connections close at once; s2's alive key lives on for its TTL.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_json(&mut bob, dm("cut")).await.unwrap();
    let answer = recv_json(&mut bob, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            answer["type"].as_str(),
            answer["code"].as_str(),
            answer["ref"].as_str()
        ),
        (Some("error"), Some("user_offline"), Some("cut")),
        "{answer}"
    );

    // Once s2 is back on Redis, DMs reach Carol again (her session stayed up).
    tokio::task::block_in_place(|| proxy.set_enabled("s2", true)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        send_json(&mut bob, dm("after")).await.unwrap();
        let v = recv_json(&mut bob, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if v["type"] == "ack" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DMs never got through again: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(recv_type(&mut carol, "dm").await.unwrap()["body"], "after");
    drop(c);
}

/// A node killed and restarted under the same name (as a StatefulSet pod is) does not
/// inherit its previous life's DM routes: a DM to a user who was on it and is now on a
/// node cut from Redis is `user_offline`, not acknowledged by the restarted node that
/// has no session for the user (found by the chaos soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_take_dms_for_its_previous_sessions() {
    let _s = serial().await;
    let (mut c, proxy) = cluster_behind_toxiproxy(2);
    let (carol_on_s1, _, _) = connect(&c.nodes[0].ws_url(), "user=carol", None)
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        c.kill_node(0).unwrap();
        c.start_node(0).unwrap();
        c.wait_ready(Duration::from_secs(15)).unwrap();
    });
    drop(carol_on_s1);
    let (_carol_on_s2, _, _) = connect(&c.nodes[1].ws_url(), "user=carol", None)
        .await
        .unwrap();
    tokio::task::block_in_place(|| proxy.set_enabled("s2", false)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut dave, _, _) = connect(&c.nodes[0].ws_url(), "user=dave", None)
        .await
        .unwrap();
    send_json(
        &mut dave,
        json!({"type":"dm","to":"carol","body":"x","ref":"d"}),
    )
    .await
    .unwrap();
    let answer = recv_json(&mut dave, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("user_offline")),
        "{answer}"
    );
    drop(c);
}
