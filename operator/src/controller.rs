//! The controller's wiring: which kinds it watches and how each reconcile is counted.
//! `main` only starts it once this replica leads.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::build::MANAGED_BY;
use crate::crd::ChatCluster;
use crate::metrics::OperatorMetrics;
use crate::reconcile::{error_policy, reconcile, Context, ReconcileError};

/// The controller for ChatClusters in `watch_namespace` (empty: every namespace); the
/// future ends only if the controller's streams end.
pub fn run(
    client: &Client,
    watch_namespace: &str,
    ctx: Arc<Context>,
    metrics: OperatorMetrics,
) -> impl Future<Output = ()> {
    let scope = Scope(watch_namespace.to_owned());
    // Watch only what this operator manages, not every StatefulSet and Service. A change
    // to (or the deletion of) any child brings its ChatCluster back to reconcile.
    // (Children of optional kinds, ScaledObjects and PodMonitors, are not watched: the
    // periodic requeue repairs them, and their APIs may not be served.)
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(scope.api::<ChatCluster>(client), watcher::Config::default());
    let cache = controller.store();
    let prune_metrics = metrics.clone();
    let running = controller
        .owns(scope.api::<StatefulSet>(client), owned.clone())
        .owns(scope.api::<Service>(client), owned.clone())
        .owns(scope.api::<ConfigMap>(client), owned.clone())
        .owns(scope.api::<ServiceAccount>(client), owned.clone())
        .owns(scope.api::<PodDisruptionBudget>(client), owned.clone())
        .owns(scope.api::<Ingress>(client), owned.clone())
        .owns(scope.api::<NetworkPolicy>(client), owned)
        .run(
            move |obj, ctx| {
                let m = metrics.clone();
                async move {
                    let started = Instant::now();
                    m.reconciles.inc();
                    let result: Result<Action, ReconcileError> = reconcile(obj, ctx).await;
                    m.duration.observe(started.elapsed().as_secs_f64());
                    if let Err(e) = &result {
                        m.errors.with_label_values(&[e.metric_reason()]).inc();
                    }
                    result
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            // Reconcile errors are logged by error_policy; this also shows watch failures
            // (e.g. RBAC denials on a watched kind), which would otherwise vanish.
            if let Err(e) = result {
                tracing::warn!(error = %e, "controller error");
            }
        });
    // Deleted ChatClusters are not reconciled again: their gauges are pruned here.
    let prune = async move {
        let mut every = tokio::time::interval(METRICS_PRUNE_PERIOD);
        loop {
            every.tick().await;
            prune_metrics
                .retain_clusters(|ns, name| cache.get(&ObjectRef::new(name).within(ns)).is_some());
        }
    };
    async move {
        tokio::select! {
            _ = running => {}
            _ = prune => {}
        }
    }
}

/// How often the per-ChatCluster gauges of deleted clusters are dropped.
const METRICS_PRUNE_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// The namespace the operator watches, or all of them.
struct Scope(String);

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        if self.0.is_empty() {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &self.0)
        }
    }
}
