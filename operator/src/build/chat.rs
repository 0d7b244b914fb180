//! The chat-server workload: its configuration, StatefulSet and PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, EnvFromSource, Lifecycle, LifecycleHandler,
    PodSecurityContext, PodSpec, PodTemplateSpec, SleepAction,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::*;
use super::*;
use crate::crd::{
    ApiSpec, AuthSpec, ChatCluster, EventsSpec, RoomRule, API_KEYS_KEY, EVENTS_SECRET_KEY,
    JOIN_HOOK_SECRET_KEY, JWT_KEY, JWT_PUBLIC_KEY,
};

/// Server configuration as `CHAT_*` environment variables.
pub(super) fn config_map(n: &Names, cluster: &ChatCluster) -> ConfigMap {
    let s = &cluster.spec;
    let mut data = BTreeMap::from([
        ("CHAT_LISTEN".to_owned(), format!("0.0.0.0:{PUBLIC_PORT}")),
        (
            "CHAT_ADMIN_LISTEN".to_owned(),
            format!("0.0.0.0:{ADMIN_PORT}"),
        ),
        ("CHAT_LOG_FORMAT".to_owned(), "json".to_owned()),
        (
            "CHAT_ALLOW_ANONYMOUS".to_owned(),
            s.auth.effective_allow_anonymous().to_string(),
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
            "CHAT_DM_RATE_PER_SEC".to_owned(),
            s.limits.dm_per_second.to_string(),
        ),
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
    // Only when set, so clusters that do not use them keep their configuration hash
    // (and their pods) across an operator upgrade.
    if s.limits.connections_per_second_per_source > 0 {
        data.insert(
            "CHAT_ACCEPT_RATE_PER_SOURCE".to_owned(),
            s.limits.connections_per_second_per_source.to_string(),
        );
    }
    if !s.limits.trusted_proxies.is_empty() {
        data.insert(
            "CHAT_TRUSTED_PROXIES".to_owned(),
            s.limits.trusted_proxies.join(","),
        );
    }
    let history_max_bytes = s
        .limits
        .history_max_bytes
        .map(|b| b as u64)
        .or_else(|| super::redis::managed_redis_memory(cluster).map(|m| m.history_max_bytes));
    if let Some(bytes) = history_max_bytes {
        data.insert("CHAT_HISTORY_MAX_BYTES".to_owned(), bytes.to_string());
    }
    if let Some(rooms) = s.limits.max_rooms {
        data.insert("CHAT_MAX_ROOMS".to_owned(), rooms.to_string());
    }
    if let Some(rooms) = s.limits.max_new_rooms_per_user_per_hour {
        data.insert(
            "CHAT_MAX_NEW_ROOMS_PER_USER_PER_HOUR".to_owned(),
            rooms.to_string(),
        );
    }
    if let Some(members) = s.limits.presence_max_members {
        data.insert("CHAT_PRESENCE_MAX_MEMBERS".to_owned(), members.to_string());
    }
    if let Some(sessions) = s.limits.max_sessions_per_user {
        data.insert(
            "CHAT_MAX_SESSIONS_PER_USER".to_owned(),
            sessions.to_string(),
        );
    }
    auth_config(&s.auth, &mut data);
    if s.api.enabled {
        data.insert("CHAT_API_LISTEN".to_owned(), format!("0.0.0.0:{API_PORT}"));
        data.insert("CHAT_API_KEYS_FILE".to_owned(), api_keys_path());
    }
    if let Some(events) = &s.events {
        events_config(events, &mut data);
    }
    ConfigMap {
        metadata: n.meta(format!("{}-config", n.name), "chat-server"),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The auth settings that are not Secrets, each only when the spec sets it: the pods
/// get exactly what is configured, and the server's own defaults otherwise.
fn auth_config(auth: &AuthSpec, data: &mut BTreeMap<String, String>) {
    let mut put = |key: &str, value: String| {
        data.insert(key.to_owned(), value);
    };
    if auth.public_key_secret_name.is_some() {
        put("CHAT_JWT_PUBLIC_KEY_FILE", jwt_public_key_path());
    }
    if let Some(url) = &auth.jwks_url {
        put("CHAT_JWKS_URL", url.clone());
    }
    if let Some(issuer) = &auth.issuer {
        put("CHAT_JWT_ISSUER", issuer.clone());
    }
    if let Some(audience) = &auth.audience {
        put("CHAT_JWT_AUDIENCE", audience.clone());
    }
    if !auth.rooms.is_empty() {
        put("CHAT_ROOM_RULES", room_rules_json(&auth.rooms));
    }
    if let Some(hook) = &auth.join_hook {
        put("CHAT_JOIN_HOOK_URL", hook.url.clone());
        if let Some(ms) = hook.timeout_milliseconds {
            put("CHAT_JOIN_HOOK_TIMEOUT", format!("{ms}ms"));
        }
        put("CHAT_JOIN_HOOK_FAIL_OPEN", hook.fail_open.to_string());
        if let Some(n) = hook.concurrency {
            put("CHAT_JOIN_HOOK_CONCURRENCY", n.to_string());
        }
        if let Some(s) = hook.cache_ttl_seconds {
            put("CHAT_JOIN_HOOK_CACHE_TTL", format!("{s}s"));
        }
    }
    if let Some(policy) = auth.dm_policy {
        put("CHAT_DM_POLICY", policy.env_value().to_owned());
    }
}

/// The events' settings (`CHAT_WEBHOOK_*`) but the signing key, which the pods get from
/// its Secret: the URL always, the rest only when the spec sets it, so an unset field
/// means the server's own default (the CRD does not pin a copy of it that could drift).
fn events_config(events: &EventsSpec, data: &mut BTreeMap<String, String>) {
    let mut put = |key: &str, value: String| {
        data.insert(key.to_owned(), value);
    };
    put("CHAT_WEBHOOK_URL", events.webhook_url.clone());
    if !events.rooms.is_empty() {
        put("CHAT_WEBHOOK_ROOMS", events.rooms.join(","));
    }
    if let Some(ms) = events.timeout_milliseconds {
        put("CHAT_WEBHOOK_TIMEOUT", format!("{ms}ms"));
    }
    if let Some(s) = events.retry_max_seconds {
        put("CHAT_WEBHOOK_RETRY_MAX", format!("{s}s"));
    }
    if let Some(s) = events.give_up_after_seconds {
        put("CHAT_WEBHOOK_GIVE_UP_AFTER", format!("{s}s"));
    }
    if let Some(n) = events.max_backlog {
        put("CHAT_WEBHOOK_MAX_BACKLOG", n.to_string());
    }
    if let Some(n) = events.shards {
        put("CHAT_WEBHOOK_SHARDS", n.to_string());
    }
}

/// `CHAT_ROOM_RULES`: the rules as a JSON array, in order (first match wins), every
/// field written out so the server applies what the CRD shows.
pub(super) fn room_rules_json(rules: &[RoomRule]) -> String {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "pattern": r.pattern,
                "access": r.access.as_str(),
                "publish": r.publish,
                "presence": r.presence,
                "history": r.history,
                "anonymous": r.anonymous,
            })
        })
        .collect();
    serde_json::Value::Array(rules).to_string()
}

/// Where the pods find the JWT public key (`auth.publicKeySecretName`).
fn jwt_public_key_path() -> String {
    format!("{JWT_PUBLIC_KEY_DIR}/{JWT_PUBLIC_KEY_FILE}")
}

/// Directory of the mounted JWT public key: its own read-only volume, nothing else in it.
const JWT_PUBLIC_KEY_DIR: &str = "/etc/chat-server/jwt";
/// The key's file name in that directory.
const JWT_PUBLIC_KEY_FILE: &str = "public-key.pem";
/// The volume's name in the pod.
const JWT_PUBLIC_KEY_VOLUME: &str = "jwt-public-key";

/// Directory of the mounted API keys: a read-only volume of its own. The whole directory
/// is mounted (never a `subPath`, which the kubelet does not refresh), so a key added to
/// the Secret reaches the file the server re-reads.
const API_KEYS_DIR: &str = "/etc/chat/api";
/// The volume's name in the pod.
const API_KEYS_VOLUME: &str = "api-keys";
/// The chat-server's user and group (the image's `nonroot`); the group is also the pod's
/// `fsGroup` with the API on, so the server can read the keys file at mode 0440.
const CHAT_SERVER_UID: i64 = 65532;

/// Where the pods find the API keys (`CHAT_API_KEYS_FILE`).
fn api_keys_path() -> String {
    format!("{API_KEYS_DIR}/{API_KEYS_KEY}")
}

/// The Secret the pods read the API keys from: the user's, or the generated one.
fn api_keys_secret(n: &Names, api: &ApiSpec) -> String {
    api.keys_secret_name
        .clone()
        .unwrap_or_else(|| api_keys_secret_name(n.name))
}

/// A stable 64-bit FNV-1a hash of the configuration, put on the pod template so a
/// configuration change rolls the pods.
pub(super) fn config_hash(config: &ConfigMap) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in config.data.iter().flatten() {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

pub(super) fn chat_statefulset(
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
        Some(ext) => {
            env.push(env_secret(
                "CHAT_REDIS_URL",
                &ext.secret_name,
                &ext.url_key,
                false,
            ));
            if ext.cluster {
                env.push(env_value("CHAT_REDIS_CLUSTER", "true".to_owned()));
            }
        }
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
            JWT_KEY,
            // Required: a missing Secret stops the pod at CreateContainerConfigError,
            // which names the Secret, instead of a crash loop on a config error.
            false,
        ));
    }
    if let Some(hook) = &s.auth.join_hook {
        env.push(env_secret(
            "CHAT_JOIN_HOOK_SECRET",
            &hook.secret_name,
            JOIN_HOOK_SECRET_KEY,
            false,
        ));
    }
    // The events' signing key, like the join hook's: a required reference, so the value
    // never sits in the ConfigMap and a Secret deleted after the operator's check stops
    // the pod at CreateContainerConfigError, naming it.
    if let Some(events) = &s.events {
        env.push(env_secret(
            "CHAT_WEBHOOK_SECRET",
            &events.secret_name,
            EVENTS_SECRET_KEY,
            false,
        ));
    }
    let mut volumes = Vec::new();
    let mut volume_mounts = Vec::new();
    // The public key as a file (the server reads a path): only that key of the Secret,
    // in a volume of its own. World-readable: it is a public key, and without the API
    // the pod has no fsGroup that would let the server's user read a stricter mode.
    if let Some(secret) = &s.auth.public_key_secret_name {
        volumes.push(secret_volume(
            JWT_PUBLIC_KEY_VOLUME,
            secret,
            &[(JWT_PUBLIC_KEY, JWT_PUBLIC_KEY_FILE)],
            0o444,
        ));
        volume_mounts.push(read_only_mount(JWT_PUBLIC_KEY_VOLUME, JWT_PUBLIC_KEY_DIR));
    }
    let mut ports = vec![port("ws", PUBLIC_PORT), port("admin", ADMIN_PORT)];
    // The API keys: only the key `keys` of the Secret, readable by the owner (root) and
    // the pod's fsGroup (the server's group), nobody else.
    if s.api.enabled {
        ports.push(port("api", API_PORT));
        volumes.push(secret_volume(
            API_KEYS_VOLUME,
            &api_keys_secret(n, &s.api),
            &[(API_KEYS_KEY, API_KEYS_KEY)],
            0o440,
        ));
        volume_mounts.push(read_only_mount(API_KEYS_VOLUME, API_KEYS_DIR));
    }
    let volumes = (!volumes.is_empty()).then_some(volumes);
    let volume_mounts = (!volume_mounts.is_empty()).then_some(volume_mounts);
    let grace = i64::from(s.drain.pre_stop_seconds)
        + i64::from(s.drain.deadline_seconds)
        + GRACE_MARGIN_SECONDS;
    let container = Container {
        name: "chat-server".to_owned(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.map(|p| p.as_str().to_owned()),
        ports: Some(ports),
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
        volume_mounts,
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
                        run_as_user: Some(CHAT_SERVER_UID),
                        run_as_group: Some(CHAT_SERVER_UID),
                        // Only with the API, so the pods of clusters without it keep
                        // their template across an operator upgrade.
                        fs_group: s.api.enabled.then_some(CHAT_SERVER_UID),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes,
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

pub(super) fn pdb(n: &Names) -> PodDisruptionBudget {
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

#[cfg(test)]
mod tests {
    use crate::build::test_cluster as cluster;
    use crate::build::{build, BuildContext};

    /// The chat pod spec and the configuration built for `spec`.
    fn pod_and_config(
        spec: serde_json::Value,
    ) -> (
        k8s_openapi::api::core::v1::PodSpec,
        std::collections::BTreeMap<String, String>,
    ) {
        let d = build(&cluster(spec), BuildContext::default()).unwrap();
        let pod = d.chat_statefulset.spec.unwrap().template.spec.unwrap();
        (pod, d.config_map.data.unwrap())
    }

    #[test]
    fn the_api_gives_the_pods_its_port_listen_address_and_keys_file() {
        let (pod, config) = pod_and_config(serde_json::json!({"api": {"enabled": true}}));
        assert_eq!(config["CHAT_API_LISTEN"], "0.0.0.0:8081");
        assert_eq!(config["CHAT_API_KEYS_FILE"], "/etc/chat/api/keys");
        let c = &pod.containers[0];
        let api = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("api"))
            .expect("an api port");
        assert_eq!(
            (api.container_port, api.protocol.as_deref()),
            (8081, Some("TCP"))
        );
        let volumes = pod.volumes.as_ref().expect("the keys volume");
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "api-keys");
        let secret = volumes[0].secret.as_ref().expect("a Secret volume");
        assert_eq!(
            secret.secret_name.as_deref(),
            Some("chat-api-keys"),
            "the generated Secret"
        );
        let items = secret.items.as_ref().unwrap();
        assert_eq!(items.len(), 1, "only the key `keys`");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("keys", "keys")
        );
        assert_eq!(secret.default_mode, Some(0o440), "not world-readable");
        assert_eq!(secret.optional, Some(false));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].name, "api-keys");
        assert_eq!(mounts[0].mount_path, "/etc/chat/api");
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(
            mounts[0].sub_path, None,
            "a subPath mount is never refreshed"
        );
        assert_eq!(
            config["CHAT_API_KEYS_FILE"],
            format!("{}/{}", mounts[0].mount_path, items[0].path),
            "the variable names the mounted file"
        );
        let sc = pod.security_context.as_ref().unwrap();
        assert_eq!(
            sc.fs_group, sc.run_as_group,
            "the server's group may read the 0440 file"
        );
        assert!(sc.fs_group.is_some());

        // The user's Secret instead of the generated one, beside the JWT public key.
        let (pod, _) = pod_and_config(serde_json::json!({
            "api": {"enabled": true, "keysSecretName": "app-api-keys"},
            "auth": {"publicKeySecretName": "jwt-pub"}
        }));
        let names: Vec<(&str, Option<&str>)> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| {
                let secret = v.secret.as_ref().and_then(|s| s.secret_name.as_deref());
                (v.name.as_str(), secret)
            })
            .collect();
        assert_eq!(
            names,
            [
                ("jwt-public-key", Some("jwt-pub")),
                ("api-keys", Some("app-api-keys"))
            ]
        );
    }

    #[test]
    fn with_the_api_off_the_pods_get_none_of_it() {
        for spec in [
            serde_json::json!({}),
            serde_json::json!({"api": {"enabled": false, "keysSecretName": "k", "fromNamespaces": ["b"]}}),
        ] {
            let (pod, config) = pod_and_config(spec.clone());
            assert!(
                !config.keys().any(|k| k.starts_with("CHAT_API_")),
                "{spec}: {config:?}"
            );
            let c = &pod.containers[0];
            let ports: Vec<&str> = c
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.name.as_deref())
                .collect();
            assert_eq!(ports, ["ws", "admin"], "{spec}");
            assert!(pod.volumes.is_none() && c.volume_mounts.is_none(), "{spec}");
            assert_eq!(
                pod.security_context.unwrap().fs_group,
                None,
                "{spec}: the template of a cluster without the API is unchanged"
            );
        }
    }

    /// The `CHAT_WEBHOOK_SECRET` entry of the chat container's env, if any.
    fn webhook_secret_env(
        pod: &k8s_openapi::api::core::v1::PodSpec,
    ) -> Option<&k8s_openapi::api::core::v1::EnvVar> {
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "CHAT_WEBHOOK_SECRET")
    }

    #[test]
    fn events_give_the_pods_the_webhook_settings_and_the_secret_reference() {
        use std::collections::BTreeMap;
        let (pod, config) = pod_and_config(serde_json::json!({"events": {
            "webhookUrl": "https://app.example/chat/events?v=1",
            "secretName": "app-events",
            "rooms": ["support.*", "orders:*", "lobby"],
            "timeoutMilliseconds": 2500,
            "retryMaxSeconds": 60,
            "giveUpAfterSeconds": 7200,
            "maxBacklog": 5000,
            "shards": 8
        }}));
        let webhook: BTreeMap<&str, &str> = config
            .iter()
            .filter(|(k, _)| k.starts_with("CHAT_WEBHOOK_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            webhook,
            BTreeMap::from([
                ("CHAT_WEBHOOK_URL", "https://app.example/chat/events?v=1"),
                ("CHAT_WEBHOOK_ROOMS", "support.*,orders:*,lobby"),
                ("CHAT_WEBHOOK_TIMEOUT", "2500ms"),
                ("CHAT_WEBHOOK_RETRY_MAX", "60s"),
                ("CHAT_WEBHOOK_GIVE_UP_AFTER", "7200s"),
                ("CHAT_WEBHOOK_MAX_BACKLOG", "5000"),
                ("CHAT_WEBHOOK_SHARDS", "8"),
            ]),
            "the signing key is never in the ConfigMap"
        );
        let secret = webhook_secret_env(&pod).expect("CHAT_WEBHOOK_SECRET");
        assert_eq!(secret.value, None, "never inline");
        let from = secret
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .expect("a secretKeyRef");
        assert_eq!(
            (from.name.as_str(), from.key.as_str(), from.optional),
            ("app-events", "secret", Some(false)),
            "the Secret's key `secret`, required"
        );
        assert!(
            pod.volumes.is_none() && pod.security_context.unwrap().fs_group.is_none(),
            "nothing mounted: the key is an environment variable"
        );
    }

    #[test]
    fn events_with_only_the_required_fields_leave_the_servers_defaults() {
        let (pod, config) = pod_and_config(serde_json::json!({"events": {
            "webhookUrl": "http://app.default.svc:8000/chat/events",
            "secretName": "app-events"
        }}));
        let keys: Vec<&str> = config
            .keys()
            .filter(|k| k.starts_with("CHAT_WEBHOOK_"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["CHAT_WEBHOOK_URL"],
            "no rooms: no message events (the server's default)"
        );
        assert!(webhook_secret_env(&pod).is_some());
    }

    #[test]
    fn without_events_the_pods_get_no_webhook_and_keep_their_template() {
        let (pod, config) = pod_and_config(serde_json::json!({}));
        assert!(
            !config.keys().any(|k| k.starts_with("CHAT_WEBHOOK_")),
            "{config:?}"
        );
        assert!(webhook_secret_env(&pod).is_none());
        // Turning events on is a configuration change, so the pods roll into it.
        let before = build(&cluster(serde_json::json!({})), BuildContext::default()).unwrap();
        let with_events = build(
            &cluster(serde_json::json!({"events": {
                "webhookUrl": "http://app/events", "secretName": "e"
            }})),
            BuildContext::default(),
        )
        .unwrap();
        let hash = |d: &crate::build::Desired| {
            d.chat_statefulset
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["chatcluster.dev/config-hash"]
                .clone()
        };
        assert_ne!(
            hash(&before),
            hash(&with_events),
            "turning events on rolls the pods"
        );
    }

    /// The bounds a manifest sets reach the servers; unset ones keep the servers'
    /// defaults (nothing written), except the history budget, derived from the managed
    /// Redis' memory.
    #[test]
    fn the_limits_reach_the_servers() {
        let c = cluster(serde_json::json!({"limits": {
            "maxRooms": 500,
            "historyMaxBytes": 10485760,
            "maxSessionsPerUser": 3,
            "presenceMaxMembers": 250,
            "maxNewRoomsPerUserPerHour": 40
        }}));
        let data = build(&c, BuildContext::default())
            .unwrap()
            .config_map
            .data
            .unwrap();
        assert_eq!(data["CHAT_MAX_ROOMS"], "500");
        assert_eq!(
            data["CHAT_HISTORY_MAX_BYTES"], "10485760",
            "the manifest wins"
        );
        assert_eq!(data["CHAT_MAX_SESSIONS_PER_USER"], "3");
        assert_eq!(data["CHAT_PRESENCE_MAX_MEMBERS"], "250");
        assert_eq!(data["CHAT_MAX_NEW_ROOMS_PER_USER_PER_HOUR"], "40");

        let defaults = build(&cluster(serde_json::json!({})), BuildContext::default())
            .unwrap()
            .config_map
            .data
            .unwrap();
        for unset in [
            "CHAT_MAX_ROOMS",
            "CHAT_MAX_SESSIONS_PER_USER",
            "CHAT_PRESENCE_MAX_MEMBERS",
            "CHAT_MAX_NEW_ROOMS_PER_USER_PER_HOUR",
        ] {
            assert!(!defaults.contains_key(unset), "{unset}");
        }
        assert_eq!(
            defaults["CHAT_HISTORY_MAX_BYTES"],
            (192u64 << 20).to_string()
        );
    }
}
