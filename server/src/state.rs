//! Everything a request or a session needs, built once at start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::admission::Places;
use crate::auth::Authenticator;
use crate::backplane::SharedBackplane;
use crate::config::Settings;
use crate::drain::{BeginOutcome, Drain, DrainPlan, Phase, StopAction, UndrainError};
use crate::hub::Hub;
use crate::join_hook::JoinHook;
use crate::metrics::Metrics;
use crate::ratelimit::{KeyedBuckets, SourceBuckets, TokenBucket};

/// Most source addresses the per-source accept limit tracks at once.
const MAX_TRACKED_SOURCES: usize = 65_536;
/// Most users the per-user DM limit tracks at once.
const MAX_TRACKED_DM_SENDERS: usize = 65_536;

pub struct AppState {
    pub settings: Settings,
    pub hub: Arc<Hub>,
    pub backplane: SharedBackplane,
    pub metrics: Metrics,
    pub drain: Arc<Drain>,
    pub auth: Authenticator,
    /// The application's join hook, when configured.
    pub join_hook: Option<JoinHook>,
    /// Direct messages per user on this node.
    pub dm_buckets: Mutex<KeyedBuckets<Arc<str>>>,
    pub accept_bucket: Mutex<TokenBucket>,
    /// `None` when the per-source limit is off (`CHAT_ACCEPT_RATE_PER_SOURCE=0`).
    pub source_buckets: Option<Mutex<SourceBuckets>>,
    /// Connections open or being upgraded (at most `CHAT_MAX_CONNECTIONS`).
    pub connections: Places,
    /// Connections upgraded without credentials that have not yet sent their `auth`
    /// frame (at most `CHAT_MAX_PENDING_CONNECTIONS`).
    pub awaiting_auth: Places,
    next_session_id: AtomicU64,
}

impl AppState {
    pub fn new(
        settings: Settings,
        hub: Arc<Hub>,
        backplane: SharedBackplane,
        metrics: Metrics,
        auth: Authenticator,
        join_hook: Option<JoinHook>,
    ) -> Self {
        let accept_bucket = Mutex::new(TokenBucket::new(
            settings.accept_rate_per_sec,
            settings.accept_burst,
            Instant::now(),
        ));
        let source_buckets = (settings.accept_rate_per_source > 0.0).then(|| {
            Mutex::new(SourceBuckets::new(
                settings.accept_rate_per_source,
                settings.accept_burst_per_source,
                MAX_TRACKED_SOURCES,
            ))
        });
        let dm_buckets = Mutex::new(KeyedBuckets::new(
            settings.dm_rate_per_sec,
            settings.dm_burst,
            MAX_TRACKED_DM_SENDERS,
        ));
        AppState {
            source_buckets,
            dm_buckets,
            join_hook,
            settings,
            hub,
            backplane,
            metrics,
            drain: Drain::new(),
            auth,
            accept_bucket,
            connections: Places::default(),
            awaiting_auth: Places::default(),
            next_session_id: AtomicU64::new(1),
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The drain this node is configured for: `CHAT_DRAIN_*`, no `keep_running`.
    pub fn configured_drain_plan(&self) -> DrainPlan {
        DrainPlan {
            // SIGTERM: the pod is already out of the endpoints (preStop covers that).
            notice_delay: std::time::Duration::ZERO,
            reconnect_window: self.settings.drain_reconnect_window,
            deadline: self.settings.drain_deadline,
            max_jitter: self.settings.drain_max_jitter,
            keep_running: false,
        }
    }

    /// Starts a drain with the configured timing, after which the node stops; false when
    /// a drain was already under way.
    pub fn begin_drain(&self) -> bool {
        self.begin_drain_with(self.configured_drain_plan()).started
    }

    /// Starts a drain with `plan` (see [`crate::drain::plan_drain`] for checking a
    /// requested one); a drain already under way is left unchanged.
    pub fn begin_drain_with(&self, plan: DrainPlan) -> BeginOutcome {
        self.drain
            .begin(self.hub.clone(), self.metrics.clone(), plan)
    }

    /// A stop request (SIGTERM): see [`Drain::request_stop`].
    pub fn request_stop(&self) -> StopAction {
        self.drain.request_stop(
            self.hub.clone(),
            self.metrics.clone(),
            self.configured_drain_plan(),
        )
    }

    /// Cancels a `keep_running` drain: see [`Drain::undrain`].
    pub fn undrain(&self) -> Result<Phase, UndrainError> {
        self.drain.undrain()
    }
}
