//! A real Prometheus (on 127.0.0.1, or an address of the caller's) for the suites: the pinned build of
//! e2e/k8s/build-prometheus.sh, its config and TSDB in a scratch directory, stopped by PID
//! (SIGTERM, then SIGKILL) with the directory removed on drop. Its log is printed when a
//! test fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::binaries::path_from_env_or_script;
use super::http;
use super::process::{free_port, terminate, ScratchDir};

/// The pinned Prometheus binary (`CHATCLUSTER_PROMETHEUS`, which the README's test command
/// sets, or built by the script on first use).
pub fn prometheus_binary() -> Result<PathBuf> {
    path_from_env_or_script("CHATCLUSTER_PROMETHEUS", "e2e/k8s/build-prometheus.sh", &[]).context(
        "Prometheus: set CHATCLUSTER_PROMETHEUS or let e2e/k8s/build-prometheus.sh build it",
    )
}

/// A scrape configuration (1 s interval) that discovers the chat-server pods of
/// `namespace` through `kubernetes_sd_configs` (pod role, with `kubeconfig`; `None` for a
/// Prometheus running as a pod, which uses its ServiceAccount) and relabels
/// them as a standard pod scrape does: pods annotated `prometheus.io/scrape: "true"`, their
/// container port named `admin`, `namespace` and `pod` labels (what the autoscaler's
/// default query expects).
pub fn pod_scrape_config(kubeconfig: Option<&Path>, namespace: &str) -> String {
    let kubeconfig = kubeconfig
        .map(|k| format!("        kubeconfig_file: {}\n", k.display()))
        .unwrap_or_default();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: chat-pods\n\
         \x20   kubernetes_sd_configs:\n\
         \x20     - role: pod\n\
         {kubeconfig}\
         \x20       namespaces:\n\
         \x20         names: [{namespace}]\n\
         \x20   relabel_configs:\n\
         \x20     - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]\n\
         \x20       action: keep\n\
         \x20       regex: 'true'\n\
         \x20     - source_labels: [__meta_kubernetes_pod_container_port_name]\n\
         \x20       action: keep\n\
         \x20       regex: admin\n\
         \x20     - source_labels: [__meta_kubernetes_namespace]\n\
         \x20       target_label: namespace\n\
         \x20     - source_labels: [__meta_kubernetes_pod_name]\n\
         \x20       target_label: pod\n"
    )
}

pub struct PrometheusProcess {
    child: Option<Child>,
    /// `http://ADDRESS:PORT`.
    pub base_url: String,
    addr: SocketAddr,
    log: PathBuf,
    /// Removed on drop, after the process is stopped (fields drop after `drop`).
    dir: Option<ScratchDir>,
}

impl PrometheusProcess {
    /// Starts Prometheus with `config` (YAML) on 127.0.0.1 and waits for `/-/ready` (at
    /// most 60 s). Blocking: call it before the test's clients start.
    pub fn start(binary: &Path, config: &str) -> Result<PrometheusProcess> {
        Self::start_on(binary, config, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// [`PrometheusProcess::start`] listening on `ip` (e.g. a node address that pods
    /// reach, inside a test's network namespace).
    pub fn start_on(binary: &Path, config: &str, ip: IpAddr) -> Result<PrometheusProcess> {
        let mut dir = ScratchDir::new("prometheus")?;
        let config_file = dir.0.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = dir.0.join("prometheus.log");
        // A port picked then released may be taken in between: a few attempts, each
        // only if Prometheus exited (a port conflict), never on a slow start.
        for _attempt in 0..3 {
            let port = free_port()?;
            let file = std::fs::File::create(&log)?;
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join("data").display()
                ))
                .arg(format!(
                    "--web.listen-address={}",
                    SocketAddr::new(ip, port)
                ))
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut p = PrometheusProcess {
                child: Some(child),
                base_url: format!("http://{}", SocketAddr::new(ip, port)),
                addr: SocketAddr::new(ip, port),
                log: log.clone(),
                dir: Some(dir),
            };
            match p.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return Ok(p),
                Err(e) if p.exited() => {
                    eprintln!("Prometheus exited ({e:#}); log:\n{}", p.log_text());
                    dir = p.dir.take().context("scratch directory")?;
                }
                Err(e) => bail!("{e:#}; Prometheus log:\n{}", p.log_text()),
            }
        }
        bail!("Prometheus did not start in 3 attempts")
    }

    fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let addr = self.addr;
        let deadline = Instant::now() + within;
        loop {
            if self.exited() {
                bail!("Prometheus exited before it was ready");
            }
            if http::status_of(addr, "/-/ready").0 == 200 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("Prometheus not ready within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the process has exited; an exited child is reaped and forgotten, so its
    /// PID (free for reuse) is never signalled.
    fn exited(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                self.child = None;
            }
        }
        self.child.is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- Prometheus log (last 40 lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
