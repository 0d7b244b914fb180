//! The reconcile pipeline: validate (pure) → check referenced Secrets → generated Secrets
//! (admin token, Redis password: created once) → drain plan (a scale-down keeps the
//! StatefulSet's pods until the leaving ones are drained) → build (pure) → apply → start
//! drains / undrains → delete orphans → observe → autoscale (with `spec.autoscaling`) →
//! status. An invalid spec sets Degraded and waits for a change; API errors requeue with
//! exponential backoff per ChatCluster (see `error_policy`).
//!
//! This file wires the stages (I/O). The stages are its modules: [`validate`](mod@validate)
//! (pure), [`secrets`], [`generated_secrets`], [`apply`](mod@apply) and [`status`] (I/O),
//! and [`conditions`] and [`events`] (pure: what status and Events say). Building the
//! objects is [`crate::build`], draining [`crate::drain`], autoscaling
//! [`crate::autoscaling`].

pub mod apply;
pub mod conditions;
pub mod events;
pub mod generated_secrets;
pub mod secrets;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};

use self::apply::{apply, delete_orphans, Workloads};
use self::conditions::Observation;
use self::events::{
    for_autoscaling, for_condition_changes, for_deleted_orphans, for_drain, for_drain_call_failure,
    for_scaling, Notice,
};
use self::secrets::check_all as check_secrets;
use self::status::{list_chat_pods, observe, status_for, write};
use self::validate::validate;
use crate::autoscaling::control_loop;
use crate::autoscaling::decision::{keda_outcome, SYNC_PERIOD};
use crate::autoscaling::sources::pods::pod_ready;
use crate::build::{build, BuildContext, BuildError};
use crate::crd::{AutoscalingEngine, ChatCluster, ChatClusterStatus};
use crate::discovery;
use crate::drain;
use crate::drain::plan::{DrainLimits, DrainPlan, Leaving};
use crate::http_client::HttpClient;
use crate::metrics::OperatorMetrics;
use crate::ownership::{cluster_key, key_of_cluster, owned_pods, owned_statefulset_uid, pod_key};

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// Which optional APIs (Gateway API, KEDA, PodMonitors) the cluster serves.
    pub apis: discovery::Cache,
    /// Publishes Events about ChatClusters (events.k8s.io, deduplicated into series).
    pub recorder: Recorder,
    /// Consecutive failed reconciles per ChatCluster (`cluster_key`), for the retry
    /// backoff.
    pub failures: FailureCounts,
    /// Reads the pods' `/metrics` (bounded in time and size).
    pub http: HttpClient,
    /// Queries Prometheus for the autoscaler (bounded in time and size).
    pub prometheus_http: HttpClient,
    /// The autoscaler's stabilization histories.
    pub autoscaler: control_loop::Histories,
    /// The operator's metrics (autoscaler decisions are counted here).
    pub metrics: OperatorMetrics,
    /// The operator's own namespace (`POD_NAMESPACE`), when known: the NetworkPolicy
    /// lets it reach the pods' admin port. Unknown (run outside a pod), no namespace is
    /// let in for it.
    pub operator_namespace: Option<String>,
    /// Failed admin calls in a row per pod, so one that never answers or refuses every
    /// drain does not hold a scale-down forever (`drain::plan::MAX_FAILURES`).
    pub drain_failures: FailureCounts,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("generated Secret: {0}")]
    GeneratedSecret(#[from] generated_secrets::GeneratedSecretError),
}

impl ReconcileError {
    /// The `reason` label of `chatcluster_reconcile_errors_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "api",
            ReconcileError::Build(_) => "build",
            ReconcileError::GeneratedSecret(_) => "generated_secret",
        }
    }
}

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

/// How often a scale-down waiting for drains looks at the pods again.
pub const DRAIN_POLL: Duration = Duration::from_secs(2);

/// Asks the pods that may be part of a drain for their `/admin/status` and plans: the
/// ones above the desired count (leaving); every pod while the last status listed drains
/// under way (a scale back up may want them again, before their readiness has turned);
/// and any pod that is not Ready (a drained pod is not, whatever happened to the
/// status). A steady cluster, every pod Ready and none leaving, costs no call.
async fn plan_drain(
    ctx: &Context,
    cluster: &ChatCluster,
    running: Option<i32>,
    pods: &[Pod],
    generated: &generated_secrets::Generated,
) -> DrainPlan {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let desired = cluster.spec.effective_replicas();
    let drains_under_way = cluster
        .status
        .as_ref()
        .is_some_and(|s| s.draining.is_some());
    let worth_asking: Vec<Pod> = pods
        .iter()
        .filter(|p| {
            let ordinal = p
                .metadata
                .name
                .as_deref()
                .and_then(|pod| drain::calls::ordinal(name, pod));
            drains_under_way || ordinal.is_some_and(|o| o >= desired) || !pod_ready(p)
        })
        .cloned()
        .collect();
    let token = generated.admin_token.as_deref().unwrap_or_default();
    let mut views = drain::calls::view_pods(&ctx.http, name, &worth_asking, token).await;
    let cluster_uid = cluster.metadata.uid.as_deref().unwrap_or_default();
    for v in &mut views {
        let key = pod_key(cluster_uid, &v.name);
        v.failures = match &v.status {
            None if v.running => ctx.drain_failures.failed(&key),
            // A drain under way or over (it answered and took its drain), or a pod that
            // stays: start counting afresh.
            Some(s) if s.phase != drain::plan::Phase::Serving || v.ordinal < desired => {
                ctx.drain_failures.reset(&key);
                0
            }
            // Serving (or not running): keep the count; a failed drain call adds to it.
            _ => ctx.drain_failures.get(&key),
        };
    }
    let keep: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .map(|pod| pod_key(cluster_uid, pod))
        .collect();
    ctx.drain_failures.retain_cluster(cluster_uid, &keep);
    let d = &cluster.spec.drain;
    let limits = DrainLimits {
        max_reconnects_per_second: f64::from(d.max_reconnects_per_second),
        min_window: Duration::from_secs(u64::try_from(d.reconnect_window_seconds).unwrap_or(1)),
        deadline: Duration::from_secs(u64::try_from(d.deadline_seconds).unwrap_or(2)),
        propagation: Duration::from_secs(u64::try_from(d.pre_stop_seconds).unwrap_or(0)),
    };
    drain::plan::plan(desired, running, &views, limits)
}

/// Runs `call` against pod `pod`'s admin address; the error as text for an Event.
async fn call_pod<F, Fut>(pods: &[Pod], pod: &str, call: F) -> Result<(), String>
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::http_client::HttpError>>,
{
    let addr = drain::calls::address_of(pods, pod).ok_or("the pod has no IP")?;
    call(addr).await.map_err(|e| e.to_string())
}

/// Starts the drains and undrains `plan` asks for. A call that fails becomes a warning
/// Event and leaves the pod as it was (the next reconcile tries again); the plan is
/// updated so status and Events say what really happened.
async fn carry_out_drain(
    ctx: &Context,
    cluster_uid: &str,
    pods: &[Pod],
    token: &str,
    plan: &mut DrainPlan,
) -> Vec<Notice> {
    let count = |action: &str| ctx.metrics.drain_actions.with_label_values(&[action]).inc();
    let mut notices = Vec::new();
    let mut failed_starts = Vec::new();
    for start in &plan.start {
        let result = call_pod(pods, &start.pod, |addr| {
            drain::calls::start_drain(&ctx.http, addr, token, start)
        })
        .await;
        let key = pod_key(cluster_uid, &start.pod);
        match result {
            Ok(()) => {
                ctx.drain_failures.reset(&key);
                count("started");
                tracing::info!(pod = %start.pod, connections = start.connections, window_s = start.window.as_secs_f64(), "drain started");
            }
            Err(e) => {
                count("failed");
                let failures = ctx.drain_failures.failed(&key);
                notices.push(for_drain_call_failure(
                    &start.pod,
                    "draining",
                    &format!("{e} ({failures} of {} tries)", drain::plan::MAX_FAILURES),
                ));
                failed_starts.push(start.pod.clone());
            }
        }
    }
    plan.start.retain(|s| !failed_starts.contains(&s.pod));
    for l in &mut plan.leaving {
        if let (true, Leaving::Draining { connections, .. }) =
            (failed_starts.contains(&l.name), &l.state)
        {
            l.state = Leaving::Waiting {
                connections: *connections,
            };
        }
    }
    let mut failed_undrains = Vec::new();
    for pod in &plan.undrain {
        let result = call_pod(pods, pod, |addr| {
            drain::calls::undrain(&ctx.http, addr, token)
        })
        .await;
        match result {
            Ok(()) => {
                count("undrained");
                tracing::info!(%pod, "undrained: wanted again");
            }
            Err(e) => {
                count("failed");
                notices.push(for_drain_call_failure(pod, "undraining", &e));
                failed_undrains.push(pod.clone());
            }
        }
    }
    plan.undrain.retain(|p| !failed_undrains.contains(p));
    if plan.scale_down_now {
        for _ in &plan.leaving {
            count("finished");
        }
    }
    notices
}

/// The status stage: writes the status for `obs` and, once it is written, publishes
/// `notices` plus an Event for each condition that changed. (Publishing only after the
/// write keeps a retried reconcile from repeating the same Events.)
async fn report(
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

/// The API server refused the request as such (invalid, forbidden…), as opposed to a
/// transient failure worth a quiet retry.
fn is_rejection(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if (400..500).contains(&status.code) && status.code != 409 && status.code != 429)
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

/// Delay before retry number `failures` (1 = the first retry): 2 s doubling to 5 min, so
/// a flapping API server is not hammered and a lasting failure is still retried.
pub fn backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(300);
    let doubled = FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX)
}

/// Consecutive failures per key, reset by a success: failed reconciles per ChatCluster
/// (`cluster_key`), failed admin calls per pod (`ownership::pod_key`).
#[derive(Default)]
pub struct FailureCounts(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl FailureCounts {
    /// The map, even if a panicking reconcile poisoned the lock (plain counters).
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure; returns how many in a row.
    pub fn failed(&self, key: &str) -> u32 {
        let mut map = self.map();
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn get(&self, key: &str) -> u32 {
        self.map().get(key).copied().unwrap_or(0)
    }

    pub fn reset(&self, key: &str) {
        self.map().remove(key);
    }

    /// Forgets the keys of cluster `cluster_uid` ([`pod_key`]) that are not in `keep`,
    /// and no other cluster's: the scope is the uid, not a name prefix (which `chat`
    /// shares with `chat-b`).
    pub fn retain_cluster(&self, cluster_uid: &str, keep: &[String]) {
        self.map()
            .retain(|k, _| !key_of_cluster(k, cluster_uid) || keep.contains(k));
    }
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

    #[test]
    fn a_success_resets_the_count() {
        let spec: crate::crd::ChatClusterSpec =
            serde_json::from_value(serde_json::json!({})).unwrap();
        let c = ChatCluster::new("chat", spec);
        let f = FailureCounts::default();
        let key = cluster_key(&c);
        assert_eq!(f.failed(&key), 1);
        assert_eq!(f.failed(&key), 2);
        f.reset(&key);
        assert_eq!(f.failed(&key), 1);
    }

    /// Cleaning up after cluster `chat` used to forget every key starting with
    /// `ns/chat-`, which includes the pods of cluster `chat-b`.
    #[test]
    fn forgetting_one_clusters_pods_leaves_a_cluster_with_a_longer_name_alone() {
        let f = FailureCounts::default();
        let chat_gone = pod_key("uid-chat", "chat-2");
        let chat_kept = pod_key("uid-chat", "chat-0");
        let other = pod_key("uid-chat-b", "chat-b-0");
        for key in [&chat_gone, &chat_kept, &other] {
            f.failed(key);
        }
        f.retain_cluster("uid-chat", std::slice::from_ref(&chat_kept));
        assert_eq!(f.get(&chat_gone), 0, "a pod that is gone is forgotten");
        assert_eq!(f.get(&chat_kept), 1);
        assert_eq!(f.get(&other), 1, "chat-b's pods are not chat's");
        // Reconcile failures (namespace/name keys) are not per-pod state either.
        f.failed("ns/chat");
        f.retain_cluster("uid-chat", &[]);
        assert_eq!(f.get("ns/chat"), 1);
    }
}
