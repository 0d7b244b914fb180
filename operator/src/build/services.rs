//! The chat-server Services: headless (stable pod names) and the client Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

pub(super) fn service_port(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Stable per-pod DNS names for the StatefulSet. Public port only: the admin port is
/// reached on pod IPs (by the operator and Prometheus), never through a Service.
pub(super) fn headless_service(n: &Names) -> Service {
    Service {
        metadata: n.meta(format!("{}-headless", n.name), "chat-server"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(n.name, "chat-server")),
            ports: Some(vec![service_port("ws", PUBLIC_PORT, "ws")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// What clients and the ingress use: the public port only, never the admin port.
pub(super) fn client_service(n: &Names) -> Service {
    Service {
        metadata: n.meta(n.name.to_owned(), "chat-server"),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(n.name, "chat-server")),
            ports: Some(vec![service_port("ws", 80, "ws")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `NAME-api`: the server API port of the chat pods (`spec.api.enabled`), for the
/// application's backend. A Service of its own, not a port on `NAME`: what routes
/// clients in (Ingress, HTTPRoute) points at `NAME`, and must never reach the API.
/// Labelled with component `api`, so the orphan stage finds it once the API is off.
pub(super) fn api_service(n: &Names) -> Service {
    Service {
        metadata: n.meta(format!("{}-api", n.name), API_COMPONENT),
        spec: Some(ServiceSpec {
            // Set, not left to the default, so the operator owns the field: a change to
            // LoadBalancer or NodePort by anyone else is put back at the next apply.
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(n.name, "chat-server")),
            ports: Some(vec![service_port("api", API_PORT, "api")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use crate::build::test_cluster as cluster;
    use crate::build::{build, selector_labels, BuildContext, API_PORT};

    #[test]
    fn the_api_service_selects_the_chat_pods_on_the_api_port_only_when_enabled() {
        let off = build(&cluster(serde_json::json!({})), BuildContext::default()).unwrap();
        assert!(off.api_service.is_none(), "off by default");
        let on = build(
            &cluster(serde_json::json!({"api": {"enabled": true}})),
            BuildContext::default(),
        )
        .unwrap();
        let svc = on.api_service.expect("a Service when enabled");
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-api"));
        assert_eq!(
            svc.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
            "api",
            "its own component, for the orphan stage"
        );
        let spec = svc.spec.unwrap();
        assert_eq!(
            spec.type_.as_deref(),
            Some("ClusterIP"),
            "in-cluster only, owned by the operator"
        );
        assert_eq!(
            spec.selector.unwrap(),
            selector_labels("chat", "chat-server")
        );
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("api"));
        assert_eq!(ports[0].port, API_PORT);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("api".into()))
        );
        // The client Service and the headless one stay public-port only.
        for other in [&on.client_service, &on.headless_service] {
            let ports = other.spec.as_ref().unwrap().ports.as_ref().unwrap();
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].name.as_deref(), Some("ws"));
        }
    }
}
