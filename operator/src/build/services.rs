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
