//! The `ChatCluster` custom resource (group `chatcluster.dev`, version `v1alpha1`).
//!
//! Every field has a default, so a manifest with only a name runs a working cluster.
//! CEL rules (`x-kubernetes-validations`) make the API server reject impossible specs
//! with a message that says what to fix; `crds/chatcluster.yaml` is generated from these
//! types by the `crdgen` binary.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Key of the HS256 client-JWT key in `auth.jwtSecretName`.
pub const JWT_KEY: &str = "hs256Secret";
/// Key of the PEM public key in `auth.publicKeySecretName`.
pub const JWT_PUBLIC_KEY: &str = "publicKey";
/// Key of the join hook's HMAC key in `auth.joinHook.secretName`.
pub const JOIN_HOOK_SECRET_KEY: &str = "hookSecret";
/// Key of the events' HMAC key in `events.secretName`.
pub const EVENTS_SECRET_KEY: &str = "secret";
/// Key of the server API's keys (one per line) in `api.keysSecretName` and in the
/// generated `NAME-api-keys` Secret.
pub const API_KEYS_KEY: &str = "keys";

/// Desired state of a ChatCluster.
// clippy reads `type_ = "integer"` in two separate `printcolumn(...)` lists as a
// duplicated attribute; they are distinct columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chatcluster.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    namespaced,
    shortname = "chat",
    status = "ChatClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.connections"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// The chat-server refuses a webhook with a Redis Cluster: each event is recorded by the
// script that stores its message, and the events streams cannot share the room's hash
// slot. Refused here, so the pods never start into that error.
#[x_kube(validation = Rule::new("!has(self.events) || !has(self.redis) || !has(self.redis.external) || !has(self.redis.external.cluster) || !self.redis.external.cluster")
    .message("events need a single Redis instance, not a Redis Cluster (the chat-server records each event together with its message); remove spec.events, or set spec.redis.external.cluster: false with a single-instance Redis URL (or use the managed Redis)"))]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Number of chat-server pods. With `autoscaling` set, the autoscaler writes it, and
    /// the number that runs is this value clamped to `[autoscaling.minReplicas,
    /// autoscaling.maxReplicas]` (as an HPA clamps), so `kubectl scale` never fails and a
    /// value outside the range is reported in the Ready condition's message.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// chat-server container image.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("image must not be empty"))]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory for each chat-server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Redis backplane: managed by the operator (default) or an existing one.
    #[serde(default)]
    pub redis: RedisSpec,
    /// How clients reach the cluster. Without it only the in-cluster Service exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ExposeSpec>,
    /// Graceful drain before a pod goes away.
    #[serde(default)]
    pub drain: DrainSpec,
    /// Autoscaling: the operator sets `replicas` (through /scale) from the cluster's open
    /// connections, read from Prometheus or from the pods. See docs/autoscaling.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Per-connection and per-pod limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Client authentication.
    #[serde(default)]
    pub auth: AuthSpec,
    /// NetworkPolicies for the admin port, the API port and the managed Redis.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Monitoring objects (a PodMonitor) for a Prometheus-operator setup.
    #[serde(default, skip_serializing_if = "is_default")]
    pub monitoring: MonitoringSpec,
    /// The server API (`/api/v1/...` on port 8081): the application's own way in
    /// (publish, direct messages, disconnect, presence, history), authenticated by API
    /// keys. Off by default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub api: ApiSpec,
    /// Events to the application's backend: room messages, direct messages to offline
    /// users and users' first and last sessions, POSTed to `webhookUrl` and signed with
    /// the key in `secretName`, delivered at least once. Unset: no events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsSpec>,
}

/// `spec.events`: where the chat pods POST events for the application and how.
///
/// Every field becomes a `CHAT_WEBHOOK_*` variable of the pods (the signing key through
/// a Secret reference, never the ConfigMap); unset optional fields keep the server's
/// defaults. See docs/operator.md, "Events to the application".
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// The server refuses a longest wait between attempts above the time it keeps trying.
#[x_kube(validation = Rule::new("(has(self.retryMaxSeconds) ? self.retryMaxSeconds : 30) <= (has(self.giveUpAfterSeconds) ? self.giveUpAfterSeconds : 3600)")
    .message("events.retryMaxSeconds (default 30) must be at most events.giveUpAfterSeconds (default 3600)"))]
#[serde(rename_all = "camelCase")]
pub struct EventsSpec {
    /// `http://` or `https://` URL the events are POSTed to, e.g.
    /// `http://app.default.svc:8000/chat/events` (`CHAT_WEBHOOK_URL`).
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(crate::urls::CEL_HTTP_URL_WITH_QUERY)
        .message("events.webhookUrl must be an http:// or https:// URL with a host and no spaces, user:password@ or fragment (#), at most 2048 characters, e.g. http://app.default.svc:8000/chat/events"))]
    pub webhook_url: String,
    /// Secret in the ChatCluster's namespace whose key `secret` (at least 32 bytes) is
    /// the HMAC-SHA256 key of every event's `X-Chat-Signature`, so the application can
    /// tell the pods' calls from anyone else's (`CHAT_WEBHOOK_SECRET`). Read at start:
    /// after changing it, restart the pods.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("events.secretName must be a Secret name (lowercase letters, digits, '-' and '.')"))]
    pub secret_name: String,
    /// Room patterns whose messages are events: A-Z a-z 0-9 `_ - . : @` and `*` for any
    /// run of characters, e.g. `support.*` (`CHAT_WEBHOOK_ROOMS`). Empty: no message
    /// events; offline direct messages and users' connects and disconnects are always
    /// sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9_.:@*-]+$'))")
        .message("events.rooms: each pattern must be 1 to 64 of A-Z a-z 0-9 _ - . : @ and * (any run of characters), e.g. support.*"))]
    pub rooms: Vec<String>,
    /// How long one POST may take (`CHAT_WEBHOOK_TIMEOUT`; unset: the server's 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub timeout_milliseconds: Option<i32>,
    /// Longest wait between two attempts at one event; they start 1 s apart and double
    /// (`CHAT_WEBHOOK_RETRY_MAX`; unset: the server's 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub retry_max_seconds: Option<i32>,
    /// After failing this long an event goes to the dead-letter list
    /// (`CHAT_WEBHOOK_GIVE_UP_AFTER`; unset: the server's 3600 s; at most 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub give_up_after_seconds: Option<i32>,
    /// Most events waiting per shard; past it the oldest undelivered ones are dropped
    /// (`CHAT_WEBHOOK_MAX_BACKLOG`; unset: the server's 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_backlog: Option<i32>,
    /// Streams the events are spread over by room or user, each delivered in order by
    /// one pod at a time (`CHAT_WEBHOOK_SHARDS`; unset: the server's 4). Lowering it
    /// strands the events still waiting in the streams above the new count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub shards: Option<i32>,
}

/// `spec.api`: the chat pods' server API port, its keys and who may reach it.
///
/// The keys live in a Secret mounted into the pods as a file that the server re-reads
/// every 10 s, so rotating a key (add the new line, move the clients, remove the old
/// line) needs no restart. See docs/operator.md, "The server API".
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Serve the API: port `api` (8081) on the chat pods, the Service `NAME-api` and,
    /// with `networkPolicy.enabled`, a rule that lets only this namespace and
    /// `fromNamespaces` reach it.
    #[serde(default)]
    pub enabled: bool,
    /// Secret in the ChatCluster's namespace whose key `keys` holds the API keys, one
    /// per line (blank lines and lines starting with `#` are ignored; each key 16 to 256
    /// printable ASCII characters, no spaces or commas). Unset: the operator generates
    /// `NAME-api-keys` with one random key, once, and never overwrites it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("api.keysSecretName must be a Secret name (lowercase letters, digits, '-' and '.')"))]
    pub keys_secret_name: Option<String>,
    /// More namespaces (by name) whose pods may reach the API port when the operator's
    /// NetworkPolicies are on, e.g. where your application's backend runs. The
    /// ChatCluster's own namespace is always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 63)))]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("api.fromNamespaces: each entry must be a namespace name (lowercase letters, digits and '-', starting and ending with a letter or digit)"))]
    pub from_namespaces: Vec<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// NetworkPolicies the operator creates. They take effect only where the network plugin
/// enforces NetworkPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create them: the chat pods' admin port (metrics, /admin/*) reachable only from the
    /// operator's namespace and `adminFromNamespaces`; with `api.enabled`, the API port
    /// only from this namespace and `api.fromNamespaces`; the managed Redis only from
    /// this cluster's chat pods. The public port stays open.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// More namespaces (by name) whose pods may reach the admin port, e.g. where your
    /// Prometheus runs, so it can scrape `/metrics`.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(max = 63)))]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("networkPolicy.adminFromNamespaces: each entry must be a namespace name (lowercase letters, digits and '-', starting and ending with a letter or digit)"))]
    pub admin_from_namespaces: Vec<String>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            admin_from_namespaces: Vec::new(),
        }
    }
}

impl ChatClusterSpec {
    /// The chat-server pods that should run: `replicas`, clamped to the autoscaling
    /// bounds when `autoscaling` is set (the way an HPA clamps a manual scale).
    pub fn effective_replicas(&self) -> i32 {
        match &self.autoscaling {
            // max(min) rather than clamp(): clamp panics if min > max, which only the CRD
            // rule (and validate) rule out.
            Some(a) => self.replicas.min(a.max_replicas).max(a.min_replicas),
            None => self.replicas,
        }
    }

    /// Why `effective_replicas` differs from `replicas`, and what to do about it.
    pub fn replicas_clamp_note(&self) -> Option<String> {
        let a = self.autoscaling.as_ref()?;
        let running = self.effective_replicas();
        (running != self.replicas).then(|| {
            let (bound, value) = if self.replicas > a.max_replicas {
                ("maxReplicas", a.max_replicas)
            } else {
                ("minReplicas", a.min_replicas)
            };
            format!(
                "spec.replicas {} is outside autoscaling [{}, {}], so {running} run: change autoscaling.{bound} ({value}) to allow it, or remove spec.autoscaling to set replicas by hand",
                self.replicas, a.min_replicas, a.max_replicas
            )
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Exactly one of `managed` and `external`; neither means a managed Redis with defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!(has(self.managed) && has(self.external))")
    .message("redis: set either redis.managed or redis.external, not both"))]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

/// A Redis StatefulSet run by the operator. Its volume settings cannot change after
/// creation: StatefulSet volume claim templates are immutable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "self.storage == oldSelf.storage && self.persistence == oldSelf.persistence && (has(self.storageClassName) ? (has(oldSelf.storageClassName) && self.storageClassName == oldSelf.storageClassName) : !has(oldSelf.storageClassName))"
).message("redis.managed storage, storageClassName and persistence cannot be changed after creation (the Redis volume claim is immutable); create a new ChatCluster to change them"))]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    /// Redis container image (Redis 7 or later).
    #[serde(default = "default_redis_image")]
    pub image: String,
    /// Append-only persistence on a PersistentVolumeClaim of `storage`.
    #[serde(default = "default_true")]
    pub persistence: bool,
    /// Size of the Redis volume, e.g. `1Gi`.
    #[serde(default = "default_redis_storage")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(Ki|Mi|Gi|Ti)$')")
        .message("redis.managed.storage must be a size such as 512Mi or 1Gi"))]
    pub storage: String,
    /// Storage class of the volume (cluster default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ManagedRedis {
    fn default() -> Self {
        ManagedRedis {
            image: default_redis_image(),
            persistence: true,
            storage: default_redis_storage(),
            storage_class_name: None,
            resources: None,
        }
    }
}

/// An existing Redis; its URL (`redis://` or `rediss://`, with the password) is read from
/// a Secret in the ChatCluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Secret in the ChatCluster's namespace holding the Redis URL (key `urlKey`).
    #[x_kube(validation = Rule::new("self.size() > 0").message("redis.external.secretName must not be empty"))]
    pub secret_name: String,
    /// Key of the URL in the Secret.
    #[serde(default = "default_url_key")]
    pub url_key: String,
    /// The Redis is a Redis Cluster (7.0 or later): the Secret's value is one or more
    /// seed URLs separated by commas, keys are hash-tagged per room and pub/sub is
    /// sharded. A value with several URLs needs this set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
}

/// Exposure through an ingress-nginx Ingress and/or a Gateway API HTTPRoute.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.ingress) || has(self.httpRoute)")
    .message("expose: set expose.ingress, expose.httpRoute or both (or remove expose)"))]
#[serde(rename_all = "camelCase")]
pub struct ExposeSpec {
    /// An Ingress for the clients, with the sticky cookie `CHATNODE` (ingress-nginx
    /// annotations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// A Gateway API HTTPRoute for the clients, attached to an existing Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<HttpRouteSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Public host name, e.g. chat.example.com.
    #[x_kube(validation = Rule::new("self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\\\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$') && self.size() <= 253")
        .message("expose.ingress.host must be a DNS name such as chat.example.com (lowercase letters, digits, '-' and '.')"))]
    pub host: String,
    /// IngressClass name.
    #[serde(default = "default_ingress_class")]
    pub class_name: String,
    /// Secret with the TLS certificate for `host` (no TLS when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateway to attach to.
    pub gateway_name: String,
    /// Namespace of the Gateway (the ChatCluster's when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_namespace: Option<String>,
    /// Host names the route matches (any when empty).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Keep each client on its pod with a cookie (`CHATNODE`, as the Ingress does) through
    /// the route's `sessionPersistence`. That field is in Gateway API's experimental
    /// channel: set this only where the experimental HTTPRoute CRD is installed (a
    /// standard-channel install rejects the route, and the ChatCluster reports it);
    /// elsewhere configure stickiness in the Gateway implementation's own policy.
    #[serde(default)]
    pub session_persistence: bool,
}

/// Drain timing. The pod's terminationGracePeriodSeconds is derived from it:
/// preStop + deadline + 5 s margin.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.reconnectWindowSeconds < self.deadlineSeconds")
    .message("drain.reconnectWindowSeconds must be shorter than drain.deadlineSeconds so clients can reconnect before the deadline"))]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Reconnect notices are spread evenly over this window.
    #[serde(default = "default_reconnect_window")]
    #[schemars(range(min = 1, max = 3600))]
    pub reconnect_window_seconds: i32,
    /// Connections still open after this are closed.
    #[serde(default = "default_drain_deadline")]
    #[schemars(range(min = 2, max = 3600))]
    pub deadline_seconds: i32,
    /// preStop sleep so endpoint removal propagates before the drain starts.
    #[serde(default = "default_prestop")]
    #[schemars(range(min = 0, max = 120))]
    pub pre_stop_seconds: i32,
    /// Reconnects per second over the whole cluster while the operator drains pods before
    /// a scale-down: it drains fewer pods at once, or gives each a longer window (up to
    /// a second before the deadline), to stay under it, aiming at 85 % of it where the
    /// deadline leaves room.
    #[serde(default = "default_max_reconnects_per_second")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_reconnects_per_second: i32,
}

impl Default for DrainSpec {
    fn default() -> Self {
        DrainSpec {
            reconnect_window_seconds: default_reconnect_window(),
            deadline_seconds: default_drain_deadline(),
            pre_stop_seconds: default_prestop(),
            max_reconnects_per_second: default_max_reconnects_per_second(),
        }
    }
}

/// Autoscaling bounds and target. `minReplicas`/`maxReplicas` also clamp `spec.replicas`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.engine) || self.engine != 'keda' || has(self.prometheusUrl)")
    .message("autoscaling.engine keda needs autoscaling.prometheusUrl: KEDA's Prometheus trigger queries it"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Who scales: `builtin` (the operator's own loop, default) or `keda` (the operator
    /// creates a KEDA ScaledObject with an equivalent Prometheus trigger and KEDA's HPA
    /// writes `replicas`). Either way every scale-down is drained by the operator.
    #[serde(default)]
    pub engine: AutoscalingEngine,
    /// Fewest pods the autoscaler runs.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most pods the autoscaler runs.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Connections per pod the autoscaler aims for (10 % tolerance).
    #[serde(default = "default_target_connections")]
    #[schemars(range(min = 1))]
    pub target_connections_per_pod: i32,
    /// Prometheus base URL, e.g. http://prometheus.monitoring:9090. Unset: the operator
    /// reads `chat_connections` from each ready pod's /metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(crate::urls::CEL_HTTP_BASE_URL)
        .message("autoscaling.prometheusUrl must be an http:// or https:// base URL with a host and no user:password@, query (?) or fragment (#), e.g. http://prometheus-operated.monitoring:9090"))]
    pub prometheus_url: Option<String>,
    /// PromQL for the cluster's total connections (one series or a scalar); `{{namespace}}`
    /// and `{{name}}` are replaced. Default: `sum(chat_connections{namespace="NS",
    /// pod=~"NAME-[0-9]+"})`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A scale-down goes only to the highest recommendation seen in this window.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
}

/// Which engine drives `spec.autoscaling`.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingEngine {
    #[default]
    Builtin,
    Keda,
}

/// Monitoring objects the operator creates for this cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a Prometheus-operator `PodMonitor` that scrapes the chat pods' `/metrics`
    /// (admin port). Needs `monitoring.coreos.com/v1` PodMonitors to be served; if they
    /// are not, the ChatCluster is Degraded and says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_monitor: Option<PodMonitorSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    /// Extra labels on the PodMonitor, e.g. `release: prometheus`, so your Prometheus'
    /// `podMonitorSelector` picks it up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.size() <= 16")
        .message("monitoring.podMonitor.labels: at most 16 labels"))]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval in seconds.
    #[serde(default = "default_scrape_interval")]
    #[schemars(range(min = 5, max = 300))]
    pub interval_seconds: i32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.maxBodyBytes + 256 <= self.maxFrameBytes")
    .message("limits.maxBodyBytes must be at most limits.maxFrameBytes - 256"))]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Connections one pod accepts; past it new ones get 503 (`CHAT_MAX_CONNECTIONS`).
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 19000))]
    pub max_connections_per_pod: i32,
    /// Largest WebSocket frame a client may send, in bytes; a larger one closes the
    /// connection (`CHAT_MAX_FRAME_BYTES`).
    #[serde(default = "default_max_frame")]
    #[schemars(range(min = 256, max = 1048576))]
    pub max_frame_bytes: i32,
    /// Longest message body, in bytes (`CHAT_MAX_BODY_BYTES`).
    #[serde(default = "default_max_body")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_body_bytes: i32,
    /// Frames per second one connection may send, sustained (`CHAT_RATE_PER_SEC`).
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 100000))]
    pub messages_per_second: i32,
    /// Frames one connection may send at once above its rate (`CHAT_RATE_BURST`).
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: i32,
    /// Direct messages per second one user may send through one pod (fractions allowed,
    /// e.g. 0.5), so a single account cannot flood other users' inboxes.
    #[serde(default = "default_dm_per_second")]
    #[schemars(range(min = 0.01, max = 10000))]
    // The API server compares a whole-number value with `minimum` truncated to an
    // integer (0.01 becomes 0), so `0` would pass the bound alone.
    #[x_kube(validation = Rule::new("self >= 0.01")
        .message("limits.dmPerSecond must be at least 0.01; to stop direct messages set auth.dmPolicy: nobody"))]
    pub dm_per_second: f64,
    /// New connections per second from one client address (an IPv6 /64), checked on
    /// each pod before its own rate, so a flood from one address spends its own budget
    /// and not everyone's (burst: 20). 0 turns it off. Behind an ingress or gateway,
    /// list its addresses in `trustedProxies`, or every client counts as the proxy.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub connections_per_second_per_source: i32,
    /// Address ranges (CIDR, or single addresses) of the proxies in front of the pods,
    /// e.g. the ingress controller's pods: only from these is `X-Forwarded-For` believed
    /// to name the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 49)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c) || isIP(c))")
        .message("limits.trustedProxies: each entry must be an address range such as 10.0.0.0/8 or fd00::/8, or a single address"))]
    pub trusted_proxies: Vec<String>,
    /// Most rooms (with history or members) over the whole cluster; idle rooms are
    /// forgotten first, and a new room is refused (`room_limit`) when every room has
    /// members (`CHAT_MAX_ROOMS`; the server's default, 10000, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The budget sweeper reads the whole room index every 2 s: keep it in the 100,000s.
    #[schemars(range(min = 1, max = 100000))]
    pub max_rooms: Option<i32>,
    /// History bytes kept over all rooms in Redis; the least recently active rooms'
    /// oldest messages go first (`CHAT_HISTORY_MAX_BYTES`). Unset: half of the managed
    /// Redis' `maxmemory`, or the server's default (256 MiB) with an external Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub history_max_bytes: Option<i64>,
    /// Most sessions one user may have open over the whole cluster; one more is
    /// refused with `too_many_sessions` and close code 4429. 0: no cap
    /// (`CHAT_MAX_SESSIONS_PER_USER`; the server's default, 20, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_sessions_per_user: Option<i32>,
    /// Rooms with more members than this get presence as a member count once a second
    /// instead of a frame per arrival and departure; 0: always per change
    /// (`CHAT_PRESENCE_MAX_MEMBERS`; the server's default, 1000, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000000))]
    pub presence_max_members: Option<i32>,
    /// Most rooms one user may create (by joining a room nobody had) per hour over the
    /// whole cluster; more are refused with `room_limit`. 0: no cap
    /// (`CHAT_MAX_NEW_ROOMS_PER_USER_PER_HOUR`; the server's default, 1000, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000000))]
    pub max_new_rooms_per_user_per_hour: Option<i32>,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            max_connections_per_pod: default_max_connections(),
            max_frame_bytes: default_max_frame(),
            max_body_bytes: default_max_body(),
            messages_per_second: default_rate(),
            burst: default_burst(),
            dm_per_second: default_dm_per_second(),
            connections_per_second_per_source: 0,
            trusted_proxies: Vec::new(),
            max_rooms: None,
            history_max_bytes: None,
            max_sessions_per_user: None,
            presence_max_members: None,
            max_new_rooms_per_user_per_hour: None,
        }
    }
}

/// Client authentication: where tokens are checked against, which rooms exist and who
/// may join them, direct-message policy. docs/operator-auth.md describes each field,
/// the environment variable it becomes and its rules.
///
/// A bare manifest accepts anonymous users so that it works at once. Configuring any
/// token key (`jwtSecretName`, `publicKeySecretName`, `jwksUrl`) turns anonymous users
/// off unless `allowAnonymous: true` says otherwise, so adding a key never leaves guests
/// in silently.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.allowAnonymous) || self.allowAnonymous || has(self.jwtSecretName) || has(self.publicKeySecretName) || has(self.jwksUrl)")
    .message("auth: allowAnonymous: false leaves no way in; set auth.jwtSecretName, auth.publicKeySecretName or auth.jwksUrl (or remove allowAnonymous)"))]
#[x_kube(validation = Rule::new("!(has(self.issuer) || has(self.audience)) || has(self.jwtSecretName) || has(self.publicKeySecretName) || has(self.jwksUrl)")
    .message("auth: issuer and audience are checked in tokens, and no token key is set; set auth.jwtSecretName, auth.publicKeySecretName or auth.jwksUrl, or remove issuer and audience"))]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Accept anonymous clients (`?user=NAME`). Unset: `true` when no token key is set,
    /// `false` once one is. `true` together with a key gives guests ids in their own
    /// namespace (`~NAME`), which no token's `sub` can take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Secret with key `hs256Secret` (at least 32 bytes): the HS256 key of client JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("auth.jwtSecretName must be a Secret name (lowercase letters, digits, '-' and '.')"))]
    pub jwt_secret_name: Option<String>,
    /// Secret with key `publicKey`: a PEM public key (RSA for RS256, EC P-256 for ES256,
    /// Ed25519 for EdDSA) that client JWTs are verified with. Mounted into the pods as a
    /// file; only the public key, never the private one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("auth.publicKeySecretName must be a Secret name (lowercase letters, digits, '-' and '.')"))]
    pub public_key_secret_name: Option<String>,
    /// HTTPS URL of a JSON Web Key Set the pods fetch token keys from (Keycloak, Auth0,
    /// Cognito, Dex...), e.g. `https://auth.example.com/realms/chat/protocol/openid-connect/certs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(crate::urls::CEL_HTTPS_BASE_URL)
        .message("auth.jwksUrl must be an https:// URL with a host and no user:password@, query (?) or fragment (#), e.g. https://auth.example.com/realms/chat/protocol/openid-connect/certs"))]
    pub jwks_url: Option<String>,
    /// Required `iss` of client tokens. Set it (and `audience`) whenever a key is set, so
    /// a token the same issuer made for another application is not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^[!-~]+$')")
        .message("auth.issuer must be the tokens' exact iss: printable ASCII without spaces, e.g. https://auth.example.com/realms/chat"))]
    pub issuer: Option<String>,
    /// Required `aud` of client tokens (see `issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^[!-~]+$')")
        .message("auth.audience must be the tokens' exact aud: printable ASCII without spaces, e.g. chat"))]
    pub audience: Option<String>,
    /// Browser origins allowed to connect (any when empty).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Room rules by name pattern, first match wins; with any rule set, a room no rule
    /// matches is refused. Empty: every room is public (the server's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rooms: Vec<RoomRule>,
    /// Ask the application's backend whether a user may join a `grant` room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_hook: Option<JoinHookSpec>,
    /// Who may send a direct message to whom: `anyone` (the server's default),
    /// `sharedRoom` (only users who share a room) or `nobody`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_policy: Option<DmPolicy>,
}

impl AuthSpec {
    /// Whether a token key of any kind is configured.
    pub fn has_token_key(&self) -> bool {
        self.jwt_secret_name.is_some()
            || self.public_key_secret_name.is_some()
            || self.jwks_url.is_some()
    }

    /// Whether anonymous users are accepted: as set, or else only while no key is.
    pub fn effective_allow_anonymous(&self) -> bool {
        self.allow_anonymous.unwrap_or(!self.has_token_key())
    }
}

/// One room rule (`CHAT_ROOM_RULES` entry).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.pattern.matches('^([A-Za-z0-9_.:@*-]|[{]user[}])+$')")
    .message("auth.rooms: pattern must be 1 to 64 of A-Z a-z 0-9 _ - . : @ and * (any run of characters), plus {user} in access: user rules"))]
#[x_kube(validation = Rule::new("self.access != 'user' || self.pattern.matches('^[^{]*[{]user[}][^{]*$')")
    .message("auth.rooms: a rule with access: user needs {user} exactly once in its pattern, e.g. inbox.{user}"))]
#[x_kube(validation = Rule::new("self.access != 'user' || !self.pattern.contains('*')")
    .message("auth.rooms: a rule with access: user must not hold *: the user it names would be ambiguous; write e.g. inbox.{user}"))]
#[x_kube(validation = Rule::new("self.access == 'user' || !self.pattern.contains('{')")
    .message("auth.rooms: {user} is only for rules with access: user; remove it from the pattern or set access: user"))]
#[serde(rename_all = "camelCase")]
pub struct RoomRule {
    /// Room names this rule covers: letters, digits, `_ - . : @`, `*` for any run of
    /// characters and, in `user` rules, `{user}` for the user's own id.
    #[schemars(length(min = 1, max = 64))]
    pub pattern: String,
    /// `public` (anyone let in; anonymous users too unless `anonymous: false`),
    /// `grant` (needs a grant from the application: room patterns in the token, a room
    /// token or the join hook), `user` (only the user whose id fills `{user}`).
    pub access: RoomAccess,
    /// Members may send messages.
    #[serde(default = "default_true")]
    pub publish: bool,
    /// Members see who joins and leaves.
    #[serde(default = "default_true")]
    pub presence: bool,
    /// Joining replays history.
    #[serde(default = "default_true")]
    pub history: bool,
    /// Anonymous users may join (public rooms only).
    #[serde(default = "default_true")]
    pub anonymous: bool,
}

/// Who may join the rooms of a [`RoomRule`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoomAccess {
    Public,
    Grant,
    User,
}

impl RoomAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomAccess::Public => "public",
            RoomAccess::Grant => "grant",
            RoomAccess::User => "user",
        }
    }
}

/// The application's join hook: the pods ask it whether a user may join a `grant` room
/// (each call signed with HMAC-SHA256 under the `secretName` key) and wait for its answer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JoinHookSpec {
    /// `http://` or `https://` URL of the hook, e.g. `http://app.default.svc/chat/join`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(crate::urls::CEL_HTTP_URL_WITH_QUERY)
        .message("auth.joinHook.url must be an http:// or https:// URL with a host and no user:password@ or fragment (#), e.g. http://app.default.svc/chat/join"))]
    pub url: String,
    /// Secret with key `hookSecret` (at least 32 bytes): the HMAC key the pods sign every hook
    /// calls with, so the application can tell them from anyone else.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("auth.joinHook.secretName must be a Secret name (lowercase letters, digits, '-' and '.')"))]
    pub secret_name: String,
    /// How long a join waits for the hook's answer (unset: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 30000))]
    pub timeout_milliseconds: Option<i32>,
    /// When the hook fails or times out: `false` refuses the join, `true` lets it
    /// through. Fail open only for rooms where an unauthorized member does no harm.
    #[serde(default)]
    pub fail_open: bool,
    /// Hook calls in flight at once per pod; a join past it is refused with
    /// `unavailable`, never let through (unset: the server's default, 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: Option<i32>,
    /// How long a pod keeps the hook's answer for one user and room; 0 keeps none
    /// (unset: the server's default, 10 s). A withdrawn grant shows at the user's next
    /// join or token refresh after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub cache_ttl_seconds: Option<i32>,
}

/// `auth.dmPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DmPolicy {
    Anyone,
    SharedRoom,
    Nobody,
}

impl DmPolicy {
    /// The value of `CHAT_DM_POLICY`.
    pub fn env_value(self) -> &'static str {
        match self {
            DmPolicy::Anyone => "anyone",
            DmPolicy::SharedRoom => "shared_room",
            DmPolicy::Nobody => "nobody",
        }
    }
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// chat-server pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// chat-server pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Open client connections over all pods (from their metrics).
    #[serde(default)]
    pub connections: i64,
    /// The replica count the autoscaler decided last (only with `spec.autoscaling`).
    /// Serialized as null when unset, so the status merge patch removes a stale value.
    #[serde(default)]
    pub desired_replicas: Option<i32>,
    /// When the autoscaler last changed `spec.replicas`.
    #[serde(default)]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The pods the operator is draining before a scale-down (unset otherwise).
    /// Serialized as null when unset, so the status merge patch removes a finished list.
    #[serde(default)]
    pub draining: Option<Vec<DrainingPod>>,
    /// Label selector of the chat-server pods (for /scale, HPA and KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Ready`, `RedisReady`, `Progressing`, `Degraded`, `Draining` and, with
    /// `spec.autoscaling`, `ScalingActive`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A pod above the desired count, drained before the StatefulSet lets it go.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainingPod {
    /// The pod's name.
    pub pod: String,
    /// `Waiting` (for the reconnect budget), `Draining`, `Drained`, `NotAnswering`
    /// (its admin port fails; retried a few times) or `NotDrained` (let go: SIGTERM
    /// drains it).
    pub state: String,
    /// Connections still on the pod.
    pub connections: i64,
    /// The reconnect window the operator gave it (0 while waiting).
    pub reconnect_window_seconds: i64,
}

fn default_replicas() -> i32 {
    3
}
fn default_image() -> String {
    "ghcr.io/chatcluster/chat-server:0.1.0".into()
}
fn default_redis_image() -> String {
    "redis:7.2-alpine".into()
}
fn default_redis_storage() -> String {
    "1Gi".into()
}
fn default_url_key() -> String {
    "url".into()
}
fn default_ingress_class() -> String {
    "nginx".into()
}
fn default_true() -> bool {
    true
}
fn default_reconnect_window() -> i32 {
    10
}
fn default_drain_deadline() -> i32 {
    25
}
fn default_prestop() -> i32 {
    5
}
fn default_max_reconnects_per_second() -> i32 {
    200
}
fn default_min_replicas() -> i32 {
    1
}
fn default_target_connections() -> i32 {
    5000
}
fn default_scrape_interval() -> i32 {
    15
}
fn default_stabilization() -> i32 {
    300
}
fn default_max_connections() -> i32 {
    15000
}
fn default_max_frame() -> i32 {
    16384
}
fn default_max_body() -> i32 {
    4096
}
fn default_rate() -> i32 {
    20
}
fn default_burst() -> i32 {
    40
}
fn default_dm_per_second() -> f64 {
    5.0
}

/// The ChatCluster CRD. Unlike the derived one, `spec` is optional with default `{}`, so
/// the API server accepts a manifest with only a name and fills in every default.
pub fn crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    let mut v = serde_json::to_value(ChatCluster::crd())?;
    if let Some(versions) = v["spec"]["versions"].as_array_mut() {
        for version in versions {
            let root = &mut version["schema"]["openAPIV3Schema"];
            if let Some(required) = root["required"].as_array_mut() {
                required.retain(|r| r != "spec");
            }
            if root["required"].as_array().is_some_and(|r| r.is_empty()) {
                if let Some(obj) = root.as_object_mut() {
                    obj.remove("required");
                }
            }
            root["properties"]["spec"]["default"] = serde_json::json!({});
        }
    }
    serde_json::from_value(v)
}

/// The CRD as YAML, exactly as `crdgen` writes it to crds/chatcluster.yaml.
pub fn crd_yaml() -> Result<String, Box<dyn std::error::Error>> {
    let yaml = serde_yaml::to_string(&crd()?)?;
    Ok(format!(
        "# Generated by `cargo run -p chatcluster-operator --bin crdgen`; do not edit.\n{yaml}"
    ))
}

/// Parses a ChatCluster manifest (YAML) the way the API server admits it: a missing
/// `spec` becomes `{}` and every field default applies.
pub fn parse_manifest(yaml: &str) -> Result<ChatCluster, serde_yaml::Error> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(yaml)?;
    if doc.get("spec").is_none() {
        doc["spec"] = serde_yaml::Value::Mapping(Default::default());
    }
    serde_yaml::from_value(doc)
}
