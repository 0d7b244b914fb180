//! `idle`: N idle connections spread over worker processes (each under the 20,000
//! open-files limit) and 127.0.0.x source addresses (so ephemeral ports last); reports
//! server RSS per connection.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::time::Instant;

use super::{connect_retrying, loopback_target, loopback_targets, sample_all, Report};
use crate::clients::ws::{join_frame, send_json};

/// Most connections one client process may hold: the open-files limit is 20,000.
pub const MAX_PER_WORKER: usize = 19_000;
/// Longest `--hold`, so a run is bounded in time.
pub const MAX_HOLD_SECS: u64 = 600;

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// WebSocket URLs of the servers (connections are spread over them round-robin).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// PIDs of the server processes whose RSS is measured (summed).
    #[arg(long = "server-pid", required = true)]
    pub server_pids: Vec<u32>,
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Client processes (each holds at most 19,000 connections: the open-files limit).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, so ephemeral ports do not run out.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// New connections per second over all workers.
    #[arg(long, default_value_t = 1500)]
    pub connect_rate: u32,
    /// Seconds to hold the connections after all are open (and RSS is sampled).
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Each connection joins one of this many rooms (`idle-0` …), so presence is held
    /// too; 0: none.
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
    /// PIDs of Redis processes whose RSS is reported (what the connections' registrations
    /// and presence cost there).
    #[arg(long = "redis-pid")]
    pub redis_pids: Vec<u32>,
}

/// One worker process of `idle` (the hidden `idle-worker` subcommand).
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub worker: usize,
    #[arg(long)]
    pub source_ips: u8,
    #[arg(long)]
    pub connect_rate: u32,
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
}

/// Starts the workers, waits until they hold every connection, samples server RSS, holds,
/// then stops the workers (closing their stdin, then killing any that linger).
pub async fn run(a: IdleArgs) -> Result<Report> {
    if a.workers == 0 || a.connections == 0 || a.source_ips == 0 || a.connect_rate == 0 {
        bail!("--workers, --connections, --source-ips and --connect-rate must be at least 1");
    }
    let per_worker = a.connections.div_ceil(a.workers);
    if per_worker > MAX_PER_WORKER {
        bail!("{per_worker} connections per worker exceeds the {MAX_PER_WORKER} open-files budget; add --workers");
    }
    if a.hold > MAX_HOLD_SECS {
        bail!("--hold must be at most {MAX_HOLD_SECS} seconds");
    }
    loopback_targets(&a.urls)?;
    let before = sample_all(&a.server_pids)?;
    let redis_before = sample_all(&a.redis_pids)?;
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
            .args(["--rooms", &a.rooms.to_string()])
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
    // Twice the time the connect rate needs, plus a minute of slack.
    let budget =
        Duration::from_secs(60 + a.connections as u64 / u64::from(a.connect_rate).max(1) * 2);
    let mut opened = 0usize;
    for (_, lines) in children.iter_mut() {
        let line = tokio::time::timeout_at(t0 + budget, lines.next_line())
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
    let redis_after = sample_all(&a.redis_pids)?;
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let held = sample_all(&a.server_pids)?;
    for (mut child, _) in children {
        drop(child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        let _ = child.kill().await;
    }
    let delta = after.rss_bytes.saturating_sub(before.rss_bytes);
    let per_conn = delta as f64 / opened.max(1) as f64;
    let redis_per_conn =
        redis_after.rss_bytes.saturating_sub(redis_before.rss_bytes) as f64 / opened.max(1) as f64;
    let json = json!({
        "scenario": "idle",
        "connections": opened,
        "servers": a.urls.len(),
        "connect_secs": connect_secs,
        "server_rss_before_bytes": before.rss_bytes,
        "server_rss_after_bytes": after.rss_bytes,
        "server_rss_after_hold_bytes": held.rss_bytes,
        "server_rss_bytes_per_connection": per_conn,
        "server_cpu_us_while_holding": held.cpu_micros.saturating_sub(after.cpu_micros),
        "rooms": a.rooms,
        "redis_rss_before_bytes": redis_before.rss_bytes,
        "redis_rss_after_bytes": redis_after.rss_bytes,
        "redis_rss_bytes_per_connection": redis_per_conn,
    });
    let mut summary = format!(
        "idle: {opened} connections over {} server(s) in {connect_secs:.1}s: server RSS {} -> {} bytes, {:.0} bytes ({:.2} KiB) per connection",
        a.urls.len(), before.rss_bytes, after.rss_bytes, per_conn, per_conn / 1024.0
    );
    if !a.redis_pids.is_empty() {
        summary.push_str(&format!(
            "; Redis RSS {} -> {} bytes, {redis_per_conn:.0} bytes per connection",
            redis_before.rss_bytes, redis_after.rss_bytes
        ));
    }
    let failures = if opened == a.connections {
        Vec::new()
    } else {
        vec![format!(
            "only {opened} of {} connections opened",
            a.connections
        )]
    };
    Ok(Report {
        summary,
        json,
        failures,
    })
}

/// Opens `count` connections at `connect_rate` per second, prints `ready N`, and holds
/// them until the parent closes stdin (or dies, which closes it too).
pub async fn worker(a: WorkerArgs) -> Result<()> {
    if a.count > MAX_PER_WORKER {
        bail!(
            "{} connections exceed the {MAX_PER_WORKER} per-process budget",
            a.count
        );
    }
    let targets = a
        .urls
        .iter()
        .map(|u| loopback_target(u))
        .collect::<Result<Vec<_>>>()?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.connect_rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    let mut held = Vec::with_capacity(a.count);
    for i in 0..a.count {
        tick.tick().await;
        let target = &targets[i % targets.len()];
        let src = target.source(i + a.worker, a.source_ips);
        let mut ws = connect_retrying(target, &format!("user=idle{}-{i}", a.worker), src).await?;
        if a.rooms > 0 {
            let room = format!("idle-{}", (i * 7 + a.worker) % a.rooms);
            send_json(&mut ws, join_frame(&room, None)).await?;
        }
        held.push(tokio::spawn(async move {
            // Keep reading so pings are answered; ends when the server closes.
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
