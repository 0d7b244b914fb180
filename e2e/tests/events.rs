//! Events to the application, received by a real HTTP receiver on loopback.
//!
//! - One node (the in-memory backplane, in this process): every event kind arrives,
//!   signed, in order; while the receiver is down the events wait and arrive once it is
//!   back; one that keeps failing past the give-up time goes to the dead letters.
//! - Three nodes over a real `redis-server` (the issue's test): messages are published
//!   through the server API while the receiver is down for 30 s and the node delivering
//!   the events is SIGKILLed mid-delivery. Every acknowledged message's event arrives,
//!   in order per room; a duplicate carries the same id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_server::config::Settings;
use chat_server::events::WebhookSettings;
use chat_server::http_client::Url;
use chat_server::rooms::Pattern;
use chatcluster_e2e::clients::ws::{connect, join, recv_json, send_and_ack, send_json};
use chatcluster_e2e::harness::binaries::chat_server_binary;
use chatcluster_e2e::harness::http::{request, Options};
use chatcluster_e2e::harness::local_cluster::{ClusterOptions, LocalCluster};
use chatcluster_e2e::harness::webhook_receiver::{Received, WebhookReceiver};
use serde_json::{json, Value};

const SECRET: &str = "events-suite-webhook-secret-0123456789";
const API_KEY: &str = "events-suite-api-key-01";
const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");

/// Waits until `done(received)` holds, at most `within`.
async fn wait_for(
    receiver: &WebhookReceiver,
    within: Duration,
    what: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        let got = receiver.received();
        if done(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not received within {within:?}; got {} events: {:?}",
            got.len(),
            got.iter()
                .map(|r| (&r.kind, &r.payload))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn webhook(receiver: &WebhookReceiver, rooms: &str, give_up_after: Duration) -> WebhookSettings {
    WebhookSettings {
        url: Url::parse(&receiver.url(), false).unwrap(),
        ca_file: None,
        secret: SECRET.as_bytes().to_vec(),
        rooms: vec![Pattern::parse(rooms, false).unwrap()],
        timeout: Duration::from_secs(2),
        retry_max: Duration::from_secs(1),
        give_up_after,
        max_backlog: 1_000,
        shards: 1,
    }
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    tokio::task::block_in_place(|| chatcluster_e2e::harness::http::metric(admin, name))
        .unwrap_or(0.0)
}

fn assert_signed_with_unique_ids(received: &[Received]) {
    let mut ids = HashSet::new();
    for r in received {
        assert!(r.signature_ok, "bad signature on {r:?}");
        assert_eq!(r.header_id, r.id, "X-Chat-Event-Id is the body's id");
        assert!(ids.insert(r.id.clone()), "id {} delivered twice", r.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_sends_every_kind_signed_in_order_and_waits_out_a_down_receiver() {
    let mut receiver = WebhookReceiver::start(SECRET).await.unwrap();
    let mut settings = Settings::local_test();
    settings.webhook = Some(webhook(&receiver, "support.*", Duration::from_secs(120)));
    let server = chat_server::start(settings).await.unwrap();
    let url = format!("ws://{}/ws", server.public_addr);

    let (mut ann, _, _) = connect(&url, "user=ann", None).await.unwrap();
    join(&mut ann, "support.1", None).await.unwrap();
    join(&mut ann, "lobby", None).await.unwrap();
    for i in 1..=3 {
        send_and_ack(&mut ann, "support.1", &format!("s{i}"), &format!("r{i}"))
            .await
            .unwrap();
    }
    send_and_ack(&mut ann, "lobby", "not an event", "l")
        .await
        .unwrap();
    send_json(
        &mut ann,
        json!({"type": "dm", "to": "zed", "body": "are you there?", "ref": "d"}),
    )
    .await
    .unwrap();
    loop {
        let f = recv_json(&mut ann, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if f["type"] == "error" {
            assert_eq!(f["code"], "user_offline");
            break;
        }
    }
    drop(ann);

    let got = wait_for(
        &receiver,
        Duration::from_secs(10),
        "the first events",
        |r| r.iter().any(|e| e.kind == "user.disconnected"),
    )
    .await;
    let kinds: Vec<&str> = got.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "user.connected",
            "message",
            "message",
            "message",
            "dm.offline",
            "user.disconnected"
        ],
        "in the order they happened; the lobby is not a webhook room"
    );
    assert_eq!(got[0].payload, json!({"user": "ann"}));
    let offsets: Vec<u64> = got[1..4]
        .iter()
        .map(|r| r.payload["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(got[1].payload["room"], "support.1");
    assert_eq!(got[1].payload["from"], "ann");
    assert_eq!(got[1].payload["body"], "s1");
    assert_eq!(
        (
            got[4].payload["to"].as_str(),
            got[4].payload["body"].as_str()
        ),
        (Some("zed"), Some("are you there?"))
    );

    // The receiver goes down: events wait, and arrive in order once it is back.
    receiver.stop();
    let (mut bob, _, _) = connect(&url, "user=bob", None).await.unwrap();
    join(&mut bob, "support.2", None).await.unwrap();
    for i in 1..=2 {
        send_and_ack(&mut bob, "support.2", &format!("b{i}"), &format!("b{i}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(metric(server.admin_addr, "chat_events_failed_attempts_total").await >= 2.0);
    assert_eq!(metric(server.admin_addr, "chat_events_lag").await, 3.0);
    receiver.restart().await.unwrap();
    let got = wait_for(
        &receiver,
        Duration::from_secs(10),
        "the waiting events",
        |r| r.iter().filter(|e| e.kind == "message").count() == 5,
    )
    .await;
    let after: Vec<(&str, Option<u64>)> = got[6..]
        .iter()
        .map(|r| (r.kind.as_str(), r.payload["offset"].as_u64()))
        .collect();
    assert_eq!(
        after,
        [
            ("user.connected", None),
            ("message", Some(1)),
            ("message", Some(2))
        ]
    );
    assert_signed_with_unique_ids(&got);
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_failing_past_the_give_up_time_goes_to_the_dead_letters() {
    let receiver = WebhookReceiver::start(SECRET).await.unwrap();
    let mut settings = Settings::local_test();
    settings.webhook = Some(webhook(&receiver, "*", Duration::from_secs(2)));
    let server = chat_server::start(settings).await.unwrap();
    let url = format!("ws://{}/ws", server.public_addr);
    receiver.set_failing(true);
    let (mut ann, _, _) = connect(&url, "user=ann", None).await.unwrap();
    join(&mut ann, "r", None).await.unwrap();
    send_and_ack(&mut ann, "r", "lost to the dead letters", "1")
        .await
        .unwrap();
    // user.connected and the message, each given up after 2 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(server.admin_addr, "chat_events_dead_lettered_total").await < 2.0 {
        assert!(Instant::now() < deadline, "never given up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver.set_failing(false);
    send_and_ack(&mut ann, "r", "after", "2").await.unwrap();
    let got = wait_for(&receiver, Duration::from_secs(10), "the next event", |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(
        got.len(),
        1,
        "the given-up events are not delivered: {got:?}"
    );
    assert_eq!(got[0].payload["body"], "after");
    assert_eq!(got[0].payload["offset"], 2);
    drop(ann);
}

/// One publish through the server API of the first live node that answers, retried on
/// the others with the same idempotency key; the offset it got.
fn publish(c: &LocalCluster, alive: &[bool], room: &str, body: &str, key: &str) -> u64 {
    let request_body = json!({"room": room, "body": body, "idempotency_key": key}).to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, node) in c.nodes.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            let answer = request(
                node.api,
                "POST",
                "/api/v1/publish",
                Options {
                    json: Some(&request_body),
                    bearer: Some(API_KEY),
                    timeout: Some(Duration::from_secs(3)),
                },
            );
            if let Some(a) = answer.filter(|a| a.status == 200) {
                let v: Value = serde_json::from_str(&a.body).unwrap();
                return v["offset"].as_u64().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no node took publish {key}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_event_through_a_down_receiver_and_a_killed_deliverer() {
    let mut receiver = WebhookReceiver::start(SECRET).await.unwrap();
    let hook_url = receiver.url();
    let extra = [
        "--webhook-url",
        hook_url.as_str(),
        "--webhook-secret",
        SECRET,
        "--webhook-rooms",
        "*",
        "--webhook-shards",
        "4",
        "--webhook-retry-max",
        "2s",
        "--webhook-timeout",
        "2s",
    ];
    let mut c = tokio::task::block_in_place(|| {
        let c = LocalCluster::start_with(
            &chat_server_binary(LOADGEN).unwrap(),
            ClusterOptions {
                nodes: 3,
                extra: &extra,
                api_key: Some(API_KEY),
                ..ClusterOptions::default()
            },
        )
        .unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    });
    // Users' first and last sessions, and an offline DM, recorded over Redis too.
    let (ann, _, _) = connect(&c.nodes[1].ws_url(), "user=ann", None)
        .await
        .unwrap();
    let dm = json!({"to": "zed", "body": "call me"}).to_string();
    let answer = tokio::task::block_in_place(|| {
        request(
            c.nodes[2].api,
            "POST",
            "/api/v1/dm",
            Options {
                json: Some(&dm),
                bearer: Some(API_KEY),
                timeout: Some(Duration::from_secs(3)),
            },
        )
    })
    .unwrap();
    assert!(
        answer.body.contains("\"delivered\":false"),
        "{}",
        answer.raw
    );
    drop(ann);
    let users = wait_for(
        &receiver,
        Duration::from_secs(20),
        "the user and DM events",
        |r| r.iter().any(|e| e.kind == "user.disconnected"),
    )
    .await;
    let kinds: HashSet<&str> = users.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        HashSet::from(["user.connected", "dm.offline", "user.disconnected"])
    );
    assert!(users.iter().all(|r| r.signature_ok));
    assert!(users.iter().any(|r| r.kind == "dm.offline"
        && r.payload
            == json!({"from": "$app", "to": "zed", "body": "call me", "ts": r.payload["ts"]})));
    let skip = users.len();

    let rooms = ["r0", "r1", "r2", "r3", "r4", "r5"];
    let mut alive = [true; 3];
    // room → offsets acknowledged by the API.
    let mut acked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut n = 0usize;
    let mut publish_some = |c: &LocalCluster, alive: &[bool], count: usize, phase: &str| {
        for _ in 0..count {
            let room = rooms[n % rooms.len()];
            let offset = publish(c, alive, room, &format!("{phase}{n}"), &format!("k{n}"));
            acked.entry(room.to_owned()).or_default().push(offset);
            n += 1;
        }
    };
    tokio::task::block_in_place(|| publish_some(&c, &alive, 60, "up"));
    wait_for(
        &receiver,
        Duration::from_secs(20),
        "the first 60 events",
        |r| r.len() >= skip + 60,
    )
    .await;

    // Down for 30 s: publishing goes on; the deliverers retry.
    receiver.stop();
    let down_at = Instant::now();
    tokio::task::block_in_place(|| publish_some(&c, &alive, 60, "down"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The node delivering the most events (its streams hold a backlog) is killed while it
    // retries them.
    let lags: Vec<f64> = tokio::task::block_in_place(|| {
        (0..3)
            .map(|i| c.metric(i, "chat_events_lag").unwrap_or(0.0))
            .collect()
    });
    let victim = (0..3).max_by(|a, b| lags[*a].total_cmp(&lags[*b])).unwrap();
    assert!(lags[victim] > 0.0, "some node holds a backlog: {lags:?}");
    tokio::task::block_in_place(|| c.kill_node(victim)).unwrap();
    alive[victim] = false;
    tokio::task::block_in_place(|| publish_some(&c, &alive, 30, "killed"));
    let left = Duration::from_secs(30).saturating_sub(down_at.elapsed());
    tokio::time::sleep(left).await;
    receiver.restart().await.unwrap();
    tokio::task::block_in_place(|| publish_some(&c, &alive, 30, "back"));

    let expected: usize = acked.values().map(Vec::len).sum();
    let got = wait_for(
        &receiver,
        Duration::from_secs(90),
        "every acknowledged message",
        |r| {
            let seen: HashSet<(String, u64)> = r
                .iter()
                .filter_map(|e| {
                    Some((
                        e.payload["room"].as_str()?.to_owned(),
                        e.payload["offset"].as_u64()?,
                    ))
                })
                .collect();
            seen.len() >= expected
        },
    )
    .await;

    let got = &got[skip..];
    let mut first_seen: HashMap<(String, u64), String> = HashMap::new();
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in got {
        assert!(r.signature_ok, "bad signature: {r:?}");
        assert_eq!(r.header_id, r.id);
        assert_eq!(r.kind, "message");
        let key = (
            r.payload["room"].as_str().unwrap().to_owned(),
            r.payload["offset"].as_u64().unwrap(),
        );
        match first_seen.get(&key) {
            Some(id) => assert_eq!(id, &r.id, "a duplicate carries the same id: {key:?}"),
            None => {
                first_seen.insert(key.clone(), r.id.clone());
                order.entry(key.0).or_default().push(key.1);
            }
        }
    }
    for (room, offsets) in &acked {
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        assert_eq!(
            order.get(room),
            Some(&sorted),
            "room {room}: every acknowledged message's event, first arrivals in offset order"
        );
    }
    let duplicates = got.len() - first_seen.len();
    println!(
        "events: {expected} acknowledged, {} received, {duplicates} duplicates; node s{} killed with lags {lags:?}",
        got.len(),
        victim + 1
    );
    drop(c);
}
