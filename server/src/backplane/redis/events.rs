//! Delivering the events recorded in Redis. Events are spread over `shards` streams by
//! room or user; the pods consume them as one consumer group (`deliver`), each shard by
//! one pod at a time under a lease, so a room's events go out in order. A pod that takes
//! a shard first claims what the previous holder left pending (it died mid-delivery):
//! those are delivered again, with the same ids. An event is deleted from its stream
//! once delivered or given up, so a stream's length is its backlog (`chat_events_lag`)
//! and `MAXLEN` drops only undelivered events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::Value;

use super::RedisBackplane;
use crate::backplane::BackplaneError;
use crate::events::{dm_payload, message_payload, user_payload, Event, EventKind, Outcome, Poster};
use crate::sync::lock;

/// A stream entry: its id, and its fields (none when it was trimmed while pending).
type Entry = (String, Option<Vec<(String, String)>>);

/// The consumer group every pod joins.
const GROUP: &str = "deliver";
/// A shard's lease lives this long unless renewed.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// The holder renews at least this often (also while it waits between attempts).
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a pod without a shard tries to take it.
const TAKE_EVERY: Duration = Duration::from_secs(2);
/// How long an idle holder waits before reading its stream again.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Entries read at once.
const BATCH: usize = 32;
/// Dead letters kept in `P:events:dead`.
const MAX_DEAD: usize = 10_000;

/// Starts one deliverer per shard on this node; each delivers only while it holds its
/// shard's lease.
pub(super) fn spawn_deliverers(bp: &Arc<RedisBackplane>, poster: Poster) {
    let poster = Arc::new(poster);
    let lag = Arc::new(Mutex::new(HashMap::new()));
    for shard in 0..poster.settings().shards {
        tokio::spawn(shard_task(
            Arc::downgrade(bp),
            poster.clone(),
            shard,
            lag.clone(),
        ));
    }
}

async fn shard_task(
    bp: Weak<RedisBackplane>,
    poster: Arc<Poster>,
    shard: u32,
    lag: Arc<Mutex<HashMap<u32, i64>>>,
) {
    let mut group_ready = false;
    loop {
        let Some(b) = bp.upgrade() else { return };
        if b.commands_ok() {
            let held = b.take_lease(shard).await;
            if held && !group_ready {
                group_ready = b.ensure_group(shard).await.is_ok();
            }
            if held && group_ready {
                tracing::info!(shard, node = %b.node, "delivering this events shard");
                match b.deliver_shard(shard, &poster, &lag).await {
                    Ok(()) => tracing::info!(shard, "events shard lease lost"),
                    Err(e) => tracing::warn!(shard, error = %e, "events shard: Redis failed"),
                }
                lock(&lag).remove(&shard);
                b.metrics.events_lag.set(lock(&lag).values().sum());
            }
        }
        drop(b);
        tokio::time::sleep(TAKE_EVERY).await;
    }
}

/// A shard this node delivers: its stream, when its lease was last renewed, and where
/// its backlog is reported.
struct Holding<'a> {
    shard: u32,
    stream: &'a str,
    lag: &'a Mutex<HashMap<u32, i64>>,
    renewed: Mutex<Instant>,
}

impl RedisBackplane {
    /// Takes or renews the shard's lease; false when another node holds it.
    async fn take_lease(&self, shard: u32) -> bool {
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(self.keys.events_lease(shard))
            .arg(&self.node)
            .arg(LEASE_TTL.as_millis() as u64);
        matches!(self.run::<i64>(&inv).await, Ok(1))
    }

    /// Creates the consumer group (from the stream's start) unless it exists.
    async fn ensure_group(&self, shard: u32) -> Result<(), BackplaneError> {
        let mut conn = self.connection()?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.events_stream(shard))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.command_error(e)),
        }
    }

    /// Delivers the shard's events while this node holds its lease: first what earlier
    /// holders left pending, then new events, in stream order. Returns when the lease is
    /// lost; an error when Redis fails (the caller takes the lease again later).
    async fn deliver_shard(
        &self,
        shard: u32,
        poster: &Poster,
        lag: &Mutex<HashMap<u32, i64>>,
    ) -> Result<(), BackplaneError> {
        let stream = self.keys.events_stream(shard);
        self.claim_pending(&stream).await?;
        let holding = Holding {
            shard,
            stream: &stream,
            lag,
            renewed: Mutex::new(Instant::now()),
        };
        self.renew(&holding).await?;
        loop {
            if lock(&holding.renewed).elapsed() >= RENEW_EVERY && !self.renew(&holding).await? {
                return Ok(());
            }
            // This node's pending entries first (claimed, or read before a failure),
            // then new ones.
            let mut entries = self.read_group(&stream, "0").await?;
            if entries.is_empty() {
                entries = self.read_group(&stream, ">").await?;
            }
            if entries.is_empty() {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            for (id, fields) in entries {
                let Some(fields) = fields else {
                    // Trimmed by MAXLEN before it was delivered (counted when dropped).
                    self.settle(&stream, &id).await?;
                    continue;
                };
                let Some(event) = parse_entry(shard, &id, &fields) else {
                    tracing::warn!(shard, id, "events: malformed entry dropped");
                    self.settle(&stream, &id).await?;
                    continue;
                };
                let outcome = poster
                    .deliver(&event, |delay| self.wait_holding(&holding, delay))
                    .await;
                match outcome {
                    Outcome::Delivered => self.settle(&stream, &id).await?,
                    Outcome::GaveUp(why) => {
                        self.dead_letter(&event, &why).await?;
                        self.settle(&stream, &id).await?;
                    }
                    Outcome::Abandoned => return Ok(()),
                }
            }
        }
    }

    /// Renews the lease and reports the shard's backlog; false once the lease is lost.
    async fn renew(&self, holding: &Holding<'_>) -> Result<bool, BackplaneError> {
        if !self.take_lease(holding.shard).await {
            return Ok(false);
        }
        *lock(&holding.renewed) = Instant::now();
        let waiting: i64 = self.query(redis::cmd("XLEN").arg(holding.stream)).await?;
        let total = {
            let mut lag = lock(holding.lag);
            lag.insert(holding.shard, waiting);
            lag.values().sum()
        };
        self.metrics.events_lag.set(total);
        Ok(true)
    }

    /// Sleeps `delay`, renewing the lease meanwhile; false once it is lost.
    async fn wait_holding(&self, holding: &Holding<'_>, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            tokio::time::sleep((until - now).min(RENEW_EVERY)).await;
            if lock(&holding.renewed).elapsed() >= RENEW_EVERY
                && !matches!(self.renew(holding).await, Ok(true))
            {
                return false;
            }
        }
    }

    /// Moves every entry pending for other consumers (earlier holders of the shard) to
    /// this node.
    async fn claim_pending(&self, stream: &str) -> Result<(), BackplaneError> {
        let mut cursor = "0-0".to_owned();
        for _ in 0..10_000 {
            let reply: Value = self
                .query(
                    redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(GROUP)
                        .arg(&self.node)
                        .arg(0)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .arg("JUSTID"),
                )
                .await?;
            let next = match reply {
                Value::Array(parts) => parts.into_iter().next().and_then(|v| text(&v)),
                _ => None,
            };
            match next {
                Some(n) if n != "0-0" => cursor = n,
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// `XREADGROUP` of up to [`BATCH`] entries from `from` (`0`: this node's pending;
    /// `>`: new). A pending entry trimmed meanwhile comes with no fields.
    async fn read_group(&self, stream: &str, from: &str) -> Result<Vec<Entry>, BackplaneError> {
        let reply: Value = self
            .query(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.node)
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(from),
            )
            .await?;
        Ok(parse_read(reply))
    }

    /// Acknowledges and deletes a delivered (or given-up) entry.
    async fn settle(&self, stream: &str, id: &str) -> Result<(), BackplaneError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(stream)
            .arg(id)
            .ignore();
        let mut conn = self.connection()?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.command_error(e))
    }

    async fn dead_letter(&self, event: &Event, why: &str) -> Result<(), BackplaneError> {
        let mut record: serde_json::Value =
            serde_json::from_str(&event.to_json()).unwrap_or_default();
        record["error"] = serde_json::Value::String(why.to_owned());
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH")
            .arg(self.keys.events_dead())
            .arg(record.to_string())
            .ignore()
            .cmd("LTRIM")
            .arg(self.keys.events_dead())
            .arg(0)
            .arg(MAX_DEAD - 1)
            .ignore();
        let mut conn = self.connection()?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.command_error(e))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The entries of an `XREADGROUP` reply for one stream (RESP2 arrays or RESP3 maps).
fn parse_read(reply: Value) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let mut parts = parts.into_iter();
            let Some(id) = parts.next().as_ref().and_then(text) else {
                continue;
            };
            let fields = match parts.next() {
                Some(Value::Array(flat)) => Some(
                    flat.chunks(2)
                        .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                        .collect(),
                ),
                _ => None,
            };
            out.push((id, fields));
        }
    }
    out
}

/// An event from a stream entry (fields written by the scripts); `None` when malformed.
fn parse_entry(shard: u32, id: &str, fields: &[(String, String)]) -> Option<Event> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let kind = EventKind::parse(get("k")?)?;
    let ts_ms: u64 = get("t")?.parse().ok()?;
    let payload = match kind {
        EventKind::Message => message_payload(
            get("r")?,
            get("e")?,
            get("o")?.parse().ok()?,
            get("f")?,
            get("b")?,
            ts_ms,
        ),
        EventKind::DmOffline => dm_payload(get("f")?, get("u")?, get("b")?, ts_ms),
        EventKind::UserConnected | EventKind::UserDisconnected => user_payload(get("u")?),
    };
    Some(Event {
        id: format!("{shard}-{id}"),
        kind,
        ts_ms,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries_become_events_with_stable_ids() {
        let fields: Vec<(String, String)> = [
            ("k", "message"),
            ("r", "lobby"),
            ("e", "ep"),
            ("o", "7"),
            ("f", "ann"),
            ("b", "hi"),
            ("t", "1700000000000"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let e = parse_entry(2, "1700000000000-0", &fields).unwrap();
        assert_eq!(e.id, "2-1700000000000-0");
        assert_eq!(e.payload["offset"], 7);
        assert_eq!(e.room(), Some("lobby"));
        assert!(
            parse_entry(2, "1-0", &fields[..3]).is_none(),
            "missing fields"
        );
    }

    #[test]
    fn a_read_reply_keeps_trimmed_entries_without_fields() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("chat:events:0"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("k"), bulk("user.connected")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "1-0");
        assert_eq!(
            entries[0].1,
            Some(vec![("k".to_string(), "user.connected".to_string())])
        );
        assert_eq!(entries[1], ("2-0".to_string(), None));
        assert!(parse_read(Value::Nil).is_empty());
    }
}
