//! The PromQL for a cluster's total open connections: the default query over its pods,
//! or the user's `autoscaling.query` with `{{namespace}}` and `{{name}}` filled in. Pure.
//! The built-in autoscaler runs it (`control_loop`, through `sources::prometheus`), and
//! the KEDA ScaledObject's Prometheus trigger asks the same (`crate::build`).

use crate::crd::ChatCluster;

/// The PromQL the autoscaler runs for `cluster`: the spec's `query` with `{{namespace}}`
/// and `{{name}}` filled in, or the default over this cluster's pods.
pub fn connections_query(cluster: &ChatCluster) -> String {
    let ns = cluster.metadata.namespace.as_deref().unwrap_or_default();
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    match cluster
        .spec
        .autoscaling
        .as_ref()
        .and_then(|a| a.query.as_deref())
    {
        Some(template) => render_query(template, ns, name),
        None => default_query(ns, name),
    }
}

/// The query for a cluster's total open connections when the user gives none:
/// `sum(chat_connections{namespace="NS", pod=~"NAME-[0-9]+"})`.
///
/// It relies on the labels a standard pod scrape gives every series: a
/// `kubernetes_sd_configs` job with `role: pod` and the usual relabeling
/// (`__meta_kubernetes_namespace` → `namespace`, `__meta_kubernetes_pod_name` → `pod`,
/// as in Prometheus' example configuration and the community Helm chart's
/// `kubernetes-pods` job, which scrapes the `prometheus.io/scrape` annotation the
/// operator puts on the pods), or a Prometheus Operator PodMonitor, which sets both labels
/// itself. `NAME-[0-9]+` is exactly the StatefulSet's pods (`chat-0`, `chat-1`, ...), not
/// another cluster whose name merely starts with this one's (`chat-eu-0`). The `sum`
/// makes one series of the per-pod gauges; a scrape that names the labels differently
/// needs a user query (see [`render_query`]).
pub fn default_query(namespace: &str, name: &str) -> String {
    format!(
        "sum(chat_connections{{namespace=\"{}\", pod=~\"{}-[0-9]+\"}})",
        escape_label_value(namespace),
        escape_label_value(name)
    )
}

/// A user query with `{{namespace}}` and `{{name}}` replaced by the ChatCluster's
/// namespace and name, so one query serves every cluster, e.g.
/// `sum(chat_connections{k8s_namespace="{{namespace}}", app="{{name}}"})`. The values
/// are inserted as they are (Kubernetes names hold no quote or backslash); any other
/// text, PromQL's own braces included, is left alone.
pub fn render_query(template: &str, namespace: &str, name: &str) -> String {
    template
        .replace("{{namespace}}", namespace)
        .replace("{{name}}", name)
}

/// PromQL string-literal escaping for a label value in double quotes. Kubernetes names
/// never need it; it keeps [`default_query`] well-formed whatever it is given.
fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_query_sums_the_clusters_pods_over_a_standard_pod_scrape() {
        assert_eq!(
            default_query("chat", "chat"),
            r#"sum(chat_connections{namespace="chat", pod=~"chat-[0-9]+"})"#
        );
        assert_eq!(
            default_query("prod-eu", "lobby"),
            r#"sum(chat_connections{namespace="prod-eu", pod=~"lobby-[0-9]+"})"#
        );
        // Not a Kubernetes name, but the query stays one PromQL string literal.
        assert_eq!(
            default_query(r#"a"b"#, r"c\d"),
            r#"sum(chat_connections{namespace="a\"b", pod=~"c\\d-[0-9]+"})"#
        );
    }

    #[test]
    fn templates_replace_every_namespace_and_name_placeholder() {
        let t = r#"sum(chat_connections{k8s_ns="{{namespace}}", app="{{name}}"}) or vector(0) * count(up{job="{{name}}"})"#;
        assert_eq!(
            render_query(t, "prod", "lobby"),
            r#"sum(chat_connections{k8s_ns="prod", app="lobby"}) or vector(0) * count(up{job="lobby"})"#
        );
        // The default query written as a template renders to the default query.
        let t = r#"sum(chat_connections{namespace="{{namespace}}", pod=~"{{name}}-[0-9]+"})"#;
        assert_eq!(
            render_query(t, "chat", "chat"),
            default_query("chat", "chat")
        );
        // No placeholders, single braces and unknown placeholders are left alone.
        assert_eq!(render_query("sum(x{a=\"b\"})", "n", "m"), "sum(x{a=\"b\"})");
        assert_eq!(render_query("{{pod}} {name}", "n", "m"), "{{pod}} {name}");
    }
}
