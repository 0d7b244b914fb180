//! Prometheus as a pod, as users run it next to a ChatCluster: its own namespace,
//! ServiceAccount and RBAC (get, list and watch pods, cluster-wide), its configuration in
//! a ConfigMap (`kubernetes_sd_configs`, pod role, in the cluster's namespace only), a
//! Deployment of the pinned Prometheus image (`CHATCLUSTER_E2E_PROMETHEUS_IMAGE`) and a
//! Service. The ChatCluster admits it to its pods' admin port with
//! `networkPolicy.adminFromNamespaces`. The namespace goes with its [`TestNamespace`]; the
//! cluster-wide RBAC is deleted when this is dropped.

use std::time::Duration;

use anyhow::{Context, Result};

use super::cluster::{TestCluster, TestNamespace};
use crate::harness::prometheus::pod_scrape_config;

pub struct PrometheusPod<'a> {
    cluster: &'a TestCluster,
    /// Name of the ClusterRole and its binding.
    rbac: String,
    /// `http://prometheus.NAMESPACE.svc:9090`, as pods (the operator) reach it.
    pub base_url: String,
}

impl<'a> PrometheusPod<'a> {
    /// Deploys Prometheus in `namespace` to scrape the chat-server pods of `scraped`, and
    /// waits until it is ready (at most `within`).
    pub fn deploy(
        cluster: &'a TestCluster,
        namespace: &TestNamespace<'_>,
        scraped: &str,
        image: &str,
        within: Duration,
    ) -> Result<PrometheusPod<'a>> {
        let ns = &namespace.name;
        let rbac = format!("e2e-prometheus-{ns}");
        let config = serde_json::to_string(&pod_scrape_config(None, scraped))?;
        let manifest = format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: prometheus, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {rbac}}}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {rbac}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {rbac}}}
subjects:
- {{kind: ServiceAccount, name: prometheus, namespace: {ns}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: prometheus, namespace: {ns}}}
data:
  prometheus.yml: {config}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: prometheus, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: prometheus}}}}
  template:
    metadata: {{labels: {{app: prometheus}}}}
    spec:
      serviceAccountName: prometheus
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
      - name: prometheus
        image: {image}
        imagePullPolicy: IfNotPresent
        args: [--config.file=/etc/prometheus/prometheus.yml, --storage.tsdb.path=/prometheus, --web.listen-address=:9090]
        ports: [{{name: web, containerPort: 9090}}]
        readinessProbe: {{httpGet: {{path: /-/ready, port: 9090}}, periodSeconds: 1}}
        securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
        volumeMounts:
        - {{name: config, mountPath: /etc/prometheus}}
        - {{name: data, mountPath: /prometheus}}
      volumes:
      - {{name: config, configMap: {{name: prometheus}}}}
      - {{name: data, emptyDir: {{}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: prometheus, namespace: {ns}}}
spec:
  selector: {{app: prometheus}}
  ports: [{{name: web, port: 9090, targetPort: 9090}}]
"#
        );
        let pod = PrometheusPod {
            cluster,
            rbac,
            base_url: format!("http://prometheus.{ns}.svc:9090"),
        };
        cluster
            .kubectl_ok(&["apply", "-f", "-"], Some(&manifest))
            .context("applying Prometheus")?;
        let timeout = format!("--timeout={}s", within.as_secs());
        cluster
            .kubectl_ok(
                &[
                    "-n",
                    ns,
                    "rollout",
                    "status",
                    "deployment/prometheus",
                    &timeout,
                ],
                None,
            )
            .context("Prometheus did not become ready")?;
        Ok(pod)
    }
}

impl Drop for PrometheusPod<'_> {
    fn drop(&mut self) {
        for kind in ["clusterrolebinding", "clusterrole"] {
            let _ = self
                .cluster
                .kubectl(&["delete", kind, &self.rbac, "--wait=false"], None);
        }
    }
}
