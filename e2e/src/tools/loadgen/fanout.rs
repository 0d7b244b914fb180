//! `fanout`: C subscribers in one room (or spread over `--rooms` rooms, each with its own
//! publishers), publishers at a fixed total rate. Reports
//! deliveries/sec, every (publisher, seq) lost, duplicated or out of order per subscriber,
//! latency from each message's *scheduled* send time (so a publisher falling behind shows
//! in the percentiles instead of hiding: no coordinated omission), the publishers' own lag
//! behind schedule, and server CPU per delivered message.
//!
//! One process, one clock: every timestamp is micros since `base`, a monotonic `Instant`
//! shared by publishers and subscribers, and the subscribers' deadline is an `Instant` on
//! that same clock handed out through a `watch` channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chat_server::protocol::ReceivedFrame;
use clap::Args;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::idle::MAX_PER_WORKER;
use super::tally::{Plan, RoomSpread, Tally};
use super::{connect_retrying, loopback_targets, sample_all, Report};
use crate::clients::resuming::{ClientOptions, Received, ResumingClient, Retry};
use crate::clients::ws::{self as client, parse_frame, Ws};
use crate::tools::stats::percentiles;

/// Longest `--duration`, so a run is bounded in time.
pub const MAX_DURATION_SECS: u64 = 600;
/// How long subscribers wait for the last messages once publishing has ended.
const DRAIN: Duration = Duration::from_secs(5);
/// Time allowed for connecting and joining on top of `--duration`, after which
/// everything stops even if publishing has not finished.
const SETUP_BOUND: Duration = Duration::from_secs(600);
/// Subscribers' source addresses: 127.0.0.1 ..= 127.0.0.8.
const SUBSCRIBER_SOURCES: u8 = 8;
/// Failed connection attempts in a row after which a subscriber gives up.
const CONNECT_ATTEMPTS: u32 = 50;
/// Smallest body that holds the `TAG PUBLISHER SEQ SCHEDULED_US` header.
const MIN_BODY_BYTES: usize = 48;

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// WebSocket URLs of the servers (subscribers are spread over them round-robin).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// PIDs of the server processes whose CPU and RSS are measured (summed).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// PIDs of the Redis servers (one, or each master of a Redis Cluster), whose CPU is
    /// reported separately, in all and per server.
    #[arg(long = "redis-pid")]
    pub redis_pids: Vec<u32>,
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Total messages per second over all publishers.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Message body size in bytes (at least 48).
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// The room, or with `--rooms` the rooms' name prefix (`bench-0`, `bench-1`, …).
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Rooms: subscriber `i` joins room `i % rooms`, every room gets `--publishers` of its
    /// own and an equal share of `--rate`, and the rooms' schedules are interleaved.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
}

/// What one publisher did.
struct Published {
    sink: SplitSink<Ws, Message>,
    reader: tokio::task::JoinHandle<()>,
    sent: u64,
    /// Actual send time minus scheduled time, per message sent.
    lags_us: Vec<u64>,
}

pub async fn run(a: FanoutArgs) -> Result<Report> {
    if a.body_bytes < MIN_BODY_BYTES || a.publishers == 0 || a.rate == 0 || a.subscribers == 0 {
        bail!(
            "need --body-bytes >= {MIN_BODY_BYTES} and at least one publisher, subscriber and message per second"
        );
    }
    if a.duration == 0 || a.duration > MAX_DURATION_SECS {
        bail!("--duration must be 1..={MAX_DURATION_SECS} seconds");
    }
    if a.rooms == 0 || a.subscribers % a.rooms != 0 || a.rate % a.rooms as u32 != 0 {
        bail!("--rooms must divide both --subscribers and --rate");
    }
    if a.subscribers + a.publishers * a.rooms > MAX_PER_WORKER {
        bail!("at most {MAX_PER_WORKER} connections in one process (the open-files limit)");
    }
    let targets = loopback_targets(&a.urls)?;
    let room_rate = a.rate / a.rooms as u32;
    let tag = run_tag();
    let plans: Vec<Arc<Plan>> = (0..a.rooms)
        .map(|_| {
            Arc::new(Plan::new(
                tag.clone(),
                u64::from(room_rate) * a.duration,
                a.publishers,
                room_rate,
            ))
        })
        .collect();
    let rooms: Vec<String> = match a.rooms {
        1 => vec![a.room.clone()],
        n => (0..n).map(|r| format!("{}-{r}", a.room)).collect(),
    };
    let total: u64 = plans.iter().map(|p| p.total()).sum();
    let base = Instant::now();
    let hard_deadline = base + SETUP_BOUND + Duration::from_secs(a.duration);
    // Subscribers stop here at the latest; moved to DRAIN after publishing once known.
    let (deadline_tx, deadline_rx) = watch::channel(hard_deadline);

    eprintln!(
        "connecting {} subscribers and {} publishers in {} room(s)",
        a.subscribers,
        a.publishers * a.rooms,
        a.rooms
    );
    let mut subs = Vec::with_capacity(a.subscribers);
    for i in 0..a.subscribers {
        let target = &targets[i % targets.len()];
        let room = i % a.rooms;
        let mut sub = ResumingClient::new(ClientOptions {
            source: target.source(i, SUBSCRIBER_SOURCES),
            // A busy 2-core machine may take a while to answer one of thousands of upgrades.
            connect_within: Duration::from_secs(10),
            retry: Retry::Backoff,
            give_up_after: Some(CONNECT_ATTEMPTS),
            // Ended by the deadline or once complete: no stop flag, no timer per message.
            ..ClientOptions::new(
                vec![target.url.clone()],
                format!("sub{i}"),
                vec![rooms[room].clone()],
            )
        });
        sub.connect()
            .await
            .with_context(|| format!("sub{i}: {:?}", sub.connect_failures().recent))?;
        let plan = plans[room].clone();
        let mut tally = Tally::new(&plan);
        // Offsets are checked from the join on, so a gap before the first message shows.
        loop {
            match sub.next().await {
                Ok(Received::Joined {
                    frame: ReceivedFrame::Joined { epoch, offset, .. },
                    ..
                }) => {
                    tally.joined(&epoch, offset, true);
                    break;
                }
                Ok(_) => {}
                Err(ended) => bail!("sub{i}: the connection ended ({ended:?}) before `joined`"),
            }
        }
        let task = tokio::spawn(subscribe(sub, tally, plan, base, deadline_rx.clone()));
        subs.push((room, task));
    }
    // (room, publisher within the room, connection)
    let mut pubs = Vec::with_capacity(a.publishers * a.rooms);
    for (r, room) in rooms.iter().enumerate() {
        for p in 0..a.publishers {
            let n = r * a.publishers + p;
            let target = &targets[n % targets.len()];
            let mut ws = connect_retrying(target, &format!("user=pub{n}"), None).await?;
            client::join(&mut ws, room, None).await?;
            pubs.push((r, p, ws));
        }
    }
    // Let the joins' presence frames settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = sample_all(&a.server_pids)?;
    let redis_before = a
        .redis_pids
        .iter()
        .map(|pid| sample_all(&[*pid]))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let echoes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut pub_tasks = Vec::with_capacity(a.publishers);
    for (r, p, ws) in pubs {
        let (sink, stream) = ws.split();
        let reader = tokio::spawn(read_echoes(stream, echoes.clone(), errors.clone()));
        // Room r's schedule is shifted by r messages of the total rate, so the rooms'
        // messages interleave evenly instead of all falling due at once.
        let phase = Duration::from_secs_f64(r as f64 / f64::from(a.rate));
        let schedule = Schedule {
            publisher: p,
            plan: plans[r].clone(),
            base,
            start: start + phase,
            hard_deadline,
        };
        pub_tasks.push(tokio::spawn(publish(
            schedule,
            sink,
            reader,
            rooms[r].clone(),
            a.body_bytes,
        )));
    }
    let mut published = Vec::with_capacity(pub_tasks.len());
    for t in pub_tasks {
        published.push(t.await?);
    }
    let publish_end = Instant::now();
    let publish_secs = (publish_end - start).as_secs_f64();
    deadline_tx.send_modify(|d| *d = (*d).min(publish_end + DRAIN));

    let mut tally = Tally::default();
    let mut spreads: Vec<RoomSpread> = (0..a.rooms).map(|_| RoomSpread::default()).collect();
    for (room, s) in subs {
        let t = s.await?;
        spreads[room].add(&t);
        tally.merge(t);
    }
    let after = sample_all(&a.server_pids)?;
    let redis_after = a
        .redis_pids
        .iter()
        .map(|pid| sample_all(&[*pid]))
        .collect::<Result<Vec<_>>>()?;
    let elapsed = start.elapsed().as_secs_f64();
    // Let the publishers' last echoes arrive, then close them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sent = 0u64;
    let mut lags = Vec::new();
    for mut pb in published {
        let _ = tokio::time::timeout(Duration::from_secs(2), pb.sink.close()).await;
        if tokio::time::timeout(Duration::from_secs(2), &mut pb.reader)
            .await
            .is_err()
        {
            pb.reader.abort();
        }
        sent += pb.sent;
        lags.extend(pb.lags_us);
    }

    let received = tally.delivered;
    let echoed = echoes.load(Ordering::Relaxed);
    let publisher_errors = errors.load(Ordering::Relaxed);
    let delivered = received + echoed;
    let lat = percentiles(&mut tally.latencies_us);
    let mut last_subscriber: Vec<u64> = spreads
        .into_iter()
        .flat_map(RoomSpread::into_latencies)
        .collect();
    let last = percentiles(&mut last_subscriber);
    let lag = percentiles(&mut lags);
    let cpu_us = after.cpu_micros.saturating_sub(before.cpu_micros);
    let redis_cpu_per_server: Vec<u64> = redis_after
        .iter()
        .zip(&redis_before)
        .map(|(after, before)| after.cpu_micros.saturating_sub(before.cpu_micros))
        .collect();
    let redis_cpu_us: u64 = redis_cpu_per_server.iter().sum();
    let cpu_per_delivery = if delivered > 0 {
        cpu_us as f64 / delivered as f64
    } else {
        0.0
    };
    let json = json!({
        "scenario": "fanout",
        "subscribers": a.subscribers,
        "publishers": a.publishers,
        "servers": a.urls.len(),
        "rooms": a.rooms,
        "rate_per_sec": a.rate,
        "published": sent,
        "planned": total,
        "publish_secs": publish_secs,
        "deliveries_to_subscribers": received,
        "deliveries_including_echoes": delivered,
        "deliveries_per_sec": delivered as f64 / publish_secs,
        "lost": tally.lost(),
        "duplicated": tally.duplicated,
        "out_of_order": tally.out_of_order,
        "gaps": tally.gaps,
        "offset_repeats": tally.offset_repeats,
        "not_recovered": tally.not_recovered,
        "reconnects": tally.reconnects,
        "other_traffic": tally.other_traffic,
        "unexpected": tally.unexpected,
        "negative_latencies": tally.negative_latencies,
        "publisher_errors": publisher_errors,
        "latency_us": {"p50": lat.p50, "p99": lat.p99, "max": lat.max},
        // Per message: from its scheduled time until the last subscriber of its room had it.
        "last_subscriber_latency_us": {"p50": last.p50, "p99": last.p99, "max": last.max},
        "publisher_lag_us": {"p50": lag.p50, "p99": lag.p99, "max": lag.max},
        "server_cpu_us": cpu_us,
        "server_cpu_us_per_delivery": cpu_per_delivery,
        "server_cpu_percent": cpu_us as f64 / (elapsed * 1e4),
        "server_rss_bytes": after.rss_bytes,
        "redis_cpu_us": redis_cpu_us,
        "redis_cpu_us_per_published": redis_cpu_us as f64 / sent.max(1) as f64,
        "redis_cpu_us_per_server": redis_cpu_per_server,
        "redis_cpu_us_per_published_per_server": redis_cpu_per_server
            .iter()
            .map(|us| *us as f64 / sent.max(1) as f64)
            .collect::<Vec<_>>(),
    });
    let summary = format!(
        "fanout: {} subs in {} room(s) x {} msg/s for {}s over {} server(s): {} deliveries ({:.0}/s), lost {}, dup {}, out-of-order {}, offset gaps {}; latency from schedule p50 {} us p99 {} us max {} us; last subscriber per message p50 {} us p99 {} us; publisher lag p50 {} us p99 {} us max {} us; server CPU {:.2} us/delivery, Redis CPU {} us",
        a.subscribers, a.rooms, a.rate, a.duration, a.urls.len(), delivered, delivered as f64 / publish_secs,
        tally.lost(), tally.duplicated, tally.out_of_order, tally.gaps,
        lat.p50, lat.p99, lat.max, last.p50, last.p99, lag.p50, lag.p99, lag.max, cpu_per_delivery, redis_cpu_us,
    );
    let mut failures = tally.problems();
    if sent < total {
        failures.push(format!("{} of {total} messages not sent", total - sent));
    }
    if publisher_errors > 0 {
        failures.push(format!("{publisher_errors} error frames to publishers"));
    }
    Ok(Report {
        summary,
        json,
        failures,
    })
}

/// A tag unique to this run, so its messages are told apart from other traffic in the
/// room. The wall clock only makes it unique; it never enters a measurement.
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("lg{:x}{nanos:x}", std::process::id())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Reads a subscriber's stream until it has every expected (publisher, seq) or the shared
/// deadline passes; never on a count, which other traffic in the room could reach. A
/// subscriber whose connection ends comes back and resumes (counted in the tally).
async fn subscribe(
    mut sub: ResumingClient,
    mut tally: Tally,
    plan: Arc<Plan>,
    base: Instant,
    mut deadline: watch::Receiver<Instant>,
) -> Tally {
    let sleep = tokio::time::sleep_until(*deadline.borrow_and_update());
    tokio::pin!(sleep);
    let mut watching = true;
    'run: while !tally.is_complete() {
        tokio::select! {
            _ = &mut sleep => break,
            changed = deadline.changed(), if watching => match changed {
                Ok(()) => sleep.as_mut().reset(*deadline.borrow_and_update()),
                // The coordinator is gone; the last deadline still holds.
                Err(_) => watching = false,
            },
            received = sub.next() => {
                let received_us = micros(base.elapsed());
                match received {
                    Ok(received) => record(&mut tally, &plan, received, received_us),
                    Err(ended) => {
                        tally.reconnects += 1;
                        tokio::select! {
                            _ = &mut sleep => break 'run,
                            _ = sub.pause(&ended) => {}
                        }
                        tokio::select! {
                            _ = &mut sleep => break 'run,
                            welcome = sub.connect() => if welcome.is_none() { break 'run },
                        }
                    }
                }
            }
        }
    }
    sub.close().await;
    tally
}

/// Feeds one server frame to a subscriber's tally (presence and the like are ignored).
fn record(tally: &mut Tally, plan: &Plan, received: Received, received_us: u64) {
    match received {
        Received::Message {
            frame:
                ReceivedFrame::Message {
                    epoch,
                    offset,
                    body,
                    ..
                },
            ..
        } => tally.message(plan, &epoch, offset, &body, received_us),
        // A resumed join: the replay that follows continues from the tally's cursor.
        Received::Joined { outcome, .. } if outcome.resumed => {}
        // Unsolicited (the server could not replay a gap), or a resume that lost history.
        Received::Joined {
            frame:
                ReceivedFrame::Joined {
                    epoch,
                    offset,
                    recovered,
                    ..
                },
            ..
        } => tally.joined(&epoch, offset, recovered),
        Received::NotAFrame(_) => tally.unexpected_frame(),
        Received::Joined { .. } | Received::Message { .. } | Received::Other(_) => {}
    }
}

/// Where one publisher's messages sit on the run's clock.
struct Schedule {
    publisher: usize,
    plan: Arc<Plan>,
    /// The run's clock base: bodies carry micros since it.
    base: Instant,
    /// When publishing starts: (publisher, seq) is due at `start + plan.scheduled(..)`.
    start: Instant,
    /// Nothing is sent after this, however far behind the publisher is.
    hard_deadline: Instant,
}

/// Sends each message at its scheduled time (immediately, one after another, when
/// behind), stamped with the scheduled time rather than the actual one, and records how
/// far behind schedule each actual send was.
async fn publish(
    s: Schedule,
    mut sink: SplitSink<Ws, Message>,
    reader: tokio::task::JoinHandle<()>,
    room: String,
    body_bytes: usize,
) -> Published {
    let count = s.plan.counts[s.publisher];
    let mut lags_us = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut sent = 0;
    for seq in 0..count {
        let due = s.start + s.plan.scheduled(s.publisher, seq);
        if due >= s.hard_deadline {
            break;
        }
        tokio::time::sleep_until(due).await;
        let body = s
            .plan
            .body(s.publisher, seq, micros(due - s.base), body_bytes);
        let frame = json!({"type":"send","room":room,"body":body}).to_string();
        lags_us.push(micros(Instant::now().saturating_duration_since(due)));
        let send = sink.send(Message::Text(frame.into()));
        match tokio::time::timeout_at(s.hard_deadline, send).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    Published {
        sink,
        reader,
        sent,
        lags_us,
    }
}

/// Counts a publisher's echoes (it is in the room too: those are deliveries) and error
/// frames until its connection closes.
async fn read_echoes(mut stream: SplitStream<Ws>, echoes: Arc<AtomicU64>, errors: Arc<AtomicU64>) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(t) = msg else { continue };
        match parse_frame(t.as_str()) {
            Ok(ReceivedFrame::Message { .. }) => {
                echoes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(error @ ReceivedFrame::Error { .. }) => {
                // Print the first few; the count goes in the report.
                let before = errors.fetch_add(1, Ordering::Relaxed);
                if before < 3 {
                    eprintln!("publisher error: {error:?}");
                }
            }
            _ => {}
        }
    }
}
