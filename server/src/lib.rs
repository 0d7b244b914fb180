//! ChatCluster's chat server: one process per pod, WebSocket rooms with ordered,
//! resumable history, direct messages, presence, limits and graceful drain.
//!
//! [`start`] binds the public and admin ports and returns a [`RunningServer`]; the
//! binary in `main.rs` adds signals and logging. Tests embed the server the same way.
//!
//! Modules, pure ones (no I/O, no clock) marked *pure* (`e2e/tests/module_graph.rs`
//! checks they stay so, and that no modules import each other in a circle):
//! - the wire: `protocol` (*pure*: frames, validation, error and close codes);
//! - who may do what: `auth` (tokens; `auth::keys` *pure*), `rooms` (*pure*: room
//!   rules), `join_hook` (the application's answer), `client_addr` and `ratelimit`
//!   (*pure*: addresses and token buckets);
//! - connections: `listener` (accept, header timeout, pending cap), `admission` (*pure*:
//!   connection places), `http` (routes, upgrade checks), `upgrade` (the WebSocket
//!   handshake, keeping the socket), `first_frame` (the `auth` frame), `session` (one
//!   WebSocket), `wire` (a connection's outbound side: direct writes, its queue, framing),
//!   `hub` (this node's sessions and rooms), `fan_out` (offering a delivery to many
//!   sessions; big rooms on two threads), `drain` (the drain's phases and pacing);
//! - messages: `history` (*pure*: a room's log and resume), `backplane` (in-memory for
//!   one node, `backplane::redis` for many);
//! - the application's side: `api` (the server API; `api::model` is its requests and
//!   answers), `user_command` (disconnect and remove-from-room, as nodes pass them),
//!   `events` (events to the application's webhook, delivered at least once), `signature`
//!   (the HMAC of what the server posts to the application);
//! - around them: `config` (flags → settings), `state` (what every task shares),
//!   `metrics`, `http_client` (JWKS, join hook, webhook), `sync`, `clock`.
//!
//! Public modules are those the tests, the fuzz targets and the e2e tools use.

mod admission;
pub mod api;
pub mod auth;
pub mod backplane;
pub mod client_addr;
pub mod clock;
pub mod config;
#[cfg(test)]
mod config_reference;
pub mod drain;
pub mod events;
mod fan_out;
mod first_frame;
pub mod history;
pub mod history_budget;
mod http;
pub mod http_client;
mod hub;
pub mod join_hook;
mod listener;
pub mod metrics;
pub mod protocol;
mod ratelimit;
pub mod rooms;
mod session;
pub mod signature;
mod state;
pub mod sync;
mod upgrade;
pub mod user_command;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::backplane::memory::MemoryBackplane;
use crate::backplane::redis::RedisBackplane;
use crate::backplane::{Budget, SharedBackplane};
use crate::config::Settings;
use crate::fan_out::DeliveryMetrics;
use crate::history::HistoryLimits;
use crate::hub::Hub;
use crate::join_hook::JoinHook;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Auth(#[from] auth::SetupError),
    #[error("invalid configuration: CHAT_JOIN_HOOK_URL: {0}")]
    JoinHook(String),
    #[error(transparent)]
    Redis(#[from] backplane::redis::RedisConfigError),
    #[error("invalid configuration: {0}")]
    ApiKeys(#[from] api::keys::KeysError),
    #[error("invalid configuration: CHAT_WEBHOOK_CA_FILE: {0}")]
    Webhook(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started server. Dropping it does not stop it; drain it (or request a stop) and
/// await [`RunningServer::stopped`].
pub struct RunningServer {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The server API's address, when it is on (an API key is configured).
    pub api_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
}

impl RunningServer {
    /// Starts a drain with the configured timing, after which the server stops (as a
    /// `POST /admin/drain` without a body would); false when a drain was under way.
    pub fn begin_drain(&self) -> bool {
        self.state.begin_drain()
    }

    /// Asks the server to stop, as SIGTERM does: while serving it drains with the
    /// configured timing; a drain under way (even one started with `keep_running`) is
    /// left to finish and the server then stops; a drained server stops at once.
    /// Returns whether to wait for [`RunningServer::stopped`] (false: exit now).
    pub fn request_stop(&self) -> bool {
        self.state.request_stop().waits()
    }

    /// Resolves when the server has stopped: the process may exit. A drain started with
    /// `keep_running` does not stop it; a later stop request does.
    pub async fn stopped(&self) {
        self.state.drain.stopped().await
    }
}

/// Binds both ports and serves until the server stops (see [`RunningServer::stopped`]).
pub async fn start(settings: Settings) -> Result<RunningServer, StartError> {
    settings.validate()?;
    let metrics = Metrics::new();
    let auth = Authenticator::new(settings.auth.clone(), metrics.clone())?;
    if let (Some(jwks), Some(cfg)) = (auth.jwks(), &settings.auth.jwks) {
        let every = cfg.refresh;
        tokio::spawn(async move {
            loop {
                let _ = jwks.refresh().await;
                tokio::time::sleep(every).await;
            }
        });
    }
    let join_hook = match &settings.join_hook {
        Some(hook) => {
            Some(JoinHook::new(hook.clone(), metrics.clone()).map_err(StartError::JoinHook)?)
        }
        None => None,
    };
    let hub = Arc::new(
        Hub::with_room_rules(
            settings.room_rules.clone(),
            settings.presence_max_members as u64,
        )
        .counting(DeliveryMetrics {
            delivered: metrics.messages_delivered.clone(),
            latency: metrics.delivery_latency.clone(),
            direct: metrics.delivery_paths.with_label_values(&["direct"]),
            queued: metrics.delivery_paths.with_label_values(&["queued"]),
        }),
    );
    let counts = Arc::downgrade(&hub);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let Some(hub) = counts.upgrade() else { return };
            hub.flush_presence_counts();
        }
    });
    let limits = HistoryLimits {
        max_messages: settings.history_max_messages,
        max_age_ms: settings.history_max_age.as_millis() as u64,
    };
    let budget = Budget {
        max_rooms: settings.max_rooms,
        max_history_bytes: settings.history_max_bytes,
        max_sessions_per_user: settings.max_sessions_per_user,
        max_new_rooms_per_user_per_hour: settings.max_new_rooms_per_user_per_hour,
    };
    let poster = match &settings.webhook {
        Some(webhook) => Some(
            events::Poster::new(webhook.clone(), metrics.clone()).map_err(StartError::Webhook)?,
        ),
        None => None,
    };
    let backplane: SharedBackplane = match &settings.redis {
        Some(redis) => RedisBackplane::start(
            redis,
            &settings.node_name,
            limits,
            budget,
            hub.clone(),
            metrics.clone(),
            poster,
        )?,
        None => {
            let mut memory = MemoryBackplane::new(hub.clone(), limits, budget, &settings.node_name);
            if let (Some(webhook), Some(poster)) = (&settings.webhook, poster) {
                let queue = events::memory::MemoryEvents::new(webhook.max_backlog, metrics.clone());
                queue.spawn_deliverer(poster);
                memory = memory.with_events(queue, webhook.rooms.clone());
            }
            let memory = Arc::new(memory);
            let sweeper = memory.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    sweeper.evict_idle_rooms();
                }
            });
            memory
        }
    };
    let api = match &settings.api {
        Some(api) => {
            let keys = Arc::new(api::keys::ApiKeys::load(
                api.keys.clone(),
                api.keys_file.clone(),
            )?);
            let listener = bind("server API", api.listen).await?;
            let addr = local_addr("server API", api.listen, &listener)?;
            Some((api.clone(), keys, listener, addr))
        }
        None => None,
    };
    let public = bind("public", settings.listen).await?;
    let admin = bind("admin", settings.admin_listen).await?;
    let public_addr = local_addr("public", settings.listen, &public)?;
    let admin_addr = local_addr("admin", settings.admin_listen, &admin)?;
    let state = Arc::new(AppState::new(
        settings, hub, backplane, metrics, auth, join_hook,
    ));

    let limits = listener::PendingLimits {
        header_read_timeout: state.settings.header_read_timeout,
        max_pending: state.settings.max_pending_connections,
    };
    let mut ports = vec![
        ("public", public, http::public_router(state.clone())),
        ("admin", admin, http::admin_router(state.clone())),
    ];
    let api_addr = api.map(|(settings, keys, listener, addr)| {
        api::spawn_keys_reload(keys.clone());
        ports.push(("api", listener, api::router(state.clone(), settings, keys)));
        addr
    });
    for (port, listener, router) in ports {
        tokio::spawn(listener::serve(
            port,
            listener,
            router,
            limits,
            state.drain.clone(),
            state.metrics.clone(),
        ));
    }
    tracing::info!(%public_addr, %admin_addr, ?api_addr, node = %state.settings.node_name, backplane = state.backplane.kind(), "chat server listening");
    Ok(RunningServer {
        public_addr,
        admin_addr,
        api_addr,
        state,
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    addr: SocketAddr,
    l: &TcpListener,
) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}
