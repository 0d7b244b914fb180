//! The backplane joins chat-server nodes: it stores room history, assigns offsets, fans
//! messages out to every node that hosts a member, tracks presence and routes direct
//! messages. Sessions only see the [`Backplane`] trait, so the in-memory default and the
//! Redis implementation are interchangeable; both deliver to this node's sessions by
//! calling the [`crate::hub::Hub`]'s `deliver_*` methods directly.

pub mod idempotency;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use crate::protocol::{ErrorCode, Position};
pub use crate::user_command::UserCommand;

/// Why the backplane could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// Sessions answer `unavailable`: try again later.
    #[error("the backplane is unavailable: {0}")]
    Unavailable(String),
    /// The room cap is reached and every room has members: sessions answer `room_limit`.
    #[error("no room can be added: {0}")]
    RoomLimit(String),
    /// The user already has the most sessions allowed: the session is refused.
    #[error("this user already has {0} sessions open, the most allowed")]
    TooManySessions(usize),
}

impl BackplaneError {
    /// The error code a client is sent.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackplaneError::Unavailable(_) => ErrorCode::Unavailable,
            BackplaneError::RoomLimit(_) => ErrorCode::RoomLimit,
            BackplaneError::TooManySessions(_) => ErrorCode::TooManySessions,
        }
    }
}

/// Bounds every backplane enforces, so no client can grow the chat's memory (or Redis')
/// without limit. In memory they hold per node; over Redis, for the whole cluster.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most rooms with history or members; idle rooms are forgotten first.
    pub max_rooms: usize,
    /// History bytes over all rooms; the least recently active rooms' oldest messages go
    /// first.
    pub max_history_bytes: usize,
    /// Most sessions one user may have open; 0: no cap.
    pub max_sessions_per_user: usize,
    /// Most rooms one user may bring into existence per hour (rooms are created by the
    /// first join); 0: no cap. With the room cap, this keeps one user from making every
    /// other idle room be forgotten.
    pub max_new_rooms_per_user_per_hour: usize,
}

/// The backplane's connection state, as `/admin/status` reports it. Never holds a
/// secret: error texts have the Redis password removed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackplaneStatus {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Connected to what it needs (always true in memory; for Redis, the command and the
    /// pub/sub connections are both up).
    pub connected: bool,
    /// The last connection-level failure (e.g. authentication or certificate
    /// verification refused), kept after recovery; `None` if there was none.
    pub last_error: Option<String>,
    /// When `last_error` happened, milliseconds since the Unix epoch.
    pub last_error_unix_ms: Option<u64>,
}

/// Most messages a snapshot or a history page carries. A join replays a long gap page by
/// page, so a session holds at most one page of history in memory; a page of maximum-size
/// messages (64 × about 4.3 KB) is well under the default send queue.
pub const REPLAY_PAGE_MESSAGES: usize = 64;

/// A room's state for a joining session.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    pub epoch: String,
    /// Last assigned offset (0 when the room has no messages yet).
    pub head: u64,
    /// False when the client's `since` gap could not be replayed whole.
    pub recovered: bool,
    /// The replay's first page: at most [`REPLAY_PAGE_MESSAGES`] frames, in offset order,
    /// from the one after `since`. The rest, up to `head`, comes from
    /// [`Backplane::history_page`].
    pub replay: Vec<Utf8Bytes>,
    /// The first page of the users present in the room (cluster-wide), by name: at most
    /// [`crate::protocol::MEMBERS_PAGE`].
    pub members: Vec<String>,
    /// How many users are present in the room.
    pub member_count: u64,
}

/// The operations sessions need. Implementations must deliver a room's messages to the
/// hub in offset order: sessions rely on it to join replay and live traffic without a
/// gap or a duplicate.
#[async_trait]
pub trait Backplane: Send + Sync {
    /// Short name for logs and `/admin/status`.
    fn kind(&self) -> &'static str;
    /// Whether the backplane can currently accept publishes (readiness).
    fn is_ready(&self) -> bool;
    /// Connection state and the last failure, for `/admin/status`.
    fn status(&self) -> BackplaneStatus {
        BackplaneStatus {
            kind: self.kind(),
            connected: self.is_ready(),
            last_error: None,
            last_error_unix_ms: None,
        }
    }
    /// A local session joined `room`: make sure this node receives its traffic before
    /// returning. Reference-counted per node; on error nothing was counted.
    async fn subscribe_room(&self, room: &str) -> Result<(), BackplaneError>;
    /// A local session left `room` (after a successful `subscribe_room`). Returns without
    /// waiting for the backplane: a disconnect need not wait for it.
    async fn unsubscribe_room(&self, room: &str) -> Result<(), BackplaneError>;
    /// Like `unsubscribe_room`, but returns only once this node no longer receives the
    /// room's traffic (when this was its last local member): an explicit `leave` answers
    /// `left` after it.
    async fn unsubscribe_room_confirmed(&self, room: &str) -> Result<(), BackplaneError> {
        self.unsubscribe_room(room).await
    }
    /// A session of `user` connected to this node (user → node registry for DMs).
    /// `TooManySessions` when the user is at the per-user cap: nothing was counted.
    async fn register_user(&self, user: &str) -> Result<(), BackplaneError>;
    /// A session of `user` on this node ended (after a successful `register_user`).
    async fn unregister_user(&self, user: &str) -> Result<(), BackplaneError>;
    /// Appends a message to the room's history and fans it out; returns its offset.
    async fn publish(&self, room: &str, from: &str, body: &str) -> Result<u64, BackplaneError>;
    /// Current epoch, head, members and the replay for `since` (a client's position).
    async fn snapshot(
        &self,
        room: &str,
        since: Option<&Position>,
    ) -> Result<RoomSnapshot, BackplaneError>;
    /// [`Backplane::snapshot`] for a position this node delivered to a session, so one
    /// beyond the room's head means the history went back in time (Redis lost messages it
    /// had acknowledged), not a client's mistake: a backplane whose history can go back
    /// starts a new epoch then, so no later message reuses an offset the session holds.
    async fn snapshot_from_cursor(
        &self,
        room: &str,
        cursor: &Position,
    ) -> Result<RoomSnapshot, BackplaneError> {
        self.snapshot(room, Some(cursor)).await
    }
    /// The next page of a replay: at most [`REPLAY_PAGE_MESSAGES`] frames of `room` with
    /// offsets `after + 1 ..= upto` in `epoch`, with their offsets. `None` when history no
    /// longer holds offset `after + 1` of that epoch (trimmed or replaced meanwhile).
    async fn history_page(
        &self,
        room: &str,
        epoch: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<Vec<(u64, Utf8Bytes)>>, BackplaneError>;
    /// A page of `room`'s members by name (at most [`crate::protocol::MEMBERS_PAGE`]),
    /// after `after` (from the first when `None`), and how many members it has.
    async fn members_page(
        &self,
        room: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, u64), BackplaneError>;
    /// A session of `user` joined `room`; announces presence when the user is new there.
    async fn presence_join(&self, room: &str, user: &str) -> Result<(), BackplaneError>;
    /// A session of `user` left `room`; announces presence when it was the user's last.
    async fn presence_leave(&self, room: &str, user: &str) -> Result<(), BackplaneError>;
    /// Whether `user` has a session in `room` anywhere in the cluster (the DM policy
    /// `shared_room` asks this about the rooms the sender is in).
    async fn is_present(&self, room: &str, user: &str) -> Result<bool, BackplaneError>;
    /// Sends a direct message to every session of `to`. Returns how many sessions got it
    /// (in memory), or how many nodes' pub/sub connections took it (Redis): 0 means
    /// nobody has it, anything above 0 that it was delivered or is on its way.
    async fn send_direct(&self, from: &str, to: &str, body: &str) -> Result<usize, BackplaneError>;

    // What the server API needs besides the above: cluster-wide, so any node answers.

    /// [`Backplane::publish`] with an idempotency key: a key already used for `room`
    /// within `key_ttl` publishes nothing and returns the first publish's position.
    async fn publish_once(
        &self,
        room: &str,
        from: &str,
        body: &str,
        key: Option<&str>,
        key_ttl: std::time::Duration,
    ) -> Result<Published, BackplaneError>;
    /// Sends `command` to every session of `user`, on whichever nodes hold them. Returns
    /// how many sessions (in memory) or nodes (Redis) it reached; 0: the user has none.
    async fn send_user_command(
        &self,
        user: &str,
        command: &UserCommand,
    ) -> Result<usize, BackplaneError>;
    /// The nodes holding sessions of `user`, and how many each holds.
    async fn user_sessions(&self, user: &str) -> Result<Vec<NodeSessions>, BackplaneError>;
    /// A room's epoch, head and member count; `None` when the room does not exist (it is
    /// not created by asking).
    async fn room_info(&self, room: &str) -> Result<Option<RoomInfo>, BackplaneError>;
    /// The names of every room there is (with history or members): at most the room cap.
    async fn room_names(&self) -> Result<Vec<String>, BackplaneError>;
    /// Rooms by name after `after`, at most `limit`.
    async fn rooms_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomInfo>, BackplaneError> {
        let mut names = self.room_names().await?;
        names.retain(|n| after.is_none_or(|a| n.as_str() > a));
        names.sort_unstable();
        let mut page = Vec::with_capacity(limit.min(names.len()));
        for name in names.into_iter().take(limit) {
            // A room forgotten since it was listed is left out.
            if let Some(info) = self.room_info(&name).await? {
                page.push(info);
            }
        }
        Ok(page)
    }
    /// At most `limit` messages of `room` with offsets above `after`, from what history
    /// still holds; `None` when the room does not exist.
    async fn history_read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<HistoryRead>, BackplaneError>;
}

/// A message published through the server API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub epoch: String,
    pub offset: u64,
    /// The idempotency key had been used for this room: nothing was published again and
    /// `epoch` and `offset` are the first publish's.
    pub duplicate: bool,
}

/// A room as the server API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub room: String,
    pub epoch: String,
    /// Last assigned offset (0: no message yet).
    pub head: u64,
    /// Users present, over the cluster.
    pub members: u64,
}

/// A page of a room's history for the server API.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    pub epoch: String,
    pub head: u64,
    /// Message frames (as clients receive them) with their offsets, in offset order.
    /// The first may come after the offset asked for when history no longer holds it.
    pub messages: Vec<(u64, Utf8Bytes)>,
}

/// Sessions of a user on one node, for the server API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSessions {
    pub node: String,
    pub sessions: u64,
}

/// Shared handle used throughout the server.
pub type SharedBackplane = Arc<dyn Backplane>;
