//! WebSocket clients for the end-to-end suites: a plain client, a subscriber that follows
//! reconnect notices and resumes with `since` (as a real client should), and a publisher
//! that resends what was not acknowledged. Both keep the load balancer's sticky cookie.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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
                Err(anyhow::Error::new(Refused {
                    status: resp.status().as_u16(),
                    retry_after,
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

/// Next JSON frame; `Ok(None)` when the connection closed.
pub async fn recv_json(ws: &mut Ws, within: Duration) -> Result<Option<Value>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("timed out waiting for a frame")?;
        match next {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Ok(None),
            Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(t.as_str())?)),
            Some(Ok(_)) => continue,
        }
    }
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

/// Joins `room` (resuming from `since` = (epoch, offset) when given); returns `joined`.
pub async fn join(ws: &mut Ws, room: &str, since: Option<(&str, u64)>) -> Result<Value> {
    let frame = match since {
        Some((epoch, offset)) => {
            json!({"type":"join","room":room,"since":{"epoch":epoch,"offset":offset}})
        }
        None => json!({"type":"join","room":room}),
    };
    send_json(ws, frame).await?;
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

/// What a resuming subscriber saw, shared with the test.
#[derive(Debug, Default)]
pub struct SubscriberLog {
    /// room → offset → body, as delivered (a duplicate offset is recorded in `duplicates`).
    pub messages: HashMap<String, BTreeMap<u64, String>>,
    pub duplicates: u64,
    /// Joins answered with `recovered: false` (or unsolicited ones).
    pub not_recovered: u64,
    /// `joined` frames received (one per room per (re)connection): a test waits for the
    /// subscriber's rooms to be joined instead of guessing with a sleep.
    pub joins: u64,
    pub reconnects: u64,
    /// When each reconnect happened (for the reconnect-rate figure).
    pub reconnect_times: Vec<Instant>,
    pub longest_disconnect: Duration,
    pub nodes_seen: Vec<String>,
    pub errors: Vec<String>,
}

/// Runs a subscriber until `stop` is set: joins `rooms`, records every message, and on a
/// drain notice or lost connection reconnects (honouring `after_ms`, keeping the sticky
/// cookie) and resumes each room with `since`.
pub async fn run_resuming_subscriber(
    url: String,
    user: String,
    rooms: Vec<String>,
    log: Arc<Mutex<SubscriberLog>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    run_resuming_subscriber_over(vec![url], user, rooms, log, stop).await
}

/// [`run_resuming_subscriber`] for clients that know several addresses instead of one
/// load balancer: it starts on the first, and moves on to the next whenever a connection
/// attempt is refused (e.g. a drained node answering 503).
pub async fn run_resuming_subscriber_over(
    urls: Vec<String>,
    user: String,
    rooms: Vec<String>,
    log: Arc<Mutex<SubscriberLog>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let mut current = 0usize;
    let mut cookie: Option<String> = None;
    let mut cursors: HashMap<String, (String, u64)> = HashMap::new();
    let mut disconnected_at: Option<Instant> = None;
    let mut wait = Duration::ZERO;
    let mut attempts = 0u32;
    while !stop.load(Ordering::Relaxed) && attempts < 200 {
        tokio::time::sleep(wait).await;
        let Some(url) = urls.get(current % urls.len().max(1)) else {
            return;
        };
        let (mut ws, set_cookie, welcome) =
            match connect(url, &format!("user={user}"), cookie.as_deref()).await {
                Ok(c) => c,
                Err(_) => {
                    attempts += 1;
                    current += 1;
                    wait = Duration::from_millis(50);
                    continue;
                }
            };
        if let Some(c) = set_cookie {
            cookie = Some(c);
        }
        {
            let mut l = lock(&log);
            l.nodes_seen
                .push(welcome["node"].as_str().unwrap_or("").to_owned());
            if let Some(t) = disconnected_at.take() {
                let gap = t.elapsed();
                l.longest_disconnect = l.longest_disconnect.max(gap);
                l.reconnects += 1;
                l.reconnect_times.push(Instant::now());
            }
        }
        let mut joined_ok = true;
        for room in &rooms {
            let join = match cursors.get(room) {
                Some((epoch, offset)) => {
                    json!({"type":"join","room":room,"since":{"epoch":epoch,"offset":offset}})
                }
                None => json!({"type":"join","room":room}),
            };
            if send_json(&mut ws, join).await.is_err() {
                joined_ok = false;
                break;
            }
        }
        wait = Duration::from_millis(50);
        if joined_ok {
            loop {
                if stop.load(Ordering::Relaxed) {
                    let _ = ws.close(None).await;
                    return;
                }
                let v = match recv_json(&mut ws, Duration::from_millis(200)).await {
                    Err(_) => continue, // quiet; check `stop` again
                    Ok(None) => {
                        // Answer the server's close, as a well-behaved client does.
                        let _ = tokio::time::timeout(Duration::from_millis(500), ws.flush()).await;
                        break;
                    }
                    Ok(Some(v)) => v,
                };
                match v["type"].as_str() {
                    Some("joined") => {
                        let room = v["room"].as_str().unwrap_or("").to_owned();
                        let epoch = v["epoch"].as_str().unwrap_or("").to_owned();
                        let offset = v["offset"].as_u64().unwrap_or(0);
                        {
                            let mut l = lock(&log);
                            l.joins += 1;
                            if v["recovered"] == false {
                                l.not_recovered += 1;
                            }
                        }
                        match cursors.get(&room) {
                            // A resumed join keeps the cursor; replay follows.
                            Some((e, _)) if *e == epoch && v["recovered"] == true => {}
                            _ => {
                                cursors.insert(room, (epoch, offset));
                            }
                        }
                    }
                    Some("message") => {
                        let room = v["room"].as_str().unwrap_or("").to_owned();
                        let epoch = v["epoch"].as_str().unwrap_or("").to_owned();
                        let offset = v["offset"].as_u64().unwrap_or(0);
                        let body = v["body"].as_str().unwrap_or("").to_owned();
                        let mut l = lock(&log);
                        let seen = l.messages.entry(room.clone()).or_default();
                        if seen.insert(offset, body).is_some() {
                            l.duplicates += 1;
                        }
                        cursors.insert(room, (epoch, offset));
                    }
                    Some("reconnect") => {
                        wait = Duration::from_millis(v["after_ms"].as_u64().unwrap_or(0));
                    }
                    Some("error") => lock(&log).errors.push(v.to_string()),
                    _ => {}
                }
            }
        }
        disconnected_at.get_or_insert_with(Instant::now);
    }
}

/// What the publisher got acknowledged: room → offset → body.
#[derive(Debug, Default)]
pub struct PublisherLog {
    pub acked: HashMap<String, BTreeMap<u64, String>>,
    pub resent: u64,
    pub errors: Vec<String>,
}

/// Sends `total` messages round-robin over `rooms` at `rate` per second, each with a
/// unique body; after a reconnect it resends every message not yet acknowledged.
pub async fn run_publisher(
    url: String,
    rooms: Vec<String>,
    rate: u32,
    total: usize,
    log: Arc<Mutex<PublisherLog>>,
) -> Result<()> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut cookie: Option<String> = None;
    let mut pending: BTreeMap<String, (String, String)> = BTreeMap::new(); // ref → (room, body)
    let mut next = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    'connection: while (next < total || !pending.is_empty()) && Instant::now() < deadline {
        let Ok((mut ws, set_cookie, _)) = connect(&url, "user=publisher", cookie.as_deref()).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if let Some(c) = set_cookie {
            cookie = Some(c);
        }
        for room in &rooms {
            send_json(&mut ws, json!({"type":"join","room":room})).await?;
        }
        for (r, (room, body)) in pending.clone() {
            lock(&log).resent += 1;
            if send_json(
                &mut ws,
                json!({"type":"send","room":room,"body":body,"ref":r}),
            )
            .await
            .is_err()
            {
                continue 'connection;
            }
        }
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tick.tick(), if next < total => {
                    let room = rooms[next % rooms.len()].clone();
                    let r = format!("m{next}");
                    let body = format!("body-{next}");
                    pending.insert(r.clone(), (room.clone(), body.clone()));
                    next += 1;
                    if send_json(&mut ws, json!({"type":"send","room":room,"body":body,"ref":r})).await.is_err() {
                        continue 'connection;
                    }
                }
                v = recv_json(&mut ws, Duration::from_secs(10)) => {
                    match v {
                        Ok(Some(v)) if v["type"] == "ack" => {
                            if let Some((room, body)) = v["ref"].as_str().and_then(|r| pending.remove(r)) {
                                let offset = v["offset"].as_u64().unwrap_or(0);
                                lock(&log).acked.entry(room).or_default().insert(offset, body);
                            }
                        }
                        Ok(Some(v)) if v["type"] == "error" => lock(&log).errors.push(v.to_string()),
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            let _ = tokio::time::timeout(Duration::from_millis(500), ws.flush()).await;
                            continue 'connection;
                        }
                    }
                    if next >= total && pending.is_empty() {
                        let _ = ws.close(None).await;
                        break 'connection;
                    }
                }
            }
        }
    }
    if !pending.is_empty() {
        bail!("{} messages never acknowledged", pending.len());
    }
    Ok(())
}
