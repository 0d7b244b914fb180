//! Builders: a ChatCluster spec → the Kubernetes objects that run it. Pure functions (no
//! API calls), so every object is checked by golden-file tests.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, SleepAction, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, NetworkPolicy,
    ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde_json::json;

use crate::crd::ChatCluster;

mod network_policy;

pub const PUBLIC_PORT: i32 = 8080;
pub const ADMIN_PORT: i32 = 9090;
pub const REDIS_PORT: i32 = 6379;
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
    /// Whether the Gateway API CRDs are installed (an HTTPRoute can be created).
    pub gateway_api: bool,
    /// The uids of the generated Secrets (`generated_secret_names`), joined: put on the pod
    /// templates so pods restart when a generated Secret is recreated with a new value
    /// (pods read Secret values only at start).
    pub secrets_revision: Option<String>,
    /// The chat StatefulSet's `replicas` while a scale-down waits for its pods to be
    /// drained (`drain_plan`); `None`: the spec's effective replicas.
    pub chat_replicas: Option<i32>,
    /// The operator's own namespace: its calls to the pods' admin port are let through
    /// the NetworkPolicy.
    pub operator_namespace: Option<String>,
}

/// Key of the admin token in the `NAME-admin` Secret (pods get it as CHAT_ADMIN_TOKEN).
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Key of the managed Redis password in the `NAME-redis-auth` Secret (chat pods get it as
/// CHAT_REDIS_PASSWORD; the Redis pod's readiness probe reads it as a mounted file).
pub const REDIS_PASSWORD_KEY: &str = "password";
/// Key of the managed Redis' config file (`requirepass …`) in the same Secret, so the
/// password never appears in the Redis pod's arguments.
pub const REDIS_CONFIG_KEY: &str = "redis.conf";
/// Where the Redis container mounts that config file and the password.
const REDIS_AUTH_DIR: &str = "/etc/redis-auth";
/// The managed Redis' user and group: a high UID, apart from the host's users (the
/// image's own `redis` user is 999). The entrypoint of the official images runs any
/// non-root UID as it is; /data is writable through `fsGroup` (or an emptyDir).
const REDIS_UID: i64 = 10999;
/// Pod-template annotation carrying `BuildContext::secrets_revision`.
pub const SECRETS_REVISION_ANNOTATION: &str = "chatcluster.dev/secrets-revision";

/// The admin-token Secret of ChatCluster `cluster`.
pub fn admin_secret_name(cluster: &str) -> String {
    format!("{cluster}-admin")
}

/// The managed Redis' password Secret of ChatCluster `cluster`.
pub fn redis_auth_secret_name(cluster: &str) -> String {
    format!("{cluster}-redis-auth")
}

/// The Secrets the operator generates for `cluster` (created once with random values,
/// then kept): the admin token, and the Redis password with a managed Redis.
pub fn generated_secret_names(cluster: &ChatCluster) -> Vec<String> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let mut names = vec![admin_secret_name(name)];
    if cluster.spec.redis.external.is_none() {
        names.push(redis_auth_secret_name(name));
    }
    names
}

/// Generated Secret `secret` of `cluster` holding `value` (random, made by the caller):
/// labelled and owned like every child, so it goes with the ChatCluster.
pub fn generated_secret(
    cluster: &ChatCluster,
    secret: &str,
    value: &str,
) -> Result<Secret, BuildError> {
    let n = names(cluster)?;
    let (component, data) = if secret == redis_auth_secret_name(n.name) {
        let config = format!("requirepass {value}\n");
        (
            "redis",
            BTreeMap::from([
                (REDIS_PASSWORD_KEY.to_owned(), value.to_owned()),
                (REDIS_CONFIG_KEY.to_owned(), config),
            ]),
        )
    } else {
        (
            "chat-server",
            BTreeMap::from([(ADMIN_TOKEN_KEY.to_owned(), value.to_owned())]),
        )
    };
    Ok(Secret {
        metadata: n.meta(secret.to_owned(), component),
        string_data: Some(data),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
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
    pub pdb: Option<PodDisruptionBudget>,
    pub ingress: Option<Ingress>,
    /// Gateway API HTTPRoute (no typed struct in k8s-openapi), as JSON.
    pub http_route: Option<serde_json::Value>,
    pub redis_statefulset: Option<StatefulSet>,
    pub redis_service: Option<Service>,
    /// With `networkPolicy.enabled`: the chat pods' admin port only from the operator's
    /// and the listed namespaces.
    pub network_policy: Option<NetworkPolicy>,
    /// With `networkPolicy.enabled` and a managed Redis: Redis only from the chat pods.
    pub redis_network_policy: Option<NetworkPolicy>,
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
            .filter(|_| ctx.gateway_api)
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
            network_policy::chat_network_policy(&n, &admin)
        }),
        redis_network_policy: (managed && spec.network_policy.enabled)
            .then(|| network_policy::redis_network_policy(&n)),
    })
}

/// Server configuration as `CHAT_*` environment variables.
fn config_map(n: &Names, cluster: &ChatCluster) -> ConfigMap {
    let s = &cluster.spec;
    let data = BTreeMap::from([
        ("CHAT_LISTEN".to_owned(), format!("0.0.0.0:{PUBLIC_PORT}")),
        (
            "CHAT_ADMIN_LISTEN".to_owned(),
            format!("0.0.0.0:{ADMIN_PORT}"),
        ),
        ("CHAT_LOG_FORMAT".to_owned(), "json".to_owned()),
        (
            "CHAT_ALLOW_ANONYMOUS".to_owned(),
            s.auth.allow_anonymous.to_string(),
        ),
        (
            "CHAT_ALLOWED_ORIGINS".to_owned(),
            if s.auth.allowed_origins.is_empty() {
                "*".to_owned()
            } else {
                s.auth.allowed_origins.join(",")
            },
        ),
        (
            "CHAT_MAX_CONNECTIONS".to_owned(),
            s.limits.max_connections_per_pod.to_string(),
        ),
        (
            "CHAT_MAX_FRAME_BYTES".to_owned(),
            s.limits.max_frame_bytes.to_string(),
        ),
        (
            "CHAT_MAX_BODY_BYTES".to_owned(),
            s.limits.max_body_bytes.to_string(),
        ),
        (
            "CHAT_RATE_PER_SEC".to_owned(),
            s.limits.messages_per_second.to_string(),
        ),
        ("CHAT_RATE_BURST".to_owned(), s.limits.burst.to_string()),
        (
            "CHAT_DRAIN_RECONNECT_WINDOW".to_owned(),
            format!("{}s", s.drain.reconnect_window_seconds),
        ),
        (
            "CHAT_DRAIN_DEADLINE".to_owned(),
            format!("{}s", s.drain.deadline_seconds),
        ),
        (
            "CHAT_REDIS_KEY_PREFIX".to_owned(),
            format!("{}.{}", n.namespace, n.name),
        ),
    ]);
    ConfigMap {
        metadata: n.meta(format!("{}-config", n.name), "chat-server"),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A stable 64-bit FNV-1a hash of the configuration, put on the pod template so a
/// configuration change rolls the pods.
fn config_hash(config: &ConfigMap) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in config.data.iter().flatten() {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Required by the "restricted" Pod Security level.
fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// Pod-template annotations: `base` plus the generated Secrets' revision, if known.
fn template_annotations(
    base: Vec<(String, String)>,
    ctx: &BuildContext,
) -> Option<BTreeMap<String, String>> {
    let mut annotations: BTreeMap<String, String> = base.into_iter().collect();
    if let Some(revision) = &ctx.secrets_revision {
        annotations.insert(SECRETS_REVISION_ANNOTATION.to_owned(), revision.clone());
    }
    (!annotations.is_empty()).then_some(annotations)
}

fn chat_statefulset(
    n: &Names,
    cluster: &ChatCluster,
    config: &ConfigMap,
    ctx: &BuildContext,
) -> StatefulSet {
    let s = &cluster.spec;
    let mut env = vec![
        env_field("CHAT_NODE_NAME", "metadata.name"),
        env_field("CHAT_POD_IP", "status.podIP"),
        // Protects /admin/* (drain, status); generated by the operator, never logged.
        env_secret(
            "CHAT_ADMIN_TOKEN",
            &admin_secret_name(n.name),
            ADMIN_TOKEN_KEY,
            false,
        ),
    ];
    match &s.redis.external {
        Some(ext) => env.push(env_secret(
            "CHAT_REDIS_URL",
            &ext.secret_name,
            &ext.url_key,
            false,
        )),
        None => {
            env.push(env_value(
                "CHAT_REDIS_URL",
                format!(
                    "redis://{}.{}.svc:{REDIS_PORT}/",
                    n.redis_name(),
                    n.namespace
                ),
            ));
            env.push(env_secret(
                "CHAT_REDIS_PASSWORD",
                &redis_auth_secret_name(n.name),
                REDIS_PASSWORD_KEY,
                false,
            ));
        }
    }
    if let Some(secret) = &s.auth.jwt_secret_name {
        env.push(env_secret(
            "CHAT_JWT_HS256_SECRET",
            secret,
            "hs256Secret",
            // Required: a missing Secret stops the pod at CreateContainerConfigError,
            // which names the Secret, instead of a crash loop on a config error.
            false,
        ));
    }
    let grace = i64::from(s.drain.pre_stop_seconds)
        + i64::from(s.drain.deadline_seconds)
        + GRACE_MARGIN_SECONDS;
    let container = Container {
        name: "chat-server".to_owned(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.map(|p| p.as_str().to_owned()),
        ports: Some(vec![port("ws", PUBLIC_PORT), port("admin", ADMIN_PORT)]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: format!("{}-config", n.name),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env),
        resources: s.resources.clone(),
        readiness_probe: Some(http_probe("/readyz", 2, 1)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        // The sleep action needs Kubernetes 1.30+; a zero sleep is left out (rejected
        // before 1.33).
        lifecycle: (s.drain.pre_stop_seconds > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::from(s.drain.pre_stop_seconds),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    };
    let mut pod_labels = labels(n.name, "chat-server");
    pod_labels.extend(selector_labels(n.name, "chat-server"));
    StatefulSet {
        metadata: n.meta(n.name.to_owned(), "chat-server"),
        spec: Some(StatefulSetSpec {
            replicas: Some(ctx.chat_replicas.unwrap_or_else(|| s.effective_replicas())),
            service_name: Some(format!("{}-headless", n.name)),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(n.name, "chat-server")),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: template_annotations(
                        vec![
                            (
                                "chatcluster.dev/config-hash".to_owned(),
                                config_hash(config),
                            ),
                            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                            ("prometheus.io/port".to_owned(), ADMIN_PORT.to_string()),
                        ],
                        ctx,
                    ),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(n.name.to_owned()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(grace),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn service_port(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Stable per-pod DNS names for the StatefulSet. Public port only: the admin port is
/// reached on pod IPs (by the operator and Prometheus), never through a Service.
fn headless_service(n: &Names) -> Service {
    Service {
        metadata: n.meta(format!("{}-headless", n.name), "chat-server"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(n.name, "chat-server")),
            ports: Some(vec![service_port("ws", PUBLIC_PORT, "ws")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// What clients and the ingress use: the public port only, never the admin port.
fn client_service(n: &Names) -> Service {
    Service {
        metadata: n.meta(n.name.to_owned(), "chat-server"),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(n.name, "chat-server")),
            ports: Some(vec![service_port("ws", 80, "ws")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pdb(n: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: n.meta(n.name.to_owned(), "chat-server"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(n.name, "chat-server")),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// ingress-nginx Ingress: cookie affinity keeps a client on its pod; long proxy timeouts
/// keep idle WebSockets open.
fn ingress(n: &Names, spec: &crate::crd::IngressSpec) -> Ingress {
    let mut meta = n.meta(n.name.to_owned(), "chat-server");
    meta.annotations = Some(BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/affinity".to_owned(),
            "cookie".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/affinity-mode".to_owned(),
            "persistent".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/session-cookie-name".to_owned(),
            AFFINITY_COOKIE.to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/session-cookie-max-age".to_owned(),
            "86400".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".to_owned(),
            "3600".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".to_owned(),
            "3600".to_owned(),
        ),
    ]));
    Ingress {
        metadata: meta,
        spec: Some(K8sIngressSpec {
            ingress_class_name: Some(spec.class_name.clone()),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: n.name.to_owned(),
                                port: Some(ServiceBackendPort {
                                    number: Some(80),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..K8sIngressSpec::default()
        }),
        ..Ingress::default()
    }
}

/// Gateway API HTTPRoute. Without `sessionPersistence` it uses only standard-channel
/// fields; cookie session persistence is in the experimental channel (which a standard
/// install rejects), so it is opt-in.
fn http_route(n: &Names, spec: &crate::crd::HttpRouteSpec) -> serde_json::Value {
    let meta = n.meta(n.name.to_owned(), "chat-server");
    let mut parent = json!({"name": spec.gateway_name});
    if let Some(ns) = &spec.gateway_namespace {
        parent["namespace"] = json!(ns);
    }
    let mut rule = json!({
        "backendRefs": [{"name": n.name, "port": 80}],
        "timeouts": {"request": "0s"},
    });
    if spec.session_persistence {
        rule["sessionPersistence"] = json!({"sessionName": AFFINITY_COOKIE, "type": "Cookie"});
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {
            "parentRefs": [parent],
            "hostnames": spec.hostnames,
            "rules": [rule],
        },
    })
}

fn redis_statefulset(n: &Names, cluster: &ChatCluster, ctx: &BuildContext) -> StatefulSet {
    let managed = cluster.spec.redis.managed.clone().unwrap_or_default();
    let persistence = managed.persistence;
    // The config file from the Secret holds `requirepass`: the password stays out of the
    // pod's arguments (visible in the API and in `ps`).
    let config_file = format!("{REDIS_AUTH_DIR}/{REDIS_CONFIG_KEY}");
    let args: Vec<String> = [
        config_file.as_str(),
        "--appendonly",
        if persistence { "yes" } else { "no" },
        "--save",
        "",
        "--dir",
        "/data",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let auth_volume = Volume {
        name: "auth".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(redis_auth_secret_name(n.name)),
            items: Some(
                [REDIS_CONFIG_KEY, REDIS_PASSWORD_KEY]
                    .iter()
                    .map(|key| KeyToPath {
                        key: (*key).to_owned(),
                        path: (*key).to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let data_volume = (!persistence).then(|| Volume {
        name: "data".to_owned(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    });
    let claims = persistence.then(|| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_owned()),
                labels: Some(labels(n.name, "redis")),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                storage_class_name: managed.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(managed.storage.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]
    });
    let container = Container {
        name: "redis".to_owned(),
        image: Some(managed.image.clone()),
        args: Some(args),
        ports: Some(vec![port("redis", REDIS_PORT)]),
        // redis-cli takes the password from REDISCLI_AUTH, set for the probe alone from
        // the mounted file: no Secret in the container's environment. Ready on PONG only:
        // redis-cli can exit 0 on an error reply (NOAUTH; LOADING while it reads its AOF).
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    format!(
                        "[ \"$(REDISCLI_AUTH=\"$(cat {REDIS_AUTH_DIR}/{REDIS_PASSWORD_KEY})\" redis-cli ping)\" = PONG ]"
                    ),
                ]),
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        // A Redis that stops accepting connections is restarted.
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".to_owned()),
                ..TCPSocketAction::default()
            }),
            initial_delay_seconds: Some(10),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(
            managed
                .resources
                .clone()
                .unwrap_or_else(default_redis_resources),
        ),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".to_owned(),
                mount_path: "/data".to_owned(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "auth".to_owned(),
                mount_path: REDIS_AUTH_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    };
    StatefulSet {
        metadata: n.meta(n.redis_name(), "redis"),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(n.redis_name()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(n.name, "redis")),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(n.name, "redis")),
                    annotations: template_annotations(Vec::new(), ctx),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(REDIS_UID),
                        run_as_group: Some(REDIS_UID),
                        fs_group: Some(REDIS_UID),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(data_volume.into_iter().chain([auth_volume]).collect()),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Resources of a managed Redis without `resources`: requests enough to be scheduled
/// honestly, and a memory limit (4x the request) so a runaway Redis is restarted (with
/// persistence it replays its append-only file) instead of pressing on the node's other
/// pods. No CPU limit: throttling a single-threaded Redis stalls every chat pod, and the
/// request already gives it its share under contention.
fn default_redis_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("128Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn redis_service(n: &Names) -> Service {
    Service {
        metadata: n.meta(n.redis_name(), "redis"),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(n.name, "redis")),
            ports: Some(vec![service_port("redis", REDIS_PORT, "redis")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
