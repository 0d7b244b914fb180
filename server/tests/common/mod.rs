//! Test harness: start a chat server on ephemeral loopback ports and talk to it with a
//! real WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chat_server::config::Settings;
use chat_server::RunningServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub async fn start(settings: Settings) -> RunningServer {
    chat_server::start(settings).await.expect("server starts")
}

pub async fn start_default() -> RunningServer {
    start(Settings::local_test()).await
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user: String,
}

/// The HTTP answer to a refused upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

pub async fn try_connect_with(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, Refused> {
    let mut req = format!("ws://{addr}/ws?{query}")
        .into_client_request()
        .expect("valid request");
    for (k, v) in headers {
        req.headers_mut()
            .insert(http_name(k), v.parse().expect("valid header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Err(e) => panic!("connect failed unexpectedly: {e}"),
    }
}

fn http_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    k.parse().expect("valid header name")
}

impl Client {
    /// Connects as an anonymous user and consumes the `welcome` frame. With token keys
    /// configured the server names the user `~user`; `Client::user` is the name it gave.
    pub async fn connect(addr: SocketAddr, user: &str) -> Client {
        let ws = try_connect_with(addr, &format!("user={user}"), &[])
            .await
            .expect("upgrade accepted");
        let mut c = Client {
            ws,
            user: user.to_owned(),
        };
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let given = welcome["user"].as_str().unwrap_or_default();
        assert!(
            given == user || given.strip_prefix('~') == Some(user),
            "{welcome}"
        );
        c.user = given.to_owned();
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next JSON frame (skips pings), failing after `WAIT`.
    pub async fn recv(&mut self) -> Value {
        match self.next_event(WAIT).await {
            Event::Frame(v) => v,
            other => panic!("{}: expected a frame, got {other:?}", self.user),
        }
    }

    /// Next frame of the given type, skipping presence frames.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
            assert_eq!(
                v["type"], "presence",
                "{}: expected {kind}, got {v}",
                self.user
            );
        }
    }

    pub async fn next_event(&mut self, wait: Duration) -> Event {
        loop {
            let next = tokio::time::timeout(wait, self.ws.next()).await;
            return match next {
                Err(_) => Event::Timeout,
                Ok(None) => Event::Ended,
                Ok(Some(Err(e))) => Event::Error(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    Event::Frame(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    Event::Closed(f.map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string())))
                }
                Ok(Some(Ok(_))) => continue,
            };
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_event(WAIT).await {
                Event::Frame(_) => continue,
                Event::Closed(Some(c)) => return c,
                other => panic!("{}: expected a close frame, got {other:?}", self.user),
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type":"join","room":room})).await;
        let j = self.recv_type("joined").await;
        assert_eq!(j["room"], room);
        j
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(_)) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Closed(Option<(u16, String)>),
    Ended,
    Error(String),
    Timeout,
}

/// GET on the admin port; returns (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None).await
}

pub async fn admin_post(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(addr, "POST", path, token).await
}

/// POST with a body on the admin port, with the given headers (e.g. a content type).
pub async fn admin_post_body(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_request_with(addr, "POST", path, None, headers, body).await
}

/// A tiny HTTP/1.1 client (one request per connection) so tests need no HTTP crate.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    http_request_with(addr, method, path, token, &[], "").await
}

pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, method, path, token, headers, body).await;
    (status, body)
}

/// One request; the status, the response's head (status line and headers) and its body.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let len = body.len();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("the server answers in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// Value of a metric line such as `chat_connections 3` from `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = admin_get(addr, "/metrics").await;
    metric_value(&body, name).unwrap_or_else(|| panic!("metric {name} not found in\n{body}"))
}

/// The value on the line `name VALUE` of a `/metrics` body.
fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits (up to `WAIT`) until a metric reads `value`: counters of closed connections
/// are updated once the server's side of the close handshake is done.
pub async fn wait_for_metric(addr: SocketAddr, name: &str, value: f64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, body) = admin_get(addr, "/metrics").await;
        let now = metric_value(&body, name);
        if now == Some(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} is {now:?}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `body` to `room` (with `body` as its ref) and waits for its ack; returns the
/// offset the message got.
pub async fn publish(c: &mut Client, room: &str, body: &str) -> u64 {
    c.send(json!({"type":"send","room":room,"body":body,"ref":body}))
        .await;
    loop {
        let v = c.recv().await;
        if v["type"] == "ack" && v["ref"] == body {
            return v["offset"].as_u64().expect("ack has an offset");
        }
    }
}
