//! Resume: a client that rejoins with `since` gets the whole gap, in order, then live
//! messages with no gap and no duplicate at the seam; or `recovered: false`.

mod common;

use std::time::Duration;

use chat_server::config::Settings;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn resume_replays_the_whole_gap_then_live() {
    let server = start_default().await;
    let mut sub = Client::connect(server.public_addr, "sub").await;
    let j = sub.join("r").await;
    let epoch = j["epoch"].as_str().unwrap().to_owned();
    let mut publisher = Client::connect(server.public_addr, "pub").await;
    publisher.join("r").await;
    for i in 1..=3 {
        publish(&mut publisher, "r", &format!("m{i}")).await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = sub.recv_type("message").await["offset"].as_u64().unwrap();
    }
    assert_eq!(last, 3);
    sub.close().await;

    // Published while the subscriber was away.
    for i in 4..=8 {
        publish(&mut publisher, "r", &format!("m{i}")).await;
    }
    let mut sub = Client::connect(server.public_addr, "sub").await;
    sub.send(json!({"type":"join","room":"r","since":{"epoch":epoch,"offset":last}}))
        .await;
    let j = sub.recv_type("joined").await;
    assert_eq!(j["recovered"], true);
    assert_eq!(j["offset"], 8);
    for i in 4..=8u64 {
        let m = sub.recv_type("message").await;
        assert_eq!(m["offset"], i);
        assert_eq!(m["body"], format!("m{i}"));
    }
    publish(&mut publisher, "r", "m9").await;
    let m = sub.recv_type("message").await;
    assert_eq!(m["offset"], 9, "live continues right after the replay");
    assert_eq!(
        metric(
            server.admin_addr,
            "chat_resumes_total{result=\"recovered\"}"
        )
        .await,
        1.0
    );
}

/// A gap many pages long (the backplane hands a replay over 64 messages at a time) comes
/// whole and in order, then live traffic continues at the seam.
#[tokio::test]
async fn a_long_gap_is_replayed_page_by_page_in_order() {
    let server = start_default().await;
    let mut publisher = Client::connect(server.public_addr, "pub").await;
    let epoch = publisher.join("long").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=300 {
        publish(&mut publisher, "long", &format!("m{i}")).await;
    }
    let mut sub = Client::connect(server.public_addr, "sub").await;
    sub.send(json!({"type":"join","room":"long","since":{"epoch":epoch,"offset":10}}))
        .await;
    let j = sub.recv_type("joined").await;
    assert_eq!(
        (j["recovered"].as_bool(), j["offset"].as_u64()),
        (Some(true), Some(300))
    );
    for i in 11..=300u64 {
        let m = sub.recv_type("message").await;
        assert_eq!(m["offset"], i);
        assert_eq!(m["body"], format!("m{i}"));
    }
    publish(&mut publisher, "long", "m301").await;
    assert_eq!(sub.recv_type("message").await["offset"], 301);
}

/// Resumes while a publisher keeps sending: the union of replay and live must be every
/// offset exactly once, in order.
#[tokio::test]
async fn seam_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    let server = start_default().await;
    let addr = server.public_addr;
    let mut first = Client::connect(addr, "watcher").await;
    let epoch = first.join("busy").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    // The publisher is in the room before the watcher leaves it: an empty room with no
    // history may be evicted (its epoch forgotten) at any moment, which would make the
    // first resume `recovered: false` for a reason this test is not about.
    let mut p = Client::connect(addr, "pub").await;
    p.join("busy").await;
    first.close().await;

    let publisher = tokio::spawn(async move {
        for i in 0..300 {
            p.send(json!({"type":"send","room":"busy","body":format!("{i}")}))
                .await;
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        p
    });
    let mut seen: Vec<u64> = Vec::new();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut c = Client::connect(addr, "watcher").await;
        let since = seen.last().copied().unwrap_or(0);
        c.send(json!({"type":"join","room":"busy","since":{"epoch":epoch,"offset":since}}))
            .await;
        let j = c.recv_type("joined").await;
        assert_eq!(j["recovered"], true, "round {round}");
        // Read for a short while, then drop the connection mid-stream.
        let until = tokio::time::Instant::now() + Duration::from_millis(40);
        loop {
            match c
                .next_event(until.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                Event::Frame(v) if v["type"] == "message" => {
                    seen.push(v["offset"].as_u64().unwrap())
                }
                Event::Frame(_) => {}
                Event::Timeout => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(c);
    }
    let mut p = publisher.await.unwrap();
    let head = publish(&mut p, "busy", "last").await;
    let mut c = Client::connect(addr, "watcher").await;
    let since = seen.last().copied().unwrap_or(0);
    c.send(json!({"type":"join","room":"busy","since":{"epoch":epoch,"offset":since}}))
        .await;
    assert_eq!(c.recv_type("joined").await["recovered"], true);
    while seen.last().copied().unwrap_or(0) < head {
        let v: Value = c.recv_type("message").await;
        seen.push(v["offset"].as_u64().unwrap());
    }
    let expected: Vec<u64> = (1..=head).collect();
    assert_eq!(seen, expected, "every offset exactly once, in order");
}

#[tokio::test]
async fn gap_beyond_history_is_not_recovered_and_nothing_is_replayed() {
    let mut settings = Settings::local_test();
    settings.history_max_messages = 5;
    let server = start(settings).await;
    let mut p = Client::connect(server.public_addr, "pub").await;
    let epoch = p.join("r").await["epoch"].as_str().unwrap().to_owned();
    for i in 0..20 {
        publish(&mut p, "r", &format!("m{i}")).await;
    }
    let mut c = Client::connect(server.public_addr, "late").await;
    c.send(json!({"type":"join","room":"r","since":{"epoch":epoch,"offset":3}}))
        .await;
    let j = c.recv_type("joined").await;
    assert_eq!(j["recovered"], false);
    assert_eq!(j["offset"], 20);
    // Within history: offsets 16..20 are retained, so since=15 is whole.
    let mut d = Client::connect(server.public_addr, "late2").await;
    d.send(json!({"type":"join","room":"r","since":{"epoch":epoch,"offset":15}}))
        .await;
    assert_eq!(d.recv_type("joined").await["recovered"], true);
    for i in 16..=20u64 {
        assert_eq!(d.recv_type("message").await["offset"], i);
    }
    // No replay reached the not-recovered client: next is live traffic only.
    publish(&mut p, "r", "live").await;
    assert_eq!(c.recv_type("message").await["offset"], 21);
    // An unknown epoch is never recovered.
    let mut e = Client::connect(server.public_addr, "stale").await;
    e.send(json!({"type":"join","room":"r","since":{"epoch":"0000000000000000","offset":20}}))
        .await;
    assert_eq!(e.recv_type("joined").await["recovered"], false);
    assert_eq!(
        metric(
            server.admin_addr,
            "chat_resumes_total{result=\"not_recovered\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn gap_older_than_max_age_is_not_recovered() {
    let mut settings = Settings::local_test();
    settings.history_max_age = Duration::from_millis(300);
    let server = start(settings).await;
    let mut p = Client::connect(server.public_addr, "pub").await;
    let epoch = p.join("r").await["epoch"].as_str().unwrap().to_owned();
    publish(&mut p, "r", "old").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&mut p, "r", "new").await;
    let mut c = Client::connect(server.public_addr, "late").await;
    c.send(json!({"type":"join","room":"r","since":{"epoch":epoch,"offset":0}}))
        .await;
    assert_eq!(c.recv_type("joined").await["recovered"], false);
}
