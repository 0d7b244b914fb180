//! The connection storm (`chat-soak storm`): thousands of clients, spread over worker
//! processes (each under the 20,000 open-files limit) and 127.0.0.x source addresses,
//! hold one WebSocket each through haproxy to 3 nodes while a publisher writes to their
//! rooms. Then haproxy is killed and started again: every connection breaks at once and
//! every client reconnects at once. The nodes' accept limits answer 503 with
//! `Retry-After`, clients wait that long (plus jitter) or back off, and each resumes its
//! room with `since`. The run reports how long until every client was back and resumed,
//! and fails on any gap, duplicate, `recovered: false` or client behind at the end.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use chat_server::sync::lock;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::clients::cursors::Step;
use crate::clients::resuming::{ClientOptions, Ended, Received, ResumingClient, Retry};
use crate::clients::ws::send_json;
use crate::harness::local_cluster::{ClusterOptions, LocalCluster};
use crate::tools::loadgen::idle::MAX_PER_WORKER;
use crate::tools::loadgen::loopback_target;
use crate::tools::stats::percentiles;

#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    #[arg(long, default_value_t = 15_000)]
    pub clients: usize,
    /// Client processes (each holds at most 19,000 connections).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Rooms; client i is in room i mod rooms.
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Room messages per second from the publisher (one connection, straight to node 1).
    #[arg(long, default_value_t = 10)]
    pub publish_rate: u32,
    /// New connections per second over all workers before the storm.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u32,
    /// Each node's accept limit (CHAT_ACCEPT_RATE_PER_SEC, burst twice that); the server's
    /// default when not given.
    #[arg(long)]
    pub accept_rate: Option<u32>,
    /// Longest wait for every client to be back, in seconds.
    #[arg(long, default_value_t = 180)]
    pub within: u64,
    /// chat-server binary (default: the one next to this program).
    #[arg(long)]
    pub server_binary: Option<std::path::PathBuf>,
}

/// One worker process (the hidden `storm-worker` subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct StormWorkerArgs {
    /// haproxy URLs; client n uses URL n mod their number.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub rooms: usize,
    #[arg(long)]
    pub source_ips: u8,
    #[arg(long)]
    pub connect_rate: u32,
}

/// What a worker reports when told to stop.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub clients: usize,
    /// Refusals with 503 by a node, and how many of them carried `Retry-After`.
    pub refused_503: u64,
    pub with_retry_after: u64,
    /// 503s from haproxy itself (no server available).
    pub balancer_503: u64,
    /// Connection attempts that failed otherwise (haproxy not listening yet, timeouts).
    pub connect_errors: u64,
    pub not_recovered: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// Per room (by index): the lowest last offset any of this worker's clients reached.
    pub lowest_offsets: Vec<Option<u64>>,
    /// Per client that dropped and came back: ms from its drop to its resumed `joined`.
    pub back_after_ms: Vec<u64>,
}

/// Clients per haproxy instance (two descriptors each, under the 20,000 limit).
const CLIENTS_PER_BALANCER: usize = 7_000;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters shared by one worker's clients.
#[derive(Default)]
struct Shared {
    refused_503: AtomicU64,
    with_retry_after: AtomicU64,
    balancer_503: AtomicU64,
    connect_errors: AtomicU64,
    not_recovered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    joined_once: AtomicU64,
    back: AtomicU64,
    stop: Arc<AtomicBool>,
    back_after_ms: Mutex<Vec<u64>>,
}

/// One storm client: connect, join, read; on a drop come back (a 503's `Retry-After`
/// plus jitter, else backoff) and resume. Returns its last offset.
async fn storm_client(
    url: String,
    user: String,
    room: String,
    source: std::net::IpAddr,
    shared: Arc<Shared>,
) -> Option<u64> {
    let mut client = ResumingClient::new(ClientOptions {
        source: Some(source),
        connect_within: Duration::from_secs(10),
        retry: Retry::Backoff,
        // Up to 19,000 clients per process: a stop may take half a second to be seen.
        stop_check: Duration::from_millis(500),
        stop: Some(shared.stop.clone()),
        ..ClientOptions::new(vec![url], user, vec![room.clone()])
    });
    let mut dropped_at: Option<u64> = None;
    while client.connect().await.is_some() {
        let ended = loop {
            match client.next().await {
                Ok(Received::Joined { outcome, .. }) => {
                    if outcome.since.is_some() && !outcome.resumed {
                        shared.not_recovered.fetch_add(1, Ordering::Relaxed);
                    }
                    // One room: a join with no position to resume from is the first
                    // (a drop before it does not count as a comeback).
                    match (outcome.since.is_none(), dropped_at.take()) {
                        (true, _) => {
                            shared.joined_once.fetch_add(1, Ordering::Relaxed);
                        }
                        (false, Some(t)) => {
                            lock(&shared.back_after_ms).push(unix_ms().saturating_sub(t));
                            shared.back.fetch_add(1, Ordering::Relaxed);
                        }
                        (false, None) => {}
                    }
                }
                Ok(Received::Message { step, .. }) => match step {
                    Step::Behind => {
                        shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    Step::Gap { .. } => {
                        shared.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    Step::First | Step::Next | Step::NewEpoch => {}
                },
                Ok(_) => {}
                Err(ended) => break ended,
            }
        };
        if ended == Ended::Stop {
            break;
        }
        dropped_at.get_or_insert_with(unix_ms);
        client.pause(&ended).await;
    }
    let failed = client.connect_failures();
    for (total, n) in [
        (&shared.refused_503, failed.refused_503),
        (&shared.with_retry_after, failed.with_retry_after),
        (&shared.balancer_503, failed.balancer_503),
        (&shared.connect_errors, failed.other),
    ] {
        total.fetch_add(n, Ordering::Relaxed);
    }
    client.cursors().at(&room).map(|p| p.offset)
}

/// The worker: starts its clients at `connect_rate`, prints `ready` once all have joined,
/// `back <unix ms>` once all have dropped and resumed, and on `stop` (stdin) its
/// [`WorkerReport`] as one JSON line.
pub async fn worker(a: StormWorkerArgs) -> Result<()> {
    if a.count > MAX_PER_WORKER || a.rooms == 0 || a.source_ips == 0 {
        bail!("at most {MAX_PER_WORKER} clients per worker, at least 1 room and 1 source address");
    }
    let targets = a
        .urls
        .iter()
        .map(|u| loopback_target(u))
        .collect::<Result<Vec<_>>>()?;
    let shared = Arc::new(Shared::default());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(a.connect_rate.max(1)),
    ));
    let mut tasks = Vec::with_capacity(a.count);
    for i in 0..a.count {
        tick.tick().await;
        let n = a.first + i;
        let target = &targets[n % targets.len()];
        let source = target
            .source(n, a.source_ips)
            .context("storm clients need an IPv4 loopback URL")?;
        tasks.push((
            n % a.rooms,
            tokio::spawn(storm_client(
                target.url.clone(),
                format!("storm{n}"),
                format!("room{}", n % a.rooms),
                source,
                shared.clone(),
            )),
        ));
    }
    let count = a.count as u64;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut said_ready = false;
    let mut said_back = false;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = poll.tick() => {
                if !said_ready && shared.joined_once.load(Ordering::Relaxed) == count {
                    said_ready = true;
                    stdout.write_all(b"ready\n").await?;
                    stdout.flush().await?;
                }
                if !said_back && shared.back.load(Ordering::Relaxed) >= count {
                    said_back = true;
                    stdout.write_all(format!("back {}\n", unix_ms()).as_bytes()).await?;
                    stdout.flush().await?;
                }
            }
            line = stdin.next_line() => {
                if !matches!(line, Ok(Some(ref l)) if l.trim() != "stop") {
                    break;
                }
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut lowest: Vec<Option<u64>> = vec![None; a.rooms];
    for (room, task) in tasks {
        let last = task.await.ok().flatten();
        let slot = &mut lowest[room];
        *slot = match (*slot, last) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (None, x) | (x, None) => x,
        };
    }
    let report = WorkerReport {
        clients: a.count,
        refused_503: shared.refused_503.load(Ordering::Relaxed),
        with_retry_after: shared.with_retry_after.load(Ordering::Relaxed),
        balancer_503: shared.balancer_503.load(Ordering::Relaxed),
        connect_errors: shared.connect_errors.load(Ordering::Relaxed),
        not_recovered: shared.not_recovered.load(Ordering::Relaxed),
        gaps: shared.gaps.load(Ordering::Relaxed),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        lowest_offsets: lowest,
        back_after_ms: std::mem::take(&mut *lock(&shared.back_after_ms)),
    };
    stdout
        .write_all(format!("{}\n", serde_json::to_string(&report)?).as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(())
}

/// A worker process and its stdout.
struct WorkerProcess {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl WorkerProcess {
    /// Next line that starts with `prefix`, within `within`.
    async fn expect(&mut self, prefix: &str, within: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| format!("no `{prefix}` from a storm worker within {within:?}"))??
                .with_context(|| format!("a storm worker exited before `{prefix}`"))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

/// The storm's figures.
#[derive(Debug)]
pub struct StormReport {
    pub initial_connect: Duration,
    /// From haproxy's kill to the last client resumed.
    pub recovery: Duration,
    pub back_after_p50_ms: u64,
    pub back_after_p99_ms: u64,
    pub back: usize,
    /// The nodes' refusals (503), and those with `Retry-After`.
    pub refused_503: u64,
    pub with_retry_after: u64,
    /// haproxy's own 503s (no server available), counted apart from the nodes'.
    pub balancer_503: u64,
    pub connect_errors: u64,
    pub published: u64,
    /// Publishes answered `unavailable` (not sent).
    pub publish_refused: u64,
    pub not_recovered: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// Rooms where some client ended behind the publisher's last acknowledged offset.
    pub rooms_behind: usize,
}

impl StormReport {
    /// Every client back and resumed with nothing lost, and the nodes' accept limits did
    /// their part: they refused (a storm nothing refused proves no pacing), every time
    /// with 503 and `Retry-After`.
    pub fn passed(&self, clients: usize) -> bool {
        self.back == clients
            && self.refused_503 > 0
            && self.with_retry_after == self.refused_503
            && self.not_recovered == 0
            && self.gaps == 0
            && self.duplicates == 0
            && self.rooms_behind == 0
    }

    pub fn print(&self, a: &StormArgs) {
        println!(
            "storm: {} clients in {} processes over {} source addresses, {} haproxy instances, {} \
             nodes, {} rooms, {} msg/s published",
            a.clients,
            a.workers,
            a.source_ips,
            a.clients.div_ceil(CLIENTS_PER_BALANCER),
            a.nodes,
            a.rooms,
            a.publish_rate
        );
        println!(
            "initial connect: all {} joined in {:.1} s",
            a.clients,
            self.initial_connect.as_secs_f64()
        );
        println!(
            "haproxy killed and restarted: {} of {} clients back and resumed; the last {:.1} s \
             after the kill (per client: p50 {} ms, p99 {} ms)",
            self.back,
            a.clients,
            self.recovery.as_secs_f64(),
            self.back_after_p50_ms,
            self.back_after_p99_ms
        );
        println!(
            "refusals: {} answered 503 by the nodes ({} with Retry-After); {} 503 from haproxy \
             itself (no server available); {} other failed attempts",
            self.refused_503, self.with_retry_after, self.balancer_503, self.connect_errors
        );
        println!(
            "messages: {} published ({} refused as unavailable, not sent); gaps {}, duplicates \
             {}, recovered: false {}, rooms with a client behind at the end {}",
            self.published,
            self.publish_refused,
            self.gaps,
            self.duplicates,
            self.not_recovered,
            self.rooms_behind
        );
        println!(
            "result: {}",
            if self.passed(a.clients) {
                "PASS"
            } else {
                "FAIL"
            }
        );
    }
}

pub async fn run(a: StormArgs) -> Result<StormReport> {
    if a.workers == 0 || a.clients == 0 || a.rooms == 0 || a.nodes == 0 {
        bail!("--workers, --clients, --rooms and --nodes must be at least 1");
    }
    let per_worker = a.clients.div_ceil(a.workers);
    if per_worker > MAX_PER_WORKER {
        bail!("{per_worker} clients per worker exceed the {MAX_PER_WORKER} open-files budget; add --workers");
    }
    if a.rooms > 100 {
        bail!("at most 100 rooms: the publisher is one connection (CHAT_MAX_ROOMS_PER_CONNECTION)");
    }
    let server = match &a.server_binary {
        Some(p) => p.clone(),
        None => crate::harness::binaries::chat_server_binary(
            &std::env::current_exe()?.to_string_lossy(),
        )?,
    };
    // One haproxy holds two descriptors per client under the 20,000 open-files limit,
    // so the clients are spread over several, as over the replicas of a load balancer.
    let load_balancers = a.clients.div_ceil(CLIENTS_PER_BALANCER);
    let per_balancer = a.clients.div_ceil(load_balancers) + 1_000;
    let accept: Vec<String> = a
        .accept_rate
        .map(|r| {
            vec![
                "--accept-rate-per-sec".to_owned(),
                r.to_string(),
                "--accept-burst".to_owned(),
                (2 * r).max(1).to_string(),
            ]
        })
        .unwrap_or_default();
    let extra: Vec<&str> = accept.iter().map(String::as_str).collect();
    let mut cluster = tokio::task::block_in_place(|| -> Result<LocalCluster> {
        let c = LocalCluster::start_with(
            &server,
            ClusterOptions {
                nodes: a.nodes,
                extra: &extra,
                max_connections: Some(u32::try_from(per_balancer).unwrap_or(u32::MAX)),
                load_balancers,
                ..ClusterOptions::default()
            },
        )?;
        c.wait_ready(Duration::from_secs(30))?;
        Ok(c)
    })?;
    let rooms: Vec<String> = (0..a.rooms).map(|r| format!("room{r}")).collect();
    let publisher_url = cluster.nodes[0].ws_url();
    let publishing = Arc::new(AtomicBool::new(true));
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(publish(
        publisher_url,
        rooms.clone(),
        a.publish_rate,
        publishing.clone(),
        ready_tx,
    ));
    if ready.await.is_err() {
        publisher.await.context("the publisher panicked")??;
        bail!("the publisher stopped before joining its rooms");
    }

    let started = Instant::now();
    let mut workers = Vec::new();
    let exe = std::env::current_exe()?;
    let mut first = 0;
    while first < a.clients {
        let count = per_worker.min(a.clients - first);
        let mut child = tokio::process::Command::new(&exe)
            .arg("storm-worker")
            .args(
                cluster
                    .haproxy_urls()
                    .iter()
                    .flat_map(|u| ["--url", u.as_str()]),
            )
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args(["--rooms", &a.rooms.to_string()])
            .args(["--source-ips", &a.source_ips.to_string()])
            .args([
                "--connect-rate",
                &(a.connect_rate as usize / a.workers).max(1).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a storm worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push(WorkerProcess {
            child,
            lines: BufReader::new(stdout).lines(),
        });
        first += count;
    }
    let within = Duration::from_secs(a.within);
    for w in &mut workers {
        w.expect("ready", within).await?;
    }
    let initial_connect = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed_at = unix_ms();
    tokio::task::block_in_place(|| cluster.restart_haproxy())?;
    let mut last_back = killed_at;
    for w in &mut workers {
        let line = w.expect("back ", within).await?;
        let at: u64 = line[5..].trim().parse().context("`back` line")?;
        last_back = last_back.max(at);
    }
    // Traffic goes on a little after the storm, then every client must have caught up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    publishing.store(false, Ordering::Relaxed);
    let (acked, published, publish_refused) =
        publisher.await.context("the publisher panicked")??;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut reports = Vec::new();
    for w in &mut workers {
        if let Some(stdin) = w.child.stdin.as_mut() {
            stdin.write_all(b"stop\n").await?;
        }
        let line = w.expect("{", Duration::from_secs(60)).await?;
        reports.push(serde_json::from_str::<WorkerReport>(&line)?);
        let _ = w.child.wait().await;
    }
    let mut back_after: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.back_after_ms.clone())
        .collect();
    let back = back_after.len();
    let pct = percentiles(&mut back_after);
    let rooms_behind = (0..a.rooms)
        .filter(|r| {
            let lowest = reports
                .iter()
                .filter_map(|w| w.lowest_offsets.get(*r).copied().flatten())
                .min();
            acked[*r].is_some_and(|last| lowest.is_none_or(|l| l < last))
        })
        .count();
    let sum = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    drop(cluster);
    Ok(StormReport {
        initial_connect,
        recovery: Duration::from_millis(last_back.saturating_sub(killed_at)),
        back_after_p50_ms: pct.p50,
        back_after_p99_ms: pct.p99,
        back,
        refused_503: sum(|r| r.refused_503),
        with_retry_after: sum(|r| r.with_retry_after),
        balancer_503: sum(|r| r.balancer_503),
        connect_errors: sum(|r| r.connect_errors),
        published,
        publish_refused,
        not_recovered: sum(|r| r.not_recovered),
        gaps: sum(|r| r.gaps),
        duplicates: sum(|r| r.duplicates),
        rooms_behind,
    })
}

/// Publishes to `rooms` in turn at `rate` per second until `publishing` is cleared, each
/// message waiting for its answer; a message refused (`unavailable`: the backplane is
/// overloaded or away) is not sent and is counted, as a real client would show it and go
/// on. Returns each room's last acknowledged offset, how many were acknowledged and how
/// many refused.
async fn publish(
    url: String,
    rooms: Vec<String>,
    rate: u32,
    publishing: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(Vec<Option<u64>>, u64, u64)> {
    let (mut ws, _, _) = crate::clients::ws::connect(&url, "user=storm-publisher", None).await?;
    for room in &rooms {
        // Under the connection's frame rate (20 per second by default).
        tokio::time::sleep(Duration::from_millis(60)).await;
        crate::clients::ws::join(&mut ws, room, None).await?;
    }
    let _ = ready.send(());
    let mut last = vec![None; rooms.len()];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    // A slow answer must not be followed by a burst of catch-up sends.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut n, mut acked, mut refused) = (0usize, 0u64, 0u64);
    while publishing.load(Ordering::Relaxed) {
        tick.tick().await;
        let i = n % rooms.len();
        let r = format!("p{n}");
        let frame = json!({"type":"send","room":rooms[i],"body":format!("storm-{n}"),"ref":r});
        send_json(&mut ws, frame).await?;
        n += 1;
        loop {
            let v = crate::clients::ws::recv_json(&mut ws, Duration::from_secs(10))
                .await?
                .context("the publisher's connection closed")?;
            if v["ref"] != r.as_str() {
                continue;
            }
            match v["type"].as_str() {
                Some("ack") => {
                    last[i] = Some(v["offset"].as_u64().context("ack without offset")?);
                    acked += 1;
                }
                Some("error") if v["code"] == "unavailable" => refused += 1,
                _ => bail!("the publisher's message was answered {v}"),
            }
            break;
        }
    }
    Ok((last, acked, refused))
}
