//! The cluster the Kubernetes suites run against (the simulated control plane from
//! `e2e/k8s/start-cluster.sh`, or any cluster named by `CHATCLUSTER_KUBECONFIG`), shared
//! by one test binary; kubectl with its kubeconfig; a namespace per test; the pinned
//! helm; and what the conditions of an object say.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::harness::binaries::{path_from_env_or_script, repo_root};
use crate::harness::process::free_port;

/// A cluster the suite can use: its admin kubeconfig and a kubectl of a matching version.
pub struct TestCluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();

/// The cluster shared by every test of one test binary.
///
/// `CHATCLUSTER_KUBECONFIG` (and `CHATCLUSTER_KUBECTL`, default `kubectl`) name a running
/// cluster, as the README's test command sets them. Without them, the simulated cluster
/// is started here (building the control plane if needed) and a watchdog stops it when
/// this test process exits, whatever way it exits.
pub fn shared_cluster() -> Result<&'static TestCluster> {
    SHARED
        .get_or_init(|| start_or_reuse().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("no cluster for the Kubernetes suite: {e}"))
}

fn start_or_reuse() -> Result<TestCluster> {
    if let Some(kubeconfig) = std::env::var_os("CHATCLUSTER_KUBECONFIG") {
        let kubectl = std::env::var_os("CHATCLUSTER_KUBECTL").unwrap_or_else(|| "kubectl".into());
        return Ok(TestCluster {
            kubeconfig: kubeconfig.into(),
            kubectl: kubectl.into(),
        });
    }
    let scripts = repo_root().join("e2e/k8s");
    let state = std::env::temp_dir().join(format!("chatcluster-k8s-{}", std::process::id()));
    let mut start = Command::new("bash");
    start.arg(scripts.join("start-cluster.sh")).arg(&state);
    // Free ports of our own: another test binary's cluster may still be shutting down.
    for var in [
        "K8S_E2E_ETCD_PORT",
        "K8S_E2E_ETCD_PEER_PORT",
        "K8S_E2E_API_PORT",
        "K8S_E2E_KCM_PORT",
        "K8S_E2E_SCHEDULER_PORT",
        "K8S_E2E_KWOK_PORT",
    ] {
        start.env(var, free_port()?.to_string());
    }
    let out = start
        .stderr(Stdio::inherit())
        .output()
        .context("running e2e/k8s/start-cluster.sh")?;
    // Stop the cluster and remove its state directory when this process ends, even on a
    // panic or a kill.
    Command::new("bash")
        .args([
            "-c",
            "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; bash \"$1\" \"$2\"; rm -rf \"$2\"",
        ])
        .arg(std::process::id().to_string())
        .arg(scripts.join("stop-cluster.sh"))
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the cluster watchdog")?;
    if !out.status.success() {
        bail!("start-cluster.sh failed ({})", out.status);
    }
    Ok(TestCluster {
        kubeconfig: state.join("kubeconfig"),
        kubectl: state.join("kubectl"),
    })
}

impl TestCluster {
    /// An admin client from the cluster's kubeconfig.
    pub async fn client(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Runs kubectl with this cluster's kubeconfig; `stdin` is piped in when given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl's stdout and stderr, or the error that kept it from running: for a failure
    /// message, where whatever kubectl says is worth showing.
    pub fn kubectl_text(&self, args: &[&str]) -> String {
        self.kubectl(args, None)
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| e.to_string())
    }

    /// kubectl `args` (ending in `-o json`) parsed, or None when kubectl fails (e.g. the
    /// object does not exist).
    pub fn kubectl_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let out = self.kubectl(args, None).ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Installs (or updates) the ChatCluster CRD from crds/ and waits until it is served.
    pub fn install_crds(&self) -> Result<()> {
        let crd = repo_root().join("crds/chatcluster.yaml");
        self.kubectl_ok(
            &["apply", "--server-side", "--force-conflicts", "-f"]
                .into_iter()
                .chain([crd.to_str().context("CRD path")?])
                .collect::<Vec<_>>(),
            None,
        )?;
        self.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "crd/chatclusters.chatcluster.dev",
                "--timeout=60s",
            ],
            None,
        )?;
        Ok(())
    }
}

/// The pinned helm binary: `CHATCLUSTER_HELM`, or built (once per test process) by
/// e2e/k8s/build-helm.sh.
pub fn helm_binary() -> Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        path_from_env_or_script("CHATCLUSTER_HELM", "e2e/k8s/build-helm.sh", &[])
            .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

impl TestCluster {
    /// A kubeconfig for ServiceAccount `ns/name`, with a token from the TokenRequest API:
    /// a client holding it has exactly that ServiceAccount's permissions.
    pub fn service_account_kubeconfig(&self, ns: &str, name: &str, path: &Path) -> Result<()> {
        let token = self.kubectl_ok(&["create", "token", name, "-n", ns, "--duration=1h"], None)?;
        let admin = Kubeconfig::read_from(&self.kubeconfig)?;
        let cluster = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .context("the admin kubeconfig names no cluster")?;
        // Same server and CA as the admin's; only the credentials change. JSON is YAML.
        let out = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": cluster.server,
                "certificate-authority-data": cluster.certificate_authority_data,
                "certificate-authority": cluster.certificate_authority,
            }}],
            "users": [{"name": name, "user": {"token": token.trim()}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name}}],
            "current-context": "e2e",
        })
        .to_string();
        std::fs::write(path, out)?;
        Ok(())
    }
}

/// What the cluster's pods are: processes on real nodes, or simulated by KWOK (whose
/// nodes carry the `kwok.x-k8s.io/node: fake` annotation). Data-plane checks (dialling
/// pods through an ingress) run only on real pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodKind {
    Real,
    Simulated,
}

pub async fn pod_kind(client: &Client) -> Result<PodKind> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await?;
    if list.items.is_empty() {
        bail!("the cluster has no nodes");
    }
    let simulated = list.items.iter().all(|n| {
        n.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kwok.x-k8s.io/node"))
            .is_some_and(|v| v == "fake")
    });
    Ok(if simulated {
        PodKind::Simulated
    } else {
        PodKind::Real
    })
}

/// A namespace for one test, deleted (without waiting) when dropped.
pub struct TestNamespace<'a> {
    pub name: String,
    cluster: &'a TestCluster,
}

impl<'a> TestNamespace<'a> {
    pub async fn create(cluster: &'a TestCluster, client: &Client, tag: &str) -> Result<Self> {
        let name = format!("e2e-{tag}-{}", std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name },
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace { name, cluster })
    }
}

impl TestNamespace<'_> {
    /// `kubectl -n NAMESPACE args`; `stdin` is piped in when given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.cluster.kubectl(&self.scoped(args), stdin)
    }

    /// `kubectl -n NAMESPACE args` that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        self.cluster.kubectl_ok(&self.scoped(args), stdin)
    }

    /// `kubectl -n NAMESPACE get KIND NAME -o json`, or None when it does not exist.
    pub fn get(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        self.cluster
            .kubectl_json(&["-n", &self.name, "get", kind, name, "-o", "json"])
    }

    /// Every Event in the namespace (`kubectl get events -o json`'s items); none when
    /// kubectl fails or answers something else.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.kubectl_ok(&["get", "events", "-o", "json"], None)
            .ok()
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The decoded value of `key` in Secret `name` (panics when either is missing).
    pub fn secret_value(&self, name: &str, key: &str) -> String {
        let secret = self.get("secret", name).expect("Secret");
        let b64 = secret["data"][key].as_str().expect("key").to_owned();
        let out = std::process::Command::new("base64")
            .args(["-d"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
                c.wait_with_output()
            })
            .expect("base64 -d");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn scoped<'s>(&'s self, args: &[&'s str]) -> Vec<&'s str> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        all
    }
}

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// Whether ChatCluster `cc` is Ready at its generation: the Ready condition is True for
/// the current generation, and so is the status as a whole.
pub fn ready_at_generation(cc: &serde_json::Value) -> bool {
    let generation = cc["metadata"]["generation"].as_i64();
    condition(cc, "Ready")
        .is_some_and(|c| c["status"] == "True" && c["observedGeneration"].as_i64() == generation)
        && cc["status"]["observedGeneration"].as_i64() == generation
}

/// The CRDs of KEDA's ScaledObject and the Prometheus operator's PodMonitor, as
/// e2e/k8s/fetch-crds.sh took them from those projects' pinned releases: the path of
/// `file` among them.
pub fn optional_crd(file: &str) -> String {
    let dir = path_from_env_or_script("CHATCLUSTER_OPTIONAL_CRDS", "e2e/k8s/fetch-crds.sh", &[])
        .expect("the optional CRDs (e2e/k8s/fetch-crds.sh)");
    dir.join(file).display().to_string()
}

/// The condition of type `kind` in a ChatCluster's (or any object's) status.
pub fn condition<'a>(cc: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    cc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}
