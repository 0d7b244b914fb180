//! The autoscaler's Prometheus source (`chatcluster_operator::autoscaling::sources::prometheus`) against a real
//! Prometheus scraping real `chat-server` processes, every address on 127.0.0.1.
//!
//! Prometheus is the pinned build of e2e/k8s/build-prometheus.sh (`CHATCLUSTER_PROMETHEUS`,
//! which the README's test command sets, or built here on first use). Each test starts its
//! own servers and Prometheus (1 s scrape interval, static targets labelled the way a
//! Kubernetes pod scrape labels them: `namespace`, `pod`) and stops them by PID; the
//! scratch directories go with them.
//!
//! Covered: the default query's total follows connections opened and closed, and ignores
//! a same-named pod in another namespace and a cluster whose name only starts with this
//! one's; a user query template; several series, NaN and ±Inf (returned as values, which
//! the decision then refuses), a metric that does not exist, a range vector, a string, a
//! syntax error, an execution error and an answer over the size limit; and, without
//! Prometheus, a closed port, a server that never answers, a 404 and a 200 that is not
//! Prometheus' JSON, and a URL that is not one.

// A heavy suite: compiled only with CHATCLUSTER_HEAVY_TESTS=1 (e2e/build.rs).
#![cfg(chatcluster_heavy)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use chatcluster_e2e::clients::ws::{connect_users, Ws};
use chatcluster_e2e::harness::binaries::chat_server_binary;
use chatcluster_e2e::harness::prometheus::{prometheus_binary, PrometheusProcess};
use chatcluster_e2e::harness::server_process::ServerProcess;
use chatcluster_operator::autoscaling::decision::{
    decide, Input, Reason, Sample, DEFAULT_STALENESS_LIMIT,
};
use chatcluster_operator::autoscaling::promql::{default_query, render_query};
use chatcluster_operator::autoscaling::sources::prometheus::{query, PrometheusError};
use chatcluster_operator::http_client::HttpClient;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");
/// Bound on every wait for Prometheus to see a change (scrapes are 1 s apart).
const SCRAPED_WITHIN: Duration = Duration::from_secs(30);
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Two chat-servers scraped as pods `chat-0` and `chat-1` of ChatCluster `chat/chat`, plus
/// two decoy targets on the same servers that the default query must not count: pod
/// `chat-0` in namespace `other`, and pod `chat-eu-0` (a cluster named `chat-eu`).
struct Stack {
    servers: Vec<ServerProcess>,
    prometheus: PrometheusProcess,
    client: HttpClient,
}

impl Stack {
    async fn start() -> Stack {
        let binary = chat_server_binary(LOADGEN).expect("chat-server binary");
        let servers: Vec<ServerProcess> = (0..2)
            .map(|_| ServerProcess::start(&binary, &[]).expect("chat-server starts"))
            .collect();
        let target = |s: &ServerProcess, namespace: &str, pod: &str| {
            format!(
                "      - targets: [\"{}\"]\n        labels: {{namespace: \"{namespace}\", pod: \"{pod}\"}}\n",
                s.admin_addr
            )
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: chat\n    static_configs:\n{}{}{}{}",
            target(&servers[0], "chat", "chat-0"),
            target(&servers[1], "chat", "chat-1"),
            target(&servers[0], "other", "chat-0"),
            target(&servers[1], "chat", "chat-eu-0"),
        );
        let binary = prometheus_binary().expect("Prometheus binary");
        let prometheus = PrometheusProcess::start(&binary, &config).expect("Prometheus starts");
        Stack {
            servers,
            prometheus,
            client: HttpClient::new(QUERY_TIMEOUT, 1 << 20).expect("HTTP client"),
        }
    }

    async fn query(&self, promql: &str) -> Result<Sample, PrometheusError> {
        query(&self.client, &self.prometheus.base_url, promql).await
    }

    /// Polls `promql` until its sample is `want` (at most [`SCRAPED_WITHIN`]); a value
    /// matches on the total alone (its time is Prometheus').
    async fn wait_sample(&self, promql: &str, want: Sample) -> Sample {
        let matches = |s: &Sample| match (s, &want) {
            (Sample::Value { total, .. }, Sample::Value { total: w, .. }) => total == w,
            (s, w) => s == w,
        };
        let deadline = Instant::now() + SCRAPED_WITHIN;
        loop {
            let last = self.query(promql).await;
            if let Ok(s) = &last {
                if matches(s) {
                    return *s;
                }
            }
            if Instant::now() >= deadline {
                panic!("{promql}: not {want:?} within {SCRAPED_WITHIN:?}; last answer: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls `promql` until it gives the value `total`.
    async fn wait_value(&self, promql: &str, total: f64) -> Sample {
        let want = Sample::Value {
            total,
            at: Timestamp::UNIX_EPOCH,
        };
        self.wait_sample(promql, want).await
    }
}

async fn close(clients: &mut Vec<Ws>, n: usize) {
    for mut ws in clients.drain(..n) {
        let _ = ws.close(None).await;
    }
}

fn assert_recent(sample: Sample) {
    let Sample::Value { at, .. } = sample else {
        panic!("not a value: {sample:?}");
    };
    let age = Timestamp::now().duration_since(at);
    assert!(
        age.unsigned_abs() < Duration::from_secs(30),
        "sample time {at} is {age:?} from now"
    );
}

/// What the autoscaler decides for `sample` with 3 replicas running.
fn decision_reason(sample: Sample) -> (i32, Reason) {
    let d = decide(&Input {
        current_replicas: 3,
        min_replicas: 1,
        max_replicas: 10,
        target_per_pod: 2,
        tolerance: 0.1,
        scale_down_stabilization: Duration::ZERO,
        staleness_limit: DEFAULT_STALENESS_LIMIT,
        sample,
        history: &[],
        now: Timestamp::now(),
    });
    (d.desired_replicas, d.reason)
}

#[tokio::test]
async fn default_query_follows_connections_opened_and_closed() {
    let stack = Stack::start().await;
    let q = default_query("chat", "chat");
    assert_eq!(
        q,
        r#"sum(chat_connections{namespace="chat", pod=~"chat-[0-9]+"})"#
    );

    // Both pods scraped, nobody connected: a value of 0, not NoData.
    stack.wait_value(&q, 0.0).await;

    let mut on0 = connect_users(&stack.servers[0].ws_url(), "a", 2).await;
    let mut on1 = connect_users(&stack.servers[1].ws_url(), "b", 3).await;
    let s = stack.wait_value(&q, 5.0).await;
    assert_recent(s);
    // The decoys are scraped too (every target counts each server once more), so the
    // default query's 5 is its label filter at work, not a missing target.
    stack.wait_value("sum(chat_connections)", 10.0).await;
    // The same query written once as a template for every cluster (another cluster's
    // template renders to another query, which the next check covers).
    let template = r#"sum(chat_connections{namespace="{{namespace}}", pod=~"{{name}}-[0-9]+"})"#;
    let rendered = render_query(template, "chat", "chat");
    assert_eq!(rendered, q);
    stack.wait_value(&rendered, 5.0).await;
    // The cluster "chat-eu" (one pod, on server 1) is another cluster's total.
    stack
        .wait_value(&default_query("chat", "chat-eu"), 3.0)
        .await;
    // And what the autoscaler makes of it: 5 connections at 2 per pod need 3 pods.
    assert_eq!(decision_reason(s), (3, Reason::Steady));

    close(&mut on0, 1).await;
    close(&mut on1, 2).await;
    let s = stack.wait_value(&q, 2.0).await;
    assert_recent(s);
    close(&mut on0, 1).await;
    close(&mut on1, 1).await;
    stack.wait_value(&q, 0.0).await;
}

#[tokio::test]
async fn bad_queries_give_the_exact_sample_or_error() {
    let stack = Stack::start().await;
    let base = stack.prometheus.base_url.clone();

    // Without the sum: one series per pod, the autoscaler holds.
    let s = stack
        .wait_sample(
            r#"chat_connections{namespace="chat", pod=~"chat-[0-9]+"}"#,
            Sample::MultipleSeries { count: 2 },
        )
        .await;
    assert_eq!(decision_reason(s), (3, Reason::MultipleSeries));

    // NaN and infinities come back as values; the decision refuses them as bad data.
    for (promql, check) in [
        ("vector(NaN)", f64::is_nan as fn(f64) -> bool),
        ("NaN", f64::is_nan),
        ("vector(+Inf)", |v: f64| v == f64::INFINITY),
        ("-Inf", |v: f64| v == f64::NEG_INFINITY),
        ("sum(chat_connections) * -1 - 1", |v: f64| v == -1.0),
    ] {
        let s = stack.query(promql).await.expect(promql);
        let Sample::Value { total, .. } = s else {
            panic!("{promql}: {s:?}");
        };
        assert!(check(total), "{promql}: {total}");
        assert_recent(s);
        assert_eq!(decision_reason(s), (3, Reason::InvalidValue), "{promql}");
    }

    // A metric nobody exports: no series, with or without the sum.
    for promql in ["chat_no_such_metric", "sum(chat_no_such_metric)"] {
        assert_eq!(
            stack.query(promql).await.unwrap(),
            Sample::NoData,
            "{promql}"
        );
    }
    assert_eq!(decision_reason(Sample::NoData), (3, Reason::NoData));

    // A range vector and a string are not samples.
    for (promql, kind) in [("chat_connections[1m]", "matrix"), (r#""hello""#, "string")] {
        let e = stack.query(promql).await.unwrap_err();
        match &e {
            PrometheusError::NotInstantVector { url, result_type } => {
                assert_eq!((url.as_str(), result_type.as_str()), (base.as_str(), kind))
            }
            other => panic!("{promql}: {other:?}"),
        }
        assert!(
            e.to_string()
                .contains("must return an instant vector or a scalar"),
            "{e}"
        );
    }

    // A syntax error: HTTP 400 (bad_data).
    let e = stack.query("sum(chat_connections{").await.unwrap_err();
    match &e {
        PrometheusError::Rejected { url, reason } => {
            assert_eq!((url.as_str(), reason.as_str()), (base.as_str(), "HTTP 400"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        format!("Prometheus at {base} rejected the query (HTTP 400); fix the PromQL query")
    );

    // An execution error: many-to-many matching (namespace "chat" has 3 series on each
    // side) is HTTP 422 (execution).
    let e = stack
        .query("chat_connections * on(namespace) chat_connections")
        .await
        .unwrap_err();
    match &e {
        PrometheusError::Rejected { url, reason } => {
            assert_eq!((url.as_str(), reason.as_str()), (base.as_str(), "HTTP 422"))
        }
        other => panic!("{other:?}"),
    }

    // Every series at once through a client that accepts 200 bytes.
    let small = HttpClient::new(QUERY_TIMEOUT, 200).expect("client");
    let e = query(&small, &base, "chat_connections").await.unwrap_err();
    match &e {
        PrometheusError::TooLarge { url, limit } => {
            assert_eq!((url.as_str(), *limit), (base.as_str(), 200))
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("sum them"), "{e}");
}

/// A loopback HTTP server that answers every request on `listener` with `reply`, at most
/// `max` connections; aborted when the test ends.
fn serve(listener: tokio::net::TcpListener, reply: &'static str, max: usize) -> ServeTask {
    ServeTask(tokio::spawn(async move {
        for _ in 0..max {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    }))
}

struct ServeTask(tokio::task::JoinHandle<()>);

impl Drop for ServeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn loopback_listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

fn client(timeout: Duration) -> HttpClient {
    HttpClient::new(timeout, 1 << 20).expect("HTTP client")
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 20 s"))
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let base = format!("http://{closed}");
    let e = bounded(
        "query",
        query(
            &client(QUERY_TIMEOUT),
            &base,
            &default_query("chat", "chat"),
        ),
    )
    .await
    .unwrap_err();
    match &e {
        PrometheusError::Unreachable { url, .. } => assert_eq!(url, &base),
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("Prometheus at {base} is unreachable")),
        "{msg}"
    );
    assert!(msg.contains("check the URL's host and port"), "{msg}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (listener, addr) = loopback_listener().await;
    // Accepts and holds every connection without a byte in reply.
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        for _ in 0..8 {
            match listener.accept().await {
                Ok((s, _)) => open.push(s),
                Err(_) => return,
            }
        }
        std::future::pending::<()>().await;
    });
    let _held = ServeTask(held);
    let base = format!("http://{addr}/");
    let started = Instant::now();
    let e = bounded(
        "query",
        query(&client(Duration::from_millis(500)), &base, "vector(1)"),
    )
    .await
    .unwrap_err();
    match &e {
        PrometheusError::Timeout { url, timeout } => {
            assert_eq!(
                (url.as_str(), *timeout),
                (base.as_str(), Duration::from_millis(500))
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        e.to_string(),
        format!("Prometheus at {base} did not answer within 500ms; check that Prometheus is up and not overloaded, or make the query cheaper")
    );
}

#[tokio::test]
async fn a_server_that_is_not_prometheus_is_named() {
    // A chat-server's admin port: its /healthz is a base URL without the query API.
    let binary = chat_server_binary(LOADGEN).expect("chat-server binary");
    let server = ServerProcess::start(&binary, &[]).expect("chat-server starts");
    for base in [
        format!("http://{}/healthz", server.admin_addr),
        format!("http://{}", server.admin_addr),
    ] {
        let e = bounded("query", query(&client(QUERY_TIMEOUT), &base, "vector(1)"))
            .await
            .unwrap_err();
        match &e {
            PrometheusError::HttpStatus { url, status } => {
                assert_eq!((url.as_str(), *status), (base.as_str(), 404))
            }
            other => panic!("{base}: {other:?}"),
        }
        assert!(
            e.to_string()
                .contains("check that the URL is Prometheus' base URL (without /api/v1)"),
            "{e}"
        );
    }

    // A 200 that is not Prometheus' JSON (a proxy's login page, say).
    let (listener, addr) = loopback_listener().await;
    let _page = serve(
        listener,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 22\r\nConnection: close\r\n\r\n<html>sign in</html>\r\n",
        4,
    );
    let base = format!("http://{addr}");
    let e = bounded("query", query(&client(QUERY_TIMEOUT), &base, "vector(1)"))
        .await
        .unwrap_err();
    match &e {
        PrometheusError::Malformed { url, reason } => {
            assert_eq!(url, &base);
            assert!(reason.starts_with("expected value"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().starts_with(&format!(
            "Prometheus at {base}: malformed answer, not Prometheus' query API JSON"
        )),
        "{e}"
    );

    // Not a URL at all.
    let e = bounded(
        "query",
        query(&client(QUERY_TIMEOUT), "not a url", "vector(1)"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, PrometheusError::InvalidUrl { url, .. } if url == "not a url"),
        "{e:?}"
    );
    drop(server);
}
