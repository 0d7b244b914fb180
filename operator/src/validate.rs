//! Validation, the first stage of reconcile. Pure. It re-runs the CRD's own CEL rules
//! in-process (so a cluster whose CRD was installed without them still gets clear
//! errors) and adds checks CEL cannot express, such as name lengths that the objects
//! derived from the ChatCluster's name must fit.

use std::sync::LazyLock;

use serde_json::Value;

use crate::crd::ChatCluster;

/// Longest ChatCluster name: its StatefulSet pods carry a `controller-revision-hash`
/// label of `NAME-redis-<10 characters>`, and labels are at most 63 characters.
pub const MAX_NAME_LEN: usize = 46;

/// Why a spec cannot be reconciled; becomes the Degraded condition and an Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

fn invalid(reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
    }
}

/// Validates `cluster`; `Ok` means the builders can run.
pub fn validate(cluster: &ChatCluster) -> Result<(), Invalid> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let dns1035 = name.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.ends_with('-');
    if !dns1035 {
        return Err(invalid(
            "InvalidName",
            format!("metadata.name `{name}` must start with a lowercase letter and contain only a-z, 0-9 and '-' (it names Services)"),
        ));
    }
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
    if namespace.len() + 1 + name.len() > 64 {
        return Err(invalid(
            "NameTooLong",
            format!("namespace and name together are {} characters; the Redis key prefix `{namespace}.{name}` must fit in 64", namespace.len() + 1 + name.len()),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "NameTooLong",
            format!("metadata.name is {} characters; use at most {MAX_NAME_LEN} so every derived object name fits", name.len()),
        ));
    }
    let spec =
        serde_json::to_value(&cluster.spec).map_err(|e| invalid("InvalidSpec", e.to_string()))?;
    check_cel(&spec)?;
    if cluster.spec.image.chars().any(char::is_whitespace) {
        return Err(invalid(
            "InvalidImage",
            "spec.image must not contain spaces",
        ));
    }
    if let Some(url) = cluster
        .spec
        .autoscaling
        .as_ref()
        .and_then(|a| a.prometheus_url.as_deref())
    {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "InvalidPrometheusUrl",
                format!(
                    "spec.autoscaling.prometheusUrl `{url}` must start with http:// or https://"
                ),
            ));
        }
    }
    Ok(())
}

/// The CRD's schema of `spec`, generated once: it is fixed at compile time, and
/// generating it costs a schemars run and serde round trips on every reconcile.
static SPEC_SCHEMA: LazyLock<Result<Value, String>> = LazyLock::new(|| {
    let crd = crate::crd().map_err(|e| e.to_string())?;
    let crd = serde_json::to_value(crd).map_err(|e| e.to_string())?;
    Ok(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone())
});

/// Evaluates the CRD's CEL rules on the spec, as the API server would.
fn check_cel(spec: &Value) -> Result<(), Invalid> {
    let schema = SPEC_SCHEMA
        .as_ref()
        .map_err(|e| invalid("InternalError", e.clone()))?;
    kube::core::cel::Validator::new()
        .validate(schema, spec, None)
        .map_err(|e| invalid("InvalidSpec", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatClusterSpec;
    use serde_json::json;

    fn cluster(name: &str, spec: Value) -> ChatCluster {
        let spec: ChatClusterSpec = serde_json::from_value(spec).unwrap();
        ChatCluster::new(name, spec)
    }

    #[test]
    fn trusted_proxies_must_be_ranges_or_addresses() {
        let ok = json!({"limits": {"trustedProxies": ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]}});
        assert_eq!(validate(&cluster("chat", ok)), Ok(()));
        for bad in ["10.0.0.0/33", "ingress", "10.0.0.0/8 "] {
            let spec = json!({"limits": {"trustedProxies": ["10.0.0.0/8", bad]}});
            let e = validate(&cluster("chat", spec)).unwrap_err();
            assert!(
                e.message
                    .contains("limits.trustedProxies: each entry must be"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn accepts_defaults_and_rejects_with_reasons() {
        assert_eq!(validate(&cluster("chat", json!({}))), Ok(()));
        assert_eq!(
            validate(&cluster("chat.v2", json!({}))).unwrap_err().reason,
            "InvalidName"
        );
        assert_eq!(
            validate(&cluster("1chat", json!({}))).unwrap_err().reason,
            "InvalidName"
        );
        let long = "c".repeat(47);
        assert_eq!(
            validate(&cluster(&long, json!({}))).unwrap_err().reason,
            "NameTooLong"
        );
        let e = validate(&cluster(
            "chat",
            json!({"drain": {"reconnectWindowSeconds": 50, "deadlineSeconds": 40}}),
        ))
        .unwrap_err();
        assert_eq!(e.reason, "InvalidSpec");
        assert!(
            e.message.contains("reconnectWindowSeconds must be shorter"),
            "{e}"
        );
        assert_eq!(
            validate(&cluster("chat", json!({"image": "bad image"})))
                .unwrap_err()
                .reason,
            "InvalidImage"
        );
        assert_eq!(
            validate(&cluster(
                "chat",
                json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "prometheus:9090"}})
            ))
            .unwrap_err()
            .reason,
            "InvalidPrometheusUrl"
        );
    }
}
