//! The whole reconcile pipeline against a mocked API server.

use std::sync::Arc;
use std::time::Duration;

use chatcluster_operator::autoscaling::sources::pods::scrape_client;
use chatcluster_operator::autoscaling::sources::prometheus::prometheus_client;
use chatcluster_operator::crd::ChatCluster;
use chatcluster_operator::reconcile::{error_policy, reconcile, requeue_after, Context};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::json;

mod common;
use common::{Handle, Seen};
type MockService = tower_test::mock::Mock<Request<Body>, Response<Body>>;

/// The status of the first status PATCH the fake API server saw.
fn written_status(seen: &[(Method, String, serde_json::Value)]) -> &serde_json::Value {
    let (_, _, patch) = seen
        .iter()
        .find(|(m, u, _)| m == Method::PATCH && u.contains("/status"))
        .expect("status written");
    &patch["status"]
}

/// The condition of type `kind` in a written status.
fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
}

fn context(svc: MockService) -> Arc<Context> {
    let client = kube::Client::new(svc, "default");
    Arc::new(Context {
        client: client.clone(),
        apis: Default::default(),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "chatcluster-operator".into(),
                instance: Some("test".into()),
            },
        ),
        failures: Default::default(),
        http: scrape_client().unwrap(),
        prometheus_http: prometheus_client().unwrap(),
        autoscaler: Default::default(),
        metrics: Default::default(),
        operator_namespace: Some("chatcluster-system".into()),
        drain_failures: Default::default(),
    })
}

/// `common::cluster` at generation 7.
fn cluster(spec: serde_json::Value) -> ChatCluster {
    let mut c = common::cluster(spec);
    c.metadata.generation = Some(7);
    c
}

/// A tiny API server: applies echo, lists are empty, StatefulSets do not exist yet
/// (404), status patches are recorded.
fn fake(handle: Handle) -> tokio::task::JoinHandle<Seen> {
    fake_answering_applies(handle, None)
}

/// Like [`fake`], but every apply gets `rejection` (status code and body) when given.
fn fake_answering_applies(
    handle: Handle,
    rejection: Option<(StatusCode, serde_json::Value)>,
) -> tokio::task::JoinHandle<Seen> {
    fake_with(handle, rejection, Vec::new())
}

/// Like [`fake`], but the user's Secrets `secrets` (objects with `metadata.name` and
/// `data`) exist in `ns1`: a GET of one of them answers it.
fn fake_with_secrets(
    handle: Handle,
    secrets: Vec<serde_json::Value>,
) -> tokio::task::JoinHandle<Seen> {
    fake_with(handle, None, secrets)
}

fn fake_with(
    handle: Handle,
    rejection: Option<(StatusCode, serde_json::Value)>,
    secrets: Vec<serde_json::Value>,
) -> tokio::task::JoinHandle<Seen> {
    common::fake_apiserver(handle, move |method, uri, body| {
        let path = uri.path();
        let user_secret = secrets.iter().find(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|name| path == format!("/api/v1/namespaces/ns1/secrets/{name}"))
        });
        if let (true, Some(secret)) = (method == Method::GET, user_secret) {
            let mut secret = secret.clone();
            secret["apiVersion"] = json!("v1");
            secret["kind"] = json!("Secret");
            secret["metadata"]["namespace"] = json!("ns1");
            return (StatusCode::OK, secret);
        }
        match method.as_str() {
            "PATCH" if path.ends_with("/status") => (StatusCode::OK, {
                let mut c = json!({"apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster", "metadata": {"name": "chat", "namespace": "ns1"}, "spec": {}});
                c["status"] = body["status"].clone();
                c
            }),
            "PATCH" => rejection.clone().unwrap_or((StatusCode::OK, body.clone())),
            "POST" if path.contains("/events") => (StatusCode::CREATED, body.clone()),
            // Generated Secrets do not exist yet (GET is 404) and are created.
            "POST" if path.ends_with("/secrets") => (StatusCode::CREATED, {
                let mut created = body.clone();
                created["metadata"]["uid"] = json!(format!("uid-{}", body["metadata"]["name"]));
                created
            }),
            "GET" if uri.query().is_some_and(|q| q.contains("labelSelector")) => (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
            ),
            "GET" => (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
            other => panic!("unexpected {other} {path}"),
        }
    })
}

#[tokio::test]
async fn a_new_cluster_is_applied_and_reported_not_ready_yet() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let server = fake(handle);
    let action = reconcile(Arc::new(cluster(json!({}))), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let seen = server.await.unwrap();
    assert_eq!(action, Action::requeue(requeue_after(false)));
    let applies = seen
        .iter()
        .filter(|(m, u, _)| m == Method::PATCH && u.contains("force=true"))
        .count();
    assert_eq!(
        applies, 10,
        "2 NetworkPolicies, SA, ConfigMap, 2 Services, StatefulSet, PDB, Redis StatefulSet and Service"
    );
    let created_secrets: Vec<&str> = seen
        .iter()
        .filter(|(m, u, _)| m == Method::POST && u.contains("/secrets"))
        .map(|(_, _, s)| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        created_secrets,
        ["chat-admin", "chat-redis-auth"],
        "generated once, before anything is applied"
    );
    let status = written_status(&seen);
    assert_eq!(status["observedGeneration"], 7);
    let event_reasons: Vec<&str> = seen
        .iter()
        .filter(|(m, u, _)| {
            m == Method::POST && u.contains("/apis/events.k8s.io/v1/namespaces/ns1/events")
        })
        .map(|(_, _, e)| {
            assert_eq!(e["regarding"]["name"], "chat");
            assert_eq!(e["reportingController"], "chatcluster-operator");
            e["reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        event_reasons,
        ["RedisStarting", "RollingOut", "RedisNotReady"]
    );
    assert_eq!(
        status["replicas"], 0,
        "observed pods, not the desired count"
    );
    assert_eq!(status["readyReplicas"], 0);
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "RedisNotReady");
}

#[tokio::test]
async fn an_invalid_cluster_is_degraded_and_nothing_is_applied() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let server = fake(handle);
    let bad = cluster(json!({"drain": {"reconnectWindowSeconds": 60, "deadlineSeconds": 30}}));
    let action = reconcile(Arc::new(bad), ctx.clone()).await.unwrap();
    drop(ctx);
    let seen = server.await.unwrap();
    assert_eq!(action, Action::await_change());
    let (events, writes): (Vec<_>, Vec<_>) =
        seen.iter().partition(|(_, uri, _)| uri.contains("/events"));
    assert_eq!(writes.len(), 1, "only the status is written: {writes:?}");
    let warning = events
        .iter()
        .find(|(_, _, e)| e["type"] == "Warning")
        .expect("a Warning Event for the invalid spec");
    assert!(warning.2["note"]
        .as_str()
        .unwrap()
        .contains("reconnectWindowSeconds must be shorter"));
    let degraded = condition(&writes[0].2["status"], "Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("reconnectWindowSeconds must be shorter"));
}

/// An object the API server rejects: the error is returned for a retry, and status says
/// Degraded/ApplyFailed with the server's message instead of staying silent.
#[tokio::test]
async fn a_rejected_object_shows_as_degraded() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let server = fake_answering_applies(
        handle,
        Some((
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Invalid", "code": 422, "message": "StatefulSet.apps \"chat-redis\" is invalid: spec: Forbidden: updates to statefulset spec are forbidden"}),
        )),
    );
    let chat = Arc::new(cluster(json!({})));
    let result = reconcile(chat.clone(), ctx.clone()).await;
    let error = result.expect_err("the failure is returned for a retry with backoff");
    // Retries back off per ChatCluster: 2 s, then 4 s.
    assert_eq!(
        error_policy(chat.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(
        error_policy(chat, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(4))
    );
    drop(ctx);
    let seen = server.await.unwrap();
    let degraded = condition(written_status(&seen), "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("updates to statefulset spec are forbidden"));
}

/// A ChatCluster being deleted (foreground: it waits for its children) is left alone:
/// applying would recreate what the garbage collector removes.
#[tokio::test]
async fn a_cluster_being_deleted_is_not_applied() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let server = fake(handle);
    let mut c = cluster(json!({}));
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let action = reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    let seen = server.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(seen.is_empty(), "no request at all: {seen:?}");
}

/// With the server API on and no Secret of the user's, the operator generates
/// `NAME-api-keys` (one random key on a line) before anything is applied, then applies
/// the `NAME-api` Service with the rest.
#[tokio::test]
async fn the_api_keys_are_generated_and_the_api_service_applied() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let server = fake(handle);
    reconcile(
        Arc::new(cluster(json!({"api": {"enabled": true}}))),
        ctx.clone(),
    )
    .await
    .unwrap();
    drop(ctx);
    let seen = server.await.unwrap();
    let created: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|(m, u, _)| m == Method::POST && u.contains("/secrets"))
        .map(|(_, _, s)| s)
        .collect();
    let names: Vec<&str> = created
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat-admin", "chat-redis-auth", "chat-api-keys"]);
    let keys = created[2]["stringData"]["keys"]
        .as_str()
        .expect("key `keys`");
    let key = keys.strip_suffix('\n').expect("one line");
    assert!(
        key.len() >= 32 && key.bytes().all(|b| b.is_ascii_alphanumeric()),
        "a long URL-safe random key"
    );
    let first_apply = seen
        .iter()
        .position(|(m, u, _)| m == Method::PATCH && u.contains("force=true"))
        .unwrap();
    let last_secret = seen
        .iter()
        .rposition(|(m, u, _)| m == Method::POST && u.contains("/secrets"))
        .unwrap();
    assert!(
        last_secret < first_apply,
        "the Secret exists before the pods"
    );
    assert!(
        seen.iter().any(|(m, u, _)| m == Method::PATCH
            && u.starts_with("/api/v1/namespaces/ns1/services/chat-api?")),
        "the API Service is applied"
    );
    // The keys file is re-read by the servers: its Secret does not restart the pods.
    let sts = seen
        .iter()
        .find(|(m, u, _)| m == Method::PATCH && u.contains("/statefulsets/chat?"))
        .map(|(_, _, b)| b)
        .unwrap();
    assert_eq!(
        sts["spec"]["template"]["metadata"]["annotations"]["chatcluster.dev/secrets-revision"],
        "uid-\"chat-admin\",uid-\"chat-redis-auth\""
    );
}

/// `api.keysSecretName` naming a Secret that does not exist: Degraded, naming the
/// Secret, the field and the key, and nothing is applied (as for the JWT Secret).
#[tokio::test]
async fn a_missing_api_keys_secret_of_the_users_is_degraded_naming_it() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let server = fake(handle);
    let action = reconcile(
        Arc::new(cluster(
            json!({"api": {"enabled": true, "keysSecretName": "app-api-keys"}}),
        )),
        ctx.clone(),
    )
    .await
    .unwrap();
    drop(ctx);
    let seen = server.await.unwrap();
    let message = stopped_at_the_secret(action, &seen, "SecretMissing");
    assert!(
        message.contains("Secret ns1/app-api-keys")
            && message.contains("spec.api.keysSecretName")
            && message.contains("`keys`"),
        "{message}"
    );
}

/// `events` with the user's signing-key Secret `app-events`.
fn events_spec() -> serde_json::Value {
    json!({"events": {
        "webhookUrl": "https://app.example/chat/events",
        "secretName": "app-events",
        "rooms": ["support.*"]
    }})
}

/// Secret `app-events` with key `key` holding `value` (base64, as the API server sends it).
fn events_secret(key: &str, value: &[u8]) -> serde_json::Value {
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("app-events".into()),
            ..Default::default()
        },
        data: Some([(key.to_owned(), k8s_openapi::ByteString(value.to_vec()))].into()),
        ..Default::default()
    };
    serde_json::to_value(secret).unwrap()
}

/// Asserts the reconcile stopped at the Secret check: requeued to look again, nothing
/// applied or generated, Degraded with `reason`; returns the condition's message.
fn stopped_at_the_secret(action: Action, seen: &Seen, reason: &str) -> String {
    assert_eq!(
        action,
        Action::requeue(chatcluster_operator::reconcile::SECRET_RECHECK)
    );
    assert!(
        !seen
            .iter()
            .any(|(m, u, _)| m == Method::PATCH && u.contains("force=true")),
        "nothing applied: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(m, u, _)| m == Method::POST && u.contains("/secrets")),
        "nothing generated either"
    );
    let degraded = condition(written_status(seen), "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], reason);
    degraded["message"].as_str().unwrap().to_owned()
}

/// `events.secretName` naming a Secret that does not exist: Degraded, naming the Secret,
/// the field and the key, and nothing is applied (as for the join hook's Secret).
#[tokio::test]
async fn a_missing_events_secret_is_degraded_naming_it() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let server = fake(handle);
    let action = reconcile(Arc::new(cluster(events_spec())), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let seen = server.await.unwrap();
    let message = stopped_at_the_secret(action, &seen, "SecretMissing");
    assert!(
        message.contains("Secret ns1/app-events")
            && message.contains("spec.events.secretName")
            && message.contains("`secret`"),
        "{message}"
    );
}

/// The Secret exists without key `secret`, or with a key shorter than the 32 bytes the
/// chat-server requires: Degraded naming the Secret and key (never the value), nothing
/// applied.
#[tokio::test]
async fn an_events_secret_without_the_key_or_with_a_short_one_is_degraded() {
    for (secret, reason, expected) in [
        (
            events_secret("hookSecret", &[b'k'; 40]),
            "SecretKeyMissing",
            "Secret ns1/app-events (named by spec.events.secretName) has no key `secret`",
        ),
        (
            events_secret("secret", b"a-short-signing-key"),
            "SecretInvalid",
            "key `secret` of Secret ns1/app-events (named by spec.events.secretName) is 19 bytes; it must be at least 32",
        ),
    ] {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(svc);
        let server = fake_with_secrets(handle, vec![secret]);
        let action = reconcile(Arc::new(cluster(events_spec())), ctx.clone())
            .await
            .unwrap();
        drop(ctx);
        let seen = server.await.unwrap();
        let message = stopped_at_the_secret(action, &seen, reason);
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains("short-signing"), "never the value: {message}");
    }
}

/// With a usable Secret, the ConfigMap carries the webhook's settings and the chat
/// StatefulSet takes the key from the Secret, never from the ConfigMap.
#[tokio::test]
async fn with_a_usable_events_secret_the_pods_get_the_webhook() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(svc);
    let key = [b'k'; 32];
    let server = fake_with_secrets(handle, vec![events_secret("secret", &key)]);
    reconcile(Arc::new(cluster(events_spec())), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let seen = server.await.unwrap();
    let applied = |fragment: &str| {
        seen.iter()
            .find(|(m, u, _)| m == Method::PATCH && u.contains(fragment))
            .map(|(_, _, b)| b)
            .unwrap_or_else(|| panic!("no apply of {fragment}: {seen:?}"))
    };
    let data = &applied("/configmaps/chat-config?")["data"];
    assert_eq!(data["CHAT_WEBHOOK_URL"], "https://app.example/chat/events");
    assert_eq!(data["CHAT_WEBHOOK_ROOMS"], "support.*");
    assert!(data.get("CHAT_WEBHOOK_SECRET").is_none(), "{data}");
    assert!(
        !data.to_string().contains("kkkkkkkk"),
        "the key is nowhere in the ConfigMap"
    );
    let env = &applied("/statefulsets/chat?")["spec"]["template"]["spec"]["containers"][0]["env"];
    let secret = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CHAT_WEBHOOK_SECRET")
        .unwrap_or_else(|| panic!("no CHAT_WEBHOOK_SECRET: {env}"));
    assert_eq!(
        secret["valueFrom"]["secretKeyRef"],
        json!({"name": "app-events", "key": "secret", "optional": false})
    );
    assert!(secret.get("value").is_none(), "{secret}");
}
