//! The reconcile pipeline: validate (pure) → build (pure) → apply → delete orphans →
//! status. An invalid spec sets Degraded and waits for a change; API errors requeue with
//! backoff (see `error_policy`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};

use crate::apply::{apply, delete_orphans};
use crate::build::{build, BuildContext, BuildError};
use crate::conditions::Observation;
use crate::crd::{ChatCluster, ChatClusterStatus};
use crate::events::{for_condition_changes, for_deleted_orphans, for_scaling, Notice};
use crate::status::{observe, status_for, write};
use crate::validate::validate;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// Whether the Gateway API CRDs are installed (HTTPRoutes can be created).
    pub gateway_api: bool,
    /// Publishes Events about ChatClusters (events.k8s.io, deduplicated into series).
    pub recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// How soon to look again when nothing changes: sooner while the cluster is not ready.
pub fn requeue_after(ready: bool) -> Duration {
    if ready {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(5)
    }
}

pub async fn reconcile(
    cluster: Arc<ChatCluster>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let name = cluster.metadata.name.clone().unwrap_or_default();
    if let Err(invalid) = validate(&cluster) {
        tracing::warn!(%ns, %name, reason = invalid.reason, message = %invalid.message, "invalid ChatCluster");
        let obs = Observation {
            invalid: Some((invalid.reason.to_owned(), invalid.message.clone())),
            desired_replicas: cluster.spec.replicas,
            ..Observation::default()
        };
        let status = status_for(&cluster, &obs, Timestamp::now());
        let notices = for_condition_changes(previous_conditions(&cluster), &status.conditions);
        write(&ctx.client, &cluster, status).await?;
        publish(&ctx, &cluster, notices).await;
        return Ok(Action::await_change());
    }
    let desired = build(
        &cluster,
        BuildContext {
            gateway_api: ctx.gateway_api,
        },
    )?;
    let replicas_before = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await?
        .and_then(|s| s.spec)
        .and_then(|s| s.replicas);
    if let Err(e) = apply(&ctx.client, &ns, &desired).await {
        // Make a persistent failure (e.g. a rejected object) visible in status; the
        // error itself goes to error_policy for a retry.
        let obs = Observation {
            apply_failed: Some(e.to_string()),
            desired_replicas: cluster.spec.replicas,
            ..Observation::default()
        };
        let status = status_for(&cluster, &obs, Timestamp::now());
        let notices = for_condition_changes(previous_conditions(&cluster), &status.conditions);
        if let Err(write_err) = write(&ctx.client, &cluster, status).await {
            tracing::warn!(%ns, %name, error = %write_err, "could not record the apply failure in status");
        }
        publish(&ctx, &cluster, notices).await;
        return Err(e.into());
    }
    let mut notices: Vec<Notice> = for_scaling(replicas_before, cluster.spec.replicas)
        .into_iter()
        .collect();
    let uid = cluster.metadata.uid.clone().unwrap_or_default();
    let deleted = delete_orphans(&ctx.client, &ns, &name, &uid, &desired, ctx.gateway_api).await?;
    if !deleted.is_empty() {
        tracing::info!(%ns, %name, ?deleted, "deleted objects no longer in the spec");
    }
    notices.extend(for_deleted_orphans(&deleted));
    let obs = observe(&ctx.client, &ns, &cluster).await?;
    let ready = obs.redis_ready && obs.ready_replicas >= obs.desired_replicas;
    let status = status_for(&cluster, &obs, Timestamp::now());
    notices.extend(for_condition_changes(
        previous_conditions(&cluster),
        &status.conditions,
    ));
    write(&ctx.client, &cluster, status).await?;
    publish(&ctx, &cluster, notices).await;
    Ok(Action::requeue(requeue_after(ready)))
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
    if notices.is_empty() {
        return;
    }
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
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = %event.reason, "could not publish an Event");
        }
    }
}

/// Transient errors retry with a delay; the controller's own backoff spreads repeats.
pub fn error_policy(
    cluster: Arc<ChatCluster>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(name = cluster.metadata.name.as_deref().unwrap_or(""), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}
