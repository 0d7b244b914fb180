//! The reconcile pipeline: validate (pure) → check referenced Secrets → generated Secrets
//! (admin token, Redis password: created once) → drain plan (a scale-down keeps the
//! StatefulSet's pods until the leaving ones are drained) → build (pure) → apply → start
//! drains / undrains → delete orphans → observe → autoscale (with `spec.autoscaling`) →
//! status. An invalid spec sets Degraded and waits for a change; API errors requeue with
//! exponential backoff per ChatCluster (see `error_policy`).
//!
//! This file wires the stages (I/O). The stages are its modules: [`validate`](mod@validate)
//! (pure), [`secrets`], [`generated_secrets`], [`drain_stage`], [`apply`](mod@apply),
//! [`status`] and [`report`](mod@report) (I/O), and [`conditions`] and [`events`] (pure:
//! what status and Events say); [`context`] is what every reconcile shares. Building the
//! objects is [`crate::build`], draining [`crate::drain`], autoscaling
//! [`crate::autoscaling`].

pub mod apply;
pub mod conditions;
pub mod context;
pub mod drain_stage;
pub mod events;
pub mod generated_secrets;
pub mod report;
pub mod secrets;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::Api;

use self::apply::{apply, delete_orphans, Workloads};
use self::conditions::Observation;
pub use self::context::{Context, FailureCounts, ReconcileError};
use self::drain_stage::{carry_out_drain, plan_drain, DRAIN_POLL};
use self::events::{for_autoscaling, for_deleted_orphans, for_drain, for_scaling, Notice};
use self::report::report;
use self::secrets::check_all as check_secrets;
use self::status::{list_chat_pods, observe};
use self::validate::validate;
use crate::autoscaling::control_loop;
use crate::autoscaling::decision::{keda_outcome, SYNC_PERIOD};
use crate::build::{build, BuildContext};
use crate::crd::{AutoscalingEngine, ChatCluster};
use crate::discovery;
use crate::ownership::{cluster_key, owned_pods, owned_statefulset_uid};

/// How soon to look again at a ChatCluster waiting for a Secret to be created or fixed.
pub const SECRET_RECHECK: Duration = Duration::from_secs(10);

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
    let result = reconcile_stages(&cluster, &ctx).await;
    if result.is_ok() {
        // Any success resets this cluster's retry backoff.
        ctx.failures.reset(&cluster_key(&cluster));
    }
    result
}

/// The pipeline, one stage after another: validate, build, apply, delete orphans, report.
async fn reconcile_stages(cluster: &ChatCluster, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let name = cluster.metadata.name.clone().unwrap_or_default();
    if cluster.metadata.deletion_timestamp.is_some() {
        // Being deleted (e.g. a foreground delete waiting for its children): applying now
        // would recreate what the garbage collector is removing.
        return Ok(Action::await_change());
    }
    if let Err(invalid) = validate(cluster) {
        tracing::warn!(%ns, %name, reason = invalid.reason, message = %invalid.message, "invalid ChatCluster");
        let obs = Observation {
            invalid: Some((invalid.reason.to_owned(), invalid.message.clone())),
            desired_replicas: cluster.spec.effective_replicas(),
            ..Observation::default()
        };
        report(ctx, cluster, &obs, Vec::new()).await?;
        return Ok(Action::await_change());
    }
    // Referenced Secrets are checked before anything is applied: pods started against a
    // missing or unusable Secret would only fail later, less clearly.
    let cluster_uid = cluster.metadata.uid.clone().unwrap_or_default();
    if let Err(invalid) = check_secrets(&ctx.client, &ns, &cluster.spec).await? {
        tracing::warn!(%ns, %name, reason = invalid.reason, message = %invalid.message, "unusable Secret");
        let workloads = Workloads::read(&ctx.client, &ns, cluster).await?;
        let sts_uid = owned_statefulset_uid(workloads.chat.as_ref(), &cluster_uid);
        let pods = owned_pods(
            list_chat_pods(&ctx.client, &ns, &name).await?,
            sts_uid.as_deref(),
        );
        let (mut obs, _) = observe(&ctx.http, cluster, workloads, &pods).await;
        obs.invalid = Some((invalid.reason.to_owned(), invalid.message));
        report(ctx, cluster, &obs, Vec::new()).await?;
        // Secrets are not watched: look again soon, so creating the Secret is enough.
        return Ok(Action::requeue(SECRET_RECHECK));
    }
    // Generated Secrets first: the pod templates carry their revision.
    let generated = generated_secrets::ensure(&ctx.client, cluster).await?;
    let statefulset = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await?;
    let replicas_before = statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas);
    // Only the pods of this cluster's StatefulSet, by owner uid: they get the admin token
    // (drains) and their counts make the status and the autoscaler's figure. A pod that
    // only looks like one (labels, name) gets nothing (see `ownership`).
    let sts_uid = owned_statefulset_uid(statefulset.as_ref(), &cluster_uid);
    let pods = owned_pods(
        list_chat_pods(&ctx.client, &ns, &name).await?,
        sts_uid.as_deref(),
    );
    // A scale-down waits until the pods that go are drained (see `drain::plan`).
    let mut drain = plan_drain(ctx, cluster, replicas_before, &pods, &generated).await;
    let served = ctx.apis.get(&ctx.client).await?;
    let desired = build(
        cluster,
        BuildContext {
            served,
            secrets_revision: Some(generated.revision.clone()),
            chat_replicas: Some(drain.statefulset_replicas),
            operator_namespace: ctx.operator_namespace.clone(),
        },
    )?;
    let workloads = match apply(&ctx.client, &ns, &desired).await {
        Ok(applied) => applied,
        Err(e) => {
            if !is_rejection(&e) {
                // Transient (timeout, conflict, throttling, 5xx): retry without touching status.
                return Err(e.into());
            }
            // A rejected object will not fix itself: make it visible in status (keeping the
            // observed replica counts, which /scale and HPA read); the error still goes to
            // error_policy for a retry with backoff.
            let previous = cluster.status.clone().unwrap_or_default();
            let obs = Observation {
                apply_failed: Some(e.to_string()),
                desired_replicas: cluster.spec.effective_replicas(),
                observed_replicas: previous.replicas,
                ready_replicas: previous.ready_replicas,
                ..Observation::default()
            };
            if let Err(write_err) = report(ctx, cluster, &obs, Vec::new()).await {
                tracing::warn!(%ns, %name, error = %write_err, "could not record the apply failure in status");
            }
            return Err(e.into());
        }
    };
    let mut notices: Vec<Notice> = for_scaling(replicas_before, drain.statefulset_replicas)
        .into_iter()
        .collect();
    notices.extend(
        carry_out_drain(
            ctx,
            &cluster_uid,
            &pods,
            generated.admin_token.as_deref().unwrap_or_default(),
            &mut drain,
        )
        .await,
    );
    notices.extend(for_drain(
        &drain,
        cluster.spec.drain.max_reconnects_per_second,
    ));
    let deleted = delete_orphans(&ctx.client, &ns, &name, &cluster_uid, &desired, served).await?;
    if !deleted.is_empty() {
        tracing::info!(%ns, %name, ?deleted, "deleted objects no longer in the spec");
    }
    notices.extend(for_deleted_orphans(&deleted));
    let (mut obs, scrape) = observe(&ctx.http, cluster, workloads, &pods).await;
    let draining = drain.in_progress();
    obs.drain = Some(drain);
    obs.unserved_api = discovery::missing(&cluster.spec, served).map(|(r, m)| (r.to_owned(), m));
    obs.autoscaling = match cluster.spec.autoscaling.as_ref().map(|a| a.engine) {
        // KEDA's HPA writes replicas through /scale; the operator only drains.
        Some(AutoscalingEngine::Keda) => {
            ctx.autoscaler.forget(&cluster_key(cluster));
            Some(keda_outcome(cluster, served.keda))
        }
        _ => {
            let reading = control_loop::read(cluster, &ctx.prometheus_http, scrape).await;
            control_loop::run(
                &ctx.client,
                &ctx.autoscaler,
                cluster,
                &reading,
                Timestamp::now(),
            )
            .await?
        }
    };
    if let Some(outcome) = &obs.autoscaling {
        ctx.metrics
            .autoscaler_decisions
            .with_label_values(&[outcome.reason.as_str()])
            .inc();
        notices.extend(for_autoscaling(outcome));
    }
    report(ctx, cluster, &obs, notices).await?;
    let mut next = requeue_after(obs.is_ready());
    if obs.autoscaling.is_some() {
        next = next.min(SYNC_PERIOD);
    }
    if draining {
        next = next.min(DRAIN_POLL);
    }
    if obs.unserved_api.is_some() {
        // Installing the missing CRDs is noticed without a change to the ChatCluster.
        next = next.min(discovery::REFRESH);
    }
    Ok(Action::requeue(next))
}

/// The API server refused the request as such (invalid, forbidden…), as opposed to a
/// transient failure worth a quiet retry.
fn is_rejection(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if (400..500).contains(&status.code) && status.code != 409 && status.code != 429)
}

/// Delay before retry number `failures` (1 = the first retry): 2 s doubling to 5 min, so
/// a flapping API server is not hammered and a lasting failure is still retried.
pub fn backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(300);
    let doubled = FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX)
}

/// Failed reconciles retry with exponential backoff per ChatCluster.
pub fn error_policy(
    cluster: Arc<ChatCluster>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.failures.failed(&cluster_key(&cluster));
    let delay = backoff(failures);
    tracing::warn!(
        name = cluster.metadata.name.as_deref().unwrap_or(""),
        namespace = cluster.metadata.namespace.as_deref().unwrap_or(""),
        %error,
        failures,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed; retrying"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
        assert_eq!(backoff(0), Duration::from_secs(2));
    }
}
