//! docs/api.md's example backend, run as a user would run it: `examples/api/backend.py`
//! receives a chat-server's events (and refuses a forged one), publishes a system message
//! and disconnects a user; `examples/api/curl.sh` does the same with curl. The docs show
//! both files verbatim (checked here), so what the docs show is what ran.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chatcluster_e2e::clients::ws::{connect, join, recv_json, Ws};
use chatcluster_e2e::harness::binaries::chat_server_binary;
use chatcluster_e2e::harness::http::{request, Options};
use chatcluster_e2e::harness::process::{free_port, terminate, wait_listening};
use chatcluster_e2e::harness::server_process::ServerProcess;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");
const API_KEY: &str = "example-backend-api-key-1";
const SECRET: &str = "example-backend-webhook-secret-0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example backend's `serve`, its stdout lines in a channel; killed on drop.
struct Backend {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Drop for Backend {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(2));
    }
}

fn example(api: SocketAddr) -> Command {
    let mut c = Command::new("python3");
    c.arg(repo().join("examples/api/backend.py"))
        .env("CHAT_API", format!("http://{api}"))
        .env("CHAT_API_KEY", API_KEY)
        .env("CHAT_WEBHOOK_SECRET", SECRET);
    c
}

fn run(mut c: Command) -> String {
    let out = c.output().expect("the example runs");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The next event the backend handled (its printed line), skipping `user.*` events.
fn next_handled(backend: &Backend, kind: &str) -> Value {
    loop {
        let line = backend
            .lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the backend handled no {kind} event"));
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        if v["handled"] == kind {
            return v;
        }
    }
}

async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let f = recv_json(ws, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if f["type"] == kind {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_backend_receives_verified_events_publishes_and_disconnects() {
    let doc = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    for file in ["examples/api/backend.py", "examples/api/curl.sh"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(
            doc.contains(text.trim_end()),
            "docs/api.md must show {file} verbatim"
        );
    }

    let backend_port = free_port().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut serve = example(api);
    serve.args(["serve", &backend_port.to_string()]);
    let mut child = serve.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let backend = Backend {
        child,
        lines,
        addr: SocketAddr::from(([127, 0, 0, 1], backend_port)),
    };
    wait_listening(backend.addr, Duration::from_secs(10)).unwrap();

    let hook = format!("http://{}/events", backend.addr);
    let api_listen = api.to_string();
    let server = ServerProcess::start(
        &chat_server_binary(LOADGEN).unwrap(),
        &[
            "--api-listen",
            &api_listen,
            "--api-keys",
            API_KEY,
            "--webhook-url",
            &hook,
            "--webhook-secret",
            SECRET,
            "--webhook-rooms",
            "lobby",
        ],
    )
    .unwrap();

    let (mut mallory, _, _) = connect(&server.ws_url(), "user=mallory", None)
        .await
        .unwrap();
    join(&mut mallory, "lobby", None).await.unwrap();
    assert_eq!(
        next_handled(&backend, "user.connected")["payload"]["user"],
        "mallory"
    );

    // A forged event is refused, and not handled.
    let forged = r#"{"id":"x","type":"message","ts":0,"payload":{}}"#;
    let answer = tokio::task::block_in_place(|| {
        request(
            backend.addr,
            "POST",
            "/events",
            Options {
                json: Some(forged),
                ..Options::default()
            },
        )
    })
    .unwrap();
    assert_eq!(answer.status, 401);

    // backend.py publish: a system message every member gets, and its event.
    let mut publish = example(api);
    publish.args(["publish", "lobby", "Welcome to the lobby"]);
    let answer: Value = serde_json::from_str(&run(publish)).unwrap();
    assert_eq!(answer["offset"], 1);
    let m = next_of(&mut mallory, "message").await;
    assert_eq!(
        (m["from"].as_str(), m["body"].as_str()),
        (Some("$app"), Some("Welcome to the lobby"))
    );
    let handled = next_handled(&backend, "message");
    assert_eq!(handled["payload"]["body"], "Welcome to the lobby");
    assert_eq!(handled["payload"]["offset"], 1);

    // curl.sh: a publish, a history read and a disconnect.
    let mut curl = Command::new("bash");
    curl.arg(repo().join("examples/api/curl.sh"))
        .env("CHAT_API", format!("http://{api}"))
        .env("CHAT_API_KEY", API_KEY);
    let out = run(curl);
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON answers"))
        .collect();
    assert_eq!(answers[0]["offset"], 2);
    assert_eq!(answers[1]["messages"].as_array().unwrap().len(), 2);
    assert_eq!(answers[2]["reached"], 1);
    assert_eq!(
        next_of(&mut mallory, "message").await["body"],
        "Maintenance at noon"
    );
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), mallory.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.expect("a close code"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected the close, got {other:?}"),
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4403, "banned")
    );
    assert_eq!(
        next_handled(&backend, "user.disconnected")["payload"]["user"],
        "mallory"
    );

    // backend.py disconnect, with nobody connected: reaches no session.
    let mut disconnect = example(api);
    disconnect.args(["disconnect", "mallory", "4403", "banned"]);
    let answer: Value = serde_json::from_str(&run(disconnect)).unwrap();
    assert_eq!(answer["reached"], 0);
    drop(server);
}
