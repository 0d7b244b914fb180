//! The apply and orphan stages against a mocked API server: every object goes through
//! server-side apply with the operator's field manager and `force`, and only this
//! cluster's no-longer-desired objects are deleted. (The same code runs against a real
//! kube-apiserver in the Kubernetes e2e suite.)

use chatcluster_operator::build::{build, BuildContext, Served};
use chatcluster_operator::reconcile::apply::{apply, delete_orphans};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::json;

mod common;
use common::{cluster, fake_apiserver};

#[tokio::test]
async fn every_object_is_server_side_applied_with_one_field_manager() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let c = cluster(json!({
        "expose": {"ingress": {"host": "chat.example.com"}},
        "api": {"enabled": true}
    }));
    let desired = build(&c, BuildContext::default()).unwrap();
    // Server-side apply answers with the applied object; echo it.
    let server = fake_apiserver(handle, |_, _, body| (StatusCode::OK, body.clone()));
    apply(&client, "ns1", &desired).await.unwrap();
    drop(client);
    let seen = server.await.unwrap();
    let paths: Vec<&str> = seen
        .iter()
        .map(|(_, u, _)| u.split('?').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/apis/networking.k8s.io/v1/namespaces/ns1/networkpolicies/chat-redis",
            "/apis/networking.k8s.io/v1/namespaces/ns1/networkpolicies/chat",
            "/api/v1/namespaces/ns1/services/chat-redis",
            "/apis/apps/v1/namespaces/ns1/statefulsets/chat-redis",
            "/api/v1/namespaces/ns1/serviceaccounts/chat",
            "/api/v1/namespaces/ns1/configmaps/chat-config",
            "/api/v1/namespaces/ns1/services/chat-headless",
            "/api/v1/namespaces/ns1/services/chat",
            "/api/v1/namespaces/ns1/services/chat-api",
            "/apis/apps/v1/namespaces/ns1/statefulsets/chat",
            "/apis/policy/v1/namespaces/ns1/poddisruptionbudgets/chat",
            "/apis/networking.k8s.io/v1/namespaces/ns1/ingresses/chat",
        ]
    );
    for (method, uri, _) in &seen {
        assert_eq!(method, Method::PATCH, "{uri}");
        assert!(
            uri.contains("fieldManager=chatcluster-operator") && uri.contains("force=true"),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn removing_expose_deletes_only_this_clusters_ingress() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let c = cluster(json!({}));
    let desired = build(&c, BuildContext::default()).unwrap();
    let server = fake_apiserver(handle, |method, uri, _| {
        let owned = |name: &str, uid: &str| json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster", "name": "chat", "uid": uid, "controller": true}]}});
        let answer = match (method.as_str(), uri.path()) {
            ("GET", p) if p.ends_with("/ingresses") => {
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressList", "metadata": {}, "items": [owned("chat", "uid-1"), owned("other", "uid-9")]})
            }
            ("GET", p) if p.ends_with("/networkpolicies") => {
                let name = if uri.query().is_some_and(|q| q.contains("redis")) {
                    "chat-redis"
                } else {
                    "chat"
                };
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList", "metadata": {}, "items": [owned(name, "uid-1")]})
            }
            ("GET", p) if p.ends_with("/poddisruptionbudgets") => {
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudgetList", "metadata": {}, "items": [owned("chat", "uid-1")]})
            }
            ("GET", p) if p.ends_with("/statefulsets") => {
                json!({"apiVersion": "apps/v1", "kind": "StatefulSetList", "metadata": {}, "items": [owned("chat-redis", "uid-1")]})
            }
            ("GET", p) if p.ends_with("/services") => {
                let items = if uri.query().is_some_and(|q| q.contains("redis")) {
                    vec![owned("chat-redis", "uid-1")]
                } else {
                    Vec::new()
                };
                json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": items})
            }
            ("DELETE", _) => {
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
            }
            other => panic!("unexpected request {other:?}"),
        };
        (StatusCode::OK, answer)
    });
    let deleted = delete_orphans(&client, "ns1", "chat", "uid-1", &desired, Served::default())
        .await
        .unwrap();
    drop(client);
    let seen = server.await.unwrap();
    assert_eq!(
        deleted,
        vec!["Ingress/chat".to_string()],
        "the PDB, the NetworkPolicies and Redis are still desired"
    );
    let deletes: Vec<&str> = seen
        .iter()
        .filter(|(m, _, _)| m == Method::DELETE)
        .map(|(_, u, _)| u.as_str())
        .collect();
    assert_eq!(deletes.len(), 1);
    assert!(
        deletes[0].starts_with("/apis/networking.k8s.io/v1/namespaces/ns1/ingresses/chat"),
        "{deletes:?}"
    );
    let list = seen
        .iter()
        .find(|(m, u, _)| m == Method::GET && u.contains("ingresses"))
        .unwrap();
    assert!(
        list.1
            .contains("labelSelector=app.kubernetes.io%2Finstance%3Dchat"),
        "{}",
        list.1
    );
}

/// Turning the server API off deletes its Service, found by its own component label:
/// the chat Services (`chat`, `chat-headless`) are never listed as its orphans.
#[tokio::test]
async fn turning_the_api_off_deletes_its_service_only() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let off = cluster(json!({"api": {"enabled": false}}));
    let on = cluster(json!({"api": {"enabled": true}}));
    let server = fake_apiserver(handle, |method, uri, _| {
        let owned = |name: &str| json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster", "name": "chat", "uid": "uid-1", "controller": true}]}});
        let query = uri.query().unwrap_or_default();
        let answer = match (method.as_str(), uri.path()) {
            ("GET", p) if p.ends_with("/services") && query.contains("component%3Dapi") => {
                json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [owned("chat-api")]})
            }
            ("GET", p) if p.ends_with("/statefulsets") || p.ends_with("/services") => {
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [owned("chat-redis")]})
            }
            ("GET", p) if p.ends_with("/networkpolicies") => {
                let name = if query.contains("redis") {
                    "chat-redis"
                } else {
                    "chat"
                };
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [owned(name)]})
            }
            ("GET", _) => json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
            ("DELETE", _) => {
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
            }
            other => panic!("unexpected request {other:?}"),
        };
        (StatusCode::OK, answer)
    });
    let still_on = delete_orphans(
        &client,
        "ns1",
        "chat",
        "uid-1",
        &build(&on, BuildContext::default()).unwrap(),
        Served::default(),
    )
    .await
    .unwrap();
    let turned_off = delete_orphans(
        &client,
        "ns1",
        "chat",
        "uid-1",
        &build(&off, BuildContext::default()).unwrap(),
        Served::default(),
    )
    .await
    .unwrap();
    drop(client);
    let seen = server.await.unwrap();
    assert!(still_on.is_empty(), "{still_on:?}");
    assert_eq!(turned_off, ["Service/chat-api"]);
    let deletes: Vec<&str> = seen
        .iter()
        .filter(|(m, _, _)| m == Method::DELETE)
        .map(|(_, u, _)| u.as_str())
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(
        deletes[0].starts_with("/api/v1/namespaces/ns1/services/chat-api"),
        "{deletes:?}"
    );
}
