//! The status stage (I/O): writes the status an observation makes and publishes the
//! reconcile's Events, only once the status is written (a retried reconcile then does not
//! repeat them).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use kube::Resource;

use super::conditions::Observation;
use super::context::Context;
use super::events::{for_condition_changes, Notice};
use super::status::{status_for, write};
use crate::crd::{ChatCluster, ChatClusterStatus};

/// The status stage: writes the status for `obs` and, once it is written, publishes
/// `notices` plus an Event for each condition that changed. (Publishing only after the
/// write keeps a retried reconcile from repeating the same Events.)
pub async fn report(
    ctx: &Context,
    cluster: &ChatCluster,
    obs: &Observation,
    mut notices: Vec<Notice>,
) -> Result<(), kube::Error> {
    let status = status_for(cluster, obs, Timestamp::now());
    ctx.metrics.set_replicas(
        cluster.metadata.namespace.as_deref().unwrap_or_default(),
        cluster.metadata.name.as_deref().unwrap_or_default(),
        status.desired_replicas.unwrap_or(obs.desired_replicas),
        status.ready_replicas,
    );
    notices.extend(for_condition_changes(
        previous_conditions(cluster),
        &status.conditions,
    ));
    write(&ctx.client, cluster, status).await?;
    publish(ctx, cluster, notices).await;
    Ok(())
}

fn previous_conditions(
    cluster: &ChatCluster,
) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
    cluster
        .status
        .as_ref()
        .map(|s: &ChatClusterStatus| s.conditions.as_slice())
        .unwrap_or_default()
}

/// Events are best effort: a failure to publish one is logged, never fails a reconcile.
async fn publish(ctx: &Context, cluster: &ChatCluster, notices: Vec<Notice>) {
    let reference = cluster.object_ref(&());
    for n in notices {
        let event = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason,
            note: Some(n.note),
            action: n.action.to_owned(),
            secondary: n.pod.map(|pod| ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod),
                namespace: cluster.metadata.namespace.clone(),
                ..ObjectReference::default()
            }),
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = %event.reason, "could not publish an Event");
        }
    }
}
