//! The attacker suite (docs/security.md): every way a client could take an identity or
//! read a room it has no right to, tried against one chat-server process (the in-memory
//! backplane) and against three nodes joined through a real `redis-server`, with the
//! attacker on another node than its victims. Each attempt must get its documented
//! refusal, and every frame the attacker receives is checked afterwards: none may carry
//! a protected room's messages, members or presence, nor anyone else's DMs.
//!
//! The suite runs its own identity provider's JWKS over HTTPS (`openssl s_server` with a
//! private CA, the key set rewritten mid-test to rotate keys) and its own join hook (a
//! small HTTP server that checks the signature of every call).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatcluster_e2e::harness::binaries::chat_server_binary;
use chatcluster_e2e::harness::local_cluster::{ClusterOptions, LocalCluster};
use chatcluster_e2e::harness::process::{free_port, wait_listening, ScratchDir};
use chatcluster_e2e::harness::server_process::ServerProcess;
use chatcluster_e2e::harness::tls::TestCa;
use chatcluster_e2e::harness::webhook_receiver::read_request;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");
const SECRET: &str = "attacker-suite-hs256-secret-0123456789";
const HOOK_SECRET: &str = "attacker-suite-join-hook-secret-012345";
const ISSUER: &str = "https://idp.attacker-suite.test";
const AUDIENCE: &str = "chat";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../server/tests/fixtures");
/// What a protected room's messages carry: never in an attacker's frames.
const MARK: &str = "PROTECTED-";

/// One suite at a time: each runs servers on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RULES: &str = r#"[
  {"pattern": "lobby", "access": "public"},
  {"pattern": "quiet.*", "access": "public", "presence": false},
  {"pattern": "news.*", "access": "public", "history": false, "publish": false},
  {"pattern": "inbox.{user}", "access": "user"},
  {"pattern": "team.*", "access": "grant"},
  {"pattern": "hook.*", "access": "grant"}
]"#;

fn now() -> u64 {
    chat_server::clock::now_us() / 1_000_000
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
}

/// Claims every accepted token has, plus `extra`.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn token(sub: &str) -> String {
    hs256(&claims(sub, json!({})))
}

/// The identity provider: an ES256 key and an RS256 key, published by kid over HTTPS.
struct IdentityProvider {
    dir: ScratchDir,
    ca: TestCa,
    port: u16,
    server: Option<Child>,
}

impl IdentityProvider {
    fn start() -> IdentityProvider {
        let dir = ScratchDir::new("jwks").unwrap();
        let ca = TestCa::create().unwrap();
        let mut idp = IdentityProvider {
            dir,
            ca,
            port: free_port().unwrap(),
            server: None,
        };
        idp.publish(&["k1"]);
        idp.serve();
        idp
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks.json", self.port)
    }

    fn key(kid: &str) -> (EncodingKey, Algorithm) {
        match kid {
            "k1" => (
                EncodingKey::from_ec_pem(&fixture("test-es256-private.pem")).unwrap(),
                Algorithm::ES256,
            ),
            _ => (
                EncodingKey::from_rsa_pem(&fixture("test-rs256-private.pem")).unwrap(),
                Algorithm::RS256,
            ),
        }
    }

    /// Writes the key set with exactly these kids (k1: ES256, k2: RS256).
    fn publish(&self, kids: &[&str]) {
        let keys = kids
            .iter()
            .map(|kid| {
                let (key, alg) = Self::key(kid);
                let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                jwk
            })
            .collect();
        let set = JwkSet { keys };
        std::fs::write(
            self.dir.0.join("jwks.json"),
            serde_json::to_vec(&set).unwrap(),
        )
        .unwrap();
    }

    fn sign(kid: &str, claims: &Value) -> String {
        let (key, alg) = Self::key(kid);
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &key).unwrap()
    }

    fn serve(&mut self) {
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("-cert")
            .arg(&self.ca.cert)
            .arg("-key")
            .arg(&self.ca.key)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server (apt-get install openssl)");
        self.server = Some(child);
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(10),
        )
        .unwrap();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The application's join hook: allows `alice` into `hook.*` rooms, refuses the rest
/// (everything while `withdrawn`), and answers 500 while `down`. Counts calls, and bad
/// signatures (which must stay 0).
struct JoinHook {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    withdrawn: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    bad_signatures: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JoinHook {
    async fn start() -> JoinHook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let withdrawn = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let bad_signatures = Arc::new(AtomicUsize::new(0));
        let (d, w, c, b) = (
            down.clone(),
            withdrawn.clone(),
            calls.clone(),
            bad_signatures.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (d, w, c, b) = (d.clone(), w.clone(), c.clone(), b.clone());
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let signature = headers
                        .lines()
                        .find_map(|l| l.strip_prefix("x-chat-signature: "))
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    if signature != chat_server::join_hook::sign(HOOK_SECRET.as_bytes(), &body) {
                        b.fetch_add(1, Ordering::SeqCst);
                    }
                    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let allow = !w.load(Ordering::SeqCst)
                        && request["user"] == "alice"
                        && request["room"].as_str().unwrap_or("").starts_with("hook.");
                    let (status, answer) = if d.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", String::new())
                    } else {
                        ("200 OK", json!({"allow": allow}).to_string())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        JoinHook {
            addr,
            down,
            withdrawn,
            calls,
            bad_signatures,
            task,
        }
    }
}

impl Drop for JoinHook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The servers under attack: one process (and its server API's address), or three nodes
/// over Redis.
enum Servers {
    Single(ServerProcess, SocketAddr),
    Cluster(Box<LocalCluster>),
}

impl Servers {
    /// The WebSocket URL of node `i` (every `i` is the one node of a single server).
    fn url(&self, i: usize) -> String {
        match self {
            Servers::Single(s, _) => s.ws_url(),
            Servers::Cluster(c) => c.nodes[i % c.nodes.len()].ws_url(),
        }
    }

    /// The server API's address on node `i`.
    fn api(&self, i: usize) -> SocketAddr {
        match self {
            Servers::Single(_, api) => *api,
            Servers::Cluster(c) => c.nodes[i % c.nodes.len()].api,
        }
    }
}

/// The server API's key (the application's; no attacker holds it).
const API_KEY: &str = "attacker-suite-application-api-key";

/// Flags of every node: every key source, issuer and audience, the room rules, the join
/// hook, the shared-room DM policy and a small DM burst.
fn flags(idp: &IdentityProvider, hook: &JoinHook, dir: &std::path::Path) -> Vec<String> {
    let public_key = dir.join("ed25519-public.pem");
    std::fs::write(&public_key, fixture("test-ed25519-public.pem")).unwrap();
    [
        "--jwt-hs256-secret",
        SECRET,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--jwks-min-refetch",
        "1s",
        "--jwks-refresh",
        "1h",
        "--room-rules",
        RULES,
        "--join-hook-secret",
        HOOK_SECRET,
        "--join-hook-timeout",
        "2s",
        "--join-hook-cache-ttl",
        "1s",
        // Rooms past one member get presence as counts: the count path is attacked too.
        "--presence-max-members",
        "1",
        "--dm-policy",
        "shared_room",
        "--dm-rate-per-sec",
        "2",
        "--dm-burst",
        "3",
        "--header-read-timeout",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--jwks-url".into(),
        idp.url(),
        "--jwks-ca-file".into(),
        idp.ca.ca.display().to_string(),
        "--jwt-public-key-file".into(),
        public_key.display().to_string(),
        "--join-hook-url".into(),
        format!("http://{}/join", hook.addr),
    ])
    .collect()
}

/// A client that keeps every frame it receives, for the checks at the end.
struct Peer {
    name: String,
    ws: chatcluster_e2e::clients::ws::Ws,
    seen: Vec<Value>,
    closed: Option<(u16, String)>,
}

/// How an upgrade was refused.
#[derive(Debug)]
struct Refusal {
    status: u16,
    body: String,
}

impl Peer {
    /// Connects with `bearer` in the Authorization header (or none) and `query`.
    async fn open(url: &str, query: &str, bearer: Option<&str>) -> Result<Peer, Refusal> {
        let mut req = format!("{url}?{query}").into_client_request().unwrap();
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Peer {
                name: query.to_owned(),
                ws,
                seen: Vec::new(),
                closed: None,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refusal {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => panic!("connect to {url}: {e}"),
        }
    }

    /// Connects with a token and returns after `welcome`.
    async fn user(url: &str, token: &str) -> Peer {
        let mut p = Peer::open(url, "", Some(token))
            .await
            .expect("token accepted");
        let w = p.expect("welcome").await;
        p.name = w["user"].as_str().unwrap_or_default().to_owned();
        p
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Next frame within `wait`; `None` on a timeout or a close (recorded).
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    self.seen.push(v.clone());
                    return Some(v);
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    self.closed = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return None,
            }
        }
    }

    /// The next frame of `kind` (skipping others, which stay recorded).
    async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.next(Duration::from_secs(5)).await {
                Some(v) if v["type"] == kind => return v,
                Some(_) => continue,
                None => panic!(
                    "{}: no `{kind}` frame (closed: {:?})",
                    self.name, self.closed
                ),
            }
        }
    }

    /// The next `error` frame; it must have `code`.
    async fn refused(&mut self, code: &str) -> Value {
        let e = self.expect("error").await;
        assert_eq!(e["code"], code, "{}: {e}", self.name);
        e
    }

    /// Reads whatever arrives for `wait`.
    async fn settle(&mut self, wait: Duration) {
        while self.next(wait).await.is_some() {}
    }

    async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        let j = self.expect("joined").await;
        assert_eq!(j["room"], room);
        j
    }

    async fn say(&mut self, room: &str, body: &str) {
        let r = format!("{room}-{body}");
        self.send(json!({"type": "send", "room": room, "body": body, "ref": r}))
            .await;
        loop {
            let v = self.expect("ack").await;
            if v["ref"] == r.as_str() {
                return;
            }
        }
    }
}

/// Every frame the attacker received: none may belong to a protected room or carry a
/// protected body, anyone's DM to another user, or a member list, count or presence
/// event of a room whose presence is hidden.
fn assert_nothing_leaked(attacker: &Peer, protected_rooms: &[&str], victims: &[&str]) {
    for frame in &attacker.seen {
        let text = frame.to_string();
        assert!(!text.contains(MARK), "{}: leaked {frame}", attacker.name);
        let room = frame["room"].as_str().unwrap_or("");
        let kind = frame["type"].as_str().unwrap_or("");
        if ["message", "joined", "presence", "members"].contains(&kind) {
            assert!(
                !protected_rooms.iter().any(|p| room.starts_with(p)),
                "{}: got a frame of protected room {room}: {frame}",
                attacker.name
            );
        }
        if frame["type"] == "dm" {
            assert_eq!(frame["to"], attacker.name.as_str(), "{frame}");
        }
        if room.starts_with("quiet.") {
            assert!(
                !["presence", "members"].contains(&kind),
                "presence of a hidden room: {frame}"
            );
            assert_eq!(
                frame
                    .get("member_count")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                0,
                "{frame}"
            );
            for v in victims {
                assert!(
                    !text.contains(&format!("\"{v}\"")),
                    "presence leaked: {frame}"
                );
            }
        }
    }
}

async fn attack(servers: &Servers, idp: &mut IdentityProvider, hook: &JoinHook) {
    let (a, b, c) = (servers.url(0), servers.url(1), servers.url(2));

    // --- Identity -------------------------------------------------------------------
    // Tokenless `?user=alice` is a guest in its own namespace, not alice.
    let mut alice = Peer::user(&a, &token("alice")).await;
    assert_eq!(alice.name, "alice");
    let mut fake = Peer::open(&b, "user=alice", None).await.expect("guest");
    let w = fake.expect("welcome").await;
    assert_eq!(w["user"], "~alice", "{w}");
    fake.name = "~alice".into();
    assert!(w.get("token_exp").is_none());
    // The fake cannot read alice's DMs: bob shares the lobby with both.
    let mut bob = Peer::user(&c, &token("bob")).await;
    alice.join("lobby").await;
    fake.join("lobby").await;
    bob.join("lobby").await;
    bob.send(json!({"type": "dm", "to": "alice", "body": format!("{MARK}dm"), "ref": "d1"}))
        .await;
    let dm = alice.expect("dm").await;
    assert_eq!(
        (dm["from"].as_str(), dm["to"].as_str()),
        (Some("bob"), Some("alice"))
    );
    // What the fake says is signed with its own name.
    fake.say("lobby", "hello").await;
    loop {
        let m = alice.expect("message").await;
        if m["body"] == "hello" {
            assert_eq!(m["from"], "~alice");
            break;
        }
    }

    // Forged, misaddressed and stale tokens are refused before the socket opens.
    let b64 = |v: Value| {
        let s = v.to_string();
        base64url(s.as_bytes())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims("alice", json!({})))
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "token rejected"),
        (
            "wrong aud",
            hs256(&claims("alice", json!({"aud": "other"}))),
            "token rejected",
        ),
        (
            "wrong iss",
            hs256(&claims("alice", json!({"iss": "https://evil.test"}))),
            "token rejected",
        ),
        (
            "expired",
            hs256(&claims("alice", json!({"exp": now() - 600}))),
            "expired",
        ),
        (
            "not yet valid",
            hs256(&claims("alice", json!({"nbf": now() + 600}))),
            "not valid yet",
        ),
        (
            "unknown kid",
            IdentityProvider::sign("k2", &claims("alice", json!({}))),
            "unknown",
        ),
        (
            "room token as identity",
            hs256(&claims("alice", json!({"room": "team.red"}))),
            "room token",
        ),
        ("anonymous sub", hs256(&claims("~alice", json!({}))), "sub"),
    ];
    for (what, t, text) in &cases {
        for query in [String::new(), format!("token={t}")] {
            let bearer = query.is_empty().then_some(t.as_str());
            let refused = Peer::open(&b, &query, bearer).await.err();
            let refused = refused.unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(refused.status, 401, "{what}");
            assert!(refused.body.contains(text), "{what}: {}", refused.body);
        }
        // The same token in the first frame: closed with 1008 before any frame.
        let mut p = Peer::open(&b, "", None)
            .await
            .expect("upgrade without credentials");
        p.send(json!({"type": "auth", "token": t})).await;
        assert!(p.next(Duration::from_secs(5)).await.is_none(), "{what}");
        let code = p.closed.as_ref().map(|c| c.0);
        let want = if *what == "expired" { 4003 } else { 1008 };
        assert_eq!(code, Some(want), "{what}: {:?}", p.closed);
        assert!(p.seen.is_empty(), "{what}: {:?}", p.seen);
    }
    // Keys of the identity provider: ES256 (k1) from the JWKS, Ed25519 from the file.
    let k1 = IdentityProvider::sign("k1", &claims("carol", json!({})));
    let carol = Peer::user(&a, &k1).await;
    assert_eq!(carol.name, "carol");
    drop(carol);
    let ed = encode(
        &Header::new(Algorithm::EdDSA),
        &claims("dave", json!({})),
        &EncodingKey::from_ed_pem(&fixture("test-ed25519-private.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(Peer::user(&b, &ed).await.name, "dave");
    // The token in the first frame instead of the URL.
    let mut first = Peer::open(&c, "", None).await.expect("upgrade");
    first
        .send(json!({"type": "auth", "token": token("erin")}))
        .await;
    assert_eq!(first.expect("welcome").await["user"], "erin");
    first
        .send(json!({"type": "auth", "token": token("mallory")}))
        .await;
    first.refused("already_authenticated").await;
    // Anything else first, or nothing at all, ends the connection with 1008.
    let mut wrong = Peer::open(&c, "", None).await.expect("upgrade");
    wrong.send(json!({"type": "join", "room": "lobby"})).await;
    assert!(wrong.next(Duration::from_secs(5)).await.is_none());
    assert_eq!(wrong.closed.as_ref().map(|c| c.0), Some(1008));
    let mut silent = Peer::open(&c, "", None).await.expect("upgrade");
    assert!(silent.next(Duration::from_secs(6)).await.is_none());
    assert_eq!(silent.closed.as_ref().map(|c| c.0), Some(1008));
    assert!(wrong.seen.is_empty() && silent.seen.is_empty());

    // Key rotation: k2 appears at the provider; a token naming it makes the server fetch
    // the key set again. Then k1 is withdrawn, and a fetch forced by an unknown kid drops it.
    idp.publish(&["k1", "k2"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let k2 = IdentityProvider::sign("k2", &claims("frank", json!({})));
    assert_eq!(Peer::user(&a, &k2).await.name, "frank");
    // The server now holds the provider's RSA key (k2). A token signed with HS256 using
    // that public key's PEM as the secret (the classic key confusion) is refused, with
    // k2's kid and without one.
    for kid in [Some("k2"), None] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        let confused = encode(
            &header,
            &claims("alice", json!({})),
            &EncodingKey::from_secret(&fixture("test-rs256-public.pem")),
        )
        .unwrap();
        let refused = Peer::open(&a, "", Some(&confused))
            .await
            .err()
            .unwrap_or_else(|| panic!("HS256 over the RSA public key (kid {kid:?}): accepted"));
        assert_eq!(refused.status, 401, "kid {kid:?}: {}", refused.body);
    }
    idp.publish(&["k2"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let k3 = IdentityProvider::sign("k3", &claims("frank", json!({})));
    assert!(Peer::open(&a, "", Some(&k3)).await.is_err());
    let refused = Peer::open(&a, "", Some(&k1))
        .await
        .err()
        .expect("k1 withdrawn");
    assert!(refused.body.contains("unknown"), "{}", refused.body);
    // The provider goes down: the last good keys stay in use.
    idp.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        Peer::open(&a, "", Some(&k3)).await.is_err(),
        "fetch fails: k3 still unknown"
    );
    assert_eq!(Peer::user(&a, &k2).await.name, "frank");
    idp.serve();

    // --- Rooms ----------------------------------------------------------------------
    let mut mallory = Peer::user(&b, &token("mallory")).await;
    let mut carol = Peer::user(&c, &hs256(&claims("carol", json!({"rooms": ["team.*"]})))).await;
    let red = carol.join("team.red").await;
    alice.join("inbox.alice").await;
    // Messages in protected rooms, some before the attempts (history) and some after.
    carol.say("team.red", &format!("{MARK}1")).await;
    alice.say("inbox.alice", &format!("{MARK}2")).await;
    let epoch = red["epoch"].as_str().unwrap().to_owned();
    for (frame, code) in [
        (json!({"type": "join", "room": "team.red"}), "forbidden"),
        (
            json!({"type": "join", "room": "team.red", "since": {"epoch": epoch, "offset": 0}}),
            "forbidden",
        ),
        (json!({"type": "join", "room": "inbox.alice"}), "forbidden"),
        (
            json!({"type": "join", "room": "inbox.alice", "since": {"epoch": "x", "offset": 0}}),
            "forbidden",
        ),
        (json!({"type": "join", "room": "secret"}), "forbidden"),
        (json!({"type": "join", "room": "hook.x"}), "forbidden"),
        (
            json!({"type": "send", "room": "team.red", "body": "x", "ref": "s"}),
            "not_joined",
        ),
        // A room token for another room, or for another user, admits to nothing.
        (
            json!({"type": "join", "room": "team.red", "token": hs256(&claims("mallory", json!({"room": "team.blue", "exp": now() + 120})))}),
            "forbidden",
        ),
        (
            json!({"type": "join", "room": "team.red", "token": hs256(&claims("carol", json!({"room": "team.red"})))}),
            "forbidden",
        ),
        (
            json!({"type": "join", "room": "team.red", "token": hs256(&claims("mallory", json!({"room": "team.red", "exp": now() - 600})))}),
            "forbidden",
        ),
        // A room token valid for hours is refused: room tokens are short-lived tickets.
        (
            json!({"type": "join", "room": "team.red", "token": hs256(&claims("mallory", json!({"room": "team.red", "exp": now() + 7200})))}),
            "forbidden",
        ),
    ] {
        mallory.send(frame.clone()).await;
        let e = mallory.refused(code).await;
        assert!(
            e["message"].as_str().unwrap_or("").len() > 10,
            "{frame}: {e}"
        );
    }
    // A valid room token for this user and room admits.
    mallory
        .send(json!({"type": "join", "room": "team.blue", "token": hs256(&claims("mallory", json!({"room": "team.blue", "exp": now() + 120})))}))
        .await;
    assert_eq!(mallory.expect("joined").await["room"], "team.blue");
    // The join hook admits alice to hook.* and nobody else; down, it fails closed.
    alice.join("hook.ops").await;
    mallory
        .send(json!({"type": "join", "room": "hook.ops"}))
        .await;
    mallory.refused("forbidden").await;
    hook.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    mallory
        .send(json!({"type": "join", "room": "hook.ops"}))
        .await;
    mallory.refused("unavailable").await;
    hook.down.store(false, Ordering::SeqCst);
    // At refresh the hook is asked again: a withdrawn grant, then a hook that cannot
    // answer, each end alice's membership of hook.ops.
    for (what, flag) in [("withdrawn", &hook.withdrawn), ("down", &hook.down)] {
        flag.store(true, Ordering::SeqCst);
        // Past the hook answers' cache (1 s).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        alice
            .send(json!({"type": "refresh", "token": token("alice")}))
            .await;
        alice.expect("refreshed").await;
        let revoked = alice.refused("grant_revoked").await;
        assert!(
            revoked["message"]
                .as_str()
                .unwrap_or("")
                .contains("hook.ops"),
            "{what}: {revoked}"
        );
        assert_eq!(alice.expect("left").await["room"], "hook.ops", "{what}");
        alice
            .send(json!({"type": "send", "room": "hook.ops", "body": "x", "ref": "h"}))
            .await;
        alice.refused("not_joined").await;
        flag.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        alice.join("hook.ops").await;
    }
    assert!(hook.calls.load(Ordering::SeqCst) >= 3);
    assert_eq!(hook.bad_signatures.load(Ordering::SeqCst), 0);
    // A room whose presence is hidden: members, the count and presence stay empty for
    // everyone, and the member list cannot be paged.
    let quiet = mallory.join("quiet.hall").await;
    assert_eq!(quiet["members"], json!([]), "{quiet}");
    assert_eq!(quiet["member_count"], 0, "{quiet}");
    alice.join("quiet.hall").await;
    // Two members, over the presence limit of one: a count flush comes and goes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    mallory
        .send(json!({"type": "members", "room": "quiet.hall"}))
        .await;
    mallory.refused("forbidden").await;
    // Nor can a room one is not in.
    mallory
        .send(json!({"type": "members", "room": "team.red"}))
        .await;
    mallory.refused("not_joined").await;
    alice
        .send(json!({"type": "leave", "room": "quiet.hall"}))
        .await;
    alice.expect("left").await;
    // A room without history: a resume replays nothing and says so.
    let news = alice.join("news.today").await;
    let news_epoch = news["epoch"].as_str().unwrap().to_owned();
    alice
        .send(json!({"type": "send", "room": "news.today", "body": "x", "ref": "n"}))
        .await;
    alice.refused("forbidden").await;
    alice
        .send(json!({"type": "leave", "room": "news.today"}))
        .await;
    alice.expect("left").await;
    mallory
        .send(json!({"type": "join", "room": "news.today", "since": {"epoch": news_epoch, "offset": 0}}))
        .await;
    let resumed = mallory.expect("joined").await;
    assert_eq!(resumed["recovered"], false, "{resumed}");

    // A grant removed at refresh ends the membership.
    carol
        .send(json!({"type": "refresh", "token": hs256(&claims("carol", json!({"rooms": ["team.blue"]})))}))
        .await;
    carol.expect("refreshed").await;
    let revoked = carol.refused("grant_revoked").await;
    assert!(
        revoked["message"]
            .as_str()
            .unwrap_or("")
            .contains("team.red"),
        "{revoked}"
    );
    assert_eq!(carol.expect("left").await["room"], "team.red");
    let mut dora = Peer::user(&a, &hs256(&claims("dora", json!({"rooms": ["team.red"]})))).await;
    dora.join("team.red").await;
    dora.say("team.red", &format!("{MARK}after-revoke")).await;
    carol
        .send(json!({"type": "send", "room": "team.red", "body": "x", "ref": "r"}))
        .await;
    carol.refused("not_joined").await;
    carol.settle(Duration::from_millis(500)).await;
    assert!(
        !carol
            .seen
            .iter()
            .any(|f| f.to_string().contains("after-revoke")),
        "a revoked member still got team.red's traffic"
    );

    // --- Direct messages ------------------------------------------------------------
    // Shared-room policy: mallory shares no visible room with alice (the quiet hall
    // hides presence), so a DM is refused exactly as one to a user who does not exist.
    mallory
        .send(json!({"type": "dm", "to": "alice", "body": "x", "ref": "p1"}))
        .await;
    let online = mallory.refused("forbidden").await;
    mallory
        .send(json!({"type": "dm", "to": "nobody", "body": "x", "ref": "p1"}))
        .await;
    let absent = mallory.refused("forbidden").await;
    assert_eq!(online, absent, "the refusal must not tell who is online");
    // In the lobby with alice, mallory may write to her; bursts are limited per user.
    mallory.join("lobby").await;
    let mut limited = false;
    for i in 0..6 {
        mallory
            .send(json!({"type": "dm", "to": "alice", "body": "hi", "ref": format!("m{i}")}))
            .await;
        loop {
            let v = mallory.next(Duration::from_secs(5)).await.expect("answer");
            if v["type"] == "ack" {
                break;
            }
            if v["type"] == "error" {
                assert_eq!(v["code"], "rate_limited", "{v}");
                limited = true;
                break;
            }
        }
    }
    assert!(limited, "six DMs at once passed a burst of three");

    // --- The server API without its key ----------------------------------------------
    // Mallory holds a valid client token; neither it, a guessed key nor no key opens the
    // application's API on any node. Every answer is a bare 401 that carries nothing of
    // a room or a user, and nothing the calls asked for happens.
    let mallory_token = token("mallory");
    let calls = [
        ("history", json!({"room": "team.red"})),
        ("presence", json!({"room": "team.red"})),
        ("room", json!({"room": "lobby"})),
        ("rooms", json!({})),
        ("user_sessions", json!({"user": "alice"})),
        (
            "publish",
            json!({"room": "lobby", "body": "spoofed-by-mallory", "from": "alice"}),
        ),
        ("dm", json!({"to": "alice", "body": "spoofed-by-mallory"})),
        ("disconnect", json!({"user": "alice"})),
        (
            "remove_from_room",
            json!({"room": "lobby", "user": "alice"}),
        ),
    ];
    for node in 0..3 {
        let api = servers.api(node);
        for key in [
            None,
            Some("guessed-key-guessed-key-1"),
            Some(mallory_token.as_str()),
        ] {
            for (endpoint, body) in &calls {
                let body = body.to_string();
                let path = format!("/api/v1/{endpoint}");
                let answer = tokio::task::block_in_place(|| {
                    chatcluster_e2e::harness::http::request(
                        api,
                        "POST",
                        &path,
                        chatcluster_e2e::harness::http::Options {
                            json: Some(&body),
                            bearer: key,
                            timeout: Some(Duration::from_secs(3)),
                        },
                    )
                })
                .unwrap_or_else(|| panic!("{endpoint}: the API answers"));
                assert_eq!(
                    answer.status, 401,
                    "{endpoint} with {key:?}: {}",
                    answer.raw
                );
                let v: Value = serde_json::from_str(&answer.body).expect("a JSON answer");
                assert_eq!(
                    (v.as_object().map(|o| o.len()), v["error"]["code"].as_str()),
                    (Some(1), Some("unauthorized")),
                    "{endpoint}: {v}"
                );
                assert_eq!(v["error"].as_object().map(|o| o.len()), Some(2), "{v}");
                for secret in [MARK, "team.red", "alice", "lobby"] {
                    assert!(
                        !answer.body.contains(secret),
                        "{endpoint} leaked {secret}: {v}"
                    );
                }
            }
        }
    }
    alice.settle(Duration::from_millis(300)).await;
    assert!(
        alice.closed.is_none(),
        "alice was disconnected: {:?}",
        alice.closed
    );
    assert!(
        alice.seen.iter().all(|f| f["body"] != "spoofed-by-mallory"),
        "a refused call reached alice"
    );

    // --- Every frame the attackers got ------------------------------------------------
    mallory.settle(Duration::from_millis(500)).await;
    fake.settle(Duration::from_millis(200)).await;
    assert_nothing_leaked(
        &mallory,
        &["team.red", "inbox.", "hook.", "secret"],
        &["alice"],
    );
    assert_nothing_leaked(&fake, &["team.", "inbox.", "hook.", "quiet."], &["alice"]);
    assert!(
        mallory.seen.iter().all(|f| f["type"] != "dm"),
        "mallory got a DM"
    );
}

fn base64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn binary() -> PathBuf {
    chat_server_binary(LOADGEN).unwrap()
}

/// Starts the identity provider, the join hook and the servers `start` makes with the
/// suite's flags, then attacks them.
async fn run_suite(start: impl FnOnce(&[&str]) -> Servers) {
    let _serial = SERIAL.lock().await;
    let mut idp = IdentityProvider::start();
    let hook = JoinHook::start().await;
    let dir = ScratchDir::new("attacker").unwrap();
    let flags = flags(&idp, &hook, &dir.0);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let servers = tokio::task::block_in_place(|| start(&args));
    attack(&servers, &mut idp, &hook).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_suite_single_node_in_memory() {
    run_suite(|args| {
        let api = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let api_listen = api.to_string();
        let mut args = args.to_vec();
        args.extend(["--api-listen", &api_listen, "--api-keys", API_KEY]);
        Servers::Single(ServerProcess::start(&binary(), &args).unwrap(), api)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_suite_three_nodes_over_redis() {
    run_suite(|args| {
        let c = LocalCluster::start_with(
            &binary(),
            ClusterOptions {
                nodes: 3,
                extra: args,
                api_key: Some(API_KEY),
                ..ClusterOptions::default()
            },
        )
        .unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        Servers::Cluster(Box::new(c))
    })
    .await;
}
