//! What a disruption on real pods did, for the data-plane suite to assert on: where each
//! subscriber went ([`Disruption`]), whether the operator drained the leaving pods itself
//! (its Events), and whether each leaving pod said `drained` on its admin port before
//! the StatefulSet let it go ([`DrainTimes`]). Without these a lossless check passes
//! even when nothing was disrupted, or when the operator's drain failed and the pods
//! drained themselves on SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::sync::lock;

use serde_json::Value;

use super::data_plane::Setup;
use crate::clients::subscriber::SubscriberLog;
use crate::harness::http;

/// One subscriber's way through a disruption.
#[derive(Debug, Clone)]
pub struct Journey {
    /// The pod of each of its connections, in order.
    pub pods: Vec<String>,
    pub reconnects: u64,
}

/// What a lossless disruption did to its subscribers.
#[derive(Debug, Clone)]
pub struct Disruption {
    /// The longest time any subscriber had no connection.
    pub longest: Duration,
    pub reconnects: u64,
    pub journeys: Vec<Journey>,
}

impl Disruption {
    /// What the subscribers of `logs` went through (read once they have stopped, so
    /// every reconnect is counted).
    pub fn from_logs(logs: &[Arc<Mutex<SubscriberLog>>]) -> Disruption {
        let mut d = Disruption {
            longest: Duration::ZERO,
            reconnects: 0,
            journeys: Vec::with_capacity(logs.len()),
        };
        for l in logs {
            let l = lock(l);
            d.longest = d.longest.max(l.longest_disconnect);
            d.reconnects += l.reconnects;
            d.journeys.push(Journey {
                pods: l.nodes_seen.clone(),
                reconnects: l.reconnects,
            });
        }
        d
    }

    /// Every subscriber that began on one of `leaving` reconnected at least once and ended
    /// on one of `staying`; and at least one began on a leaving pod, or the check proves
    /// nothing. Names, not instances: a pod re-created under its name (a force-delete, a
    /// rollout) counts as staying when listed there. Returns how many began on a leaving
    /// pod.
    pub fn assert_moved_off(&self, leaving: &[&str], staying: &[&str]) -> usize {
        let mut moved = 0;
        for (i, j) in self.journeys.iter().enumerate() {
            let (Some(first), Some(last)) = (j.pods.first(), j.pods.last()) else {
                panic!("subscriber {i} never connected: {j:?}");
            };
            if !leaving.contains(&first.as_str()) {
                continue;
            }
            moved += 1;
            assert!(
                j.reconnects >= 1,
                "subscriber {i} began on leaving pod {first} and never reconnected: {j:?}"
            );
            assert!(
                staying.contains(&last.as_str()),
                "subscriber {i} ended on {last}, not on a pod that stays ({staying:?}): {j:?}"
            );
        }
        assert!(
            moved > 0,
            "no subscriber began on a leaving pod ({leaving:?}): {:?}",
            self.journeys
        );
        moved
    }
}

/// When each leaving pod first said `drained` on its admin port, and every change of the
/// StatefulSet's `spec.replicas` seen.
#[derive(Debug, Default, Clone)]
pub struct DrainTimes {
    pub drained: BTreeMap<String, Instant>,
    pub replicas: Vec<(Instant, i64)>,
}

/// The ordinal of StatefulSet pod `pod` (`chat-2` → 2).
fn ordinal(pod: &str) -> Option<i64> {
    pod.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

impl DrainTimes {
    /// When the StatefulSet let `pod` go: the first time its replicas were at or below
    /// the pod's ordinal (a scale-down may come in steps).
    pub fn let_go(&self, pod: &str) -> Option<Instant> {
        let ordinal = ordinal(pod)?;
        self.replicas
            .iter()
            .find(|(_, n)| *n <= ordinal)
            .map(|(at, _)| *at)
    }

    /// Each of `leaving` said `drained` before the StatefulSet let it go.
    pub fn assert_drained_before_lowered(&self, leaving: &[&str]) {
        for pod in leaving {
            let let_go = self
                .let_go(pod)
                .unwrap_or_else(|| panic!("the StatefulSet never let {pod} go: {self:?}"));
            let drained = self.drained.get(*pod).unwrap_or_else(|| {
                panic!("{pod} never said `drained` on its admin port: {self:?}")
            });
            assert!(
                *drained <= let_go,
                "{pod} said `drained` {:?} after the StatefulSet let it go",
                drained.duration_since(let_go)
            );
        }
    }

    /// Whether the StatefulSet has let every one of `leaving` go.
    fn all_let_go(&self, leaving: &[&str]) -> bool {
        leaving.iter().all(|pod| self.let_go(pod).is_some())
    }
}

/// How often [`Setup::watch_drain`] looks.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How long [`Setup::watch_drain`] waits for the StatefulSet to be lowered once its work
/// is done.
const WAIT_FOR_LOWERING: Duration = Duration::from_secs(120);

impl Setup {
    /// The operator drained each of `leaving` itself: a `DrainStarted` and a `Normal`
    /// `DrainFinished` ("drained") Event for each, and no `DrainFinished` warning (a pod
    /// let go undrained, to drain on SIGTERM) for any pod.
    pub fn assert_operator_drained(&self, leaving: &[&str]) {
        let events: Vec<(String, String, String)> = self
            .ns
            .events()
            .iter()
            .map(|e| {
                let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (field("reason"), field("type"), field("message"))
            })
            .collect();
        let let_go: Vec<_> = events
            .iter()
            .filter(|(reason, kind, _)| reason == "DrainFinished" && kind == "Warning")
            .collect();
        assert!(let_go.is_empty(), "pods let go undrained: {let_go:?}");
        for pod in leaving {
            let started = events.iter().any(|(reason, _, message)| {
                reason == "DrainStarted" && message.starts_with(&format!("draining {pod} "))
            });
            let finished = events.iter().any(|(reason, kind, message)| {
                reason == "DrainFinished"
                    && kind == "Normal"
                    && message.starts_with(&format!("{pod} drained "))
            });
            assert!(
                started && finished,
                "{pod}: DrainStarted {started}, DrainFinished (drained) {finished}; events: {events:?}"
            );
        }
    }

    /// Runs `work` while watching the scale-down of `leaving`: each pod's `/admin/status`
    /// (with the cluster's admin token, at the pod's IP, which the test reaches on the
    /// node) and the StatefulSet's `spec.replicas`, every 250 ms until the StatefulSet has
    /// let every leaving pod go and `work` is done (or 120 s after `work`).
    pub async fn watch_drain<T>(
        &self,
        leaving: &[&str],
        work: impl std::future::Future<Output = T>,
    ) -> (T, DrainTimes) {
        let token = self.ns.secret_value("chat-admin", "token");
        let admin: Vec<(String, SocketAddr)> = leaving
            .iter()
            .map(|pod| {
                let ip = self
                    .get("pod", pod)
                    .and_then(|p| p["status"]["podIP"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| panic!("{pod} has no IP{}", self.diagnostics()));
                let addr = format!("{ip}:9090")
                    .parse()
                    .unwrap_or_else(|e| panic!("{pod}'s IP {ip}: {e}"));
                ((*pod).to_owned(), addr)
            })
            .collect();
        let mut times = DrainTimes::default();
        tokio::pin!(work);
        let mut output = None;
        let mut tick = tokio::time::interval(WATCH_EVERY);
        // Once `work` is done, the lowering is waited for this long at most.
        let mut give_up: Option<Instant> = None;
        while output.is_none() || !times.all_let_go(leaving) {
            if give_up.is_some_and(|t| Instant::now() > t) {
                break;
            }
            tokio::select! {
                out = &mut work, if output.is_none() => {
                    output = Some(out);
                    give_up = Some(Instant::now() + WAIT_FOR_LOWERING);
                }
                _ = tick.tick() => {
                    tokio::task::block_in_place(|| self.look(&admin, &token, &mut times));
                }
            }
        }
        (output.expect("work done"), times)
    }

    /// One look for [`Setup::watch_drain`].
    fn look(&self, admin: &[(String, SocketAddr)], token: &str, times: &mut DrainTimes) {
        for (pod, addr) in admin {
            if times.drained.contains_key(pod) {
                continue;
            }
            let opts = http::Options {
                bearer: Some(token),
                timeout: Some(Duration::from_secs(1)),
                ..http::Options::default()
            };
            let drained = http::request(*addr, "GET", "/admin/status", opts)
                .filter(|r| r.status == 200)
                .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
                .is_some_and(|status| status["phase"] == "drained");
            if drained {
                times.drained.insert(pod.clone(), Instant::now());
            }
        }
        let now = self
            .get("statefulset", "chat")
            .and_then(|sts| sts["spec"]["replicas"].as_i64());
        if let Some(n) = now {
            if times.replicas.last().is_none_or(|(_, last)| *last != n) {
                times.replicas.push((Instant::now(), n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_let_go_when_the_replicas_reach_its_ordinal() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut times = DrainTimes {
            replicas: vec![(at(0), 3), (at(5), 2), (at(9), 1)],
            ..DrainTimes::default()
        };
        assert_eq!(times.let_go("chat-2"), Some(at(5)));
        assert_eq!(times.let_go("chat-1"), Some(at(9)));
        assert_eq!(times.let_go("chat-0"), None);
        assert!(times.all_let_go(&["chat-1", "chat-2"]));
        times.drained.insert("chat-2".into(), at(4));
        times.drained.insert("chat-1".into(), at(8));
        times.assert_drained_before_lowered(&["chat-1", "chat-2"]);
    }

    #[test]
    #[should_panic(expected = "after the StatefulSet let it go")]
    fn a_pod_drained_after_it_was_let_go_fails() {
        let t0 = Instant::now();
        let times = DrainTimes {
            drained: [("chat-1".to_owned(), t0 + Duration::from_secs(6))].into(),
            replicas: vec![(t0, 2), (t0 + Duration::from_secs(5), 1)],
        };
        times.assert_drained_before_lowered(&["chat-1"]);
    }

    fn journey(pods: &[&str], reconnects: u64) -> Journey {
        Journey {
            pods: pods.iter().map(|p| (*p).to_owned()).collect(),
            reconnects,
        }
    }

    #[test]
    fn clients_on_leaving_pods_must_move_to_staying_ones() {
        let d = Disruption {
            longest: Duration::ZERO,
            reconnects: 1,
            journeys: vec![journey(&["chat-1", "chat-0"], 1), journey(&["chat-0"], 0)],
        };
        d.assert_moved_off(&["chat-1"], &["chat-0"]);
        let stuck = Disruption {
            journeys: vec![journey(&["chat-1"], 0)],
            ..d.clone()
        };
        assert!(
            std::panic::catch_unwind(|| stuck.assert_moved_off(&["chat-1"], &["chat-0"])).is_err()
        );
        let untouched = Disruption {
            journeys: vec![journey(&["chat-0"], 0)],
            ..d
        };
        assert!(
            std::panic::catch_unwind(|| untouched.assert_moved_off(&["chat-1"], &["chat-0"]))
                .is_err(),
            "no client on a leaving pod proves nothing"
        );
    }
}
