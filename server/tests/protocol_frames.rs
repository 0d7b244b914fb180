//! Every frame type and every error frame, against a real server over WebSocket.

mod common;

use chat_server::config::Settings;
use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn join_send_ack_leave_ping() {
    let server = start_default().await;
    let mut a = Client::connect(server.public_addr, "alice").await;
    let joined = a.join("lobby").await;
    assert_eq!(joined["offset"], 0);
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["members"], json!(["alice"]));
    assert!(joined["epoch"].as_str().is_some_and(|e| !e.is_empty()));

    a.send(json!({"type":"send","room":"lobby","body":"hello","ref":"r1"}))
        .await;
    let ack = a.recv_type("ack").await;
    assert_eq!(
        ack,
        json!({"type":"ack","ref":"r1","room":"lobby","offset":1})
    );
    let msg = a.recv_type("message").await;
    assert_eq!(msg["body"], "hello");
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["offset"], 1);
    assert_eq!(msg["epoch"], joined["epoch"]);
    assert!(msg["ts"].as_u64().unwrap() > 1_600_000_000_000);

    a.send(json!({"type":"ping"})).await;
    assert_eq!(a.recv_type("pong").await, json!({"type":"pong"}));

    a.send(json!({"type":"leave","room":"lobby"})).await;
    assert_eq!(
        a.recv_type("left").await,
        json!({"type":"left","room":"lobby"})
    );
    a.close().await;
}

#[tokio::test]
async fn every_error_frame() {
    let mut settings = Settings::local_test();
    settings.max_rooms_per_connection = 2;
    settings.max_body_bytes = 100;
    let server = start(settings).await;
    let mut a = Client::connect(server.public_addr, "alice").await;

    let cases = [
        ("{not json", "bad_json", None),
        (r#"{"type":"shout"}"#, "unknown_type", None),
        (r#"{"type":"join"}"#, "invalid_frame", None),
        (r#"{"room":"x"}"#, "invalid_frame", None),
        (
            r#"{"type":"join","room":"no spaces"}"#,
            "invalid_room",
            None,
        ),
        (
            r#"{"type":"dm","to":"b b","body":"x","ref":"d1"}"#,
            "invalid_user",
            Some("d1"),
        ),
        (
            r#"{"type":"send","room":"lobby","body":"x","ref":"s1"}"#,
            "not_joined",
            Some("s1"),
        ),
        (r#"{"type":"leave","room":"lobby"}"#, "not_joined", None),
        (
            r#"{"type":"dm","to":"nobody","body":"x","ref":"d2"}"#,
            "user_offline",
            Some("d2"),
        ),
    ];
    for (text, code, r) in cases {
        a.send_raw(Message::Text(text.into())).await;
        let err = a.recv_type("error").await;
        assert_eq!(err["code"], code, "{text} -> {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(err.get("ref").and_then(|v| v.as_str()), r, "{text}");
    }

    let long = "x".repeat(101);
    a.send(json!({"type":"send","room":"lobby","body":long,"ref":"big"}))
        .await;
    let err = a.recv_type("error").await;
    assert_eq!(err["code"], "body_too_long");
    assert_eq!(err["ref"], "big");

    let long_ref = "r".repeat(65);
    a.send(json!({"type":"send","room":"lobby","body":"x","ref":long_ref}))
        .await;
    assert_eq!(a.recv_type("error").await["code"], "invalid_ref");

    a.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(a.recv_type("error").await["code"], "unsupported");

    a.join("one").await;
    a.send(json!({"type":"join","room":"one"})).await;
    assert_eq!(a.recv_type("error").await["code"], "already_joined");
    a.join("two").await;
    a.send(json!({"type":"join","room":"three"})).await;
    assert_eq!(a.recv_type("error").await["code"], "too_many_rooms");

    // After all of that the connection still works.
    a.send(json!({"type":"send","room":"one","body":"still here","ref":"ok"}))
        .await;
    assert_eq!(a.recv_type("ack").await["ref"], "ok");
    let errors = metric(
        server.admin_addr,
        "chat_frame_errors_total{code=\"bad_json\"}",
    )
    .await;
    assert_eq!(errors, 1.0);
    a.close().await;
}

#[tokio::test]
async fn fanout_reaches_every_member_in_order() {
    let server = start_default().await;
    let mut members = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(server.public_addr, &format!("u{i}")).await;
        c.join("big").await;
        members.push(c);
    }
    let mut publisher = Client::connect(server.public_addr, "pub").await;
    publisher.join("big").await;
    for i in 0..25 {
        publisher
            .send(json!({"type":"send","room":"big","body":format!("m{i}")}))
            .await;
    }
    for c in members.iter_mut() {
        for i in 0..25u64 {
            let m = c.recv_type("message").await;
            assert_eq!(m["offset"], i + 1, "{}", c.user);
            assert_eq!(m["body"], format!("m{i}"));
        }
    }
    let delivered = metric(server.admin_addr, "chat_messages_delivered_total").await;
    assert!(delivered >= 40.0 * 25.0, "delivered {delivered}");
    assert_eq!(
        metric(server.admin_addr, "chat_messages_received_total").await,
        25.0
    );
}

#[tokio::test]
async fn direct_messages_reach_every_session_of_the_user() {
    let server = start_default().await;
    let mut alice: Vec<Client> = Vec::new();
    for _ in 0..3 {
        alice.push(Client::connect(server.public_addr, "alice").await);
    }
    let mut carol = Client::connect(server.public_addr, "carol").await;
    let mut bob = Client::connect(server.public_addr, "bob").await;
    bob.send(json!({"type":"dm","to":"alice","body":"psst","ref":"d"}))
        .await;
    assert_eq!(bob.recv_type("ack").await, json!({"type":"ack","ref":"d"}));
    for a in alice.iter_mut() {
        let dm = a.recv_type("dm").await;
        assert_eq!(dm["from"], "bob");
        assert_eq!(dm["to"], "alice");
        assert_eq!(dm["body"], "psst");
    }
    assert!(matches!(
        carol
            .next_event(std::time::Duration::from_millis(300))
            .await,
        Event::Timeout
    ));
}

#[tokio::test]
async fn presence_is_per_user_not_per_session() {
    let server = start_default().await;
    let mut alice = Client::connect(server.public_addr, "alice").await;
    alice.join("r").await;
    // Alice sees her own arrival announced after `joined`.
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","room":"r","joined":["alice"],"left":[],"member_count":1})
    );

    let mut bob1 = Client::connect(server.public_addr, "bob").await;
    let j = bob1.join("r").await;
    assert_eq!(j["members"], json!(["alice", "bob"]));
    assert_eq!(j["member_count"], 2);
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","room":"r","joined":["bob"],"left":[],"member_count":2})
    );

    let mut bob2 = Client::connect(server.public_addr, "bob").await;
    bob2.join("r").await;
    bob1.close().await;
    // A second session arriving and the first leaving are not news.
    alice.send(json!({"type":"ping"})).await;
    assert_eq!(alice.recv().await["type"], "pong");

    bob2.close().await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","room":"r","joined":[],"left":["bob"],"member_count":1})
    );
}

#[tokio::test]
async fn client_initiated_close_is_answered_cleanly() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let server = start_default().await;
    let mut a = Client::connect(server.public_addr, "alice").await;
    a.send_raw(Message::Close(Some(CloseFrame {
        code: WsCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    match a.next_event(WAIT).await {
        Event::Closed(Some((code, _))) => assert_eq!(code, 1000),
        other => panic!("expected the server's close reply, got {other:?}"),
    }
    assert!(matches!(a.next_event(WAIT).await, Event::Ended));
}
