//! Status stage: observe the cluster's StatefulSets and pods and write `status` (replicas,
//! ready replicas, connections, selector, observedGeneration, conditions) through the status subresource.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use super::apply::{Workloads, FIELD_MANAGER};
use super::conditions::{next_conditions, Observation};
use crate::autoscaling::sources::pods::{ready_pod_addresses, scrape_connections, PodConnections};
use crate::build::{selector_string, ADMIN_PORT};
use crate::crd::{ChatCluster, ChatClusterStatus, DrainingPod};
use crate::drain::plan::{DrainPlan, Leaving};
use crate::http_client::HttpClient;

/// The chat-server pods of ChatCluster `name`.
pub async fn list_chat_pods(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Vec<Pod>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels(&selector_string(name)))
        .await?
        .items)
}

/// Computes the observation from what the StatefulSets report (a missing object counts
/// as "nothing ready") and scrapes the ready ones of `chat_pods` for connection counts,
/// which the autoscaler also uses.
pub async fn observe(
    http: &HttpClient,
    cluster: &ChatCluster,
    workloads: Workloads,
    chat_pods: &[Pod],
) -> (Observation, PodConnections) {
    let Workloads { chat, redis } = workloads;
    let managed = cluster.spec.redis.external.is_none();
    let redis_ready = !managed
        || redis
            .and_then(|s| s.status)
            .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= 1);
    let statefulset_current = chat.as_ref().is_some_and(statefulset_rolled_out);
    let status = chat.and_then(|s| s.status).unwrap_or_default();
    let scrape = scrape_connections(http, &ready_pod_addresses(chat_pods, ADMIN_PORT as u16)).await;
    let observation = Observation {
        invalid: None,
        apply_failed: None,
        unserved_api: None,
        desired_replicas: cluster.spec.effective_replicas(),
        observed_replicas: status.replicas,
        ready_replicas: status.ready_replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        statefulset_current,
        replicas_note: cluster.spec.replicas_clamp_note(),
        redis_ready,
        redis_managed: managed,
        connections: scrape.best_effort_total(),
        autoscaling: None,
        drain: None,
    };
    (observation, scrape)
}

/// Whether the StatefulSet controller has observed `sts`'s latest generation and
/// finished rolling it out (pure). Until then its replica counts describe the previous
/// template.
pub fn statefulset_rolled_out(sts: &StatefulSet) -> bool {
    let generation = sts.metadata.generation;
    let Some(status) = &sts.status else {
        return false;
    };
    generation.is_some()
        && status.observed_generation >= generation
        && status.current_revision.is_some()
        && status.current_revision == status.update_revision
}

/// The status for `obs` (pure).
pub fn status_for(cluster: &ChatCluster, obs: &Observation, now: Timestamp) -> ChatClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation.unwrap_or(0);
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    ChatClusterStatus {
        observed_generation: Some(generation),
        // Observed, not desired: /scale and HPA read this.
        replicas: obs.observed_replicas,
        ready_replicas: obs.ready_replicas,
        // No pod answered: keep the last figure rather than claim zero.
        connections: obs.connections.unwrap_or(previous.connections),
        desired_replicas: obs.autoscaling.as_ref().map(|a| a.desired_replicas),
        last_scale_time: match &obs.autoscaling {
            Some(a) if a.scaled.is_some() => Some(Time(now)),
            Some(_) => previous.last_scale_time.clone(),
            None => None,
        },
        draining: obs
            .drain
            .as_ref()
            .filter(|p| p.in_progress())
            .map(draining_pods),
        selector: Some(selector_string(name)),
        conditions: next_conditions(&previous.conditions, obs, generation, now),
    }
}

/// `status.draining` for a scale-down under way (pure).
fn draining_pods(plan: &DrainPlan) -> Vec<DrainingPod> {
    plan.leaving
        .iter()
        .map(|l| {
            let (state, connections, window) = match &l.state {
                Leaving::Waiting { connections } => ("Waiting", *connections, 0),
                Leaving::Draining {
                    connections,
                    window,
                    ..
                } => ("Draining", *connections, window.as_secs()),
                Leaving::NotAnswering { .. } => ("NotAnswering", 0, 0),
                Leaving::Done { answered: true, .. } => ("Drained", 0, 0),
                Leaving::Done {
                    answered: false, ..
                } => ("NotDrained", 0, 0),
            };
            DrainingPod {
                pod: l.name.clone(),
                state: state.to_owned(),
                connections: i64::try_from(connections).unwrap_or(i64::MAX),
                reconnect_window_seconds: i64::try_from(window).unwrap_or(i64::MAX),
            }
        })
        .collect()
}

/// Writes `status` unless it is unchanged (so an idle cluster causes no writes).
pub async fn write(
    client: &Client,
    cluster: &ChatCluster,
    status: ChatClusterStatus,
) -> Result<bool, kube::Error> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
    let keep_last_scale_time =
        cluster.spec.autoscaling.is_some() && status.last_scale_time.is_none();
    let mut patch = json!({"status": status});
    // The cluster a reconcile starts from can predate this operator's last status write
    // (the watch cache trails it), so an unset lastScaleTime may only mean "not seen
    // yet": with autoscaling on it is left out of the patch rather than erased.
    if keep_last_scale_time {
        if let Some(fields) = patch["status"].as_object_mut() {
            fields.remove("lastScaleTime");
        }
    }
    // A merge patch (force is only for apply patches), attributed to the operator.
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&name, &params, &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatClusterSpec;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;

    fn sts(generation: i64, observed: i64, current: &str, update: &str) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.generation = Some(generation);
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(observed),
            current_revision: Some(current.to_owned()),
            update_revision: Some(update.to_owned()),
            ..StatefulSetStatus::default()
        });
        s
    }

    #[test]
    fn rolled_out_only_when_the_controller_saw_the_generation_and_revisions_match() {
        assert!(statefulset_rolled_out(&sts(2, 2, "r2", "r2")));
        assert!(
            !statefulset_rolled_out(&sts(2, 1, "r1", "r1")),
            "new generation not observed yet"
        );
        assert!(
            !statefulset_rolled_out(&sts(2, 2, "r1", "r2")),
            "pods still being replaced"
        );
        assert!(!statefulset_rolled_out(&StatefulSet::default()));
    }

    #[test]
    fn unchanged_observation_gives_an_identical_status() {
        let spec: ChatClusterSpec = serde_json::from_value(json!({})).unwrap();
        let mut c = ChatCluster::new("chat", spec);
        c.metadata.generation = Some(2);
        let obs = Observation {
            invalid: None,
            apply_failed: None,
            unserved_api: None,
            desired_replicas: 3,
            observed_replicas: 3,
            ready_replicas: 3,
            updated_replicas: 3,
            statefulset_current: true,
            replicas_note: None,
            redis_ready: true,
            redis_managed: true,
            connections: None,
            autoscaling: None,
            drain: None,
        };
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let first = status_for(&c, &obs, t0);
        assert_eq!(first.observed_generation, Some(2));
        assert_eq!(
            first.selector.as_deref(),
            Some(selector_string("chat").as_str())
        );
        c.status = Some(first.clone());
        let later = status_for(&c, &obs, Timestamp::from_second(1_800_000_600).unwrap());
        assert_eq!(
            later, first,
            "no transition, so nothing to write (no resourceVersion churn)"
        );
    }
}
