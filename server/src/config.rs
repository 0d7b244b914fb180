//! Configuration: command-line flags with `CHAT_*` environment variables, turned into
//! validated [`Settings`] at start. Every rejection says which flag or variable to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::auth::AuthSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// ChatCluster chat server: WebSocket rooms, direct messages, presence and resumable
/// history, with graceful drain.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-server", version)]
pub struct Args {
    /// Development mode: anonymous users (`?user=`) allowed, any Origin, pretty logs.
    #[arg(long, env = "CHAT_DEV")]
    pub dev: bool,
    /// Public address: `/ws` and the web client at `/`.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin address: health, readiness, metrics, drain, status. Never expose publicly.
    #[arg(long, env = "CHAT_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Node name reported to clients and used by the backplane (the pod name on Kubernetes).
    #[arg(long, env = "CHAT_NODE_NAME")]
    pub node_name: Option<String>,
    /// This pod's IP (set by the operator from the downward API); reported in
    /// `/admin/status` so the operator can reach each pod's admin port.
    #[arg(long, env = "CHAT_POD_IP")]
    pub pod_ip: Option<String>,
    /// Allow anonymous users identified by the `user` query parameter.
    #[arg(long, env = "CHAT_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// HS256 shared secret for client JWTs.
    #[arg(long, env = "CHAT_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM file with the public key for client JWTs: RSA (RS256), EC P-256 (ES256) or
    /// Ed25519 (EdDSA).
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Former name of CHAT_JWT_PUBLIC_KEY_FILE, still read.
    #[arg(long, env = "CHAT_JWT_RS256_PUBLIC_KEY_FILE", hide = true)]
    pub jwt_rs256_public_key_file: Option<PathBuf>,
    /// JWKS URL of the identity provider (https only): keys by `kid`, cached, fetched
    /// again on an unknown `kid` (at most once per CHAT_JWKS_MIN_REFETCH).
    #[arg(long, env = "CHAT_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// PEM CA for a JWKS server behind a private CA (the public web roots are always
    /// trusted).
    #[arg(long, env = "CHAT_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,
    /// How often the JWKS is fetched in any case.
    #[arg(long, env = "CHAT_JWKS_REFRESH", default_value = "5m")]
    pub jwks_refresh: String,
    /// Least time between two fetches caused by tokens with an unknown `kid`.
    #[arg(long, env = "CHAT_JWKS_MIN_REFETCH", default_value = "30s")]
    pub jwks_min_refetch: String,
    /// Required JWT `iss`. Set it (and CHAT_JWT_AUDIENCE) whenever the keys also sign
    /// tokens for other applications.
    #[arg(long, env = "CHAT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required JWT `aud`.
    #[arg(long, env = "CHAT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Room rules, a JSON array tried in order (docs/security.md): e.g.
    /// `[{"pattern":"lobby.*","access":"public"},{"pattern":"inbox.{user}","access":"user"},{"pattern":"*","access":"grant"}]`.
    /// Empty: every room is public.
    #[arg(long, env = "CHAT_ROOM_RULES", default_value = "")]
    pub room_rules: String,
    /// The application's join hook (http or https): asked `{user, room, action}` for a
    /// `grant` room the token does not grant.
    #[arg(long, env = "CHAT_JOIN_HOOK_URL")]
    pub join_hook_url: Option<String>,
    /// PEM CA for an https join hook behind a private CA (the public web roots are always
    /// trusted).
    #[arg(long, env = "CHAT_JOIN_HOOK_CA_FILE")]
    pub join_hook_ca_file: Option<PathBuf>,
    /// Key of the HMAC-SHA256 signature on join hook calls (`X-Chat-Signature`).
    #[arg(long, env = "CHAT_JOIN_HOOK_SECRET", hide_env_values = true)]
    pub join_hook_secret: Option<String>,
    /// A join hook call that takes longer fails (and the join is refused unless
    /// CHAT_JOIN_HOOK_FAIL_OPEN).
    #[arg(long, env = "CHAT_JOIN_HOOK_TIMEOUT", default_value = "2s")]
    pub join_hook_timeout: String,
    /// Let the join through when the hook fails (timeout, error, too busy). Off: fail
    /// closed.
    #[arg(long, env = "CHAT_JOIN_HOOK_FAIL_OPEN")]
    pub join_hook_fail_open: bool,
    /// Most join hook calls in flight on this node; a join past it fails like a hook
    /// error.
    #[arg(long, env = "CHAT_JOIN_HOOK_CONCURRENCY", default_value_t = 32)]
    pub join_hook_concurrency: usize,
    /// How long a hook's answer for a (user, room) is reused.
    #[arg(long, env = "CHAT_JOIN_HOOK_CACHE_TTL", default_value = "10s")]
    pub join_hook_cache_ttl: String,
    /// Who may send a direct message to whom.
    #[arg(long, env = "CHAT_DM_POLICY", value_enum, default_value = "anyone")]
    pub dm_policy: crate::rooms::DmPolicy,
    /// Direct messages per second one user may send (per node, over all its sessions).
    #[arg(long, env = "CHAT_DM_RATE_PER_SEC", default_value_t = 5.0)]
    pub dm_rate_per_sec: f64,
    /// Direct messages one user may send in a burst above that rate.
    #[arg(long, env = "CHAT_DM_BURST", default_value_t = 10)]
    pub dm_burst: u32,
    /// Comma-separated allowed `Origin` values, or `*` for any. Requests without an
    /// Origin header (non-browser clients) are always allowed.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    /// Bearer token required on `/admin/*`. Required when the admin port listens
    /// beyond loopback (except with --dev).
    #[arg(long, env = "CHAT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The server API's address (served only when a key is set by CHAT_API_KEYS or
    /// CHAT_API_KEYS_FILE).
    #[arg(long, env = "CHAT_API_LISTEN", default_value = "127.0.0.1:9091")]
    pub api_listen: String,
    /// Comma-separated server API keys (16 to 256 printable ASCII bytes each, no spaces
    /// or commas). Several keys at once let a key be rotated.
    #[arg(long, env = "CHAT_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// A file of server API keys, one per line (`#` starts a comment line); read again
    /// every 10 s, so a rotated key takes effect without a restart.
    #[arg(long, env = "CHAT_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Requests per second each server API endpoint takes on this node (429 beyond).
    #[arg(long, env = "CHAT_API_RATE_PER_SEC", default_value_t = 200.0)]
    pub api_rate_per_sec: f64,
    /// Requests each endpoint takes in a burst above that rate.
    #[arg(long, env = "CHAT_API_BURST", default_value_t = 400)]
    pub api_burst: u32,
    /// Largest server API request body, in bytes (413 beyond).
    #[arg(long, env = "CHAT_API_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub api_max_body_bytes: usize,
    /// How long a publish's idempotency key is remembered.
    #[arg(long, env = "CHAT_API_IDEMPOTENCY_TTL", default_value = "10m")]
    pub api_idempotency_ttl: String,
    /// Where events for the application are POSTed (http:// or https://); unset: no
    /// events. See docs/api.md.
    #[arg(long, env = "CHAT_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key of each event's `X-Chat-Signature` (at least 32 bytes).
    #[arg(long, env = "CHAT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// PEM file of the CA that signed the webhook's TLS certificate (https, private CA).
    #[arg(long, env = "CHAT_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Comma-separated room patterns (`*` matches any run) whose messages are events;
    /// empty: no message events.
    #[arg(long, env = "CHAT_WEBHOOK_ROOMS", default_value = "")]
    pub webhook_rooms: String,
    /// One POST's timeout.
    #[arg(long, env = "CHAT_WEBHOOK_TIMEOUT", default_value = "5s")]
    pub webhook_timeout: String,
    /// Longest wait between two attempts (they start 1 s apart and double).
    #[arg(long, env = "CHAT_WEBHOOK_RETRY_MAX", default_value = "30s")]
    pub webhook_retry_max: String,
    /// After failing this long, an event goes to the dead-letter list.
    #[arg(long, env = "CHAT_WEBHOOK_GIVE_UP_AFTER", default_value = "1h")]
    pub webhook_give_up_after: String,
    /// Most events waiting (per shard over Redis); past it the oldest is dropped.
    #[arg(long, env = "CHAT_WEBHOOK_MAX_BACKLOG", default_value_t = 100_000)]
    pub webhook_max_backlog: usize,
    /// Over Redis: streams the events are spread over (by room or user), each delivered
    /// in order by one pod at a time.
    #[arg(long, env = "CHAT_WEBHOOK_SHARDS", default_value_t = 4)]
    pub webhook_shards: u32,
    /// Largest WebSocket message a client may send, in bytes (larger: close 1009).
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub max_frame_bytes: usize,
    /// Largest message body, in bytes.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = 4 * 1024)]
    pub max_body_bytes: usize,
    /// Sustained client frames per second per connection (token bucket refill).
    #[arg(long, env = "CHAT_RATE_PER_SEC", default_value_t = 20.0)]
    pub rate_per_sec: f64,
    /// Token bucket size: frames a client may send in a burst.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = 40)]
    pub rate_burst: u32,
    /// Bytes that may wait in one connection's send queue before it is closed as a slow
    /// consumer (close 4000).
    #[arg(long, env = "CHAT_SEND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub send_queue_bytes: usize,
    /// Most open connections on this process (more: 503 before the upgrade).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 15_000)]
    pub max_connections: usize,
    /// Sustained new connections per second on this process.
    #[arg(long, env = "CHAT_ACCEPT_RATE_PER_SEC", default_value_t = 2_000.0)]
    pub accept_rate_per_sec: f64,
    /// Burst of new connections above the sustained rate.
    #[arg(long, env = "CHAT_ACCEPT_BURST", default_value_t = 4_000)]
    pub accept_burst: u32,
    /// Sustained new connections per second from one source address (an IPv6 /64), in
    /// front of the per-process rate; 0 turns the per-source limit off. Behind a proxy,
    /// set CHAT_TRUSTED_PROXIES too, or every client counts as the proxy's address.
    #[arg(long, env = "CHAT_ACCEPT_RATE_PER_SOURCE", default_value_t = 0.0)]
    pub accept_rate_per_source: f64,
    /// Burst of new connections from one source address above its sustained rate.
    #[arg(long, env = "CHAT_ACCEPT_BURST_PER_SOURCE", default_value_t = 20)]
    pub accept_burst_per_source: u32,
    /// Comma-separated address ranges (CIDR) of proxies whose `Forwarded` /
    /// `X-Forwarded-For` headers name the client; from any other peer they are ignored.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// The header the trusted proxies write the client's address into: only that one is
    /// read (a proxy passes a client's forged other one through).
    #[arg(
        long,
        env = "CHAT_FORWARDED_HEADER",
        value_enum,
        default_value = "x-forwarded-for"
    )]
    pub forwarded_header: crate::client_addr::ForwardedHeader,
    /// A connection must send its request headers within this (slow or silent clients
    /// are closed).
    #[arg(long, env = "CHAT_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: String,
    /// Most connections that have not (yet) become a WebSocket session; past it the
    /// oldest of them is closed.
    #[arg(long, env = "CHAT_MAX_PENDING_CONNECTIONS", default_value_t = 1_024)]
    pub max_pending_connections: usize,
    /// Rooms one connection may be in at once.
    #[arg(long, env = "CHAT_MAX_ROOMS_PER_CONNECTION", default_value_t = 100)]
    pub max_rooms_per_connection: usize,
    /// Messages kept per room for resume.
    #[arg(long, env = "CHAT_HISTORY_MAX_MESSAGES", default_value_t = 1_000)]
    pub history_max_messages: usize,
    /// Most rooms (with history or members) on this node, or over Redis in the whole
    /// cluster. Idle rooms are forgotten first, least recently active first; at the cap
    /// with every room in use, new rooms are refused (`room_limit`).
    #[arg(long, env = "CHAT_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,
    /// History bytes over all rooms on this node, or over Redis in the whole cluster
    /// (a message costs its sender, body and, in Redis, 64 bytes of overhead). The oldest
    /// messages of the least recently active rooms are dropped first. Keep it well under
    /// Redis' `maxmemory` (docs/redis.md).
    #[arg(long, env = "CHAT_HISTORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub history_max_bytes: usize,
    /// Rooms with more members than this get presence as a member count, at most once a
    /// second, instead of a frame per arrival and departure (whose traffic grows with the
    /// square of the room). 0: always a frame per change.
    #[arg(long, env = "CHAT_PRESENCE_MAX_MEMBERS", default_value_t = 1_000)]
    pub presence_max_members: usize,
    /// Most sessions one user may have open at once (over Redis, in the whole cluster);
    /// one more is refused with `too_many_sessions` and close 4429. 0: no cap.
    #[arg(long, env = "CHAT_MAX_SESSIONS_PER_USER", default_value_t = 20)]
    pub max_sessions_per_user: usize,
    /// Most rooms one user may create (by joining a room nobody had) per hour, on this
    /// node or over Redis in the whole cluster; more are refused with `room_limit`. With
    /// the room cap, this keeps one user from making every idle room be forgotten.
    /// 0: no cap.
    #[arg(
        long,
        env = "CHAT_MAX_NEW_ROOMS_PER_USER_PER_HOUR",
        default_value_t = 1_000
    )]
    pub max_new_rooms_per_user_per_hour: usize,
    /// Oldest message kept per room for resume (e.g. 90s, 15m, 2h).
    #[arg(long, env = "CHAT_HISTORY_MAX_AGE", default_value = "1h")]
    pub history_max_age: String,
    /// Drain: reconnect notices are spread evenly over this window.
    #[arg(long, env = "CHAT_DRAIN_RECONNECT_WINDOW", default_value = "10s")]
    pub drain_reconnect_window: String,
    /// Drain: connections still open after this are closed and the process exits.
    #[arg(long, env = "CHAT_DRAIN_DEADLINE", default_value = "25s")]
    pub drain_deadline: String,
    /// Drain: each notice tells the client to wait a random 0..this before reconnecting.
    #[arg(long, env = "CHAT_DRAIN_MAX_JITTER", default_value = "1s")]
    pub drain_max_jitter: String,
    /// Interval of server pings; a connection silent for two intervals is closed (4001).
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = "30s")]
    pub ping_interval: String,
    /// A write to a client that takes longer than this closes the connection.
    #[arg(long, env = "CHAT_WRITE_TIMEOUT", default_value = "10s")]
    pub write_timeout: String,
    /// WebSocket read buffer per connection, in bytes (small keeps idle memory low).
    #[arg(long, env = "CHAT_WS_READ_BUFFER_BYTES", default_value_t = 512)]
    pub ws_read_buffer_bytes: usize,
    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Redis backplane URL (`redis://` or `rediss://`). Unset: the in-memory backplane
    /// (one node only).
    #[arg(long, env = "CHAT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis Cluster mode: CHAT_REDIS_URL is then one or more seed URLs separated by
    /// commas; keys are hash-tagged per room, user and node, and pub/sub is sharded.
    #[arg(long, env = "CHAT_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Redis password; overrides any password in the URL.
    #[arg(long, env = "CHAT_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Prefix of every Redis key and channel, so one Redis can serve several clusters.
    #[arg(long, env = "CHAT_REDIS_KEY_PREFIX", default_value = "chat")]
    pub redis_key_prefix: String,
    /// PEM file of the CA that signed the Redis server's TLS certificate (`rediss://`).
    #[arg(long, env = "CHAT_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// How long a dead node's registry and presence entries survive it.
    #[arg(long, env = "CHAT_REDIS_PRESENCE_TTL", default_value = "15s")]
    pub redis_presence_ttl: String,
}

/// Validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub node_name: String,
    pub pod_ip: Option<String>,
    pub auth: AuthSettings,
    pub room_rules: crate::rooms::RoomRules,
    pub join_hook: Option<crate::join_hook::JoinHookSettings>,
    pub dm_policy: crate::rooms::DmPolicy,
    pub dm_rate_per_sec: f64,
    pub dm_burst: u32,
    /// `--dev`: the only way to run the admin port beyond loopback without a token.
    pub dev: bool,
    pub admin_token: Option<String>,
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub rate_per_sec: f64,
    pub rate_burst: u32,
    pub send_queue_bytes: usize,
    pub max_connections: usize,
    pub accept_rate_per_sec: f64,
    pub accept_burst: u32,
    /// 0: no per-source limit.
    pub accept_rate_per_source: f64,
    pub accept_burst_per_source: u32,
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    pub header_read_timeout: Duration,
    pub max_pending_connections: usize,
    pub max_rooms_per_connection: usize,
    pub history_max_messages: usize,
    pub history_max_age: Duration,
    pub max_rooms: usize,
    pub history_max_bytes: usize,
    pub max_sessions_per_user: usize,
    pub max_new_rooms_per_user_per_hour: usize,
    pub presence_max_members: usize,
    pub drain_reconnect_window: Duration,
    pub drain_deadline: Duration,
    pub drain_max_jitter: Duration,
    pub ping_interval: Duration,
    pub write_timeout: Duration,
    pub ws_read_buffer_bytes: usize,
    pub log_format: LogFormat,
    /// `None`: the in-memory backplane.
    pub redis: Option<crate::backplane::redis::RedisSettings>,
    /// `None`: no server API (no key configured).
    pub api: Option<ApiSettings>,
    /// `None`: no events for the application.
    pub webhook: Option<crate::events::WebhookSettings>,
}

/// A configuration value that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Settings for tests and embedding: loopback ephemeral ports, anonymous users, short
    /// timers. Callers adjust fields as needed.
    pub fn local_test() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_name: "test-node".into(),
            pod_ip: None,
            auth: AuthSettings {
                allow_anonymous: true,
                ..AuthSettings::default()
            },
            room_rules: crate::rooms::RoomRules::default(),
            join_hook: None,
            dm_policy: crate::rooms::DmPolicy::Anyone,
            dm_rate_per_sec: 1_000.0,
            dm_burst: 1_000,
            dev: false,
            admin_token: None,
            max_frame_bytes: 16 * 1024,
            max_body_bytes: 4 * 1024,
            rate_per_sec: 1_000.0,
            rate_burst: 1_000,
            send_queue_bytes: 1024 * 1024,
            max_connections: 1_000,
            accept_rate_per_sec: 10_000.0,
            accept_burst: 10_000,
            accept_rate_per_source: 0.0,
            accept_burst_per_source: 20,
            trusted_proxies: crate::client_addr::TrustedProxies::default(),
            header_read_timeout: Duration::from_secs(10),
            max_pending_connections: 1_024,
            max_rooms_per_connection: 100,
            history_max_messages: 1_000,
            history_max_age: Duration::from_secs(3600),
            max_rooms: 10_000,
            history_max_bytes: 256 * 1024 * 1024,
            max_sessions_per_user: 20,
            max_new_rooms_per_user_per_hour: 1_000,
            presence_max_members: 1_000,
            drain_reconnect_window: Duration::from_secs(1),
            drain_deadline: Duration::from_secs(3),
            drain_max_jitter: Duration::from_millis(200),
            ping_interval: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            ws_read_buffer_bytes: 512,
            log_format: LogFormat::Pretty,
            redis: None,
            api: None,
            webhook: None,
        }
    }

    /// Checks cross-field rules. `from_args` calls it; embedders should too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.drain_reconnect_window >= self.drain_deadline {
            return fail(format!(
                "CHAT_DRAIN_RECONNECT_WINDOW ({:?}) must be shorter than CHAT_DRAIN_DEADLINE ({:?}) so clients can reconnect before the deadline",
                self.drain_reconnect_window, self.drain_deadline
            ));
        }
        let day = Duration::from_secs(24 * 3600);
        for (name, d) in [
            ("CHAT_HISTORY_MAX_AGE", self.history_max_age),
            ("CHAT_DRAIN_RECONNECT_WINDOW", self.drain_reconnect_window),
            ("CHAT_DRAIN_DEADLINE", self.drain_deadline),
            ("CHAT_DRAIN_MAX_JITTER", self.drain_max_jitter),
            ("CHAT_PING_INTERVAL", self.ping_interval),
            ("CHAT_WRITE_TIMEOUT", self.write_timeout),
        ] {
            if d > day {
                return fail(format!("{name} ({d:?}) must be at most 24h"));
            }
        }
        if self.max_frame_bytes < 256 {
            return fail("CHAT_MAX_FRAME_BYTES must be at least 256".into());
        }
        if self.max_body_bytes == 0 || self.max_body_bytes + 256 > self.max_frame_bytes {
            return fail(format!(
                "CHAT_MAX_BODY_BYTES ({}) must be at least 1 and at most CHAT_MAX_FRAME_BYTES - 256 ({}) to leave room for the frame's other fields",
                self.max_body_bytes,
                self.max_frame_bytes.saturating_sub(256)
            ));
        }
        if !(self.rate_per_sec > 0.0 && self.rate_per_sec.is_finite()) || self.rate_burst == 0 {
            return fail("CHAT_RATE_PER_SEC must be > 0 and CHAT_RATE_BURST at least 1".into());
        }
        if !(self.accept_rate_per_sec > 0.0 && self.accept_rate_per_sec.is_finite())
            || self.accept_burst == 0
        {
            return fail(
                "CHAT_ACCEPT_RATE_PER_SEC must be > 0 and CHAT_ACCEPT_BURST at least 1".into(),
            );
        }
        if !(self.accept_rate_per_source >= 0.0 && self.accept_rate_per_source.is_finite())
            || self.accept_burst_per_source == 0
        {
            return fail(
                "CHAT_ACCEPT_RATE_PER_SOURCE must be >= 0 (0 turns it off) and CHAT_ACCEPT_BURST_PER_SOURCE at least 1".into(),
            );
        }
        if self.header_read_timeout < Duration::from_secs(1)
            || self.header_read_timeout > Duration::from_secs(300)
        {
            return fail(format!(
                "CHAT_HEADER_READ_TIMEOUT ({:?}) must be between 1s and 5m",
                self.header_read_timeout
            ));
        }
        if self.max_pending_connections == 0 {
            return fail("CHAT_MAX_PENDING_CONNECTIONS must be at least 1".into());
        }
        if self.send_queue_bytes < self.max_frame_bytes {
            return fail(format!(
                "CHAT_SEND_QUEUE_BYTES ({}) must be at least CHAT_MAX_FRAME_BYTES ({}) or no message would fit",
                self.send_queue_bytes, self.max_frame_bytes
            ));
        }
        if self.max_connections == 0 || self.max_rooms_per_connection == 0 {
            return fail(
                "CHAT_MAX_CONNECTIONS and CHAT_MAX_ROOMS_PER_CONNECTION must be at least 1".into(),
            );
        }
        if self.max_rooms == 0 || self.history_max_bytes < self.max_frame_bytes {
            return fail(format!(
                "CHAT_MAX_ROOMS must be at least 1 and CHAT_HISTORY_MAX_BYTES at least CHAT_MAX_FRAME_BYTES ({})",
                self.max_frame_bytes
            ));
        }
        if self.history_max_messages == 0 {
            return fail("CHAT_HISTORY_MAX_MESSAGES must be at least 1".into());
        }
        if self.ping_interval.is_zero() || self.write_timeout.is_zero() {
            return fail("CHAT_PING_INTERVAL and CHAT_WRITE_TIMEOUT must be above zero".into());
        }
        if !(256..=1 << 20).contains(&self.ws_read_buffer_bytes) {
            return fail("CHAT_WS_READ_BUFFER_BYTES must be between 256 and 1048576".into());
        }
        if crate::protocol::validate_user(&self.node_name).is_err() {
            return fail(format!(
                "CHAT_NODE_NAME `{}` must be 1 to 64 of A-Z a-z 0-9 _ - . : @ (the user-id rule)",
                self.node_name
            ));
        }
        if let Some(redis) = &self.redis {
            let urls: Vec<&str> = redis.urls().collect();
            if urls.is_empty()
                || !urls
                    .iter()
                    .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
            {
                return fail("CHAT_REDIS_URL must start with redis:// or rediss://".into());
            }
            if urls.len() > 1 && !redis.cluster {
                return fail("CHAT_REDIS_URL lists several URLs, which only Redis Cluster takes: set CHAT_REDIS_CLUSTER=true, or give one URL".into());
            }
            let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
            if tls != 0 && tls != urls.len() {
                return fail("CHAT_REDIS_URL mixes redis:// and rediss:// seeds: use one scheme for the whole cluster".into());
            }
            if redis.cluster && redis.key_prefix.contains(['{', '}']) {
                return fail("CHAT_REDIS_KEY_PREFIX must not contain `{` or `}` with CHAT_REDIS_CLUSTER=true (braces would change the keys' hash slots)".into());
            }
            if redis.key_prefix.is_empty()
                || redis.key_prefix.len() > 64
                || redis
                    .key_prefix
                    .contains(|c: char| c.is_whitespace() || c == '|')
            {
                return fail(
                    "CHAT_REDIS_KEY_PREFIX must be 1 to 64 characters without spaces or `|`".into(),
                );
            }
            if redis.ca_file.is_some() && tls == 0 {
                return fail("CHAT_REDIS_CA_FILE needs a rediss:// CHAT_REDIS_URL (TLS)".into());
            }
            if redis.presence_ttl < Duration::from_secs(1) {
                return fail("CHAT_REDIS_PRESENCE_TTL must be at least 1s".into());
            }
        }
        let auth = &self.auth;
        if !auth.allow_anonymous
            && auth.hs256_secret.is_none()
            && auth.public_key_pem.is_none()
            && auth.jwks.is_none()
        {
            return fail("no way to authenticate clients: set CHAT_JWT_HS256_SECRET, CHAT_JWT_PUBLIC_KEY_FILE or CHAT_JWKS_URL, or allow anonymous users with --allow-anonymous (or --dev) for development".into());
        }
        if let Some(jwks) = &auth.jwks {
            if !jwks.url.starts_with("https://") {
                return fail(
                    "CHAT_JWKS_URL must start with https:// (keys must not travel in the clear)"
                        .into(),
                );
            }
            if jwks.min_refetch < Duration::from_secs(1) || jwks.refresh < jwks.min_refetch {
                return fail("CHAT_JWKS_MIN_REFETCH must be at least 1s and CHAT_JWKS_REFRESH at least CHAT_JWKS_MIN_REFETCH".into());
            }
        }
        if !self.admin_listen.ip().is_loopback() && self.admin_token.is_none() && !self.dev {
            return fail(format!(
                "CHAT_ADMIN_LISTEN {} is reachable beyond this machine but CHAT_ADMIN_TOKEN is not set: set a token, or listen on 127.0.0.1",
                self.admin_listen
            ));
        }
        if !(self.dm_rate_per_sec > 0.0 && self.dm_rate_per_sec.is_finite()) || self.dm_burst == 0 {
            return fail("CHAT_DM_RATE_PER_SEC must be > 0 and CHAT_DM_BURST at least 1".into());
        }
        if let Some(hook) = &self.join_hook {
            if hook.secret.len() < 32 {
                return fail(
                    "CHAT_JOIN_HOOK_SECRET must be set, at least 32 bytes, with CHAT_JOIN_HOOK_URL"
                        .into(),
                );
            }
            if hook.timeout.is_zero() || hook.timeout > Duration::from_secs(30) {
                return fail("CHAT_JOIN_HOOK_TIMEOUT must be between 1ms and 30s".into());
            }
            if hook.concurrency == 0 {
                return fail("CHAT_JOIN_HOOK_CONCURRENCY must be at least 1".into());
            }
        }
        if let Some(api) = &self.api {
            api.validate().map_err(ConfigError)?;
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate().map_err(ConfigError)?;
            if self.redis.as_ref().is_some_and(|r| r.cluster) {
                return fail("CHAT_WEBHOOK_URL does not work with CHAT_REDIS_CLUSTER yet: an event is recorded by the script that stores its message, and a room's hash slot cannot hold the cluster's event streams. Use one Redis instance (with replicas) for events".into());
            }
        }
        if auth.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return fail("CHAT_JWT_HS256_SECRET must be at least 32 bytes".into());
        }
        Ok(())
    }

    /// Turns parsed flags into validated settings.
    pub fn from_args(args: &Args) -> Result<Settings, ConfigError> {
        let addr = |name: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                ConfigError(format!(
                    "{name} `{v}` is not an address; use IP:PORT such as 0.0.0.0:8080"
                ))
            })
        };
        let public_key_file = match (&args.jwt_public_key_file, &args.jwt_rs256_public_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set CHAT_JWT_PUBLIC_KEY_FILE only (CHAT_JWT_RS256_PUBLIC_KEY_FILE is its former name)".into(),
                ))
            }
            (a, b) => a.as_ref().or(b.as_ref()),
        };
        let public_key_pem = match public_key_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError(format!(
                    "CHAT_JWT_PUBLIC_KEY_FILE {}: cannot read: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let jwks = match args.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Some(crate::auth::jwks::JwksSettings {
                url: url.to_owned(),
                ca_file: args.jwks_ca_file.clone(),
                refresh: parse_duration("CHAT_JWKS_REFRESH", &args.jwks_refresh)?,
                min_refetch: parse_duration("CHAT_JWKS_MIN_REFETCH", &args.jwks_min_refetch)?,
            }),
            None => None,
        };
        let room_rules = crate::rooms::RoomRules::parse(&args.room_rules)
            .map_err(|e| ConfigError(format!("CHAT_ROOM_RULES: {e}")))?;
        let join_hook = match args.join_hook_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Some(crate::join_hook::JoinHookSettings {
                url: crate::http_client::Url::parse(url, false)
                    .map_err(|e| ConfigError(format!("CHAT_JOIN_HOOK_URL: {e}")))?,
                ca_file: args.join_hook_ca_file.clone(),
                secret: args
                    .join_hook_secret
                    .clone()
                    .unwrap_or_default()
                    .into_bytes(),
                timeout: parse_duration("CHAT_JOIN_HOOK_TIMEOUT", &args.join_hook_timeout)?,
                fail_open: args.join_hook_fail_open,
                concurrency: args.join_hook_concurrency,
                cache_ttl: parse_duration("CHAT_JOIN_HOOK_CACHE_TTL", &args.join_hook_cache_ttl)?,
            }),
            None => None,
        };
        let allowed_origins = if args.dev || args.allowed_origins.trim() == "*" {
            None
        } else {
            Some(
                args.allowed_origins
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            )
        };
        let settings = Settings {
            listen: addr("CHAT_LISTEN", &args.listen)?,
            admin_listen: addr("CHAT_ADMIN_LISTEN", &args.admin_listen)?,
            node_name: args.node_name.clone().unwrap_or_else(default_node_name),
            pod_ip: args.pod_ip.clone().filter(|ip| !ip.is_empty()),
            auth: AuthSettings {
                allow_anonymous: args.dev || args.allow_anonymous,
                hs256_secret: args
                    .jwt_hs256_secret
                    .as_ref()
                    .map(|s| s.as_bytes().to_vec()),
                public_key_pem,
                jwks,
                issuer: args.jwt_issuer.clone().filter(|s| !s.is_empty()),
                audience: args.jwt_audience.clone().filter(|s| !s.is_empty()),
                allowed_origins,
            },
            room_rules,
            join_hook,
            dm_policy: args.dm_policy,
            dm_rate_per_sec: args.dm_rate_per_sec,
            dm_burst: args.dm_burst,
            dev: args.dev,
            admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
            max_frame_bytes: args.max_frame_bytes,
            max_body_bytes: args.max_body_bytes,
            rate_per_sec: args.rate_per_sec,
            rate_burst: args.rate_burst,
            send_queue_bytes: args.send_queue_bytes,
            max_connections: args.max_connections,
            accept_rate_per_sec: args.accept_rate_per_sec,
            accept_burst: args.accept_burst,
            accept_rate_per_source: args.accept_rate_per_source,
            accept_burst_per_source: args.accept_burst_per_source,
            trusted_proxies: crate::client_addr::TrustedProxies::parse(&args.trusted_proxies)
                .map_err(|e| ConfigError(format!("CHAT_TRUSTED_PROXIES: {e}")))?
                .with_header(args.forwarded_header),
            header_read_timeout: parse_duration(
                "CHAT_HEADER_READ_TIMEOUT",
                &args.header_read_timeout,
            )?,
            max_pending_connections: args.max_pending_connections,
            max_rooms_per_connection: args.max_rooms_per_connection,
            history_max_messages: args.history_max_messages,
            history_max_age: parse_duration("CHAT_HISTORY_MAX_AGE", &args.history_max_age)?,
            max_rooms: args.max_rooms,
            history_max_bytes: args.history_max_bytes,
            max_sessions_per_user: args.max_sessions_per_user,
            max_new_rooms_per_user_per_hour: args.max_new_rooms_per_user_per_hour,
            presence_max_members: args.presence_max_members,
            drain_reconnect_window: parse_duration(
                "CHAT_DRAIN_RECONNECT_WINDOW",
                &args.drain_reconnect_window,
            )?,
            drain_deadline: parse_duration("CHAT_DRAIN_DEADLINE", &args.drain_deadline)?,
            drain_max_jitter: parse_duration("CHAT_DRAIN_MAX_JITTER", &args.drain_max_jitter)?,
            ping_interval: parse_duration("CHAT_PING_INTERVAL", &args.ping_interval)?,
            write_timeout: parse_duration("CHAT_WRITE_TIMEOUT", &args.write_timeout)?,
            ws_read_buffer_bytes: args.ws_read_buffer_bytes,
            log_format: args.log_format.unwrap_or(if args.dev {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            }),
            redis: match args.redis_url.as_deref().filter(|u| !u.is_empty()) {
                None => None,
                Some(url) => Some(crate::backplane::redis::RedisSettings {
                    url: url.to_owned(),
                    cluster: args.redis_cluster,
                    password: args.redis_password.clone(),
                    key_prefix: args.redis_key_prefix.clone(),
                    presence_ttl: parse_duration(
                        "CHAT_REDIS_PRESENCE_TTL",
                        &args.redis_presence_ttl,
                    )?,
                    ca_file: args.redis_ca_file.clone(),
                }),
            },
            api: {
                let keys: Vec<String> = args
                    .api_keys
                    .iter()
                    .flat_map(|k| k.split(','))
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect();
                let keys_file = args.api_keys_file.clone();
                if keys.is_empty() && keys_file.is_none() {
                    None
                } else {
                    Some(ApiSettings {
                        listen: addr("CHAT_API_LISTEN", &args.api_listen)?,
                        keys,
                        keys_file,
                        rate_per_sec: args.api_rate_per_sec,
                        burst: args.api_burst,
                        max_body_bytes: args.api_max_body_bytes,
                        idempotency_ttl: parse_duration(
                            "CHAT_API_IDEMPOTENCY_TTL",
                            &args.api_idempotency_ttl,
                        )?,
                    })
                }
            },
            webhook: match args.webhook_url.as_deref().filter(|u| !u.is_empty()) {
                None => None,
                Some(url) => Some(crate::events::WebhookSettings {
                    url: crate::http_client::Url::parse(url, false)
                        .map_err(|e| ConfigError(format!("CHAT_WEBHOOK_URL: {e}")))?,
                    ca_file: args.webhook_ca_file.clone(),
                    secret: args.webhook_secret.clone().unwrap_or_default().into_bytes(),
                    rooms: args
                        .webhook_rooms
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| crate::rooms::Pattern::parse(p, false))
                        .collect::<Result<_, _>>()
                        .map_err(|e| ConfigError(format!("CHAT_WEBHOOK_ROOMS: {e}")))?,
                    timeout: parse_duration("CHAT_WEBHOOK_TIMEOUT", &args.webhook_timeout)?,
                    retry_max: parse_duration("CHAT_WEBHOOK_RETRY_MAX", &args.webhook_retry_max)?,
                    give_up_after: parse_duration(
                        "CHAT_WEBHOOK_GIVE_UP_AFTER",
                        &args.webhook_give_up_after,
                    )?,
                    max_backlog: args.webhook_max_backlog,
                    shards: args.webhook_shards,
                }),
            },
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// The server API's configuration (`CHAT_API_*`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// Keys given directly (`CHAT_API_KEYS`).
    pub keys: Vec<String>,
    /// A file of keys read again every [`KEYS_RELOAD_EVERY`] (`CHAT_API_KEYS_FILE`).
    pub keys_file: Option<PathBuf>,
    pub rate_per_sec: f64,
    pub burst: u32,
    pub max_body_bytes: usize,
    pub idempotency_ttl: Duration,
}

impl ApiSettings {
    pub fn validate(&self) -> Result<(), String> {
        for key in &self.keys {
            check_api_key(key).map_err(|e| format!("CHAT_API_KEYS: {e}"))?;
        }
        if !(self.rate_per_sec > 0.0 && self.rate_per_sec.is_finite()) || self.burst == 0 {
            return Err("CHAT_API_RATE_PER_SEC must be > 0 and CHAT_API_BURST at least 1".into());
        }
        if !(1024..=16 << 20).contains(&self.max_body_bytes) {
            return Err("CHAT_API_MAX_BODY_BYTES must be between 1024 and 16777216".into());
        }
        if self.idempotency_ttl < Duration::from_secs(1)
            || self.idempotency_ttl > Duration::from_secs(24 * 3600)
        {
            return Err("CHAT_API_IDEMPOTENCY_TTL must be between 1s and 24h".into());
        }
        Ok(())
    }
}

/// Shortest and longest server API key.
pub const API_KEY_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// Whether `key` can be a server API key: 16 to 256 bytes of printable ASCII, no space or
/// comma (a comma separates keys in `CHAT_API_KEYS`).
pub fn check_api_key(key: &str) -> Result<(), String> {
    if !API_KEY_LEN.contains(&key.len()) {
        return Err(format!(
            "a key is {} bytes; use {} to {}",
            key.len(),
            API_KEY_LEN.start(),
            API_KEY_LEN.end()
        ));
    }
    if !key.bytes().all(|c| c.is_ascii_graphic() && c != b',') {
        return Err("a key must be printable ASCII without spaces or commas".into());
    }
    Ok(())
}

fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| crate::protocol::validate_user(h).is_ok())
        .unwrap_or_else(|| format!("chat-{:06x}", rand::random::<u32>() & 0xff_ffff))
}

/// Parses durations such as `250ms`, `10s`, `5m`, `2h`.
pub fn parse_duration(name: &str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let bad = || {
        ConfigError(format!(
            "{name} `{value}` is not a duration; use a whole number with ms, s, m or h, e.g. 30s"
        ))
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["chat-server"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("X", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("X", "10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("X", "5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("X", "2h"), Ok(Duration::from_secs(7200)));
        let err = parse_duration("CHAT_DRAIN_DEADLINE", "10").unwrap_err();
        assert!(err.0.contains("CHAT_DRAIN_DEADLINE"), "{err}");
        assert!(parse_duration("X", "1.5s").is_err());
        assert!(parse_duration("X", "s").is_err());
    }

    #[test]
    fn dev_mode_is_a_complete_configuration() {
        let s = Settings::from_args(&args(&["--dev"])).unwrap();
        assert!(s.auth.allow_anonymous);
        assert!(s.auth.allowed_origins.is_none());
        assert_eq!(s.log_format, LogFormat::Pretty);
    }

    #[test]
    fn refuses_to_start_without_authentication() {
        let err = Settings::from_args(&args(&[])).unwrap_err();
        assert!(err.0.contains("CHAT_JWT_HS256_SECRET"), "{err}");
    }

    #[test]
    fn rejections_name_what_to_fix() {
        let cases: &[(&[&str], &str)] = &[
            (&["--dev", "--listen", "nope"], "CHAT_LISTEN"),
            (
                &[
                    "--dev",
                    "--drain-reconnect-window",
                    "30s",
                    "--drain-deadline",
                    "20s",
                ],
                "must be shorter than CHAT_DRAIN_DEADLINE",
            ),
            (
                &["--dev", "--max-body-bytes", "20000"],
                "CHAT_MAX_BODY_BYTES",
            ),
            (
                &["--dev", "--send-queue-bytes", "100"],
                "CHAT_SEND_QUEUE_BYTES",
            ),
            (&["--dev", "--rate-per-sec", "0"], "CHAT_RATE_PER_SEC"),
            (&["--dev", "--node-name", "bad name"], "CHAT_NODE_NAME"),
            (&["--jwt-hs256-secret", "short"], "at least 32 bytes"),
            (
                &["--allow-anonymous", "--admin-listen", "0.0.0.0:9090"],
                "CHAT_ADMIN_LISTEN 0.0.0.0:9090 is reachable beyond this machine but CHAT_ADMIN_TOKEN is not set",
            ),
            (
                &["--jwks-url", "http://idp.example/jwks"],
                "CHAT_JWKS_URL must start with https://",
            ),
            (
                &[
                    "--jwks-url",
                    "https://idp.example/jwks",
                    "--jwks-min-refetch",
                    "0s",
                ],
                "CHAT_JWKS_MIN_REFETCH",
            ),
            (
                &["--dev", "--room-rules", r#"[{"pattern":"a b","access":"public"}]"#],
                "CHAT_ROOM_RULES: rule 0: pattern `a b`",
            ),
            (
                &["--dev", "--join-hook-url", "http://127.0.0.1:1/hook"],
                "CHAT_JOIN_HOOK_SECRET must be set",
            ),
            (
                &["--dev", "--join-hook-url", "ftp://h/hook"],
                "CHAT_JOIN_HOOK_URL: invalid URL",
            ),
            (
                &[
                    "--jwt-public-key-file",
                    "/a",
                    "--jwt-rs256-public-key-file",
                    "/b",
                ],
                "set CHAT_JWT_PUBLIC_KEY_FILE only",
            ),
            (&["--dev", "--dm-rate-per-sec", "0"], "CHAT_DM_RATE_PER_SEC"),
            (
                &["--dev", "--history-max-age", "forever"],
                "CHAT_HISTORY_MAX_AGE",
            ),
            (
                &["--dev", "--trusted-proxies", "10.0.0.0/8,10.0.0.300"],
                "CHAT_TRUSTED_PROXIES: `10.0.0.300` is not an address range",
            ),
            (
                &["--dev", "--accept-rate-per-source=-1"],
                "CHAT_ACCEPT_RATE_PER_SOURCE",
            ),
            (
                &["--dev", "--header-read-timeout", "0s"],
                "CHAT_HEADER_READ_TIMEOUT",
            ),
            (
                &["--dev", "--max-pending-connections", "0"],
                "CHAT_MAX_PENDING_CONNECTIONS",
            ),
            (
                &["--dev", "--redis-url", "localhost:6379"],
                "must start with redis:// or rediss://",
            ),
            (
                &["--dev", "--redis-url", "redis://a:1,redis://b:1"],
                "set CHAT_REDIS_CLUSTER=true",
            ),
            (
                &[
                    "--dev",
                    "--redis-cluster",
                    "--redis-url",
                    "redis://a:1,rediss://b:1",
                ],
                "mixes redis:// and rediss://",
            ),
            (
                &[
                    "--dev",
                    "--redis-cluster",
                    "--redis-url",
                    "redis://a:1",
                    "--redis-key-prefix",
                    "{chat}",
                ],
                "must not contain `{` or `}`",
            ),
        ];
        for (argv, expected) in cases {
            let err = Settings::from_args(&args(argv)).unwrap_err();
            assert!(err.0.contains(expected), "{argv:?}: {err}");
        }
    }

    #[test]
    fn dev_mode_may_expose_the_admin_port_and_a_token_allows_it_elsewhere() {
        assert!(Settings::from_args(&args(&["--dev", "--admin-listen", "0.0.0.0:9090"])).is_ok());
        let s = Settings::from_args(&args(&[
            "--allow-anonymous",
            "--admin-listen",
            "0.0.0.0:9090",
            "--admin-token",
            "t0ken",
        ]))
        .unwrap();
        assert_eq!(s.admin_token.as_deref(), Some("t0ken"));
    }

    #[test]
    fn auth_and_room_settings_are_read() {
        let s = Settings::from_args(&args(&[
            "--jwks-url",
            "https://idp.example/jwks",
            "--jwt-issuer",
            "https://idp.example",
            "--jwt-audience",
            "chat",
            "--room-rules",
            r#"[{"pattern":"lobby","access":"public"}]"#,
            "--dm-policy",
            "shared_room",
        ]))
        .unwrap();
        let jwks = s.auth.jwks.unwrap();
        assert_eq!(jwks.url, "https://idp.example/jwks");
        assert_eq!(jwks.refresh, Duration::from_secs(300));
        assert_eq!(jwks.min_refetch, Duration::from_secs(30));
        assert_eq!(s.auth.issuer.as_deref(), Some("https://idp.example"));
        assert!(!s.room_rules.is_open());
        assert_eq!(s.dm_policy, crate::rooms::DmPolicy::SharedRoom);
        assert!(!s.auth.allow_anonymous);
    }

    #[test]
    fn redis_cluster_takes_several_seed_urls() {
        let s = Settings::from_args(&args(&[
            "--dev",
            "--redis-cluster",
            "--redis-url",
            "redis://a:7000/, redis://b:7001/",
        ]))
        .unwrap();
        let redis = s.redis.unwrap();
        assert!(redis.cluster);
        assert_eq!(
            redis.urls().collect::<Vec<_>>(),
            vec!["redis://a:7000/", "redis://b:7001/"]
        );
    }

    #[test]
    fn origins_are_normalized() {
        let s = Settings::from_args(&args(&[
            "--allow-anonymous",
            "--allowed-origins",
            "https://chat.example.com/, http://localhost:8080",
        ]))
        .unwrap();
        assert_eq!(
            s.auth.allowed_origins,
            Some(vec![
                "https://chat.example.com".to_string(),
                "http://localhost:8080".to_string()
            ])
        );
    }
}
