//! The Helm charts: lint and render with default and non-default values, reject wrong
//! values with the schema's message, install into the real API server of the simulated
//! control plane, and prove the operator chart's RBAC by running the operator with the
//! chart's ServiceAccount token through the main scenario.

// A heavy suite: compiled only with CHATCLUSTER_HEAVY_TESTS=1 (e2e/build.rs).
#![cfg(chatcluster_heavy)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chatcluster_e2e::harness::binaries::{repo_root, workspace_binary};
use chatcluster_e2e::harness::k8s::cluster::{
    condition, helm_binary, shared_cluster, TestNamespace,
};
use chatcluster_e2e::harness::k8s::operator::{OperatorOptions, OperatorProcess};
use chatcluster_e2e::harness::process::ScratchDir;
use chatcluster_e2e::wait::eventually;
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");
const OPERATOR_CHART: &str = "charts/chatcluster-operator";
const CLUSTER_CHART: &str = "charts/chatcluster";
const WITHIN: Duration = Duration::from_secs(90);

fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let mut cmd = Command::new(helm_binary().expect("helm"));
    cmd.current_dir(repo_root()).args(args);
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    cmd.output().expect("helm runs")
}

fn helm_ok(args: &[&str], kubeconfig: Option<&Path>) -> String {
    let out = helm(args, kubeconfig);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn non_default(chart: &str) -> String {
    format!("{chart}/ci/non-default-values.yaml")
}

/// The documents of a `helm template` output, as JSON values.
fn render(args: &[&str]) -> Vec<Value> {
    let text = helm_ok(&[&["template"], args].concat(), None);
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn env_of(deployment: &Value, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn the_chart_crd_is_a_copy_of_crds_dir() {
    let root = repo_root();
    let chart =
        std::fs::read_to_string(root.join(OPERATOR_CHART).join("files/chatcluster.crd.yaml"))
            .expect("chart CRD");
    let crd = std::fs::read_to_string(root.join("crds/chatcluster.yaml")).expect("crds/");
    assert!(
        chart == crd,
        "charts/chatcluster-operator/files/chatcluster.crd.yaml differs from crds/chatcluster.yaml: \
         copy it over (cp crds/chatcluster.yaml {OPERATOR_CHART}/files/chatcluster.crd.yaml)"
    );
}

#[test]
fn both_charts_lint_with_default_and_non_default_values() {
    for chart in [OPERATOR_CHART, CLUSTER_CHART] {
        helm_ok(&["lint", "--strict", chart], None);
        helm_ok(
            &["lint", "--strict", chart, "-f", &non_default(chart)],
            None,
        );
    }
}

#[test]
fn the_operator_chart_renders_its_defaults() {
    let docs = render(&["op", OPERATOR_CHART, "--namespace", "chatcluster-system"]);
    let crd = find(&docs, "CustomResourceDefinition").expect("the CRD is installed by default");
    assert_eq!(crd["metadata"]["name"], "chatclusters.chatcluster.dev");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "kept on uninstall"
    );
    assert!(
        find(&docs, "ConfigMap").is_none(),
        "no dashboard ConfigMap unless grafanaDashboard.enabled"
    );
    let deployment = find(&docs, "Deployment").expect("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(env_of(deployment, "WATCH_NAMESPACE").as_deref(), Some(""));
    assert_eq!(
        env_of(deployment, "OPERATOR_LEASE_NAME").as_deref(),
        Some("op-chatcluster-operator")
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(pod["serviceAccountName"], "op-chatcluster-operator");
    for d in &docs {
        let labels = &d["metadata"]["labels"];
        if d["kind"] != "CustomResourceDefinition" || labels.is_object() {
            assert_eq!(
                labels["app.kubernetes.io/name"], "chatcluster-operator",
                "{}",
                d["kind"]
            );
            assert_eq!(
                labels["app.kubernetes.io/managed-by"], "Helm",
                "{}",
                d["kind"]
            );
        }
    }
    // Least privilege: no wildcard anywhere, and Leases only in the operator's namespace.
    let cluster_role = find(&docs, "ClusterRole").expect("ClusterRole");
    let rules = cluster_role["rules"].to_string();
    assert!(!rules.contains("\"*\""), "no wildcards: {rules}");
    // Secrets: `get` (to check the ones a ChatCluster names) and `create` (the generated
    // admin token and Redis password), never list, watch or update.
    let secret_verbs: Vec<&Value> = cluster_role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["resources"].to_string().contains("secrets"))
        .map(|r| &r["verbs"])
        .collect();
    assert_eq!(
        secret_verbs,
        [&serde_json::json!(["get", "create"])],
        "Secrets: get and create only, in a rule of their own: {rules}"
    );
    assert!(!rules.contains("leases"), "Leases are namespaced: {rules}");
    let role = find(&docs, "Role").expect("leader-election Role");
    assert_eq!(role["metadata"]["namespace"], "chatcluster-system");
    assert!(role["rules"].to_string().contains("leases"));
    assert!(find(&docs, "ServiceMonitor").is_none(), "off by default");
    assert!(find(&docs, "Service").is_some(), "metrics Service");
}

#[test]
fn the_operator_chart_renders_non_default_values() {
    let docs = render(&["op", OPERATOR_CHART, "-f", &non_default(OPERATOR_CHART)]);
    assert!(
        find(&docs, "CustomResourceDefinition").is_none(),
        "crds.install=false leaves the CRD out"
    );
    let deployment = find(&docs, "Deployment").expect("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        env_of(deployment, "WATCH_NAMESPACE").as_deref(),
        Some("chat")
    );
    assert_eq!(
        env_of(deployment, "OPERATOR_LEASE_SECONDS").as_deref(),
        Some("20")
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/chatcluster/operator:0.1.0-rc1"
    );
    // Watching one namespace: a Role and RoleBinding there, no cluster-wide grant.
    assert!(find(&docs, "ClusterRole").is_none());
    assert!(find(&docs, "ClusterRoleBinding").is_none());
    let scoped = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "chat")
        .expect("a Role in the watched namespace");
    assert!(scoped["rules"].to_string().contains("chatclusters"));
    assert!(docs
        .iter()
        .any(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "chat"));
    let monitor = find(&docs, "ServiceMonitor").expect("ServiceMonitor when enabled");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    // The Grafana dashboard, for the sidecar, carries the chart's JSON file unchanged.
    let dashboard = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == "op-chatcluster-operator-dashboard"
        })
        .expect("the dashboard ConfigMap when enabled");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(
        chatcluster_e2e::harness::binaries::repo_root()
            .join(OPERATOR_CHART)
            .join("dashboards/chatcluster.json"),
    )
    .expect("dashboard file");
    let shipped: Value = serde_json::from_str(
        dashboard["data"]["chatcluster.json"]
            .as_str()
            .expect("JSON text"),
    )
    .expect("the shipped dashboard parses");
    assert_eq!(
        shipped,
        serde_json::from_str::<Value>(&file).expect("file parses")
    );
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        find(&docs, "ServiceAccount").expect("SA")["metadata"]["name"],
        "chat-operator"
    );
}

#[test]
fn wrong_values_fail_at_install_with_a_clear_message() {
    let cases: [(&[&str], &str); 6] = [
        (&["--set", "logFormat=xml"], "/logFormat"),
        (
            &["--set", "leaderElection.leaseSeconds=1"],
            "/leaderElection/leaseSeconds",
        ),
        (
            &["--set", "replicas=3"],
            "additional properties 'replicas' not allowed",
        ),
        (
            &["--set", "watchNamespace=Not_A_Namespace"],
            "/watchNamespace",
        ),
        (&["--set", "metrics.port=80"], "/metrics/port"),
        (
            &["--set", "grafanaDashboard.namespace=Not_A_Namespace"],
            "/grafanaDashboard/namespace",
        ),
    ];
    for (args, message) in cases {
        let out = helm(&[&["template", "op", OPERATOR_CHART], args].concat(), None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in:\n{stderr}"
        );
    }
    let out = helm(
        &["template", "c", CLUSTER_CHART, "--set", "name=Bad_Name"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/name"));
}

#[test]
fn the_chatcluster_chart_renders_one_chatcluster() {
    let docs = render(&["chat", CLUSTER_CHART, "--namespace", "team-a"]);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"], "ChatCluster");
    assert_eq!(docs[0]["metadata"]["name"], "chat");
    assert_eq!(docs[0]["metadata"]["namespace"], "team-a");
    assert_eq!(docs[0]["spec"], serde_json::json!({}));
    let docs = render(&["chat", CLUSTER_CHART, "-f", &non_default(CLUSTER_CHART)]);
    assert_eq!(docs[0]["metadata"]["name"], "chat-prod");
    assert_eq!(docs[0]["spec"]["replicas"], 4);
    assert_eq!(
        docs[0]["spec"]["expose"]["ingress"]["host"],
        "chat.example.com"
    );
}

/// An installed release, uninstalled on drop (its cluster-scoped RBAC must not outlive a
/// failed test).
struct Release {
    name: String,
    namespace: String,
    kubeconfig: PathBuf,
}

impl Release {
    fn install(name: &str, namespace: &str, kubeconfig: &Path, extra: &[&str]) -> Release {
        let mut args = vec!["install", name, OPERATOR_CHART, "--namespace", namespace];
        args.extend_from_slice(extra);
        helm_ok(&args, Some(kubeconfig));
        Release {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(
            &[
                "uninstall",
                &self.name,
                "--namespace",
                &self.namespace,
                "--wait",
            ],
            Some(&self.kubeconfig),
        );
    }
}

/// A scratch file path, removed on drop.
/// `helm install` into the real API server: the CRD (kept on uninstall), RBAC and the
/// Deployment are accepted and created; KWOK runs the Deployment's pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_chart_installs_into_the_real_api_server() {
    let cluster = shared_cluster().expect("cluster");
    let client = cluster.client().await.expect("client");
    let ns = TestNamespace::create(cluster, &client, "helm-install")
        .await
        .expect("ns");
    let release = "chatcluster-operator";
    // Other tests (and suites) apply crds/ directly, so the CRD exists or appears any
    // moment: make sure it exists, then mark it as this release's, as a team adopting
    // the chart would, so Helm takes it over.
    cluster.install_crds().expect("CRD");
    cluster
        .kubectl_ok(
            &[
                "annotate",
                "--overwrite",
                "crd",
                "chatclusters.chatcluster.dev",
                &format!("meta.helm.sh/release-name={release}"),
                &format!("meta.helm.sh/release-namespace={}", ns.name),
            ],
            None,
        )
        .expect("annotate");
    cluster
        .kubectl_ok(
            &[
                "label",
                "--overwrite",
                "crd",
                "chatclusters.chatcluster.dev",
                "app.kubernetes.io/managed-by=Helm",
            ],
            None,
        )
        .expect("label");
    let installed = Release::install(
        release,
        &ns.name,
        &cluster.kubeconfig,
        &["--wait", "--timeout", "120s"],
    );
    let crd = cluster
        .kubectl_json(&["get", "crd", "chatclusters.chatcluster.dev", "-o", "json"])
        .expect("CRD");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(cluster
        .kubectl_json(&["get", "clusterrole", release, "-o", "json"])
        .is_some());
    assert!(cluster
        .kubectl_json(&["get", "clusterrolebinding", release, "-o", "json"])
        .is_some());
    assert!(ns
        .get("role", &format!("{release}-leader-election"))
        .is_some());
    let deployment = ns.get("deployment", release).expect("Deployment");
    assert_eq!(
        deployment["status"]["availableReplicas"], 1,
        "{}",
        deployment["status"]
    );
    let notes = helm_ok(
        &["status", release, "--namespace", &ns.name],
        Some(&cluster.kubeconfig),
    );
    assert!(
        notes.contains("kubectl get chat -w"),
        "NOTES tell what to do next:\n{notes}"
    );

    drop(installed);
    assert!(
        cluster
            .kubectl_json(&["get", "crd", "chatclusters.chatcluster.dev", "-o", "json"])
            .is_some(),
        "the CRD is kept on uninstall"
    );
    assert!(cluster
        .kubectl_json(&["get", "clusterrole", release, "-o", "json"])
        .is_none());
}

/// The operator, run with the token of the chart's ServiceAccount, takes a ChatCluster
/// through the main scenario without a single `forbidden`; and the ServiceAccount cannot
/// do what the operator never needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_is_enough_for_the_operator_and_no_more() {
    let cluster = shared_cluster().expect("cluster");
    cluster.install_crds().expect("CRD");
    let client = cluster.client().await.expect("client");
    let ops = TestNamespace::create(cluster, &client, "helm-rbac")
        .await
        .expect("ns");
    let apps = TestNamespace::create(cluster, &client, "helm-rbac-apps")
        .await
        .expect("ns");
    // Unique per run: ClusterRoles are cluster-wide.
    let release = format!("rbac-{}", std::process::id());
    let _installed = Release::install(
        &release,
        &ops.name,
        &cluster.kubeconfig,
        &[
            "--set",
            "crds.install=false",
            "--set",
            "metrics.service.enabled=false",
        ],
    );
    let sa = format!("{release}-chatcluster-operator");
    let scratch = ScratchDir::new("sa").expect("scratch dir");
    let kubeconfig = scratch.0.join("kubeconfig");
    cluster
        .service_account_kubeconfig(&ops.name, &sa, &kubeconfig)
        .expect("token kubeconfig");

    // Least privilege, asked of the API server's own authorizer.
    let subject = format!("system:serviceaccount:{}:{sa}", ops.name);
    for (verb_resource, namespace, allowed) in [
        ("list chatclusters.chatcluster.dev", "", true),
        (
            "patch chatclusters.chatcluster.dev --subresource=status",
            &apps.name as &str,
            true,
        ),
        (
            "patch chatclusters.chatcluster.dev --subresource=scale",
            &apps.name,
            true,
        ),
        ("delete chatclusters.chatcluster.dev", &apps.name, false),
        ("get secrets", &apps.name, true),
        ("create secrets", &apps.name, true),
        ("update secrets", &apps.name, false),
        ("list secrets", &apps.name, false),
        ("watch secrets", &apps.name, false),
        ("create pods", &apps.name, false),
        ("update leases.coordination.k8s.io", &ops.name, true),
        ("update leases.coordination.k8s.io", &apps.name, false),
        ("create statefulsets.apps", &apps.name, true),
        // KEDA's ScaledObject and the PodMonitor: applied, and deleted as orphans (the
        // scenario below does not ask for them, so they are checked here).
        ("patch scaledobjects.keda.sh", &apps.name, true),
        ("delete scaledobjects.keda.sh", &apps.name, true),
        ("list scaledobjects.keda.sh", &apps.name, true),
        ("patch podmonitors.monitoring.coreos.com", &apps.name, true),
        ("delete podmonitors.monitoring.coreos.com", &apps.name, true),
        ("update scaledobjects.keda.sh", &apps.name, false),
    ] {
        // A SubjectAccessReview names the API group itself, so it also answers for kinds
        // whose CRDs this cluster does not have (KEDA, PodMonitor), which `kubectl auth
        // can-i` would first have to find through discovery.
        let mut words = verb_resource.split(' ');
        let verb = words.next().expect("verb");
        let target = words.next().expect("resource");
        let (resource, group) = target.split_once('.').unwrap_or((target, ""));
        let subresource = words
            .next()
            .and_then(|w| w.strip_prefix("--subresource="))
            .unwrap_or("");
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": subject,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", ops.name), "system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace, "verb": verb, "group": group,
                    "resource": resource, "subresource": subresource,
                },
            },
        });
        let answer = cluster
            .kubectl_ok(
                &["create", "-o", "json", "-f", "-"],
                Some(&review.to_string()),
            )
            .expect("SubjectAccessReview");
        let answer: Value = serde_json::from_str(&answer).expect("review JSON");
        assert_eq!(
            answer["status"]["allowed"] == true,
            allowed,
            "can {subject} {verb_resource} in {namespace:?}? got {}",
            answer["status"]
        );
    }

    let binary = workspace_binary(LOADGEN, "chatcluster-operator").expect("operator binary");
    let operator = OperatorProcess::start(
        &binary,
        cluster,
        &OperatorOptions {
            watch_namespace: "",
            lease_namespace: &ops.name,
            lease_name: &sa,
            lease_seconds: 15,
            identity: "rbac-check",
            kubeconfig: Some(&kubeconfig),
            run_as: None,
        },
    )
    .expect("operator");
    let log = || format!("\n--- operator log ---\n{}", operator.log_text());
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        apps.kubectl_ok(args, stdin)
            .unwrap_or_else(|e| panic!("{e}{}", log()))
    };
    // A JWT Secret the operator must read (get) before it applies anything.
    let jwt_key = "r".repeat(32);
    kubectl(
        &[
            "create",
            "secret",
            "generic",
            "chat-jwt",
            &format!("--from-literal=hs256Secret={jwt_key}"),
        ],
        None,
    );
    let manifest =
        "apiVersion: chatcluster.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: chat\n\
                    spec:\n  replicas: 2\n  expose:\n    ingress:\n      host: chat.rbac.example\n\
                    \x20 auth:\n    jwtSecretName: chat-jwt\n";
    kubectl(&["apply", "-f", "-"], Some(manifest));
    let ready = |replicas: i64| {
        let kubectl = &kubectl;
        async move {
            eventually(
                &format!("Ready with {replicas} replicas"),
                WITHIN,
                || async {
                    let cc: Value = serde_json::from_str(&kubectl(
                        &["get", "chatcluster", "chat", "-o", "json"],
                        None,
                    ))?;
                    let ok = condition(&cc, "Ready").is_some_and(|c| c["status"] == "True")
                        && cc["status"]["replicas"] == replicas
                        && cc["status"]["observedGeneration"] == cc["metadata"]["generation"];
                    Ok(ok.then_some(()))
                },
            )
            .await
        }
    };
    ready(2).await.unwrap_or_else(|e| panic!("{e}{}", log()));
    // Scale to one (the PDB is deleted as an orphan), drop the Ingress, delete a child.
    kubectl(&["scale", "chatcluster/chat", "--replicas=1"], None);
    kubectl(
        &[
            "patch",
            "chatcluster",
            "chat",
            "--type=merge",
            "-p",
            r#"{"spec":{"expose":null}}"#,
        ],
        None,
    );
    ready(1).await.unwrap_or_else(|e| panic!("{e}{}", log()));
    eventually("the PDB and the Ingress to go", WITHIN, || async {
        let left = kubectl(&["get", "pdb,ingress", "-o", "name"], None);
        Ok(left.trim().is_empty().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}{}", log()));
    kubectl(&["delete", "configmap", "chat-config"], None);
    eventually("the ConfigMap to come back", WITHIN, || async {
        Ok(apps
            .kubectl(&["get", "configmap", "chat-config"], None)?
            .status
            .success()
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}{}", log()));
    let events = kubectl(
        &[
            "get",
            "events",
            "--field-selector",
            "reportingComponent=chatcluster-operator",
            "-o",
            "name",
        ],
        None,
    );
    assert!(
        !events.trim().is_empty(),
        "the operator published Events{}",
        log()
    );
    // The ServiceAccount's full name shows up in the log only in an RBAC denial
    // (`... is forbidden: User "system:serviceaccount:NS:SA" cannot ...`), whether it
    // hit a reconcile or a watch (the operator logs both).
    let text = operator.log_text();
    assert!(
        !text.contains(&subject),
        "the chart's RBAC refused something the operator does:{}",
        log()
    );
    assert!(
        operator.is_leader(),
        "it held the Lease in its namespace{}",
        log()
    );
    drop(operator);
}
