//! The local registry: which sessions on this node are in which room, and which sessions
//! belong to which user. The backplane hands every event for this node to the hub, which
//! frames it once and offers it to each session's wire (`fan_out`): written to the
//! socket directly when nothing is ahead of it there, else queued for the session task
//! (`wire`). No awaits: every method takes short locks, at most one non-blocking `send`
//! per session, and returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;

use crate::fan_out::{DeliveryMetrics, FanOut, RoomMember};
use crate::protocol::ServerFrame;
use crate::rooms::RoomRules;
use crate::sync::{lock, read, write};
use crate::user_command::UserCommand;
use crate::wire::{Delivery, DeliveryKind, Outbound, RoomCursor, SessionHandle};

type Members = HashMap<Arc<str>, Vec<Arc<SessionHandle>>>;

/// Room → local sessions and user → local sessions.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: RwLock<HashMap<u64, Arc<SessionHandle>>>,
    /// Each room's members, shared with the fan-outs under way: a fan-out takes the list
    /// and lets go of the lock before writing to any socket, so a big room's writes never
    /// hold up joins and leaves elsewhere. A join or leave changes the list in place,
    /// or a copy of it while a fan-out still holds it.
    rooms: RwLock<HashMap<Arc<str>, Arc<Vec<RoomMember>>>>,
    users: RwLock<Members>,
    /// Decides which rooms' members see presence (rooms whose rule hides it get none).
    rules: RoomRules,
    /// Rooms above this many members get their presence as a count at most once per
    /// [`Hub::flush_presence_counts`], not one frame per arrival and departure (whose
    /// traffic grows with the square of the room). 0: no limit.
    presence_limit: u64,
    /// Rooms above the limit whose count changed since the last flush, with the latest.
    pending_counts: Mutex<HashMap<Arc<str>, u64>>,
    fan_out: FanOut,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub that withholds presence in rooms whose rule says so, and sends rooms above
    /// `presence_limit` members (0: none) their presence as a count.
    pub fn with_room_rules(rules: RoomRules, presence_limit: u64) -> Self {
        Hub {
            rules,
            presence_limit,
            ..Self::default()
        }
    }

    /// Counts in `metrics` the messages the fan-out writes itself, and each delivery's
    /// path.
    pub fn counting(self, metrics: DeliveryMetrics) -> Self {
        Hub {
            fan_out: FanOut::counting(metrics),
            ..self
        }
    }

    /// `user` arrived in `room` (`joined`) or left it, which now has `member_count`
    /// members. Up to the presence limit, local members get a frame for the change;
    /// above it, the count waits for the next flush.
    pub fn deliver_presence(&self, room: &str, user: &str, joined: bool, member_count: u64) {
        if self.presence_limit > 0 && member_count > self.presence_limit {
            let rooms = read(&self.rooms);
            if let Some((key, _)) = rooms.get_key_value(room) {
                lock(&self.pending_counts).insert(key.clone(), member_count);
            }
            return;
        }
        // Back at or under the limit: a count queued earlier is older than this frame's.
        if self.presence_limit > 0 {
            lock(&self.pending_counts).remove(room);
        }
        let who = [user.to_owned()];
        let (joined, left): (&[String], &[String]) = if joined { (&who, &[]) } else { (&[], &who) };
        let frame: Utf8Bytes = ServerFrame::Presence {
            room,
            joined,
            left,
            member_count,
        }
        .to_json()
        .into();
        self.deliver_room_frame(room, &frame);
    }

    /// Sends each room above the presence limit whose count changed its latest count (the
    /// server calls this once a second).
    pub fn flush_presence_counts(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending_counts));
        for (room, member_count) in pending {
            let frame: Utf8Bytes = ServerFrame::Presence {
                room: &room,
                joined: &[],
                left: &[],
                member_count,
            }
            .to_json()
            .into();
            self.deliver_room_frame(&room, &frame);
        }
    }

    pub fn register(&self, session: &Arc<SessionHandle>) {
        write(&self.sessions).insert(session.id, session.clone());
        add_member(&self.users, session.user.clone(), session);
    }

    pub fn unregister(&self, session: &SessionHandle) {
        write(&self.sessions).remove(&session.id);
        remove_member(&self.users, &session.user, session.id);
    }

    /// Adds `session` to `room`; the fan-out checks each delivery against `cursor`.
    pub fn join_room(&self, room: Arc<str>, session: &Arc<SessionHandle>, cursor: Arc<RoomCursor>) {
        let member = RoomMember {
            session: session.clone(),
            cursor,
        };
        let mut rooms = write(&self.rooms);
        let members = rooms.entry(room).or_default();
        if !members.iter().any(|m| m.session.id == session.id) {
            Arc::make_mut(members).push(member);
        }
    }

    /// Takes `session_id` out of `room`. A fan-out that took the member list just before
    /// may still offer it the room's traffic: the session detaches its cursor first, so
    /// such an offer is queued, and the session drops it.
    pub fn leave_room(&self, room: &str, session_id: u64) {
        let mut rooms = write(&self.rooms);
        if let Some(members) = rooms.get_mut(room) {
            if members.iter().any(|m| m.session.id == session_id) {
                Arc::make_mut(members).retain(|m| m.session.id != session_id);
            }
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// The room's key and members, taken from under the lock.
    fn members(&self, room: &str) -> Option<(Arc<str>, Arc<Vec<RoomMember>>)> {
        let rooms = read(&self.rooms);
        let (key, members) = rooms.get_key_value(room)?;
        Some((key.clone(), members.clone()))
    }

    /// Offers a live room message to every local member; returns how many took it.
    pub fn deliver_room_message(
        &self,
        room: &str,
        epoch: &Arc<str>,
        offset: u64,
        published_us: u64,
        frame: &Utf8Bytes,
    ) -> usize {
        let Some((key, members)) = self.members(room) else {
            return 0;
        };
        let kind = DeliveryKind::Room {
            room: key,
            epoch: epoch.clone(),
            offset,
            published_us,
        };
        let delivery = Arc::new(Delivery::text(kind, frame.as_bytes()));
        self.fan_out.to_room(delivery, members)
    }

    /// Asks every local member of `room` to catch up from history; returns how many.
    pub fn resync_room(&self, room: &str) -> usize {
        let Some((key, members)) = self.members(room) else {
            return 0;
        };
        let delivery = Arc::new(Delivery {
            kind: DeliveryKind::Resync { room: key },
            frame: Default::default(),
        });
        members
            .iter()
            .filter(|m| {
                m.session
                    .wire
                    .enqueue(Outbound::Deliver(delivery.clone()), 0)
            })
            .count()
    }

    /// Rooms with at least one local member.
    pub fn local_rooms(&self) -> Vec<Arc<str>> {
        read(&self.rooms).keys().cloned().collect()
    }

    /// Queues a presence frame for every local member of a room, unless the room's rule
    /// hides presence from its members.
    pub fn deliver_room_frame(&self, room: &str, frame: &Utf8Bytes) -> usize {
        if !self.rules.presence_visible(room) {
            return 0;
        }
        let Some((key, members)) = self.members(room) else {
            return 0;
        };
        let kind = DeliveryKind::Presence { room: key };
        let delivery = Arc::new(Delivery::text(kind, frame.as_bytes()));
        self.fan_out.to_room(delivery, members)
    }

    /// Queues a frame for every local session of a user; returns how many took it.
    pub fn deliver_user_frame(&self, user: &str, frame: &Utf8Bytes) -> usize {
        let users = read(&self.users);
        let Some(sessions) = users.get(user) else {
            return 0;
        };
        let delivery = Arc::new(Delivery::text(DeliveryKind::Direct, frame.as_bytes()));
        self.fan_out.to_sessions(&delivery, sessions)
    }

    /// Hands the application's `command` to every local session of `user`, past the
    /// send-queue bound (a slow client must still be disconnected); returns how many.
    pub fn command_user(&self, user: &str, command: UserCommand) -> usize {
        let users = read(&self.users);
        let Some(sessions) = users.get(user) else {
            return 0;
        };
        let command = Arc::new(command);
        for session in sessions {
            session.wire.control(Outbound::Command(command.clone()));
        }
        sessions.len()
    }

    pub fn user_session_count(&self, user: &str) -> usize {
        read(&self.users).get(user).map_or(0, Vec::len)
    }

    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        read(&self.sessions).values().cloned().collect()
    }

    pub fn connection_count(&self) -> usize {
        read(&self.sessions).len()
    }

    pub fn room_count(&self) -> usize {
        read(&self.rooms).len()
    }
}

fn add_member(map: &RwLock<Members>, key: Arc<str>, session: &Arc<SessionHandle>) {
    let mut map = write(map);
    let members = map.entry(key).or_default();
    if !members.iter().any(|m| m.id == session.id) {
        members.push(session.clone());
    }
}

fn remove_member(map: &RwLock<Members>, key: &str, session_id: u64) {
    let mut map = write(map);
    if let Some(members) = map.get_mut(key) {
        members.retain(|m| m.id != session_id);
        if members.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CursorState, Inbox};

    fn session(id: u64, user: &str) -> (Arc<SessionHandle>, Inbox) {
        SessionHandle::detached(id, user, 1024)
    }

    fn live() -> Arc<RoomCursor> {
        let cursor = Arc::new(RoomCursor::default());
        cursor.set(CursorState {
            epoch: Some("e".into()),
            last: 0,
            presence: true,
        });
        cursor
    }

    #[test]
    fn delivers_to_room_members_and_user_sessions() {
        let hub = Hub::new();
        let (a, ra) = session(1, "alice");
        let (b, rb) = session(2, "bob");
        let (a2, ra2) = session(3, "alice");
        for s in [&a, &b, &a2] {
            hub.register(s);
        }
        hub.join_room("r".into(), &a, live());
        hub.join_room("r".into(), &b, live());
        assert_eq!(
            hub.deliver_room_message("r", &"e".into(), 1, 0, &"m".into()),
            2
        );
        for rx in [&ra, &rb] {
            match rx.try_recv() {
                Some(Outbound::Deliver(d)) => {
                    assert!(matches!(d.kind, DeliveryKind::Room { offset: 1, .. }));
                    assert_eq!(&d.frame[..], b"\x81\x01m", "framed once, as text");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(ra2.try_recv().is_none());
        assert_eq!(hub.deliver_user_frame("alice", &"dm".into()), 2);
        assert_eq!(hub.user_session_count("alice"), 2);
        hub.leave_room("r", 1);
        assert_eq!(
            hub.deliver_room_message("r", &"e".into(), 2, 0, &"m".into()),
            1
        );
        hub.unregister(&b);
        hub.leave_room("r", 2);
        assert_eq!(hub.room_count(), 0);
        assert_eq!(hub.connection_count(), 2);
    }
}
