//! Which Kubernetes Events a reconcile emits. Pure: the reconciler passes the conditions
//! before and after and what it did; `kubectl describe chat NAME` then tells the story of
//! the cluster (became ready, lost pods, Redis down, invalid spec, orphans deleted).
//!
//! Events mark changes, not states: an unchanged cluster emits nothing, so a periodic
//! requeue or an operator restart adds no noise.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::conditions::{DEGRADED, DRAINING, PROGRESSING, READY, REDIS_READY, SCALING_ACTIVE};
use crate::autoscaling::decision::Outcome;
use crate::drain::plan::{DrainPlan, Leaving};

/// One Event to publish about the ChatCluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    /// PascalCase, at most 128 characters (the API server's limit).
    pub reason: String,
    /// PascalCase verb of what the operator did or saw.
    pub action: &'static str,
    pub note: String,
    /// The chat-server pod the Event is about (its `related` object), for the per-pod
    /// drain Events: the recorder folds Events with the same reason and objects into one
    /// series, so without it three pods' `DrainStarted` would show as one.
    pub pod: Option<String>,
}

/// Events for the conditions whose status or reason changed from `previous` to `next`.
pub fn for_condition_changes(previous: &[Condition], next: &[Condition]) -> Vec<Notice> {
    let mut out = Vec::new();
    for c in next {
        let before = previous.iter().find(|p| p.type_ == c.type_);
        // ScalingActive's reason changes with every decision (ScaledUp, WithinTolerance…);
        // only its status is news here (each write to replicas has its own Event).
        let same_reason = |b: &Condition| b.reason == c.reason || c.type_ == SCALING_ACTIVE;
        if before.is_some_and(|b| b.status == c.status && same_reason(b)) {
            continue;
        }
        let was_true = before.is_some_and(|b| b.status == "True");
        let is_true = c.status == "True";
        let (warning, action) = match c.type_.as_str() {
            DEGRADED => (is_true, "Validate"),
            // Losing readiness is worth a warning; not being ready yet at creation is not.
            READY | REDIS_READY => (!is_true && was_true, "Observe"),
            PROGRESSING => (false, "Rollout"),
            // The autoscaler losing its data (or it coming back) is worth a warning.
            SCALING_ACTIVE => (!is_true, "Autoscale"),
            _ => (false, "Observe"),
        };
        // A fresh cluster starts "not degraded": no Event for the absence of a problem.
        if c.type_ == DEGRADED && before.is_none() && !is_true {
            continue;
        }
        // Each drain start, finish and undrain has its own Event (`for_drain`).
        if c.type_ == DRAINING {
            continue;
        }
        out.push(Notice {
            pod: None,
            warning,
            reason: truncate(&c.reason, 128),
            action,
            note: truncate(&format!("{} is {}: {}", c.type_, c.status, c.message), 1000),
        });
    }
    out
}

/// The Event for objects deleted because the spec no longer asks for them.
pub fn for_deleted_orphans(deleted: &[String]) -> Option<Notice> {
    if deleted.is_empty() {
        return None;
    }
    Some(Notice {
        pod: None,
        warning: false,
        reason: "DeletedOrphans".into(),
        action: "Delete",
        note: truncate(
            &format!(
                "deleted objects no longer in the spec: {}",
                deleted.join(", ")
            ),
            1000,
        ),
    })
}

/// The Event for a spec change that resizes the chat-server StatefulSet.
pub fn for_scaling(previous_replicas: Option<i32>, desired: i32) -> Option<Notice> {
    let previous = previous_replicas?;
    if previous == desired {
        return None;
    }
    Some(Notice {
        pod: None,
        warning: false,
        reason: if desired > previous {
            "ScalingUp"
        } else {
            "ScalingDown"
        }
        .into(),
        action: "Scale",
        note: format!("chat-server pods: {previous} → {desired}"),
    })
}

/// The Event for an autoscaler write to `spec.replicas`, with the numbers behind it.
pub fn for_autoscaling(outcome: &Outcome) -> Option<Notice> {
    let (from, to) = outcome.scaled?;
    Some(Notice {
        pod: None,
        warning: false,
        reason: if to > from {
            "AutoscaledUp"
        } else {
            "AutoscaledDown"
        }
        .into(),
        action: "Autoscale",
        note: truncate(
            &format!(
                "spec.replicas {from} → {to} ({}): {}",
                outcome.reason, outcome.message
            ),
            1000,
        ),
    })
}

/// Events for this reconcile's drains: each one started (with its window and why), each
/// one finished when the StatefulSet lets its pods go (duration, connections moved), and
/// each pod undrained because it is wanted again.
pub fn for_drain(plan: &DrainPlan, budget_per_second: i32) -> Vec<Notice> {
    let mut out = Vec::new();
    for s in &plan.start {
        let why = if s.over_budget {
            format!(
                "over the budget of {budget_per_second} reconnects/s even at the longest window"
            )
        } else {
            format!("within the budget of {budget_per_second} reconnects/s")
        };
        out.push(Notice {
            pod: Some(s.pod.clone()),
            warning: s.over_budget,
            reason: "DrainStarted".into(),
            action: "Drain",
            note: format!(
                "draining {} before the scale-down: {} connections over {:.1}s after a {:.1}s notice delay ({why})",
                s.pod,
                s.connections,
                s.window.as_secs_f64(),
                s.notice_delay.as_secs_f64()
            ),
        });
    }
    if plan.scale_down_now {
        for l in &plan.leaving {
            let (warning, note) = match &l.state {
                Leaving::Done {
                    moved,
                    elapsed,
                    answered: true,
                } => (
                    false,
                    format!(
                        "{} drained ({moved} connections moved; its drain began {:.1}s ago); the pod goes now",
                        l.name,
                        elapsed.as_secs_f64()
                    ),
                ),
                _ => (
                    true,
                    format!(
                        "{} was not drained (not running, or its admin port did not answer or refused the drain); it goes now and drains on SIGTERM, without the reconnect budget",
                        l.name
                    ),
                ),
            };
            out.push(Notice {
                pod: Some(l.name.clone()),
                warning,
                reason: "DrainFinished".into(),
                action: "Drain",
                note,
            });
        }
    }
    for pod in &plan.undrain {
        out.push(Notice {
            pod: Some(pod.clone()),
            warning: false,
            reason: "Undrained".into(),
            action: "Undrain",
            note: format!("{pod} is wanted again (scale-up); its drain was cancelled"),
        });
    }
    out
}

/// A drain or undrain call that failed (retried next reconcile).
pub fn for_drain_call_failure(pod: &str, what: &str, error: &str) -> Notice {
    Notice {
        pod: Some(pod.to_owned()),
        warning: true,
        reason: "DrainCallFailed".into(),
        action: "Drain",
        note: truncate(&format!("{what} {pod}: {error}; retrying"), 1000),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn c(kind: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn unchanged_conditions_emit_nothing() {
        let now = vec![
            c(READY, "True", "AllReplicasReady"),
            c(DEGRADED, "False", "AsExpected"),
        ];
        assert!(for_condition_changes(&now, &now).is_empty());
    }

    #[test]
    fn a_fresh_cluster_reports_progress_but_not_the_absence_of_problems() {
        let next = vec![
            c(REDIS_READY, "False", "RedisStarting"),
            c(PROGRESSING, "True", "RollingOut"),
            c(READY, "False", "RedisNotReady"),
            c(DEGRADED, "False", "AsExpected"),
        ];
        let events = for_condition_changes(&[], &next);
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["RedisStarting", "RollingOut", "RedisNotReady"]);
        assert!(events.iter().all(|e| !e.warning), "nothing is wrong yet");
    }

    #[test]
    fn losing_readiness_is_a_warning_and_regaining_it_is_normal() {
        let ready = vec![c(READY, "True", "AllReplicasReady")];
        let lost = vec![c(READY, "False", "ReplicasNotReady")];
        let down = for_condition_changes(&ready, &lost);
        assert_eq!(down.len(), 1);
        assert!(down[0].warning);
        assert_eq!(down[0].note, "Ready is False: ReplicasNotReady message");
        let up = for_condition_changes(&lost, &ready);
        assert!(!up[0].warning);
        assert_eq!(up[0].reason, "AllReplicasReady");
    }

    #[test]
    fn an_invalid_spec_is_a_warning_with_the_reason() {
        let before = vec![c(DEGRADED, "False", "AsExpected")];
        let after = vec![c(DEGRADED, "True", "InvalidRedis")];
        let events = for_condition_changes(&before, &after);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
        assert_eq!(events[0].reason, "InvalidRedis");
        assert_eq!(events[0].action, "Validate");
    }

    #[test]
    fn a_reason_change_with_the_same_status_is_reported() {
        let before = vec![c(READY, "False", "RedisNotReady")];
        let after = vec![c(READY, "False", "ReplicasNotReady")];
        assert_eq!(for_condition_changes(&before, &after).len(), 1);
    }

    #[test]
    fn scaling_and_orphans() {
        assert_eq!(for_scaling(None, 3), None, "first creation is not a scale");
        assert_eq!(for_scaling(Some(3), 3), None);
        assert_eq!(for_scaling(Some(3), 5).unwrap().reason, "ScalingUp");
        assert_eq!(for_scaling(Some(3), 1).unwrap().reason, "ScalingDown");
        assert_eq!(for_deleted_orphans(&[]), None);
        let n = for_deleted_orphans(&["Ingress/chat".into()]).unwrap();
        assert!(n.note.contains("Ingress/chat"));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let mut long = c(DEGRADED, "True", "ApplyFailed");
        long.message = "é".repeat(800);
        let n = &for_condition_changes(&[], &[long])[0];
        assert!(n.note.len() <= 1000);
        assert!(n.note.ends_with("..."));
    }

    #[test]
    fn an_autoscaler_write_is_an_event_with_its_numbers_and_a_hold_is_not() {
        let mut outcome = Outcome {
            active: true,
            reason: "ScaledUp".into(),
            message: "350 connections need 4 pods of 100".into(),
            desired_replicas: 4,
            scaled: Some((2, 4)),
        };
        let n = for_autoscaling(&outcome).unwrap();
        assert_eq!(n.reason, "AutoscaledUp");
        assert!(
            n.note.contains("2 → 4") && n.note.contains("350 connections"),
            "{}",
            n.note
        );
        outcome.scaled = None;
        assert_eq!(for_autoscaling(&outcome), None);
    }

    #[test]
    fn scaling_active_reason_changes_alone_are_not_events() {
        let before = [c(SCALING_ACTIVE, "True", "ScaledUp")];
        assert!(
            for_condition_changes(&before, &[c(SCALING_ACTIVE, "True", "WithinTolerance")])
                .is_empty()
        );
        let lost = for_condition_changes(&before, &[c(SCALING_ACTIVE, "False", "NoData")]);
        assert_eq!(lost.len(), 1);
        assert!(lost[0].warning);
    }
}
