//! Everything a request or a session needs, built once at start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::Authenticator;
use crate::backplane::SharedBackplane;
use crate::config::Settings;
use crate::drain::{Drain, DrainPlan};
use crate::http::ConnectionSlots;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::TokenBucket;

pub struct AppState {
    pub settings: Settings,
    pub hub: Arc<Hub>,
    pub backplane: SharedBackplane,
    pub metrics: Metrics,
    pub drain: Arc<Drain>,
    pub auth: Authenticator,
    pub accept_bucket: Mutex<TokenBucket>,
    pub slots: ConnectionSlots,
    next_session_id: AtomicU64,
}

impl AppState {
    pub fn new(
        settings: Settings,
        hub: Arc<Hub>,
        backplane: SharedBackplane,
        metrics: Metrics,
        auth: Authenticator,
    ) -> Self {
        let accept_bucket = Mutex::new(TokenBucket::new(
            settings.accept_rate_per_sec,
            settings.accept_burst,
            Instant::now(),
        ));
        AppState {
            settings,
            hub,
            backplane,
            metrics,
            drain: Drain::new(),
            auth,
            accept_bucket,
            slots: ConnectionSlots::default(),
            next_session_id: AtomicU64::new(1),
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts a drain with the configured timing; false when already draining.
    pub fn begin_drain(&self) -> bool {
        self.drain.begin(
            self.hub.clone(),
            self.metrics.clone(),
            DrainPlan {
                reconnect_window: self.settings.drain_reconnect_window,
                deadline: self.settings.drain_deadline,
                max_jitter: self.settings.drain_max_jitter,
            },
        )
    }
}
