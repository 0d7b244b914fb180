//! The Redis backplane: many chat-server nodes act as one chat.
//!
//! Keys (all under the configured prefix `P`, so one Redis can serve several clusters):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:room:{room}:meta` | hash | `epoch`, `head` (last assigned offset) |
//! | `P:room:{room}:log` | stream | history; entry id `0-{offset}`, fields `f` (from), `b` (body), `t` (ts ms) |
//! | `P:room:{room}:presence` | hash | `{node}\|{user}` → sessions of the user on that node in the room |
//! | `P:room:{room}:users` | hash | user → sessions in the room over all nodes (presence) |
//! | `P:user:{user}:nodes` | set | nodes holding a session of the user (DM routing) |
//! | `P:node:{node}:alive` | string with TTL | heartbeat; a node whose key expired is dead |
//!
//! `{node}` is the node's name plus an incarnation id (`chat-0@3f9c…`), new at every
//! start, so a restarted node never receives DMs meant for its previous life's sessions.
//!
//! Channels: `P:room:{room}` carries the room's messages and presence changes, subscribed
//! by a node only while it hosts a member; `P:node:{node}` carries direct messages for
//! users on that node. Publishing is one Lua script that assigns the offset, appends to
//! the stream and publishes, so live order equals history order on every node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use tokio::sync::{mpsc, oneshot};

use super::{now_us, Backplane, BackplaneError, BackplaneStatus, RoomSnapshot};
use crate::history::{new_epoch, HistoryLimits};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{Position, ServerFrame};
use crate::sync::{lock, read, write};

/// How the Redis backplane connects and names things.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL.
    pub url: String,
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

/// Error building the backplane from configuration.
#[derive(Debug, thiserror::Error)]
#[error("CHAT_REDIS_URL is not a usable Redis URL: {0}")]
pub struct RedisConfigError(String);

const PUBLISH: &str = r#"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0)
end
local offset = redis.call('HINCRBY', meta, 'head', 1)
redis.call('XADD', log, 'MAXLEN', ARGV[6], '0-' .. offset, 'f', ARGV[1], 'b', ARGV[2], 't', ARGV[5])
local cutoff = tonumber(ARGV[5]) - tonumber(ARGV[7])
for _ = 1, 64 do
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][6]) >= cutoff then break end
  redis.call('XDEL', log, first[1][1])
end
redis.call('EXPIRE', meta, ARGV[8])
redis.call('EXPIRE', log, ARGV[8])
redis.call('PUBLISH', ARGV[9], 'M|' .. offset .. '|' .. ARGV[3] .. '|' .. epoch .. '|' .. ARGV[1] .. '|' .. ARGV[2])
return {epoch, tostring(offset)}
"#;

const SNAPSHOT: &str = r#"
local meta, log, presence, users = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0)
end
redis.call('EXPIRE', meta, ARGV[5])
redis.call('EXPIRE', log, ARGV[5])
local head = tonumber(redis.call('HGET', meta, 'head'))
local out = {epoch, tostring(head)}
local members = redis.call('HKEYS', users)
local status = 'fresh'
local entries = {}
if ARGV[1] ~= '' then
  local since = tonumber(ARGV[2])
  if ARGV[1] ~= epoch or since > head then
    status = 'lost'
  elseif since == head then
    status = 'ok'
  else
    entries = redis.call('XRANGE', log, '(0-' .. since, '+')
    local first = entries[1]
    local cutoff = tonumber(ARGV[4])
    if #entries ~= head - since or first[1] ~= ('0-' .. (since + 1)) or tonumber(first[2][6]) < cutoff then
      status = 'lost'
      entries = {}
    else
      status = 'ok'
    end
  end
end
table.insert(out, status)
table.insert(out, tostring(#members))
for _, m in ipairs(members) do table.insert(out, m) end
for _, e in ipairs(entries) do
  table.insert(out, string.sub(e[1], 3))
  table.insert(out, e[2][2])
  table.insert(out, e[2][4])
  table.insert(out, e[2][6])
end
return out
"#;

const PRESENCE_JOIN: &str = r#"
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 1)
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call('PUBLISH', ARGV[3], 'P|+|' .. ARGV[2])
end
return 1
"#;

const PRESENCE_LEAVE: &str = r#"
local field = ARGV[1] .. '|' .. ARGV[2]
if not redis.call('HGET', KEYS[1], field) then return 0 end
if redis.call('HINCRBY', KEYS[1], field, -1) <= 0 then redis.call('HDEL', KEYS[1], field) end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], 'P|-|' .. ARGV[2])
end
return 1
"#;

/// Re-asserts one node's local presence in a room (after Redis lost data) without
/// double-counting what is still there.
const PRESENCE_RESTORE: &str = r#"
local field = ARGV[1] .. '|' .. ARGV[2]
local have = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local want = tonumber(ARGV[3])
if have == want then return 0 end
redis.call('HSET', KEYS[1], field, want)
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
redis.call('HINCRBY', KEYS[2], ARGV[2], want - have)
if before <= 0 and want > 0 then
  redis.call('PUBLISH', ARGV[4], 'P|+|' .. ARGV[2])
end
return 1
"#;

/// Removes the presence entries of nodes whose heartbeat key expired; announces users
/// who are no longer anywhere in the room.
const PRESENCE_SWEEP: &str = r#"
local entries = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #entries, 2 do
  local field, count = entries[i], tonumber(entries[i + 1])
  local sep = string.find(field, '|', 1, true)
  local node, user = string.sub(field, 1, sep - 1), string.sub(field, sep + 1)
  if redis.call('EXISTS', ARGV[1] .. node .. ':alive') == 0 then
    redis.call('HDEL', KEYS[1], field)
    removed = removed + 1
    if redis.call('HINCRBY', KEYS[2], user, -count) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('PUBLISH', ARGV[2], 'P|-|' .. user)
    end
  end
end
return removed
"#;

/// Publishes a direct message to every live node holding the user; forgets dead nodes.
/// Returns how many nodes' pub/sub connections received it (PUBLISH's count), not how
/// many are alive: a node cut from Redis keeps its alive key until it expires, and a DM
/// counted for it would be acknowledged to the sender and never delivered.
const DIRECT: &str = r#"
local nodes = redis.call('SMEMBERS', KEYS[1])
local reached = 0
for _, node in ipairs(nodes) do
  if redis.call('EXISTS', ARGV[1] .. node .. ':alive') == 1 then
    reached = reached + redis.call('PUBLISH', ARGV[1] .. node, 'D|' .. ARGV[2] .. '|' .. ARGV[3])
  else
    redis.call('SREM', KEYS[1], node)
  end
end
return reached
"#;

struct Scripts {
    publish: Script,
    snapshot: Script,
    presence_join: Script,
    presence_leave: Script,
    presence_restore: Script,
    presence_sweep: Script,
    direct: Script,
}

/// Commands to the task that owns the pub/sub connection.
enum SubCommand {
    Subscribe(String, oneshot::Sender<Result<(), BackplaneError>>),
    /// With a sender: answered once Redis has answered the UNSUBSCRIBE (at once when
    /// other local members still need the channel or pub/sub is down).
    Unsubscribe(String, Option<oneshot::Sender<()>>),
}

pub struct RedisBackplane {
    /// This node's identity in Redis: its name and an incarnation id chosen at start
    /// (`chat-0@3f9c…`). A restarted node keeps its name (a StatefulSet pod does) but not
    /// its sessions, so it must not inherit the DM routes and presence its previous life
    /// left in Redis: those point at an identity nobody subscribes to any more, whose
    /// alive key expires, and are swept.
    node: String,
    prefix: String,
    limits: HistoryLimits,
    presence_ttl: Duration,
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
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
    local_presence: Mutex<HashMap<(String, String), usize>>,
    /// The last connection-level failure (password removed) and when it happened (Unix
    /// ms), for `/admin/status`.
    last_error: Mutex<Option<(String, u64)>>,
    /// Removed from every error text this node logs or reports.
    password: Option<String>,
}

impl RedisBackplane {
    /// Creates the backplane and starts its background tasks (connection, pub/sub,
    /// heartbeat). It does not wait for Redis: until Redis answers, readiness fails and
    /// operations return `Unavailable`.
    pub fn start(
        settings: &RedisSettings,
        node: &str,
        limits: HistoryLimits,
        hub: Arc<Hub>,
        metrics: Metrics,
    ) -> Result<Arc<RedisBackplane>, RedisConfigError> {
        // TLS to Redis (`rediss://`) uses rustls, which needs one process-wide crypto
        // provider; without it the first TLS handshake panics. Already installed: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| RedisConfigError(e.to_string()))?;
        if let Some(pw) = settings.password.as_deref().filter(|p| !p.is_empty()) {
            let redis = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(redis);
        }
        let password = info
            .redis_settings()
            .password()
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        let client = match &settings.ca_file {
            None => redis::Client::open(info),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    RedisConfigError(format!("CHAT_REDIS_CA_FILE {}: {e}", path.display()))
                })?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
        }
        .map_err(|e| RedisConfigError(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let bp = Arc::new(RedisBackplane {
            node: format!("{node}@{}", new_epoch()),
            prefix: settings.key_prefix.clone(),
            limits,
            presence_ttl: settings.presence_ttl,
            client,
            conn: RwLock::new(None),
            commands_ok: AtomicBool::new(false),
            pubsub_ok: AtomicBool::new(false),
            alive: AtomicBool::new(false),
            subs: tx,
            hub,
            metrics,
            scripts: Scripts {
                publish: Script::new(PUBLISH),
                snapshot: Script::new(SNAPSHOT),
                presence_join: Script::new(PRESENCE_JOIN),
                presence_leave: Script::new(PRESENCE_LEAVE),
                presence_restore: Script::new(PRESENCE_RESTORE),
                presence_sweep: Script::new(PRESENCE_SWEEP),
                direct: Script::new(DIRECT),
            },
            local_users: Mutex::new(HashMap::new()),
            local_presence: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
            password,
        });
        tokio::spawn(command_connection_task(Arc::downgrade(&bp)));
        tokio::spawn(pubsub_task(Arc::downgrade(&bp), rx));
        tokio::spawn(heartbeat_task(Arc::downgrade(&bp)));
        Ok(bp)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    fn room_channel(&self, room: &str) -> String {
        self.key(&["room", room])
    }

    fn node_channel(&self) -> String {
        self.key(&["node", &self.node])
    }

    fn node_prefix(&self) -> String {
        self.key(&["node", ""])
    }

    fn ttl_secs(&self) -> u64 {
        self.presence_ttl.as_secs().max(1)
    }

    /// Seconds a room's history keys live after their last use.
    fn history_ttl_secs(&self) -> u64 {
        (self.limits.max_age_ms / 1000).max(1) + 60
    }

    fn connection(&self) -> Result<ConnectionManager, BackplaneError> {
        read(&self.conn)
            .clone()
            .ok_or_else(|| BackplaneError::Unavailable("not connected to Redis yet".into()))
    }

    /// `error` without the password, should the client library ever echo it.
    fn redact(&self, error: impl std::fmt::Display) -> String {
        let text = error.to_string();
        match self.password.as_deref() {
            Some(pw) => text.replace(pw, "[redacted]"),
            None => text,
        }
    }

    /// Remembers a connection-level failure for `/admin/status`; returns its text (password
    /// removed) for the log.
    fn record_error(&self, what: &str, error: impl std::fmt::Display) -> String {
        let text = format!("{what}: {}", self.redact(error));
        *lock(&self.last_error) = Some((text.clone(), now_us() / 1000));
        text
    }

    /// Runs a script; a failure marks commands unhealthy until the heartbeat succeeds.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BackplaneError> {
        let mut conn = self.connection()?;
        match invocation.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.commands_ok.store(false, Ordering::Relaxed);
                    self.record_error("command", &e);
                }
                Err(BackplaneError::Unavailable(format!(
                    "Redis: {}",
                    self.redact(e)
                )))
            }
        }
    }

    fn history_cutoff_ms(&self) -> u64 {
        (now_us() / 1000).saturating_sub(self.limits.max_age_ms)
    }

    /// Handles one pub/sub message for this node.
    fn dispatch(&self, channel: &str, payload: &str) {
        let room_prefix = self.key(&["room", ""]);
        if let Some(room) = channel.strip_prefix(&room_prefix) {
            match parse_room_event(payload) {
                Some(RoomEvent::Message {
                    offset,
                    published_us,
                    epoch,
                    from,
                    body,
                }) => {
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
                Some(RoomEvent::Presence { joined, user }) => {
                    let user = vec![user.to_owned()];
                    let none: Vec<String> = Vec::new();
                    let (j, l) = if joined {
                        (&user, &none)
                    } else {
                        (&none, &user)
                    };
                    let frame: Utf8Bytes = ServerFrame::Presence {
                        room,
                        joined: j,
                        left: l,
                    }
                    .to_json()
                    .into();
                    self.hub.deliver_room_frame(room, &frame);
                }
                None => tracing::warn!(channel, "ignoring malformed backplane message"),
            }
        } else if channel == self.node_channel() {
            match payload.strip_prefix("D|").and_then(|r| r.split_once('|')) {
                Some((to, frame)) => {
                    self.hub
                        .deliver_user_frame(to, &Utf8Bytes::from(frame.to_owned()));
                }
                None => tracing::warn!(channel, "ignoring malformed direct message"),
            }
        }
    }

    /// After a reconnect: re-register local users and presence (Redis may have lost
    /// them) and ask every local room's sessions to catch up from history.
    async fn restore_and_resync(&self) -> Result<(), BackplaneError> {
        self.heartbeat().await?;
        let users: Vec<String> = lock(&self.local_users).keys().cloned().collect();
        for user in &users {
            self.registry_update("SADD", user).await?;
        }
        let presence: Vec<((String, String), usize)> = lock(&self.local_presence)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for ((room, user), count) in presence {
            let mut inv = self.scripts.presence_restore.prepare_invoke();
            inv.key(self.key(&["room", &room, "presence"]))
                .key(self.key(&["room", &room, "users"]))
                .arg(&self.node)
                .arg(&user)
                .arg(count)
                .arg(self.room_channel(&room));
            self.run::<i64>(&inv).await?;
        }
        for room in self.hub.local_rooms() {
            self.hub.resync_room(&room);
        }
        Ok(())
    }

    /// Adds this node to (`SADD`) or removes it from (`SREM`) the user's DM routing set.
    async fn registry_update(&self, command: &str, user: &str) -> Result<(), BackplaneError> {
        let mut conn = self.connection()?;
        redis::cmd(command)
            .arg(self.key(&["user", user, "nodes"]))
            .arg(&self.node)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| BackplaneError::Unavailable(format!("Redis: {}", self.redact(e))))
    }

    /// Heartbeat: marks this node alive and sweeps dead nodes' presence in local rooms.
    async fn heartbeat(&self) -> Result<(), BackplaneError> {
        let mut conn = self.connection()?;
        let alive: Result<(), _> = redis::cmd("SET")
            .arg(self.key(&["node", &self.node, "alive"]))
            .arg("1")
            .arg("EX")
            .arg(self.ttl_secs())
            .query_async(&mut conn)
            .await;
        alive.map_err(|e| {
            BackplaneError::Unavailable(format!("Redis: {}", self.record_error("heartbeat", e)))
        })?;
        for room in self.hub.local_rooms() {
            let mut inv = self.scripts.presence_sweep.prepare_invoke();
            inv.key(self.key(&["room", &room, "presence"]))
                .key(self.key(&["room", &room, "users"]))
                .arg(self.node_prefix())
                .arg(self.room_channel(&room));
            self.run::<i64>(&inv).await?;
        }
        Ok(())
    }
}

enum RoomEvent<'a> {
    Message {
        offset: u64,
        published_us: u64,
        epoch: &'a str,
        from: &'a str,
        body: &'a str,
    },
    Presence {
        joined: bool,
        user: &'a str,
    },
}

/// `M|offset|published_us|epoch|from|body` or `P|+|user` / `P|-|user`. The body comes
/// last and may contain `|`; the other fields cannot (validated names, digits, hex).
fn parse_room_event(payload: &str) -> Option<RoomEvent<'_>> {
    let mut parts = payload.splitn(6, '|');
    match parts.next()? {
        "M" => Some(RoomEvent::Message {
            offset: parts.next()?.parse().ok()?,
            published_us: parts.next()?.parse().ok()?,
            epoch: parts.next()?,
            from: parts.next()?,
            body: parts.next()?,
        }),
        "P" => {
            let joined = match parts.next()? {
                "+" => true,
                "-" => false,
                _ => return None,
            };
            Some(RoomEvent::Presence {
                joined,
                user: parts.next()?,
            })
        }
        _ => None,
    }
}

/// Parses the snapshot script's flat reply:
/// `epoch, head, status (fresh|ok|lost), n, n members..., then (offset, from, body, ts)*`.
fn parse_snapshot(room: &str, reply: Vec<String>) -> Result<RoomSnapshot, BackplaneError> {
    let bad = || BackplaneError::Unavailable("malformed snapshot reply from Redis".into());
    let mut it = reply.into_iter();
    let epoch = it.next().ok_or_else(bad)?;
    let head: u64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let status = match it.next().ok_or_else(bad)?.as_str() {
        "fresh" => "fresh",
        "ok" => "ok",
        "lost" => "lost",
        _ => return Err(bad()),
    };
    let n: usize = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let mut members: Vec<String> = it.by_ref().take(n).collect();
    if members.len() != n {
        return Err(bad());
    }
    members.sort();
    let rest: Vec<String> = it.collect();
    if rest.len() % 4 != 0 {
        return Err(bad());
    }
    let mut replay = Vec::with_capacity(rest.len() / 4);
    for e in rest.chunks(4) {
        let offset: u64 = e[0].parse().map_err(|_| bad())?;
        let ts: u64 = e[3].parse().map_err(|_| bad())?;
        replay.push(
            ServerFrame::Message {
                room,
                epoch: &epoch,
                offset,
                from: &e[1],
                body: &e[2],
                ts,
            }
            .to_json()
            .into(),
        );
    }
    Ok(RoomSnapshot {
        recovered: status != "lost",
        epoch,
        head,
        replay,
        members,
    })
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
            .send(SubCommand::Subscribe(self.room_channel(room), tx))
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
            .send(SubCommand::Unsubscribe(self.room_channel(room), None))
            .map_err(|_| BackplaneError::Unavailable("pub/sub task stopped".into()))
    }

    async fn unsubscribe_room_confirmed(&self, room: &str) -> Result<(), BackplaneError> {
        let (tx, rx) = oneshot::channel();
        self.subs
            .send(SubCommand::Unsubscribe(self.room_channel(room), Some(tx)))
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
        let published_us = now_us();
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(self.key(&["room", room, "meta"]))
            .key(self.key(&["room", room, "log"]))
            .arg(from)
            .arg(body)
            .arg(published_us)
            .arg(new_epoch())
            .arg(published_us / 1000)
            .arg(self.limits.max_messages)
            .arg(self.limits.max_age_ms)
            .arg(self.history_ttl_secs())
            .arg(self.room_channel(room));
        let (_epoch, offset): (String, String) = self.run(&inv).await?;
        offset
            .parse()
            .map_err(|_| BackplaneError::Unavailable("malformed publish reply".into()))
    }

    async fn snapshot(
        &self,
        room: &str,
        since: Option<&Position>,
    ) -> Result<RoomSnapshot, BackplaneError> {
        let mut inv = self.scripts.snapshot.prepare_invoke();
        inv.key(self.key(&["room", room, "meta"]))
            .key(self.key(&["room", room, "log"]))
            .key(self.key(&["room", room, "presence"]))
            .key(self.key(&["room", room, "users"]))
            .arg(since.map_or("", |s| s.epoch.as_str()))
            .arg(since.map_or(0, |s| s.offset))
            .arg(new_epoch())
            .arg(self.history_cutoff_ms())
            .arg(self.history_ttl_secs());
        let reply: Vec<String> = self.run(&inv).await?;
        parse_snapshot(room, reply)
    }

    async fn presence_join(&self, room: &str, user: &str) -> Result<(), BackplaneError> {
        let mut inv = self.scripts.presence_join.prepare_invoke();
        inv.key(self.key(&["room", room, "presence"]))
            .key(self.key(&["room", room, "users"]))
            .arg(&self.node)
            .arg(user)
            .arg(self.room_channel(room));
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
        inv.key(self.key(&["room", room, "presence"]))
            .key(self.key(&["room", room, "users"]))
            .arg(&self.node)
            .arg(user)
            .arg(self.room_channel(room));
        self.run::<i64>(&inv).await.map(|_| ())
    }

    async fn register_user(&self, user: &str) -> Result<(), BackplaneError> {
        let first = {
            let mut users = lock(&self.local_users);
            let n = users.entry(user.to_owned()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if !first {
            return Ok(());
        }
        self.registry_update("SADD", user).await
    }

    async fn unregister_user(&self, user: &str) -> Result<(), BackplaneError> {
        let last = {
            let mut users = lock(&self.local_users);
            match users.get_mut(user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    users.remove(user);
                    true
                }
                None => false,
            }
        };
        if !last {
            return Ok(());
        }
        self.registry_update("SREM", user).await
    }

    async fn send_direct(&self, from: &str, to: &str, body: &str) -> Result<usize, BackplaneError> {
        let frame = ServerFrame::Dm {
            from,
            to,
            body,
            ts: now_us() / 1000,
        }
        .to_json();
        let mut inv = self.scripts.direct.prepare_invoke();
        inv.key(self.key(&["user", to, "nodes"]))
            .arg(self.node_prefix())
            .arg(to)
            .arg(frame);
        let reached: i64 = self.run(&inv).await?;
        Ok(usize::try_from(reached).unwrap_or(0))
    }
}

/// Reconnect delays: 100 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}

/// Establishes the command connection (the ConnectionManager then reconnects by itself)
/// and keeps `commands_ok` current with a PING every second.
async fn command_connection_task(bp: std::sync::Weak<RedisBackplane>) {
    let mut attempt = 0;
    loop {
        let Some(b) = bp.upgrade() else { return };
        let needs_connection = read(&b.conn).is_none();
        if needs_connection {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            match b.client.get_connection_manager_with_config(config).await {
                Ok(cm) => {
                    *write(&b.conn) = Some(cm);
                    attempt = 0;
                    tracing::info!("connected to Redis");
                }
                Err(e) => {
                    b.commands_ok.store(false, Ordering::Relaxed);
                    let error = b.record_error("connect", e);
                    tracing::warn!(%error, "Redis unreachable; retrying");
                    drop(b);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            }
        }
        if let Ok(mut conn) = b.connection() {
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
            let ok = pong.is_ok();
            if let Err(e) = pong {
                b.record_error("PING", e);
            }
            if ok != b.commands_ok.swap(ok, Ordering::Relaxed) {
                tracing::info!(ok, "Redis command connection health changed");
            }
        }
        drop(b);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Owns the pub/sub connection: subscribes the node channel and every room with local
/// members (in one batched SUBSCRIBE after each reconnect), reference-counts room
/// subscriptions, dispatches messages, and triggers a resync after each reconnect.
async fn pubsub_task(
    bp: std::sync::Weak<RedisBackplane>,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
) {
    let mut refcounts: HashMap<String, usize> = HashMap::new();
    let mut attempt = 0u32;
    let mut connected_before = false;
    loop {
        let Some(b) = bp.upgrade() else { return };
        let pubsub = match b.client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                let error = b.record_error("pub/sub connect", e);
                tracing::warn!(%error, "Redis pub/sub unreachable; retrying");
                drop(b);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                // Fail subscriptions asked for while disconnected rather than keep them waiting.
                while let Ok(cmd) = commands.try_recv() {
                    match cmd {
                        SubCommand::Subscribe(_, reply) => {
                            let _ = reply.send(Err(BackplaneError::Unavailable(
                                "Redis pub/sub is disconnected".into(),
                            )));
                        }
                        SubCommand::Unsubscribe(ch, reply) => {
                            release(&mut refcounts, &ch);
                            if let Some(reply) = reply {
                                let _ = reply.send(());
                            }
                        }
                    }
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels: Vec<String> = refcounts.keys().cloned().collect();
        channels.push(b.node_channel());
        let mut resubscribed = true;
        for chunk in channels.chunks(500) {
            if let Err(e) = sink.subscribe(chunk).await {
                let error = b.record_error("pub/sub subscribe", e);
                tracing::warn!(%error, "Redis resubscribe failed");
                resubscribed = false;
                break;
            }
        }
        if !resubscribed {
            drop(b);
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            continue;
        }
        attempt = 0;
        b.pubsub_ok.store(true, Ordering::Relaxed);
        tracing::info!(channels = channels.len(), "Redis pub/sub subscribed");
        if connected_before {
            // The command connection may still be reconnecting: retry for a while.
            for attempt in 0..40 {
                match b.restore_and_resync().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "restore after reconnect failed; retrying");
                        tokio::time::sleep(backoff(attempt.min(3))).await;
                    }
                }
            }
        }
        connected_before = true;
        drop(b);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        if let Some(b) = bp.upgrade() {
                            b.record_error("pub/sub", "connection lost");
                        }
                        break;
                    };
                    let Some(b) = bp.upgrade() else { return };
                    match (msg.get_channel::<String>(), msg.get_payload::<String>()) {
                        (Ok(channel), Ok(payload)) => b.dispatch(&channel, &payload),
                        _ => tracing::warn!("ignoring undecodable pub/sub message"),
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    match cmd {
                        SubCommand::Subscribe(ch, reply) => {
                            let n = refcounts.entry(ch.clone()).or_insert(0);
                            *n += 1;
                            if *n == 1 {
                                if let Err(e) = sink.subscribe(&ch).await {
                                    release(&mut refcounts, &ch);
                                    let error = match bp.upgrade() {
                                        Some(b) => b.record_error("pub/sub subscribe", e),
                                        None => return,
                                    };
                                    let _ = reply.send(Err(BackplaneError::Unavailable(format!("Redis {error}"))));
                                    break;
                                }
                            }
                            let _ = reply.send(Ok(()));
                        }
                        SubCommand::Unsubscribe(ch, reply) => {
                            release(&mut refcounts, &ch);
                            if !refcounts.contains_key(&ch) {
                                if let Err(e) = sink.unsubscribe(&ch).await {
                                    if let Some(b) = bp.upgrade() {
                                        let error = b.redact(e);
                                        tracing::debug!(%error, "Redis unsubscribe failed");
                                    }
                                }
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(());
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = bp.upgrade() {
            b.pubsub_ok.store(false, Ordering::Relaxed);
        }
        tracing::warn!("Redis pub/sub connection lost; reconnecting");
    }
}

fn release(refcounts: &mut HashMap<String, usize>, channel: &str) {
    if let Some(n) = refcounts.get_mut(channel) {
        *n -= 1;
        if *n == 0 {
            refcounts.remove(channel);
        }
    }
}

/// Refreshes this node's liveness key every third of the presence TTL.
async fn heartbeat_task(bp: std::sync::Weak<RedisBackplane>) {
    loop {
        let Some(b) = bp.upgrade() else { return };
        let every = match b.heartbeat().await {
            Ok(()) => {
                b.alive.store(true, Ordering::Relaxed);
                (b.presence_ttl / 3).max(Duration::from_millis(200))
            }
            Err(e) => {
                b.alive.store(false, Ordering::Relaxed);
                tracing::debug!(error = %e, "heartbeat failed");
                Duration::from_millis(250)
            }
        };
        drop(b);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_events_parse_with_pipes_in_the_body() {
        match parse_room_event("M|7|1700000000000123|abc|alice|a|b|c") {
            Some(RoomEvent::Message {
                offset,
                published_us,
                epoch,
                from,
                body,
            }) => {
                assert_eq!(
                    (offset, published_us, epoch, from, body),
                    (7, 1700000000000123, "abc", "alice", "a|b|c")
                );
            }
            _ => panic!("not parsed"),
        }
        assert!(matches!(
            parse_room_event("P|+|bob"),
            Some(RoomEvent::Presence {
                joined: true,
                user: "bob"
            })
        ));
        assert!(matches!(
            parse_room_event("P|-|bob"),
            Some(RoomEvent::Presence { joined: false, .. })
        ));
        assert!(parse_room_event("M|x|1|e|f|b").is_none());
        assert!(parse_room_event("P|?|bob").is_none());
        assert!(parse_room_event("").is_none());
    }

    #[test]
    fn snapshot_reply_parses_members_and_entries() {
        let reply: Vec<String> = [
            "e1", "5", "ok", "2", "bob", "alice", "4", "alice", "hi", "1000", "5", "bob", "yo",
            "1001",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let snap = parse_snapshot("r", reply).unwrap();
        assert_eq!(
            (snap.epoch.as_str(), snap.head, snap.recovered),
            ("e1", 5, true)
        );
        assert_eq!(snap.members, vec!["alice", "bob"]);
        assert_eq!(snap.replay.len(), 2);
        assert!(snap.replay[0].as_str().contains("\"offset\":4"));
        assert!(parse_snapshot("r", vec!["e".into(), "x".into()]).is_err());
        assert!(parse_snapshot(
            "r",
            vec!["e".into(), "1".into(), "ok".into(), "0".into(), "1".into()]
        )
        .is_err());
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), Duration::from_millis(5_000));
    }
}
