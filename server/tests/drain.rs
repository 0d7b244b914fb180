//! Drain: readiness flips, new upgrades are refused, reconnect notices are spread over
//! the window, clients are closed with 1012, and the node stops when the last client
//! leaves or at the deadline. A drain asked for with `keep_running` (and perhaps its own
//! window) leaves the node alive and not ready until SIGTERM, or until `POST
//! /admin/undrain` cancels it; bad drain requests are refused with 400. The SIGTERM paths
//! are tested on the real binary.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use chat_server::config::Settings;
use common::*;
use serde_json::{json, Value};
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
    // No body: the configured window, and the process is to exit when the drain ends.
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"draining": true, "started": true, "connections": N, "notice_delay_ms": 0,
               "reconnect_window_ms": 2000, "keep_running": false})
    );

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
    let mut node = Binary::spawn("500ms", "3s").await;
    let mut c = Client::connect(node.public, "alice").await;
    assert_eq!(admin_get(node.admin, "/readyz").await.0, 200);
    node.sigterm();
    c.recv_type("reconnect").await;
    assert_eq!(c.expect_close().await.0, 1012);
    c.close().await;
    assert_eq!(node.exit_code().await, Some(0));
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
    assert_eq!(
        admin_post(server.admin_addr, "/admin/undrain", None)
            .await
            .0,
        401
    );
    assert_eq!(
        server.state.drain.phase(),
        chat_server::drain::Phase::Serving
    );
    let (status, body) =
        http_request(server.admin_addr, "GET", "/admin/status", Some("s3cret")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "test-node");
    assert_eq!(v["connections"], 1);
    assert_eq!(v["draining"], false);
    assert_eq!(v["backplane"], "memory");
    assert_eq!(v["phase"], "serving");
    assert_eq!(v["drain"], Value::Null);
    let (status, body) =
        http_request(server.admin_addr, "POST", "/admin/undrain", Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"serving": true, "was": "serving"})
    );
    assert_eq!(
        admin_post(server.admin_addr, "/admin/drain", Some("s3cret"))
            .await
            .0,
        202
    );
}

/// The running chat-server binary, its addresses taken from its "listening" log line.
struct Binary {
    child: tokio::process::Child,
    pid: u32,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Binary {
    async fn spawn(window: &str, deadline: &str) -> Binary {
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
                window,
                "--drain-deadline",
                deadline,
            ])
            .env_remove("CHAT_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chat-server");
        let pid = child.id().expect("pid");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening: Value = loop {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("server logs in time")
                .expect("read log")
                .expect("server still running");
            let v: Value = serde_json::from_str(&line).expect("JSON log line");
            if v["message"] == "chat server listening" {
                break v;
            }
        };
        let public = listening["public_addr"].as_str().unwrap().parse().unwrap();
        let admin = listening["admin_addr"].as_str().unwrap().parse().unwrap();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Binary {
            child,
            pid,
            public,
            admin,
        }
    }

    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (at most 5 s) for the process to exit.
    async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait")
            .code()
    }
}

async fn status_of(admin: SocketAddr) -> Value {
    let (status, body) = admin_get(admin, "/admin/status").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}

/// Polls `/admin/status` until `check` holds (at most `WAIT`); returns that status.
async fn wait_for_status(admin: SocketAddr, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let give_up = Instant::now() + WAIT;
    loop {
        let v = status_of(admin).await;
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < give_up, "waited for {what}; status: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_phase(admin: SocketAddr, phase: &str) -> Value {
    wait_for_status(admin, phase, |v| v["phase"] == phase).await
}

async fn post_json(admin: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = admin_post_body(admin, path, &[], body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}"));
    (status, v)
}

async fn undrain(admin: SocketAddr) -> (u16, String) {
    admin_post(admin, "/admin/undrain", None).await
}

/// A client still served: it joins `room` and a message it sends is acknowledged.
async fn chats(c: &mut Client, room: &str) {
    c.join(room).await;
    let r = format!("{}-hello", c.user);
    c.send(json!({"type":"send","room":room,"body":"still here","ref":r}))
        .await;
    assert_eq!(c.recv_type("ack").await["ref"], r);
    let echo = c.recv_type("message").await;
    assert_eq!(
        (echo["from"].as_str(), echo["body"].as_str()),
        (Some(c.user.as_str()), Some("still here"))
    );
}

/// With a notice delay the node is not ready at once but tells no client to reconnect
/// until the delay has passed (so a load balancer has dropped it first); then the window
/// runs as usual.
#[tokio::test]
async fn a_notice_delay_holds_the_first_notice_back() {
    let server = start(drain_settings(6000, 10000)).await;
    let admin = server.admin_addr;
    let mut a = Client::connect(server.public_addr, "a").await;
    let (status, v) = post_json(
        admin,
        "/admin/drain",
        r#"{"reconnect_window_seconds": 0.5, "notice_delay_seconds": 1.5, "keep_running": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(v["notice_delay_ms"], 1500, "{v}");
    assert_eq!(
        admin_get(admin, "/readyz").await,
        (503, "draining\n".into())
    );
    assert_eq!(status_of(admin).await["drain"]["notice_delay_ms"], 1500);
    // Nothing within the first second: the delay is a lower bound, whatever the load.
    let early = tokio::time::timeout(Duration::from_millis(1000), a.recv_type("reconnect")).await;
    assert!(early.is_err(), "a notice came during the delay: {early:?}");
    let notice = a.recv_type("reconnect").await;
    assert_eq!(notice["reason"], "draining");
    // A delay that does not leave room for the window before the deadline is refused.
    let b = start(drain_settings(6000, 10000)).await;
    let (status, text) = admin_post_body(
        b.admin_addr,
        "/admin/drain",
        &[],
        r#"{"reconnect_window_seconds": 5, "notice_delay_seconds": 6}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("notice_delay_seconds (6)"), "{text}");
}

#[tokio::test]
async fn keep_running_drain_stays_up_until_undrained() {
    // Configured window 6 s: with it the second notice would be due at 3 s.
    let server = start(drain_settings(6000, 10000)).await;
    let admin = server.admin_addr;
    let a = Client::connect(server.public_addr, "a").await;
    let b = Client::connect(server.public_addr, "b").await;
    assert_eq!(status_of(admin).await["phase"], "serving");

    let t0 = Instant::now();
    let (status, v) = post_json(
        admin,
        "/admin/drain",
        r#"{"reconnect_window_seconds": 0.4, "keep_running": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        v,
        json!({"draining": true, "started": true, "connections": 2, "notice_delay_ms": 0,
               "reconnect_window_ms": 400, "keep_running": true})
    );
    assert_eq!(
        admin_get(admin, "/readyz").await,
        (503, "draining\n".into())
    );

    let mut last_notice = Duration::ZERO;
    for mut c in [a, b] {
        let notice = c.recv_type("reconnect").await;
        assert_eq!(notice["reason"], "draining");
        last_notice = last_notice.max(t0.elapsed());
        assert_eq!(c.expect_close().await.0, 1012);
        c.close().await;
    }
    // The chosen window (second notice due at 0.2 s), not the configured one (3 s).
    assert!(
        last_notice < Duration::from_millis(2500),
        "second notice at {last_notice:?}"
    );

    // Every client is gone: drained, not stopped.
    let v = wait_for_phase(admin, "drained").await;
    assert_eq!(v["draining"], true);
    assert_eq!(v["connections"], 0);
    let d = &v["drain"];
    assert_eq!(d["reconnect_window_ms"], 400);
    assert_eq!(d["deadline_ms"], 10000);
    assert_eq!(d["connections_at_start"], 2);
    assert_eq!(d["keep_running"], true);
    assert_eq!(d["stop_requested"], false);
    assert!(d["elapsed_ms"].as_u64().is_some(), "{v}");
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(admin, "/readyz").await, (503, "drained\n".into()));
    assert_eq!(metric(admin, "chat_draining").await, 1.0);
    let refused = try_connect_with(server.public_addr, "user=late", &[])
        .await
        .expect_err("no new connections while drained");
    assert_eq!(refused.status, 503);
    assert!(refused.retry_after.is_some());
    assert!(refused.body.contains("drained"), "{}", refused.body);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server.stopped())
            .await
            .is_err(),
        "a drain with keep_running does not stop the server"
    );
    // Another drain request leaves the drain in effect as it is.
    let (status, v) = post_json(admin, "/admin/drain", "").await;
    assert_eq!(status, 202);
    assert_eq!(v["started"], false);
    assert_eq!(v["keep_running"], true);
    assert_eq!(v["reconnect_window_ms"], 400);
    assert_eq!(
        wait_for_phase(admin, "drained").await["drain"]["keep_running"],
        true
    );

    // Undrain: serving again.
    let (status, v) = post_json(admin, "/admin/undrain", "").await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"serving": true, "was": "drained"}));
    assert_eq!(admin_get(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(metric(admin, "chat_draining").await, 0.0);
    let v = status_of(admin).await;
    assert_eq!(v["phase"], "serving");
    assert_eq!(v["draining"], false);
    assert_eq!(v["drain"], Value::Null);
    let mut c = Client::connect(server.public_addr, "c").await;
    chats(&mut c, "lobby").await;
    let (status, v) = post_json(admin, "/admin/undrain", "").await;
    assert_eq!(
        (status, v),
        (200, json!({"serving": true, "was": "serving"}))
    );

    // A later plain drain works as ever: the server stops when it ends.
    assert!(server.begin_drain());
    c.recv_type("reconnect").await;
    assert_eq!(c.expect_close().await.0, 1012);
    c.close().await;
    tokio::time::timeout(Duration::from_secs(10), server.stopped())
        .await
        .expect("a plain drain stops the server");
}

#[tokio::test]
async fn undrain_mid_drain_keeps_the_sessions_not_yet_told() {
    // Window 4 s for 2 clients: the first is told at once, the second is due at 2 s, and
    // clients that connect meanwhile would be told at the end of the window (4 s).
    let server = start(drain_settings(1000, 30000)).await;
    let admin = server.admin_addr;
    let mut first = Client::connect(server.public_addr, "first").await;
    let mut second = Client::connect(server.public_addr, "second").await;
    let t0 = Instant::now();
    let (status, v) = post_json(
        admin,
        "/admin/drain",
        r#"{"reconnect_window_seconds": 4, "keep_running": true}"#,
    )
    .await;
    assert_eq!((status, v["started"].clone()), (202, json!(true)));
    first.recv_type("reconnect").await;
    assert_eq!(first.expect_close().await.0, 1012);
    first.close().await;
    let v = status_of(admin).await;
    assert_eq!(v["phase"], "draining");
    assert_eq!(v["drain"]["connections_at_start"], 2);

    let (status, v) = post_json(admin, "/admin/undrain", "").await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"serving": true, "was": "draining"}));
    assert_eq!(admin_get(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(metric(admin, "chat_draining").await, 0.0);
    assert_eq!(status_of(admin).await["phase"], "serving");
    let mut third = Client::connect(server.public_addr, "third").await;

    // Past the second client's slot and the end of the window (plus a margin), nobody
    // was told to reconnect or closed.
    let quiet_until = t0 + Duration::from_secs(5);
    for c in [&mut second, &mut third] {
        let wait = quiet_until.saturating_duration_since(Instant::now());
        match c.next_event(wait).await {
            Event::Timeout => {}
            other => panic!(
                "{}: expected nothing after the undrain, got {other:?}",
                c.user
            ),
        }
    }
    chats(&mut second, "after").await;
    chats(&mut third, "after").await;
    assert_eq!(server.state.hub.connection_count(), 2);
    assert_eq!(status_of(admin).await["phase"], "serving");
}

type Header<'a> = (&'a str, &'a str);

#[tokio::test]
async fn bad_drain_requests_are_refused_and_start_nothing() {
    let server = start(drain_settings(1000, 25000)).await;
    let admin = server.admin_addr;
    let _c = Client::connect(server.public_addr, "c").await;
    let window_msg = |w: &str| {
        format!("reconnect_window_seconds ({w}) must be greater than 0 and shorter than this node's drain deadline (25s)\n")
    };
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let json_type = [("Content-Type", "application/json")];
    let cases: [(&[Header], &str, String); 11] = [
        (&form, "reconnect_window_seconds=5", "not JSON".into()),
        (&[], "{\"keep_running\": tr", "not JSON".into()),
        (
            &json_type,
            r#"{"reconnect_window_seconds": 5, "color": "red"}"#,
            "unknown field `color`".into(),
        ),
        (
            &[],
            r#"{"reconnect_window_seconds": "5"}"#,
            "invalid type".into(),
        ),
        (&[], r#"{"keep_running": "yes"}"#, "invalid type".into()),
        (
            &json_type,
            r#"{"reconnect_window_seconds": 30}"#,
            window_msg("30"),
        ),
        (&[], r#"{"reconnect_window_seconds": 25}"#, window_msg("25")),
        (
            &[],
            r#"{"reconnect_window_seconds": 0, "keep_running": true}"#,
            window_msg("0"),
        ),
        (
            &form,
            r#"{"reconnect_window_seconds": -2}"#,
            window_msg("-2"),
        ),
        (
            &[],
            r#"{"reconnect_window_seconds": 5, "keep_running": null}"#,
            "invalid type".into(),
        ),
        (&[], "[5, true]", "expected a JSON object".into()),
    ];
    for (headers, body, expected) in cases {
        let (status, text) = admin_post_body(admin, "/admin/drain", headers, body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            text.contains(expected.as_str()),
            "{body}: {text:?} lacks {expected:?}"
        );
        assert!(
            text.ends_with('\n') && text.trim_end().lines().count() == 1,
            "one line: {text:?}"
        );
        assert_eq!(
            admin_get(admin, "/readyz").await.0,
            200,
            "{body} started a drain"
        );
        assert_eq!(status_of(admin).await["phase"], "serving", "{body}");
    }
    assert_eq!(metric(admin, "chat_draining").await, 0.0);

    // A good body sent the way `curl -d` sends it (a form content type) is read as JSON.
    let (status, text) = admin_post_body(
        admin,
        "/admin/drain",
        &form,
        r#"{"reconnect_window_seconds": 2.5, "keep_running": true}"#,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["reconnect_window_ms"].clone(), v["keep_running"].clone()),
        (json!(2500), json!(true))
    );
    assert_eq!(admin_get(admin, "/readyz").await.0, 503);
}

#[tokio::test]
async fn undrain_is_refused_after_a_plain_drain() {
    // Two clients: the second is due its notice at 2 s, so the drain is still under way.
    let server = start(drain_settings(4000, 10000)).await;
    let admin = server.admin_addr;
    let _a = Client::connect(server.public_addr, "a").await;
    let _b = Client::connect(server.public_addr, "b").await;
    let (status, v) = post_json(admin, "/admin/drain", "").await;
    assert_eq!(status, 202);
    assert_eq!(v["keep_running"], false);
    let (status, body) = undrain(admin).await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        "this node is stopping (SIGTERM or a drain without keep_running) and cannot be undrained\n"
    );
    let v = status_of(admin).await;
    assert_eq!(v["phase"], "draining");
    assert_eq!(v["drain"]["keep_running"], false);
    assert_eq!(v["drain"]["stop_requested"], false);
    assert_eq!(admin_get(admin, "/readyz").await.0, 503);
}

#[tokio::test]
async fn undrain_while_serving_is_a_no_op() {
    let server = start_default().await;
    for _ in 0..2 {
        let (status, v) = post_json(server.admin_addr, "/admin/undrain", "").await;
        assert_eq!(
            (status, v),
            (200, json!({"serving": true, "was": "serving"}))
        );
    }
    assert_eq!(admin_get(server.admin_addr, "/readyz").await.0, 200);
    let _c = Client::connect(server.public_addr, "c").await;
}

#[tokio::test]
async fn a_stop_request_during_a_kept_running_drain_stops_when_it_ends() {
    let server = start(drain_settings(1000, 10000)).await;
    let admin = server.admin_addr;
    let mut a = Client::connect(server.public_addr, "a").await;
    let mut b = Client::connect(server.public_addr, "b").await;
    let (status, _) = post_json(
        admin,
        "/admin/drain",
        r#"{"reconnect_window_seconds": 1, "keep_running": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert!(server.request_stop(), "wait for the drain under way");
    let v = status_of(admin).await;
    assert_eq!(v["phase"], "draining");
    assert_eq!(v["drain"]["keep_running"], true);
    assert_eq!(v["drain"]["stop_requested"], true);
    assert_eq!(v["drain"]["reconnect_window_ms"], 1000, "not restarted");
    assert_eq!(undrain(admin).await.0, 409);
    for c in [&mut a, &mut b] {
        c.recv_type("reconnect").await;
        assert_eq!(c.expect_close().await.0, 1012);
    }
    a.close().await;
    b.close().await;
    tokio::time::timeout(Duration::from_secs(10), server.stopped())
        .await
        .expect("stops, not drained, when the drain ends");
    assert!(!server.request_stop(), "stopped: nothing to wait for");
}

#[tokio::test]
async fn sigterm_on_a_drained_node_exits_at_once() {
    // Long window and deadline: a prompt exit means nothing waited for them.
    let mut node = Binary::spawn("10s", "30s").await;
    let (status, v) = post_json(node.admin, "/admin/drain", r#"{"keep_running": true}"#).await;
    assert_eq!(status, 202);
    assert_eq!(v["keep_running"], true);
    assert_eq!(v["reconnect_window_ms"], 10000);
    wait_for_phase(node.admin, "drained").await;
    assert_eq!(admin_get(node.admin, "/healthz").await.0, 200);
    assert_eq!(
        admin_get(node.admin, "/readyz").await,
        (503, "drained\n".into())
    );
    assert!(node.is_running());
    node.sigterm();
    assert_eq!(node.exit_code().await, Some(0));
}

#[tokio::test]
async fn sigterm_during_a_kept_running_drain_exits_when_it_ends() {
    let mut node = Binary::spawn("500ms", "30s").await;
    let mut first = Client::connect(node.public, "first").await;
    let mut second = Client::connect(node.public, "second").await;
    let (status, _) = post_json(
        node.admin,
        "/admin/drain",
        r#"{"reconnect_window_seconds": 2, "keep_running": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    first.recv_type("reconnect").await;
    assert_eq!(first.expect_close().await.0, 1012);
    first.close().await;
    node.sigterm();
    let v = wait_for_status(node.admin, "stop_requested", |v| {
        v["drain"]["stop_requested"] == true
    })
    .await;
    assert_eq!(v["phase"], "draining");
    assert_eq!(v["drain"]["reconnect_window_ms"], 2000, "not restarted");
    // The second client gets its notice at its slot of the same drain, once.
    second.recv_type("reconnect").await;
    assert_eq!(second.expect_close().await.0, 1012);
    second.close().await;
    assert_eq!(node.exit_code().await, Some(0));
}
