//! The single-node backplane: history, presence and fanout in process memory. It is the
//! embedded default (no Redis needed) and the reference the Redis backplane must match.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use std::time::Duration;

use super::idempotency::IdempotencyCache;
use super::{
    Backplane, BackplaneError, Budget, HistoryRead, NodeSessions, Published, RoomInfo,
    RoomSnapshot, UserCommand, REPLAY_PAGE_MESSAGES,
};
use crate::clock::now_us;
use crate::events::memory::MemoryEvents;
use crate::events::{dm_payload, message_payload, user_payload, EventKind};
use crate::history::{new_epoch, HistoryLimits, ResumeDecision, RoomLog};
use crate::hub::Hub;
use crate::protocol::{Position, ServerFrame, MEMBERS_PAGE};
use crate::rooms::Pattern;
use crate::sync::lock;

/// The window of the per-user cap on rooms created.
const HOUR_MS: u64 = 3_600_000;

pub struct MemoryBackplane {
    hub: Arc<Hub>,
    limits: HistoryLimits,
    budget: Budget,
    /// Bytes of history over all rooms.
    history_bytes: AtomicUsize,
    rooms: Mutex<HashMap<String, Arc<Mutex<RoomLog>>>>,
    /// room → user → number of sessions of that user in the room.
    /// By name, so member pages come in order.
    presence: Mutex<HashMap<String, BTreeMap<String, usize>>>,
    /// user → open sessions (the per-user cap).
    sessions: Mutex<HashMap<String, usize>>,
    /// user → (start of the current hour-long window in ms, rooms created in it).
    rooms_created: Mutex<HashMap<String, (u64, usize)>>,
    /// The server API's idempotency keys.
    idempotency: Mutex<IdempotencyCache>,
    /// This node's name, for the server API's session list.
    node: String,
    /// Events for the application, when a webhook is configured.
    events: Option<EventHooks>,
}

/// Where the in-memory backplane records events, and which rooms' messages are events.
struct EventHooks {
    queue: Arc<MemoryEvents>,
    rooms: Vec<Pattern>,
}

/// Most idempotency keys remembered at once (about 100 bytes each).
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

impl MemoryBackplane {
    pub fn new(hub: Arc<Hub>, limits: HistoryLimits, budget: Budget, node: &str) -> Self {
        MemoryBackplane {
            idempotency: Mutex::new(IdempotencyCache::new(MAX_IDEMPOTENCY_KEYS)),
            node: node.to_owned(),
            events: None,
            hub,
            limits,
            budget,
            history_bytes: AtomicUsize::new(0),
            rooms: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            rooms_created: Mutex::new(HashMap::new()),
        }
    }

    /// Records events in `queue`: messages of rooms matching `rooms`, offline DMs, users'
    /// first and last sessions.
    pub fn with_events(mut self, queue: Arc<MemoryEvents>, rooms: Vec<Pattern>) -> Self {
        self.events = Some(EventHooks { queue, rooms });
        self
    }

    fn record(&self, kind: EventKind, payload: impl FnOnce() -> serde_json::Value) {
        if let Some(hooks) = &self.events {
            hooks.queue.record(kind, payload());
        }
    }

    /// The room's log, created if needed. At the room cap, rooms nobody is in are
    /// forgotten (least recently active first); if every room has members, the new room
    /// is refused.
    fn room(&self, room: &str) -> Result<Arc<Mutex<RoomLog>>, BackplaneError> {
        if let Some(log) = lock(&self.rooms).get(room) {
            return Ok(log.clone());
        }
        let present = lock(&self.presence);
        let mut rooms = lock(&self.rooms);
        if rooms.len() >= self.budget.max_rooms {
            let mut idle: Vec<(u64, String)> = rooms
                .iter()
                .filter(|(name, _)| !present.contains_key(*name))
                .map(|(name, log)| (lock(log).last_ts().unwrap_or(0), name.clone()))
                .collect();
            idle.sort();
            let excess = rooms.len() + 1 - self.budget.max_rooms;
            for (_, name) in idle.into_iter().take(excess) {
                if let Some(log) = rooms.remove(&name) {
                    self.history_bytes
                        .fetch_sub(lock(&log).bytes(), Ordering::Relaxed);
                }
            }
            if rooms.len() >= self.budget.max_rooms {
                return Err(BackplaneError::RoomLimit(format!(
                    "this node holds its maximum of {} rooms and every one has members",
                    self.budget.max_rooms
                )));
            }
        }
        Ok(rooms
            .entry(room.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(RoomLog::new(new_epoch(), self.limits))))
            .clone())
    }

    /// Counts a room `user` is creating, refusing past the per-user cap of the hour.
    fn count_new_room(&self, user: &str) -> Result<(), BackplaneError> {
        let max = self.budget.max_new_rooms_per_user_per_hour;
        if max == 0 {
            return Ok(());
        }
        let now_ms = now_us() / 1000;
        let mut created = lock(&self.rooms_created);
        if created.len() > 10_000 {
            created.retain(|_, (start, _)| now_ms.saturating_sub(*start) < HOUR_MS);
        }
        let (start, count) = created.entry(user.to_owned()).or_insert((now_ms, 0));
        if now_ms.saturating_sub(*start) >= HOUR_MS {
            *start = now_ms;
            *count = 0;
        }
        if *count >= max {
            return Err(BackplaneError::RoomLimit(format!(
                "this user created {max} new rooms within an hour, the most allowed"
            )));
        }
        *count += 1;
        if *count == 1 {
            self.record(EventKind::UserConnected, || user_payload(user));
        }
        Ok(())
    }

    /// Keeps total history under the byte budget by dropping the oldest messages of the
    /// least recently active rooms first (their clients then resume with
    /// `recovered: false`, never a partial replay).
    fn enforce_history_budget(&self) {
        if self.history_bytes.load(Ordering::Relaxed) <= self.budget.max_history_bytes {
            return;
        }
        let target = self.budget.max_history_bytes / 10 * 9;
        let rooms: Vec<Arc<Mutex<RoomLog>>> = lock(&self.rooms).values().cloned().collect();
        let mut by_age: Vec<(u64, Arc<Mutex<RoomLog>>)> = rooms
            .into_iter()
            .map(|log| {
                let ts = lock(&log).last_ts().unwrap_or(0);
                (ts, log)
            })
            .collect();
        by_age.sort_by_key(|(ts, _)| *ts);
        for (_, log) in by_age {
            let mut log = lock(&log);
            while self.history_bytes.load(Ordering::Relaxed) > target {
                let freed = log.drop_oldest();
                if freed == 0 {
                    break;
                }
                self.history_bytes.fetch_sub(freed, Ordering::Relaxed);
            }
            if self.history_bytes.load(Ordering::Relaxed) <= target {
                return;
            }
        }
    }

    /// Bytes of history held over all rooms.
    pub fn history_bytes(&self) -> usize {
        self.history_bytes.load(Ordering::Relaxed)
    }

    /// A page of `room`'s members by name, after `after` (from the first when `None`),
    /// and how many members it has.
    fn member_page(&self, room: &str, after: Option<&str>) -> (Vec<String>, u64) {
        let presence = lock(&self.presence);
        let Some(users) = presence.get(room) else {
            return (Vec::new(), 0);
        };
        let page = match after {
            Some(after) => users
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .take(MEMBERS_PAGE)
                .map(|(u, _)| u.clone())
                .collect(),
            None => users.keys().take(MEMBERS_PAGE).cloned().collect(),
        };
        (page, users.len() as u64)
    }

    /// Forgets rooms whose history has expired and that nobody is in, so memory stays
    /// bounded by active rooms. A later resume into such a room gets `recovered: false`.
    pub fn evict_idle_rooms(&self) -> usize {
        let now_ms = now_us() / 1000;
        let present = lock(&self.presence);
        let mut rooms = lock(&self.rooms);
        let before = rooms.len();
        rooms.retain(|name, log| {
            let mut log = lock(log);
            let before = log.bytes();
            log.prune(now_ms);
            self.history_bytes
                .fetch_sub(before - log.bytes(), Ordering::Relaxed);
            !log.is_empty() || present.contains_key(name)
        });
        before - rooms.len()
    }
}

impl MemoryBackplane {
    /// Appends to the room's history and fans out; the room's epoch and the offset.
    fn publish_now(
        &self,
        room: &str,
        from: &str,
        body: &str,
    ) -> Result<(Arc<str>, u64), BackplaneError> {
        let log = self.room(room)?;
        let mut log = lock(&log);
        let published_us = now_us();
        let bytes_before = log.bytes();
        let ts = published_us / 1000;
        let offset = log.next_offset();
        let frame: Utf8Bytes = ServerFrame::Message {
            room,
            epoch: log.epoch(),
            offset,
            from,
            body,
            ts,
        }
        .to_json()
        .into();
        log.append(ts, frame.clone(), ts);
        let epoch = log.epoch().clone();
        // Under the room's lock: a room's events queue in offset order.
        if self
            .events
            .as_ref()
            .is_some_and(|h| h.rooms.iter().any(|p| p.matches(room)))
        {
            self.record(EventKind::Message, || {
                message_payload(room, &epoch, offset, from, body, ts)
            });
        }
        // Fan out while holding the room lock so delivery order equals offset order.
        self.hub
            .deliver_room_message(room, log.epoch(), offset, published_us, &frame);
        let bytes_after = log.bytes();
        drop(log);
        if bytes_after >= bytes_before {
            self.history_bytes
                .fetch_add(bytes_after - bytes_before, Ordering::Relaxed);
        } else {
            self.history_bytes
                .fetch_sub(bytes_before - bytes_after, Ordering::Relaxed);
        }
        self.enforce_history_budget();
        Ok((epoch, offset))
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_ready(&self) -> bool {
        true
    }

    async fn subscribe_room(&self, _room: &str) -> Result<(), BackplaneError> {
        Ok(())
    }

    async fn unsubscribe_room(&self, _room: &str) -> Result<(), BackplaneError> {
        Ok(())
    }

    async fn publish(&self, room: &str, from: &str, body: &str) -> Result<u64, BackplaneError> {
        self.publish_now(room, from, body).map(|(_, offset)| offset)
    }

    async fn publish_once(
        &self,
        room: &str,
        from: &str,
        body: &str,
        key: Option<&str>,
        key_ttl: Duration,
    ) -> Result<Published, BackplaneError> {
        let Some(key) = key else {
            let (epoch, offset) = self.publish_now(room, from, body)?;
            return Ok(Published {
                epoch: epoch.to_string(),
                offset,
                duplicate: false,
            });
        };
        // Held across the publish, so two calls with one key cannot both publish.
        let mut keys = lock(&self.idempotency);
        let now_ms = now_us() / 1000;
        if let Some((epoch, offset)) = keys.get(room, key, now_ms) {
            return Ok(Published {
                epoch,
                offset,
                duplicate: true,
            });
        }
        let (epoch, offset) = self.publish_now(room, from, body)?;
        let expires = now_ms.saturating_add(key_ttl.as_millis() as u64);
        keys.insert(room, key, &epoch, offset, expires);
        Ok(Published {
            epoch: epoch.to_string(),
            offset,
            duplicate: false,
        })
    }

    async fn send_user_command(
        &self,
        user: &str,
        command: &UserCommand,
    ) -> Result<usize, BackplaneError> {
        Ok(self.hub.command_user(user, command.clone()))
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<NodeSessions>, BackplaneError> {
        Ok(lock(&self.sessions)
            .get(user)
            .map(|&n| NodeSessions {
                node: self.node.clone(),
                sessions: n as u64,
            })
            .into_iter()
            .collect())
    }

    async fn room_info(&self, room: &str) -> Result<Option<RoomInfo>, BackplaneError> {
        let Some(log) = lock(&self.rooms).get(room).cloned() else {
            return Ok(None);
        };
        let (epoch, head) = {
            let log = lock(&log);
            (log.epoch().to_string(), log.head())
        };
        Ok(Some(RoomInfo {
            room: room.to_owned(),
            epoch,
            head,
            members: self.member_page(room, None).1,
        }))
    }

    async fn room_names(&self) -> Result<Vec<String>, BackplaneError> {
        Ok(lock(&self.rooms).keys().cloned().collect())
    }

    async fn history_read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<HistoryRead>, BackplaneError> {
        let Some(log) = lock(&self.rooms).get(room).cloned() else {
            return Ok(None);
        };
        let cutoff = (now_us() / 1000).saturating_sub(self.limits.max_age_ms);
        let log = lock(&log);
        Ok(Some(HistoryRead {
            epoch: log.epoch().to_string(),
            head: log.head(),
            messages: log.read(after, cutoff, limit),
        }))
    }

    async fn snapshot(
        &self,
        room: &str,
        since: Option<&Position>,
    ) -> Result<RoomSnapshot, BackplaneError> {
        let log = self.room(room)?;
        let (epoch, head, decision, replay) = {
            let mut log = lock(&log);
            let before = log.bytes();
            let (decision, replay) = log.replay(since, now_us() / 1000, REPLAY_PAGE_MESSAGES);
            self.history_bytes
                .fetch_sub(before - log.bytes(), Ordering::Relaxed);
            (log.epoch().to_string(), log.head(), decision, replay)
        };
        let (members, member_count) = self.member_page(room, None);
        Ok(RoomSnapshot {
            epoch,
            head,
            recovered: decision != ResumeDecision::NotRecovered,
            replay,
            members,
            member_count,
        })
    }

    async fn history_page(
        &self,
        room: &str,
        epoch: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<Vec<(u64, Utf8Bytes)>>, BackplaneError> {
        let Some(log) = lock(&self.rooms).get(room).cloned() else {
            return Ok(None);
        };
        let page = lock(&log).page(epoch, after, upto, REPLAY_PAGE_MESSAGES);
        Ok(page)
    }

    async fn members_page(
        &self,
        room: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, u64), BackplaneError> {
        Ok(self.member_page(room, after))
    }

    async fn register_user(&self, user: &str) -> Result<(), BackplaneError> {
        let max = self.budget.max_sessions_per_user;
        let mut sessions = lock(&self.sessions);
        let count = sessions.entry(user.to_owned()).or_insert(0);
        if max > 0 && *count >= max {
            return Err(BackplaneError::TooManySessions(max));
        }
        *count += 1;
        Ok(())
    }

    async fn unregister_user(&self, user: &str) -> Result<(), BackplaneError> {
        let mut sessions = lock(&self.sessions);
        if let Some(count) = sessions.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                sessions.remove(user);
                self.record(EventKind::UserDisconnected, || user_payload(user));
            }
        }
        Ok(())
    }

    async fn presence_join(&self, room: &str, user: &str) -> Result<(), BackplaneError> {
        let is_new =
            !lock(&self.rooms).contains_key(room) && !lock(&self.presence).contains_key(room);
        if is_new {
            self.count_new_room(user)?;
        }
        // The room's member count when the user is new there (the news to announce).
        let arrived = {
            let mut presence = lock(&self.presence);
            let users = presence.entry(room.to_owned()).or_default();
            let sessions = users.entry(user.to_owned()).or_insert(0);
            *sessions += 1;
            (*sessions == 1).then_some(users.len() as u64)
        };
        if let Some(member_count) = arrived {
            self.hub.deliver_presence(room, user, true, member_count);
        }
        Ok(())
    }

    async fn presence_leave(&self, room: &str, user: &str) -> Result<(), BackplaneError> {
        // The room's member count when this was the user's last session there.
        let gone = {
            let mut presence = lock(&self.presence);
            let Some(users) = presence.get_mut(room) else {
                return Ok(());
            };
            let gone = match users.get_mut(user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    None
                }
                Some(_) => {
                    users.remove(user);
                    Some(users.len() as u64)
                }
                None => None,
            };
            if users.is_empty() {
                presence.remove(room);
            }
            gone
        };
        if let Some(member_count) = gone {
            self.hub.deliver_presence(room, user, false, member_count);
        }
        Ok(())
    }

    async fn is_present(&self, room: &str, user: &str) -> Result<bool, BackplaneError> {
        Ok(lock(&self.presence)
            .get(room)
            .is_some_and(|users| users.contains_key(user)))
    }

    async fn send_direct(&self, from: &str, to: &str, body: &str) -> Result<usize, BackplaneError> {
        let frame: Utf8Bytes = ServerFrame::Dm {
            from,
            to,
            body,
            ts: now_us() / 1000,
        }
        .to_json()
        .into();
        let reached = self.hub.deliver_user_frame(to, &frame);
        if reached == 0 {
            self.record(EventKind::DmOffline, || {
                dm_payload(from, to, body, now_us() / 1000)
            });
        }
        Ok(reached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::wire::{DeliveryKind, Outbound, RoomCursor, SessionHandle};

    fn setup() -> (Arc<Hub>, MemoryBackplane) {
        setup_with(Budget {
            max_rooms: 1000,
            max_history_bytes: 1 << 30,
            max_sessions_per_user: 0,
            max_new_rooms_per_user_per_hour: 0,
        })
    }

    fn setup_with(budget: Budget) -> (Arc<Hub>, MemoryBackplane) {
        let hub = Arc::new(Hub::new());
        let bp = MemoryBackplane::new(
            hub.clone(),
            HistoryLimits {
                max_messages: 100,
                max_age_ms: 60_000,
            },
            budget,
            "node-1",
        );
        (hub, bp)
    }

    #[tokio::test]
    async fn room_cap_evicts_idle_rooms_and_refuses_when_all_are_in_use() {
        let (_hub, bp) = setup_with(Budget {
            max_rooms: 2,
            max_history_bytes: 1 << 30,
            max_sessions_per_user: 0,
            max_new_rooms_per_user_per_hour: 0,
        });
        bp.publish("a", "u", "x").await.unwrap();
        bp.publish("b", "u", "x").await.unwrap();
        // Neither has members: "a" (least recently active) makes way for "c".
        bp.publish("c", "u", "x").await.unwrap();
        assert!(!lock(&bp.rooms).contains_key("a"));
        bp.presence_join("b", "u").await.unwrap();
        bp.presence_join("c", "u").await.unwrap();
        let err = bp.publish("d", "u", "x").await.unwrap_err();
        assert!(
            matches!(err, BackplaneError::RoomLimit(_))
                && err.to_string().contains("maximum of 2 rooms"),
            "{err}"
        );
        // Existing rooms keep working at the cap.
        assert_eq!(bp.publish("b", "u", "y").await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_user_at_the_session_cap_is_refused_until_one_ends() {
        let (_hub, bp) = setup_with(Budget {
            max_rooms: 10,
            max_history_bytes: 1 << 20,
            max_sessions_per_user: 2,
            max_new_rooms_per_user_per_hour: 0,
        });
        bp.register_user("ann").await.unwrap();
        bp.register_user("ann").await.unwrap();
        let err = bp.register_user("ann").await.unwrap_err();
        assert!(matches!(err, BackplaneError::TooManySessions(2)), "{err}");
        bp.register_user("bob").await.unwrap();
        bp.unregister_user("ann").await.unwrap();
        bp.register_user("ann").await.unwrap();
        assert_eq!(lock(&bp.sessions).get("ann"), Some(&2));
        for _ in 0..2 {
            bp.unregister_user("ann").await.unwrap();
        }
        assert!(
            !lock(&bp.sessions).contains_key("ann"),
            "no entry outlives the user's sessions"
        );
    }

    #[tokio::test]
    async fn a_user_creates_at_most_its_cap_of_new_rooms_an_hour() {
        let (_hub, bp) = setup_with(Budget {
            max_rooms: 100,
            max_history_bytes: 1 << 20,
            max_sessions_per_user: 0,
            max_new_rooms_per_user_per_hour: 2,
        });
        bp.presence_join("a", "ann").await.unwrap();
        bp.presence_join("b", "ann").await.unwrap();
        let err = bp.presence_join("c", "ann").await.unwrap_err();
        assert!(matches!(err, BackplaneError::RoomLimit(_)), "{err}");
        // Joining rooms that exist costs nothing; others may still create rooms.
        bp.presence_join("a", "bob").await.unwrap();
        bp.presence_join("a", "ann").await.unwrap();
        bp.presence_join("c", "bob").await.unwrap();
        bp.presence_join("c", "ann").await.unwrap();
    }

    #[tokio::test]
    async fn history_stays_within_the_byte_budget() {
        let (_hub, bp) = setup_with(Budget {
            max_rooms: 1000,
            max_history_bytes: 20_000,
            max_sessions_per_user: 0,
            max_new_rooms_per_user_per_hour: 0,
        });
        let body = "z".repeat(500);
        for i in 0..200 {
            bp.publish(&format!("room{}", i % 20), "u", &body)
                .await
                .unwrap();
        }
        assert!(bp.history_bytes() <= 20_000, "{}", bp.history_bytes());
        let actual: usize = lock(&bp.rooms).values().map(|l| lock(l).bytes()).sum();
        assert_eq!(actual, bp.history_bytes(), "accounting matches the logs");
        // The most recent message is always kept.
        let snap = bp.snapshot("room19", None).await.unwrap();
        let since = Position {
            epoch: snap.epoch.clone(),
            offset: snap.head - 1,
        };
        assert!(bp.snapshot("room19", Some(&since)).await.unwrap().recovered);
    }

    #[tokio::test]
    async fn publish_assigns_offsets_and_fans_out_in_order() {
        let (hub, bp) = setup();
        let (s, rx) = SessionHandle::detached(1, "u", 1 << 20);
        hub.register(&s);
        hub.join_room("r".into(), &s, Arc::new(RoomCursor::default()));
        for i in 1..=3 {
            assert_eq!(bp.publish("r", "u", "hi").await.unwrap(), i);
        }
        for i in 1..=3 {
            match rx.try_recv() {
                Some(Outbound::Deliver(d)) => match d.kind {
                    DeliveryKind::Room { offset, .. } => assert_eq!(offset, i),
                    ref other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }
        let snap = bp.snapshot("r", None).await.unwrap();
        assert_eq!(snap.head, 3);
        let since = Position {
            epoch: snap.epoch.clone(),
            offset: 1,
        };
        let snap = bp.snapshot("r", Some(&since)).await.unwrap();
        assert!(snap.recovered);
        assert_eq!(snap.replay.len(), 2);
    }

    #[tokio::test]
    async fn presence_counts_sessions_per_user() {
        let (hub, bp) = setup();
        let (s, rx) = SessionHandle::detached(1, "a", 1 << 20);
        hub.register(&s);
        hub.join_room("r".into(), &s, Arc::new(RoomCursor::default()));
        bp.presence_join("r", "a").await.unwrap();
        bp.presence_join("r", "a").await.unwrap();
        assert!(matches!(rx.try_recv(), Some(Outbound::Deliver(_))));
        assert!(rx.try_recv().is_none(), "second session is not news");
        assert_eq!(bp.member_page("r", None), (vec!["a".to_string()], 1));
        bp.presence_leave("r", "a").await.unwrap();
        assert!(rx.try_recv().is_none());
        bp.presence_leave("r", "a").await.unwrap();
        assert!(
            matches!(rx.try_recv(), Some(Outbound::Deliver(d)) if String::from_utf8_lossy(&d.frame).contains("\"left\":[\"a\"]"))
        );
        assert_eq!(bp.member_page("r", None), (Vec::new(), 0));
    }
}
