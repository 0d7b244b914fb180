//! The apply and orphan stages against a mocked API server: every object goes through
//! server-side apply with the operator's field manager and `force`, and only this
//! cluster's no-longer-desired objects are deleted. (The same code runs against a real
//! kube-apiserver in the Kubernetes e2e suite.)

use chatcluster_operator::apply::{apply, delete_orphans};
use chatcluster_operator::build::{build, BuildContext};
use chatcluster_operator::crd::{ChatCluster, ChatClusterSpec};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::json;

fn cluster(spec: serde_json::Value) -> ChatCluster {
    let spec: ChatClusterSpec = serde_json::from_value(spec).unwrap();
    let mut c = ChatCluster::new("chat", spec);
    c.metadata.namespace = Some("ns1".into());
    c.metadata.uid = Some("uid-1".into());
    c
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers every request with `respond(method, path) -> JSON`, recording (method, uri).
fn fake_apiserver(
    mut handle: Handle,
    respond: fn(&Method, &str, &[u8]) -> serde_json::Value,
) -> tokio::task::JoinHandle<Vec<(Method, String)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let body = body.collect_bytes().await.unwrap();
            let answer = respond(&parts.method, parts.uri.path(), &body);
            seen.push((parts.method, parts.uri.to_string()));
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(answer.to_string().into_bytes()))
                    .unwrap(),
            );
        }
        seen
    })
}

#[tokio::test]
async fn every_object_is_server_side_applied_with_one_field_manager() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let c = cluster(json!({"expose": {"ingress": {"host": "chat.example.com"}}}));
    let desired = build(&c, BuildContext::default()).unwrap();
    // Server-side apply answers with the applied object; echo it.
    let server = fake_apiserver(handle, |_, _, body| serde_json::from_slice(body).unwrap());
    apply(&client, "ns1", &desired).await.unwrap();
    drop(client);
    let seen = server.await.unwrap();
    let paths: Vec<&str> = seen
        .iter()
        .map(|(_, u)| u.split('?').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/ns1/services/chat-redis",
            "/apis/apps/v1/namespaces/ns1/statefulsets/chat-redis",
            "/api/v1/namespaces/ns1/serviceaccounts/chat",
            "/api/v1/namespaces/ns1/configmaps/chat-config",
            "/api/v1/namespaces/ns1/services/chat-headless",
            "/api/v1/namespaces/ns1/services/chat",
            "/apis/apps/v1/namespaces/ns1/statefulsets/chat",
            "/apis/policy/v1/namespaces/ns1/poddisruptionbudgets/chat",
            "/apis/networking.k8s.io/v1/namespaces/ns1/ingresses/chat",
        ]
    );
    for (method, uri) in &seen {
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
    let server = fake_apiserver(handle, |method, path, _| {
        let owned = |name: &str, uid: &str| json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster", "name": "chat", "uid": uid, "controller": true}]}});
        match (method.as_str(), path) {
            ("GET", p) if p.ends_with("/ingresses") => {
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressList", "metadata": {}, "items": [owned("chat", "uid-1"), owned("other", "uid-9")]})
            }
            ("GET", p) if p.ends_with("/poddisruptionbudgets") => {
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudgetList", "metadata": {}, "items": [owned("chat", "uid-1")]})
            }
            ("GET", p) if p.ends_with("/statefulsets") => {
                json!({"apiVersion": "apps/v1", "kind": "StatefulSetList", "metadata": {}, "items": [owned("chat-redis", "uid-1")]})
            }
            ("GET", p) if p.ends_with("/services") => {
                json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [owned("chat-redis", "uid-1")]})
            }
            ("DELETE", _) => {
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
            }
            other => panic!("unexpected request {other:?}"),
        }
    });
    let deleted = delete_orphans(&client, "ns1", "chat", "uid-1", &desired, false)
        .await
        .unwrap();
    drop(client);
    let seen = server.await.unwrap();
    assert_eq!(
        deleted,
        vec!["Ingress/chat".to_string()],
        "the PDB and Redis are still desired"
    );
    let deletes: Vec<&str> = seen
        .iter()
        .filter(|(m, _)| m == Method::DELETE)
        .map(|(_, u)| u.as_str())
        .collect();
    assert_eq!(deletes.len(), 1);
    assert!(
        deletes[0].starts_with("/apis/networking.k8s.io/v1/namespaces/ns1/ingresses/chat"),
        "{deletes:?}"
    );
    let list = seen
        .iter()
        .find(|(m, u)| m == Method::GET && u.contains("ingresses"))
        .unwrap();
    assert!(
        list.1
            .contains("labelSelector=app.kubernetes.io%2Finstance%3Dchat"),
        "{}",
        list.1
    );
}
