//! The operator binary run as a process against the test cluster, scoped to one
//! namespace, with its log in a file and its metrics on a loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::cluster::TestCluster;
use crate::harness::http;
use crate::harness::process::{command_as, free_port, terminate};

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
        let (status, body) = http::status_of(addr, "/metrics");
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
