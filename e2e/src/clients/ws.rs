//! One WebSocket connection to a chat-server: connect (with the load balancer's sticky
//! cookie, a source address, a time bound; a refused upgrade is a [`Refused`]), read and
//! send JSON frames, join a room (resuming with `since`), send and wait for the ack.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chat_server::protocol::ReceivedFrame;
use chat_server::sync::lock;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// tungstenite zeroes its whole read buffer before every socket read; at the default
/// (128 KiB) that memset was 40 % of the load generator's CPU and, sharing the machine's
/// cores, inflated the latencies it measured. Larger frames still arrive whole.
const CLIENT_READ_BUFFER_BYTES: usize = 4096;

/// What the server said when it refused an upgrade. It is the error [`connect`] and
/// [`connect_with`] return then, so a caller can tell a refusal (e.g. 503 while a node is
/// full or draining, worth retrying) from a broken connection:
/// `err.downcast_ref::<Refused>()`.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    /// The `Retry-After` the server sent with the refusal (whole seconds), if any.
    pub retry_after: Option<Duration>,
    /// The refusal is an HTML page: a load balancer's own error (haproxy's 503 when no
    /// server is available), not a chat server's, which answers in plain text.
    pub html: bool,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket upgrade refused with HTTP {}", self.status)
    }
}

impl std::error::Error for Refused {}

/// Host names that connect to a fixed address instead of being looked up (as curl's
/// `--resolve` does): an ingress routes by the Host header, and the test's ingress host
/// (e.g. `dataplane.e2e.test`) has no DNS record where the test runs.
static RESOLVE: Mutex<BTreeMap<String, SocketAddr>> = Mutex::new(BTreeMap::new());

/// Connects every later `ws://HOST...` URL of this process to `addr` (the port in the
/// URL is ignored): the request still says `Host: HOST`.
pub fn resolve_host(host: &str, addr: SocketAddr) {
    lock(&RESOLVE).insert(host.to_ascii_lowercase(), addr);
}

/// How [`connect_with`] connects; `Default` is what [`connect`] does.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions<'a> {
    /// The load balancer's sticky cookie to send back.
    pub cookie: Option<&'a str>,
    /// Local address to bind before connecting: a load generator spreads its clients over
    /// 127.0.0.x so that one source address does not run out of ephemeral ports.
    pub source: Option<IpAddr>,
    /// Bound on the TCP connect plus upgrade, and again on the `welcome` frame.
    pub within: Duration,
}

impl Default for ConnectOptions<'_> {
    fn default() -> Self {
        ConnectOptions {
            cookie: None,
            source: None,
            within: Duration::from_secs(5),
        }
    }
}

/// Connects, sending `cookie` if any; returns the socket, the sticky cookie the load
/// balancer set (if any) and the `welcome` frame.
pub async fn connect(
    url: &str,
    query: &str,
    cookie: Option<&str>,
) -> Result<(Ws, Option<String>, Value)> {
    connect_with(
        url,
        query,
        ConnectOptions {
            cookie,
            ..ConnectOptions::default()
        },
    )
    .await
}

/// Like [`connect`], with a source address and time bound of the caller's choosing. A
/// refused upgrade is a [`Refused`] error.
pub async fn connect_with(
    url: &str,
    query: &str,
    opts: ConnectOptions<'_>,
) -> Result<(Ws, Option<String>, Value)> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut req = format!("{url}{sep}{query}").into_client_request()?;
    if let Some(c) = opts.cookie {
        req.headers_mut().insert("cookie", c.parse()?);
    }
    let handshake = async {
        let stream = open_tcp(req.uri(), opts.source).await?;
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER_BYTES);
        let stream = MaybeTlsStream::Plain(stream);
        match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok(r) => Ok(r),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let html = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/html"));
                Err(anyhow::Error::new(Refused {
                    status: resp.status().as_u16(),
                    retry_after,
                    html,
                }))
            }
            Err(e) => Err(anyhow::Error::new(e)),
        }
    };
    let (mut ws, resp) = tokio::time::timeout(opts.within, handshake)
        .await
        .context("connect timed out")??;
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let welcome = recv_json(&mut ws, opts.within)
        .await?
        .context("closed before welcome")?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok((ws, set_cookie, welcome))
}

/// A TCP connection to the URL's host (`ws://` only: this crate has no TLS client), from
/// `source` when given, with Nagle off so small frames are not held back.
async fn open_tcp(uri: &Uri, source: Option<IpAddr>) -> Result<TcpStream> {
    if uri.scheme_str() != Some("ws") {
        bail!("{uri}: only ws:// URLs are supported");
    }
    let host = uri.host().context("URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let mut last_err = None;
    let fixed = lock(&RESOLVE).get(&host.to_ascii_lowercase()).copied();
    let addrs: Vec<SocketAddr> = match fixed {
        Some(addr) => vec![addr],
        None => tokio::net::lookup_host((host, port)).await?.collect(),
    };
    for addr in addrs {
        if source.is_some_and(|s| s.is_ipv4() != addr.is_ipv4()) {
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = source {
            socket
                .bind(SocketAddr::new(src, 0))
                .with_context(|| format!("binding source address {src}"))?;
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(anyhow::Error::new(e).context(format!("connecting to {host}:{port}"))),
        None => bail!("{host}:{port}: no address to connect to (from {source:?})"),
    }
}

/// Next text frame; `Ok(None)` when the connection closed.
async fn recv_text(ws: &mut Ws, within: Duration) -> Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("timed out waiting for a frame")?;
        match next {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Ok(None),
            Some(Ok(Message::Text(t))) => return Ok(Some(t.as_str().to_owned())),
            Some(Ok(_)) => continue,
        }
    }
}

/// Next JSON frame; `Ok(None)` when the connection closed.
pub async fn recv_json(ws: &mut Ws, within: Duration) -> Result<Option<Value>> {
    match recv_text(ws, within).await? {
        Some(text) => Ok(Some(serde_json::from_str(&text)?)),
        None => Ok(None),
    }
}

/// Next server frame, typed; `Ok(None)` when the connection closed. A frame the
/// protocol does not define is a [`NotAServerFrame`] error.
pub async fn recv_frame(ws: &mut Ws, within: Duration) -> Result<Option<ReceivedFrame>> {
    match recv_text(ws, within).await? {
        Some(text) => parse_frame(&text).map(Some),
        None => Ok(None),
    }
}

/// A text frame that is not one the protocol defines: the error [`recv_frame`] and
/// [`parse_frame`] return then, so a caller can tell it from a broken connection
/// (`err.downcast_ref::<NotAServerFrame>()`). It holds the frame's text.
#[derive(Debug)]
pub struct NotAServerFrame(pub String);

impl std::fmt::Display for NotAServerFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a server frame: {}", self.0)
    }
}

impl std::error::Error for NotAServerFrame {}

/// One server frame from its text.
pub fn parse_frame(text: &str) -> Result<ReceivedFrame> {
    ReceivedFrame::parse(text).map_err(|_| anyhow::Error::new(NotAServerFrame(text.to_owned())))
}

/// Next frame of `kind`, skipping presence frames.
pub async fn recv_type(ws: &mut Ws, kind: &str) -> Result<Value> {
    loop {
        let v = recv_json(ws, Duration::from_secs(5))
            .await?
            .context("connection closed")?;
        if v["type"] == kind {
            return Ok(v);
        }
        if v["type"] != "presence" {
            bail!("expected {kind}, got {v}");
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

/// `n` connections to `url` as users `{tag}0`, `{tag}1`, …, each past its `welcome`;
/// panics if one cannot connect (a test's set-up).
pub async fn connect_users(url: &str, tag: &str, n: usize) -> Vec<Ws> {
    let mut clients = Vec::new();
    for i in 0..n {
        let (ws, _, _) = connect(url, &format!("user={tag}{i}"), None)
            .await
            .expect("client connects");
        clients.push(ws);
    }
    clients
}

/// The `join` frame for `room`, resuming after `since` = (epoch, offset) when given.
pub fn join_frame(room: &str, since: Option<(&str, u64)>) -> Value {
    match since {
        Some((epoch, offset)) => {
            json!({"type":"join","room":room,"since":{"epoch":epoch,"offset":offset}})
        }
        None => json!({"type":"join","room":room}),
    }
}

/// Joins `room` (resuming from `since` = (epoch, offset) when given); returns `joined`.
pub async fn join(ws: &mut Ws, room: &str, since: Option<(&str, u64)>) -> Result<Value> {
    send_json(ws, join_frame(room, since)).await?;
    recv_type(ws, "joined").await
}

/// Sends `body` to `room` with `ref` and waits for that message's ack; returns its offset.
/// Frames before the ack (messages, presence, other acks) are skipped.
pub async fn send_and_ack(ws: &mut Ws, room: &str, body: &str, r: &str) -> Result<u64> {
    send_json(ws, json!({"type":"send","room":room,"body":body,"ref":r})).await?;
    loop {
        let v = recv_json(ws, Duration::from_secs(5))
            .await?
            .context("connection closed")?;
        if v["type"] == "ack" && v["ref"] == r {
            return v["offset"].as_u64().context("ack without offset");
        }
        if v["type"] == "error" && v["ref"] == r {
            bail!("send refused: {v}");
        }
    }
}
