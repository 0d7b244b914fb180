//! A connection's outbound side, shared by its session task and the fan-out.
//!
//! The fan-out writes a room message or a direct message straight to the client's
//! socket, with one non-blocking `send` and no task wake-up, when nothing may come
//! before it: the queue is empty, no bytes wait for the socket, and the session task is
//! not in the middle of writing frames of its own (a batch it took off the queue, a
//! join's replay, a reply). Otherwise the delivery is queued and the session task writes
//! it, as before; presence frames always are (see [`step`]).
//!
//! Bytes the socket did not take (the rest of a partial write, or a whole frame on
//! EAGAIN) wait in `unsent`, ahead of everything written later, until the session task
//! flushes them when the socket is writable. Queued frames and unsent bytes both count
//! against the send-queue budget, so a client that stops reading overflows it and is
//! closed as a slow consumer whichever way its frames went.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::sync::lock;
use crate::user_command::UserCommand;

/// One ready-made WebSocket frame (header and payload), shared by every session it goes
/// to: the fan-out frames a message once per node.
#[derive(Debug)]
pub struct Delivery {
    pub kind: DeliveryKind,
    pub frame: Bytes,
}

impl Delivery {
    /// A text frame carrying `payload`.
    pub fn text(kind: DeliveryKind, payload: &[u8]) -> Delivery {
        Delivery {
            kind,
            frame: text_frame(payload),
        }
    }
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
    /// Bytes wait for the socket (or the socket failed): never queued, handed out by
    /// [`Inbox::recv`] when the queue is empty.
    Flush,
}

/// Where one session is in one room's live stream. The hub's member entry holds it too,
/// so the fan-out checks a delivery against it without a lookup.
#[derive(Debug, Default)]
pub struct RoomCursor(Mutex<CursorState>);

#[derive(Debug, Clone, Default)]
pub struct CursorState {
    /// `None` until the session has the room's snapshot, and again once it has left the
    /// room: meanwhile the fan-out queues everything for the session to check.
    pub epoch: Option<Arc<str>>,
    /// Last offset written to the client (replayed or live).
    pub last: u64,
    /// Whether the session sees the room's presence.
    pub presence: bool,
}

impl RoomCursor {
    pub fn get(&self) -> CursorState {
        lock(&self.0).clone()
    }

    pub fn set(&self, state: CursorState) {
        *lock(&self.0) = state;
    }

    /// The session left the room: whatever the fan-out still offers for it is queued,
    /// and the session drops it.
    pub fn detach(&self) {
        *lock(&self.0) = CursorState::default();
    }

    /// Moves `last` on to `offset` if that is further.
    pub fn advance(&self, offset: u64) {
        let mut state = lock(&self.0);
        state.last = state.last.max(offset);
    }
}

/// The hub's and the drain controller's handle on one connected session.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub user: Arc<str>,
    /// The connection's outbound side: direct writes and the session task's queue.
    pub wire: Arc<Wire>,
}

impl SessionHandle {
    pub fn new(id: u64, user: Arc<str>, wire: Arc<Wire>) -> Arc<SessionHandle> {
        Arc::new(SessionHandle { id, user, wire })
    }

    /// A session with no socket, whose every delivery is queued (for tests).
    #[cfg(test)]
    pub fn detached(id: u64, user: &str, queue_limit_bytes: usize) -> (Arc<SessionHandle>, Inbox) {
        let wire = Wire::detached(queue_limit_bytes);
        (
            SessionHandle::new(id, user.into(), wire.clone()),
            Inbox(wire),
        )
    }
}

/// What the fan-out may do with a delivery for a session whose socket is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Write,
    /// Already written (the resume seam) or not for this session.
    Drop,
    /// The session must decide (a gap, a new epoch, a room it is still joining).
    Queue,
}

/// The fan-out's rule for `kind` against the session's cursor in that room (pure).
pub fn step(kind: &DeliveryKind, cursor: Option<&CursorState>) -> Step {
    match (kind, cursor) {
        (DeliveryKind::Direct, _) => Step::Write,
        (DeliveryKind::Resync { .. }, _) => Step::Queue,
        (_, None) => Step::Queue,
        (_, Some(CursorState { epoch: None, .. })) => Step::Queue,
        // Presence comes in bursts to the same socket (a join storm sends every member
        // a frame per arrival): queued, the session task writes a burst in one `send`.
        (DeliveryKind::Presence { .. }, Some(c)) => {
            if c.presence {
                Step::Queue
            } else {
                Step::Drop
            }
        }
        (DeliveryKind::Room { epoch, offset, .. }, Some(c)) => {
            let same_epoch = c.epoch.as_deref() == Some(&**epoch);
            if same_epoch && *offset == c.last + 1 {
                Step::Write
            } else if same_epoch && *offset <= c.last {
                Step::Drop
            } else {
                Step::Queue
            }
        }
    }
}

/// What became of one delivery offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Handed to the socket by the fan-out (all of it, or the rest waits in `unsent`).
    Written,
    /// Queued for the session task.
    Queued,
    /// Not for this session (already written, or presence it does not see).
    Dropped,
    /// Over the send-queue budget: the session is closed as a slow consumer.
    Refused,
}

/// How a write to the socket went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// All of it is in the kernel.
    Done,
    /// Some bytes wait in `unsent` for the socket to become writable.
    Pending,
    /// The socket failed.
    Broken,
}

/// Everything behind the wire's lock.
#[derive(Debug, Default)]
struct Outbox {
    /// Items for the session task. A deque rather than a channel: it allocates nothing
    /// until the first item and gives its memory back once a burst is written.
    queue: VecDeque<Outbound>,
    /// Bytes for the socket that it has not taken yet, in order, ahead of anything else.
    unsent: VecDeque<Bytes>,
    /// The session task is writing frames of its own, or took items off the queue that
    /// it has not written yet: live traffic must not overtake them.
    session_writing: bool,
    /// The session is closing: the fan-out writes nothing more.
    closing: bool,
    /// A write to the socket failed.
    broken: bool,
}

impl Outbox {
    /// The next queued item; taking one stops the direct path until the session settles.
    fn pop(&mut self) -> Option<Outbound> {
        let out = self.queue.pop_front();
        if out.is_some() {
            self.session_writing = true;
        }
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEEP_SLOTS {
            self.queue = VecDeque::new();
        }
        out
    }
}

/// Above this many slots, an emptied queue gives its memory back (a burst's worth is not
/// kept for the connection's lifetime; below it, a busy session reuses its buffer).
const QUEUE_KEEP_SLOTS: usize = 32;

/// A connection's socket and what waits to be written to it.
#[derive(Debug)]
pub struct Wire {
    /// `None` for a wire with no client (unit tests): nothing goes direct.
    socket: Option<TcpStream>,
    outbox: Mutex<Outbox>,
    /// The session task, parked waiting for the queue.
    waker: AtomicWaker,
    /// Bytes queued or unsent.
    queued_bytes: AtomicUsize,
    overflowed: AtomicBool,
    queue_limit_bytes: usize,
    /// Woken when the budget overflows, so a session blocked writing to a stalled client
    /// notices at once.
    pub overflow_notify: Notify,
}

/// What [`Wire::charge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    Counted,
    /// This charge overflowed the bound.
    Overflowed,
    /// An earlier one had.
    AlreadyOverflowed,
}

impl Wire {
    /// The outbound side of an accepted connection. Nothing goes direct until the
    /// session has written its first frame ([`Inbox::settle`]).
    pub fn new(socket: Option<TcpStream>, queue_limit_bytes: usize) -> Arc<Wire> {
        Arc::new(Wire {
            socket,
            outbox: Mutex::new(Outbox {
                session_writing: true,
                ..Outbox::default()
            }),
            waker: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            queue_limit_bytes,
            overflow_notify: Notify::new(),
        })
    }

    /// A wire with no socket: everything is queued (for tests of the queue's users).
    pub fn detached(queue_limit_bytes: usize) -> Arc<Wire> {
        Wire::new(None, queue_limit_bytes)
    }

    /// Offers the fan-out's `delivery`: written to the socket at once when nothing may
    /// come before it and `cursor` (the session's place in the delivery's room) allows,
    /// else queued for the session task. No await and no wake-up on the direct path.
    pub fn deliver(&self, delivery: &Arc<Delivery>, cursor: Option<&RoomCursor>) -> Offered {
        let bytes = delivery.frame.len();
        let mut outbox = lock(&self.outbox);
        if self.direct_allowed(&outbox) {
            let mut state = cursor.map(|c| lock(&c.0));
            match step(&delivery.kind, state.as_deref()) {
                Step::Drop => return Offered::Dropped,
                Step::Queue => {}
                Step::Write => {
                    if !self.charge_or_overflow(&mut outbox, bytes) {
                        return Offered::Refused;
                    }
                    // The bytes are now the connection's, in order: a partial write's
                    // rest waits in `unsent`, still charged.
                    self.send_locked(&mut outbox, delivery.frame.clone());
                    if let (DeliveryKind::Room { offset, .. }, Some(state)) =
                        (&delivery.kind, state.as_deref_mut())
                    {
                        state.last = *offset;
                    }
                    return Offered::Written;
                }
            }
        }
        if !self.charge_or_overflow(&mut outbox, bytes) {
            return Offered::Refused;
        }
        outbox.queue.push_back(Outbound::Deliver(delivery.clone()));
        drop(outbox);
        self.waker.wake();
        Offered::Queued
    }

    /// Queues `out` of `bytes` bytes for the session task, within the budget (false when
    /// over it: the session is then closed as a slow consumer).
    pub fn enqueue(&self, out: Outbound, bytes: usize) -> bool {
        let mut outbox = lock(&self.outbox);
        if !self.charge_or_overflow(&mut outbox, bytes) {
            return false;
        }
        outbox.queue.push_back(out);
        drop(outbox);
        self.waker.wake();
        true
    }

    /// Control messages bypass the byte bound: they are tiny and must always arrive.
    pub fn control(&self, out: Outbound) {
        lock(&self.outbox).queue.push_back(out);
        self.waker.wake();
    }

    /// Counts `bytes` the session is about to write itself (a replay frame) against the
    /// budget, as queued frames are; give them back with [`Wire::written`]. On overflow
    /// nothing is counted and the session is marked overflowed.
    pub fn reserve(&self, bytes: usize) -> bool {
        self.charge(bytes) == Charge::Counted
    }

    /// The session wrote a frame of `bytes` bytes that was counted against the budget.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// The session task writes `bytes` of its own, after everything already handed to
    /// the socket; [`Sent::Pending`] means it must [`Wire::flush`] before going on.
    pub fn write_own(&self, bytes: Bytes) -> Sent {
        // Counted like every byte bound for the socket until the kernel has it, but never
        // refused: the session's own frames are replies and notices that must go out.
        self.queued_bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        let mut outbox = lock(&self.outbox);
        self.send_locked(&mut outbox, bytes)
    }

    /// Writes as much of `unsent` as the socket takes now.
    pub fn flush(&self) -> Sent {
        let Some(socket) = &self.socket else {
            return Sent::Broken;
        };
        let mut outbox = lock(&self.outbox);
        if outbox.broken {
            return Sent::Broken;
        }
        while let Some(front) = outbox.unsent.front_mut() {
            match socket.try_write(front) {
                Ok(n) => {
                    self.written(n);
                    if n == front.len() {
                        outbox.unsent.pop_front();
                    } else {
                        let _ = front.split_to(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Sent::Pending,
                Err(_) => {
                    outbox.broken = true;
                    return Sent::Broken;
                }
            }
        }
        Sent::Done
    }

    /// Writes `unsent` as the socket takes it: ready once all of it is written, or with
    /// an error once the socket failed.
    pub fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.flush() {
                Sent::Done => return Poll::Ready(Ok(())),
                Sent::Broken => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                // Only a wire with a socket has bytes pending.
                Sent::Pending => {
                    if let Some(socket) = &self.socket {
                        ready!(socket.poll_write_ready(cx))?;
                    }
                }
            }
        }
    }

    /// The session task starts writing frames that live traffic must not overtake.
    pub fn hold(&self) {
        lock(&self.outbox).session_writing = true;
    }

    /// Ends the connection now, as closing the socket would: the socket is shared, and
    /// a handle kept a little longer elsewhere (a drain's list of sessions) must not
    /// keep the client waiting for the end of the stream.
    pub fn shut_down(&self) {
        self.close();
        if let Some(socket) = &self.socket {
            let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
        }
    }

    /// From now on the fan-out writes nothing more (our close frame is next).
    pub fn close(&self) {
        let mut outbox = lock(&self.outbox);
        outbox.closing = true;
        outbox.session_writing = true;
    }

    fn direct_allowed(&self, outbox: &Outbox) -> bool {
        self.socket.is_some()
            && !outbox.session_writing
            && !outbox.closing
            && !outbox.broken
            && outbox.queue.is_empty()
            && outbox.unsent.is_empty()
    }

    /// Writes `bytes`, already counted against the budget, after whatever is unsent;
    /// called with the lock held, so frames from the fan-out and the session task never
    /// interleave. Bytes the socket does not take stay counted until flushed, and wake
    /// the session task.
    fn send_locked(&self, outbox: &mut Outbox, bytes: Bytes) -> Sent {
        let charged = bytes.len();
        let socket = match &self.socket {
            Some(socket) if !outbox.broken => socket,
            _ => {
                self.written(charged);
                return Sent::Broken;
            }
        };
        if !outbox.unsent.is_empty() {
            outbox.unsent.push_back(bytes);
            return Sent::Pending;
        }
        let rest = match socket.try_write(&bytes) {
            Ok(n) if n == bytes.len() => {
                self.written(charged);
                return Sent::Done;
            }
            Ok(n) => {
                self.written(n);
                bytes.slice(n..)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
            Err(_) => {
                self.written(charged);
                outbox.broken = true;
                self.waker.wake();
                return Sent::Broken;
            }
        };
        outbox.unsent.push_back(rest);
        self.waker.wake();
        Sent::Pending
    }

    /// Charges `bytes` against the budget; on overflow queues the slow-consumer marker
    /// and wakes a session blocked on a write.
    fn charge_or_overflow(&self, outbox: &mut Outbox, bytes: usize) -> bool {
        match self.charge(bytes) {
            Charge::Counted => true,
            Charge::Overflowed => {
                outbox.queue.push_back(Outbound::Overflowed);
                self.waker.wake();
                self.overflow_notify.notify_one();
                false
            }
            Charge::AlreadyOverflowed => false,
        }
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
}

/// The session task's end of its wire: queued items come out in the order they were
/// queued, and taking one stops the direct path until [`Inbox::settle`].
#[derive(Debug)]
pub struct Inbox(pub Arc<Wire>);

impl Inbox {
    /// The next queued item, if any.
    pub fn try_recv(&self) -> Option<Outbound> {
        lock(&self.0.outbox).pop()
    }

    /// The session task has written everything it took: the fan-out may write directly
    /// again once the queue and `unsent` are empty.
    pub fn settle(&self) {
        lock(&self.0.outbox).session_writing = false;
    }

    /// Waits for the next queued item, or [`Outbound::Flush`] when the queue is empty and
    /// bytes wait for the socket (not once the session is closing: it flushes itself).
    pub async fn recv(&self) -> Outbound {
        std::future::poll_fn(|cx| {
            // Each item taken spends the task's cooperative budget, as with tokio's own
            // channels: a session whose queue never empties still yields in time.
            let budget = ready!(tokio::task::coop::poll_proceed(cx));
            if let Some(out) = self.next_item() {
                budget.made_progress();
                return Poll::Ready(out);
            }
            // Registered before the second look, so a push in between still wakes us.
            self.0.waker.register(cx.waker());
            let out = self.next_item();
            if out.is_some() {
                budget.made_progress();
            }
            out.map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn next_item(&self) -> Option<Outbound> {
        let mut outbox = lock(&self.0.outbox);
        if let Some(out) = outbox.pop() {
            return Some(out);
        }
        let must_flush = !outbox.unsent.is_empty() || outbox.broken;
        (must_flush && !outbox.closing).then_some(Outbound::Flush)
    }
}

/// The client's side of the socket as tungstenite reads it: reads come from the socket,
/// writes (its pongs and close frames) go through the wire, in order with everything else.
#[derive(Debug)]
pub struct ClientIo(pub Arc<Wire>);

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(socket) = &self.0.socket else {
            return Poll::Ready(Ok(()));
        };
        loop {
            ready!(socket.poll_read_ready(cx))?;
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.write_own(Bytes::copy_from_slice(buf)) {
            Sent::Broken => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Sent::Done | Sent::Pending => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flushed(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// A server-to-client text frame: FIN, opcode 1, unmasked (RFC 6455, 5.2).
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_text_frame(&mut out, payload);
    out.freeze()
}

/// Appends a text frame carrying `payload` to `out` (a batch of frames for one write).
pub fn put_text_frame(out: &mut BytesMut, payload: &[u8]) {
    let len = payload.len();
    out.reserve(len + 10);
    out.put_u8(0x81);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
}

/// A ping with an empty payload.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::FrameHeader;

    fn parse(frame: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(frame);
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("valid header")
            .expect("complete header");
        let start = cursor.position() as usize;
        assert_eq!(frame.len() - start, len as usize, "length field");
        (header, frame[start..].to_vec())
    }

    #[test]
    fn text_frames_use_each_length_encoding_and_tungstenite_reads_them() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let payload = vec![b'x'; len];
            let framed = text_frame(&payload);
            let expected_header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(framed.len(), expected_header + len, "len {len}");
            let (header, body) = parse(&framed);
            assert!(header.is_final);
            assert!(header.mask.is_none(), "server frames are unmasked");
            assert_eq!(
                header.opcode,
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Text
                )
            );
            assert_eq!(body, payload);
        }
        let (ping, body) = parse(&ping_frame());
        assert!(body.is_empty());
        assert_eq!(
            ping.opcode,
            tungstenite::protocol::frame::coding::OpCode::Control(
                tungstenite::protocol::frame::coding::Control::Ping
            )
        );
    }

    fn room(offset: u64, epoch: &str) -> DeliveryKind {
        DeliveryKind::Room {
            room: "r".into(),
            epoch: epoch.into(),
            offset,
            published_us: 0,
        }
    }

    #[test]
    fn the_fan_out_writes_only_the_next_offset_of_a_live_cursor() {
        let live = CursorState {
            epoch: Some("e".into()),
            last: 5,
            presence: false,
        };
        assert_eq!(step(&room(6, "e"), Some(&live)), Step::Write);
        assert_eq!(step(&room(5, "e"), Some(&live)), Step::Drop, "seen");
        assert_eq!(step(&room(7, "e"), Some(&live)), Step::Queue, "gap");
        assert_eq!(step(&room(6, "f"), Some(&live)), Step::Queue, "epoch");
        let joining = CursorState::default();
        assert_eq!(step(&room(1, "e"), Some(&joining)), Step::Queue);
        let presence = DeliveryKind::Presence { room: "r".into() };
        assert_eq!(step(&presence, Some(&live)), Step::Drop);
        let sees = CursorState {
            presence: true,
            ..live
        };
        assert_eq!(
            step(&presence, Some(&sees)),
            Step::Queue,
            "batched by the session"
        );
        assert_eq!(step(&presence, Some(&joining)), Step::Queue);
        assert_eq!(step(&DeliveryKind::Direct, None), Step::Write);
        let resync = DeliveryKind::Resync { room: "r".into() };
        assert_eq!(step(&resync, Some(&sees)), Step::Queue);
    }
    fn detached_pair(limit: usize) -> (Arc<Wire>, Inbox) {
        let wire = Wire::detached(limit);
        (wire.clone(), Inbox(wire))
    }

    #[test]
    fn outbound_stays_small() {
        assert!(std::mem::size_of::<Outbound>() <= 16);
    }

    fn notice(text: &str) -> Outbound {
        Outbound::Deliver(Arc::new(Delivery {
            kind: DeliveryKind::Direct,
            frame: Bytes::copy_from_slice(text.as_bytes()),
        }))
    }

    fn frame_text(out: Option<Outbound>) -> String {
        match out {
            Some(Outbound::Deliver(d)) => String::from_utf8_lossy(&d.frame).into_owned(),
            Some(Outbound::Reconnect { .. }) => "reconnect".into(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn frames_and_control_messages_come_out_in_queue_order() {
        let (s, inbox) = detached_pair(1024);
        assert!(s.enqueue(notice("a"), 1));
        s.control(Outbound::Reconnect { after_ms: 0 });
        assert!(s.enqueue(notice("b"), 1));
        let got: Vec<String> = (0..3).map(|_| frame_text(inbox.try_recv())).collect();
        assert_eq!(got, ["a", "reconnect", "b"]);
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn an_emptied_queue_gives_a_burst_s_memory_back() {
        let (s, inbox) = detached_pair(1 << 20);
        let capacity = || lock(&s.outbox).queue.capacity();
        assert_eq!(capacity(), 0, "nothing allocated before the first frame");
        for _ in 0..1000 {
            assert!(s.enqueue(notice("x"), 1));
        }
        assert!(capacity() >= 1000);
        while inbox.try_recv().is_some() {}
        assert_eq!(capacity(), 0);
        // A small queue is kept for reuse.
        s.enqueue(notice("x"), 1);
        s.enqueue(notice("y"), 1);
        assert_eq!(frame_text(inbox.try_recv()), "x");
        assert!(capacity() > 0 && capacity() <= QUEUE_KEEP_SLOTS);
    }

    #[tokio::test]
    async fn a_waiting_session_is_woken_by_the_next_frame() {
        let (s, inbox) = detached_pair(1024);
        let waiting = tokio::spawn(async move {
            let first = inbox.recv().await;
            let second = inbox.recv().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        s.enqueue(notice("late"), 4);
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
        let (s, inbox) = detached_pair(1024);
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
        let (s, _rx) = detached_pair(10);
        let frame = |t: &str| {
            Outbound::Deliver(Arc::new(Delivery {
                kind: DeliveryKind::Direct,
                frame: Bytes::copy_from_slice(t.as_bytes()),
            }))
        };
        assert!(s.enqueue(frame("12345"), 5));
        assert!(s.enqueue(frame("12345"), 5));
        assert!(!s.enqueue(frame("1"), 1));
        assert!(s.is_overflowed());
        s.written(5);
        assert!(!s.enqueue(frame("1"), 1), "overflow is final");
        assert_eq!(s.queued_bytes(), 5);
    }

    // The direct path against a real loopback socket whose buffers are kept small, so
    // that a client that does not read fills them after a few frames.

    use std::future::Future;
    use std::sync::atomic::AtomicUsize as Count;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};

    const SMALL_BUFFER: u32 = 4096;

    /// A settled wire (the session wrote its welcome) and the client's end of its socket.
    async fn connected(queue_limit: usize) -> (Arc<Wire>, Inbox, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(SMALL_BUFFER).expect("rcvbuf");
        let (client, accepted) = tokio::join!(
            client.connect(listener.local_addr().expect("addr")),
            listener.accept()
        );
        let (server, _) = accepted.expect("accept");
        socket2::SockRef::from(&server)
            .set_send_buffer_size(SMALL_BUFFER as usize)
            .expect("sndbuf");
        // The reactor learns the new socket is writable; until then a direct write
        // would meet a (correct, but here unwanted) WouldBlock.
        server.writable().await.expect("writable");
        let wire = Wire::new(Some(server), queue_limit);
        let inbox = Inbox(wire.clone());
        inbox.settle();
        (wire, inbox, client.expect("connect"))
    }

    fn live_cursor() -> RoomCursor {
        let cursor = RoomCursor::default();
        cursor.set(CursorState {
            epoch: Some("e".into()),
            last: 0,
            presence: true,
        });
        cursor
    }

    /// Room message `offset`, its payload `offset` in decimal padded to `size` bytes.
    fn message(offset: u64, size: usize) -> Arc<Delivery> {
        let mut payload = format!("{offset:0size$}").into_bytes();
        payload.truncate(size.max(1));
        let kind = DeliveryKind::Room {
            room: "r".into(),
            epoch: "e".into(),
            offset,
            published_us: 0,
        };
        Arc::new(Delivery::text(kind, &payload))
    }

    /// What a session task does with its inbox (write what it took, flush), until the
    /// queue and the unsent bytes are empty.
    async fn drain_like_a_session(wire: &Wire, inbox: &Inbox, cursor: &RoomCursor) {
        while let Some(out) = inbox.next_item() {
            match out {
                Outbound::Deliver(d) => {
                    if let DeliveryKind::Room { offset, .. } = d.kind {
                        cursor.advance(offset);
                    }
                    wire.written(d.frame.len());
                    assert_ne!(wire.write_own(d.frame.clone()), Sent::Broken);
                }
                Outbound::Flush => {}
                other => panic!("unexpected {other:?}"),
            }
            std::future::poll_fn(|cx| wire.poll_flushed(cx))
                .await
                .expect("the socket took every byte");
        }
        inbox.settle();
    }

    /// The client reads until it has `want` frames (or the stream ends); returns each
    /// frame's opcode and payload.
    async fn read_frames(client: &mut TcpStream, want: usize) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            while let Some((frame, used)) = split_frame(&bytes) {
                frames.push(frame);
                bytes.drain(..used);
            }
            if frames.len() >= want {
                return frames;
            }
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut chunk))
                    .await
                    .expect("client read timed out")
                    .expect("client read");
            if read == 0 {
                assert!(bytes.is_empty(), "stream ended inside a frame");
                return frames;
            }
            bytes.extend_from_slice(&chunk[..read]);
        }
    }

    fn split_frame(bytes: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
        let (first, second) = (*bytes.first()?, *bytes.get(1)?);
        let (len, header) = match second {
            126 => (
                u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = bytes.get(header..header + len)?.to_vec();
        Some(((first, payload), header + len))
    }

    fn offsets(frames: &[(u8, Vec<u8>)]) -> Vec<u64> {
        frames
            .iter()
            .map(|(_, p)| {
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .expect("a numbered payload")
            })
            .collect()
    }

    /// Counts wake-ups of the task registered on the inbox.
    struct Wakes(Count);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_delivery_to_a_free_socket_is_written_with_no_wake_up() {
        let (wire, inbox, mut client) = connected(1 << 20).await;
        let wakes = Arc::new(Wakes(Count::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut recv = std::pin::pin!(inbox.recv());
        assert!(recv
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        let cursor = live_cursor();
        for offset in 1..=50 {
            assert_eq!(
                wire.deliver(&message(offset, 20), Some(&cursor)),
                Offered::Written
            );
        }
        assert_eq!(
            wire.deliver(&message(50, 20), Some(&cursor)),
            Offered::Dropped,
            "an offset already written"
        );
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "the session task slept on"
        );
        assert_eq!(wire.queued_bytes(), 0);
        assert_eq!(cursor.get().last, 50);
        let frames = read_frames(&mut client, 50).await;
        assert!(frames.iter().all(|(op, _)| *op == 0x81));
        assert_eq!(offsets(&frames), (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn partial_writes_and_eagain_fall_back_to_the_queue_in_order_and_back() {
        let (wire, inbox, mut client) = connected(64 << 20).await;
        let cursor = live_cursor();
        let size = 3000;
        // The client reads nothing: the socket fills, a write goes in part, and the
        // next ones meet EAGAIN behind it.
        let mut offset = 0;
        let mut queued_from = None;
        while offset < 20_000 {
            offset += 1;
            match wire.deliver(&message(offset, size), Some(&cursor)) {
                Offered::Written => assert!(queued_from.is_none(), "direct after queued"),
                Offered::Queued => {
                    queued_from.get_or_insert(offset);
                }
                other => panic!("unexpected {other:?}"),
            }
            if queued_from.is_some_and(|q| offset >= q + 20) {
                break;
            }
        }
        let queued_from = queued_from.expect("the socket filled");
        {
            let outbox = lock(&wire.outbox);
            assert!(!outbox.unsent.is_empty(), "the rest of a frame waits");
            assert_eq!(outbox.queue.len() as u64, offset - queued_from + 1);
        }
        let waiting = wire.queued_bytes();
        assert!(
            waiting > size * 20,
            "queued and unsent bytes are charged: {waiting}"
        );
        // The session task, woken by the first frame that did not fit, writes the rest
        // while the client reads.
        let reader = tokio::spawn(async move {
            let frames = read_frames(&mut client, offset as usize).await;
            (frames, client)
        });
        drain_like_a_session(&wire, &inbox, &cursor).await;
        let (frames, client) = reader.await.expect("reader");
        let mut client = client;
        assert_eq!(offsets(&frames), (1..=offset).collect::<Vec<_>>());
        assert_eq!(wire.queued_bytes(), 0, "every charged byte given back");
        assert_eq!(cursor.get().last, offset);
        // Queue and unsent empty again: the fan-out writes directly once more (what
        // does not fit waits for the session, as before).
        let reader = tokio::spawn(async move { read_frames(&mut client, 3).await });
        for next in offset + 1..=offset + 3 {
            assert_eq!(
                wire.deliver(&message(next, size), Some(&cursor)),
                Offered::Written
            );
        }
        drain_like_a_session(&wire, &inbox, &cursor).await;
        let frames = reader.await.expect("reader");
        assert_eq!(
            offsets(&frames),
            (offset + 1..=offset + 3).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_overflows_the_budget_on_the_direct_path_too() {
        let (wire, _inbox, _client) = connected(64 * 1024).await;
        let cursor = live_cursor();
        let mut refused = false;
        for offset in 1..=1000 {
            if wire.deliver(&message(offset, 3000), Some(&cursor)) == Offered::Refused {
                refused = true;
                break;
            }
        }
        assert!(refused && wire.is_overflowed());
        assert!(wire.queued_bytes() <= 64 * 1024);
        assert!(matches!(
            lock(&wire.outbox).queue.back(),
            Some(Outbound::Overflowed)
        ));
    }

    #[tokio::test]
    async fn nothing_follows_the_close_frame_however_the_fan_out_races_it() {
        for round in 0..20 {
            let (wire, _inbox, mut client) = connected(64 << 20).await;
            let fan_out = {
                let wire = wire.clone();
                std::thread::spawn(move || {
                    let cursor = live_cursor();
                    let mut written = 0;
                    for offset in 1..=200 {
                        if wire.deliver(&message(offset, 10), Some(&cursor)) == Offered::Written {
                            written += 1;
                        }
                    }
                    written
                })
            };
            if round % 2 == 1 {
                tokio::task::yield_now().await;
            }
            // What the session does when it stops: no more direct writes, then its close.
            wire.close();
            let close = Bytes::from_static(&[0x88, 0x02, 0x03, 0xe8]);
            assert_eq!(wire.write_own(close), Sent::Done);
            let written = fan_out.join().expect("fan-out thread");
            wire.shut_down();
            let frames = read_frames(&mut client, usize::MAX).await;
            let (last, before) = frames.split_last().expect("the close frame arrived");
            assert_eq!(last.0, 0x88, "round {round}: the close frame is last");
            assert_eq!(
                before.len(),
                written,
                "round {round}: every direct write arrived"
            );
            assert_eq!(offsets(before), (1..=written as u64).collect::<Vec<_>>());
        }
    }
}
