//! The drain state machine: Serving → Draining → (Drained →) Stopped, and back to
//! Serving when a drain kept running is cancelled.
//!
//! On drain, readiness fails at once and new upgrades are refused (the HTTP layer asks
//! [`Drain::phase`]); every connected session gets a `reconnect` notice at a time spread
//! evenly over the reconnect window so the clients do not all reconnect at the same
//! instant. The drain finishes when no connection is left or when the deadline passes,
//! when the remaining connections are force-closed. Then:
//!
//! - a drain without `keep_running` (SIGTERM, a plain `POST /admin/drain`, or
//!   [`crate::state::AppState::begin_drain`]) moves to **Stopped**: the listeners shut
//!   down and the process exits;
//! - a drain with `keep_running` (`POST /admin/drain` with `{"keep_running": true}`, so an
//!   operator can drain a pod before it lowers a StatefulSet's replicas) moves to
//!   **Drained**: the node stays alive but not ready and refuses upgrades, until a stop
//!   is requested (SIGTERM: Stopped at once) or the drain is cancelled
//!   ([`Drain::undrain`], `POST /admin/undrain`: Serving again).
//!
//! A stop request (SIGTERM) while a `keep_running` drain is still under way does not
//! restart it: the node stops when that drain finishes, at the same deadline.
//! [`stop_action`] and [`undrain_decision`] decide, per phase, what a stop request and an
//! undrain do; [`parse_drain_request`] and [`plan_drain`] check an admin drain request.
//! All four are pure.
//!
//! Every transition, and every notice or force-close a drain sends, happens under one
//! lock, so once [`Drain::undrain`] returns the cancelled drain sends nothing more.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::wire::Outbound;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Serving,
    Draining,
    /// A `keep_running` drain finished: alive, not ready, refusing upgrades, waiting for
    /// a stop request or an undrain.
    Drained,
    Stopped,
}

impl Phase {
    /// The name `/admin/status` and `/admin/undrain` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Drained => "drained",
            Phase::Stopped => "stopped",
        }
    }
}

/// Timing of a drain, and whether the node stays up once it is over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainPlan {
    /// How long after the drain begins the first reconnect notice goes out: the node is
    /// already not ready and refuses upgrades, so by then the load balancer has taken it
    /// out of rotation and the first clients do not come back to it.
    pub notice_delay: Duration,
    pub reconnect_window: Duration,
    pub deadline: Duration,
    pub max_jitter: Duration,
    /// When the drain finishes, stay alive in [`Phase::Drained`] instead of stopping.
    pub keep_running: bool,
}

/// The optional JSON body of `POST /admin/drain`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Overrides the configured reconnect window for this drain.
    #[serde(default)]
    pub reconnect_window_seconds: Option<f64>,
    /// Stay alive (not ready) once the drain is over, until SIGTERM or an undrain.
    #[serde(default)]
    pub keep_running: bool,
    /// Wait this long before the first reconnect notice (the window starts after it), so
    /// endpoint removal reaches the load balancer first. Default 0.
    #[serde(default)]
    pub notice_delay_seconds: Option<f64>,
}

const DRAIN_BODY_SHAPE: &str = r#"send no body, or {"reconnect_window_seconds": <number>, "keep_running": <true|false>, "notice_delay_seconds": <number>}"#;

/// Why a drain request was refused (answered 400). Each message is one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DrainRequestError {
    #[error("the request body is not JSON ({0}); {DRAIN_BODY_SHAPE}")]
    NotJson(String),
    #[error("the request body does not fit ({0}); {DRAIN_BODY_SHAPE}")]
    Fields(String),
    #[error("reconnect_window_seconds ({window}) must be greater than 0 and shorter than this node's drain deadline ({deadline:?})")]
    Window { window: f64, deadline: Duration },
    #[error("notice_delay_seconds ({delay}) must be at least 0, and with the reconnect window ({window:?}) shorter than this node's drain deadline ({deadline:?})")]
    NoticeDelay {
        delay: f64,
        window: Duration,
        deadline: Duration,
    },
}

/// Reads the body of `POST /admin/drain`: empty (or only whitespace) means the
/// configured drain, as before the body existed; otherwise a JSON object read as a
/// [`DrainRequest`] (a `null` field counts as absent).
pub fn parse_drain_request(body: &[u8]) -> Result<DrainRequest, DrainRequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DrainRequest::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DrainRequestError::NotJson(e.to_string()))?;
    // serde would read a struct from an array too; only an object is meant.
    let other = match value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::Null => Some("null"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::String(_) => Some("a string"),
    };
    if let Some(other) = other {
        return Err(DrainRequestError::Fields(format!(
            "expected a JSON object, got {other}"
        )));
    }
    DrainRequest::deserialize(value).map_err(|e| DrainRequestError::Fields(e.to_string()))
}

/// The plan of the drain `request` asks for, given this node's configured plan: the
/// requested window must be finite, greater than 0 and shorter than the configured
/// deadline (the deadline itself is not negotiable: the pod's termination grace period
/// is sized for it).
pub fn plan_drain(
    request: &DrainRequest,
    configured: DrainPlan,
) -> Result<DrainPlan, DrainRequestError> {
    let reconnect_window = match request.reconnect_window_seconds {
        None => configured.reconnect_window,
        Some(window) => {
            let refused = DrainRequestError::Window {
                window,
                deadline: configured.deadline,
            };
            if !window.is_finite() || window <= 0.0 {
                return Err(refused);
            }
            match Duration::try_from_secs_f64(window) {
                Ok(w) if !w.is_zero() && w < configured.deadline => w,
                _ => return Err(refused),
            }
        }
    };
    let notice_delay = match request.notice_delay_seconds {
        None => Duration::ZERO,
        Some(delay) => {
            let refused = DrainRequestError::NoticeDelay {
                delay,
                window: reconnect_window,
                deadline: configured.deadline,
            };
            if !delay.is_finite() || delay < 0.0 {
                return Err(refused);
            }
            match Duration::try_from_secs_f64(delay) {
                Ok(d)
                    if d.checked_add(reconnect_window)
                        .is_some_and(|end| end < configured.deadline) =>
                {
                    d
                }
                _ => return Err(refused),
            }
        }
    };
    Ok(DrainPlan {
        reconnect_window,
        notice_delay,
        keep_running: request.keep_running,
        ..configured
    })
}

/// What a stop request (SIGTERM, Ctrl-C) does in each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAction {
    /// Serving: drain with the configured timing, then stop.
    BeginDrain,
    /// A drain is under way: let it finish (same deadline, no new notices), then stop.
    WaitForDrain,
    /// Drained, or already stopped: stop now.
    StopNow,
}

impl StopAction {
    /// Whether the caller should wait for [`Drain::stopped`] before exiting.
    pub fn waits(self) -> bool {
        !matches!(self, StopAction::StopNow)
    }
}

pub fn stop_action(phase: Phase) -> StopAction {
    match phase {
        Phase::Serving => StopAction::BeginDrain,
        Phase::Draining => StopAction::WaitForDrain,
        Phase::Drained | Phase::Stopped => StopAction::StopNow,
    }
}

/// What an undrain request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndrainDecision {
    AlreadyServing,
    /// Cancel the `keep_running` drain (under way or finished) and serve again.
    Cancel,
    /// The node is stopping: a drain without `keep_running`, a stop request, or stopped.
    Refuse,
}

/// `keep_running` and `stop_requested` are those of the drain in effect (ignored while
/// serving).
pub fn undrain_decision(phase: Phase, keep_running: bool, stop_requested: bool) -> UndrainDecision {
    match phase {
        Phase::Serving => UndrainDecision::AlreadyServing,
        Phase::Draining | Phase::Drained if keep_running && !stop_requested => {
            UndrainDecision::Cancel
        }
        Phase::Draining | Phase::Drained | Phase::Stopped => UndrainDecision::Refuse,
    }
}

/// Why an undrain was refused (answered 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UndrainError {
    #[error(
        "this node is stopping (SIGTERM or a drain without keep_running) and cannot be undrained"
    )]
    Stopping,
}

/// When, relative to the start of the drain, each of `n` sessions gets its notice:
/// evenly spaced over `window`, the first at 0 and the last at `window * (n-1)/n`.
pub fn notice_offsets(n: usize, window: Duration) -> Vec<Duration> {
    (0..n)
        .map(|i| window.mul_f64(i as f64 / n as f64))
        .collect()
}

/// The `after_ms` a notice carries: a random wait in `0..=max_jitter`.
pub fn jitter_ms(max_jitter: Duration) -> u64 {
    let max = max_jitter.as_millis() as u64;
    if max == 0 {
        0
    } else {
        rand::random::<u64>() % (max + 1)
    }
}

/// The answer to a drain request: whether it started a drain, and the plan of the drain
/// in effect (the running one when a drain was already under way).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeginOutcome {
    pub started: bool,
    pub in_effect: DrainPlan,
}

/// The drain part of `/admin/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainStatus {
    pub phase: Phase,
    /// `None` while serving.
    pub drain: Option<DrainInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainInfo {
    /// Before the first notice; the window follows it.
    pub notice_delay_ms: u64,
    pub reconnect_window_ms: u64,
    pub deadline_ms: u64,
    /// Since the drain began (it keeps counting once drained).
    pub elapsed_ms: u64,
    pub connections_at_start: usize,
    pub keep_running: bool,
    pub stop_requested: bool,
}

/// The drain in effect (from its start until an undrain; kept once it has finished).
struct ActiveDrain {
    generation: u64,
    plan: DrainPlan,
    start: Instant,
    connections_at_start: usize,
    stop_requested: bool,
    metrics: Metrics,
    notices: AbortHandle,
    runner: AbortHandle,
}

#[derive(Default)]
struct Inner {
    /// Counts drains started, so a task of a cancelled drain recognises it is stale.
    generation: u64,
    active: Option<ActiveDrain>,
}

/// One node's drain state. The phase is also published on a watch channel (for
/// [`Drain::stopped`]); it only changes under the `inner` lock.
pub struct Drain {
    phase: watch::Sender<Phase>,
    inner: Mutex<Inner>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            phase: watch::Sender::new(Phase::Serving),
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Starts draining with `plan`; when a drain is already under way (or over) it is
    /// left unchanged and `started` is false.
    pub fn begin(
        self: &Arc<Self>,
        hub: Arc<Hub>,
        metrics: Metrics,
        plan: DrainPlan,
    ) -> BeginOutcome {
        let mut inner = lock(&self.inner);
        self.begin_locked(&mut inner, hub, metrics, plan, false)
    }

    fn begin_locked(
        self: &Arc<Self>,
        inner: &mut Inner,
        hub: Arc<Hub>,
        metrics: Metrics,
        plan: DrainPlan,
        stop_requested: bool,
    ) -> BeginOutcome {
        if self.phase() != Phase::Serving {
            let in_effect = inner.active.as_ref().map_or(plan, |a| a.plan);
            return BeginOutcome {
                started: false,
                in_effect,
            };
        }
        inner.generation += 1;
        let generation = inner.generation;
        let start = Instant::now();
        let connections_at_start = hub.connection_count();
        self.phase.send_replace(Phase::Draining);
        metrics.draining.set(1);
        tracing::info!(
            connections = connections_at_start,
            notice_delay_ms = plan.notice_delay.as_millis() as u64,
            window_ms = plan.reconnect_window.as_millis() as u64,
            deadline_ms = plan.deadline.as_millis() as u64,
            keep_running = plan.keep_running,
            "drain started"
        );
        // Both tasks wait on `inner` before acting, so they see `active` set below.
        let notices = tokio::spawn(send_notices(
            self.clone(),
            hub.clone(),
            plan,
            start,
            generation,
        ));
        let runner = tokio::spawn(run_drain(self.clone(), hub, plan, start, generation));
        inner.active = Some(ActiveDrain {
            generation,
            plan,
            start,
            connections_at_start,
            stop_requested,
            metrics,
            notices: notices.abort_handle(),
            runner: runner.abort_handle(),
        });
        BeginOutcome {
            started: true,
            in_effect: plan,
        }
    }

    /// A stop request (SIGTERM, Ctrl-C), decided by [`stop_action`]: while serving, a
    /// drain with `configured` (no `keep_running`) starts; a drain under way is marked
    /// so it stops when it finishes; a drained node stops now. Returns what was done:
    /// [`StopAction::waits`] tells whether to wait for [`Drain::stopped`].
    pub fn request_stop(
        self: &Arc<Self>,
        hub: Arc<Hub>,
        metrics: Metrics,
        configured: DrainPlan,
    ) -> StopAction {
        let mut inner = lock(&self.inner);
        let action = stop_action(self.phase());
        match action {
            StopAction::BeginDrain => {
                let plan = DrainPlan {
                    keep_running: false,
                    ..configured
                };
                self.begin_locked(&mut inner, hub, metrics, plan, true);
            }
            StopAction::WaitForDrain => {
                if let Some(active) = inner.active.as_mut() {
                    active.stop_requested = true;
                }
                tracing::info!("stop requested: stopping when the drain under way finishes");
            }
            StopAction::StopNow => {
                if let Some(active) = inner.active.as_mut() {
                    active.stop_requested = true;
                }
                if self.phase() != Phase::Stopped {
                    tracing::info!("stop requested while drained: stopping now");
                    self.phase.send_replace(Phase::Stopped);
                }
            }
        }
        action
    }

    /// Cancels a `keep_running` drain, under way or finished, when no stop was requested:
    /// the notice and drain tasks are aborted, the node is Serving again (ready when the
    /// backplane is, accepting upgrades, `chat_draining` 0). Returns the phase it left
    /// (Serving when it was already serving: nothing to do).
    ///
    /// Sessions already told to reconnect are not called back: they close (1012) and
    /// reconnect as told, perhaps to this node again. Sessions not yet told stay.
    pub fn undrain(&self) -> Result<Phase, UndrainError> {
        let mut inner = lock(&self.inner);
        let phase = self.phase();
        let (keep_running, stop_requested) = inner
            .active
            .as_ref()
            .map_or((false, false), |a| (a.plan.keep_running, a.stop_requested));
        match undrain_decision(phase, keep_running, stop_requested) {
            UndrainDecision::AlreadyServing => Ok(Phase::Serving),
            UndrainDecision::Refuse => Err(UndrainError::Stopping),
            UndrainDecision::Cancel => {
                if let Some(active) = inner.active.take() {
                    active.notices.abort();
                    active.runner.abort();
                    active.metrics.draining.set(0);
                    tracing::info!(
                        was = phase.as_str(),
                        elapsed_ms = active.start.elapsed().as_millis() as u64,
                        "undrained: serving again"
                    );
                }
                self.phase.send_replace(Phase::Serving);
                Ok(phase)
            }
        }
    }

    /// The phase and the drain in effect, read together.
    pub fn status(&self) -> DrainStatus {
        let inner = lock(&self.inner);
        let phase = self.phase();
        let drain = inner
            .active
            .as_ref()
            .filter(|_| phase != Phase::Serving)
            .map(|a| DrainInfo {
                notice_delay_ms: a.plan.notice_delay.as_millis() as u64,
                reconnect_window_ms: a.plan.reconnect_window.as_millis() as u64,
                deadline_ms: a.plan.deadline.as_millis() as u64,
                elapsed_ms: a.start.elapsed().as_millis() as u64,
                connections_at_start: a.connections_at_start,
                keep_running: a.plan.keep_running,
                stop_requested: a.stop_requested,
            });
        DrainStatus { phase, drain }
    }

    /// Resolves once the node has stopped (the process may exit). A `keep_running` drain
    /// does not resolve it by finishing: only a stop request after it does.
    pub async fn stopped(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Stopped).await;
    }

    /// Runs `act` only while drain `generation` is under way, holding the lock, so a
    /// drain cancelled by [`Drain::undrain`] sends nothing afterwards. False when the
    /// drain is no longer under way.
    fn while_draining(&self, generation: u64, act: impl FnOnce()) -> bool {
        let inner = lock(&self.inner);
        let current = self.phase() == Phase::Draining
            && inner
                .active
                .as_ref()
                .is_some_and(|a| a.generation == generation);
        if current {
            act();
        }
        current
    }

    /// Drain `generation` is over: Drained when it keeps running and no stop was
    /// requested, else Stopped.
    fn finish(&self, generation: u64) {
        let mut inner = lock(&self.inner);
        if self.phase() != Phase::Draining {
            return;
        }
        let Some(active) = inner.active.as_mut().filter(|a| a.generation == generation) else {
            return;
        };
        active.notices.abort();
        if active.plan.keep_running && !active.stop_requested {
            tracing::info!(
                elapsed_ms = active.start.elapsed().as_millis() as u64,
                "drained: alive and not ready, waiting for SIGTERM (or POST /admin/undrain)"
            );
            self.phase.send_replace(Phase::Drained);
        } else {
            self.phase.send_replace(Phase::Stopped);
        }
    }
}

async fn run_drain(
    drain: Arc<Drain>,
    hub: Arc<Hub>,
    plan: DrainPlan,
    start: Instant,
    generation: u64,
) {
    let deadline = start + plan.deadline;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if hub.connection_count() == 0 {
            tracing::info!(
                elapsed_ms = start.elapsed().as_millis() as u64,
                "drain complete: no connection left"
            );
            break;
        }
        if Instant::now() >= deadline {
            let forced = drain.while_draining(generation, || {
                let left = hub.sessions();
                tracing::warn!(
                    connections = left.len(),
                    "drain deadline passed: force-closing"
                );
                for s in &left {
                    s.wire.control(Outbound::ForceClose);
                }
            });
            if forced {
                let grace = Instant::now() + Duration::from_secs(1);
                while hub.connection_count() > 0 && Instant::now() < grace {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            break;
        }
    }
    drain.finish(generation);
}

/// Sends each session its notice at its slot; sessions that registered after the drain
/// began (their upgrade was already past the check) are told at the end of the window.
async fn send_notices(
    drain: Arc<Drain>,
    hub: Arc<Hub>,
    plan: DrainPlan,
    start: Instant,
    generation: u64,
) {
    let mut sessions = hub.sessions();
    sessions.sort_by_key(|s| s.id);
    let offsets = notice_offsets(sessions.len(), plan.reconnect_window);
    let start = start + plan.notice_delay;
    let mut told = HashSet::new();
    let notice = || Outbound::Reconnect {
        after_ms: jitter_ms(plan.max_jitter),
    };
    for (session, offset) in sessions.iter().zip(offsets) {
        tokio::time::sleep_until(start + offset).await;
        if !drain.while_draining(generation, || session.wire.control(notice())) {
            return;
        }
        told.insert(session.id);
    }
    tokio::time::sleep_until(start + plan.reconnect_window).await;
    drain.while_draining(generation, || {
        for session in hub.sessions() {
            if !told.contains(&session.id) {
                session.wire.control(notice());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_evenly_spread_over_the_window() {
        let w = Duration::from_secs(10);
        assert!(notice_offsets(0, w).is_empty());
        assert_eq!(notice_offsets(1, w), vec![Duration::ZERO]);
        let o = notice_offsets(4, w);
        assert_eq!(
            o,
            vec![
                Duration::ZERO,
                Duration::from_millis(2500),
                Duration::from_secs(5),
                Duration::from_millis(7500)
            ]
        );
        let many = notice_offsets(1000, w);
        assert!(many
            .windows(2)
            .all(|p| p[1] - p[0] == Duration::from_millis(10)));
        assert!(*many.last().unwrap() < w);
    }

    #[test]
    fn jitter_stays_in_range() {
        assert_eq!(jitter_ms(Duration::ZERO), 0);
        assert!((0..1000).all(|_| jitter_ms(Duration::from_millis(300)) <= 300));
    }

    #[test]
    fn jitter_reaches_both_ends_inclusive() {
        // 0..=1 ms: 2,000 draws miss one end with probability 2^-1999.
        let draws: HashSet<u64> = (0..2000)
            .map(|_| jitter_ms(Duration::from_millis(1)))
            .collect();
        assert_eq!(draws, HashSet::from([0, 1]));
    }

    #[test]
    fn a_zero_notice_delay_is_accepted() {
        let req = parse_drain_request(br#"{"notice_delay_seconds": 0}"#).unwrap();
        assert_eq!(
            plan_drain(&req, configured()).map(|p| p.notice_delay),
            Ok(Duration::ZERO)
        );
    }

    /// A stop request while serving drains with `keep_running` off whatever the
    /// configured plan says: the node stops once it is empty instead of waiting drained.
    #[tokio::test]
    async fn a_stop_request_drains_and_then_stops() {
        let drain = Drain::new();
        let hub = Arc::new(Hub::new());
        assert_eq!(drain.phase(), Phase::Serving);
        let keep = DrainPlan {
            keep_running: true,
            ..configured()
        };
        let action = drain.request_stop(hub.clone(), Metrics::new(), keep);
        assert_eq!(action, StopAction::BeginDrain);
        assert_ne!(drain.phase(), Phase::Serving);
        tokio::time::timeout(Duration::from_secs(5), drain.stopped())
            .await
            .expect("an empty node stops after a stop request's drain");
        assert_eq!(drain.phase(), Phase::Stopped);
    }

    /// A keep-running drain of an empty node ends Drained, and only a later stop request
    /// stops it; a second drain while one is in effect starts nothing.
    #[tokio::test]
    async fn a_keep_running_drain_waits_drained_for_a_stop() {
        let drain = Drain::new();
        let hub = Arc::new(Hub::new());
        let keep = DrainPlan {
            keep_running: true,
            ..configured()
        };
        assert!(drain.begin(hub.clone(), Metrics::new(), keep).started);
        let deadline = Instant::now() + Duration::from_secs(5);
        while drain.phase() != Phase::Drained {
            assert!(Instant::now() < deadline, "never drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(drain.phase(), Phase::Serving, "drained is not serving");
        assert!(!drain.begin(hub.clone(), Metrics::new(), keep).started);
        assert_eq!(
            drain.request_stop(hub, Metrics::new(), keep),
            StopAction::StopNow
        );
        assert_eq!(drain.phase(), Phase::Stopped);
    }

    fn configured() -> DrainPlan {
        DrainPlan {
            notice_delay: Duration::ZERO,
            reconnect_window: Duration::from_secs(10),
            deadline: Duration::from_secs(25),
            max_jitter: Duration::from_millis(500),
            keep_running: false,
        }
    }

    #[test]
    fn an_empty_body_is_the_configured_drain() {
        for body in [
            &b""[..],
            b"  \r\n",
            b"{}",
            br#"{"reconnect_window_seconds": null}"#,
        ] {
            let req = parse_drain_request(body).unwrap();
            assert_eq!(req, DrainRequest::default());
            assert_eq!(plan_drain(&req, configured()), Ok(configured()));
        }
    }

    #[test]
    fn a_request_sets_the_window_and_keep_running() {
        let req =
            parse_drain_request(br#"{"reconnect_window_seconds": 2.5, "keep_running": true}"#)
                .unwrap();
        assert_eq!(
            plan_drain(&req, configured()),
            Ok(DrainPlan {
                reconnect_window: Duration::from_millis(2500),
                keep_running: true,
                ..configured()
            })
        );
        let only_keep = parse_drain_request(br#"{"keep_running": true}"#).unwrap();
        let plan = plan_drain(&only_keep, configured()).unwrap();
        assert_eq!(plan.reconnect_window, Duration::from_secs(10));
        assert!(plan.keep_running);
        let only_window = parse_drain_request(br#"{"reconnect_window_seconds": 1}"#).unwrap();
        let plan = plan_drain(&only_window, configured()).unwrap();
        assert_eq!(plan.reconnect_window, Duration::from_secs(1));
        assert!(!plan.keep_running);
    }

    #[test]
    fn a_notice_delay_shifts_the_window_and_must_fit_the_deadline() {
        let req = parse_drain_request(
            br#"{"reconnect_window_seconds": 10, "notice_delay_seconds": 4, "keep_running": true}"#,
        )
        .unwrap();
        let plan = plan_drain(&req, configured()).unwrap();
        assert_eq!(plan.notice_delay, Duration::from_secs(4));
        assert_eq!(plan.reconnect_window, Duration::from_secs(10));
        // Without it: no delay, as before the field existed.
        let plain = parse_drain_request(br#"{"keep_running": true}"#).unwrap();
        assert_eq!(
            plan_drain(&plain, configured()).unwrap().notice_delay,
            Duration::ZERO
        );
        // Delay + window must end before the 25 s deadline; negative and NaN are refused.
        for body in [
            r#"{"reconnect_window_seconds": 10, "notice_delay_seconds": 15}"#,
            r#"{"notice_delay_seconds": -1}"#,
            r#"{"notice_delay_seconds": 1e400}"#,
            r#"{"notice_delay_seconds": 1.8446744073709550e19}"#,
        ] {
            let err = parse_drain_request(body.as_bytes())
                .and_then(|r| plan_drain(&r, configured()))
                .unwrap_err();
            assert!(
                err.to_string().contains("notice_delay_seconds"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn malformed_bodies_say_what_to_fix() {
        let not_json = parse_drain_request(b"reconnect_window_seconds=5").unwrap_err();
        assert!(
            matches!(not_json, DrainRequestError::NotJson(_)),
            "{not_json}"
        );
        assert!(not_json.to_string().contains("not JSON"), "{not_json}");
        let truncated = parse_drain_request(br#"{"keep_running": tr"#).unwrap_err();
        assert!(
            matches!(truncated, DrainRequestError::NotJson(_)),
            "{truncated}"
        );

        let unknown = parse_drain_request(br#"{"window": 5}"#).unwrap_err();
        assert!(matches!(unknown, DrainRequestError::Fields(_)), "{unknown}");
        assert!(
            unknown.to_string().contains("unknown field `window`"),
            "{unknown}"
        );
        for body in [
            &br#"{"reconnect_window_seconds": "5"}"#[..],
            br#"{"keep_running": "yes"}"#,
            br#"[5, true]"#,
            b"null",
            b"5",
        ] {
            let e = parse_drain_request(body).unwrap_err();
            assert!(matches!(e, DrainRequestError::Fields(_)), "{e}");
        }
        for e in [not_json, unknown] {
            let text = e.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(text.contains("reconnect_window_seconds"), "{text}");
        }
    }

    #[test]
    fn the_window_must_be_positive_and_shorter_than_the_deadline() {
        let ask = |w: f64| {
            plan_drain(
                &DrainRequest {
                    reconnect_window_seconds: Some(w),
                    keep_running: true,
                    notice_delay_seconds: None,
                },
                configured(),
            )
        };
        assert_eq!(
            ask(30.0).unwrap_err().to_string(),
            "reconnect_window_seconds (30) must be greater than 0 and shorter than this node's drain deadline (25s)"
        );
        for w in [
            25.0,
            30.0,
            0.0,
            -0.0,
            -1.0,
            1e-12,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
        ] {
            assert!(
                matches!(ask(w), Err(DrainRequestError::Window { .. })),
                "{w} accepted"
            );
        }
        assert_eq!(
            ask(24.999).unwrap().reconnect_window,
            Duration::from_secs_f64(24.999)
        );
        assert_eq!(
            ask(0.001).unwrap().reconnect_window,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn a_stop_request_drains_waits_or_stops_by_phase() {
        assert_eq!(stop_action(Phase::Serving), StopAction::BeginDrain);
        assert_eq!(stop_action(Phase::Draining), StopAction::WaitForDrain);
        assert_eq!(stop_action(Phase::Drained), StopAction::StopNow);
        assert_eq!(stop_action(Phase::Stopped), StopAction::StopNow);
        assert!(StopAction::BeginDrain.waits());
        assert!(StopAction::WaitForDrain.waits());
        assert!(!StopAction::StopNow.waits());
    }

    #[test]
    fn only_a_kept_running_drain_without_a_stop_request_is_undrained() {
        use UndrainDecision::*;
        for (keep, stop) in [(false, false), (true, false), (false, true), (true, true)] {
            assert_eq!(undrain_decision(Phase::Serving, keep, stop), AlreadyServing);
            assert_eq!(undrain_decision(Phase::Stopped, keep, stop), Refuse);
            for phase in [Phase::Draining, Phase::Drained] {
                let expected = if keep && !stop { Cancel } else { Refuse };
                assert_eq!(
                    undrain_decision(phase, keep, stop),
                    expected,
                    "{phase:?} {keep} {stop}"
                );
            }
        }
    }

    #[test]
    fn phases_have_their_status_names() {
        for p in [
            Phase::Serving,
            Phase::Draining,
            Phase::Drained,
            Phase::Stopped,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }
}
