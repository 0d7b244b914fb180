//! Operator-driven drain before a scale-down (pure, table-tested).
//!
//! Whatever lowers a ChatCluster's replicas (the autoscaler, KEDA or an HPA through
//! `/scale`, `kubectl scale`, a spec edit), the StatefulSet keeps its pods until the ones
//! that will go (the highest ordinals) have been drained through their admin port: each
//! gets a reconnect window chosen so that the reconnects of every pod draining at once
//! stay under `spec.drain.maxReconnectsPerSecond`. Only when every leaving pod is drained
//! is the StatefulSet's `replicas` lowered; the pods then exit at once on SIGTERM. A pod
//! that is not running, or whose admin calls fail [`MAX_FAILURES`] times in a row, is let
//! go undrained (SIGTERM drains it as before, only without the pacing). A pod that is
//! wanted again (a scale back up) is undrained.
//!
//! Everything is decided from what the pods report now (`/admin/status`), not from
//! memory (only the count of failed calls is kept between reconciles), so an operator
//! restart mid-drain resumes where the pods are: a pod already draining is not drained
//! again.

use std::time::Duration;

use serde::Deserialize;

/// A pod's drain phase, as its `/admin/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Serving,
    Draining,
    /// Drained by request and kept running (not ready) until SIGTERM.
    Drained,
    Stopped,
}

/// The drain a pod is running, from its `/admin/status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DrainInfo {
    /// Before the first notice (0 from servers without the field).
    #[serde(default)]
    pub notice_delay_ms: u64,
    pub reconnect_window_ms: u64,
    pub elapsed_ms: u64,
    pub connections_at_start: u64,
    /// Started by the operator (stays up once drained); false for SIGTERM drains.
    pub keep_running: bool,
    /// SIGTERM arrived: the pod is stopping and cannot be undrained.
    pub stop_requested: bool,
}

/// The parts of a pod's `/admin/status` the drain needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AdminStatus {
    pub phase: Phase,
    pub connections: u64,
    #[serde(default)]
    pub drain: Option<DrainInfo>,
}

/// One chat-server pod as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ordinal: i32,
    /// `None`: no IP yet, or its admin port did not answer.
    pub status: Option<AdminStatus>,
    /// The pod is Running with an IP: its admin port should answer.
    pub running: bool,
    /// Failed admin calls (status or drain) in a row for this pod, kept by the caller.
    pub failures: u32,
}

/// The share of `maxReconnectsPerSecond` a drain's window is stretched to, where the
/// deadline leaves room. Clients do not reconnect exactly when told: each connect takes
/// its own time on a busy survivor, so drains paced at the budget itself had single
/// seconds at 1.18 to 1.24 times it on real pods. Aiming lower keeps the busiest second
/// near the budget (docs/benchmarks.md, "Scale-down 4 → 1").
pub const PACING: f64 = 0.85;

/// `window` stretched so the drain runs at [`PACING`] of the rate it was sized for, but
/// no longer than `max_window` (and never shorter than `window`).
fn with_headroom(window: Duration, max_window: Duration) -> Duration {
    window.div_f64(PACING).min(max_window).max(window)
}

/// Failed admin calls in a row after which a running pod is let go undrained (SIGTERM
/// then drains it): one that never answers, or refuses every drain, must not hold a
/// scale-down forever. At the 2 s drain poll this is about 10 s.
pub const MAX_FAILURES: u32 = 5;

/// The drain settings of a ChatCluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainLimits {
    /// Reconnects per second over the whole cluster (`spec.drain.maxReconnectsPerSecond`).
    pub max_reconnects_per_second: f64,
    /// The shortest window a pod gets (`spec.drain.reconnectWindowSeconds`).
    pub min_window: Duration,
    /// The pods' drain deadline (`spec.drain.deadlineSeconds`); a window must be shorter.
    pub deadline: Duration,
    /// How long a drained pod waits, not ready, before its first reconnect notice, so the
    /// load balancer has stopped sending clients to it (`spec.drain.preStopSeconds`, the
    /// same propagation time a SIGTERM drain waits for). See [`DrainLimits::notice_delay`].
    pub propagation: Duration,
}

impl DrainLimits {
    /// The notice delay a drain gets: the propagation time, shortened so that the delay
    /// and the shortest window still end a second before the deadline.
    pub fn notice_delay(&self) -> Duration {
        self.propagation.min(
            self.deadline
                .saturating_sub(Duration::from_secs(1))
                .saturating_sub(self.min_window),
        )
    }

    /// The longest window a pod can be given: after the notice delay, until a second
    /// before its deadline, so the last clients told still have time to leave before the
    /// rest are closed.
    pub fn max_window(&self) -> Duration {
        self.deadline
            .saturating_sub(Duration::from_secs(1))
            .saturating_sub(self.notice_delay())
            .max(self.min_window)
    }
}

/// A drain the operator starts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartDrain {
    pub pod: String,
    pub connections: u64,
    /// Before the first notice (the pod is already not ready).
    pub notice_delay: Duration,
    pub window: Duration,
    /// Even the longest window cannot keep this pod under the budget (it is drained
    /// alone, over the longest window).
    pub over_budget: bool,
}

/// Where a leaving pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaving {
    /// Not started: the reconnect budget is taken by the pods draining now.
    Waiting { connections: u64 },
    /// Being drained (started now or earlier).
    Draining {
        connections: u64,
        window: Duration,
        elapsed: Duration,
    },
    /// A running pod whose admin calls failed `failures` times in a row: held until
    /// [`MAX_FAILURES`].
    NotAnswering { failures: u32 },
    /// Nothing left to move: drained, or let go undrained (not running, or it never
    /// answered; SIGTERM still drains it when the StatefulSet removes it).
    Done {
        moved: u64,
        elapsed: Duration,
        answered: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeavingPod {
    pub name: String,
    pub state: Leaving,
}

/// What to do this reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrainPlan {
    /// What the StatefulSet's `replicas` is set to.
    pub statefulset_replicas: i32,
    pub start: Vec<StartDrain>,
    /// Pods drained by the operator that are wanted again.
    pub undrain: Vec<String>,
    /// The pods above the desired count while the StatefulSet still has them, highest
    /// ordinal first. Empty when no scale-down is under way.
    pub leaving: Vec<LeavingPod>,
    /// True when this plan lowers the StatefulSet: every leaving pod is done.
    pub scale_down_now: bool,
}

impl DrainPlan {
    /// A scale-down is waiting for drains.
    pub fn in_progress(&self) -> bool {
        !self.leaving.is_empty() && !self.scale_down_now
    }
}

/// Reconnects per second a running drain still causes: its clients are told evenly over
/// its window, which begins after its notice delay, so `connections_at_start / window`
/// until delay and window have passed (counted from the start, on the safe side).
fn reconnect_rate(info: &DrainInfo) -> f64 {
    let over = info
        .notice_delay_ms
        .saturating_add(info.reconnect_window_ms);
    if info.elapsed_ms >= over || info.reconnect_window_ms == 0 {
        return 0.0;
    }
    info.connections_at_start as f64 / (info.reconnect_window_ms as f64 / 1000.0)
}

/// Decides the StatefulSet's replicas and which drains to start or cancel.
///
/// `desired`: the ChatCluster's effective replicas. `running`: the StatefulSet's current
/// `replicas` (`None` before it exists). `pods`: every chat-server pod, in any order.
pub fn plan(
    desired: i32,
    running: Option<i32>,
    pods: &[PodView],
    limits: DrainLimits,
) -> DrainPlan {
    let undrain: Vec<String> = pods
        .iter()
        .filter(|p| p.ordinal < desired)
        .filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                matches!(s.phase, Phase::Draining | Phase::Drained)
                    && s.drain
                        .as_ref()
                        .is_some_and(|d| d.keep_running && !d.stop_requested)
            })
        })
        .map(|p| p.name.clone())
        .collect();
    let Some(running) = running.filter(|r| *r > desired) else {
        return DrainPlan {
            statefulset_replicas: desired,
            undrain,
            ..DrainPlan::default()
        };
    };
    let mut leaving_pods: Vec<&PodView> = pods
        .iter()
        .filter(|p| (desired..running).contains(&p.ordinal))
        .collect();
    leaving_pods.sort_by_key(|p| std::cmp::Reverse(p.ordinal));

    // The budget already taken by the drains under way.
    let mut in_flight: f64 = leaving_pods
        .iter()
        .filter_map(|p| p.status.as_ref())
        .filter(|s| s.phase == Phase::Draining)
        .filter_map(|s| s.drain.as_ref())
        .map(reconnect_rate)
        .sum();
    // At least 1/s (the CRD's minimum): the windows below stay finite.
    let budget = if limits.max_reconnects_per_second.is_finite() {
        limits.max_reconnects_per_second.max(1.0)
    } else {
        1.0
    };
    let min_window = limits.min_window.max(Duration::from_millis(1));
    let max_window = limits.max_window().max(min_window);
    let notice_delay = limits.notice_delay();
    // With no drain under way, every serving leaving pod is drained at once over one
    // shared window when the budget allows it within the longest window: they all stop
    // taking clients together, so no client moves to a pod that is about to leave and has
    // to move again. Otherwise they go one after another as the budget frees up.
    let shared_window = (in_flight == 0.0)
        .then(|| {
            let total: u64 = leaving_pods
                .iter()
                .filter(|p| p.failures < MAX_FAILURES)
                .filter_map(|p| p.status.as_ref())
                .filter(|s| s.phase == Phase::Serving)
                .map(|s| s.connections)
                .fold(0u64, u64::saturating_add);
            Duration::try_from_secs_f64(total as f64 / budget).ok()
        })
        .flatten()
        .filter(|w| *w <= max_window)
        .map(|w| with_headroom(w, max_window))
        .unwrap_or(Duration::ZERO);
    let mut start = Vec::new();
    let mut leaving = Vec::new();
    for pod in leaving_pods {
        let state = match &pod.status {
            None if pod.running && pod.failures < MAX_FAILURES => Leaving::NotAnswering {
                failures: pod.failures,
            },
            None => Leaving::Done {
                moved: 0,
                elapsed: Duration::ZERO,
                answered: false,
            },
            // Answers but refuses to be drained: let go, as one that does not answer.
            Some(_) if pod.failures >= MAX_FAILURES => Leaving::Done {
                moved: 0,
                elapsed: Duration::ZERO,
                answered: false,
            },
            Some(s) => match (s.phase, &s.drain) {
                (Phase::Drained | Phase::Stopped, drain) => Leaving::Done {
                    moved: drain.as_ref().map_or(0, |d| d.connections_at_start),
                    elapsed: drain
                        .as_ref()
                        .map_or(Duration::ZERO, |d| Duration::from_millis(d.elapsed_ms)),
                    answered: true,
                },
                (Phase::Draining, drain) => {
                    let window = drain
                        .as_ref()
                        .map_or(min_window, |d| Duration::from_millis(d.reconnect_window_ms));
                    let elapsed = drain
                        .as_ref()
                        .map_or(Duration::ZERO, |d| Duration::from_millis(d.elapsed_ms));
                    Leaving::Draining {
                        connections: s.connections,
                        window,
                        elapsed,
                    }
                }
                (Phase::Serving, _) => {
                    let c = s.connections;
                    let available = budget - in_flight;
                    // The window that keeps this pod's reconnects within what is left.
                    // `None`: no budget left, or more than a Duration holds.
                    let needed = if c == 0 {
                        Some(Duration::ZERO)
                    } else if available > 0.0 {
                        Duration::try_from_secs_f64(c as f64 / available).ok()
                    } else {
                        None
                    };
                    let nothing_draining = in_flight == 0.0
                        && !leaving
                            .iter()
                            .any(|l: &LeavingPod| matches!(l.state, Leaving::Draining { .. }));
                    match needed {
                        Some(n) if n <= max_window => {
                            let window = with_headroom(n, max_window)
                                .max(min_window)
                                .max(shared_window);
                            start.push(StartDrain {
                                pod: pod.name.clone(),
                                connections: c,
                                notice_delay,
                                window,
                                over_budget: false,
                            });
                            in_flight += c as f64 / window.as_secs_f64();
                            Leaving::Draining {
                                connections: c,
                                window,
                                elapsed: Duration::ZERO,
                            }
                        }
                        // Too many for the budget even over the longest window: alone,
                        // over the longest window, is the least it can do.
                        _ if nothing_draining => {
                            start.push(StartDrain {
                                pod: pod.name.clone(),
                                connections: c,
                                notice_delay,
                                window: max_window,
                                over_budget: true,
                            });
                            in_flight += c as f64 / max_window.as_secs_f64();
                            Leaving::Draining {
                                connections: c,
                                window: max_window,
                                elapsed: Duration::ZERO,
                            }
                        }
                        _ => Leaving::Waiting { connections: c },
                    }
                }
            },
        };
        leaving.push(LeavingPod {
            name: pod.name.clone(),
            state,
        });
    }
    let scale_down_now = leaving
        .iter()
        .all(|l| matches!(l.state, Leaving::Done { .. }));
    DrainPlan {
        statefulset_replicas: if scale_down_now { desired } else { running },
        start,
        undrain,
        leaving,
        scale_down_now,
    }
}

/// The `Draining` condition's message for a scale-down under way.
pub fn describe(plan: &DrainPlan) -> String {
    plan.leaving
        .iter()
        .map(|l| match &l.state {
            Leaving::Waiting { connections } => format!(
                "{} waits for the reconnect budget ({connections} connections)",
                l.name
            ),
            Leaving::Draining {
                connections,
                window,
                ..
            } => format!(
                "{} draining ({connections} connections left, window {}s)",
                l.name,
                window.as_secs()
            ),
            Leaving::NotAnswering { failures } => format!(
                "{} not answering on its admin port ({failures} of {MAX_FAILURES} tries)",
                l.name
            ),
            Leaving::Done { answered: true, .. } => format!("{} drained", l.name),
            Leaving::Done {
                answered: false, ..
            } => format!("{} let go undrained (SIGTERM drains it)", l.name),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DrainLimits = DrainLimits {
        max_reconnects_per_second: 100.0,
        min_window: Duration::from_secs(10),
        deadline: Duration::from_secs(60),
        propagation: Duration::ZERO,
    };

    fn serving(ordinal: i32, connections: u64) -> PodView {
        PodView {
            name: format!("chat-{ordinal}"),
            ordinal,
            status: Some(AdminStatus {
                phase: Phase::Serving,
                connections,
                drain: None,
            }),
            running: true,
            failures: 0,
        }
    }

    fn draining(ordinal: i32, left: u64, at_start: u64, window_s: u64, elapsed_s: u64) -> PodView {
        PodView {
            name: format!("chat-{ordinal}"),
            ordinal,
            status: Some(AdminStatus {
                phase: Phase::Draining,
                connections: left,
                drain: Some(DrainInfo {
                    notice_delay_ms: 0,
                    reconnect_window_ms: window_s * 1000,
                    elapsed_ms: elapsed_s * 1000,
                    connections_at_start: at_start,
                    keep_running: true,
                    stop_requested: false,
                }),
            }),
            running: true,
            failures: 0,
        }
    }

    fn drained(ordinal: i32, moved: u64) -> PodView {
        let mut p = draining(ordinal, 0, moved, 10, 12);
        if let Some(s) = &mut p.status {
            s.phase = Phase::Drained;
        }
        p
    }

    fn started(plan: &DrainPlan) -> Vec<(&str, u64)> {
        plan.start
            .iter()
            .map(|s| (s.pod.as_str(), s.window.as_secs()))
            .collect()
    }

    #[test]
    fn no_scale_down_follows_the_desired_count() {
        let pods = [serving(0, 5), serving(1, 5)];
        for (desired, running) in [(2, Some(2)), (3, Some(2)), (2, None)] {
            let p = plan(desired, running, &pods, LIMITS);
            assert_eq!(p.statefulset_replicas, desired);
            assert!(p.start.is_empty() && p.leaving.is_empty() && !p.in_progress());
        }
    }

    #[test]
    fn a_scale_down_keeps_the_pods_and_drains_the_highest_first() {
        let pods = [serving(0, 100), serving(1, 100), serving(2, 100)];
        let p = plan(1, Some(3), &pods, LIMITS);
        assert_eq!(
            p.statefulset_replicas, 3,
            "nothing goes before it is drained"
        );
        assert!(p.in_progress());
        // 100 connections over 10 s is 10/s each: both fit the budget of 100/s.
        assert_eq!(started(&p), [("chat-2", 10), ("chat-1", 10)]);
        assert!(p
            .leaving
            .iter()
            .all(|l| matches!(l.state, Leaving::Draining { .. })));
    }

    #[test]
    fn the_budget_stretches_windows_and_holds_back_pods() {
        // 1,500 connections at 100/s need 15 s, longer than the minimum window, and are
        // given 15 / 0.85 = 17.6 s (the pacing headroom).
        let p = plan(1, Some(2), &[serving(0, 0), serving(1, 1500)], LIMITS);
        assert_eq!(started(&p), [("chat-1", 17)]);
        assert_eq!(p.start[0].window.as_millis(), 17_647);
        assert!(!p.start[0].over_budget);
        // Two such pods fit the longest window (59 s) together: both start at once over
        // one shared window (30 s at the budget, 35.3 s with the headroom), so no client
        // lands on a leaving pod.
        let pods = [serving(0, 0), serving(1, 1500), serving(2, 1500)];
        let p = plan(1, Some(3), &pods, LIMITS);
        assert_eq!(started(&p), [("chat-2", 35), ("chat-1", 35)]);
        // Two pods too big to share it (6,000 at 100/s need 60 s): the second waits
        // until the first's window has passed.
        let pods = [serving(0, 0), serving(1, 1500), serving(2, 4500)];
        let p = plan(1, Some(3), &pods, LIMITS);
        assert_eq!(started(&p), [("chat-2", 52)]);
        assert_eq!(p.leaving[1].state, Leaving::Waiting { connections: 1500 });
        assert!(describe(&p).contains("chat-1 waits for the reconnect budget"));
        // Next reconcile, chat-2 is half way through its window: 100/s still in flight.
        let pods = [
            serving(0, 0),
            serving(1, 1500),
            draining(2, 750, 1500, 15, 7),
        ];
        assert!(plan(1, Some(3), &pods, LIMITS).start.is_empty());
        // Its window has passed: chat-1 may start although chat-2 still has stragglers.
        let pods = [
            serving(0, 0),
            serving(1, 1500),
            draining(2, 3, 1500, 15, 16),
        ];
        let p = plan(1, Some(3), &pods, LIMITS);
        assert_eq!(started(&p), [("chat-1", 17)]);
        assert_eq!(p.statefulset_replicas, 3);
    }

    #[test]
    fn the_headroom_stretches_a_window_only_as_far_as_the_deadline_allows() {
        // 5,500 at 100/s need 55 s: within the longest window (59 s), which caps the
        // 64.7 s the headroom would give.
        let p = plan(1, Some(2), &[serving(0, 0), serving(1, 5500)], LIMITS);
        assert_eq!(started(&p), [("chat-1", 59)]);
        assert!(!p.start[0].over_budget);
        assert_eq!(
            with_headroom(Duration::from_secs(10), Duration::from_secs(60)).as_millis(),
            11_764
        );
        assert_eq!(
            with_headroom(Duration::from_secs(10), Duration::from_secs(5)),
            Duration::from_secs(10),
            "never shorter than the budget's own window"
        );
    }

    #[test]
    fn a_pod_too_big_for_the_budget_drains_alone_over_the_longest_window() {
        // 10,000 connections at 100/s would need 100 s; the deadline allows 59 s.
        let p = plan(1, Some(2), &[serving(0, 0), serving(1, 10_000)], LIMITS);
        assert_eq!(started(&p), [("chat-1", 59)]);
        assert!(p.start[0].over_budget);
        // Not while another drain takes budget.
        let pods = [
            serving(0, 0),
            serving(1, 10_000),
            draining(2, 10, 500, 10, 1),
        ];
        let p = plan(1, Some(3), &pods, LIMITS);
        assert!(p.start.is_empty(), "{:?}", p.start);
    }

    #[test]
    fn empty_pods_are_drained_at_the_minimum_window_without_using_budget() {
        let pods = [
            serving(0, 0),
            serving(1, 0),
            serving(2, 0),
            draining(3, 900, 1000, 10, 1),
        ];
        let p = plan(1, Some(4), &pods, LIMITS);
        assert_eq!(started(&p), [("chat-2", 10), ("chat-1", 10)]);
    }

    #[test]
    fn the_statefulset_is_lowered_once_every_leaving_pod_is_done() {
        let unreachable = PodView {
            name: "chat-2".into(),
            ordinal: 2,
            status: None,
            running: false,
            failures: 0,
        };
        let pods = [serving(0, 10), drained(1, 40), unreachable];
        let p = plan(1, Some(3), &pods, LIMITS);
        assert!(p.scale_down_now && !p.in_progress());
        assert_eq!(p.statefulset_replicas, 1);
        assert!(p.start.is_empty());
        assert_eq!(
            describe(&p),
            "chat-2 let go undrained (SIGTERM drains it); chat-1 drained"
        );
        // A pod still draining holds the scale-down, even with no connection left (it
        // is about to report drained).
        let pods = [serving(0, 10), drained(1, 40), draining(2, 0, 5, 10, 3)];
        assert_eq!(plan(1, Some(3), &pods, LIMITS).statefulset_replicas, 3);
    }

    #[test]
    fn a_running_pod_that_does_not_answer_holds_the_scale_down_a_few_tries_only() {
        let silent = |failures| PodView {
            name: "chat-1".into(),
            ordinal: 1,
            status: None,
            running: true,
            failures,
        };
        let p = plan(1, Some(2), &[serving(0, 0), silent(1)], LIMITS);
        assert_eq!(p.statefulset_replicas, 2, "a timeout is not a drain");
        assert_eq!(p.leaving[0].state, Leaving::NotAnswering { failures: 1 });
        assert!(describe(&p).contains("not answering on its admin port (1 of 5"));
        let p = plan(1, Some(2), &[serving(0, 0), silent(MAX_FAILURES)], LIMITS);
        assert!(p.scale_down_now, "let go: SIGTERM drains it");
        // One that answers but refuses every drain call is let go the same way.
        let mut refusing = serving(1, 500);
        refusing.failures = MAX_FAILURES;
        let p = plan(1, Some(2), &[serving(0, 0), refusing], LIMITS);
        assert!(p.scale_down_now && p.start.is_empty());
    }

    #[test]
    fn the_notice_delay_comes_before_the_window_and_counts_against_the_deadline() {
        let limits = DrainLimits {
            propagation: Duration::from_secs(5),
            ..LIMITS
        };
        assert_eq!(limits.notice_delay(), Duration::from_secs(5));
        assert_eq!(limits.max_window(), Duration::from_secs(54), "60 - 1 - 5");
        let p = plan(1, Some(2), &[serving(0, 0), serving(1, 10_000)], limits);
        assert_eq!(p.start[0].notice_delay, Duration::from_secs(5));
        assert_eq!(p.start[0].window, Duration::from_secs(54));
        // A drain under way takes budget until its delay and its window have passed.
        let mut under_way = draining(2, 900, 1000, 10, 12);
        if let Some(d) = under_way.status.as_mut().and_then(|s| s.drain.as_mut()) {
            d.notice_delay_ms = 5000;
        }
        let pods = [serving(0, 0), serving(1, 1000), under_way.clone()];
        assert!(
            plan(1, Some(3), &pods, limits).start.is_empty(),
            "12 s < 5 + 10"
        );
        if let Some(d) = under_way.status.as_mut().and_then(|s| s.drain.as_mut()) {
            d.elapsed_ms = 15_000;
        }
        let pods = [serving(0, 0), serving(1, 1000), under_way];
        assert_eq!(started(&plan(1, Some(3), &pods, limits)), [("chat-1", 11)]);
        // A propagation time longer than the deadline leaves room for the shortest window.
        let long = DrainLimits {
            propagation: Duration::from_secs(30),
            deadline: Duration::from_secs(25),
            ..LIMITS
        };
        assert_eq!(long.notice_delay(), Duration::from_secs(14), "25 - 1 - 10");
        assert_eq!(long.max_window(), Duration::from_secs(10));
    }

    #[test]
    fn extreme_numbers_give_no_panic_and_no_endless_window() {
        let tiny = DrainLimits {
            max_reconnects_per_second: 0.0,
            min_window: Duration::ZERO,
            deadline: Duration::ZERO,
            propagation: Duration::from_secs(u64::MAX),
        };
        let p = plan(
            1,
            Some(3),
            &[serving(0, 0), serving(1, 0), serving(2, u64::MAX)],
            tiny,
        );
        // Two huge pods: their total saturates instead of overflowing.
        let huge = [serving(0, 0), serving(1, u64::MAX), serving(2, u64::MAX)];
        assert!(!plan(1, Some(3), &huge, LIMITS).start.is_empty());
        assert_eq!(p.start[0].pod, "chat-2");
        assert!(
            p.start[0].over_budget,
            "the huge pod over the longest window"
        );
        let nan = DrainLimits {
            max_reconnects_per_second: f64::NAN,
            ..LIMITS
        };
        let p = plan(1, Some(2), &[serving(0, 0), serving(1, 30)], nan);
        assert_eq!(
            started(&p),
            [("chat-1", 35)],
            "1/s at least, with the headroom"
        );
    }

    #[test]
    fn a_scale_back_up_undrains_the_pods_wanted_again() {
        let pods = [serving(0, 10), draining(1, 5, 50, 10, 2), drained(2, 50)];
        let p = plan(3, Some(3), &pods, LIMITS);
        assert_eq!(p.undrain, ["chat-1", "chat-2"]);
        assert_eq!(p.statefulset_replicas, 3);
        assert!(p.leaving.is_empty());
        // Half way back: chat-1 is wanted again, chat-2 still goes.
        let p = plan(2, Some(3), &pods, LIMITS);
        assert_eq!(p.undrain, ["chat-1"]);
        assert!(p.scale_down_now);
        assert_eq!(p.statefulset_replicas, 2);
    }

    #[test]
    fn pods_stopping_on_sigterm_are_not_undrained_and_drains_are_not_repeated() {
        let mut sigterm = draining(1, 5, 50, 10, 2);
        if let Some(d) = sigterm.status.as_mut().and_then(|s| s.drain.as_mut()) {
            d.keep_running = false;
            d.stop_requested = true;
        }
        assert!(plan(3, Some(3), &[serving(0, 0), sigterm], LIMITS)
            .undrain
            .is_empty());
        // After an operator restart, the pods say where the drain is: nothing restarts.
        let pods = [
            serving(0, 0),
            draining(1, 5, 50, 10, 2),
            draining(2, 9, 50, 10, 2),
        ];
        let p = plan(1, Some(3), &pods, LIMITS);
        assert!(p.start.is_empty());
        assert!(p.in_progress());
    }

    #[test]
    fn admin_status_answers_parse() {
        let serving: AdminStatus = serde_json::from_str(
            r#"{"node":"chat-0","connections":3,"phase":"serving","drain":null,"draining":false}"#,
        )
        .unwrap();
        assert_eq!(serving.phase, Phase::Serving);
        let draining: AdminStatus = serde_json::from_str(
            r#"{"connections":2,"phase":"draining","drain":{"reconnect_window_ms":15000,
            "deadline_ms":25000,"elapsed_ms":300,"connections_at_start":9,
            "keep_running":true,"stop_requested":false}}"#,
        )
        .unwrap();
        assert_eq!(draining.drain.unwrap().connections_at_start, 9);
        assert!(serde_json::from_str::<AdminStatus>(r#"{"connections":1}"#).is_err());
    }

    /// A running drain's clients are told evenly over its window: 300 connections over a
    /// 10 s window is 30 reconnects a second until delay and window have passed
    /// (mutation testing found the rate's value unchecked).
    #[test]
    fn a_running_drain_reconnects_its_clients_evenly_over_its_window() {
        let info = |elapsed_ms: u64| DrainInfo {
            notice_delay_ms: 2_000,
            reconnect_window_ms: 10_000,
            elapsed_ms,
            connections_at_start: 300,
            keep_running: true,
            stop_requested: false,
        };
        assert_eq!(reconnect_rate(&info(0)), 30.0);
        assert_eq!(reconnect_rate(&info(11_999)), 30.0);
        assert_eq!(reconnect_rate(&info(12_000)), 0.0);
    }
}
