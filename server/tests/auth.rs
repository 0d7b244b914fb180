//! Authentication and origin checks happen before the WebSocket opens.

mod common;

use chat_server::auth::AuthSettings;
use chat_server::config::Settings;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

const SECRET: &str = "integration-test-secret-0123456789abcdef";
const RS_PRIVATE: &[u8] = include_bytes!("fixtures/test-rs256-private.pem");
const RS_PUBLIC: &[u8] = include_bytes!("fixtures/test-rs256-public.pem");

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

fn now() -> u64 {
    chat_server::clock::now_us() / 1_000_000
}

fn hs256(sub: &str, exp: u64, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &Claims { sub, exp },
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn rs256(sub: &str, exp: u64) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        &Claims { sub, exp },
        &EncodingKey::from_rsa_pem(RS_PRIVATE).unwrap(),
    )
    .unwrap()
}

async fn server(allow_anonymous: bool) -> chat_server::RunningServer {
    let mut settings = Settings::local_test();
    settings.auth = AuthSettings {
        allow_anonymous,
        hs256_secret: Some(SECRET.as_bytes().to_vec()),
        public_key_pem: Some(RS_PUBLIC.to_vec()),
        jwks: None,
        issuer: None,
        audience: None,
        allowed_origins: Some(vec!["https://chat.example".into()]),
    };
    start(settings).await
}

async fn welcome_user(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    use futures_util::StreamExt;
    let msg = ws.next().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "welcome");
    v["user"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn valid_tokens_are_accepted_from_header_or_query() {
    let s = server(false).await;
    let token = hs256("alice", now() + 300, SECRET);
    let bearer = format!("Bearer {token}");
    let mut ws = try_connect_with(s.public_addr, "", &[("authorization", &bearer)])
        .await
        .expect("header token accepted");
    assert_eq!(welcome_user(&mut ws).await, "alice");
    let mut ws = try_connect_with(s.public_addr, &format!("token={token}"), &[])
        .await
        .expect("query token accepted");
    assert_eq!(welcome_user(&mut ws).await, "alice");
    let rs = format!("Bearer {}", rs256("bob@example.com", now() + 300));
    let mut ws = try_connect_with(s.public_addr, "", &[("authorization", &rs)])
        .await
        .expect("RS256 accepted");
    assert_eq!(welcome_user(&mut ws).await, "bob@example.com");
    let mut ws = try_connect_with(
        s.public_addr,
        &format!("token={token}"),
        &[("origin", "https://chat.example")],
    )
    .await
    .expect("allowed origin");
    assert_eq!(welcome_user(&mut ws).await, "alice");
}

#[tokio::test]
async fn bad_credentials_are_refused_before_the_socket_opens() {
    let s = server(false).await;
    let cases = [
        ("user=anon".to_string(), 401, "missing credentials"),
        (
            format!("token={}", hs256("alice", now() - 600, SECRET)),
            401,
            "expired",
        ),
        (
            format!(
                "token={}",
                hs256("alice", now() + 300, "some-other-secret-some-other-secret")
            ),
            401,
            "token rejected",
        ),
        ("token=not.a.jwt".to_string(), 401, "token rejected"),
        (
            format!("token={}", hs256("no spaces allowed", now() + 300, SECRET)),
            401,
            "sub",
        ),
    ];
    for (query, status, text) in cases {
        let refused = try_connect_with(s.public_addr, &query, &[])
            .await
            .expect_err("refused");
        assert_eq!(refused.status, status, "{query}");
        assert!(refused.body.contains(text), "{query}: {}", refused.body);
    }
    let token = hs256("alice", now() + 300, SECRET);
    let refused = try_connect_with(
        s.public_addr,
        &format!("token={token}"),
        &[("origin", "https://evil.example")],
    )
    .await
    .expect_err("wrong origin");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("evil.example"));
    assert_eq!(
        metric(s.admin_addr, "chat_connections_accepted_total").await,
        0.0
    );
}

#[tokio::test]
async fn anonymous_users_only_when_enabled() {
    let s = server(true).await;
    let mut ws = try_connect_with(s.public_addr, "user=guest1", &[])
        .await
        .expect("anonymous allowed");
    // Token keys are configured: anonymous users live in the `~` namespace.
    assert_eq!(welcome_user(&mut ws).await, "~guest1");
    let refused = try_connect_with(s.public_addr, "user=bad%20name", &[])
        .await
        .expect_err("invalid anonymous name");
    assert_eq!(refused.status, 401);
}

/// Connects with `token` and returns the client after its `welcome`, checking that the
/// welcome carries the token's `exp`.
async fn connect_with_token(s: &chat_server::RunningServer, user: &str, exp: u64) -> Client {
    let ws = try_connect_with(
        s.public_addr,
        &format!("token={}", hs256(user, exp, SECRET)),
        &[],
    )
    .await
    .expect("token accepted");
    let mut c = Client {
        ws,
        user: user.to_owned(),
    };
    let welcome = c.recv_type("welcome").await;
    assert_eq!(welcome["token_exp"], exp, "{welcome}");
    c
}

#[tokio::test]
async fn a_session_ends_with_4003_when_its_token_expires_unless_refreshed() {
    use serde_json::json;
    let s = server(true).await;
    // Accepted within the 5 s leeway, so the session has about 2 s left.
    let expired_soon = now() - 3;
    let mut lapsing = connect_with_token(&s, "alice", expired_soon).await;
    let mut refreshed = connect_with_token(&s, "bob", expired_soon).await;
    let mut rejected = connect_with_token(&s, "carol", expired_soon).await;

    let fresh = now() + 600;
    refreshed
        .send(json!({"type":"refresh","token": hs256("bob", fresh, SECRET)}))
        .await;
    let answer = refreshed.recv_type("refreshed").await;
    assert_eq!(answer["exp"], fresh, "{answer}");

    // Another user's token, a forged one and an expired one are refused; the session
    // keeps its old token.
    for (token, why) in [
        (hs256("mallory", fresh, SECRET), "for user `mallory`"),
        (
            hs256("carol", fresh, "another-secret-another-secret-another"),
            "token rejected",
        ),
        (hs256("carol", now() - 600, SECRET), "token expired"),
    ] {
        rejected
            .send(json!({"type":"refresh","token": token}))
            .await;
        let err = rejected.recv_type("error").await;
        assert_eq!(err["code"], "token_rejected", "{err}");
        assert!(err["message"].as_str().unwrap().contains(why), "{err}");
    }

    let (code, reason) = lapsing.expect_close().await;
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("new token"), "{reason}");
    let (code, _) = rejected.expect_close().await;
    assert_eq!(code, 4003);

    // The refreshed session outlived the old token.
    refreshed.send(json!({"type":"ping"})).await;
    refreshed.recv_type("pong").await;
    assert_eq!(
        metric(s.admin_addr, "chat_sessions_expired_total").await,
        2.0
    );
    wait_for_metric(
        s.admin_addr,
        "chat_connections_closed_total{code=\"4003\"}",
        2.0,
    )
    .await;

    // An anonymous session has no token to refresh and no expiry.
    let mut anonymous = Client::connect(s.public_addr, "dave").await;
    anonymous
        .send(json!({"type":"refresh","token": hs256("dave", fresh, SECRET)}))
        .await;
    let err = anonymous.recv_type("error").await;
    assert_eq!(err["code"], "token_rejected", "{err}");
    anonymous.close().await;
    refreshed.close().await;
}

/// The web client's page and assets carry a Content-Security-Policy that refuses other
/// origins and framing.
#[tokio::test]
async fn web_client_is_served_with_a_content_security_policy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server(true).await;
    for path in ["/", "/app.js", "/app.css"] {
        let mut conn = tokio::net::TcpStream::connect(s.public_addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{path}: {text}");
        let csp = text
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .unwrap_or_else(|| panic!("{path}: no CSP"));
        for directive in [
            "frame-ancestors 'none'",
            "connect-src 'self'",
            "script-src 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
}

/// Connections upgraded without credentials are bounded until they authenticate: past
/// `CHAT_MAX_PENDING_CONNECTIONS` of them, new ones get 503; one that sends its `auth`
/// frame frees its place.
#[tokio::test]
async fn connections_waiting_for_their_auth_frame_are_bounded() {
    use futures_util::SinkExt;
    let mut settings = Settings::local_test();
    settings.auth = AuthSettings {
        hs256_secret: Some(SECRET.as_bytes().to_vec()),
        ..AuthSettings::default()
    };
    settings.max_pending_connections = 2;
    let s = start(settings).await;
    let mut first = try_connect_with(s.public_addr, "", &[])
        .await
        .expect("first");
    let _second = try_connect_with(s.public_addr, "", &[])
        .await
        .expect("second");
    let refused = try_connect_with(s.public_addr, "", &[])
        .await
        .expect_err("a third one waits too many");
    assert_eq!(refused.status, 503);
    assert!(refused.retry_after.is_some());
    assert!(refused.body.contains("auth"), "{}", refused.body);
    let auth = serde_json::json!({"type": "auth", "token": hs256("alice", now() + 300, SECRET)});
    first
        .send(tokio_tungstenite::tungstenite::Message::Text(
            auth.to_string().into(),
        ))
        .await
        .unwrap();
    assert_eq!(welcome_user(&mut first).await, "alice");
    let _third = try_connect_with(s.public_addr, "", &[])
        .await
        .expect("a place was freed");
}

/// `CHAT_DM_POLICY`: `anyone` reaches a user who shares no room with the sender (and
/// says `user_offline` for one who is not connected); `nobody` refuses every DM with
/// `forbidden`, to an online user and an absent one alike, and delivers nothing.
#[tokio::test]
async fn dm_policies_anyone_and_nobody() {
    use chat_server::rooms::DmPolicy;
    use serde_json::json;

    let s = start(Settings::local_test()).await;
    let mut a = Client::connect(s.public_addr, "ann").await;
    let mut b = Client::connect(s.public_addr, "ben").await;
    a.send(json!({"type": "dm", "to": "ben", "body": "hi", "ref": "d1"}))
        .await;
    assert_eq!(a.recv_type("ack").await["ref"], "d1");
    let dm = b.recv_type("dm").await;
    assert_eq!(
        (dm["from"].as_str(), dm["body"].as_str()),
        (Some("ann"), Some("hi"))
    );
    a.send(json!({"type": "dm", "to": "nobody-here", "body": "hi", "ref": "d2"}))
        .await;
    assert_eq!(a.recv_type("error").await["code"], "user_offline");

    let mut settings = Settings::local_test();
    settings.dm_policy = DmPolicy::Nobody;
    let s = start(settings).await;
    let mut a = Client::connect(s.public_addr, "ann").await;
    let mut b = Client::connect(s.public_addr, "ben").await;
    a.join("lobby").await;
    b.join("lobby").await;
    let mut refusals = Vec::new();
    for (to, r) in [("ben", "d1"), ("nobody-here", "d2")] {
        a.send(json!({"type": "dm", "to": to, "body": "hi", "ref": r}))
            .await;
        let e = a.recv_type("error").await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("forbidden"), Some(r)),
            "{e}"
        );
        refusals.push(e["message"].clone());
    }
    assert_eq!(
        refusals[0], refusals[1],
        "the refusal must not tell who is online"
    );
    while let Event::Frame(v) = b.next_event(std::time::Duration::from_millis(500)).await {
        assert_ne!(v["type"], "dm", "a DM got through: {v}");
    }
}
