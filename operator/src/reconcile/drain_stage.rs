//! The drain stage (I/O): asks the pods that may leave for their `/admin/status`, plans
//! with [`crate::drain::plan`], and carries out the drains and undrains the plan asks
//! for, through the pods' admin port with the cluster's admin token.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::context::Context;
use super::events::{for_drain_call_failure, Notice};
use super::generated_secrets;
use crate::autoscaling::sources::pods::pod_ready;
use crate::crd::ChatCluster;
use crate::drain;
use crate::drain::plan::{DrainLimits, DrainPlan, Leaving};
use crate::ownership::pod_key;

/// How often a scale-down waiting for drains looks at the pods again.
pub const DRAIN_POLL: Duration = Duration::from_secs(2);

/// Asks the pods that may be part of a drain for their `/admin/status` and plans: the
/// ones above the desired count (leaving); every pod while the last status listed drains
/// under way (a scale back up may want them again, before their readiness has turned);
/// and any pod that is not Ready (a drained pod is not, whatever happened to the
/// status). A steady cluster, every pod Ready and none leaving, costs no call.
pub async fn plan_drain(
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
pub async fn carry_out_drain(
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
