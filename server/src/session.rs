//! One WebSocket connection: a single task that reads client frames, writes its replies
//! and whatever the fan-out queued for it, enforces the per-connection limits and runs
//! the close handshake. Live traffic that finds nothing ahead of it on the connection is
//! written by the fan-out itself and never wakes this task (`wire`).
//!
//! Joining a room with `since` subscribes first and reads the snapshot second, so every
//! message after the snapshot's head arrives through the queue; the session remembers the
//! last offset it wrote per room (its cursor, which the fan-out reads too) and drops
//! anything at or below it. That is how replay and live traffic meet with no gap and no
//! duplicate. While the session writes anything of its own, the fan-out queues instead of
//! writing, so nothing overtakes a replay.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::admission::Held;
use crate::auth::{Identity, EXP_LEEWAY_SECS};
use crate::backplane::BackplaneError;
use crate::clock::now_us;
use crate::join_hook::Verdict;
use crate::protocol::{
    parse_client_frame, ClientFrame, CloseCode, ErrorCode, FrameError, FrameLimits, Position,
    ServerFrame, MEMBERS_PAGE,
};
use crate::ratelimit::TokenBucket;
use crate::rooms::{DmPolicy, JoinCheck, Member, Pattern, RoomPolicy};
use crate::state::AppState;
use crate::sync::lock;
use crate::upgrade::Reader;
use crate::user_command::UserCommand;
use crate::wire::{
    ping_frame, put_text_frame, text_frame, CursorState, DeliveryKind, Inbox, Outbound, RoomCursor,
    Sent, SessionHandle, Wire,
};

/// Most queued frames written before one flush.
const MAX_BATCH: usize = 256;
/// How long to wait for the client's answer to our close frame.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);
/// Refused frames are themselves limited: a second bucket, refilled at the client's rate
/// and holding this many bursts, pays for each refusal. A client a little over its rate
/// (under twice it) never empties it; one that keeps sending faster does, and is closed
/// as flooding (1008) instead of being answered `rate_limited` without end.
const FLOOD_BURSTS: u32 = 4;
/// Token lifetimes beyond this are treated as this (keeps the timer arithmetic finite).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the session loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// The client sent a close frame (its code, if any) or the stream ended.
    PeerClosed(Option<u16>),
    /// The socket failed (reset, protocol violation).
    Broken,
    SlowConsumer,
    WriteTimeout,
    TooBig,
    Idle,
    /// The token's `exp` passed without a `refresh`.
    TokenExpired,
    /// The client broke the WebSocket protocol (tungstenite refused a frame).
    ProtocolViolation,
    /// A text frame was not valid UTF-8.
    InvalidUtf8,
    /// The client kept sending far over its rate limit.
    Flood,
    /// Drain notice sent: close with 1012 and wait for the client.
    Drained,
    /// Drain deadline: close now.
    Forced,
    /// The user already had the most sessions allowed.
    TooManySessions,
    /// The application disconnected the user (server API) with this code and reason.
    Disconnected {
        code: u16,
        reason: Arc<str>,
    },
}

impl Stop {
    /// The close frame we send, if any.
    fn close(&self, max_frame_bytes: usize) -> Option<(u16, String)> {
        if let Stop::Disconnected { code, reason } = self {
            return Some((*code, reason.to_string()));
        }
        let (code, reason) = match self {
            Stop::PeerClosed(_) | Stop::Broken | Stop::WriteTimeout => None,
            Stop::SlowConsumer => Some((
                CloseCode::SlowConsumer,
                "slow consumer: send queue overflowed; reconnect with backoff".into(),
            )),
            Stop::TooBig => Some((
                CloseCode::TooBig,
                format!("message exceeds {max_frame_bytes} bytes"),
            )),
            Stop::Idle => Some((CloseCode::IdleTimeout, "idle timeout".into())),
            Stop::TokenExpired => Some((
                CloseCode::TokenExpired,
                "token expired; reconnect with a new token".into(),
            )),
            Stop::ProtocolViolation => Some((
                CloseCode::ProtocolError,
                "WebSocket protocol violation".into(),
            )),
            Stop::InvalidUtf8 => Some((
                CloseCode::InvalidUtf8,
                "text frame is not valid UTF-8".into(),
            )),
            Stop::Flood => Some((
                CloseCode::Policy,
                "flooding: frames far over the rate limit".into(),
            )),
            Stop::Drained => Some((CloseCode::ServiceRestart, "node draining; reconnect".into())),
            Stop::Forced => Some((CloseCode::ServiceRestart, "node stopping; reconnect".into())),
            Stop::TooManySessions => Some((
                CloseCode::TooManySessions,
                "too many sessions for this user; close one first".into(),
            )),
            Stop::Disconnected { .. } => None,
        }?;
        Some((code.code(), reason))
    }

    /// Label for `chat_connections_closed_total{code}`.
    fn metric_code(&self, max_frame_bytes: usize) -> String {
        match (self, self.close(max_frame_bytes)) {
            // The application's own codes: one label, so the label set stays bounded.
            (Stop::Disconnected { .. }, _) => "application".into(),
            (_, Some((code, _))) => code.to_string(),
            (Stop::PeerClosed(Some(code)), None) => match code {
                // Client-chosen codes: keep the label set bounded.
                1000..=1015 => code.to_string(),
                _ => "other".into(),
            },
            (Stop::PeerClosed(None), None) => "1005".into(),
            _ => "1006".into(),
        }
    }
}

/// Where a session is in one room's history, and what it may do there.
#[derive(Debug)]
struct Cursor {
    /// The epoch and last offset written, shared with the hub's member entry.
    live: Arc<RoomCursor>,
    policy: RoomPolicy,
    /// What admitted the session, which decides what `refresh` checks again.
    grant: Grant,
}

/// What admitted a session to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    /// The rule alone (public room, the user's own room): nothing to check again.
    Rule,
    /// A pattern in the connection token's `rooms` claim: checked again at `refresh`.
    Token,
    /// A room token: a ticket to enter, checked at `join` only.
    RoomToken,
    /// The join hook: asked again at `refresh`.
    Hook,
}

struct Session {
    state: Arc<AppState>,
    handle: Arc<SessionHandle>,
    /// The client's frames (tungstenite over the connection's socket).
    reader: Reader,
    /// Joined rooms and how far this client has been sent in each.
    rooms: HashMap<Arc<str>, Cursor>,
    bucket: TokenBucket,
    /// Pays for frames refused by `bucket` (see [`FLOOD_BURSTS`]).
    refusals: TokenBucket,
    last_seen: Instant,
    limits: FrameLimits,
    /// The token's `exp` (Unix seconds), for `welcome`; `None` for anonymous users.
    token_exp: Option<u64>,
    anonymous: bool,
    /// Room patterns granted by the current connection token.
    grants: Arc<[Pattern]>,
    /// This connection's place under the per-process cap.
    _slot: Held,
}

/// Runs one accepted WebSocket for `user` until it closes; `slot` is released when it
/// has.
///
/// Every byte of the returned future is held by every idle connection, so the session
/// is built here, before the first await, and boxed: an async fn keeps its arguments
/// and whatever it moves them into, which would hold the socket two or three times.
pub fn run(
    state: Arc<AppState>,
    (wire, reader): (Arc<Wire>, Reader),
    identity: Identity,
    slot: Held,
) -> impl Future<Output = ()> + Send {
    let id = state.next_session_id();
    let handle = SessionHandle::new(id, identity.user.into(), wire.clone());
    let inbox = Inbox(wire);
    let settings = &state.settings;
    let session = Session {
        bucket: TokenBucket::new(settings.rate_per_sec, settings.rate_burst, Instant::now()),
        refusals: TokenBucket::new(
            settings.rate_per_sec,
            settings.rate_burst.saturating_mul(FLOOD_BURSTS),
            Instant::now(),
        ),
        token_exp: identity.expires_at,
        anonymous: identity.anonymous,
        grants: identity.grants,
        limits: FrameLimits {
            max_body_bytes: settings.max_body_bytes,
        },
        state: state.clone(),
        handle,
        reader,
        rooms: HashMap::new(),
        last_seen: Instant::now(),
        _slot: slot,
    };
    Box::new(session).live(inbox)
}

impl Session {
    /// Registers the session, serves it, closes it and unregisters it.
    async fn live(mut self: Box<Self>, inbox: Inbox) {
        let state = self.state.clone();
        state.hub.register(&self.handle);
        let refused = match state.backplane.register_user(&self.handle.user).await {
            Ok(()) => None,
            Err(e @ BackplaneError::TooManySessions(_)) => Some(e),
            Err(e) => {
                tracing::warn!(user = %self.handle.user, error = %e, "user registry update failed; restored on reconnect");
                None
            }
        };
        let registered = refused.is_none();
        state.metrics.connections.inc();
        state.metrics.connections_accepted.inc();
        let stop = match refused {
            Some(e) => {
                // Out of the hub at once: a refused session takes no DMs.
                state.hub.unregister(&self.handle);
                Box::pin(self.refuse(e)).await
            }
            None => self.serve(&inbox).await,
        };
        match stop {
            Stop::SlowConsumer => state.metrics.slow_consumer_closes.inc(),
            Stop::TokenExpired => state.metrics.sessions_expired.inc(),
            _ => {}
        }
        tracing::debug!(session = self.handle.id, user = %self.handle.user, ?stop, "session ending");
        // Boxed, like every path a connection rarely takes, so that an idle connection's
        // task is sized for its serve loop only (see docs/benchmarks.md, idle connections).
        Box::pin(self.finish(&stop, &inbox)).await;
        self.handle.wire.shut_down();
        Box::pin(self.leave_all()).await;
        state.hub.unregister(&self.handle);
        if registered {
            if let Err(e) = state.backplane.unregister_user(&self.handle.user).await {
                tracing::warn!(user = %self.handle.user, error = %e, "user registry update failed");
            }
        }
        state.metrics.connections.dec();
        state
            .metrics
            .connections_closed
            .with_label_values(&[&stop.metric_code(state.settings.max_frame_bytes)])
            .inc();
    }

    /// Tells a session the backplane refused (the per-user cap) why, before it closes.
    async fn refuse(&mut self, e: BackplaneError) -> Stop {
        let _ = self
            .send_error(FrameError::new(e.code(), e.to_string()))
            .await;
        Stop::TooManySessions
    }

    async fn serve(&mut self, inbox: &Inbox) -> Stop {
        let welcome = ServerFrame::Welcome {
            user: &self.handle.user,
            session: &format!("{}-{}", self.state.settings.node_name, self.handle.id),
            node: &self.state.settings.node_name,
            token_exp: self.token_exp,
        }
        .to_json();
        if let Err(stop) = Box::pin(self.write_now(welcome)).await {
            return stop;
        }
        // From here the fan-out may write to the socket itself.
        inbox.settle();
        let ping_every = self.state.settings.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        // One timer for the session's token, moved by each accepted `refresh`.
        let mut expiring = self.token_exp;
        let expiry = tokio::time::sleep(time_left(expiring, now_us()));
        tokio::pin!(expiry);
        loop {
            // Unbiased: a busy room must not starve reading the client (or its pongs).
            tokio::select! {
                out = inbox.recv() => {
                    if let Err(stop) = Box::pin(self.write_batch(out, inbox)).await {
                        return stop;
                    }
                    inbox.settle();
                }
                msg = self.reader.next() => {
                    // Whatever the frame makes the session write (a join's replay
                    // above all), live traffic must not overtake it.
                    self.handle.wire.hold();
                    if let Err(stop) = Box::pin(self.on_socket(msg)).await {
                        return stop;
                    }
                    inbox.settle();
                    if self.token_exp != expiring {
                        expiring = self.token_exp;
                        let left = time_left(expiring, now_us());
                        expiry.as_mut().reset(tokio::time::Instant::now() + left);
                    }
                }
                _ = &mut expiry, if expiring.is_some() => return Stop::TokenExpired,
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > ping_every * 2 {
                        return Stop::Idle;
                    }
                    if let Err(stop) = Box::pin(self.send(ping_frame())).await {
                        return stop;
                    }
                }
            }
        }
    }

    /// Writes `first` and whatever else is already queued, in one socket write where
    /// nothing has to be fetched in between.
    async fn write_batch(&mut self, first: Outbound, inbox: &Inbox) -> Result<(), Stop> {
        let mut next = Some(first);
        let mut taken = 0usize;
        let mut delivered = 0u64;
        let mut batch = BytesMut::new();
        let now = now_us();
        while let Some(out) = next.take() {
            taken += 1;
            if taken < MAX_BATCH {
                next = inbox.try_recv();
            }
            match out {
                Outbound::Deliver(d) => {
                    self.handle.wire.written(d.frame.len());
                    match &d.kind {
                        DeliveryKind::Room {
                            room,
                            epoch,
                            offset,
                            published_us,
                        } => {
                            let Some(cursor) = self.rooms.get(room).map(|c| c.live.clone()) else {
                                continue; // left the room since this was queued
                            };
                            let at = cursor.get();
                            if at.epoch.as_deref() != Some(&**epoch) || *offset > at.last + 1 {
                                // History broke or live traffic skipped offsets (the
                                // backplane reconnected): fill from history first, after
                                // what this batch holds so far.
                                self.send_batch(&mut batch).await?;
                                Box::pin(self.catch_up(room, epoch, offset.saturating_sub(1)))
                                    .await?;
                            }
                            let at = cursor.get();
                            if at.epoch.as_deref() != Some(&**epoch) || *offset <= at.last {
                                // Already replayed, or from an epoch that history has
                                // since replaced (the client was told recovered: false).
                                continue;
                            }
                            cursor.advance(*offset);
                            self.state
                                .metrics
                                .delivery_latency
                                .observe(now.saturating_sub(*published_us) as f64 / 1e6);
                            delivered += 1;
                        }
                        DeliveryKind::Resync { room } => {
                            if self.rooms.contains_key(room) {
                                self.send_batch(&mut batch).await?;
                                Box::pin(self.catch_up_all(room)).await?;
                            }
                            continue;
                        }
                        DeliveryKind::Direct => delivered += 1,
                        DeliveryKind::Presence { room } => {
                            // Queued before a leave or a revoked grant: not for this
                            // session any more.
                            if !self.rooms.get(room).is_some_and(|c| c.policy.presence) {
                                continue;
                            }
                        }
                    }
                    batch.extend_from_slice(&d.frame);
                }
                Outbound::Reconnect { after_ms } => {
                    let notice = ServerFrame::Reconnect {
                        reason: "draining",
                        after_ms,
                    }
                    .to_json();
                    put_text_frame(&mut batch, notice.as_bytes());
                    self.send_batch(&mut batch).await?;
                    return Err(Stop::Drained);
                }
                // What the batch holds is not sent: the client resumes from what it has.
                Outbound::ForceClose => return Err(Stop::Forced),
                Outbound::Overflowed => return Err(Stop::SlowConsumer),
                Outbound::Command(command) => {
                    self.send_batch(&mut batch).await?;
                    Box::pin(self.obey(&command)).await?
                }
                // Bytes wait for the socket: the send below flushes them.
                Outbound::Flush => {}
            }
        }
        self.state.metrics.messages_delivered.inc_by(delivered);
        self.send_batch(&mut batch).await
    }

    async fn on_socket(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), Stop> {
        let msg = match msg {
            None => return Err(Stop::PeerClosed(None)),
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(classify_read_error(e)),
        };
        self.last_seen = Instant::now();
        match msg {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                if !self.charge()? {
                    return Ok(()); // dropped silently: already over the rate limit
                }
                self.send_error(FrameError::new(
                    ErrorCode::Unsupported,
                    "binary frames are not supported; send JSON text frames",
                ))
                .await
            }
            // Control frames count against the rate like any frame (tungstenite has
            // already queued the pong; it keeps only the latest one unsent).
            Message::Ping(_) | Message::Pong(_) => self.charge().map(|_| ()),
            Message::Close(frame) => Err(Stop::PeerClosed(frame.map(|f| f.code.into()))),
            // Raw frames are never returned by a read.
            Message::Frame(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Stop> {
        let parsed = parse_client_frame(text, self.limits);
        if !self.charge()? {
            let client_ref = match &parsed {
                Ok(ClientFrame::Send { client_ref, .. } | ClientFrame::Dm { client_ref, .. }) => {
                    client_ref.as_deref()
                }
                _ => None,
            };
            let err = FrameError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} frames per second (burst {}); this frame was dropped",
                    self.state.settings.rate_per_sec, self.state.settings.rate_burst
                ),
            )
            .with_ref(client_ref);
            return self.send_error(err).await;
        }
        match parsed {
            Err(err) => self.send_error(err).await,
            Ok(frame) => self.dispatch(frame).await,
        }
    }

    /// Takes a rate-limit token for one client frame: false when the frame is over the
    /// rate, and [`Stop::Flood`] when the client keeps sending while refused.
    fn charge(&mut self) -> Result<bool, Stop> {
        let now = Instant::now();
        if self.bucket.try_take(now) {
            Ok(true)
        } else if self.refusals.try_take(now) {
            Ok(false)
        } else {
            Err(Stop::Flood)
        }
    }

    /// `refresh`: a valid token for this user moves the session's expiry to its `exp`.
    async fn refresh(&mut self, token: &str) -> Result<(), Stop> {
        if self.token_exp.is_none() {
            return self
                .send_error(FrameError::new(
                    ErrorCode::TokenRejected,
                    "this session did not start with a token; there is nothing to refresh",
                ))
                .await;
        }
        match self.state.auth.refresh(token, &self.handle.user).await {
            Ok(identity) => {
                let exp = identity.expires_at.unwrap_or_default();
                self.token_exp = Some(exp);
                self.grants = identity.grants;
                self.write_now(ServerFrame::Refreshed { exp }.to_json())
                    .await?;
                Box::pin(self.recheck_grants()).await
            }
            Err(e) => {
                self.send_error(FrameError::new(
                    ErrorCode::TokenRejected,
                    format!("{e}; the session keeps its current token"),
                ))
                .await
            }
        }
    }

    async fn dispatch(&mut self, frame: ClientFrame) -> Result<(), Stop> {
        match frame {
            ClientFrame::Join { room, since, token } => self.join(room, since, token).await,
            ClientFrame::Leave { room } => self.leave(&room).await,
            ClientFrame::Send {
                room,
                body,
                client_ref,
            } => self.publish(&room, &body, client_ref.as_deref()).await,
            ClientFrame::Dm {
                to,
                body,
                client_ref,
            } => self.direct(&to, &body, client_ref.as_deref()).await,
            ClientFrame::Ping {} => self.write_now(ServerFrame::Pong.to_json()).await,
            ClientFrame::Members { room, after } => self.members(&room, after.as_deref()).await,
            ClientFrame::Refresh { token } => self.refresh(&token).await,
            ClientFrame::Auth { .. } => {
                self.send_error(FrameError::new(
                    ErrorCode::AlreadyAuthenticated,
                    "this connection already has an identity; use `refresh` to replace its token",
                ))
                .await
            }
        }
    }

    /// Who this session is, as the room rules see it.
    fn member(&self) -> Member<'_> {
        Member {
            user: &self.handle.user,
            anonymous: self.anonymous,
            grants: &self.grants,
        }
    }

    /// May this session join `room`, and under what policy? Answers the refusal itself.
    async fn admit(
        &mut self,
        room: &str,
        room_token: Option<&str>,
    ) -> Result<Option<(RoomPolicy, Grant)>, Stop> {
        let refusal = match self
            .state
            .settings
            .room_rules
            .check_join(room, self.member())
        {
            JoinCheck::Allowed { policy, by_token } => {
                let grant = if by_token { Grant::Token } else { Grant::Rule };
                return Ok(Some((policy, grant)));
            }
            JoinCheck::Denied(reason) => reason.message(room),
            JoinCheck::NeedsGrant(policy) => {
                if let Some(token) = room_token {
                    match self
                        .state
                        .auth
                        .room_token(token, &self.handle.user, room)
                        .await
                    {
                        Ok(_) => return Ok(Some((policy, Grant::RoomToken))),
                        Err(e) => format!("room `{room}`: room token refused: {e}"),
                    }
                } else {
                    match self.ask_hook(room).await {
                        Some(Verdict::Allow) => return Ok(Some((policy, Grant::Hook))),
                        Some(Verdict::Deny) => {
                            format!("room `{room}`: the application did not grant it")
                        }
                        Some(Verdict::Unavailable(why)) => {
                            self.deny("join");
                            self.send_error(FrameError::new(
                                ErrorCode::Unavailable,
                                format!("room `{room}`: could not ask the application for a grant ({why}); try again"),
                            ))
                            .await?;
                            return Ok(None);
                        }
                        None => format!(
                            "room `{room}` needs a grant: a `rooms` claim in your token, a room token with `join`, or the application's join hook"
                        ),
                    }
                }
            }
        };
        self.deny("join");
        self.send_error(FrameError::new(ErrorCode::Forbidden, refusal))
            .await?;
        Ok(None)
    }

    /// The join hook's answer for this user and `room`; `None` when no hook is set.
    /// (Takes no `&self` across the call: the session's socket is not `Sync`.)
    fn ask_hook(&self, room: &str) -> impl Future<Output = Option<Verdict>> + Send + 'static {
        let state = self.state.clone();
        let user = self.handle.user.clone();
        let room = room.to_owned();
        async move {
            let hook = state.join_hook.as_ref()?;
            Some(hook.ask(&user, &room).await)
        }
    }

    fn deny(&self, action: &str) {
        self.state
            .metrics
            .permission_denials
            .with_label_values(&[action])
            .inc();
    }

    /// Carries out the application's command (server API) for this session's user.
    async fn obey(&mut self, command: &UserCommand) -> Result<(), Stop> {
        match command {
            UserCommand::Disconnect { code, reason } => Err(Stop::Disconnected {
                code: *code,
                reason: reason.as_str().into(),
            }),
            UserCommand::RemoveFromRoom { room } => {
                let Some((room, cursor)) = self.rooms.remove_entry(room.as_str()) else {
                    return Ok(());
                };
                cursor.live.detach();
                leave_room_everywhere(&self.state, &self.handle, &room, true).await;
                self.send_error(FrameError::new(
                    ErrorCode::Removed,
                    format!("room `{room}`: the application removed you; you have left it"),
                ))
                .await?;
                self.write_now(ServerFrame::Left { room: &room }.to_json())
                    .await
            }
        }
    }

    /// After a `refresh`: rooms entered through the old token's grants or the join hook
    /// are checked again; each one no longer granted is left, with `grant_revoked` and
    /// then `left`.
    async fn recheck_grants(&mut self) -> Result<(), Stop> {
        let to_check: Vec<Arc<str>> = self
            .rooms
            .iter()
            .filter(|(_, c)| matches!(c.grant, Grant::Token | Grant::Hook))
            .map(|(r, _)| r.clone())
            .collect();
        for room in to_check {
            let still = match self
                .state
                .settings
                .room_rules
                .check_join(&room, self.member())
            {
                JoinCheck::Allowed { by_token, .. } => {
                    Some(if by_token { Grant::Token } else { Grant::Rule })
                }
                // Only a yes keeps the room: a hook that cannot answer fails closed here
                // too, or a client could keep a withdrawn room by keeping the hook busy.
                JoinCheck::NeedsGrant(_) => match self.ask_hook(&room).await {
                    Some(Verdict::Allow) => Some(Grant::Hook),
                    _ => None,
                },
                JoinCheck::Denied(_) => None,
            };
            match still {
                Some(grant) => {
                    if let Some(c) = self.rooms.get_mut(&room) {
                        c.grant = grant;
                    }
                }
                None => {
                    if let Some(cursor) = self.rooms.remove(&room) {
                        cursor.live.detach();
                    }
                    self.deny("revoked");
                    leave_room_everywhere(&self.state, &self.handle, &room, true).await;
                    self.send_error(FrameError::new(
                        ErrorCode::GrantRevoked,
                        format!(
                            "room `{room}`: no longer granted (by the new token, or by the join hook asked again); you have left it"
                        ),
                    ))
                    .await?;
                    self.write_now(ServerFrame::Left { room: &room }.to_json())
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn join(
        &mut self,
        room: String,
        since: Option<Position>,
        room_token: Option<String>,
    ) -> Result<(), Stop> {
        if self.rooms.contains_key(room.as_str()) {
            return self
                .send_error(FrameError::new(
                    ErrorCode::AlreadyJoined,
                    format!("already in room `{room}`; leave it first to join again"),
                ))
                .await;
        }
        if self.rooms.len() >= self.state.settings.max_rooms_per_connection {
            return self
                .send_error(FrameError::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "a connection may be in at most {} rooms",
                        self.state.settings.max_rooms_per_connection
                    ),
                ))
                .await;
        }
        let Some((policy, grant)) = self.admit(&room, room_token.as_deref()).await? else {
            return Ok(());
        };
        // Without the history permission a `since` replays nothing: the client is told
        // `recovered: false` and continues from the head.
        let history_refused = since.is_some() && !policy.history;
        let since = since.filter(|_| policy.history);
        let room: Arc<str> = room.into();
        let bp = self.state.backplane.clone();
        // Membership first, snapshot second: see the module comment. The cursor is not
        // live until set below, so the fan-out queues the room's traffic meanwhile.
        let live = Arc::new(RoomCursor::default());
        self.state
            .hub
            .join_room(room.clone(), &self.handle, live.clone());
        let user = &self.handle.user;
        let mut subscribed = false;
        let mut present = false;
        let snapshot = async {
            bp.subscribe_room(&room).await?;
            subscribed = true;
            bp.presence_join(&room, user).await?;
            present = true;
            bp.snapshot(&room, since.as_ref()).await
        }
        .await;
        let mut snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => {
                // Undo exactly the steps that succeeded.
                self.state.hub.leave_room(&room, self.handle.id);
                if present {
                    let _ = bp.presence_leave(&room, user).await;
                }
                if subscribed {
                    let _ = bp.unsubscribe_room(&room).await;
                }
                if let BackplaneError::RoomLimit(_) = e {
                    self.state.metrics.rooms_refused.inc();
                }
                return self
                    .send_error(FrameError::new(e.code(), e.to_string()))
                    .await;
            }
        };
        if history_refused {
            snapshot.recovered = false;
            snapshot.replay.clear();
        }
        if !policy.presence {
            snapshot.members.clear();
            snapshot.member_count = 0;
        }
        if since.is_some() || history_refused {
            let result = if snapshot.recovered {
                "recovered"
            } else {
                "not_recovered"
            };
            self.state
                .metrics
                .resumes
                .with_label_values(&[result])
                .inc();
        }
        live.set(CursorState {
            epoch: Some(snapshot.epoch.as_str().into()),
            last: snapshot.head,
            presence: policy.presence,
        });
        self.rooms.insert(
            room.clone(),
            Cursor {
                live,
                policy,
                grant,
            },
        );
        let joined = ServerFrame::Joined {
            room: &room,
            epoch: &snapshot.epoch,
            offset: snapshot.head,
            recovered: snapshot.recovered,
            members: &snapshot.members,
            member_count: snapshot.member_count,
        }
        .to_json();
        self.write_now(joined).await?;
        // Replay only a gap that history holds whole.
        let after = match &since {
            Some(s) if snapshot.recovered => s.offset,
            _ => snapshot.head,
        };
        let epoch: Arc<str> = snapshot.epoch.as_str().into();
        let members = (snapshot.members, snapshot.member_count);
        self.replay(
            &room,
            &epoch,
            after,
            snapshot.head,
            snapshot.replay,
            &members,
        )
        .await
    }

    /// Writes a replay of `room` from the offset after `after` up to `head`: `first` (the
    /// snapshot's first page), then page by page from history. A session holds one page
    /// (at most [`crate::backplane::REPLAY_PAGE_MESSAGES`]) at a time, whatever the gap,
    /// and its frames count against the send queue's budget as they are written, so a
    /// client too slow to take them is closed as a slow consumer, as with live traffic.
    /// If history loses the rest meanwhile (trimmed, or a new epoch), the client is told
    /// `recovered: false` (with `members`, the room's first page and count); if history
    /// cannot be read, it is told `unavailable` (no `ref`: resync, docs/protocol.md).
    async fn replay(
        &mut self,
        room: &Arc<str>,
        epoch: &Arc<str>,
        after: u64,
        head: u64,
        first: Vec<Utf8Bytes>,
        (members, member_count): &(Vec<String>, u64),
    ) -> Result<(), Stop> {
        let mut last = after + first.len() as u64;
        self.write_page(first).await?;
        while last < head {
            let page = match self
                .state
                .backplane
                .history_page(room, epoch, last, head)
                .await
            {
                Ok(Some(page)) if !page.is_empty() => page,
                Ok(_) => {
                    let cut = ServerFrame::Joined {
                        room,
                        epoch,
                        offset: head,
                        recovered: false,
                        members,
                        member_count: *member_count,
                    }
                    .to_json();
                    return self.write_now(cut).await;
                }
                Err(e) => {
                    let err = history_unavailable(room, &e);
                    return self.write_now(err.to_json()).await;
                }
            };
            last = page.last().map_or(head, |(offset, _)| *offset);
            self.write_page(page.into_iter().map(|(_, frame)| frame).collect())
                .await?;
        }
        Ok(())
    }

    /// Writes one replay page, in one socket write, under the send queue's budget: each
    /// frame must fit beside what is queued, so live traffic piling up meanwhile
    /// overflows the budget and closes the session as a slow consumer, exactly as it
    /// would without a replay.
    async fn write_page(&mut self, page: Vec<Utf8Bytes>) -> Result<(), Stop> {
        let count = page.len() as u64;
        let mut batch = BytesMut::new();
        for frame in page {
            let len = frame.len();
            if !self.handle.wire.reserve(len) {
                return Err(Stop::SlowConsumer);
            }
            self.handle.wire.written(len);
            put_text_frame(&mut batch, frame.as_bytes());
        }
        self.send_batch(&mut batch).await?;
        self.state.metrics.messages_delivered.inc_by(count);
        Ok(())
    }

    /// Sends what this client missed in `room` since its cursor, before the live message
    /// (epoch `live_epoch`, offset `before + 1`) that revealed the gap. When the gap is
    /// not in history (or the epoch changed), tells the client with an unsolicited
    /// `joined` carrying `recovered: false` and continues from the live message.
    async fn catch_up(
        &mut self,
        room: &Arc<str>,
        live_epoch: &Arc<str>,
        before: u64,
    ) -> Result<(), Stop> {
        self.fill_from_history(room, Some((live_epoch, before)))
            .await
    }

    /// Catches up after a backplane reconnect, with no live message in hand.
    async fn catch_up_all(&mut self, room: &Arc<str>) -> Result<(), Stop> {
        self.fill_from_history(room, None).await
    }

    /// Shared by both: `live` is the epoch and offset-before of the live message that
    /// revealed the gap, if any.
    async fn fill_from_history(
        &mut self,
        room: &Arc<str>,
        live: Option<(&Arc<str>, u64)>,
    ) -> Result<(), Stop> {
        let Some(cursor) = self.rooms.get(room).map(|c| c.live.clone()) else {
            return Ok(());
        };
        let at = cursor.get();
        let since = Position {
            epoch: at.epoch.as_deref().unwrap_or_default().to_owned(),
            offset: at.last,
        };
        let snapshot = match self
            .state
            .backplane
            .snapshot_from_cursor(room, &since)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let err = history_unavailable(room, &e);
                self.write_now(err.to_json()).await?;
                if let Some((live_epoch, before)) = live {
                    if cursor.get().epoch.as_deref() == Some(&**live_epoch) {
                        cursor.advance(before);
                    }
                }
                return Ok(());
            }
        };
        let epoch: Arc<str> = snapshot.epoch.as_str().into();
        let presence = self.rooms.get(room).is_some_and(|c| c.policy.presence);
        let members = if presence {
            (snapshot.members, snapshot.member_count)
        } else {
            (Vec::new(), 0)
        };
        if snapshot.recovered {
            self.replay(
                room,
                &epoch,
                since.offset,
                snapshot.head,
                snapshot.replay,
                &members,
            )
            .await?;
            cursor.advance(snapshot.head);
            return Ok(());
        }
        // Continue right before the live message only if it belongs to the new epoch.
        let last = match live {
            Some((live_epoch, before)) if **live_epoch == *epoch => before.min(snapshot.head),
            _ => snapshot.head,
        };
        cursor.set(CursorState {
            epoch: Some(epoch.clone()),
            last,
            presence,
        });
        let joined = ServerFrame::Joined {
            room,
            epoch: &epoch,
            offset: last,
            recovered: false,
            members: &members.0,
            member_count: members.1,
        }
        .to_json();
        self.write_now(joined).await
    }

    /// A page of a room's member list, for a member who may see presence.
    async fn members(&mut self, room: &str, after: Option<&str>) -> Result<(), Stop> {
        let Some(cursor) = self.rooms.get(room) else {
            return self.send_error(not_joined(room, None)).await;
        };
        if !cursor.policy.presence {
            self.deny("members");
            return self
                .send_error(FrameError::new(
                    ErrorCode::Forbidden,
                    format!("room `{room}`: its members are not shown to you"),
                ))
                .await;
        }
        match self.state.backplane.members_page(room, after).await {
            Ok((members, member_count)) => {
                let next = (members.len() == MEMBERS_PAGE)
                    .then(|| members.last().map(String::as_str))
                    .flatten();
                let page = ServerFrame::Members {
                    room,
                    members: &members,
                    member_count,
                    next,
                }
                .to_json();
                self.write_now(page).await
            }
            Err(e) => {
                self.send_error(FrameError::new(e.code(), e.to_string()))
                    .await
            }
        }
    }

    async fn leave(&mut self, room: &str) -> Result<(), Stop> {
        let Some(cursor) = self.rooms.remove(room) else {
            return self.send_error(not_joined(room, None)).await;
        };
        cursor.live.detach();
        leave_room_everywhere(&self.state, &self.handle, room, true).await;
        self.write_now(ServerFrame::Left { room }.to_json()).await
    }

    async fn leave_all(&mut self) {
        let rooms: Vec<Arc<str>> = self.rooms.drain().map(|(r, _)| r).collect();
        for room in rooms {
            leave_room_everywhere(&self.state, &self.handle, &room, false).await;
        }
    }

    async fn publish(
        &mut self,
        room: &str,
        body: &str,
        client_ref: Option<&str>,
    ) -> Result<(), Stop> {
        let Some(cursor) = self.rooms.get(room) else {
            return self.send_error(not_joined(room, client_ref)).await;
        };
        if !cursor.policy.publish {
            self.deny("publish");
            return self
                .send_error(
                    FrameError::new(
                        ErrorCode::Forbidden,
                        format!("room `{room}` is read-only for clients"),
                    )
                    .with_ref(client_ref),
                )
                .await;
        }
        match self
            .state
            .backplane
            .publish(room, &self.handle.user, body)
            .await
        {
            Ok(offset) => self.accepted(client_ref, Some(room), Some(offset)).await,
            Err(e) => self.not_sent(e, client_ref).await,
        }
    }

    /// A client message was taken by the backplane: count it and acknowledge it.
    async fn accepted(
        &mut self,
        client_ref: Option<&str>,
        room: Option<&str>,
        offset: Option<u64>,
    ) -> Result<(), Stop> {
        self.state.metrics.messages_received.inc();
        let ack = ServerFrame::Ack {
            client_ref,
            room,
            offset,
        }
        .to_json();
        self.write_now(ack).await
    }

    /// The backplane refused a client message: say so, never drop it silently.
    async fn not_sent(&mut self, e: BackplaneError, client_ref: Option<&str>) -> Result<(), Stop> {
        self.state.metrics.publish_errors.inc();
        self.send_error(
            FrameError::new(e.code(), format!("message not sent: {e}")).with_ref(client_ref),
        )
        .await
    }

    /// Whether the DM policy lets this session write to `to`; answers the refusal itself.
    async fn dm_allowed(&mut self, to: &str, client_ref: Option<&str>) -> Result<bool, Stop> {
        let refusal = match self.state.settings.dm_policy {
            DmPolicy::Anyone => None,
            DmPolicy::Nobody => Some("direct messages are off on this server".to_owned()),
            DmPolicy::SharedRoom => {
                // Only rooms whose presence this session sees: the answer then reveals
                // nothing the member list does not show already.
                let rooms: Vec<Arc<str>> = self
                    .rooms
                    .iter()
                    .filter(|(_, c)| c.policy.presence)
                    .map(|(r, _)| r.clone())
                    .collect();
                let mut shared = false;
                for room in rooms {
                    match self.state.backplane.is_present(&room, to).await {
                        Ok(true) => {
                            shared = true;
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            self.not_sent(e, client_ref).await?;
                            return Ok(false);
                        }
                    }
                }
                (!shared).then(|| {
                    "direct messages go only to users in a room with you; join one they are in"
                        .to_owned()
                })
            }
        };
        let Some(refusal) = refusal else {
            return Ok(true);
        };
        self.deny("dm");
        self.send_error(FrameError::new(ErrorCode::Forbidden, refusal).with_ref(client_ref))
            .await?;
        Ok(false)
    }

    async fn direct(&mut self, to: &str, body: &str, client_ref: Option<&str>) -> Result<(), Stop> {
        let over_rate = lock(&self.state.dm_buckets)
            .try_take(self.handle.user.clone(), Instant::now())
            .is_err();
        if over_rate {
            return self
                .send_error(
                    FrameError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} direct messages per second (burst {}); this one was dropped",
                            self.state.settings.dm_rate_per_sec, self.state.settings.dm_burst
                        ),
                    )
                    .with_ref(client_ref),
                )
                .await;
        }
        if !self.dm_allowed(to, client_ref).await? {
            return Ok(());
        }
        match self
            .state
            .backplane
            .send_direct(&self.handle.user, to, body)
            .await
        {
            Ok(0) => {
                self.send_error(
                    FrameError::new(
                        ErrorCode::UserOffline,
                        format!("user `{to}` has no connected session; message not delivered"),
                    )
                    .with_ref(client_ref),
                )
                .await
            }
            Ok(_) => self.accepted(client_ref, None, None).await,
            Err(e) => self.not_sent(e, client_ref).await,
        }
    }

    async fn send_error(&mut self, err: FrameError) -> Result<(), Stop> {
        let code = err.code.name();
        self.state
            .metrics
            .frame_errors
            .with_label_values(&[&code])
            .inc();
        self.write_now(err.to_json()).await
    }

    async fn write_now(&mut self, text: String) -> Result<(), Stop> {
        self.send(text_frame(text.as_bytes())).await
    }

    /// Writes `bytes` after everything already handed to the socket, and waits until the
    /// socket has taken them all, giving up on overflow or write timeout.
    async fn send(&mut self, bytes: Bytes) -> Result<(), Stop> {
        match self.handle.wire.write_own(bytes) {
            Sent::Done => Ok(()),
            Sent::Broken => Err(Stop::Broken),
            Sent::Pending => self.flush_unsent().await,
        }
    }

    /// Sends a batch of frames (emptying it), or only flushes when it is empty.
    async fn send_batch(&mut self, batch: &mut BytesMut) -> Result<(), Stop> {
        if batch.is_empty() {
            return self.flush_unsent().await;
        }
        self.send(batch.split().freeze()).await
    }

    /// Waits until the socket has taken every byte handed to it.
    async fn flush_unsent(&self) -> Result<(), Stop> {
        let wire = &self.handle.wire;
        // Most flushes finish at once: they need no timer and no overflow waiter. The
        // slow path is boxed so that its timer does not enlarge every connection's task.
        match wire.flush() {
            Sent::Done => Ok(()),
            Sent::Broken => Err(Stop::Broken),
            Sent::Pending => Box::pin(wait_flushed(wire, self.state.settings.write_timeout)).await,
        }
    }

    /// Sends our close frame (if the stop calls for one) and waits briefly for the
    /// client's answer (or a drain force-close).
    async fn finish(&mut self, stop: &Stop, inbox: &Inbox) {
        // Nothing more from the fan-out: the close frame comes last.
        self.handle.wire.close();
        let Some((code, reason)) = stop.close(self.state.settings.max_frame_bytes) else {
            if let Stop::PeerClosed(_) = stop {
                // tungstenite queued the close reply; flushing sends it (clean close).
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_WAIT, self.reader.flush()).await;
            }
            return;
        };
        let close = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }));
        let send_wait = self
            .state
            .settings
            .write_timeout
            .min(CLOSE_HANDSHAKE_WAIT * 5);
        if tokio::time::timeout(send_wait, self.reader.send(close))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
        let id = self.handle.id;
        let wait_for_peer = async {
            loop {
                match self.reader.next().await {
                    Some(Ok(Message::Close(_))) => break "close answered",
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => break "socket error",
                    None => break "socket ended",
                }
            }
        };
        let force = async { while !matches!(inbox.recv().await, Outbound::ForceClose) {} };
        // The client was told to reconnect; it gets the usual close-handshake time to
        // answer, so a client (or proxy) that never answers cannot hold the drain open.
        let outcome = tokio::select! {
            r = tokio::time::timeout(CLOSE_HANDSHAKE_WAIT, wait_for_peer) => r.unwrap_or("close not answered in time"),
            _ = force => "force-closed",
        };
        tracing::debug!(session = id, outcome, "close handshake");
    }
}

/// Waits for the socket to take every unsent byte, bounded by the write timeout and by
/// the send queue overflowing meanwhile.
async fn wait_flushed(wire: &Wire, timeout: Duration) -> Result<(), Stop> {
    let flushed = std::future::poll_fn(|cx| wire.poll_flushed(cx));
    tokio::select! {
        biased;
        r = tokio::time::timeout(timeout, flushed) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Broken),
            Err(_) => Err(Stop::WriteTimeout),
        },
        _ = wire.overflow_notify.notified() => Err(Stop::SlowConsumer),
    }
}

/// Removes a session from a room locally and in the backplane (presence, subscription).
/// `confirm`: return only once this node no longer receives the room's traffic, as an
/// explicit `leave` promises; a disconnect does not wait for that.
async fn leave_room_everywhere(
    state: &AppState,
    handle: &SessionHandle,
    room: &str,
    confirm: bool,
) {
    state.hub.leave_room(room, handle.id);
    let bp = &state.backplane;
    if let Err(e) = bp.presence_leave(room, &handle.user).await {
        tracing::warn!(room, error = %e, "presence leave failed");
    }
    let unsubscribed = if confirm {
        bp.unsubscribe_room_confirmed(room).await
    } else {
        bp.unsubscribe_room(room).await
    };
    if let Err(e) = unsubscribed {
        tracing::warn!(room, error = %e, "unsubscribe failed");
    }
}

/// History could not be read to fill a gap: an `unavailable` without a `ref`, which
/// tells the client to resync (docs/protocol.md).
fn history_unavailable(room: &str, e: &BackplaneError) -> FrameError {
    FrameError::new(
        ErrorCode::Unavailable,
        format!("room `{room}`: history unavailable, messages may be missing: {e}"),
    )
}

fn not_joined(room: &str, client_ref: Option<&str>) -> FrameError {
    FrameError::new(
        ErrorCode::NotJoined,
        format!("not in room `{room}`; join it first"),
    )
    .with_ref(client_ref)
}

fn classify_read_error(e: tungstenite::Error) -> Stop {
    match e {
        tungstenite::Error::Capacity(_) => Stop::TooBig,
        tungstenite::Error::Protocol(p) => match p {
            // The peer went away without a close: nothing to answer.
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake => Stop::Broken,
            _ => Stop::ProtocolViolation,
        },
        tungstenite::Error::Utf8(_) => Stop::InvalidUtf8,
        _ => Stop::Broken,
    }
}

/// How long a token that expires at `exp` (Unix seconds) stays valid after `now_us`,
/// with the leeway the upgrade allowed; capped, and the cap for a session without one.
fn time_left(exp: Option<u64>, now_us: u64) -> Duration {
    let Some(exp) = exp else {
        return MAX_TOKEN_LIFETIME;
    };
    let valid_until_us = exp
        .saturating_add(EXP_LEEWAY_SECS)
        .saturating_mul(1_000_000);
    Duration::from_micros(valid_until_us.saturating_sub(now_us)).min(MAX_TOKEN_LIFETIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_honoured_until_exp_plus_the_leeway() {
        let now_us = 1_000_000_000 * 1_000_000;
        let exp = 1_000_000_000 + 60;
        assert_eq!(
            time_left(Some(exp), now_us),
            Duration::from_secs(60 + EXP_LEEWAY_SECS)
        );
        // Already past: no time left.
        assert_eq!(time_left(Some(exp), (exp + 10) * 1_000_000), Duration::ZERO);
        // Absurd lifetimes and no token at all are capped.
        assert_eq!(time_left(Some(u64::MAX), now_us), MAX_TOKEN_LIFETIME);
        assert_eq!(time_left(None, now_us), MAX_TOKEN_LIFETIME);
    }

    fn size_of_output<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds its task's future: it must not grow back to the
    /// kilobytes an unboxed session, or a second copy of the socket, would add.
    #[test]
    fn a_connection_task_stays_small() {
        let future = size_of_output(run);
        assert!(future <= 640, "session future is {future} bytes");
    }

    #[test]
    fn every_stop_that_sends_a_close_names_its_code() {
        let codes: Vec<(Stop, u16)> = vec![
            (Stop::TokenExpired, 4003),
            (Stop::ProtocolViolation, 1002),
            (Stop::InvalidUtf8, 1007),
            (Stop::Flood, 1008),
            (Stop::TooBig, 1009),
            (Stop::SlowConsumer, 4000),
            (Stop::Idle, 4001),
            (Stop::Drained, 1012),
            (Stop::TooManySessions, 4429),
        ];
        for (stop, code) in codes {
            assert_eq!(stop.metric_code(1024), code.to_string(), "{stop:?}");
        }
        assert!(CloseCode::should_reconnect(4003));
        assert_eq!(Stop::Broken.metric_code(1024), "1006");
    }
}
