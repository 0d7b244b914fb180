//! Every limit gets a clear answer, and nothing a client sends takes down the server or
//! other connections.

mod common;

use std::time::Duration;

use chat_server::config::Settings;
use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn oversize_frame_closes_with_1009_and_spares_others() {
    let mut settings = Settings::local_test();
    settings.max_frame_bytes = 1024;
    settings.max_body_bytes = 512;
    let server = start(settings).await;
    let mut bystander = Client::connect(server.public_addr, "bystander").await;
    bystander.join("r").await;
    let mut big = Client::connect(server.public_addr, "big").await;
    big.send_raw(Message::Text("x".repeat(4000).into())).await;
    let (code, reason) = big.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("1024"), "{reason}");
    bystander
        .send(json!({"type":"send","room":"r","body":"fine","ref":"1"}))
        .await;
    assert_eq!(bystander.recv_type("ack").await["ref"], "1");
    assert_eq!(
        metric(
            server.admin_addr,
            "chat_connections_closed_total{code=\"1009\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn rate_limit_answers_with_an_error_and_keeps_the_connection() {
    let mut settings = Settings::local_test();
    settings.rate_per_sec = 2.0;
    settings.rate_burst = 3;
    let server = start(settings).await;
    let mut c = Client::connect(server.public_addr, "flood").await;
    for _ in 0..10 {
        c.send(json!({"type":"ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..10 {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                limited += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!((3..=4).contains(&pongs), "burst of 3 (+1 refill): {pongs}");
    assert_eq!(pongs + limited, 10);
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.send(json!({"type":"ping"})).await;
    assert_eq!(
        c.recv().await["type"],
        "pong",
        "tokens refill; connection kept"
    );
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4000_and_others_keep_going() {
    let mut settings = Settings::local_test();
    settings.send_queue_bytes = 64 * 1024;
    settings.rate_per_sec = 1e6;
    settings.rate_burst = 1_000_000;
    let server = start(settings).await;
    let mut slow = Client::connect(server.public_addr, "slow").await;
    slow.join("r").await;
    let mut p = Client::connect(server.public_addr, "pub").await;
    p.join("r").await;
    let body = "y".repeat(4000);
    // ~16 MB: more than the loopback socket buffers plus the 64 KiB queue can hold.
    for batch in 0..80 {
        for i in 0..50 {
            p.send(json!({"type":"send","room":"r","body":body,"ref":format!("{batch}-{i}")}))
                .await;
        }
        let mut acks = 0;
        while acks < 50 {
            if p.recv().await["type"] == "ack" {
                acks += 1;
            }
        }
    }
    // The slow client now reads: buffered messages, then the slow-consumer close.
    let (code, reason) = slow.expect_close().await;
    assert_eq!(code, 4000, "{reason}");
    assert_eq!(
        metric(server.admin_addr, "chat_slow_consumer_closes_total").await,
        1.0
    );
    // The publisher, which kept reading, is unaffected: its echoes end in our pong.
    p.send(json!({"type":"ping"})).await;
    while p.recv().await["type"] != "pong" {}
}

#[tokio::test]
async fn connection_cap_refuses_before_upgrade() {
    let mut settings = Settings::local_test();
    settings.max_connections = 2;
    let server = start(settings).await;
    let _a = Client::connect(server.public_addr, "a").await;
    let b = Client::connect(server.public_addr, "b").await;
    let refused = try_connect_with(server.public_addr, "user=c", &[])
        .await
        .expect_err("third connection refused");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert!(refused.body.contains("maximum of 2"), "{}", refused.body);
    b.close().await;
    // The slot is released when a session ends.
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(ws) = try_connect_with(server.public_addr, "user=c", &[]).await {
            ok = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "a freed slot is reusable");
}

#[tokio::test]
async fn accept_rate_refuses_bursts_with_retry_after() {
    let mut settings = Settings::local_test();
    settings.accept_rate_per_sec = 0.5;
    settings.accept_burst = 2;
    let server = start(settings).await;
    let _a = Client::connect(server.public_addr, "a").await;
    let _b = Client::connect(server.public_addr, "b").await;
    let refused = try_connect_with(server.public_addr, "user=c", &[])
        .await
        .expect_err("over the accept rate");
    assert_eq!(refused.status, 503);
    let retry: u64 = refused.retry_after.unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        metric(
            server.admin_addr,
            "chat_upgrades_rejected_total{reason=\"accept_rate\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn garbage_never_takes_the_server_down() {
    let server = start_default().await;
    let mut bystander = Client::connect(server.public_addr, "bystander").await;
    let mut g = Client::connect(server.public_addr, "garbage").await;
    let nested = "[".repeat(5000);
    let samples = [
        "",
        "null",
        "{}",
        "{\"type\":null}",
        "{\"type\":\"join\",\"room\":12}",
        "{\"type\":\"join\",\"room\":\"a\",\"since\":{\"epoch\":\"\",\"offset\":1}}",
        "{\"type\":\"join\",\"room\":\"a\",\"since\":{\"epoch\":\"e\",\"offset\":-1}}",
        "{\"type\":\"send\",\"room\":\"a\",\"body\":\"\\ud800\"}",
        nested.as_str(),
        "\u{0}\u{1}\u{2}",
    ];
    for s in samples {
        g.send_raw(Message::Text(s.into())).await;
        let v = g.recv().await;
        assert_eq!(v["type"], "error", "{s:?} -> {v}");
    }
    g.send_raw(Message::Binary(vec![0xff; 10].into())).await;
    assert_eq!(g.recv().await["code"], "unsupported");
    // The garbage sender and everyone else are still served.
    g.send(json!({"type":"ping"})).await;
    assert_eq!(g.recv().await["type"], "pong");
    bystander.send(json!({"type":"ping"})).await;
    assert_eq!(bystander.recv().await["type"], "pong");
}
