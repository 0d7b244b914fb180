//! The server API over Redis with three nodes: any node answers for the whole cluster. A
//! publish through one node's API reaches members on the others, a retried publish with
//! the same idempotency key through another node is not delivered again, a disconnect
//! reaches the user's sessions on every node, and presence, history, rooms and sessions
//! read the same from any node. Runs on a single Redis and on a Redis Cluster.

#[macro_use]
mod multinode_support;

use std::net::SocketAddr;
use std::time::Duration;

use chatcluster_e2e::clients::ws::{connect, join, recv_json, recv_type, send_and_ack, Ws};
use chatcluster_e2e::harness::http::{request, Options};
use chatcluster_e2e::harness::local_cluster::ClusterOptions;
use multinode_support::*;
use serde_json::{json, Value};

const KEY: &str = "cluster-api-key-0001";

on_both_backends!(any_node_answers_for_the_whole_cluster);

async fn api(node: SocketAddr, endpoint: &str, body: Value) -> Value {
    let body = body.to_string();
    let path = format!("/api/v1/{endpoint}");
    let answer = tokio::task::block_in_place(|| {
        request(
            node,
            "POST",
            &path,
            Options {
                json: Some(&body),
                bearer: Some(KEY),
                timeout: Some(Duration::from_secs(5)),
            },
        )
    })
    .unwrap_or_else(|| panic!("{endpoint}: no answer from {node}"));
    assert_eq!(answer.status, 200, "{endpoint} {body}: {}", answer.raw);
    serde_json::from_str(&answer.body).expect("JSON answer")
}

/// The next frame of `kind`, skipping presence updates, acks and the room's first
/// message (a client's own, sent before the API's).
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let f = recv_json(ws, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no {kind} frame"));
        if f["type"] == kind && !(kind == "message" && f["offset"] == 1) {
            return f;
        }
        assert!(
            matches!(f["type"].as_str(), Some("presence" | "ack" | "message")),
            "expected {kind}, got {f}"
        );
    }
}

async fn any_node_answers_for_the_whole_cluster(backend: Backend) {
    let _s = serial().await;
    let c = cluster_with(
        backend,
        ClusterOptions {
            nodes: 3,
            api_key: Some(KEY),
            ..ClusterOptions::default()
        },
    );
    let apis: Vec<SocketAddr> = c.nodes.iter().map(|n| n.api).collect();
    let mut on_s1 = connect(&c.nodes[0].ws_url(), "user=ann", None)
        .await
        .unwrap()
        .0;
    let mut on_s2 = connect(&c.nodes[1].ws_url(), "user=bob", None)
        .await
        .unwrap()
        .0;
    let mut mallory_s1 = connect(&c.nodes[0].ws_url(), "user=mallory", None)
        .await
        .unwrap()
        .0;
    let mut mallory_s3 = connect(&c.nodes[2].ws_url(), "user=mallory", None)
        .await
        .unwrap()
        .0;
    for ws in [&mut on_s1, &mut on_s2, &mut mallory_s1, &mut mallory_s3] {
        join(ws, "lobby", None).await.unwrap();
    }
    send_and_ack(&mut on_s1, "lobby", "hello", "h")
        .await
        .unwrap();

    // A publish through s3, which hosts nobody but mallory, reaches s1 and s2.
    let first = api(
        apis[2],
        "publish",
        json!({"room": "lobby", "body": "notice", "idempotency_key": "n-1"}),
    )
    .await;
    assert_eq!(
        (first["offset"].as_u64(), first["duplicate"].as_bool()),
        (Some(2), Some(false))
    );
    for ws in [&mut on_s1, &mut on_s2] {
        let m = next_of(ws, "message").await;
        assert_eq!(
            (m["body"].as_str(), m["from"].as_str()),
            (Some("notice"), Some("$app"))
        );
    }
    // The same key through s1: the first publish's answer, nothing delivered again.
    let again = api(
        apis[0],
        "publish",
        json!({"room": "lobby", "body": "notice", "idempotency_key": "n-1"}),
    )
    .await;
    assert_eq!(
        (again["offset"].as_u64(), again["duplicate"].as_bool()),
        (Some(2), Some(true))
    );
    api(apis[1], "publish", json!({"room": "lobby", "body": "next"})).await;
    assert_eq!(
        next_of(&mut on_s2, "message").await["body"],
        "next",
        "the retried notice never arrived twice"
    );

    // Every node reads the same cluster-wide state.
    for node in &apis {
        let presence = api(*node, "presence", json!({"room": "lobby"})).await;
        assert_eq!(presence["members"], json!(["ann", "bob", "mallory"]));
        let history = api(*node, "history", json!({"room": "lobby", "after": 1})).await;
        let bodies: Vec<&str> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, ["notice", "next"]);
        let room = api(*node, "room", json!({"room": "lobby"})).await;
        assert_eq!(
            (room["head"].as_u64(), room["members"].as_u64()),
            (Some(3), Some(3))
        );
        let rooms = api(*node, "rooms", json!({})).await;
        assert_eq!(rooms["rooms"][0]["room"], "lobby");
        let sessions = api(*node, "user_sessions", json!({"user": "mallory"})).await;
        assert_eq!(
            sessions,
            json!({"user": "mallory", "sessions": 2, "nodes": [
                {"node": sessions["nodes"][0]["node"], "sessions": 1},
                {"node": sessions["nodes"][1]["node"], "sessions": 1},
            ]})
        );
    }

    // Removing mallory from the lobby through s2 reaches both of her sessions.
    let removed = api(
        apis[1],
        "remove_from_room",
        json!({"room": "lobby", "user": "mallory"}),
    )
    .await;
    assert_eq!(removed["reached"], 2, "both nodes holding her sessions");
    for ws in [&mut mallory_s1, &mut mallory_s3] {
        let e = next_of(ws, "error").await;
        assert_eq!(e["code"], "removed");
        let left = recv_type(ws, "left").await.unwrap();
        assert_eq!(left["room"], "lobby");
    }
    // Then a disconnect through s2 closes both, with the code and reason given.
    api(
        apis[1],
        "disconnect",
        json!({"user": "mallory", "code": 4403, "reason": "banned"}),
    )
    .await;
    for ws in [&mut mallory_s1, &mut mallory_s3] {
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(ws))
                .await
                .expect("closed in time")
            {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => break f,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        let f = closed.expect("a close frame with a code");
        assert_eq!((u16::from(f.code), f.reason.as_str()), (4403, "banned"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = api(apis[0], "user_sessions", json!({"user": "mallory"})).await;
        if s["sessions"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions still listed: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let presence = api(apis[2], "presence", json!({"room": "lobby"})).await;
    assert_eq!(presence["members"], json!(["ann", "bob"]));
    drop(c);
}
