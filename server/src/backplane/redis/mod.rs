//! The Redis backplane: many chat-server nodes act as one chat, over one Redis instance
//! or a Redis Cluster.
//!
//! - [`keys`]: key and channel names (hash-tagged in cluster mode);
//! - [`scripts`]: the Lua scripts, one `.lua` file each;
//! - [`replies`]: parsing pub/sub payloads and script replies;
//! - [`pubsub`]: the subscriptions, classic or sharded;
//! - [`connection`]: the command connection, its health check and the heartbeat;
//! - [`budget`]: the cluster-wide room cap, history byte budget and per-user session cap.
//!
//! A node's identity in Redis is its name plus an incarnation id (`chat-0@3f9c…`), new
//! at every start, so a restarted node never receives DMs meant for its previous life's
//! sessions. Publishing is one Lua script that assigns the offset, appends to the
//! history and publishes, so live order equals history order on every node.

mod budget;
mod connection;
mod events;
mod keys;
mod pubsub;
mod replies;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use redis::cluster::ClusterClientBuilder;
use redis::{IntoConnectionInfo, ProtocolVersion};
use tokio::sync::{mpsc, oneshot};

use super::{
    Backplane, BackplaneError, BackplaneStatus, Budget, HistoryRead, NodeSessions, Published,
    RoomInfo, RoomSnapshot, UserCommand, REPLAY_PAGE_MESSAGES,
};
use crate::clock::now_us;
use crate::events::EventKind;
use crate::history::{new_epoch, HistoryLimits};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{Position, ServerFrame, MEMBERS_PAGE};
use crate::sync::{lock, read};
use connection::{CommandConnection, Target};
use keys::Keys;
use pubsub::SubCommand;
use replies::{
    parse_history_read, parse_page, parse_room_event, parse_room_info, parse_snapshot, RoomEvent,
};
use scripts::Scripts;

/// How the Redis backplane connects and names things.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL; in cluster mode, one or more seed URLs separated by
    /// commas (any reachable node will do: the rest of the cluster is discovered).
    pub url: String,
    /// Redis Cluster: hash-tagged keys, sharded pub/sub, routing by slot.
    pub cluster: bool,
    /// Overrides the URL's password (e.g. from a Kubernetes Secret).
    pub password: Option<String>,
    /// Prefix of every key and channel, e.g. the ChatCluster's name.
    pub key_prefix: String,
    /// A node's registry and presence entries outlive it by at most this.
    pub presence_ttl: Duration,
    /// PEM CA certificate that signed a `rediss://` server's certificate (the system's
    /// public roots are used when unset).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisSettings {
    /// The URLs in `url` (one, or a comma-separated list of cluster seeds).
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty())
    }
}

/// Error building the backplane from configuration.
#[derive(Debug, thiserror::Error)]
#[error("CHAT_REDIS_URL is not a usable Redis URL: {0}")]
pub struct RedisConfigError(String);

pub struct RedisBackplane {
    /// This node's identity in Redis: its name and an incarnation id chosen at start
    /// (`chat-0@3f9c…`). A restarted node keeps its name (a StatefulSet pod does) but not
    /// its sessions, so it must not inherit the DM routes and presence its previous life
    /// left in Redis: those point at an identity nobody subscribes to any more, whose
    /// alive key expires, and are swept.
    node: String,
    keys: Keys,
    limits: HistoryLimits,
    budget: Budget,
    /// Rooms this node admitted into the room index within the last second.
    admitted: budget::Admitted,
    presence_ttl: Duration,
    target: Target,
    conn: RwLock<Option<CommandConnection>>,
    commands_ok: AtomicBool,
    pubsub_ok: AtomicBool,
    /// The last heartbeat reached Redis (this node is routable for DMs).
    alive: AtomicBool,
    subs: mpsc::UnboundedSender<SubCommand>,
    hub: Arc<Hub>,
    metrics: Metrics,
    scripts: Scripts,
    /// Sessions per local user (registry), and per local (room, user) (presence), so both
    /// can be restored after Redis loses data.
    local_users: Mutex<HashMap<String, usize>>,
    /// Users whose session count in Redis may disagree with `local_users` (an update
    /// failed); the heartbeat writes the local count.
    unsynced_users: Mutex<HashSet<String>>,
    local_presence: Mutex<HashMap<(String, String), usize>>,
    /// Per room with local members, the last message received. Offsets of one epoch
    /// arrive in increasing order on a room's channel; one that does not means Redis
    /// went back in time (a failover to a replica that had not received the latest
    /// messages) and would reuse offsets clients already hold.
    last_received: Mutex<HashMap<String, LastReceived>>,
    /// A restore and resync is scheduled or running (cluster mode), so a burst of
    /// resubscriptions triggers one.
    restoring: AtomicBool,
    /// The last connection-level failure (password removed) and when it happened (Unix
    /// ms), for `/admin/status`.
    last_error: Mutex<Option<(String, u64)>>,
    /// The Redis passwords, removed from every error text this node logs or reports.
    secrets: Vec<String>,
    /// Events for the application, when a webhook is configured.
    events: Option<crate::events::WebhookSettings>,
}

/// The last message a node received in a room.
#[derive(Debug, Clone, PartialEq)]
struct LastReceived {
    epoch: String,
    /// `u64::MAX` while a new epoch is being started: the old epoch's messages are dropped.
    offset: u64,
    published_us: u64,
}

/// What to do with a room message, given the last one received in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// Deliver it (a later offset, or a new epoch).
    Next,
    /// Drop it: the same message again (a channel briefly subscribed twice), or the old
    /// epoch's while a new one is being started.
    Drop,
    /// An offset at or below one already received, and not the same message: Redis went
    /// back in time.
    WentBack,
}

fn classify_received(
    last: Option<&LastReceived>,
    epoch: &str,
    offset: u64,
    published_us: u64,
) -> Received {
    match last {
        Some(l) if l.epoch == epoch => {
            if l.offset == u64::MAX {
                Received::Drop
            } else if offset > l.offset {
                Received::Next
            } else if offset == l.offset && published_us == l.published_us {
                Received::Drop
            } else {
                Received::WentBack
            }
        }
        _ => Received::Next,
    }
}

/// The TLS roots for `rediss://`: the given CA, or the system's public roots.
fn tls_certificates(
    ca_file: Option<&std::path::Path>,
) -> Result<Option<redis::TlsCertificates>, RedisConfigError> {
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| RedisConfigError(format!("CHAT_REDIS_CA_FILE {}: {e}", path.display())))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

type BuiltTarget = (
    Target,
    Vec<String>,
    Option<mpsc::UnboundedReceiver<redis::PushInfo>>,
);

/// The target for `settings`, the passwords in it (for redaction) and, in cluster mode, the
/// receiver of the pub/sub connection's pushes.
fn build_target(settings: &RedisSettings) -> Result<BuiltTarget, RedisConfigError> {
    let config_error = |e: redis::RedisError| RedisConfigError(e.to_string());
    let explicit_password = settings.password.as_deref().filter(|p| !p.is_empty());
    let mut infos = Vec::new();
    for url in settings.urls() {
        let mut info = url.into_connection_info().map_err(config_error)?;
        if let Some(pw) = explicit_password {
            let redis = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(redis);
        }
        infos.push(info);
    }
    let Some(first) = infos.first() else {
        return Err(RedisConfigError("no URL given".into()));
    };
    let password = first
        .redis_settings()
        .password()
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    // Every seed's password, so none is ever echoed in an error text.
    let mut secrets: Vec<String> = infos
        .iter()
        .filter_map(|i| i.redis_settings().password())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    secrets.dedup();
    let certs = tls_certificates(settings.ca_file.as_deref())?;
    if !settings.cluster {
        if infos.len() > 1 {
            return Err(RedisConfigError(
                "several URLs are for Redis Cluster: set CHAT_REDIS_CLUSTER=true".into(),
            ));
        }
        let info = infos.remove(0);
        let client = match certs {
            None => redis::Client::open(info),
            Some(certs) => redis::Client::build_with_tls(info, certs),
        }
        .map_err(config_error)?;
        return Ok((Target::Single(client), secrets, None));
    }
    let builder = |protocol: ProtocolVersion| {
        let mut b = ClusterClientBuilder::new(infos.clone())
            .use_protocol(protocol)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2));
        if let Some(pw) = &password {
            b = b.password(pw);
        }
        if let Some(certs) = &certs {
            b = b.certs(certs.clone());
        }
        b
    };
    let (push_tx, push_rx) = mpsc::unbounded_channel();
    let commands = builder(ProtocolVersion::RESP2)
        .build()
        .map_err(config_error)?;
    let pubsub = builder(ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .build()
        .map_err(config_error)?;
    Ok((Target::Cluster { commands, pubsub }, secrets, Some(push_rx)))
}

impl RedisBackplane {
    /// Creates the backplane and starts its background tasks (connection, pub/sub,
    /// heartbeat). It does not wait for Redis: until Redis answers, readiness fails and
    /// operations return `Unavailable`.
    pub fn start(
        settings: &RedisSettings,
        node: &str,
        limits: HistoryLimits,
        budget: Budget,
        hub: Arc<Hub>,
        metrics: Metrics,
        events: Option<crate::events::Poster>,
    ) -> Result<Arc<RedisBackplane>, RedisConfigError> {
        // TLS to Redis (`rediss://`) uses rustls, which needs one process-wide crypto
        // provider; without it the first TLS handshake panics. Already installed: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (target, secrets, pushes) = build_target(settings)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let bp = Arc::new(RedisBackplane {
            node: format!("{node}@{}", new_epoch()),
            keys: Keys::new(&settings.key_prefix, settings.cluster),
            limits,
            budget,
            admitted: budget::Admitted::default(),
            presence_ttl: settings.presence_ttl,
            target,
            conn: RwLock::new(None),
            commands_ok: AtomicBool::new(false),
            pubsub_ok: AtomicBool::new(false),
            alive: AtomicBool::new(false),
            subs: tx,
            hub,
            metrics,
            scripts: Scripts::new(settings.cluster),
            local_users: Mutex::new(HashMap::new()),
            unsynced_users: Mutex::new(HashSet::new()),
            local_presence: Mutex::new(HashMap::new()),
            last_received: Mutex::new(HashMap::new()),
            restoring: AtomicBool::new(false),
            last_error: Mutex::new(None),
            secrets,
            events: events.as_ref().map(|p| p.settings().clone()),
        });
        tokio::spawn(connection::command_connection_task(Arc::downgrade(&bp)));
        pubsub::spawn(&bp, rx, pushes);
        tokio::spawn(connection::heartbeat_task(Arc::downgrade(&bp)));
        tokio::spawn(budget::sweeper_task(Arc::downgrade(&bp)));
        if let Some(poster) = events {
            events::spawn_deliverers(&bp, poster);
        }
        Ok(bp)
    }

    /// The command connection answered its last health check.
    fn commands_ok(&self) -> bool {
        self.commands_ok.load(Ordering::Relaxed)
    }

    fn cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    fn node_channel(&self) -> String {
        self.keys.node_channel(&self.node)
    }

    fn ttl_secs(&self) -> u64 {
        self.presence_ttl.as_secs().max(1)
    }

    /// Seconds a room's history keys live after their last use.
    fn history_ttl_secs(&self) -> u64 {
        (self.limits.max_age_ms / 1000).max(1) + 60
    }

    fn connection(&self) -> Result<CommandConnection, BackplaneError> {
        read(&self.conn)
            .clone()
            .ok_or_else(|| BackplaneError::Unavailable("not connected to Redis yet".into()))
    }

    /// `error` without the passwords, should the client library ever echo one.
    fn redact(&self, error: impl std::fmt::Display) -> String {
        self.secrets
            .iter()
            .fold(error.to_string(), |text, pw| text.replace(pw, "[redacted]"))
    }

    /// Remembers a connection-level failure for `/admin/status`; returns its text (password
    /// removed) for the log.
    fn record_error(&self, what: &str, error: impl std::fmt::Display) -> String {
        let text = format!("{what}: {}", self.redact(error));
        *lock(&self.last_error) = Some((text.clone(), now_us() / 1000));
        text
    }

    /// Maps a failed command to `Unavailable`; a connection failure marks commands
    /// unhealthy until the next PING succeeds.
    fn command_error(&self, e: redis::RedisError) -> BackplaneError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            self.commands_ok.store(false, Ordering::Relaxed);
            self.record_error("command", &e);
        }
        BackplaneError::Unavailable(format!("Redis: {}", self.redact(e)))
    }

    /// Runs a script.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BackplaneError> {
        let mut conn = self.connection()?;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.command_error(e))
    }

    /// Runs one command.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BackplaneError> {
        let mut conn = self.connection()?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.command_error(e))
    }

    fn history_cutoff_ms(&self) -> u64 {
        (now_us() / 1000).saturating_sub(self.limits.max_age_ms)
    }

    /// Handles one pub/sub message for this node.
    fn dispatch(self: &Arc<Self>, channel: &str, payload: &str) {
        if let Some(room) = self.keys.room_of_channel(channel) {
            match parse_room_event(payload) {
                Some(RoomEvent::Message {
                    offset,
                    published_us,
                    epoch,
                    from,
                    body,
                }) => {
                    match self.check_received(room, epoch, offset, published_us) {
                        Received::Next => {}
                        Received::Drop => return,
                        Received::WentBack => {
                            self.start_new_epoch(room, epoch);
                            return;
                        }
                    }
                    self.metrics.backplane_received.inc();
                    let frame: Utf8Bytes = ServerFrame::Message {
                        room,
                        epoch,
                        offset,
                        from,
                        body,
                        ts: published_us / 1000,
                    }
                    .to_json()
                    .into();
                    let epoch: Arc<str> = epoch.into();
                    self.hub
                        .deliver_room_message(room, &epoch, offset, published_us, &frame);
                }
                Some(RoomEvent::Presence {
                    joined,
                    user,
                    member_count,
                }) => {
                    self.hub
                        .deliver_presence(room, user, joined, member_count.unwrap_or(0));
                }
                None => tracing::warn!(channel, "ignoring malformed backplane message"),
            }
        } else if channel == self.node_channel() {
            // `D|user|frame`: a direct message; `C|user|json`: the application's command.
            let (kind, rest) = payload.split_at_checked(2).unwrap_or(("", ""));
            match (kind, rest.split_once('|')) {
                ("D|", Some((to, frame))) => {
                    self.hub
                        .deliver_user_frame(to, &Utf8Bytes::from(frame.to_owned()));
                }
                ("C|", Some((user, command))) => match UserCommand::parse(command) {
                    Some(command) => {
                        self.hub.command_user(user, command);
                    }
                    None => tracing::warn!(channel, "ignoring malformed user command"),
                },
                _ => tracing::warn!(channel, "ignoring malformed direct message"),
            }
        }
    }

    /// Records a received message and classifies it (see [`classify_received`]).
    fn check_received(&self, room: &str, epoch: &str, offset: u64, published_us: u64) -> Received {
        let mut last = lock(&self.last_received);
        let verdict = classify_received(last.get(room), epoch, offset, published_us);
        if verdict == Received::Next {
            // In place when the room is known (every message but a room's first), so the
            // hot path allocates only when the epoch changes.
            match last.get_mut(room) {
                Some(l) => {
                    if l.epoch != epoch {
                        l.epoch = epoch.to_owned();
                    }
                    l.offset = offset;
                    l.published_us = published_us;
                }
                None => {
                    last.insert(
                        room.to_owned(),
                        LastReceived {
                            epoch: epoch.to_owned(),
                            offset,
                            published_us,
                        },
                    );
                }
            }
        }
        verdict
    }

    /// Stops tracking the offsets of the room `channel` belongs to (its last local member
    /// left), so the map stays as small as the node's rooms.
    fn forget_room_channel(&self, channel: &str) {
        if let Some(room) = self.keys.room_of_channel(channel) {
            lock(&self.last_received).remove(room);
        }
    }

    /// Replaces the room's epoch that went back in time, then has local sessions catch up:
    /// they are told `recovered: false`, as the history they resumed from is gone.
    fn start_new_epoch(self: &Arc<Self>, room: &str, old_epoch: &str) {
        tracing::warn!(room, epoch = old_epoch, "room history went back in time (Redis lost acknowledged messages); starting a new epoch");
        // Until the new epoch's first message, the old epoch's are dropped: they reuse
        // offsets, and the rotation deletes them from history anyway.
        lock(&self.last_received).insert(
            room.to_owned(),
            LastReceived {
                epoch: old_epoch.to_owned(),
                offset: u64::MAX,
                published_us: 0,
            },
        );
        let bp = self.clone();
        let (room, old_epoch) = (room.to_owned(), old_epoch.to_owned());
        tokio::spawn(async move {
            let mut inv = bp.scripts.rotate_epoch.prepare_invoke();
            inv.key(bp.keys.room_meta(&room))
                .key(bp.keys.room_log(&room))
                .arg(&old_epoch)
                .arg(new_epoch());
            if let Err(e) = bp.run::<i64>(&inv).await {
                tracing::warn!(error = %e, room, "could not start a new epoch; sessions resync anyway");
                // Stop dropping the old epoch's messages, so the next one detects again.
                let mut last = lock(&bp.last_received);
                if last.get(&room).is_some_and(|l| l.offset == u64::MAX) {
                    last.remove(&room);
                }
            }
            bp.hub.resync_room(&room);
        });
    }

    /// Asks every local room's sessions to catch up from history.
    fn resync_rooms(&self) {
        for room in self.hub.local_rooms() {
            self.hub.resync_room(&room);
        }
    }

    /// Re-asserts this node's heartbeat, its users' DM routes and its presence.
    async fn restore_registrations(&self) -> Result<(), BackplaneError> {
        self.heartbeat().await?;
        let users: Vec<(String, usize)> = lock(&self.local_users)
            .iter()
            .map(|(user, n)| (user.clone(), *n))
            .collect();
        for (user, sessions) in &users {
            self.query::<()>(
                redis::cmd("HSET")
                    .arg(self.keys.user_sessions(user))
                    .arg(&self.node)
                    .arg(sessions),
            )
            .await?;
            self.query::<()>(
                redis::cmd("SADD")
                    .arg(self.keys.user_nodes(user))
                    .arg(&self.node),
            )
            .await?;
        }
        let presence: Vec<((String, String), usize)> = lock(&self.local_presence)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for ((room, user), count) in presence {
            let mut inv = self.scripts.presence_restore.prepare_invoke();
            inv.key(self.keys.room_presence(&room))
                .key(self.keys.room_users(&room))
                .key(self.keys.room_names(&room))
                .arg(&self.node)
                .arg(&user)
                .arg(count)
                .arg(self.keys.room_channel(&room));
            self.run::<i64>(&inv).await?;
        }
        Ok(())
    }

    /// After a reconnect: re-registers local users and presence (Redis may have lost
    /// them), retried for a while since the command connection or a shard may still be
    /// recovering; then, with `then_resync`, asks every local room's sessions to catch up
    /// from history.
    async fn restore_with_retries(&self, then_resync: bool) {
        for attempt in 0..40 {
            match self.restore_registrations().await {
                Ok(()) => {
                    if then_resync {
                        self.resync_rooms();
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "restore after reconnect failed; retrying");
                    tokio::time::sleep(connection::backoff(attempt.min(3))).await;
                }
            }
        }
        tracing::warn!("could not restore this node's registrations in Redis; the heartbeat keeps trying its own");
    }

    /// Cluster mode: runs one restore and resync in the background unless one is
    /// already waiting to run, after a short pause so a burst of resubscriptions (a
    /// failover moves many channels at once) is handled once.
    fn schedule_restore(self: &Arc<Self>) {
        if self.restoring.swap(true, Ordering::AcqRel) {
            return;
        }
        let bp = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            bp.restoring.store(false, Ordering::Release);
            // Sessions catch up at once (history is readable on every shard that has a
            // master); the registrations follow, retried while a shard is still failing
            // over, so one slow shard does not hold up every room's resync.
            bp.resync_rooms();
            bp.restore_with_retries(false).await;
        });
    }

    /// Writes this node's session count of each user whose last update failed, so a
    /// failed unregister cannot keep a user locked out at the cap.
    async fn reconcile_sessions(&self) {
        let users: Vec<String> = lock(&self.unsynced_users).drain().collect();
        for user in users {
            let count = lock(&self.local_users).get(&user).copied().unwrap_or(0);
            let sessions = self.keys.user_sessions(&user);
            let nodes = self.keys.user_nodes(&user);
            let result: Result<(), BackplaneError> = async {
                if count > 0 {
                    self.query::<()>(redis::cmd("HSET").arg(&sessions).arg(&self.node).arg(count))
                        .await?;
                    self.query(redis::cmd("SADD").arg(&nodes).arg(&self.node))
                        .await
                } else {
                    self.query::<()>(redis::cmd("HDEL").arg(&sessions).arg(&self.node))
                        .await?;
                    self.query(redis::cmd("SREM").arg(&nodes).arg(&self.node))
                        .await
                }
            }
            .await;
            if result.is_err() {
                lock(&self.unsynced_users).insert(user);
            }
        }
    }

    /// Counts one more session of `user` on this node unless the user is at the cap. In
    /// cluster mode other nodes' heartbeats live in other slots: at the cap, the nodes
    /// counted are checked here and the dead ones forgotten, then it is tried once more.
    async fn register_session(&self, user: &str) -> Result<(), BackplaneError> {
        let max = self.budget.max_sessions_per_user;
        for attempt in 0..2 {
            let mut inv = self.scripts.session_register.prepare_invoke();
            inv.key(self.keys.user_nodes(user))
                .key(self.keys.user_sessions(user))
                .arg(&self.node)
                .arg(max)
                .arg(if self.cluster() {
                    String::new()
                } else {
                    self.keys.node_prefix()
                });
            if let Some(events) = &self.events {
                inv.key(self.keys.events_stream(events.shard_of(user)))
                    .arg(user)
                    .arg(events.max_backlog)
                    .arg(now_us() / 1000);
            }
            let reply: Vec<String> = self.run(&inv).await?;
            let Some((verdict, others)) = reply.split_first() else {
                return Err(BackplaneError::Unavailable(
                    "malformed session registration reply".into(),
                ));
            };
            if verdict == "1" {
                if self.events.is_some() && !others.is_empty() {
                    self.event_recorded(EventKind::UserConnected, others[0] == "1");
                }
                return Ok(());
            }
            if attempt == 1 || !self.cluster() {
                break;
            }
            let mut dead = Vec::new();
            for node in others {
                let alive: bool = self
                    .query(redis::cmd("EXISTS").arg(self.keys.node_alive(node)))
                    .await?;
                if !alive {
                    dead.push(node);
                }
            }
            if dead.is_empty() {
                break;
            }
            let mut forget = self.scripts.session_forget_nodes.prepare_invoke();
            forget
                .key(self.keys.user_nodes(user))
                .key(self.keys.user_sessions(user));
            for node in dead {
                forget.arg(node);
            }
            self.run::<i64>(&forget).await?;
        }
        Err(BackplaneError::TooManySessions(max))
    }

    /// Heartbeat: marks this node alive and sweeps dead nodes' presence in local rooms.
    async fn heartbeat(&self) -> Result<(), BackplaneError> {
        let mut conn = self.connection()?;
        let mut beat = self.scripts.heartbeat.prepare_invoke();
        beat.key(self.keys.node_alive(&self.node))
            .arg(self.ttl_secs());
        let alive: Result<i64, _> = beat.invoke_async(&mut conn).await;
        alive.map_err(|e| {
            BackplaneError::Unavailable(format!("Redis: {}", self.record_error("heartbeat", e)))
        })?;
        self.reconcile_sessions().await;
        if let Err(e) = self.touch_local_rooms().await {
            tracing::debug!(error = %e, "could not mark local rooms active; next heartbeat");
        }
        // A room whose shard is failing over cannot be swept now; the next heartbeat
        // tries again, and this node stays alive meanwhile (its key was set).
        let mut alive_nodes: HashMap<String, bool> = HashMap::new();
        for room in self.hub.local_rooms() {
            if let Err(e) = self.sweep_room(&room, &mut alive_nodes).await {
                tracing::debug!(error = %e, %room, "presence sweep failed; next heartbeat");
            }
        }
        Ok(())
    }

    /// Removes the room's presence entries of nodes whose heartbeat key expired.
    /// `alive_nodes` caches liveness over one heartbeat's rooms.
    async fn sweep_room(
        &self,
        room: &str,
        alive_nodes: &mut HashMap<String, bool>,
    ) -> Result<(), BackplaneError> {
        let fields: Vec<String> = self
            .query(redis::cmd("HKEYS").arg(self.keys.room_presence(room)))
            .await?;
        let nodes: HashSet<&str> = fields
            .iter()
            .filter_map(|f| f.split_once('|').map(|(node, _)| node))
            .filter(|node| *node != self.node)
            .collect();
        let mut dead = Vec::new();
        for node in nodes {
            let alive = match alive_nodes.get(node) {
                Some(alive) => *alive,
                None => {
                    let alive: bool = self
                        .query(redis::cmd("EXISTS").arg(self.keys.node_alive(node)))
                        .await?;
                    alive_nodes.insert(node.to_owned(), alive);
                    alive
                }
            };
            if !alive {
                dead.push(node);
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        let recheck_prefix = if self.cluster() {
            String::new()
        } else {
            self.keys.node_prefix()
        };
        let mut inv = self.scripts.presence_sweep.prepare_invoke();
        inv.key(self.keys.room_presence(room))
            .key(self.keys.room_users(room))
            .key(self.keys.room_names(room))
            .arg(self.keys.room_channel(room))
            .arg(recheck_prefix);
        for node in dead {
            inv.arg(node);
        }
        self.run::<i64>(&inv).await.map(|_| ())
    }

    /// The snapshot script; `trusted`: `since` is a position this node delivered.
    async fn snapshot_since(
        &self,
        room: &str,
        since: Option<&Position>,
        trusted: bool,
    ) -> Result<RoomSnapshot, BackplaneError> {
        let mut inv = self.scripts.snapshot.prepare_invoke();
        inv.key(self.keys.room_meta(room))
            .key(self.keys.room_log(room))
            .key(self.keys.room_users(room))
            .key(self.keys.room_names(room))
            .arg(since.map_or("", |s| s.epoch.as_str()))
            .arg(since.map_or(0, |s| s.offset))
            .arg(new_epoch())
            .arg(self.history_cutoff_ms())
            .arg(self.history_ttl_secs())
            .arg(if trusted { "1" } else { "" })
            .arg(REPLAY_PAGE_MESSAGES)
            .arg(MEMBERS_PAGE);
        let reply: Vec<String> = self.run(&inv).await?;
        parse_snapshot(room, reply)
    }

    /// Cluster mode's direct message: the user's nodes live in the user's slot and each
    /// node's channel in the node's, so this is one `SMEMBERS` and one `SPUBLISH` per
    /// node rather than one script. Counts the nodes whose pub/sub connection received
    /// it; forgets nodes that nobody listens for and whose heartbeat expired.
    async fn send_to_user_nodes_sharded(
        &self,
        user: &str,
        payload: &str,
    ) -> Result<usize, BackplaneError> {
        let user_nodes = self.keys.user_nodes(user);
        let nodes: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(&user_nodes)).await?;
        let mut reached = 0usize;
        let mut failure = None;
        for node in nodes {
            // One node's shard failing must not fail a DM that other nodes received: the
            // sender would send it again, and they would get it twice.
            let receivers: usize = match self
                .query(
                    redis::cmd("SPUBLISH")
                        .arg(self.keys.node_channel(&node))
                        .arg(payload),
                )
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            reached += receivers;
            if receivers == 0 {
                let alive: Result<bool, _> = self
                    .query(redis::cmd("EXISTS").arg(self.keys.node_alive(&node)))
                    .await;
                if let Ok(false) = alive {
                    let _ = self
                        .query::<()>(redis::cmd("SREM").arg(&user_nodes).arg(&node))
                        .await;
                }
            }
        }
        match failure {
            Some(e) if reached == 0 => Err(e),
            _ => Ok(reached),
        }
    }

    /// The publish script, with an idempotency key (and its lifetime) when given.
    async fn publish_with(
        &self,
        room: &str,
        from: &str,
        body: &str,
        idempotency: Option<(&str, Duration)>,
    ) -> Result<Published, BackplaneError> {
        let published_us = now_us();
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(self.keys.room_meta(room))
            .key(self.keys.room_log(room))
            .arg(from)
            .arg(body)
            .arg(published_us)
            .arg(new_epoch())
            .arg(published_us / 1000)
            .arg(self.limits.max_messages)
            .arg(self.limits.max_age_ms)
            .arg(self.history_ttl_secs())
            .arg(self.keys.room_channel(room))
            .arg(budget::ENTRY_OVERHEAD_BYTES);
        let events = self.events.as_ref().filter(|e| e.wants_room(room));
        match (idempotency, events) {
            (None, None) => {}
            (Some((key, ttl)), None) => {
                inv.key(self.keys.room_idempotency(room, key))
                    .arg(ttl.as_secs().max(1));
            }
            (idempotency, Some(events)) => {
                let (key, ttl) = match idempotency {
                    Some((key, ttl)) => (self.keys.room_idempotency(room, key), ttl.as_secs()),
                    None => (String::new(), 0),
                };
                inv.key(key)
                    .key(self.keys.events_stream(events.shard_of(room)))
                    .arg(ttl.max(1))
                    .arg(events.max_backlog)
                    .arg(room);
            }
        }
        let reply: Vec<String> = self.run(&inv).await?;
        let malformed = || BackplaneError::Unavailable("malformed publish reply".into());
        let [epoch, offset, bytes, dropped] =
            <[String; 4]>::try_from(reply).map_err(|_| malformed())?;
        if events.is_some() && bytes != "dup" {
            self.event_recorded(EventKind::Message, dropped == "1");
        }
        let offset = offset.parse().map_err(|_| malformed())?;
        // A repeated key answers the first publish's position and `dup`.
        let duplicate = bytes == "dup";
        if !duplicate {
            self.published(room, bytes.parse().map_err(|_| malformed())?);
        }
        Ok(Published {
            epoch,
            offset,
            duplicate,
        })
    }

    /// Counts an event a script recorded (and one it dropped to make room).
    fn event_recorded(&self, kind: EventKind, dropped: bool) {
        self.metrics
            .events_recorded
            .with_label_values(&[kind.name()])
            .inc();
        if dropped {
            self.metrics.events_dropped.inc();
        }
    }

    /// Publishes `payload` on the node channel of every live node holding a session of
    /// `user`; how many nodes' pub/sub connections took it.
    async fn send_to_user_nodes(&self, user: &str, payload: &str) -> Result<usize, BackplaneError> {
        if self.cluster() {
            return self.send_to_user_nodes_sharded(user, payload).await;
        }
        let mut inv = self.scripts.direct.prepare_invoke();
        inv.key(self.keys.user_nodes(user))
            .arg(self.keys.node_prefix())
            .arg(payload);
        let reached: i64 = self.run(&inv).await?;
        Ok(usize::try_from(reached).unwrap_or(0))
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_ready(&self) -> bool {
        self.commands_ok.load(Ordering::Relaxed)
            && self.pubsub_ok.load(Ordering::Relaxed)
            && self.alive.load(Ordering::Relaxed)
    }

    fn status(&self) -> BackplaneStatus {
        let last_error = lock(&self.last_error).clone();
        BackplaneStatus {
            kind: self.kind(),
            connected: self.commands_ok.load(Ordering::Relaxed)
                && self.pubsub_ok.load(Ordering::Relaxed),
            last_error_unix_ms: last_error.as_ref().map(|(_, at)| *at),
            last_error: last_error.map(|(text, _)| text),
        }
    }

    async fn subscribe_room(&self, room: &str) -> Result<(), BackplaneError> {
        if !self.pubsub_ok.load(Ordering::Relaxed) {
            return Err(BackplaneError::Unavailable(
                "Redis pub/sub is disconnected".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.subs
            .send(SubCommand::Subscribe(self.keys.room_channel(room), tx))
            .map_err(|_| BackplaneError::Unavailable("pub/sub task stopped".into()))?;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(result)) => result,
            _ => Err(BackplaneError::Unavailable(
                "Redis did not confirm the subscription".into(),
            )),
        }
    }

    async fn unsubscribe_room(&self, room: &str) -> Result<(), BackplaneError> {
        self.subs
            .send(SubCommand::Unsubscribe(self.keys.room_channel(room), None))
            .map_err(|_| BackplaneError::Unavailable("pub/sub task stopped".into()))
    }

    async fn unsubscribe_room_confirmed(&self, room: &str) -> Result<(), BackplaneError> {
        let (tx, rx) = oneshot::channel();
        self.subs
            .send(SubCommand::Unsubscribe(
                self.keys.room_channel(room),
                Some(tx),
            ))
            .map_err(|_| BackplaneError::Unavailable("pub/sub task stopped".into()))?;
        // The reference is released whatever happens; only the confirmation can be late.
        // While pub/sub is down there is nothing to confirm: the channel is simply not
        // resubscribed, so no session waits on a Redis outage to leave a room.
        if !self.pubsub_ok.load(Ordering::Relaxed) {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(2), rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(BackplaneError::Unavailable(
                "Redis did not confirm the unsubscribe".into(),
            )),
        }
    }

    async fn publish(&self, room: &str, from: &str, body: &str) -> Result<u64, BackplaneError> {
        self.publish_with(room, from, body, None)
            .await
            .map(|p| p.offset)
    }

    async fn snapshot(
        &self,
        room: &str,
        since: Option<&Position>,
    ) -> Result<RoomSnapshot, BackplaneError> {
        self.snapshot_since(room, since, false).await
    }

    async fn snapshot_from_cursor(
        &self,
        room: &str,
        cursor: &Position,
    ) -> Result<RoomSnapshot, BackplaneError> {
        self.snapshot_since(room, Some(cursor), true).await
    }

    async fn history_page(
        &self,
        room: &str,
        epoch: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<Vec<(u64, Utf8Bytes)>>, BackplaneError> {
        let mut inv = self.scripts.history_page.prepare_invoke();
        inv.key(self.keys.room_meta(room))
            .key(self.keys.room_log(room))
            .arg(epoch)
            .arg(after)
            .arg(upto)
            .arg(REPLAY_PAGE_MESSAGES)
            .arg(self.history_cutoff_ms());
        let reply: Vec<String> = self.run(&inv).await?;
        parse_page(room, epoch, reply)
    }

    async fn members_page(
        &self,
        room: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, u64), BackplaneError> {
        let mut inv = self.scripts.members_page.prepare_invoke();
        inv.key(self.keys.room_users(room))
            .key(self.keys.room_names(room))
            .arg(after.unwrap_or(""))
            .arg(MEMBERS_PAGE);
        let reply: Vec<String> = self.run(&inv).await?;
        let mut it = reply.into_iter();
        let count = it.next().and_then(|c| c.parse().ok()).ok_or_else(|| {
            BackplaneError::Unavailable("malformed member page from Redis".into())
        })?;
        Ok((it.collect(), count))
    }

    async fn presence_join(&self, room: &str, user: &str) -> Result<(), BackplaneError> {
        // The first of a join's steps that writes the room's keys: the room cap is
        // checked here.
        self.admit_room(room, Some(user)).await?;
        let mut inv = self.scripts.presence_join.prepare_invoke();
        inv.key(self.keys.room_presence(room))
            .key(self.keys.room_users(room))
            .key(self.keys.room_names(room))
            .arg(&self.node)
            .arg(user)
            .arg(self.keys.room_channel(room));
        self.run::<i64>(&inv).await?;
        *lock(&self.local_presence)
            .entry((room.to_owned(), user.to_owned()))
            .or_insert(0) += 1;
        Ok(())
    }

    async fn presence_leave(&self, room: &str, user: &str) -> Result<(), BackplaneError> {
        {
            let mut local = lock(&self.local_presence);
            let key = (room.to_owned(), user.to_owned());
            match local.get_mut(&key) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    local.remove(&key);
                }
                None => {}
            }
        }
        let mut inv = self.scripts.presence_leave.prepare_invoke();
        inv.key(self.keys.room_presence(room))
            .key(self.keys.room_users(room))
            .key(self.keys.room_names(room))
            .arg(&self.node)
            .arg(user)
            .arg(self.keys.room_channel(room));
        self.run::<i64>(&inv).await.map(|_| ())
    }

    async fn register_user(&self, user: &str) -> Result<(), BackplaneError> {
        let result = self.register_session(user).await;
        // Counted locally unless refused; one Redis missed is written by the heartbeat
        // (or restored with the rest after a reconnect).
        if !matches!(result, Err(BackplaneError::TooManySessions(_))) {
            *lock(&self.local_users).entry(user.to_owned()).or_insert(0) += 1;
        }
        if let Err(BackplaneError::Unavailable(_)) = result {
            lock(&self.unsynced_users).insert(user.to_owned());
        }
        result
    }

    async fn unregister_user(&self, user: &str) -> Result<(), BackplaneError> {
        {
            let mut users = lock(&self.local_users);
            match users.get_mut(user) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    users.remove(user);
                }
                None => return Ok(()),
            }
        }
        let mut inv = self.scripts.session_unregister.prepare_invoke();
        inv.key(self.keys.user_nodes(user))
            .key(self.keys.user_sessions(user))
            .arg(&self.node);
        if let Some(events) = &self.events {
            inv.key(self.keys.events_stream(events.shard_of(user)))
                .arg(user)
                .arg(events.max_backlog)
                .arg(now_us() / 1000);
        }
        let result = self.run::<i64>(&inv).await.map(|recorded| {
            if recorded > 0 {
                self.event_recorded(EventKind::UserDisconnected, recorded == 2);
            }
        });
        if result.is_err() {
            lock(&self.unsynced_users).insert(user.to_owned());
        }
        result
    }

    async fn is_present(&self, room: &str, user: &str) -> Result<bool, BackplaneError> {
        self.query(
            redis::cmd("HEXISTS")
                .arg(self.keys.room_users(room))
                .arg(user),
        )
        .await
    }

    async fn send_direct(&self, from: &str, to: &str, body: &str) -> Result<usize, BackplaneError> {
        let frame = ServerFrame::Dm {
            from,
            to,
            body,
            ts: now_us() / 1000,
        }
        .to_json();
        let reached = self
            .send_to_user_nodes(to, &format!("D|{to}|{frame}"))
            .await?;
        if reached == 0 {
            if let Some(events) = &self.events {
                // Only after the DM was refused (nobody took it): the sender is told the
                // user is offline, and the application that it may notify them.
                let mut inv = self.scripts.event_add.prepare_invoke();
                inv.key(self.keys.events_stream(events.shard_of(to)))
                    .arg(events.max_backlog)
                    .arg(vec![
                        "k",
                        EventKind::DmOffline.name(),
                        "f",
                        from,
                        "u",
                        to,
                        "b",
                        body,
                    ])
                    .arg("t")
                    .arg(now_us() / 1000);
                let dropped: i64 = self.run(&inv).await?;
                self.event_recorded(EventKind::DmOffline, dropped == 1);
            }
        }
        Ok(reached)
    }

    async fn publish_once(
        &self,
        room: &str,
        from: &str,
        body: &str,
        key: Option<&str>,
        key_ttl: Duration,
    ) -> Result<Published, BackplaneError> {
        // Rooms the application creates count against the room cap like any other.
        self.admit_room(room, None).await?;
        self.publish_with(room, from, body, key.map(|k| (k, key_ttl)))
            .await
    }

    async fn send_user_command(
        &self,
        user: &str,
        command: &UserCommand,
    ) -> Result<usize, BackplaneError> {
        self.send_to_user_nodes(user, &format!("C|{user}|{}", command.to_json()))
            .await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<NodeSessions>, BackplaneError> {
        let counts: Vec<(String, u64)> = self
            .query(redis::cmd("HGETALL").arg(self.keys.user_sessions(user)))
            .await?;
        let mut nodes = Vec::with_capacity(counts.len());
        for (node, sessions) in counts {
            // A dead node's count lingers until its sessions are forgotten: not listed.
            let alive: bool = self
                .query(redis::cmd("EXISTS").arg(self.keys.node_alive(&node)))
                .await?;
            if alive && sessions > 0 {
                nodes.push(NodeSessions { node, sessions });
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    async fn room_info(&self, room: &str) -> Result<Option<RoomInfo>, BackplaneError> {
        let mut inv = self.scripts.room_info.prepare_invoke();
        inv.key(self.keys.room_meta(room))
            .key(self.keys.room_users(room));
        let reply: Vec<String> = self.run(&inv).await?;
        parse_room_info(room, reply)
    }

    async fn room_names(&self) -> Result<Vec<String>, BackplaneError> {
        // The room index: every room with history or members, at most the room cap.
        self.query(
            redis::cmd("ZRANGE")
                .arg(self.keys.budget_index())
                .arg(0)
                .arg(-1),
        )
        .await
    }

    async fn history_read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<HistoryRead>, BackplaneError> {
        let mut inv = self.scripts.history_read.prepare_invoke();
        inv.key(self.keys.room_meta(room))
            .key(self.keys.room_log(room))
            .arg(after)
            .arg(limit)
            .arg(self.history_cutoff_ms());
        let reply: Vec<String> = self.run(&inv).await?;
        parse_history_read(room, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(epoch: &str, offset: u64, published_us: u64) -> LastReceived {
        LastReceived {
            epoch: epoch.to_owned(),
            offset,
            published_us,
        }
    }

    #[test]
    fn a_reused_offset_is_history_going_back_and_a_repeat_is_dropped() {
        assert_eq!(classify_received(None, "e", 7, 1), Received::Next);
        let l = last("e", 5, 100);
        assert_eq!(classify_received(Some(&l), "e", 6, 101), Received::Next);
        assert_eq!(
            classify_received(Some(&l), "e", 9, 101),
            Received::Next,
            "a gap is the session's to fill"
        );
        assert_eq!(
            classify_received(Some(&l), "e", 5, 100),
            Received::Drop,
            "the same message twice"
        );
        assert_eq!(
            classify_received(Some(&l), "e", 5, 130),
            Received::WentBack,
            "offset 5 again, another message"
        );
        assert_eq!(classify_received(Some(&l), "e", 4, 130), Received::WentBack);
        assert_eq!(
            classify_received(Some(&l), "f", 1, 130),
            Received::Next,
            "a new epoch starts over"
        );
        let starting = last("e", u64::MAX, 0);
        assert_eq!(
            classify_received(Some(&starting), "e", 6, 1),
            Received::Drop,
            "old epoch while a new one starts"
        );
        assert_eq!(
            classify_received(Some(&starting), "f", 1, 1),
            Received::Next
        );
    }
}
