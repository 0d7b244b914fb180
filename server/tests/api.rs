//! The server API on one node (the in-memory backplane), with real WebSocket clients on
//! the other side: what each endpoint does to them, and what a caller without a key, over
//! a limit or with a bad field gets. The same calls over Redis and three nodes are in
//! e2e/tests/multinode.rs; the OpenAPI document is checked against the served API by
//! Schemathesis in the test command.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chat_server::api::OPENAPI_DOCUMENT;
use chat_server::config::ApiSettings;
use chat_server::config::Settings;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "api-key-for-tests-0001";

fn api_settings() -> ApiSettings {
    ApiSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        keys: vec![KEY.into()],
        keys_file: None,
        rate_per_sec: 1_000.0,
        burst: 1_000,
        max_body_bytes: 64 * 1024,
        idempotency_ttl: Duration::from_secs(600),
    }
}

async fn start_with_api(api: ApiSettings) -> (chat_server::RunningServer, SocketAddr) {
    let mut settings = Settings::local_test();
    settings.api = Some(api);
    let server = start(settings).await;
    let addr = server.api_addr.expect("the API is on when a key is set");
    (server, addr)
}

/// Asserts that for `ms` the client gets nothing but presence updates: no message, DM,
/// error or close.
async fn assert_quiet(client: &mut Client, ms: u64, why: &str) {
    let until = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Event::Timeout => return,
            Event::Frame(f) if f["type"] == "presence" => continue,
            other => panic!("{why}: got {other:?}"),
        }
    }
}

/// POSTs `body` to `/api/v1/{endpoint}` with `key`; the status, the head and the JSON.
async fn call_with(
    api: SocketAddr,
    key: Option<&str>,
    endpoint: &str,
    body: &str,
) -> (u16, String, Value) {
    let (status, head, text) = http_exchange(
        api,
        "POST",
        &format!("/api/v1/{endpoint}"),
        key,
        &[("Content-Type", "application/json")],
        body,
    )
    .await;
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{endpoint}: the answer is not JSON ({e}): {text}"));
    (status, head, value)
}

async fn call(api: SocketAddr, endpoint: &str, body: Value) -> (u16, Value) {
    let (status, _, value) = call_with(api, Some(KEY), endpoint, &body.to_string()).await;
    (status, value)
}

#[tokio::test]
async fn publish_reaches_members_once_per_idempotency_key() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut ann = Client::connect(server.public_addr, "ann").await;
    ann.join("lobby").await;

    let (status, first) = call(
        api,
        "publish",
        json!({"room": "lobby", "body": "maintenance at noon", "idempotency_key": "notice-1"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["offset"], 1);
    assert_eq!(first["duplicate"], false);
    let m = ann.recv_type("message").await;
    assert_eq!(m["from"], "$app", "the application's own name, no user's");
    assert_eq!(m["body"], "maintenance at noon");
    assert_eq!(m["epoch"], first["epoch"]);

    let (status, again) = call(
        api,
        "publish",
        json!({"room": "lobby", "body": "maintenance at noon", "idempotency_key": "notice-1"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["offset"], 1, "the first publish's offset");

    let (_, as_bob) = call(
        api,
        "publish",
        json!({"room": "lobby", "body": "hi from bob", "from": "bob"}),
    )
    .await;
    assert_eq!(as_bob["offset"], 2);
    let m = ann.recv_type("message").await;
    assert_eq!(
        (m["from"].as_str(), m["offset"].as_u64()),
        (Some("bob"), Some(2)),
        "the retried notice was not delivered again: the next message is bob's"
    );
    ann.close().await;
}

#[tokio::test]
async fn broadcast_publishes_to_each_room_and_reports_each() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut ann = Client::connect(server.public_addr, "ann").await;
    ann.join("a").await;
    ann.join("b").await;
    let (status, answer) = call(
        api,
        "broadcast",
        json!({"rooms": ["a", "b", "c"], "body": "all hands", "idempotency_key": "b1"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    for (r, room) in results.iter().zip(["a", "b", "c"]) {
        assert_eq!(r["room"], room);
        assert_eq!(r["offset"], 1);
    }
    let mut rooms = vec![
        ann.recv_type("message").await["room"].clone(),
        ann.recv_type("message").await["room"].clone(),
    ];
    rooms.sort_by_key(|r| r.to_string());
    assert_eq!(rooms, vec![json!("a"), json!("b")]);
    let (_, retried) = call(
        api,
        "broadcast",
        json!({"rooms": ["a", "b", "c"], "body": "all hands", "idempotency_key": "b1"}),
    )
    .await;
    assert!(
        retried["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["duplicate"] == true),
        "{retried}"
    );
    assert_quiet(&mut ann, 300, "a retried broadcast publishes nothing").await;
    ann.close().await;
}

#[tokio::test]
async fn dm_reaches_every_session_and_says_when_the_user_is_offline() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut phone = Client::connect(server.public_addr, "ann").await;
    let mut laptop = Client::connect(server.public_addr, "ann").await;
    let (status, answer) = call(
        api,
        "dm",
        json!({"to": "ann", "body": "your order shipped"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"to": "ann", "delivered": true, "reached": 2})
    );
    for c in [&mut phone, &mut laptop] {
        let dm = c.recv_type("dm").await;
        assert_eq!(
            (dm["from"].as_str(), dm["body"].as_str()),
            (Some("$app"), Some("your order shipped"))
        );
    }
    let (_, offline) = call(api, "dm", json!({"to": "zed", "body": "x"})).await;
    assert_eq!(offline["delivered"], false);
    phone.close().await;
    laptop.close().await;
}

#[tokio::test]
async fn disconnect_closes_every_session_with_the_code_and_reason_given() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut a = Client::connect(server.public_addr, "mallory").await;
    let mut b = Client::connect(server.public_addr, "mallory").await;
    let mut other = Client::connect(server.public_addr, "ann").await;
    let (status, answer) = call(
        api,
        "disconnect",
        json!({"user": "mallory", "code": 4403, "reason": "banned"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["reached"], 2);
    assert_eq!(a.expect_close().await, (4403, "banned".into()));
    assert_eq!(b.expect_close().await, (4403, "banned".into()));
    assert_quiet(&mut other, 300, "another user keeps their session").await;
    wait_for_metric(
        server.admin_addr,
        "chat_connections_closed_total{code=\"application\"}",
        2.0,
    )
    .await;
    let (_, sessions) = call(api, "user_sessions", json!({"user": "mallory"})).await;
    assert_eq!(sessions["sessions"], 0);

    let (_, default) = call(api, "disconnect", json!({"user": "ann"})).await;
    assert_eq!(default["reached"], 1);
    assert_eq!(other.expect_close().await.0, 4400, "terminal by default");
}

#[tokio::test]
async fn remove_from_room_takes_the_user_out_and_nothing_of_the_room_follows() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut mallory = Client::connect(server.public_addr, "mallory").await;
    mallory.join("lobby").await;
    mallory.join("other").await;
    let (status, answer) = call(
        api,
        "remove_from_room",
        json!({"room": "lobby", "user": "mallory"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["reached"], 1);
    let e = mallory.recv_type("error").await;
    assert_eq!(e["code"], "removed");
    assert_eq!(mallory.recv_type("left").await["room"], "lobby");

    call(api, "publish", json!({"room": "lobby", "body": "after"})).await;
    call(
        api,
        "publish",
        json!({"room": "other", "body": "still here"}),
    )
    .await;
    let m = mallory.recv_type("message").await;
    assert_eq!(
        (m["room"].as_str(), m["body"].as_str()),
        (Some("other"), Some("still here")),
        "the lobby's message never reached the removed user"
    );
    let (_, presence) = call(api, "presence", json!({"room": "lobby"})).await;
    assert_eq!(presence["member_count"], 0);
    mallory.close().await;
}

#[tokio::test]
async fn presence_history_rooms_and_sessions_answer_what_the_clients_did() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut ann = Client::connect(server.public_addr, "ann").await;
    let mut bob = Client::connect(server.public_addr, "bob").await;
    ann.join("lobby").await;
    bob.join("lobby").await;
    for i in 1..=5 {
        ann.send(json!({"type": "send", "room": "lobby", "body": format!("m{i}"), "ref": format!("r{i}")}))
            .await;
    }
    let mut acks = 0;
    while acks < 5 {
        let f = ann.recv().await;
        acks += usize::from(f["type"] == "ack");
    }

    let (_, presence) = call(api, "presence", json!({"room": "lobby"})).await;
    assert_eq!(presence["members"], json!(["ann", "bob"]));
    assert_eq!(presence["member_count"], 2);
    assert_eq!(presence["next_after"], Value::Null);

    let (_, history) = call(
        api,
        "history",
        json!({"room": "lobby", "after": 2, "limit": 2}),
    )
    .await;
    assert_eq!(history["head"], 5);
    let offsets: Vec<u64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![3, 4]);
    assert_eq!(history["messages"][0]["body"], "m3");
    assert_eq!(history["messages"][0]["from"], "ann");
    let (status, missing) = call(api, "history", json!({"room": "nowhere"})).await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    let (_, rooms) = call(api, "rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "lobby", "epoch": history["epoch"], "head": 5, "members": 2}])
    );
    let (_, room) = call(api, "room", json!({"room": "lobby"})).await;
    assert_eq!(room["members"], 2);
    let (status, _) = call(api, "room", json!({"room": "nowhere"})).await;
    assert_eq!(status, 404, "asking does not create a room");
    let (_, rooms) = call(api, "rooms", json!({})).await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1);

    let (_, sessions) = call(api, "user_sessions", json!({"user": "ann"})).await;
    assert_eq!(
        sessions,
        json!({"user": "ann", "sessions": 1, "nodes": [{"node": "test-node", "sessions": 1}]})
    );
    ann.close().await;
    bob.close().await;
}

#[tokio::test]
async fn callers_without_a_key_get_nothing_but_401() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut ann = Client::connect(server.public_addr, "ann").await;
    ann.join("lobby").await;
    for key in [None, Some("wrong-key-wrong-key-1"), Some("")] {
        for (endpoint, body) in [
            ("publish", json!({"room": "lobby", "body": "spoofed"})),
            ("history", json!({"room": "lobby"})),
            ("presence", json!({"room": "lobby"})),
            ("disconnect", json!({"user": "ann"})),
            ("user_sessions", json!({"user": "ann"})),
            ("rooms", json!({})),
        ] {
            let (status, head, answer) = call_with(api, key, endpoint, &body.to_string()).await;
            assert_eq!(status, 401, "{endpoint} with {key:?}");
            assert!(head
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"));
            assert_eq!(
                answer["error"]["code"], "unauthorized",
                "{endpoint}: the answer carries nothing else: {answer}"
            );
            assert_eq!(answer.as_object().unwrap().len(), 1);
        }
    }
    assert_quiet(
        &mut ann,
        300,
        "nothing reached the client and it was not disconnected",
    )
    .await;
    // The document is public; the endpoints are not.
    let (status, doc) = http_request(api, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc, OPENAPI_DOCUMENT);
    ann.close().await;
}

#[tokio::test]
async fn bad_fields_are_named_and_change_nothing() {
    let (server, api) = start_with_api(api_settings()).await;
    let mut ann = Client::connect(server.public_addr, "ann").await;
    ann.join("lobby").await;
    for (endpoint, body, field) in [
        ("publish", r#"{"room":"lobby"}"#, "body"),
        ("publish", r#"{"room":"no spaces","body":"x"}"#, "room"),
        ("publish", r#"{"room":"lobby","body":5}"#, "body"),
        (
            "publish",
            r#"{"room":"lobby","body":"x","from":"~anon"}"#,
            "from",
        ),
        (
            "publish",
            r#"{"room":"lobby","body":"x","colour":"red"}"#,
            "colour",
        ),
        ("disconnect", r#"{"user":"ann","code":1000}"#, "code"),
        ("history", r#"{"room":"lobby","limit":1000}"#, "limit"),
        ("broadcast", r#"{"rooms":[],"body":"x"}"#, "rooms"),
    ] {
        let (status, _, answer) = call_with(api, Some(KEY), endpoint, body).await;
        assert_eq!(status, 400, "{endpoint} {body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{body}: {message}");
    }
    let long_body = json!({"room": "lobby", "body": "x".repeat(4 * 1024 + 1)});
    let (status, answer) = call(api, "publish", long_body).await;
    assert_eq!(status, 400, "over CHAT_MAX_BODY_BYTES: {answer}");
    for not_an_object in ["", "[\"lobby\",\"x\"]", "null", "{"] {
        let (status, _, _) = call_with(api, Some(KEY), "publish", not_an_object).await;
        assert_eq!(status, 400, "{not_an_object:?}");
    }
    assert_quiet(&mut ann, 300, "no refused call published anything").await;
    ann.close().await;
}

#[tokio::test]
async fn each_endpoint_has_a_rate_limit_and_every_body_a_size_limit() {
    let (_server, api) = start_with_api(ApiSettings {
        rate_per_sec: 0.5,
        burst: 3,
        max_body_bytes: 1024,
        ..api_settings()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(call(api, "rooms", json!({})).await.0, 200);
    }
    let (status, head, answer) = call_with(api, Some(KEY), "rooms", "{}").await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 2"),
        "{head}"
    );
    assert_eq!(
        call(api, "room", json!({"room": "x"})).await.0,
        404,
        "another endpoint has its own budget"
    );
    let big = json!({"room": "lobby", "body": "x".repeat(2000)}).to_string();
    let (status, _, answer) = call_with(api, Some(KEY), "publish", &big).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "too_large");
}

#[tokio::test]
async fn a_key_rotated_in_the_keys_file_takes_effect_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("chat-api-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    let (old, new) = ("old-key-old-key-0001", "new-key-new-key-0002");
    std::fs::write(&file, format!("{old}\n")).unwrap();
    let (_server, api) = start_with_api(ApiSettings {
        keys: Vec::new(),
        keys_file: Some(file.clone()),
        ..api_settings()
    })
    .await;
    let rooms = |key| async move { call_with(api, Some(key), "rooms", "{}").await.0 };
    assert_eq!(rooms(old).await, 200);
    assert_eq!(rooms(new).await, 401);
    std::fs::write(&file, format!("# rotating\n{new}\n")).unwrap();
    let deadline = std::time::Instant::now() + chat_server::api::KEYS_RELOAD_EVERY * 3;
    while rooms(new).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was never taken"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(rooms(old).await, 401, "the removed key is refused");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_endpoints() {
    let doc: Value = serde_json::from_str(OPENAPI_DOCUMENT).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort_unstable();
    let (_server, api) = start_with_api(api_settings()).await;
    for path in &documented {
        let (status, _, _) =
            call_with(api, Some(KEY), path.trim_start_matches("/api/v1/"), "{}").await;
        assert_ne!(status, 404, "{path} is documented but not served");
    }
    let (status, _, answer) = call_with(api, Some(KEY), "undocumented", "{}").await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(documented.len(), 10);
}
