//! The local registry: which sessions on this node are in which room, and which sessions
//! belong to which user. The backplane hands every event for this node to the hub, which
//! puts it on the right sessions' send queues. No I/O and no awaits: every method takes
//! short locks and returns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::protocol::ServerFrame;
use crate::rooms::RoomRules;
use crate::sync::{lock, read, write};
use crate::user_command::UserCommand;

/// One ready-made frame, shared by every session it goes to.
#[derive(Debug)]
pub struct Delivery {
    pub kind: DeliveryKind,
    pub frame: Utf8Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A live room message; the session drops it when it already has `offset` (the
    /// resume seam) or has left `room`.
    Room {
        room: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        published_us: u64,
    },
    /// The backplane may have missed messages for `room` (it reconnected): the session
    /// fetches whatever it has not seen from history.
    Resync { room: Arc<str> },
    /// A direct message.
    Direct,
    /// A presence change in `room`; the session drops it once it has left the room.
    Presence { room: Arc<str> },
}

/// What the hub, the backplane or the drain controller asks a session to write or do.
/// Kept to 16 bytes: a busy connection's queue holds a deque of these.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Arc<Delivery>),
    /// Drain: send a `reconnect` notice, then close with 1012.
    Reconnect {
        after_ms: u64,
    },
    /// Drain deadline passed: close now.
    ForceClose,
    /// The send queue overflowed: close as a slow consumer.
    Overflowed,
    /// The application's command for this session's user (server API).
    Command(Arc<UserCommand>),
}

/// The hub's and the drain controller's handle on one connected session.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub user: Arc<str>,
    /// Frames waiting for the session task. A locked deque rather than a channel: it
    /// allocates nothing until the first frame is queued and gives its memory back once
    /// a burst is written, so an idle connection holds no queue memory.
    queue: Mutex<VecDeque<Outbound>>,
    /// The session task, parked waiting for the queue.
    waker: AtomicWaker,
    queued_bytes: AtomicUsize,
    overflowed: AtomicBool,
    queue_limit_bytes: usize,
    /// Woken when the queue overflows, so a session blocked writing to a stalled client
    /// notices at once.
    pub overflow_notify: Notify,
}

/// What [`SessionHandle::charge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    Counted,
    /// This charge overflowed the bound.
    Overflowed,
    /// An earlier one had.
    AlreadyOverflowed,
}

/// Above this many slots, an emptied queue gives its memory back (a burst's worth is not
/// kept for the connection's lifetime; below it, a busy session reuses its buffer).
const QUEUE_KEEP_SLOTS: usize = 32;

impl SessionHandle {
    /// A handle for the hub and the session task's end of its queue.
    pub fn new(id: u64, user: Arc<str>, queue_limit_bytes: usize) -> (Arc<SessionHandle>, Inbox) {
        let handle = Arc::new(SessionHandle {
            id,
            user,
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            queue_limit_bytes,
            overflow_notify: Notify::new(),
        });
        (handle.clone(), Inbox(handle))
    }

    /// Queues a frame of `bytes` bytes unless that would exceed the send-queue bound, in
    /// which case the session is marked overflowed (it will be closed as a slow consumer)
    /// and nothing more is queued for it.
    pub fn offer(&self, out: Outbound, bytes: usize) -> bool {
        match self.charge(bytes) {
            Charge::Counted => {
                self.push(out);
                true
            }
            Charge::Overflowed => {
                // The queued marker reaches an idle session; the notify wakes one that is
                // blocked writing to a client that stopped reading.
                self.push(Outbound::Overflowed);
                self.overflow_notify.notify_one();
                false
            }
            Charge::AlreadyOverflowed => false,
        }
    }

    /// Counts `bytes` the session is about to write itself (a replay frame) against the
    /// send-queue bound, as [`SessionHandle::offer`] does for queued frames; each frame's
    /// bytes are given back with [`SessionHandle::written`]. On overflow nothing is
    /// counted and the session is marked overflowed, like a queue that overflowed.
    pub fn reserve(&self, bytes: usize) -> bool {
        self.charge(bytes) == Charge::Counted
    }

    /// Counts `bytes` against the bound unless that would exceed it (then marks the
    /// session overflowed and counts nothing).
    fn charge(&self, bytes: usize) -> Charge {
        if self.overflowed.load(Ordering::Relaxed) {
            return Charge::AlreadyOverflowed;
        }
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.queue_limit_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            return Charge::Overflowed;
        }
        Charge::Counted
    }

    /// Control messages bypass the byte bound: they are tiny and must always arrive.
    pub fn control(&self, out: Outbound) {
        self.push(out);
    }

    fn push(&self, out: Outbound) {
        lock(&self.queue).push_back(out);
        self.waker.wake();
    }

    /// The session wrote a frame of `bytes` bytes that came through `offer`.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

/// The session task's end of its queue: frames come out in the order they were queued.
#[derive(Debug)]
pub struct Inbox(Arc<SessionHandle>);

impl Inbox {
    /// The next queued item, if any.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut queue = lock(&self.0.queue);
        let out = queue.pop_front();
        if queue.is_empty() && queue.capacity() > QUEUE_KEEP_SLOTS {
            *queue = VecDeque::new();
        }
        out
    }

    /// Waits for the next queued item.
    pub async fn recv(&self) -> Outbound {
        std::future::poll_fn(|cx| {
            // Each item taken spends the task's cooperative budget, as with tokio's own
            // channels: a session whose queue never empties still yields in time.
            let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            if let Some(out) = self.try_recv() {
                budget.made_progress();
                return Poll::Ready(out);
            }
            // Registered before the second look, so a push in between still wakes us.
            self.0.waker.register(cx.waker());
            let out = self.try_recv();
            if out.is_some() {
                budget.made_progress();
            }
            out.map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }
}

type Members = HashMap<Arc<str>, Vec<Arc<SessionHandle>>>;

/// Room → local sessions and user → local sessions.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: RwLock<HashMap<u64, Arc<SessionHandle>>>,
    rooms: RwLock<Members>,
    users: RwLock<Members>,
    /// Decides which rooms' members see presence (rooms whose rule hides it get none).
    rules: RoomRules,
    /// Rooms above this many members get their presence as a count at most once per
    /// [`Hub::flush_presence_counts`], not one frame per arrival and departure (whose
    /// traffic grows with the square of the room). 0: no limit.
    presence_limit: u64,
    /// Rooms above the limit whose count changed since the last flush, with the latest.
    pending_counts: Mutex<HashMap<Arc<str>, u64>>,
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

    pub fn join_room(&self, room: Arc<str>, session: &Arc<SessionHandle>) {
        add_member(&self.rooms, room, session);
    }

    pub fn leave_room(&self, room: &str, session_id: u64) {
        remove_member(&self.rooms, room, session_id);
    }

    /// Queues a live room message for every local member; returns how many took it.
    pub fn deliver_room_message(
        &self,
        room: &str,
        epoch: &Arc<str>,
        offset: u64,
        published_us: u64,
        frame: &Utf8Bytes,
    ) -> usize {
        let rooms = read(&self.rooms);
        let Some((key, members)) = rooms.get_key_value(room) else {
            return 0;
        };
        let delivery = Arc::new(Delivery {
            kind: DeliveryKind::Room {
                room: key.clone(),
                epoch: epoch.clone(),
                offset,
                published_us,
            },
            frame: frame.clone(),
        });
        members
            .iter()
            .filter(|m| m.offer(Outbound::Deliver(delivery.clone()), frame.len()))
            .count()
    }

    /// Asks every local member of `room` to catch up from history; returns how many.
    pub fn resync_room(&self, room: &str) -> usize {
        let rooms = read(&self.rooms);
        let Some((key, members)) = rooms.get_key_value(room) else {
            return 0;
        };
        let delivery = Arc::new(Delivery {
            kind: DeliveryKind::Resync { room: key.clone() },
            frame: Utf8Bytes::from_static(""),
        });
        members
            .iter()
            .filter(|m| m.offer(Outbound::Deliver(delivery.clone()), 0))
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
        let rooms = read(&self.rooms);
        let Some((key, members)) = rooms.get_key_value(room) else {
            return 0;
        };
        let kind = DeliveryKind::Presence { room: key.clone() };
        offer_all(members, kind, frame)
    }

    /// Queues a frame for every local session of a user; returns how many took it.
    pub fn deliver_user_frame(&self, user: &str, frame: &Utf8Bytes) -> usize {
        let users = read(&self.users);
        let Some(sessions) = users.get(user) else {
            return 0;
        };
        offer_all(sessions, DeliveryKind::Direct, frame)
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
            session.control(Outbound::Command(command.clone()));
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

/// Queues one shared frame of `kind` for each of `sessions`; returns how many took it.
fn offer_all(sessions: &[Arc<SessionHandle>], kind: DeliveryKind, frame: &Utf8Bytes) -> usize {
    let delivery = Arc::new(Delivery {
        kind,
        frame: frame.clone(),
    });
    sessions
        .iter()
        .filter(|m| m.offer(Outbound::Deliver(delivery.clone()), frame.len()))
        .count()
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

    #[test]
    fn delivers_to_room_members_and_user_sessions() {
        let hub = Hub::new();
        let (a, ra) = SessionHandle::new(1, "alice".into(), 1024);
        let (b, rb) = SessionHandle::new(2, "bob".into(), 1024);
        let (a2, ra2) = SessionHandle::new(3, "alice".into(), 1024);
        for s in [&a, &b, &a2] {
            hub.register(s);
        }
        hub.join_room("r".into(), &a);
        hub.join_room("r".into(), &b);
        assert_eq!(
            hub.deliver_room_message("r", &"e".into(), 1, 0, &"m".into()),
            2
        );
        for rx in [&ra, &rb] {
            match rx.try_recv() {
                Some(Outbound::Deliver(d)) => {
                    assert!(matches!(d.kind, DeliveryKind::Room { offset: 1, .. }))
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

    #[test]
    fn outbound_stays_small() {
        assert!(std::mem::size_of::<Outbound>() <= 16);
    }

    fn notice(text: &str) -> Outbound {
        Outbound::Deliver(Arc::new(Delivery {
            kind: DeliveryKind::Direct,
            frame: text.into(),
        }))
    }

    fn frame_text(out: Option<Outbound>) -> String {
        match out {
            Some(Outbound::Deliver(d)) => d.frame.to_string(),
            Some(Outbound::Reconnect { .. }) => "reconnect".into(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn frames_and_control_messages_come_out_in_queue_order() {
        let (s, inbox) = SessionHandle::new(1, "u".into(), 1024);
        assert!(s.offer(notice("a"), 1));
        s.control(Outbound::Reconnect { after_ms: 0 });
        assert!(s.offer(notice("b"), 1));
        let got: Vec<String> = (0..3).map(|_| frame_text(inbox.try_recv())).collect();
        assert_eq!(got, ["a", "reconnect", "b"]);
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn an_emptied_queue_gives_a_burst_s_memory_back() {
        let (s, inbox) = SessionHandle::new(1, "u".into(), 1 << 20);
        let capacity = || lock(&s.queue).capacity();
        assert_eq!(capacity(), 0, "nothing allocated before the first frame");
        for _ in 0..1000 {
            assert!(s.offer(notice("x"), 1));
        }
        assert!(capacity() >= 1000);
        while inbox.try_recv().is_some() {}
        assert_eq!(capacity(), 0);
        // A small queue is kept for reuse.
        s.offer(notice("x"), 1);
        s.offer(notice("y"), 1);
        assert_eq!(frame_text(inbox.try_recv()), "x");
        assert!(capacity() > 0 && capacity() <= QUEUE_KEEP_SLOTS);
    }

    #[tokio::test]
    async fn a_waiting_session_is_woken_by_the_next_frame() {
        let (s, inbox) = SessionHandle::new(1, "u".into(), 1024);
        let waiting = tokio::spawn(async move {
            let first = inbox.recv().await;
            let second = inbox.recv().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        s.offer(notice("late"), 4);
        s.control(Outbound::ForceClose);
        let (first, second) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(frame_text(Some(first)), "late");
        assert!(matches!(second, Outbound::ForceClose));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_queue_that_never_empties_still_lets_other_tasks_run() {
        let (s, inbox) = SessionHandle::new(1, "u".into(), 1024);
        for _ in 0..10_000 {
            s.control(Outbound::ForceClose);
        }
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
        let mut taken_before_it_ran = None;
        for n in 0..10_000 {
            inbox.recv().await;
            if taken_before_it_ran.is_none() && other_ran.load(Ordering::Relaxed) {
                taken_before_it_ran = Some(n);
            }
        }
        // tokio's budget is 128 operations per poll of a task.
        assert!(
            matches!(taken_before_it_ran, Some(n) if n <= 1_000),
            "{taken_before_it_ran:?}"
        );
    }

    #[test]
    fn queue_bound_marks_overflow_once() {
        let (s, _rx) = SessionHandle::new(1, "u".into(), 10);
        let frame = |t: &str| {
            Outbound::Deliver(Arc::new(Delivery {
                kind: DeliveryKind::Direct,
                frame: t.into(),
            }))
        };
        assert!(s.offer(frame("12345"), 5));
        assert!(s.offer(frame("12345"), 5));
        assert!(!s.offer(frame("1"), 1));
        assert!(s.is_overflowed());
        s.written(5);
        assert!(!s.offer(frame("1"), 1), "overflow is final");
        assert_eq!(s.queued_bytes(), 5);
    }
}
