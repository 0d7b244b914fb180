//! The committed CRD matches the Rust types, and its CEL rules reject bad specs with
//! messages that say what to fix.

use chatcluster_operator::crd::ChatClusterSpec;
use serde_json::json;

#[test]
fn committed_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/chatcluster.yaml");
    let generated = chatcluster_operator::crd_yaml().unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "crds/chatcluster.yaml is stale: run `cargo run -p chatcluster-operator --bin crdgen crds/chatcluster.yaml` (or UPDATE_GOLDEN=1 cargo test) and commit it"
    );
}

#[test]
fn crd_has_scale_status_columns_and_short_name() {
    let crd = serde_json::to_value(chatcluster_operator::crd().unwrap()).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["chat"]));
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert!(
        root.get("required").is_none(),
        "spec is optional: a name is enough"
    );
    assert_eq!(root["properties"]["spec"]["default"], json!({}));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    assert!(v["subresources"]["status"].is_object());
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Replicas", "Connections", "Age"]);
}

#[test]
fn a_manifest_with_only_a_name_gets_working_defaults() {
    let spec: ChatClusterSpec = serde_json::from_value(json!({})).unwrap();
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.auth.allow_anonymous, None);
    assert!(
        spec.auth.effective_allow_anonymous(),
        "no key: anonymous users work"
    );
    assert_eq!(spec.limits.dm_per_second, 5.0);
    assert!(spec.redis.managed.is_none() && spec.redis.external.is_none());
    assert_eq!(spec.drain.reconnect_window_seconds, 10);
    assert_eq!(spec.drain.deadline_seconds, 25);
    assert!(spec.expose.is_none());
}

/// Every CEL rule in the schema, evaluated locally against specs a user might write.
#[test]
fn cel_rules_reject_impossible_specs_with_clear_messages() {
    let cases = [
        (
            json!({"redis": {"managed": {}, "external": {"secretName": "r"}}}),
            "either redis.managed or redis.external",
        ),
        (
            json!({"drain": {"reconnectWindowSeconds": 30, "deadlineSeconds": 20}}),
            "drain.reconnectWindowSeconds must be shorter",
        ),
        (
            json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
            "minReplicas must be less than or equal",
        ),
        (
            json!({"expose": {"ingress": {"host": "Not A Host!"}}}),
            "expose.ingress.host must be a DNS name",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "engine": "keda"}}),
            "autoscaling.engine keda needs autoscaling.prometheusUrl",
        ),
        (
            json!({"monitoring": {"podMonitor": {"labels":
                (0..17).map(|i| (format!("l{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}}}),
            "monitoring.podMonitor.labels: at most 16 labels",
        ),
        (
            json!({"expose": {}}),
            "set expose.ingress, expose.httpRoute or both",
        ),
        (
            json!({"auth": {"allowAnonymous": false}}),
            "auth: allowAnonymous: false leaves no way in; set auth.jwtSecretName, auth.publicKeySecretName or auth.jwksUrl",
        ),
        (
            json!({"auth": {"issuer": "https://idp"}}),
            "auth: issuer and audience are checked in tokens, and no token key is set",
        ),
        (
            json!({"auth": {"audience": "chat"}}),
            "auth: issuer and audience are checked in tokens",
        ),
        (
            json!({"auth": {"jwksUrl": "http://idp.example/keys"}}),
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            json!({"auth": {"jwksUrl": "https://idp.example/keys?tenant=1"}}),
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            json!({"auth": {"jwksUrl": "https://user:pw@idp.example/keys"}}),
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            json!({"auth": {"jwksUrl": "https://idp.example/keys#k1"}}),
            "auth.jwksUrl must be an https:// URL",
        ),
        (
            json!({"auth": {"publicKeySecretName": "Not_A_Secret"}}),
            "auth.publicKeySecretName must be a Secret name",
        ),
        (
            json!({"auth": {"rooms": [{"pattern": "lobby room", "access": "public"}]}}),
            "auth.rooms: pattern must be 1 to 64 of A-Z a-z 0-9",
        ),
        (
            json!({"auth": {"rooms": [{"pattern": "inbox.{usr}", "access": "user"}]}}),
            "auth.rooms: pattern must be 1 to 64",
        ),
        (
            json!({"auth": {"rooms": [{"pattern": "dm.{user}.*", "access": "user"}]}}),
            "auth.rooms: a rule with access: user must not hold *",
        ),
        (
            json!({"auth": {"rooms": [{"pattern": "inbox.*", "access": "user"}]}}),
            "auth.rooms: a rule with access: user needs {user} exactly once",
        ),
        (
            json!({"auth": {"rooms": [{"pattern": "dm.{user}.{user}", "access": "user"}]}}),
            "auth.rooms: a rule with access: user needs {user} exactly once",
        ),
        (
            json!({"auth": {"rooms": [{"pattern": "team.{user}", "access": "grant"}]}}),
            "auth.rooms: {user} is only for rules with access: user",
        ),
        (
            json!({"auth": {"joinHook": {"url": "ftp://app/join", "secretName": "h"}}}),
            "auth.joinHook.url must be an http:// or https:// URL",
        ),
        (
            json!({"auth": {"joinHook": {"url": "http://app/join#x", "secretName": "h"}}}),
            "auth.joinHook.url must be an http:// or https:// URL",
        ),
        (
            json!({"auth": {"joinHook": {"url": "http://u:p@app/join", "secretName": "h"}}}),
            "auth.joinHook.url must be an http:// or https:// URL",
        ),
        (
            json!({"auth": {"joinHook": {"url": "http://app/join", "secretName": "Hook Secret"}}}),
            "auth.joinHook.secretName must be a Secret name",
        ),
        (
            json!({"auth": {"jwtSecretName": "Chat JWT"}}),
            "auth.jwtSecretName must be a Secret name",
        ),
        (
            json!({"auth": {"jwtSecretName": "chat-jwt", "issuer": "https://idp /realms/chat"}}),
            "auth.issuer must be the tokens' exact iss",
        ),
        (
            json!({"auth": {"jwtSecretName": "chat-jwt", "audience": "chat app"}}),
            "auth.audience must be the tokens' exact aud",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "http://evil.example/x?"}}),
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "http://p:9090#"}}),
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "http://admin:pw@p:9090"}}),
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "prometheus:9090"}}),
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "http://p:9090/a b"}}),
            "autoscaling.prometheusUrl must be an http:// or https:// base URL",
        ),
        (
            json!({"limits": {"dmPerSecond": 0}}),
            "limits.dmPerSecond must be at least 0.01",
        ),
        (
            json!({"limits": {"dmPerSecond": 0.001}}),
            "limits.dmPerSecond must be at least 0.01",
        ),
        (
            json!({"limits": {"maxFrameBytes": 1024, "maxBodyBytes": 1000}}),
            "limits.maxBodyBytes must be at most",
        ),
        (
            json!({"redis": {"managed": {"storage": "lots"}}}),
            "storage must be a size",
        ),
        (
            json!({"networkPolicy": {"adminFromNamespaces": ["monitoring", "Not A Namespace"]}}),
            "each entry must be a namespace name",
        ),
        (
            json!({"api": {"enabled": true, "fromNamespaces": ["backend", "-backend"]}}),
            "api.fromNamespaces: each entry must be a namespace name",
        ),
        (
            json!({"api": {"enabled": true, "fromNamespaces": ["apps.prod"]}}),
            "api.fromNamespaces: each entry must be a namespace name",
        ),
        (
            json!({"api": {"enabled": true, "keysSecretName": "Api_Keys"}}),
            "api.keysSecretName must be a Secret name",
        ),
        (
            json!({"events": {"webhookUrl": "ftp://app/events", "secretName": "e"}}),
            "events.webhookUrl must be an http:// or https:// URL",
        ),
        (
            json!({"events": {"webhookUrl": "app.default.svc/events", "secretName": "e"}}),
            "events.webhookUrl must be an http:// or https:// URL",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/chat events", "secretName": "e"}}),
            "events.webhookUrl must be an http:// or https:// URL",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events\n", "secretName": "e"}}),
            "events.webhookUrl must be an http:// or https:// URL",
        ),
        (
            json!({"events": {"webhookUrl": "http://u:p@app/events", "secretName": "e"}}),
            "events.webhookUrl must be an http:// or https:// URL",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events", "secretName": "Events_Key"}}),
            "events.secretName must be a Secret name",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events", "secretName": "e",
                "rooms": ["support.*", ""]}}),
            "events.rooms: each pattern must be 1 to 64 of A-Z a-z 0-9 _ - . : @ and *",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events", "secretName": "e",
                "rooms": ["lobby,vip"]}}),
            "events.rooms: each pattern must be 1 to 64",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events", "secretName": "e",
                "rooms": ["inbox.{user}"]}}),
            "events.rooms: each pattern must be 1 to 64",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events", "secretName": "e",
                "retryMaxSeconds": 120, "giveUpAfterSeconds": 60}}),
            "events.retryMaxSeconds (default 30) must be at most events.giveUpAfterSeconds",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events", "secretName": "e",
                "giveUpAfterSeconds": 10}}),
            "events.retryMaxSeconds (default 30) must be at most events.giveUpAfterSeconds",
        ),
        (
            json!({"events": {"webhookUrl": "http://app/events", "secretName": "e"},
                "redis": {"external": {"secretName": "r", "cluster": true}}}),
            "events need a single Redis instance, not a Redis Cluster",
        ),
    ];
    for (spec, expected) in cases {
        let err = validate_spec(&spec).expect_err(&format!("{spec} should be rejected"));
        assert!(err.contains(expected), "{spec}: {err}");
    }
    for ok in [
        json!({}),
        json!({"replicas": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}),
        // Outside the bounds is accepted (kubectl scale must not fail); the operator clamps.
        json!({"replicas": 9, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}),
        json!({"expose": {"ingress": {"host": "chat.example.com"}}}),
        json!({"auth": {"allowAnonymous": false, "jwtSecretName": "jwt"}}),
        json!({"auth": {"jwtSecretName": "jwt"}}),
        // Guests beside token users: they get ids of their own (`~NAME`).
        json!({"auth": {"allowAnonymous": true, "jwksUrl": "https://idp.example/keys"}}),
        json!({"auth": {"allowAnonymous": false, "publicKeySecretName": "jwt-pub",
            "issuer": "https://idp.example", "audience": "chat"}}),
        json!({"auth": {"jwksUrl": "https://idp.example:8443/realms/chat/protocol/openid-connect/certs",
            "issuer": "https://idp.example:8443/realms/chat", "audience": "chat"}}),
        json!({"auth": {"rooms": [
            {"pattern": "lobby.*", "access": "public", "publish": true, "presence": true,
             "history": true, "anonymous": true},
            {"pattern": "team.*", "access": "grant"},
            {"pattern": "inbox.{user}", "access": "user"},
            {"pattern": "a_b-c.d:e@f*", "access": "public"}
        ]}}),
        json!({"auth": {"joinHook": {"url": "http://app.default.svc:8000/chat/join?v=2",
            "secretName": "hook", "timeoutMilliseconds": 500, "failOpen": true}}}),
        json!({"auth": {"dmPolicy": "sharedRoom"}}),
        json!({"limits": {"dmPerSecond": 0.5}}),
        json!({"limits": {"dmPerSecond": 1}}),
        json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "https://h/prometheus/"}}),
        json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "http://[::1]:9090"}}),
        json!({"redis": {"external": {"secretName": "redis-url"}}}),
        json!({"networkPolicy": {"adminFromNamespaces": ["monitoring", "kube-prometheus-0"]}}),
        json!({"api": {"enabled": true}}),
        json!({"api": {"enabled": true, "keysSecretName": "chat.api-keys",
            "fromNamespaces": ["backend", "0ps"]}}),
        json!({"events": {"webhookUrl": "http://app.default.svc:8000/chat/events",
            "secretName": "app-events"}}),
        json!({"events": {"webhookUrl": "https://[::1]:8443/events?tenant=a",
            "secretName": "app.events", "rooms": ["support.*", "*", "a_b-c.d:e@f"],
            "timeoutMilliseconds": 60000, "retryMaxSeconds": 604800,
            "giveUpAfterSeconds": 604800, "maxBacklog": 1000000, "shards": 64}}),
        json!({"events": {"webhookUrl": "http://app/e", "secretName": "e",
            "giveUpAfterSeconds": 30}}),
        // One Redis instance, managed or external: events work.
        json!({"events": {"webhookUrl": "http://app/e", "secretName": "e"},
            "redis": {"external": {"secretName": "r"}}}),
        json!({"events": {"webhookUrl": "http://app/e", "secretName": "e"},
            "redis": {"external": {"secretName": "r", "cluster": false}}}),
        // A Redis Cluster without events.
        json!({"redis": {"external": {"secretName": "r", "cluster": true}}}),
    ] {
        assert!(
            validate_spec(&ok).is_ok(),
            "{ok} should be accepted: {:?}",
            validate_spec(&ok)
        );
    }
}

/// Applies serde defaults (as the API server's structural defaulting would), then runs
/// the CRD's CEL rules on the spec.
fn validate_spec(spec: &serde_json::Value) -> Result<(), String> {
    let typed: ChatClusterSpec = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    let defaulted = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let crd = serde_json::to_value(chatcluster_operator::crd().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    kube::core::cel::Validator::new()
        .validate(schema, &defaulted, None)
        .map_err(|e| e.to_string())
}

/// The examples a user applies are valid ChatClusters.
#[test]
fn examples_pass_the_crd_rules() {
    for file in ["minimal.yaml", "full.yaml", "keda.yaml", "api.yaml"] {
        let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let spec = serde_json::to_value(&doc["spec"]).unwrap();
        let spec = if spec.is_null() { json!({}) } else { spec };
        assert!(
            validate_spec(&spec).is_ok(),
            "{file}: {:?}",
            validate_spec(&spec)
        );
    }
}

/// Volume settings of a managed Redis cannot change after creation (transition rule).
#[test]
fn managed_redis_volume_is_immutable() {
    let crd = serde_json::to_value(chatcluster_operator::crd().unwrap()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let spec = |storage: &str| {
        let typed: ChatClusterSpec =
            serde_json::from_value(json!({"redis": {"managed": {"storage": storage}}})).unwrap();
        serde_json::to_value(typed).unwrap()
    };
    let validator = kube::core::cel::Validator::new();
    let err = validator
        .validate(schema, &spec("2Gi"), Some(&spec("1Gi")))
        .expect_err("storage change rejected");
    assert!(
        err.to_string().contains("cannot be changed after creation"),
        "{err}"
    );
    assert!(validator
        .validate(schema, &spec("1Gi"), Some(&spec("1Gi")))
        .is_ok());
    assert!(
        validator.validate(schema, &spec("2Gi"), None).is_ok(),
        "any size on create"
    );
}

#[test]
fn autoscaling_bounds_clamp_the_replicas_that_run_and_say_what_to_change() {
    let spec = |v: serde_json::Value| -> ChatClusterSpec { serde_json::from_value(v).unwrap() };
    let plain = spec(json!({"replicas": 9}));
    assert_eq!(plain.effective_replicas(), 9);
    assert_eq!(plain.replicas_clamp_note(), None);
    let within = spec(json!({"replicas": 3, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}));
    assert_eq!(within.effective_replicas(), 3);
    assert_eq!(within.replicas_clamp_note(), None);
    let above = spec(json!({"replicas": 9, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}));
    assert_eq!(above.effective_replicas(), 4);
    let note = above.replicas_clamp_note().unwrap();
    assert!(
        note.contains("so 4 run") && note.contains("autoscaling.maxReplicas (4)"),
        "{note}"
    );
    let below = spec(json!({"replicas": 0, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}));
    assert_eq!(below.effective_replicas(), 2);
    assert!(below
        .replicas_clamp_note()
        .unwrap()
        .contains("autoscaling.minReplicas (2)"));
}
