//! `join-storm`: N clients join one room as fast as they can, each reading everything the
//! server sends until the room is quiet. Reports the server's CPU and the bytes the
//! clients received, per member: what a big room costs while it fills (member lists,
//! presence), and whether any member was closed as a slow consumer on the way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{connect_retrying, loopback_target, sample_all, Report};

/// Most members one run may hold: one process, under the 20,000 open-files limit.
pub const MAX_MEMBERS: usize = 19_000;
/// Longest a run may take, joining and settling.
pub const MAX_SECS: u64 = 600;

#[derive(Args, Debug, Clone)]
pub struct JoinStormArgs {
    /// WebSocket URL of the server.
    #[arg(long)]
    pub url: String,
    /// PID of the server process (its CPU is measured).
    #[arg(long = "server-pid")]
    pub server_pid: u32,
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// Joins started per second.
    #[arg(long, default_value_t = 1_000)]
    pub join_rate: u32,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, so ephemeral ports do not run out.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// The room is quiet once no member received anything for this long (ms).
    #[arg(long, default_value_t = 2_000)]
    pub quiet_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,
}

/// What the members received, summed.
#[derive(Default)]
struct Tally {
    joined: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    presence_frames: AtomicU64,
    closed_by_server: AtomicU64,
    connect_failures: AtomicU64,
    /// Milliseconds since the start at which the last frame arrived.
    last_frame_ms: AtomicU64,
}

pub async fn run(a: JoinStormArgs) -> Result<Report> {
    if a.members == 0 || a.members > MAX_MEMBERS {
        bail!("--members must be 1..={MAX_MEMBERS} (one process, under the open-files limit)");
    }
    if a.max_secs > MAX_SECS {
        bail!("--max-secs must be at most {MAX_SECS}");
    }
    let target = loopback_target(&a.url)?;
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let cpu_before = sample_all(&[a.server_pid])?.cpu_micros;
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.join_rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    let mut members = Vec::with_capacity(a.members);
    for i in 0..a.members {
        tick.tick().await;
        let (target, tally) = (target.clone(), tally.clone());
        let source = target.source(i, a.source_ips);
        members.push(tokio::spawn(async move {
            let Ok(ws) = connect_retrying(&target, &format!("user=storm{i:05}"), source).await
            else {
                tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let (mut tx, mut rx) = ws.split();
            let join = json!({"type":"join","room":"storm"}).to_string();
            if tx.send(Message::Text(join.into())).await.is_err() {
                tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return;
            }
            while let Some(m) = rx.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        tally.frames.fetch_add(1, Ordering::Relaxed);
                        tally.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                        if t.contains(r#""type":"presence""#) {
                            tally.presence_frames.fetch_add(1, Ordering::Relaxed);
                        } else if t.contains(r#""type":"joined""#) {
                            tally.joined.fetch_add(1, Ordering::Relaxed);
                        }
                        tally
                            .last_frame_ms
                            .fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    Ok(Message::Close(_)) | Err(_) => {
                        tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => {}
                }
            }
            // Held open until the run ends (the task is aborted then).
            std::future::pending::<()>().await;
        }));
        if start.elapsed() > Duration::from_secs(a.max_secs) {
            break;
        }
    }
    let deadline = start + Duration::from_secs(a.max_secs);
    let all_joined_at = loop {
        let joined = tally.joined.load(Ordering::Relaxed) as usize;
        let gone = (tally.connect_failures.load(Ordering::Relaxed)
            + tally.closed_by_server.load(Ordering::Relaxed)) as usize;
        if joined + gone >= a.members || Instant::now() > deadline {
            break start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Then until the room is quiet: presence still flowing counts as the storm's cost.
    loop {
        let last = Duration::from_millis(tally.last_frame_ms.load(Ordering::Relaxed));
        if start.elapsed() > last + Duration::from_millis(a.quiet_ms) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = Duration::from_millis(tally.last_frame_ms.load(Ordering::Relaxed));
    let server = sample_all(&[a.server_pid])?;
    let cpu = server.cpu_micros.saturating_sub(cpu_before);
    for m in &members {
        m.abort();
    }
    let n = a.members as f64;
    let (joined, bytes, frames, presence, closed, failed) = (
        tally.joined.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed),
        tally.frames.load(Ordering::Relaxed),
        tally.presence_frames.load(Ordering::Relaxed),
        tally.closed_by_server.load(Ordering::Relaxed),
        tally.connect_failures.load(Ordering::Relaxed),
    );
    let summary = format!(
        "join storm: {joined}/{} joined in {:.1}s, settled at {:.1}s; server CPU {:.2}s ({:.0} µs per member); \
         clients received {:.1} MB in {frames} frames ({presence} presence), {:.0} bytes per member; \
         {closed} closed by the server, {failed} could not connect; server RSS {:.1} MiB",
        a.members,
        all_joined_at.as_secs_f64(),
        settled.as_secs_f64(),
        cpu as f64 / 1e6,
        cpu as f64 / n,
        bytes as f64 / 1e6,
        bytes as f64 / n,
        server.rss_bytes as f64 / 1048576.0,
    );
    let json = json!({
        "scenario": "join-storm",
        "members": a.members,
        "joined": joined,
        "all_joined_secs": all_joined_at.as_secs_f64(),
        "settled_secs": settled.as_secs_f64(),
        "server_cpu_secs": cpu as f64 / 1e6,
        "server_cpu_us_per_member": cpu as f64 / n,
        "bytes_received": bytes,
        "bytes_per_member": bytes as f64 / n,
        "frames": frames,
        "presence_frames": presence,
        "closed_by_server": closed,
        "connect_failures": failed,
        "server_rss_bytes": server.rss_bytes,
    });
    let mut failures = Vec::new();
    if (joined as usize) < a.members {
        failures.push(format!("only {joined} of {} members joined", a.members));
    }
    Ok(Report {
        summary,
        json,
        failures,
    })
}
