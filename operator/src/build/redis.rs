//! The managed Redis: its StatefulSet (password from a config file, probes, resources)
//! and Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service, ServiceSpec, TCPSocketAction,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::*;
use super::services::service_port;
use super::*;
use crate::crd::ChatCluster;

pub(super) const REDIS_AUTH_DIR: &str = "/etc/redis-auth";
/// The managed Redis' user and group: a high UID, apart from the host's users (the
/// image's own `redis` user is 999). The entrypoint of the official images runs any
/// non-root UID as it is; /data is writable through `fsGroup` (or an emptyDir).
pub(super) const REDIS_UID: i64 = 10999;

pub(super) fn redis_statefulset(
    n: &Names,
    cluster: &ChatCluster,
    ctx: &BuildContext,
) -> StatefulSet {
    let managed = cluster.spec.redis.managed.clone().unwrap_or_default();
    let persistence = managed.persistence;
    // The config file from the Secret holds `requirepass`: the password stays out of the
    // pod's arguments (visible in the API and in `ps`).
    let config_file = format!("{REDIS_AUTH_DIR}/{REDIS_CONFIG_KEY}");
    let mut args: Vec<String> = [
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
    if let Some(memory) = managed_redis_memory(cluster) {
        // Refuse writes at the cap rather than evict: eviction cannot tell history from
        // heartbeats (both carry a TTL). The servers' history budget (half of this)
        // keeps Redis well below it; see docs/redis.md.
        args.extend([
            "--maxmemory".to_owned(),
            memory.maxmemory.to_string(),
            "--maxmemory-policy".to_owned(),
            "noeviction".to_owned(),
        ]);
    }
    let auth_volume = secret_volume(
        "auth",
        &redis_auth_secret_name(n.name),
        &[
            (REDIS_CONFIG_KEY, REDIS_CONFIG_KEY),
            (REDIS_PASSWORD_KEY, REDIS_PASSWORD_KEY),
        ],
        0o440,
    );
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
            read_only_mount("auth", REDIS_AUTH_DIR),
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

/// Memory settings derived from the managed Redis' memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisMemory {
    /// Redis' `maxmemory`: three quarters of the limit. The rest covers what Redis does
    /// not count (the append-only rewrite's fork, client buffers, fragmentation), so the
    /// pod is never OOM-killed and never crash-loops replaying its file.
    pub maxmemory: u64,
    /// The servers' default history budget (`CHAT_HISTORY_MAX_BYTES`): half of
    /// `maxmemory`, leaving the other half for presence, registrations and the
    /// streams' own overhead.
    pub history_max_bytes: u64,
}

/// The managed Redis' memory settings, when Redis is managed and has a memory limit.
pub fn managed_redis_memory(cluster: &ChatCluster) -> Option<RedisMemory> {
    // Without `external`, Redis is managed (with defaults when `managed` is unset).
    if cluster.spec.redis.external.is_some() {
        return None;
    }
    let resources = cluster
        .spec
        .redis
        .managed
        .as_ref()
        .and_then(|m| m.resources.clone())
        .unwrap_or_else(default_redis_resources);
    let limit = resources
        .limits?
        .get("memory")
        .and_then(|q| quantity_bytes(&q.0))?;
    let maxmemory = limit / 4 * 3;
    Some(RedisMemory {
        maxmemory,
        history_max_bytes: maxmemory / 2,
    })
}

/// Bytes in a Kubernetes memory quantity (`512Mi`, `1G`, `536870912`); `None` for forms
/// this does not read (exponents, fractions), which then get no derived settings.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Resources of a managed Redis without `resources`: requests enough to be scheduled
/// honestly, and a memory limit (4x the request) so a runaway Redis is restarted (with
/// persistence it replays its append-only file) instead of pressing on the node's other
/// pods. No CPU limit: throttling a single-threaded Redis stalls every chat pod, and the
/// request already gives it its share under contention.
pub(super) fn default_redis_resources() -> ResourceRequirements {
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

pub(super) fn redis_service(n: &Names) -> Service {
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

#[cfg(test)]
mod tests {
    use crate::build::{build, BuildContext, SECRETS_REVISION_ANNOTATION};

    use crate::build::test_cluster as cluster;

    use super::{managed_redis_memory, quantity_bytes, RedisMemory};

    /// Without persistence Redis' data directory is an emptyDir named like the claim it
    /// replaces; the pod template carries the Secrets' revision, so a recreated password
    /// restarts Redis too.
    #[test]
    fn an_ephemeral_redis_gets_an_empty_dir_and_the_secrets_revision() {
        let c = cluster(serde_json::json!({"redis": {"managed": {"persistence": false}}}));
        let ctx = BuildContext {
            secrets_revision: Some("rev-1".into()),
            ..BuildContext::default()
        };
        let sts = build(&c, ctx).unwrap().redis_statefulset.unwrap();
        let spec = sts.spec.unwrap();
        assert!(spec.volume_claim_templates.is_none());
        let template = spec.template;
        let pod = template.spec.unwrap();
        let data = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "data")
            .expect("a data volume");
        assert!(data.empty_dir.is_some(), "{data:?}");
        assert!(pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "data"));
        assert_eq!(
            template.metadata.unwrap().annotations.unwrap()[SECRETS_REVISION_ANNOTATION],
            "rev-1"
        );
    }

    #[test]
    fn quantities_read_as_bytes() {
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("2G"), Some(2_000_000_000));
        assert_eq!(quantity_bytes("536870912"), Some(536_870_912));
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(quantity_bytes("1e9"), None);
        assert_eq!(quantity_bytes("Mi"), None);
    }

    #[test]
    fn the_default_limit_gives_maxmemory_and_a_history_budget_under_it() {
        let c = cluster(serde_json::json!({"redis": {"managed": {}}}));
        assert_eq!(
            managed_redis_memory(&c),
            Some(RedisMemory {
                maxmemory: 384 << 20,
                history_max_bytes: 192 << 20
            }),
            "512Mi limit: maxmemory 384Mi, history 192Mi"
        );
        let sts = build(&c, BuildContext::default())
            .unwrap()
            .redis_statefulset
            .unwrap();
        let args = sts.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        let at = args
            .iter()
            .position(|a| a == "--maxmemory")
            .expect("--maxmemory");
        assert_eq!(args[at + 1], (384u64 << 20).to_string());
        assert_eq!(args[at + 2..at + 4], ["--maxmemory-policy", "noeviction"]);
        let config = build(&c, BuildContext::default()).unwrap().config_map;
        assert_eq!(
            config.data.unwrap()["CHAT_HISTORY_MAX_BYTES"],
            (192u64 << 20).to_string(),
            "the servers' history budget is half of maxmemory"
        );
    }
}
