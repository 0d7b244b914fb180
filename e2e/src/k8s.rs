//! Harness for the Kubernetes suites: a cluster (the simulated control plane from
//! `e2e/k8s/start-cluster.sh`, or any cluster named by `CHATCLUSTER_KUBECONFIG`), a
//! namespace per test, and the operator binary run as a process against it.
//!
//! Every address the suite dials is the API server's (127.0.0.1 on the simulated cluster)
//! or the operator's metrics port on 127.0.0.1; Service cluster IPs are never dialled.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::cluster::{command_as, free_port, terminate};

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

/// The repository root (the e2e crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
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

/// A path the README's test command passes in `var`, or else the one that `script`
/// (relative to the repository root; it builds what is missing) prints on stdout.
pub fn path_from_env_or_script(var: &str, script: &str, args: &[&Path]) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Ok(path.into());
    }
    let out = Command::new("bash")
        .arg(repo_root().join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!("{script} failed ({})", out.status);
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
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

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// The operator binary running as a process, scoped to one namespace; stopped by PID
/// (SIGTERM, then SIGKILL) when dropped. Its log goes to a file shown on failure.
pub struct OperatorProcess {
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
}

/// How an operator process is started.
pub struct OperatorOptions<'a> {
    /// The namespace to watch; empty for every namespace.
    pub watch_namespace: &'a str,
    /// Where the Lease lives (the operator's own namespace).
    pub lease_namespace: &'a str,
    pub lease_name: &'a str,
    pub lease_seconds: u64,
    pub identity: &'a str,
    /// Run with these credentials instead of the cluster's admin kubeconfig (e.g. a
    /// ServiceAccount token, to prove a chart's RBAC).
    pub kubeconfig: Option<&'a Path>,
    /// Run as this uid:gid (through `setpriv`, so the test process must be root), as a
    /// pod's securityContext would; `None` runs as the test's own user.
    pub run_as: Option<(u32, u32)>,
}

impl OperatorProcess {
    pub fn start(binary: &Path, cluster: &TestCluster, opts: &OperatorOptions) -> Result<Self> {
        let metrics_port = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "chatcluster-operator-{}-{}.log",
            opts.identity, metrics_port
        ));
        let file = std::fs::File::create(&log)?;
        let mut command = command_as(binary, opts.run_as);
        let child = command
            .env("KUBECONFIG", opts.kubeconfig.unwrap_or(&cluster.kubeconfig))
            .env("WATCH_NAMESPACE", opts.watch_namespace)
            .env("POD_NAMESPACE", opts.lease_namespace)
            .env("POD_NAME", opts.identity)
            .env("OPERATOR_LEASE_NAME", opts.lease_name)
            .env("OPERATOR_LEASE_SECONDS", opts.lease_seconds.to_string())
            .env(
                "OPERATOR_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("OPERATOR_LOG", "info,chatcluster_operator=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(OperatorProcess {
            child: Some(child),
            metrics_port,
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The operator's own log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A Prometheus sample of the operator's /metrics (sum over label sets), if served.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let addr = format!("127.0.0.1:{}", self.metrics_port).parse().ok()?;
        let (status, body) = crate::cluster::http_status_of(addr, "/metrics");
        if status != 200 {
            return None;
        }
        let mut found = None;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *found.get_or_insert(0.0) += value;
        }
        found
    }

    pub fn is_leader(&self) -> bool {
        self.metric("chatcluster_operator_leader") == Some(1.0)
    }

    /// SIGKILL: the process gets no chance to release its Lease.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (at most 10 s) for a graceful exit; `None` if it had to be killed.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child.take()?, Duration::from_secs(10))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
        // Keep the log of a failed test (its path is in the failure message).
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The condition of type `kind` in a ChatCluster's (or any object's) status.
pub fn condition<'a>(cc: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    cc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Polls `check` until it returns `Some`, at most `within`; the error names `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            let detail = last_error.map(|e| format!(" (last error: {e:#})"));
            bail!(
                "timed out after {within:?} waiting for {what}{}",
                detail.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
