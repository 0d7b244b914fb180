//! Builders: a ChatCluster spec → the Kubernetes objects that run it. Pure functions (no
//! API calls), so every object is checked by golden-file tests.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::autoscaling::promql::connections_query;
use crate::crd::{AutoscalingEngine, ChatCluster};

mod autoscaling;
mod chat;
mod expose;
mod monitoring;
mod network_policy;
mod pod;
mod redis;
mod secrets;
mod services;

use chat::{chat_statefulset, config_map, pdb};
use expose::{http_route, ingress};
pub use pod::SECRETS_REVISION_ANNOTATION;
use redis::{redis_service, redis_statefulset};
pub use secrets::{
    admin_secret_name, api_keys_secret_name, generated_secret, generated_secret_names,
    pods_read_at_start, redis_auth_secret_name, ADMIN_TOKEN_KEY, REDIS_CONFIG_KEY,
    REDIS_PASSWORD_KEY,
};
use services::{api_service, client_service, headless_service};

pub const PUBLIC_PORT: i32 = 8080;
pub const ADMIN_PORT: i32 = 9090;
/// The server API's port on the chat pods (`spec.api`), and of the `NAME-api` Service.
pub const API_PORT: i32 = 8081;
pub const REDIS_PORT: i32 = 6379;
/// `app.kubernetes.io/component` of the objects that exist only for the server API
/// (`spec.api`): the orphan stage deletes them by it once the API is off.
pub const API_COMPONENT: &str = "api";
/// The sticky-session cookie set by the ingress (and the HTTPRoute's session persistence).
pub const AFFINITY_COOKIE: &str = "CHATNODE";
/// Added to the drain deadline and preStop for terminationGracePeriodSeconds.
pub const GRACE_MARGIN_SECONDS: i64 = 5;

/// Why objects cannot be built for a ChatCluster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the ChatCluster has no {0} yet")]
    MissingMetadata(&'static str),
}

/// What the builders need besides the spec.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// Which optional APIs the cluster serves: objects of those kinds are built only
    /// where they can be created.
    pub served: Served,
    /// The uids of the generated Secrets (`generated_secret_names`), joined: put on the pod
    /// templates so pods restart when a generated Secret is recreated with a new value
    /// (pods read Secret values only at start).
    pub secrets_revision: Option<String>,
    /// The chat StatefulSet's `replicas` while a scale-down waits for its pods to be
    /// drained (`crate::drain::plan`); `None`: the spec's effective replicas.
    pub chat_replicas: Option<i32>,
    /// The operator's own namespace: its calls to the pods' admin port are let through
    /// the NetworkPolicy.
    pub operator_namespace: Option<String>,
}

/// The optional APIs the cluster serves (see `crate::discovery`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Gateway API HTTPRoutes.
    pub gateway_api: bool,
    /// KEDA ScaledObjects.
    pub keda: bool,
    /// Prometheus-operator PodMonitors.
    pub pod_monitors: bool,
}

/// Every object one ChatCluster needs. `None` means "must not exist" (the orphan stage
/// deletes a labelled object of that kind if one is left over).
#[derive(Debug, Clone)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub chat_statefulset: StatefulSet,
    pub headless_service: Service,
    pub client_service: Service,
    /// With `api.enabled`: Service `NAME-api`, the server API port of the chat pods.
    pub api_service: Option<Service>,
    pub pdb: Option<PodDisruptionBudget>,
    pub ingress: Option<Ingress>,
    /// Gateway API HTTPRoute (no typed struct in k8s-openapi), as JSON.
    pub http_route: Option<serde_json::Value>,
    pub redis_statefulset: Option<StatefulSet>,
    pub redis_service: Option<Service>,
    /// With `networkPolicy.enabled`: the chat pods' admin port only from the operator's
    /// and the listed namespaces; with `api.enabled`, their API port only from the
    /// cluster's own namespace and `api.fromNamespaces`.
    pub network_policy: Option<NetworkPolicy>,
    /// With `networkPolicy.enabled` and a managed Redis: Redis only from the chat pods.
    pub redis_network_policy: Option<NetworkPolicy>,
    /// With `autoscaling.engine: keda` where KEDA is installed: its ScaledObject, as JSON.
    pub scaled_object: Option<serde_json::Value>,
    /// With `monitoring.podMonitor` where PodMonitors are served: the PodMonitor, as JSON.
    pub pod_monitor: Option<serde_json::Value>,
}

/// Names and labels shared by every builder.
struct Names<'a> {
    name: &'a str,
    namespace: &'a str,
    owner: OwnerReference,
}

impl Names<'_> {
    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(labels(self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn redis_name(&self) -> String {
        redis_name(self.name)
    }
}

/// The managed Redis StatefulSet and Service of ChatCluster `cluster`.
pub fn redis_name(cluster: &str) -> String {
    format!("{cluster}-redis")
}

/// `app.kubernetes.io/managed-by` of every object the operator creates (its watches and
/// orphan deletion select on it).
pub const MANAGED_BY: &str = "chatcluster-operator";

/// Standard labels of every object of a ChatCluster.
pub fn labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster, component);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert("app.kubernetes.io/part-of".into(), "chatcluster".into());
    l
}

/// The labels pods are selected by (stable across upgrades).
pub fn selector_labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "chatcluster".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), cluster.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

/// The chat-server pods' label selector as a string (status.selector, for /scale).
pub fn selector_string(cluster: &str) -> String {
    selector_labels(cluster, "chat-server")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Names and the owner reference for `cluster`'s children.
fn names(cluster: &ChatCluster) -> Result<Names<'_>, BuildError> {
    let name = cluster
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = cluster
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let mut owner = cluster
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    // Foreground deletion of the ChatCluster waits for its children (needs `update` on
    // chatclusters/finalizers where OwnerReferencesPermissionEnforcement is on).
    owner.block_owner_deletion = Some(true);
    Ok(Names {
        name,
        namespace,
        owner,
    })
}

/// Builds every desired object for `cluster`.
pub fn build(cluster: &ChatCluster, ctx: BuildContext) -> Result<Desired, BuildError> {
    let n = names(cluster)?;
    let name = n.name;
    let spec = &cluster.spec;
    let managed = spec.redis.external.is_none();
    let config_map = config_map(&n, cluster);
    Ok(Desired {
        service_account: ServiceAccount {
            metadata: n.meta(name.to_owned(), "chat-server"),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        chat_statefulset: chat_statefulset(&n, cluster, &config_map, &ctx),
        config_map,
        headless_service: headless_service(&n),
        client_service: client_service(&n),
        api_service: spec.api.enabled.then(|| api_service(&n)),
        pdb: (spec.effective_replicas() > 1).then(|| pdb(&n)),
        ingress: spec
            .expose
            .as_ref()
            .and_then(|e| e.ingress.as_ref())
            .map(|i| ingress(&n, i)),
        http_route: spec
            .expose
            .as_ref()
            .and_then(|e| e.http_route.as_ref())
            .filter(|_| ctx.served.gateway_api)
            .map(|r| http_route(&n, r)),
        redis_statefulset: managed.then(|| redis_statefulset(&n, cluster, &ctx)),
        redis_service: managed.then(|| redis_service(&n)),
        network_policy: spec.network_policy.enabled.then(|| {
            let admin: Vec<&str> = ctx
                .operator_namespace
                .as_deref()
                .into_iter()
                .chain(
                    spec.network_policy
                        .admin_from_namespaces
                        .iter()
                        .map(String::as_str),
                )
                .collect();
            // The cluster's own namespace first: the application usually runs beside it.
            // With the API off the list is empty: no rule, the port closed.
            let api: Vec<&str> = if spec.api.enabled {
                std::iter::once(n.namespace)
                    .chain(spec.api.from_namespaces.iter().map(String::as_str))
                    .collect()
            } else {
                Vec::new()
            };
            network_policy::chat_network_policy(&n, &admin, &api)
        }),
        redis_network_policy: (managed && spec.network_policy.enabled)
            .then(|| network_policy::redis_network_policy(&n)),
        scaled_object: spec
            .autoscaling
            .as_ref()
            .filter(|a| a.engine == AutoscalingEngine::Keda && ctx.served.keda)
            .and_then(|a| {
                let url = a.prometheus_url.as_deref()?;
                Some(autoscaling::scaled_object(
                    &n,
                    a,
                    url,
                    &connections_query(cluster),
                ))
            }),
        pod_monitor: spec
            .monitoring
            .pod_monitor
            .as_ref()
            .filter(|_| ctx.served.pod_monitors)
            .map(|m| monitoring::pod_monitor(&n, m)),
    })
}

/// A ChatCluster `chat` in namespace `apps` with `spec`, for the builders' unit tests.
#[cfg(test)]
pub(crate) fn test_cluster(spec: serde_json::Value) -> ChatCluster {
    let spec: crate::crd::ChatClusterSpec = serde_json::from_value(spec).unwrap();
    let mut c = ChatCluster::new("chat", spec);
    c.metadata.namespace = Some("apps".into());
    c.metadata.uid = Some("uid-1".into());
    c
}
