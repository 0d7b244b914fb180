//! How clients reach the chat pods: an Ingress or a Gateway API HTTPRoute, both sticky.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, ServiceBackendPort,
};
use serde_json::json;

use super::*;

/// ingress-nginx Ingress: cookie affinity keeps a client on its pod; long proxy timeouts
/// keep idle WebSockets open.
pub(super) fn ingress(n: &Names, spec: &crate::crd::IngressSpec) -> Ingress {
    let mut meta = n.meta(n.name.to_owned(), "chat-server");
    meta.annotations = Some(BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/affinity".to_owned(),
            "cookie".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/affinity-mode".to_owned(),
            "persistent".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/session-cookie-name".to_owned(),
            AFFINITY_COOKIE.to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/session-cookie-max-age".to_owned(),
            "86400".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".to_owned(),
            "3600".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".to_owned(),
            "3600".to_owned(),
        ),
    ]));
    Ingress {
        metadata: meta,
        spec: Some(K8sIngressSpec {
            ingress_class_name: Some(spec.class_name.clone()),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: n.name.to_owned(),
                                port: Some(ServiceBackendPort {
                                    number: Some(80),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..K8sIngressSpec::default()
        }),
        ..Ingress::default()
    }
}

/// Gateway API HTTPRoute. Without `sessionPersistence` it uses only standard-channel
/// fields; cookie session persistence is in the experimental channel (which a standard
/// install rejects), so it is opt-in.
pub(super) fn http_route(n: &Names, spec: &crate::crd::HttpRouteSpec) -> serde_json::Value {
    let meta = n.meta(n.name.to_owned(), "chat-server");
    let mut parent = json!({"name": spec.gateway_name});
    if let Some(ns) = &spec.gateway_namespace {
        parent["namespace"] = json!(ns);
    }
    let mut rule = json!({
        "backendRefs": [{"name": n.name, "port": 80}],
        "timeouts": {"request": "0s"},
    });
    if spec.session_persistence {
        rule["sessionPersistence"] = json!({"sessionName": AFFINITY_COOKIE, "type": "Cookie"});
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {
            "parentRefs": [parent],
            "hostnames": spec.hostnames,
            "rules": [rule],
        },
    })
}
