//! chat-loadgen: benchmark program for ChatCluster chat servers (loopback only).
//!
//! `fanout`: C subscribers in one room, publishers at a fixed total rate; reports
//! deliveries/sec, loss, end-to-end latency (from a timestamp in the body) and server CPU
//! per delivered message. `idle`: N idle connections spread over worker processes and
//! 127.0.0.x source addresses; reports server RSS per connection.
//!
//! Every loop here is bounded in count and time, and only loopback targets are accepted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chatcluster_e2e::procstat::{self, ProcSample};
use chatcluster_e2e::stats::percentiles;
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<tokio::net::TcpStream>;

#[derive(Parser)]
#[command(
    name = "chat-loadgen",
    about = "Load generator for ChatCluster chat servers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// C subscribers in one room, publishers at a fixed total rate.
    #[command(args_override_self = true)]
    Fanout(FanoutArgs),
    /// N idle connections; reports server RSS per connection.
    #[command(args_override_self = true)]
    Idle(IdleArgs),
    /// Internal: one worker process of `idle`.
    #[command(hide = true)]
    IdleWorker(WorkerArgs),
}

#[derive(Args)]
struct FanoutArgs {
    /// WebSocket URLs of the servers (subscribers are spread over them round-robin).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// PIDs of the server processes whose CPU and RSS are measured (summed).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// PID of the Redis server, whose CPU is reported separately.
    #[arg(long)]
    redis_pid: Option<u32>,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Total messages per second over all publishers.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Message body size in bytes (at least 48).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    #[arg(long, default_value = "bench")]
    room: String,
}

#[derive(Args)]
struct IdleArgs {
    /// WebSocket URLs of the servers (connections are spread over them round-robin).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// PIDs of the server processes whose RSS is measured (summed).
    #[arg(long = "server-pid", required = true)]
    server_pids: Vec<u32>,
    #[arg(long, default_value_t = 15_000)]
    connections: usize,
    /// Client processes (each holds at most 19,000 connections: the open-files limit).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, so ephemeral ports do not run out.
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// New connections per second over all workers.
    #[arg(long, default_value_t = 1500)]
    connect_rate: u32,
    /// Seconds to hold the connections after all are open (and RSS is sampled).
    #[arg(long, default_value_t = 5)]
    hold: u64,
}

#[derive(Args)]
struct WorkerArgs {
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    worker: usize,
    #[arg(long)]
    source_ips: u8,
    #[arg(long)]
    connect_rate: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Fanout(a) => fanout(a).await,
        Scenario::Idle(a) => idle(a).await,
        Scenario::IdleWorker(a) => idle_worker(a).await,
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Parses a ws:// URL and refuses anything that is not a loopback address.
fn loopback_target(url: &str) -> Result<SocketAddr> {
    let req = url
        .into_client_request()
        .with_context(|| format!("bad URL {url}"))?;
    let uri = req.uri();
    if uri.scheme_str() != Some("ws") {
        bail!("{url}: only ws:// URLs are supported");
    }
    let host = uri.host().context("URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .with_context(|| format!("{url}: host must be a loopback IP literal"))?
    };
    if !ip.is_loopback() {
        bail!("{url}: benchmarks may only target loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

/// Connects from `source` (a 127.0.0.x address) and returns the socket after `welcome`.
/// Returns Ok(None) when the server refused with 503 (retry later).
async fn connect(url: &str, query: &str, source: Option<Ipv4Addr>) -> Result<Option<Ws>> {
    let target = loopback_target(url)?;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let (Some(src), true) = (source, target.is_ipv4()) {
        socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let req = format!("{url}{sep}{query}").into_client_request()?;
    let mut ws = match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 503 => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"welcome\"") => Ok(Some(ws)),
        other => bail!("expected welcome, got {other:?}"),
    }
}

async fn connect_retrying(url: &str, query: &str, source: Option<Ipv4Addr>) -> Result<Ws> {
    for _ in 0..50 {
        if let Some(ws) = connect(url, query, source).await? {
            return Ok(ws);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{url}: refused with 503 fifty times")
}

async fn join(ws: &mut Ws, room: &str) -> Result<()> {
    ws.send(Message::Text(
        json!({"type":"join","room":room}).to_string().into(),
    ))
    .await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"joined\"") => return Ok(()),
            Ok(Some(Ok(_))) => continue,
            other => bail!("expected joined, got {other:?}"),
        }
    }
}

fn sample_all(pids: &[u32]) -> Result<ProcSample> {
    let mut total = ProcSample {
        cpu_micros: 0,
        rss_bytes: 0,
    };
    for pid in pids {
        let s = procstat::sample(*pid).with_context(|| format!("reading /proc/{pid}"))?;
        total.cpu_micros += s.cpu_micros;
        total.rss_bytes += s.rss_bytes;
    }
    Ok(total)
}

/// What one subscriber saw.
#[derive(Default)]
struct SubscriberTally {
    received: u64,
    duplicates: u64,
    gaps: u64,
    latencies_us: Vec<u64>,
}

/// Reads a subscriber's stream until it has `expected` messages or `until` passes.
async fn subscribe_loop(
    mut ws: Ws,
    expected: Arc<AtomicU64>,
    until: Arc<AtomicU64>,
) -> SubscriberTally {
    let mut t = SubscriberTally::default();
    let mut last_offset = 0u64;
    let started = Instant::now();
    loop {
        let deadline_ms = until.load(Ordering::Relaxed);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if deadline_ms > 0
            && (elapsed_ms >= deadline_ms || t.received >= expected.load(Ordering::Relaxed))
        {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(100), ws.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = next else {
            if matches!(next, Ok(None) | Ok(Some(Err(_)))) {
                break;
            }
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        if v["type"] != "message" {
            continue;
        }
        let offset = v["offset"].as_u64().unwrap_or(0);
        if last_offset != 0 && offset <= last_offset {
            t.duplicates += 1;
            continue;
        }
        if last_offset != 0 && offset > last_offset + 1 {
            t.gaps += offset - last_offset - 1;
        }
        last_offset = offset;
        t.received += 1;
        let sent_us: u64 = v["body"]
            .as_str()
            .and_then(|b| b.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        t.latencies_us.push(now_us().saturating_sub(sent_us));
    }
    let _ = ws.close(None).await;
    t
}

async fn fanout(a: FanoutArgs) -> Result<()> {
    if a.body_bytes < 48 || a.publishers == 0 || a.rate == 0 || a.subscribers == 0 {
        bail!(
            "need --body-bytes >= 48 and at least one publisher, subscriber and message per second"
        );
    }
    if a.duration == 0 || a.duration > 600 {
        bail!("--duration must be 1..=600 seconds");
    }
    for url in &a.urls {
        loopback_target(url)?;
    }
    let total = u64::from(a.rate) * a.duration;
    let expected = Arc::new(AtomicU64::new(total));
    let until = Arc::new(AtomicU64::new(0));
    eprintln!(
        "connecting {} subscribers and {} publishers",
        a.subscribers, a.publishers
    );
    let mut subs = Vec::new();
    for i in 0..a.subscribers {
        let url = &a.urls[i % a.urls.len()];
        let src = Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8);
        let mut ws = connect_retrying(url, &format!("user=sub{i}"), Some(src)).await?;
        join(&mut ws, &a.room).await?;
        subs.push(tokio::spawn(subscribe_loop(
            ws,
            expected.clone(),
            until.clone(),
        )));
    }
    let mut pubs = Vec::new();
    for p in 0..a.publishers {
        let url = &a.urls[p % a.urls.len()];
        let mut ws = connect_retrying(url, &format!("user=pub{p}"), None).await?;
        join(&mut ws, &a.room).await?;
        pubs.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let redis_pids: Vec<u32> = a.redis_pid.into_iter().collect();
    let before = sample_all(&a.server_pids)?;
    let redis_before = sample_all(&redis_pids)?;
    let start = Instant::now();
    let echoes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let per_pub = total / a.publishers as u64;
    let interval = Duration::from_secs_f64(a.publishers as f64 / f64::from(a.rate));
    let mut pub_tasks = Vec::new();
    for (p, ws) in pubs.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let room = a.room.clone();
        let pad = "x".repeat(a.body_bytes);
        let body_bytes = a.body_bytes;
        let count = per_pub + u64::from((p as u64) < total % a.publishers as u64);
        let echoes = echoes.clone();
        let errors = errors.clone();
        let reader = tokio::spawn(async move {
            // Reads acks and echoes until the publisher closes; bounded by the stream.
            while let Some(Ok(Message::Text(t))) = stream.next().await {
                let s = t.as_str();
                if s.contains("\"type\":\"message\"") {
                    echoes.fetch_add(1, Ordering::Relaxed);
                } else if s.contains("\"type\":\"error\"")
                    && errors.fetch_add(1, Ordering::Relaxed) < 3
                {
                    eprintln!("publisher error: {s}");
                }
            }
        });
        let offset = interval.mul_f64(p as f64 / a.publishers as f64);
        pub_tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start + offset, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0..count {
                tick.tick().await;
                let head = format!("{} {p} {seq} ", now_us());
                let body = format!("{head}{}", &pad[..body_bytes.saturating_sub(head.len())]);
                let frame = json!({"type":"send","room":room,"body":body}).to_string();
                if sink.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
            }
            (sink, reader)
        }));
    }
    let mut closers = Vec::new();
    for t in pub_tasks {
        closers.push(t.await?);
    }
    let publish_secs = start.elapsed().as_secs_f64();
    // Let the last messages arrive: subscribers stop at `total` or 5 s from now.
    until.store(
        start.elapsed().as_millis() as u64 + 5_000,
        Ordering::Relaxed,
    );
    let mut tallies = Vec::new();
    for s in subs {
        tallies.push(s.await?);
    }
    let after = sample_all(&a.server_pids)?;
    let redis_after = sample_all(&redis_pids)?;
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (mut sink, reader) in closers {
        let _ = sink.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }

    let received: u64 = tallies.iter().map(|t| t.received).sum();
    let duplicates: u64 = tallies.iter().map(|t| t.duplicates).sum();
    let gaps: u64 = tallies.iter().map(|t| t.gaps).sum();
    let expected_deliveries = total * a.subscribers as u64;
    let loss = expected_deliveries.saturating_sub(received);
    let mut lat: Vec<u64> = tallies.into_iter().flat_map(|t| t.latencies_us).collect();
    let pct = percentiles(&mut lat);
    let echoed = echoes.load(Ordering::Relaxed);
    let delivered = received + echoed;
    let cpu_us = after.cpu_micros.saturating_sub(before.cpu_micros);
    let report = json!({
        "scenario": "fanout",
        "subscribers": a.subscribers,
        "publishers": a.publishers,
        "servers": a.urls.len(),
        "rate_per_sec": a.rate,
        "published": total,
        "publish_secs": publish_secs,
        "deliveries_to_subscribers": received,
        "deliveries_including_echoes": delivered,
        "deliveries_per_sec": delivered as f64 / publish_secs,
        "loss": loss,
        "gaps": gaps,
        "duplicates": duplicates,
        "publisher_errors": errors.load(Ordering::Relaxed),
        "latency_us": {"p50": pct.p50, "p99": pct.p99, "max": pct.max},
        "server_cpu_us": cpu_us,
        "server_cpu_us_per_delivery": if delivered > 0 { cpu_us as f64 / delivered as f64 } else { 0.0 },
        "server_cpu_percent": cpu_us as f64 / (elapsed * 1e4),
        "server_rss_bytes": after.rss_bytes,
        "redis_cpu_us": redis_after.cpu_micros.saturating_sub(redis_before.cpu_micros),
        "redis_cpu_us_per_published": redis_after.cpu_micros.saturating_sub(redis_before.cpu_micros) as f64 / total as f64,
    });
    println!(
        "fanout: {} subs x {} msg/s for {}s over {} server(s): {} deliveries ({:.0}/s), loss {}, dup {}, latency p50 {} us p99 {} us max {} us, server CPU {:.2} us/delivery, Redis CPU {} us",
        a.subscribers, a.rate, a.duration, a.urls.len(), delivered, delivered as f64 / publish_secs, loss, duplicates,
        pct.p50, pct.p99, pct.max, report["server_cpu_us_per_delivery"].as_f64().unwrap_or(0.0),
        report["redis_cpu_us"]
    );
    println!("{report}");
    if loss > 0 || duplicates > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn idle(a: IdleArgs) -> Result<()> {
    if a.workers == 0 || a.connections == 0 || a.source_ips == 0 || a.connect_rate == 0 {
        bail!("--workers, --connections, --source-ips and --connect-rate must be at least 1");
    }
    let per_worker = a.connections.div_ceil(a.workers);
    if per_worker > 19_000 {
        bail!("{per_worker} connections per worker exceeds the 19,000 open-files budget; add --workers");
    }
    if a.hold > 600 {
        bail!("--hold must be at most 600 seconds");
    }
    for url in &a.urls {
        loopback_target(url)?;
    }
    let before = sample_all(&a.server_pids)?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut remaining = a.connections;
    for w in 0..a.workers {
        let count = per_worker.min(remaining);
        remaining -= count;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("idle-worker")
            .args(["--count", &count.to_string(), "--worker", &w.to_string()])
            .args(["--source-ips", &a.source_ips.to_string()])
            .args([
                "--connect-rate",
                &(a.connect_rate / a.workers as u32).max(1).to_string(),
            ]);
        for url in &a.urls {
            cmd.args(["--url", url]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("worker stdout")?;
        children.push((child, BufReader::new(stdout).lines()));
    }
    let t0 = Instant::now();
    let budget =
        Duration::from_secs(60 + a.connections as u64 / u64::from(a.connect_rate).max(1) * 2);
    let mut opened = 0usize;
    for (_, lines) in children.iter_mut() {
        let line = tokio::time::timeout(budget, lines.next_line())
            .await
            .context("workers did not finish connecting in time")??
            .context("worker exited early")?;
        opened += line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse::<usize>().ok())
            .with_context(|| format!("unexpected worker output: {line}"))?;
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample_all(&a.server_pids)?;
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let held = sample_all(&a.server_pids)?;
    for (mut child, _) in children {
        drop(child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        let _ = child.kill().await;
    }
    let delta = after.rss_bytes.saturating_sub(before.rss_bytes);
    let per_conn = delta as f64 / opened.max(1) as f64;
    let report = json!({
        "scenario": "idle",
        "connections": opened,
        "servers": a.urls.len(),
        "connect_secs": connect_secs,
        "server_rss_before_bytes": before.rss_bytes,
        "server_rss_after_bytes": after.rss_bytes,
        "server_rss_after_hold_bytes": held.rss_bytes,
        "server_rss_bytes_per_connection": per_conn,
        "server_cpu_us_while_holding": held.cpu_micros.saturating_sub(after.cpu_micros),
    });
    println!(
        "idle: {opened} connections over {} server(s) in {connect_secs:.1}s: server RSS {} -> {} bytes, {:.0} bytes ({:.2} KiB) per connection",
        a.urls.len(), before.rss_bytes, after.rss_bytes, per_conn, per_conn / 1024.0
    );
    println!("{report}");
    if opened != a.connections {
        bail!("only {opened} of {} connections opened", a.connections);
    }
    Ok(())
}

async fn idle_worker(a: WorkerArgs) -> Result<()> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.connect_rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    let mut held = Vec::with_capacity(a.count);
    for i in 0..a.count {
        tick.tick().await;
        let url = &a.urls[i % a.urls.len()];
        let src = Ipv4Addr::new(
            127,
            0,
            0,
            1 + ((i + a.worker) % usize::from(a.source_ips)) as u8,
        );
        let ws = connect_retrying(url, &format!("user=idle{}-{i}", a.worker), Some(src)).await?;
        held.push(tokio::spawn(async move {
            // Keep reading so pings are answered; ends when the server closes.
            let mut ws = ws;
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    println!("ready {}", held.len());
    // Hold until the parent closes our stdin.
    let mut buf = [0u8; 1];
    let _ = tokio::io::stdin().read(&mut buf).await;
    for h in held {
        h.abort();
    }
    Ok(())
}
