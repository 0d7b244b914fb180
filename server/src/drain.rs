//! The drain state machine: Serving → Draining → Stopped.
//!
//! On drain, readiness fails at once and new upgrades are refused (the HTTP layer asks
//! [`Drain::is_draining`]); every connected session gets a `reconnect` notice at a time
//! spread evenly over the reconnect window so the clients do not all reconnect at the
//! same instant; the node stops when no connection is left or the deadline passes, when
//! the remaining connections are force-closed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::{Hub, Outbound};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining,
    Stopped,
}

/// Timing of a drain.
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    pub reconnect_window: Duration,
    pub deadline: Duration,
    pub max_jitter: Duration,
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

pub struct Drain {
    phase: watch::Sender<Phase>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            phase: watch::Sender::new(Phase::Serving),
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

    pub fn is_draining(&self) -> bool {
        self.phase() != Phase::Serving
    }

    /// Starts draining; returns false when a drain was already under way.
    pub fn begin(self: &Arc<Self>, hub: Arc<Hub>, metrics: Metrics, plan: DrainPlan) -> bool {
        let started = self.phase.send_if_modified(|p| {
            if *p == Phase::Serving {
                *p = Phase::Draining;
                true
            } else {
                false
            }
        });
        if !started {
            return false;
        }
        metrics.draining.set(1);
        tracing::info!(
            connections = hub.connection_count(),
            window_ms = plan.reconnect_window.as_millis() as u64,
            deadline_ms = plan.deadline.as_millis() as u64,
            "drain started"
        );
        let drain = self.clone();
        tokio::spawn(async move {
            run_drain(&hub, plan).await;
            drain.phase.send_replace(Phase::Stopped);
        });
        true
    }

    /// Resolves once the drain has finished.
    pub async fn stopped(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Stopped).await;
    }
}

async fn run_drain(hub: &Arc<Hub>, plan: DrainPlan) {
    let start = Instant::now();
    let deadline = start + plan.deadline;
    let notices = tokio::spawn(send_notices(hub.clone(), plan, start));
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
            let left = hub.sessions();
            tracing::warn!(
                connections = left.len(),
                "drain deadline passed: force-closing"
            );
            for s in &left {
                s.control(Outbound::ForceClose);
            }
            let grace = Instant::now() + Duration::from_secs(1);
            while hub.connection_count() > 0 && Instant::now() < grace {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
    }
    notices.abort();
}

/// Sends each session its notice at its slot; sessions that registered after the drain
/// began (their upgrade was already past the check) are told at the end of the window.
async fn send_notices(hub: Arc<Hub>, plan: DrainPlan, start: Instant) {
    let mut sessions = hub.sessions();
    sessions.sort_by_key(|s| s.id);
    let offsets = notice_offsets(sessions.len(), plan.reconnect_window);
    let mut told = HashSet::new();
    for (session, offset) in sessions.iter().zip(offsets) {
        tokio::time::sleep_until(start + offset).await;
        session.control(Outbound::Reconnect {
            after_ms: jitter_ms(plan.max_jitter),
        });
        told.insert(session.id);
    }
    tokio::time::sleep_until(start + plan.reconnect_window).await;
    for session in hub.sessions() {
        if !told.contains(&session.id) {
            session.control(Outbound::Reconnect {
                after_ms: jitter_ms(plan.max_jitter),
            });
        }
    }
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
}
