//! Hostile clients for the bounds suites: flooders that send maximum-size messages at
//! their rate limit, DM sprayers, and replay hoarders that join long histories and never
//! read. Each reads (and tallies) what the server sends, so only the hoarders are slow.
//! Every loop stops on a shared flag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_server::sync::lock;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::ws::{connect, send_json, Ws};

/// What the hostile clients got back, summed.
#[derive(Default)]
pub struct HostileTally {
    pub acks: AtomicU64,
    pub errors: Mutex<HashMap<String, u64>>,
    /// Room → epoch, from the flooders' joins, for the replay hoarders.
    pub epochs: Mutex<HashMap<String, String>>,
}

impl HostileTally {
    pub fn error(&self, code: &str) {
        *lock(&self.errors).entry(code.to_owned()).or_default() += 1;
    }
}

/// Reads a hostile client's frames (so it is not closed as a slow consumer) and tallies
/// them, until the connection ends.
async fn tally_frames(mut rx: futures_util::stream::SplitStream<Ws>, tally: Arc<HostileTally>) {
    while let Some(Ok(m)) = rx.next().await {
        let Message::Text(t) = m else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        match v["type"].as_str() {
            Some("ack") => {
                tally.acks.fetch_add(1, Ordering::Relaxed);
            }
            Some("error") => tally.error(v["code"].as_str().unwrap_or("?")),
            Some("joined") => {
                if let (Some(room), Some(epoch)) = (v["room"].as_str(), v["epoch"].as_str()) {
                    lock(&tally.epochs).insert(room.to_owned(), epoch.to_owned());
                }
            }
            _ => {}
        }
    }
}

/// A flooder: joins `rooms` and sends maximum-size (4 KiB) messages round-robin,
/// `per_second` of them (keep it just under the server's per-connection rate), until
/// `stop`.
pub async fn flood(
    url: String,
    user: String,
    rooms: Vec<String>,
    per_second: u32,
    tally: Arc<HostileTally>,
    stop: Arc<AtomicBool>,
) {
    let Ok((ws, _, _)) = connect(&url, &format!("user={user}"), None).await else {
        tally.error("connect");
        return;
    };
    let (mut tx, rx) = ws.split();
    let reader = tokio::spawn(tally_frames(rx, tally.clone()));
    for room in &rooms {
        let _ = tx
            .send(Message::Text(
                json!({"type":"join","room":room}).to_string().into(),
            ))
            .await;
    }
    let body = "x".repeat(4096);
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))));
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let room = &rooms[i % rooms.len()];
        let frame = json!({"type":"send","room":room,"body":body,"ref":format!("{i}")});
        if tx
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            tally.error("flooder disconnected");
            break;
        }
        i += 1;
    }
    let _ = tx.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
}

/// A DM sprayer: direct messages to ids nobody has, far over the DM rate.
pub async fn spray_dms(url: String, user: String, tally: Arc<HostileTally>, stop: Arc<AtomicBool>) {
    let Ok((ws, _, _)) = connect(&url, &format!("user={user}"), None).await else {
        tally.error("connect");
        return;
    };
    let (mut tx, rx) = ws.split();
    let reader = tokio::spawn(tally_frames(rx, tally.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let to = format!("nobody{}", i % 100_000);
        let frame = json!({"type":"dm","to":to,"body":"x".repeat(4096),"ref":format!("d{i}")});
        if tx
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
        i += 1;
    }
    let _ = tx.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
}

/// A replay hoarder: joins the flooded rooms from their first offset and never reads.
pub async fn hoard(
    url: String,
    user: String,
    tally: Arc<HostileTally>,
    stop: Arc<AtomicBool>,
) -> Option<Ws> {
    let (mut ws, _, _) = connect(&url, &format!("user={user}"), None).await.ok()?;
    let epochs: Vec<(String, String)> = lock(&tally.epochs)
        .iter()
        .take(20)
        .map(|(r, e)| (r.clone(), e.clone()))
        .collect();
    for (room, epoch) in epochs {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let frame = json!({"type":"join","room":room,"since":{"epoch":epoch,"offset":0}});
        if send_json(&mut ws, frame).await.is_err() {
            break;
        }
    }
    Some(ws)
}
