//! The ChatCluster and the mocked API server shared by the operator's mocked-API tests.

use chatcluster_operator::crd::{ChatCluster, ChatClusterSpec};
use http::{Method, Request, Response, StatusCode, Uri};
use kube::client::Body;
use serde_json::Value;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// What the fake API server saw: method, URI and the JSON body (null when none).
pub type Seen = Vec<(Method, String, Value)>;

/// ChatCluster `ns1/chat` (uid `uid-1`) with `spec`.
pub fn cluster(spec: Value) -> ChatCluster {
    let spec: ChatClusterSpec = serde_json::from_value(spec).unwrap();
    let mut c = ChatCluster::new("chat", spec);
    c.metadata.namespace = Some("ns1".into());
    c.metadata.uid = Some("uid-1".into());
    c
}

/// Answers every request with `respond(method, uri, body) -> (status, JSON)` and records
/// it, until the client is dropped.
pub fn fake_apiserver<F>(mut handle: Handle, respond: F) -> tokio::task::JoinHandle<Seen>
where
    F: Fn(&Method, &Uri, &Value) -> (StatusCode, Value) + Send + 'static,
{
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let body: Value =
                serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap_or(Value::Null);
            let (code, answer) = respond(&parts.method, &parts.uri, &body);
            seen.push((parts.method, parts.uri.to_string(), body));
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(answer.to_string().into_bytes()))
                    .unwrap(),
            );
        }
        seen
    })
}
