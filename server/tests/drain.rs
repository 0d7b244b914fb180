//! Drain: readiness flips, new upgrades are refused, reconnect notices are spread over
//! the window, clients are closed with 1012, and the node stops when the last client
//! leaves or at the deadline. The SIGTERM path is tested on the real binary.

mod common;

use std::process::Stdio;
use std::time::Duration;

use chat_server::config::Settings;
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

fn drain_settings(window_ms: u64, deadline_ms: u64) -> Settings {
    let mut s = Settings::local_test();
    s.drain_reconnect_window = Duration::from_millis(window_ms);
    s.drain_deadline = Duration::from_millis(deadline_ms);
    s.drain_max_jitter = Duration::from_millis(250);
    s
}

#[tokio::test]
async fn notices_are_spread_over_the_window_then_1012() {
    const N: usize = 10;
    let window = Duration::from_millis(2000);
    let server = start(drain_settings(2000, 6000)).await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(Client::connect(server.public_addr, &format!("c{i}")).await);
    }
    assert_eq!(admin_get(server.admin_addr, "/readyz").await.0, 200);
    assert_eq!(metric(server.admin_addr, "chat_draining").await, 0.0);

    let t0 = Instant::now();
    let (status, body) = admin_post(server.admin_addr, "/admin/drain", None).await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"started\":true"));

    // Readiness fails at once and new upgrades are refused.
    assert_eq!(admin_get(server.admin_addr, "/readyz").await.0, 503);
    assert_eq!(metric(server.admin_addr, "chat_draining").await, 1.0);
    let refused = try_connect_with(server.public_addr, "user=late", &[])
        .await
        .expect_err("no new connections while draining");
    assert_eq!(refused.status, 503);
    assert!(refused.retry_after.is_some());
    // A second drain request is accepted but does not restart the drain.
    let (_, body) = admin_post(server.admin_addr, "/admin/drain", None).await;
    assert!(body.contains("\"started\":false"));

    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            let notice = c.recv_type("reconnect").await;
            let at = t0.elapsed();
            assert_eq!(notice["reason"], "draining");
            assert!(notice["after_ms"].as_u64().unwrap() <= 250, "{notice}");
            let (code, _) = c.expect_close().await;
            assert_eq!(code, 1012);
            c.close().await;
            at
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times.sort();
    // Ideal schedule: notice i at i * window / N. The server never sends a notice before
    // its slot (timer granularity aside), and a notice arrives late only by scheduling
    // delay, which the upper margin bounds generously (it holds with other processes
    // burning both CPUs). With slots 200 ms apart and that margin, the first notice is due
    // long before the last can arrive: the notices are spread, not sent at one instant.
    const EARLY: Duration = Duration::from_millis(50);
    const LATE: Duration = Duration::from_millis(600);
    let slot = window / N as u32;
    for (i, at) in times.iter().enumerate() {
        let ideal = slot * i as u32;
        assert!(
            *at + EARLY >= ideal && *at <= ideal + LATE,
            "notice {i} at {at:?}, ideal {ideal:?}: {times:?}"
        );
    }
    assert!(
        times[0] + window / 2 < times[N - 1],
        "first and last notice at least half the window apart: {times:?}"
    );

    // Every client left, so the node stops before the drain deadline (6 s).
    tokio::time::timeout(Duration::from_secs(10), server.stopped())
        .await
        .expect("stops once the last client is gone");
    assert!(t0.elapsed() < Duration::from_millis(6000));
    assert_eq!(server.state.hub.connection_count(), 0);
}

#[tokio::test]
async fn stops_immediately_when_idle() {
    let server = start(drain_settings(3000, 10000)).await;
    let t0 = Instant::now();
    assert!(server.begin_drain());
    tokio::time::timeout(Duration::from_secs(10), server.stopped())
        .await
        .expect("idle node stops");
    // With no client there is nothing to wait for: it must not sit out the reconnect
    // window (3 s), let alone the deadline (10 s).
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "idle drain took {elapsed:?}"
    );
}

#[tokio::test]
async fn force_closes_at_the_deadline() {
    let server = start(drain_settings(200, 1500)).await;
    // This client never reads again, so it never answers the close handshake.
    let _stubborn = Client::connect(server.public_addr, "stubborn").await;
    let mut polite = Client::connect(server.public_addr, "polite").await;
    let t0 = Instant::now();
    server.begin_drain();
    polite.recv_type("reconnect").await;
    assert_eq!(polite.expect_close().await.0, 1012);
    polite.close().await;
    tokio::time::timeout(Duration::from_secs(5), server.stopped())
        .await
        .expect("stops at the deadline");
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "stopped before the deadline: {elapsed:?}"
    );
    assert_eq!(
        server.state.hub.connection_count(),
        0,
        "stubborn client was force-closed"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--drain-reconnect-window",
            "500ms",
            "--drain-deadline",
            "3s",
        ])
        .env_remove("CHAT_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chat-server");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening: serde_json::Value = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("server logs in time")
            .expect("read log")
            .expect("server still running");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["message"] == "chat server listening" {
            break v;
        }
    };
    let public: std::net::SocketAddr = listening["public_addr"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = listening["admin_addr"].as_str().unwrap().parse().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mut c = Client::connect(public, "alice").await;
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    c.recv_type("reconnect").await;
    assert_eq!(c.expect_close().await.0, 1012);
    c.close().await;
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits after the drain")
        .expect("wait");
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn admin_endpoints_honour_the_token() {
    let mut settings = Settings::local_test();
    settings.admin_token = Some("s3cret".into());
    let server = start(settings).await;
    let _c = Client::connect(server.public_addr, "a").await;
    assert_eq!(admin_get(server.admin_addr, "/healthz").await.0, 200);
    assert_eq!(admin_get(server.admin_addr, "/admin/status").await.0, 401);
    assert_eq!(
        admin_post(server.admin_addr, "/admin/drain", None).await.0,
        401
    );
    assert!(!server.state.drain.is_draining());
    let (status, body) =
        http_request(server.admin_addr, "GET", "/admin/status", Some("s3cret")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "test-node");
    assert_eq!(v["connections"], 1);
    assert_eq!(v["draining"], false);
    assert_eq!(v["backplane"], "memory");
    assert_eq!(
        admin_post(server.admin_addr, "/admin/drain", Some("s3cret"))
            .await
            .0,
        202
    );
}
