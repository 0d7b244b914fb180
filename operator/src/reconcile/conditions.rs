//! Status conditions from what was observed. Pure: the caller passes the observation,
//! the previous conditions, the generation and the current time, so transitions are
//! unit-tested. `lastTransitionTime` moves only when a condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::autoscaling::decision::Outcome;
use crate::drain::plan::{describe, DrainPlan};

pub const READY: &str = "Ready";
pub const REDIS_READY: &str = "RedisReady";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Only with `spec.autoscaling`: whether the autoscaler has usable data, and what it did.
pub const SCALING_ACTIVE: &str = "ScalingActive";
/// True while a scale-down waits for the operator to drain the pods that will go.
pub const DRAINING: &str = "Draining";

/// What the reconciler saw of the cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// `None` when the spec is valid; otherwise (reason, message) for Degraded.
    pub invalid: Option<(String, String)>,
    /// An optional API the spec asks for is not served (reason, message): Degraded, while
    /// everything else runs.
    pub unserved_api: Option<(String, String)>,
    /// The last apply failed (e.g. the API server rejected an object): its message.
    pub apply_failed: Option<String>,
    pub desired_replicas: i32,
    /// Pods the StatefulSet currently has (status.replicas).
    pub observed_replicas: i32,
    pub ready_replicas: i32,
    /// Pods running the current template (StatefulSet `updatedReplicas`). Only meaningful
    /// once `statefulset_current` is true: before the StatefulSet controller has seen the
    /// new template, it still counts pods against the old one.
    pub updated_replicas: i32,
    /// The StatefulSet controller has observed the StatefulSet's latest generation
    /// (`status.observedGeneration == metadata.generation`) and finished rolling it out
    /// (`currentRevision == updateRevision`).
    pub statefulset_current: bool,
    /// Set when `spec.replicas` was clamped to the autoscaling bounds: what runs and what
    /// to change (shown in the Ready message).
    pub replicas_note: Option<String>,
    /// Managed Redis: its pod is ready. External Redis: assumed reachable (the pods'
    /// readiness reports a failing backplane).
    pub redis_ready: bool,
    pub redis_managed: bool,
    /// Open client connections summed over the pods that answered; `None` if none did.
    pub connections: Option<i64>,
    /// What the autoscaler did this reconcile (`None` without `spec.autoscaling`).
    pub autoscaling: Option<Outcome>,
    /// This reconcile's drain plan (`None` when the pods were not looked at, e.g. an
    /// invalid spec).
    pub drain: Option<DrainPlan>,
}

impl Observation {
    /// Redis is up and every desired chat-server pod is ready (the Ready condition).
    pub fn is_ready(&self) -> bool {
        self.redis_ready && self.ready_replicas >= self.desired_replicas
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    Condition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    }
}

/// The conditions for `obs`, keeping each previous `lastTransitionTime` whose status
/// did not change.
pub fn next_conditions(
    previous: &[Condition],
    obs: &Observation,
    generation: i64,
    now: Timestamp,
) -> Vec<Condition> {
    let now = Time(now);
    let c = |kind: &str, ok: bool, reason: &str, message: String| {
        condition(kind, ok, reason, message, generation, &now)
    };
    let mut out = Vec::with_capacity(4);
    if let Some((reason, message)) = &obs.invalid {
        out.push(c(DEGRADED, true, reason, message.clone()));
        // The other conditions carry Degraded's reason (InvalidSpec, SecretMissing…) so
        // `kubectl get -o wide`-style views show the cause wherever they look.
        out.push(c(
            READY,
            false,
            reason,
            "cannot proceed; see the Degraded condition".into(),
        ));
        out.push(c(
            PROGRESSING,
            false,
            reason,
            "waiting for the Degraded condition to be fixed".into(),
        ));
        out.push(c(
            REDIS_READY,
            false,
            reason,
            "waiting for the Degraded condition to be fixed".into(),
        ));
        return keep_transition_times(previous, out);
    }
    if let Some(message) = &obs.apply_failed {
        out.push(c(DEGRADED, true, "ApplyFailed", message.clone()));
        out.push(c(
            READY,
            false,
            "ApplyFailed",
            "objects could not be applied; see the Degraded condition".into(),
        ));
        out.push(c(PROGRESSING, true, "ApplyFailed", "retrying".into()));
        return keep_transition_times(previous, out);
    }
    let (redis_reason, redis_message) = match (obs.redis_managed, obs.redis_ready) {
        (true, true) => ("RedisRunning", "the managed Redis pod is ready".to_owned()),
        (true, false) => (
            "RedisStarting",
            "waiting for the managed Redis pod to become ready".to_owned(),
        ),
        (false, _) => (
            "ExternalRedis",
            "using the external Redis from the configured Secret".to_owned(),
        ),
    };
    out.push(c(REDIS_READY, obs.redis_ready, redis_reason, redis_message));
    // Done when the StatefulSet controller has seen the current template and finished
    // rolling it out, every desired pod runs it and is ready, and no extra pod is left
    // from a scale-down. (Right after a spec change the StatefulSet's counts still
    // describe the previous generation, so they alone would claim "complete" too early.)
    let rolled_out = obs.statefulset_current
        && obs.updated_replicas >= obs.desired_replicas
        && obs.ready_replicas >= obs.desired_replicas
        && obs.observed_replicas <= obs.desired_replicas;
    out.push(c(
        PROGRESSING,
        !rolled_out,
        if rolled_out {
            "RolloutComplete"
        } else {
            "RollingOut"
        },
        format!(
            "{}/{} pods updated, {}/{} ready, {} running",
            obs.updated_replicas,
            obs.desired_replicas,
            obs.ready_replicas,
            obs.desired_replicas,
            obs.observed_replicas
        ),
    ));
    let ready = obs.is_ready();
    let pods_ready = || {
        let counts = format!(
            "{} of {} chat-server pods ready",
            obs.ready_replicas, obs.desired_replicas
        );
        match &obs.replicas_note {
            Some(note) => format!("{counts}; {note}"),
            None => counts,
        }
    };
    let (reason, message) = if ready {
        ("AllReplicasReady", pods_ready())
    } else if !obs.redis_ready {
        ("RedisNotReady", "Redis is not ready yet".to_owned())
    } else {
        ("ReplicasNotReady", pods_ready())
    };
    out.push(c(READY, ready, reason, message));
    out.push(match &obs.unserved_api {
        Some((reason, message)) => c(DEGRADED, true, reason, message.clone()),
        None => c(DEGRADED, false, "AsExpected", "the spec is valid".into()),
    });
    if let Some(a) = &obs.autoscaling {
        out.push(c(SCALING_ACTIVE, a.active, &a.reason, a.message.clone()));
    }
    if let Some(plan) = &obs.drain {
        out.push(if plan.in_progress() {
            c(DRAINING, true, "DrainingBeforeScaleDown", describe(plan))
        } else {
            c(
                DRAINING,
                false,
                "NoScaleDown",
                "no pod is being drained".into(),
            )
        });
    }
    keep_transition_times(previous, out)
}

fn keep_transition_times(previous: &[Condition], mut next: Vec<Condition>) -> Vec<Condition> {
    for c in &mut next {
        if let Some(old) = previous
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    next
}

/// The status of a condition type, if present.
pub fn status_of<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn obs(ready: i32, updated: i32, redis: bool) -> Observation {
        Observation {
            invalid: None,
            apply_failed: None,
            unserved_api: None,
            desired_replicas: 3,
            observed_replicas: 3,
            ready_replicas: ready,
            updated_replicas: updated,
            statefulset_current: true,
            replicas_note: None,
            redis_ready: redis,
            redis_managed: true,
            connections: None,
            autoscaling: None,
            drain: None,
        }
    }

    fn get<'a>(c: &'a [Condition], kind: &str) -> &'a Condition {
        c.iter().find(|x| x.type_ == kind).unwrap()
    }

    #[test]
    fn becomes_ready_when_redis_and_every_pod_are_ready() {
        let c1 = next_conditions(&[], &obs(0, 0, false), 1, t(0));
        assert_eq!(status_of(&c1, READY), Some("False"));
        assert_eq!(get(&c1, READY).reason, "RedisNotReady");
        assert_eq!(status_of(&c1, PROGRESSING), Some("True"));
        let c2 = next_conditions(&c1, &obs(2, 3, true), 1, t(10));
        assert_eq!(get(&c2, READY).reason, "ReplicasNotReady");
        let c3 = next_conditions(&c2, &obs(3, 3, true), 1, t(20));
        assert_eq!(status_of(&c3, READY), Some("True"));
        assert_eq!(status_of(&c3, PROGRESSING), Some("False"));
        assert_eq!(status_of(&c3, DEGRADED), Some("False"));
        assert!(c3.iter().all(|c| c.observed_generation == Some(1)));
    }

    #[test]
    fn a_missing_optional_api_is_degraded_while_the_pods_run() {
        let mut o = obs(3, 3, true);
        o.unserved_api = Some(("KedaNotInstalled".into(), "install KEDA".into()));
        let c = next_conditions(&[], &o, 1, t(0));
        assert_eq!(status_of(&c, DEGRADED), Some("True"));
        assert_eq!(get(&c, DEGRADED).reason, "KedaNotInstalled");
        assert_eq!(get(&c, DEGRADED).message, "install KEDA");
        assert_eq!(status_of(&c, READY), Some("True"), "the pods still serve");
    }

    #[test]
    fn transition_time_moves_only_on_a_status_change() {
        let c1 = next_conditions(&[], &obs(1, 3, true), 1, t(0));
        let c2 = next_conditions(&c1, &obs(2, 3, true), 2, t(30));
        assert_eq!(
            get(&c2, READY).last_transition_time,
            Time(t(0)),
            "still False"
        );
        assert_eq!(get(&c2, READY).observed_generation, Some(2));
        let c3 = next_conditions(&c2, &obs(3, 3, true), 2, t(60));
        assert_eq!(
            get(&c3, READY).last_transition_time,
            Time(t(60)),
            "False → True"
        );
        assert_eq!(
            get(&c3, REDIS_READY).last_transition_time,
            Time(t(0)),
            "RedisReady never changed"
        );
    }

    #[test]
    fn a_template_change_the_statefulset_controller_has_not_seen_is_still_rolling_out() {
        // Right after the image changes, the StatefulSet still reports the counts of the
        // previous generation: 3 updated, 3 ready.
        let mut o = obs(3, 3, true);
        o.statefulset_current = false;
        let c = next_conditions(&[], &o, 2, t(0));
        assert_eq!(status_of(&c, PROGRESSING), Some("True"));
        assert_eq!(get(&c, PROGRESSING).reason, "RollingOut");
        assert_eq!(get(&c, PROGRESSING).observed_generation, Some(2));
        o.statefulset_current = true;
        let c = next_conditions(&c, &o, 2, t(30));
        assert_eq!(get(&c, PROGRESSING).reason, "RolloutComplete");
    }

    #[test]
    fn a_clamped_replica_count_is_explained_in_ready() {
        let mut o = obs(3, 3, true);
        o.replicas_note = Some("spec.replicas 9 is outside autoscaling [1, 3]".into());
        let c = next_conditions(&[], &o, 1, t(0));
        assert!(get(&c, READY).message.contains("outside autoscaling"));
    }

    #[test]
    fn scaling_active_appears_only_with_autoscaling_and_carries_its_reason() {
        let c = next_conditions(&[], &obs(3, 3, true), 1, t(0));
        assert_eq!(status_of(&c, SCALING_ACTIVE), None);
        let mut o = obs(3, 3, true);
        o.autoscaling = Some(Outcome {
            active: false,
            reason: "NoData".into(),
            message: "only 2 of 3 ready pods answered".into(),
            desired_replicas: 3,
            scaled: None,
        });
        let c = next_conditions(&[], &o, 1, t(0));
        assert_eq!(status_of(&c, SCALING_ACTIVE), Some("False"));
        assert_eq!(get(&c, SCALING_ACTIVE).reason, "NoData");
    }

    #[test]
    fn invalid_spec_is_degraded_and_not_ready() {
        let mut o = obs(3, 3, true);
        o.invalid = Some(("InvalidSpec".into(), "drain window too long".into()));
        let c = next_conditions(&[], &o, 4, t(0));
        assert_eq!(status_of(&c, DEGRADED), Some("True"));
        assert_eq!(get(&c, DEGRADED).message, "drain window too long");
        assert_eq!(status_of(&c, READY), Some("False"));
        assert_eq!(get(&c, READY).reason, "InvalidSpec");
    }
}
