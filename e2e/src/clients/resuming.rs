//! Clients that come back: a subscriber that follows reconnect notices and resumes each
//! room with `since` (as a real client should), and a publisher that resends what was
//! not acknowledged. Both keep the load balancer's sticky cookie.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chat_server::sync::lock;
use futures_util::SinkExt;
use serde_json::json;

use chat_server::protocol::ReceivedFrame;

use super::cursors::{must_resync, Cursors};
use super::ws::{connect, join_frame, recv_frame, send_json, NotAServerFrame};

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
    /// The last few failed connection attempts (address and error), for a test's
    /// failure message.
    pub connect_failures: std::collections::VecDeque<String>,
}

/// How many failed connection attempts a [`SubscriberLog`] keeps.
const CONNECT_FAILURES_KEPT: usize = 5;

/// Runs a subscriber until `stop` is set: joins `rooms`, records every message, and on a
/// drain notice or lost connection reconnects (honouring `after_ms`, keeping the sticky
/// cookie) and resumes each room with `since`. It starts on the first of `urls` (one load
/// balancer, or several addresses) and moves on to the next whenever a connection
/// attempt fails (e.g. a drained node answering 503).
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
    let mut cursors = Cursors::default();
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
                Err(e) => {
                    let mut l = lock(&log);
                    if l.connect_failures.len() == CONNECT_FAILURES_KEPT {
                        l.connect_failures.pop_front();
                    }
                    l.connect_failures.push_back(format!("{url}: {e:#}"));
                    drop(l);
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
        cursors.new_session();
        for room in &rooms {
            let join = cursors.join(room);
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
                let frame = match recv_frame(&mut ws, Duration::from_millis(200)).await {
                    Err(e) if e.downcast_ref::<NotAServerFrame>().is_some() => {
                        lock(&log).errors.push(format!("{e:#}"));
                        continue;
                    }
                    Err(_) => continue, // quiet; check `stop` again
                    Ok(None) => {
                        // Answer the server's close, as a well-behaved client does.
                        let _ = tokio::time::timeout(Duration::from_millis(500), ws.flush()).await;
                        break;
                    }
                    Ok(Some(frame)) => frame,
                };
                if must_resync(&frame) {
                    // A gap the server could not fill: resume from the last message
                    // processed, before anything past the gap.
                    lock(&log).errors.push(format!("{frame:?}"));
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    wait = Duration::from_millis(100);
                    break;
                }
                match frame {
                    ReceivedFrame::Joined {
                        room,
                        epoch,
                        offset,
                        recovered,
                        ..
                    } => {
                        {
                            let mut l = lock(&log);
                            l.joins += 1;
                            if !recovered {
                                l.not_recovered += 1;
                            }
                        }
                        // A resumed join keeps the cursor; replay follows.
                        cursors.joined(&room, &epoch, offset, recovered);
                    }
                    ReceivedFrame::Message {
                        room,
                        epoch,
                        offset,
                        body,
                        ..
                    } => {
                        cursors.message(&room, &epoch, offset);
                        let mut l = lock(&log);
                        let seen = l.messages.entry(room).or_default();
                        if seen.insert(offset, body).is_some() {
                            l.duplicates += 1;
                        }
                    }
                    ReceivedFrame::Reconnect { after_ms, .. } => {
                        wait = Duration::from_millis(after_ms);
                    }
                    error @ ReceivedFrame::Error { .. } => {
                        lock(&log).errors.push(format!("{error:?}"))
                    }
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
            send_json(&mut ws, join_frame(room, None)).await?;
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
                frame = recv_frame(&mut ws, Duration::from_secs(10)) => {
                    match frame {
                        Ok(Some(ReceivedFrame::Ack { client_ref, offset, .. })) => {
                            if let Some((room, body)) = client_ref.and_then(|r| pending.remove(&r)) {
                                let offset = offset.unwrap_or(0);
                                lock(&log).acked.entry(room).or_default().insert(offset, body);
                            }
                        }
                        Ok(Some(error @ ReceivedFrame::Error { .. })) => lock(&log).errors.push(format!("{error:?}")),
                        Ok(Some(_)) => {}
                        Err(e) if e.downcast_ref::<NotAServerFrame>().is_some() => {
                            lock(&log).errors.push(format!("{e:#}"));
                        }
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
