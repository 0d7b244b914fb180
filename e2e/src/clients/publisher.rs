//! The suites' publisher: sends numbered messages round-robin over its rooms and, after
//! a reconnect, resends every one not yet acknowledged (so a test can compare what
//! subscribers got with what was acknowledged). It keeps the load balancer's sticky
//! cookie.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chat_server::protocol::ReceivedFrame;
use chat_server::sync::lock;
use futures_util::SinkExt;
use serde_json::json;

use super::ws::{connect, join_frame, recv_frame, send_json, NotAServerFrame};

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
