//! Golden-file tests of every builder. Set UPDATE_GOLDEN=1 to regenerate the files under
//! tests/golden/ on purpose, then read the diff before committing it.

use chatcluster_operator::build::{build, selector_string, BuildContext, Desired, Served};

/// A cluster serving every optional API (Gateway API, KEDA, PodMonitors).
const ALL_SERVED: Served = Served {
    gateway_api: true,
    keda: true,
    pod_monitors: true,
};

/// The build context of such a cluster, everything else default.
fn all_served() -> BuildContext {
    BuildContext {
        served: ALL_SERVED,
        ..BuildContext::default()
    }
}
use chatcluster_operator::crd::ChatCluster;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn example(file: &str) -> ChatCluster {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut cluster = chatcluster_operator::parse_manifest(&text).unwrap();
    cluster
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    cluster.metadata.uid = Some("0b6e1c3e-5f2a-4c1d-9a7e-000000000001".into());
    cluster
}

fn to_yaml(d: &Desired) -> String {
    // Destructured without `..`: a new kind in `Desired` must be added here too.
    let Desired {
        service_account,
        config_map,
        chat_statefulset,
        headless_service,
        client_service,
        api_service,
        pdb,
        ingress,
        http_route,
        redis_statefulset,
        redis_service,
        network_policy,
        redis_network_policy,
        pod_monitor,
        scaled_object,
    } = d;
    let yaml = |o: &dyn erased::Yaml| o.yaml();
    let mut docs: Vec<String> = vec![
        yaml(service_account),
        yaml(config_map),
        yaml(chat_statefulset),
        yaml(headless_service),
        yaml(client_service),
    ];
    docs.extend(api_service.iter().map(|o| yaml(o)));
    docs.extend(pdb.iter().map(|o| yaml(o)));
    docs.extend(ingress.iter().map(|o| yaml(o)));
    docs.extend(http_route.iter().map(|o| yaml(o)));
    docs.extend(redis_statefulset.iter().map(|o| yaml(o)));
    docs.extend(redis_service.iter().map(|o| yaml(o)));
    docs.extend(network_policy.iter().map(|o| yaml(o)));
    docs.extend(redis_network_policy.iter().map(|o| yaml(o)));
    docs.extend(pod_monitor.iter().map(|o| yaml(o)));
    docs.extend(scaled_object.iter().map(|o| yaml(o)));
    docs.join("---\n")
}

/// Any serializable object as a YAML document (lets `to_yaml` treat every kind alike).
mod erased {
    pub trait Yaml {
        fn yaml(&self) -> String;
    }
    impl<T: serde::Serialize> Yaml for T {
        fn yaml(&self) -> String {
            serde_yaml::to_string(self).unwrap()
        }
    }
}

fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{path} differs from the builders' output; if the change is intended, run UPDATE_GOLDEN=1 cargo test -p chatcluster-operator and review the diff"
    );
}

#[test]
fn minimal_cluster_objects() {
    let d = build(&example("minimal.yaml"), BuildContext::default()).unwrap();
    golden("minimal", &to_yaml(&d));
}

/// KEDA as the engine: the ScaledObject (and the PodMonitor) in the golden file.
#[test]
fn keda_cluster_objects() {
    let d = build(&example("keda.yaml"), all_served()).unwrap();
    let scaled = d.scaled_object.as_ref().expect("a ScaledObject");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "ChatCluster");
    assert_eq!(
        scaled["spec"]["triggers"][0]["metadata"]["threshold"],
        "5000"
    );
    assert_eq!(
        scaled["spec"]["triggers"][0]["metadata"]["query"],
        r#"sum(chat_connections{namespace="default", pod=~"chat-[0-9]+"})"#
    );
    assert_eq!(
        scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            ["stabilizationWindowSeconds"],
        300
    );
    golden("keda", &to_yaml(&d));
}

/// Objects of kinds the cluster does not serve are not built, and the builtin engine
/// has no ScaledObject.
#[test]
fn optional_kinds_only_where_served_and_asked_for() {
    let keda = example("keda.yaml");
    let d = build(&keda, BuildContext::default()).unwrap();
    assert!(d.scaled_object.is_none() && d.pod_monitor.is_none());
    let mut builtin = keda.clone();
    if let Some(a) = builtin.spec.autoscaling.as_mut() {
        a.engine = chatcluster_operator::crd::AutoscalingEngine::Builtin;
    }
    let d = build(&builtin, all_served()).unwrap();
    assert!(d.scaled_object.is_none(), "builtin: no ScaledObject");
    assert!(
        d.pod_monitor.is_some(),
        "the PodMonitor is independent of the engine"
    );
}

/// The server API with its generated keys: the `NAME-api` Service, the pods' port,
/// variables and keys volume, and the NetworkPolicy's API rule in the golden file.
#[test]
fn api_cluster_objects() {
    let c = example("api.yaml");
    let d = build(
        &c,
        BuildContext {
            operator_namespace: Some("chatcluster-system".into()),
            ..BuildContext::default()
        },
    )
    .unwrap();
    let service = d.api_service.as_ref().expect("the API Service");
    assert_eq!(service.metadata.name.as_deref(), Some("chat-api"));
    let pod = pod_spec(&d);
    let keys = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref())
        .expect("the keys volume");
    assert_eq!(keys.secret_name.as_deref(), Some("chat-api-keys"));
    let policy = d.network_policy.as_ref().expect("a NetworkPolicy");
    let api_from: Vec<String> = policy
        .spec
        .iter()
        .flat_map(|s| s.ingress.iter().flatten())
        .filter(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::Int(8081)))
        })
        .flat_map(|r| r.from.iter().flatten())
        .filter_map(|p| {
            p.namespace_selector
                .as_ref()?
                .match_labels
                .as_ref()?
                .get("kubernetes.io/metadata.name")
                .cloned()
        })
        .collect();
    assert_eq!(api_from, ["default", "backend"]);
    golden("api", &to_yaml(&d));
}

#[test]
fn full_cluster_objects() {
    let d = build(
        &example("full.yaml"),
        BuildContext {
            served: ALL_SERVED,
            operator_namespace: Some("chatcluster-system".into()),
            ..BuildContext::default()
        },
    )
    .unwrap();
    golden("full", &to_yaml(&d));
}

#[test]
fn chat_pods_follow_the_drain_and_security_rules() {
    let d = build(&example("full.yaml"), BuildContext::default()).unwrap();
    let pod = d.chat_statefulset.spec.unwrap().template.spec.unwrap();
    // preStop 5 + deadline 40 + margin 5.
    assert_eq!(pod.termination_grace_period_seconds, Some(50));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    let env: Vec<&str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(env.contains(&"CHAT_NODE_NAME") && env.contains(&"CHAT_POD_IP"));
    assert_eq!(
        c.lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .as_ref()
            .unwrap()
            .seconds,
        5
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .port,
        IntOrString::String("admin".into())
    );
}

/// The managed Redis pod built for example `file`.
fn redis_pod(file: &str) -> k8s_openapi::api::core::v1::PodSpec {
    let d = build(&example(file), BuildContext::default()).unwrap();
    d.redis_statefulset
        .and_then(|s| s.spec)
        .and_then(|s| s.template.spec)
        .expect("a managed Redis pod")
}

/// The managed Redis as docs/security.md describes it (checkov's CKV_K8S_35, 40 and 13):
/// no Secret in its environment, a high UID, a default memory limit.
#[test]
fn redis_pod_reads_its_password_from_a_file_and_runs_as_a_high_uid() {
    let pod = redis_pod("minimal.yaml");
    let c = &pod.containers[0];
    assert!(
        c.env.iter().flatten().all(|e| e.value_from.is_none()),
        "no Secret in the Redis container's environment: {:?}",
        c.env
    );
    let auth = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "auth")
        .unwrap();
    let keys: Vec<&str> = auth
        .secret
        .as_ref()
        .unwrap()
        .items
        .iter()
        .flatten()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(keys, ["redis.conf", "password"]);
    let probe = c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap();
    let command = probe.command.as_ref().unwrap();
    assert_eq!(command[..2], ["sh", "-c"]);
    assert!(
        command[2].contains("$(cat /etc/redis-auth/password)") && command[2].ends_with("= PONG ]"),
        "{command:?}"
    );
    let sc = pod.security_context.as_ref().unwrap();
    assert!(sc.run_as_user.unwrap() >= 10000 && sc.run_as_group == sc.run_as_user);
    assert_eq!(
        sc.fs_group, sc.run_as_user,
        "/data writable by the Redis user"
    );
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "512Mi");
    assert!(!limits.contains_key("cpu"), "no CPU limit by default");

    // The user's resources are applied as written: no default merged in.
    let pod = redis_pod("full.yaml");
    let resources = pod.containers[0].resources.as_ref().unwrap();
    assert!(resources.limits.is_none() && resources.requests.is_some());
}

#[test]
fn admin_port_is_never_exposed_to_clients() {
    let d = build(&example("full.yaml"), all_served()).unwrap();
    let ports = d.client_service.spec.unwrap().ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].target_port, Some(IntOrString::String("ws".into())));
    let ingress = d.ingress.unwrap();
    let a = ingress.metadata.annotations.unwrap();
    assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
    let route = d.http_route.unwrap();
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["port"], 80);
    assert!(
        route["spec"]["rules"][0]
            .get("sessionPersistence")
            .is_none(),
        "experimental-channel field left out: a standard Gateway API install rejects it"
    );

    // Opted in: the cookie the Ingress uses, through the route's session persistence.
    let mut c = example("full.yaml");
    c.spec
        .expose
        .as_mut()
        .and_then(|e| e.http_route.as_mut())
        .expect("the example has an httpRoute")
        .session_persistence = true;
    let route = build(&c, all_served()).unwrap().http_route.unwrap();
    assert_eq!(
        route["spec"]["rules"][0]["sessionPersistence"],
        serde_json::json!({"sessionName": "CHATNODE", "type": "Cookie"})
    );
}

#[test]
fn optional_objects_follow_the_spec() {
    let mut c = example("minimal.yaml");
    let d = build(&c, BuildContext::default()).unwrap();
    assert!(d.pdb.is_some(), "3 replicas get a PodDisruptionBudget");
    assert!(
        d.ingress.is_none() && d.http_route.is_none(),
        "nothing exposed by default"
    );
    assert!(d.redis_statefulset.is_some(), "managed Redis by default");
    c.spec.replicas = 1;
    assert!(
        build(&c, BuildContext::default()).unwrap().pdb.is_none(),
        "no PDB at 1 replica"
    );
    let full = example("full.yaml");
    assert!(
        build(&full, BuildContext::default())
            .unwrap()
            .http_route
            .is_none(),
        "no HTTPRoute without the Gateway API CRDs"
    );
    let mut external = example("minimal.yaml");
    external.spec.redis.external =
        Some(serde_json::from_value(serde_json::json!({"secretName": "redis-url"})).unwrap());
    let d = build(&external, BuildContext::default()).unwrap();
    assert!(d.redis_statefulset.is_none() && d.redis_service.is_none());
    let env = chat_env(&d);
    let url = env.iter().find(|e| e.name == "CHAT_REDIS_URL").unwrap();
    assert_eq!(
        url.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "redis-url"
    );
    assert!(
        !env.iter().any(|e| e.name == "CHAT_REDIS_CLUSTER"),
        "a single external Redis by default"
    );

    // A Redis Cluster: the pods run the backplane in cluster mode.
    external.spec.redis.external = Some(
        serde_json::from_value(serde_json::json!({"secretName": "redis-url", "cluster": true}))
            .unwrap(),
    );
    let d = build(&external, BuildContext::default()).unwrap();
    let env = chat_env(&d);
    let cluster = env.iter().find(|e| e.name == "CHAT_REDIS_CLUSTER").unwrap();
    assert_eq!(cluster.value.as_deref(), Some("true"));
}

/// The chat-server container's environment in `d`.
fn chat_env(d: &Desired) -> Vec<k8s_openapi::api::core::v1::EnvVar> {
    let pod = d
        .chat_statefulset
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref();
    pod.unwrap().containers[0].env.clone().unwrap()
}

#[test]
fn every_object_is_owned_and_labelled() {
    let d = build(&example("full.yaml"), all_served()).unwrap();
    let yaml = to_yaml(&d);
    let docs: Vec<serde_yaml::Value> = yaml
        .split("---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect();
    assert_eq!(
        docs.len(),
        13,
        "every kind but the ScaledObject (full.yaml uses the builtin engine)"
    );
    for doc in docs {
        let meta = &doc["metadata"];
        assert_eq!(meta["ownerReferences"][0]["kind"], "ChatCluster", "{doc:?}");
        assert_eq!(meta["ownerReferences"][0]["controller"], true);
        assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "chat-prod");
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"],
            "chatcluster-operator"
        );
    }
    assert_eq!(
        selector_string("chat-prod"),
        "app.kubernetes.io/component=chat-server,app.kubernetes.io/instance=chat-prod,app.kubernetes.io/name=chatcluster"
    );
}

#[test]
fn missing_metadata_is_an_error_not_a_panic() {
    let mut c = example("minimal.yaml");
    c.metadata.uid = None;
    assert!(build(&c, BuildContext::default()).is_err());
}

#[test]
fn zero_prestop_is_left_out() {
    let mut c = example("minimal.yaml");
    c.spec.drain.pre_stop_seconds = 0;
    let d = build(&c, BuildContext::default()).unwrap();
    let pod = d.chat_statefulset.spec.unwrap().template.spec.unwrap();
    assert!(pod.containers[0].lifecycle.is_none());
    assert_eq!(pod.termination_grace_period_seconds, Some(25 + 5));
}

/// The auth settings the spec leaves unset become nothing in the pods (the server's
/// defaults apply); anonymous users follow the keys unless set.
#[test]
fn unset_auth_fields_give_the_pods_nothing() {
    let d = build(&example("minimal.yaml"), BuildContext::default()).unwrap();
    let config = d.config_map.data.as_ref().unwrap();
    for key in [
        "CHAT_JWT_PUBLIC_KEY_FILE",
        "CHAT_JWKS_URL",
        "CHAT_JWT_ISSUER",
        "CHAT_JWT_AUDIENCE",
        "CHAT_ROOM_RULES",
        "CHAT_JOIN_HOOK_URL",
        "CHAT_JOIN_HOOK_TIMEOUT",
        "CHAT_JOIN_HOOK_FAIL_OPEN",
        "CHAT_JOIN_HOOK_CONCURRENCY",
        "CHAT_JOIN_HOOK_CACHE_TTL",
        "CHAT_DM_POLICY",
    ] {
        assert!(!config.contains_key(key), "{key} without a spec field");
    }
    assert_eq!(config["CHAT_ALLOW_ANONYMOUS"], "true", "no key: anonymous");
    assert_eq!(config["CHAT_DM_RATE_PER_SEC"], "5");
    let env = chat_env(&d);
    assert!(
        !env.iter()
            .any(|e| e.name == "CHAT_JWT_HS256_SECRET" || e.name == "CHAT_JOIN_HOOK_SECRET"),
        "{env:?}"
    );
    let pod = pod_spec(&d);
    assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());

    let anonymous = |auth: serde_json::Value| -> String {
        let mut c = example("minimal.yaml");
        c.spec.auth = serde_json::from_value(auth).unwrap();
        let d = build(&c, BuildContext::default()).unwrap();
        d.config_map.data.unwrap()["CHAT_ALLOW_ANONYMOUS"].clone()
    };
    for key in [
        serde_json::json!({"jwtSecretName": "k"}),
        serde_json::json!({"publicKeySecretName": "k"}),
        serde_json::json!({"jwksUrl": "https://idp/keys"}),
    ] {
        assert_eq!(
            anonymous(key.clone()),
            "false",
            "a key turns guests off: {key}"
        );
        let mut explicit = key.clone();
        explicit["allowAnonymous"] = true.into();
        assert_eq!(anonymous(explicit), "true", "unless asked for: {key}");
    }
    assert_eq!(
        anonymous(serde_json::json!({"allowAnonymous": true})),
        "true"
    );
}

/// Every auth field of full.yaml, as the variables the server reads.
#[test]
fn auth_fields_become_the_servers_variables() {
    let d = build(&example("full.yaml"), BuildContext::default()).unwrap();
    let config = d.config_map.data.as_ref().unwrap();
    assert_eq!(config["CHAT_ALLOW_ANONYMOUS"], "false");
    assert_eq!(
        config["CHAT_JWKS_URL"],
        "https://auth.example.com/realms/chat/protocol/openid-connect/certs"
    );
    assert_eq!(
        config["CHAT_JWT_ISSUER"],
        "https://auth.example.com/realms/chat"
    );
    assert_eq!(config["CHAT_JWT_AUDIENCE"], "chat");
    assert_eq!(
        config["CHAT_JOIN_HOOK_URL"],
        "http://app.chat.svc:8000/chat/join"
    );
    assert_eq!(config["CHAT_JOIN_HOOK_TIMEOUT"], "2000ms");
    assert_eq!(config["CHAT_JOIN_HOOK_FAIL_OPEN"], "false");
    assert_eq!(config["CHAT_JOIN_HOOK_CONCURRENCY"], "64");
    assert_eq!(config["CHAT_JOIN_HOOK_CACHE_TTL"], "5s");
    assert_eq!(config["CHAT_DM_POLICY"], "shared_room");
    assert_eq!(config["CHAT_DM_RATE_PER_SEC"], "5");
    let rules: serde_json::Value = serde_json::from_str(&config["CHAT_ROOM_RULES"]).unwrap();
    assert_eq!(
        rules,
        serde_json::json!([
            {"pattern": "lobby.*", "access": "public", "publish": true, "presence": true,
             "history": true, "anonymous": false},
            {"pattern": "announcements", "access": "public", "publish": false,
             "presence": true, "history": true, "anonymous": true},
            {"pattern": "team.*", "access": "grant", "publish": true, "presence": true,
             "history": true, "anonymous": true},
            {"pattern": "inbox.{user}", "access": "user", "publish": true, "presence": false,
             "history": true, "anonymous": true}
        ]),
        "in order, every field written out"
    );

    let env = chat_env(&d);
    let secret_ref = |name: &str| {
        let e = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} in {env:?}"));
        let r = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("from a Secret");
        (r.name.clone(), r.key.clone(), r.optional)
    };
    assert_eq!(
        secret_ref("CHAT_JWT_HS256_SECRET"),
        ("chat-jwt".into(), "hs256Secret".into(), Some(false))
    );
    assert_eq!(
        secret_ref("CHAT_JOIN_HOOK_SECRET"),
        ("chat-join-hook".into(), "hookSecret".into(), Some(false))
    );
    assert!(
        !config.values().any(|v| v.contains("chat-jwt-public-key")),
        "Secret names and values stay out of the ConfigMap"
    );

    // The public key: one key of its Secret, read-only, where CHAT_JWT_PUBLIC_KEY_FILE says.
    let pod = pod_spec(&d);
    let volumes = pod.volumes.as_ref().expect("the public key volume");
    assert_eq!(volumes.len(), 1);
    let secret = volumes[0].secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("chat-jwt-public-key"));
    let items = secret.items.as_ref().unwrap();
    assert_eq!(items.len(), 1, "only the public key, never other keys");
    assert_eq!(items[0].key, "publicKey");
    let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].read_only, Some(true));
    assert_eq!(
        config["CHAT_JWT_PUBLIC_KEY_FILE"],
        format!("{}/{}", mounts[0].mount_path, items[0].path)
    );
}

/// The events of full.yaml and api.yaml, as the variables the server reads: the
/// settings in the ConfigMap, the signing key from key `secret` of the named Secret.
#[test]
fn events_fields_become_the_servers_variables() {
    for (file, expected) in [
        (
            "full.yaml",
            vec![
                ("CHAT_WEBHOOK_URL", "http://app.chat.svc:8000/chat/events"),
                ("CHAT_WEBHOOK_ROOMS", "team.*,announcements"),
                ("CHAT_WEBHOOK_TIMEOUT", "5000ms"),
                ("CHAT_WEBHOOK_RETRY_MAX", "30s"),
                ("CHAT_WEBHOOK_GIVE_UP_AFTER", "3600s"),
                ("CHAT_WEBHOOK_MAX_BACKLOG", "100000"),
                ("CHAT_WEBHOOK_SHARDS", "4"),
            ],
        ),
        (
            "api.yaml",
            vec![
                (
                    "CHAT_WEBHOOK_URL",
                    "http://backend.backend.svc:8000/chat/events",
                ),
                ("CHAT_WEBHOOK_ROOMS", "support.*"),
            ],
        ),
    ] {
        let d = build(&example(file), BuildContext::default()).unwrap();
        let config = d.config_map.data.as_ref().unwrap();
        let webhook: Vec<(&str, &str)> = config
            .iter()
            .filter(|(k, _)| k.starts_with("CHAT_WEBHOOK_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(webhook, expected, "{file}");
        let env = chat_env(&d);
        let secret = env
            .iter()
            .find(|e| e.name == "CHAT_WEBHOOK_SECRET")
            .unwrap_or_else(|| panic!("{file}: {env:?}"));
        let r = secret
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("from a Secret");
        assert_eq!(
            (r.name.as_str(), r.key.as_str(), r.optional),
            ("chat-events", "secret", Some(false)),
            "{file}"
        );
    }
    // Without `events`: nothing of it.
    let d = build(&example("minimal.yaml"), BuildContext::default()).unwrap();
    let config = d.config_map.data.as_ref().unwrap();
    assert!(!config.keys().any(|k| k.starts_with("CHAT_WEBHOOK_")));
    assert!(!chat_env(&d)
        .iter()
        .any(|e| e.name.starts_with("CHAT_WEBHOOK_")));
}

/// A join hook with only its URL and signing Secret: the fail-closed default is
/// written, no timeout (the server's), and the signing key from the Secret.
#[test]
fn a_bare_join_hook_fails_closed_with_the_servers_timeout() {
    let mut c = example("minimal.yaml");
    c.spec.auth = serde_json::from_value(serde_json::json!({
        "joinHook": {"url": "https://app.example.com/join?v=1", "secretName": "hook"}
    }))
    .unwrap();
    let d = build(&c, BuildContext::default()).unwrap();
    let config = d.config_map.data.as_ref().unwrap();
    assert_eq!(
        config["CHAT_JOIN_HOOK_URL"],
        "https://app.example.com/join?v=1"
    );
    assert_eq!(config["CHAT_JOIN_HOOK_FAIL_OPEN"], "false");
    assert!(!config.contains_key("CHAT_JOIN_HOOK_TIMEOUT"));
    let secret = chat_env(&d)
        .into_iter()
        .find(|e| e.name == "CHAT_JOIN_HOOK_SECRET")
        .and_then(|e| e.value_from)
        .and_then(|v| v.secret_key_ref)
        .expect("the hook's signing key from its Secret");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("hook", "hookSecret")
    );
}

/// The chat-server pod spec in `d`.
fn pod_spec(d: &Desired) -> k8s_openapi::api::core::v1::PodSpec {
    d.chat_statefulset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod template")
}
