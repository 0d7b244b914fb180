//! Golden-file tests of every builder. Set UPDATE_GOLDEN=1 to regenerate the files under
//! tests/golden/ on purpose, then read the diff before committing it.

use chatcluster_operator::build::{build, selector_string, BuildContext, Desired};
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
    let mut docs: Vec<String> = vec![
        serde_yaml::to_string(&d.service_account).unwrap(),
        serde_yaml::to_string(&d.config_map).unwrap(),
        serde_yaml::to_string(&d.chat_statefulset).unwrap(),
        serde_yaml::to_string(&d.headless_service).unwrap(),
        serde_yaml::to_string(&d.client_service).unwrap(),
    ];
    docs.extend(d.pdb.iter().map(|o| serde_yaml::to_string(o).unwrap()));
    docs.extend(d.ingress.iter().map(|o| serde_yaml::to_string(o).unwrap()));
    docs.extend(
        d.http_route
            .iter()
            .map(|o| serde_yaml::to_string(o).unwrap()),
    );
    docs.extend(
        d.redis_statefulset
            .iter()
            .map(|o| serde_yaml::to_string(o).unwrap()),
    );
    docs.extend(
        d.redis_service
            .iter()
            .map(|o| serde_yaml::to_string(o).unwrap()),
    );
    docs.join("---\n")
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

#[test]
fn full_cluster_objects() {
    let d = build(
        &example("full.yaml"),
        BuildContext {
            gateway_api: true,
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

#[test]
fn admin_port_is_never_exposed_to_clients() {
    let d = build(
        &example("full.yaml"),
        BuildContext {
            gateway_api: true,
            ..BuildContext::default()
        },
    )
    .unwrap();
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
    let env = d
        .chat_statefulset
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
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
}

#[test]
fn every_object_is_owned_and_labelled() {
    let d = build(
        &example("full.yaml"),
        BuildContext {
            gateway_api: true,
            ..BuildContext::default()
        },
    )
    .unwrap();
    let yaml = to_yaml(&d);
    let docs: Vec<serde_yaml::Value> = yaml
        .split("---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect();
    assert_eq!(docs.len(), 10);
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
