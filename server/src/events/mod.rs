//! Events to the application: HMAC-signed HTTP POSTs to its backend, delivered at least
//! once. Each event is recorded where the message is (over Redis, by the same script
//! that stores the message), then a deliverer posts it, retrying with backoff until the
//! backend answers 2xx or `give_up_after` passes, when it goes to the dead-letter list.
//!
//! The events: a room message (rooms matching `CHAT_WEBHOOK_ROOMS` only), a DM whose
//! recipient has no session (`dm.offline`), a user's first session in the cluster
//! (`user.connected`) and last (`user.disconnected`).
//!
//! Where events wait: `memory` (the in-memory backplane: one queue in the process) and
//! `backplane::redis::events` (streams in Redis, consumed by the pods as one consumer
//! group). This module holds what both share: the event, its wire form, the settings,
//! the backoff and the delivery of one event.

pub mod memory;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http_client::{HttpClient, Url};
use crate::metrics::Metrics;
use crate::rooms::Pattern;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Message,
    DmOffline,
    UserConnected,
    UserDisconnected,
}

impl EventKind {
    /// The name on the wire (the event's `type`, the stream entry's `k`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::DmOffline => "dm.offline",
            EventKind::UserConnected => "user.connected",
            EventKind::UserDisconnected => "user.disconnected",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        [
            EventKind::Message,
            EventKind::DmOffline,
            EventKind::UserConnected,
            EventKind::UserDisconnected,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// One event as the application receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique and the same on every delivery of this event, so a receiver can drop a
    /// duplicate.
    pub id: String,
    pub kind: EventKind,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub payload: Value,
}

impl Event {
    /// The POST body: `{"id", "type", "ts", "payload"}`.
    pub fn to_json(&self) -> String {
        json!({
            "id": self.id,
            "type": self.kind.name(),
            "ts": self.ts_ms,
            "payload": self.payload,
        })
        .to_string()
    }

    /// The room a message event is about (events of one room are delivered in order).
    pub fn room(&self) -> Option<&str> {
        self.payload.get("room").and_then(Value::as_str)
    }
}

/// The payload of a room message event.
pub fn message_payload(
    room: &str,
    epoch: &str,
    offset: u64,
    from: &str,
    body: &str,
    ts_ms: u64,
) -> Value {
    json!({"room": room, "epoch": epoch, "offset": offset, "from": from, "body": body, "ts": ts_ms})
}

/// The payload of a `dm.offline` event.
pub fn dm_payload(from: &str, to: &str, body: &str, ts_ms: u64) -> Value {
    json!({"from": from, "to": to, "body": body, "ts": ts_ms})
}

/// The payload of a `user.connected` or `user.disconnected` event.
pub fn user_payload(user: &str) -> Value {
    json!({ "user": user })
}

/// The events' configuration (`CHAT_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: Url,
    pub ca_file: Option<PathBuf>,
    /// The HMAC key of `X-Chat-Signature`.
    pub secret: Vec<u8>,
    /// Rooms whose messages are events; none when empty.
    pub rooms: Vec<Pattern>,
    /// One POST's timeout.
    pub timeout: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
    /// After this long failing, an event goes to the dead-letter list.
    pub give_up_after: Duration,
    /// Most events waiting (per shard over Redis); past it the oldest is dropped.
    pub max_backlog: usize,
    /// Over Redis: how many streams events are spread over by room or user; each is
    /// delivered by one pod at a time, in order.
    pub shards: u32,
}

impl WebhookSettings {
    /// Whether a message in `room` is an event.
    pub fn wants_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|p| p.matches(room))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.secret.len() < 32 {
            return Err(
                "CHAT_WEBHOOK_SECRET must be set, at least 32 bytes, with CHAT_WEBHOOK_URL".into(),
            );
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err("CHAT_WEBHOOK_TIMEOUT must be between 1ms and 60s".into());
        }
        if self.retry_max < Duration::from_secs(1) || self.retry_max > self.give_up_after {
            return Err(
                "CHAT_WEBHOOK_RETRY_MAX must be at least 1s and at most CHAT_WEBHOOK_GIVE_UP_AFTER"
                    .into(),
            );
        }
        if self.give_up_after > Duration::from_secs(7 * 24 * 3600) {
            return Err("CHAT_WEBHOOK_GIVE_UP_AFTER must be at most 7 days".into());
        }
        if !(1..=1_000_000).contains(&self.max_backlog) {
            return Err("CHAT_WEBHOOK_MAX_BACKLOG must be between 1 and 1000000".into());
        }
        if !(1..=64).contains(&self.shards) {
            return Err("CHAT_WEBHOOK_SHARDS must be between 1 and 64".into());
        }
        Ok(())
    }

    /// The shard of a room's or a user's events: a stable hash, the same on every node.
    pub fn shard_of(&self, key: &str) -> u32 {
        // FNV-1a: stable across processes and versions, unlike std's hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in key.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h % self.shards
    }
}

/// The wait before attempt `attempt + 1` (after `attempt` failures, from 1): 1 s, 2 s,
/// 4 s, … up to `max`.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(20);
    Duration::from_secs(secs).min(max)
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered 2xx.
    Delivered,
    /// It kept failing past `give_up_after`: to the dead-letter list, with the last error.
    GaveUp(String),
    /// The deliverer may no longer deliver (it lost its shard, or it stops): leave the
    /// event where it is, for whoever delivers next.
    Abandoned,
}

/// Posts events, signed, to the application.
pub struct Poster {
    client: HttpClient,
    settings: WebhookSettings,
    metrics: Metrics,
}

impl Poster {
    pub fn new(settings: WebhookSettings, metrics: Metrics) -> Result<Poster, String> {
        let client = HttpClient::new(settings.ca_file.as_deref(), settings.timeout, 4 * 1024)?;
        Ok(Poster {
            client,
            settings,
            metrics,
        })
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// One attempt: `Ok` on a 2xx answer, else what went wrong.
    async fn post(&self, event: &Event) -> Result<(), String> {
        let body = event.to_json().into_bytes();
        let signature = crate::signature::sign(&self.settings.secret, &body);
        let headers = [
            ("x-chat-signature", signature),
            ("x-chat-event-id", event.id.clone()),
            ("x-chat-event-type", event.kind.name().to_owned()),
        ];
        match self
            .client
            .post_json(&self.settings.url, body, &headers)
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("the backend answered {}", r.status)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Delivers `event`, retrying with backoff; `wait(d)` sleeps `d` and says whether the
    /// deliverer may go on (a Redis shard's owner renews its lease meanwhile).
    pub async fn deliver<W, F>(&self, event: &Event, mut wait: W) -> Outcome
    where
        W: FnMut(Duration) -> F,
        F: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        let mut failures = 0u32;
        loop {
            match self.post(event).await {
                Ok(()) => {
                    self.metrics.events_delivered.inc();
                    return Outcome::Delivered;
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.events_failed_attempts.inc();
                    if started.elapsed() >= self.settings.give_up_after {
                        tracing::warn!(event = %event.id, error = %e, attempts = failures, "event given up: to the dead-letter list");
                        self.metrics.events_dead_lettered.inc();
                        return Outcome::GaveUp(e);
                    }
                    if failures == 1 || failures % 10 == 0 {
                        tracing::warn!(event = %event.id, error = %e, attempts = failures, "event delivery failed; retrying");
                    }
                    let delay = backoff(failures, self.settings.retry_max)
                        .min(
                            self.settings
                                .give_up_after
                                .saturating_sub(started.elapsed()),
                        )
                        .max(Duration::from_millis(100));
                    if !wait(delay).await {
                        return Outcome::Abandoned;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap() {
        let max = Duration::from_secs(30);
        let waits: Vec<u64> = (1..=7).map(|a| backoff(a, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(u32::MAX, max), max);
    }

    #[test]
    fn an_event_on_the_wire_carries_id_type_ts_and_payload() {
        let e = Event {
            id: "2-1700000000000-0".into(),
            kind: EventKind::Message,
            ts_ms: 1_700_000_000_000,
            payload: message_payload("lobby", "e1", 7, "ann", "hi", 1_700_000_000_000),
        };
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["id"], "2-1700000000000-0");
        assert_eq!(v["type"], "message");
        assert_eq!(v["ts"], 1_700_000_000_000u64);
        assert_eq!(v["payload"]["offset"], 7);
        assert_eq!(e.room(), Some("lobby"));
        for k in [
            EventKind::Message,
            EventKind::DmOffline,
            EventKind::UserConnected,
            EventKind::UserDisconnected,
        ] {
            assert_eq!(EventKind::parse(k.name()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let s = WebhookSettings {
            url: Url::parse("http://127.0.0.1:1/hook", false).unwrap(),
            ca_file: None,
            secret: vec![0; 32],
            rooms: vec![Pattern::parse("support.*", false).unwrap()],
            timeout: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            give_up_after: Duration::from_secs(3600),
            max_backlog: 10,
            shards: 4,
        };
        assert_eq!(s.shard_of("lobby"), s.shard_of("lobby"));
        let used: std::collections::HashSet<u32> =
            (0..100).map(|i| s.shard_of(&format!("room{i}"))).collect();
        assert_eq!(used.len(), 4);
        assert!(s.wants_room("support.42"));
        assert!(!s.wants_room("lobby"));
        assert!(s.validate().is_ok());
        assert!(WebhookSettings {
            secret: vec![0; 31],
            ..s.clone()
        }
        .validate()
        .is_err());
        assert!(WebhookSettings { shards: 0, ..s }.validate().is_err());
    }
}
