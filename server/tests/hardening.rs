//! Hostile clients: slow and silent HTTP connections, floods of new connections from one
//! address, spoofed forwarding headers, and WebSocket-level abuse written as raw frames.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_server::config::Settings;
use chat_server::RunningServer;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection from a chosen loopback source address.
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind a loopback source address");
    socket.connect(to).await.expect("connect")
}

/// Sends a WebSocket upgrade request and returns the status code and the response head.
async fn upgrade_raw(tcp: &mut TcpStream, query: &str, extra: &str) -> (u16, String) {
    let request = format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n == 1, "connection closed during the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, head)
}

/// An upgrade from `source` with `headers`: the status code.
async fn upgrade_status(source: [u8; 4], to: SocketAddr, user: &str, headers: &str) -> u16 {
    let mut tcp = connect_from(source, to).await;
    upgrade_raw(&mut tcp, &format!("user={user}"), headers)
        .await
        .0
}

/// One client frame, masked as RFC 6455 requires.
fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads server frames until a close frame; returns its code and reason, counting the
/// other frames by opcode (text, pong).
async fn read_until_close(tcp: &mut TcpStream) -> (u16, String, usize, usize) {
    let (mut texts, mut pongs) = (0, 0);
    loop {
        let mut head = [0u8; 2];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut head))
            .await
            .expect("a frame in time")
            .expect("the server sends a close frame before closing");
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                tcp.read_exact(&mut b).await.expect("length");
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                tcp.read_exact(&mut b).await.expect("length");
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        tcp.read_exact(&mut payload).await.expect("payload");
        match opcode {
            0x8 => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                return (code, reason, texts, pongs);
            }
            0x1 => texts += 1,
            0xA => pongs += 1,
            _ => {}
        }
    }
}

/// A raw WebSocket on `server` after its `welcome`.
async fn raw_session(server: &RunningServer, user: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(server.public_addr)
        .await
        .expect("connect");
    let (status, head) = upgrade_raw(&mut tcp, &format!("user={user}"), "").await;
    assert_eq!(status, 101, "{head}");
    tcp
}

#[tokio::test]
async fn slow_and_silent_connections_are_closed_and_do_not_lock_out_a_real_client() {
    const SLOW: usize = 2_000;
    let mut settings = Settings::local_test();
    settings.header_read_timeout = Duration::from_secs(3);
    settings.max_pending_connections = 1_024;
    settings.max_connections = 4_000;
    let server = start(settings).await;
    let addr = server.public_addr;

    // Half never send a byte; half trickle a request head one byte every 500 ms.
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        slow.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut tcp = tcp;
            let head = b"GET /ws?user=slow HTTP/1.1\r\nHost: chat.test\r\n";
            let mut buf = [0u8; 64];
            let mut next_byte = 0;
            loop {
                let pause = tokio::time::sleep(Duration::from_millis(500));
                tokio::select! {
                    read = tcp.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return opened.elapsed(),
                        Ok(_) => continue, // e.g. a 408; the close follows
                    },
                    _ = pause, if i % 2 == 1 => {
                        if next_byte < head.len() && tcp.write_all(&head[next_byte..=next_byte]).await.is_err() {
                            return opened.elapsed();
                        }
                        next_byte += 1;
                    }
                }
                if opened.elapsed() > Duration::from_secs(20) {
                    return opened.elapsed();
                }
            }
        }));
    }

    // A real client still gets in at once, pending floods or not.
    let started = Instant::now();
    let client = Client::connect(addr, "real").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "real client took {took:?}");
    client.close().await;

    let mut longest = Duration::ZERO;
    for task in slow {
        longest = longest.max(task.await.expect("slow client task"));
    }
    // Every slow connection was closed by the timeout (3 s) or, past the cap, sooner.
    assert!(
        longest < Duration::from_secs(3) + Duration::from_millis(1500),
        "a slow connection lived {longest:?}"
    );
    let evicted = metric(
        server.admin_addr,
        "chat_pending_connections_closed_total{port=\"public\",reason=\"pending_cap\"}",
    )
    .await;
    let timed_out = metric(
        server.admin_addr,
        "chat_pending_connections_closed_total{port=\"public\",reason=\"header_timeout\"}",
    )
    .await;
    assert!(evicted >= (SLOW - 1_024) as f64, "evicted {evicted}");
    assert!(
        evicted + timed_out >= SLOW as f64,
        "{evicted} + {timed_out}"
    );
    wait_for_metric(
        server.admin_addr,
        "chat_pending_connections{port=\"public\"}",
        0.0,
    )
    .await;
}

#[tokio::test]
async fn large_request_heads_fit_and_oversized_ones_are_refused() {
    let server = start_default().await;
    // 20 KiB of cookies (a browser on a busy domain) still upgrades.
    let mut tcp = TcpStream::connect(server.public_addr)
        .await
        .expect("connect");
    let cookies = format!("Cookie: c={}\r\n", "x".repeat(20 * 1024));
    let (status, head) = upgrade_raw(&mut tcp, "user=cookies", &cookies).await;
    assert_eq!(status, 101, "{head}");
    // Far past the limit (32 KiB, as hyper enforces it: on what one read has buffered)
    // the request is refused before any handler runs.
    // The server may close while the rest is still unread, which can reset the
    // connection before the 431 is read: either way there is no upgrade.
    let mut tcp = TcpStream::connect(server.public_addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /ws?user=huge HTTP/1.1\r\nHost: chat.test\r\nCookie: c={}\r\n\r\n",
        "x".repeat(200 * 1024)
    );
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_flood_from_one_address_does_not_starve_other_addresses() {
    let mut settings = Settings::local_test();
    // 20 connections for the whole test: refills are too slow to matter.
    settings.accept_rate_per_sec = 0.01;
    settings.accept_burst = 20;
    let flood_and_count_others = |settings: Settings| async move {
        let server = start(settings).await;
        let addr = server.public_addr;
        let mut flood_refused = 0;
        for i in 0..200 {
            if upgrade_status([127, 0, 0, 2], addr, &format!("f{i}"), "").await == 503 {
                flood_refused += 1;
            }
        }
        let mut others_in = 0;
        for i in 0..10u8 {
            if upgrade_status([127, 0, 1, 1 + i], addr, &format!("o{i}"), "").await == 101 {
                others_in += 1;
            }
        }
        (flood_refused, others_in)
    };

    // Without a per-source limit the flood spends the node's budget: others get 503.
    let (refused, others_in) = flood_and_count_others(settings.clone()).await;
    assert!(refused >= 150, "{refused}");
    assert_eq!(
        others_in, 0,
        "the flood should have spent the shared budget"
    );

    // With one, the flood spends its own.
    settings.accept_rate_per_source = 1.0;
    settings.accept_burst_per_source = 5;
    let (refused, others_in) = flood_and_count_others(settings).await;
    assert!(refused >= 190, "{refused}");
    assert_eq!(others_in, 10, "other addresses were starved");
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let mut settings = Settings::local_test();
    settings.accept_rate_per_source = 1.0;
    settings.accept_burst_per_source = 2;
    settings.trusted_proxies =
        chat_server::client_addr::TrustedProxies::parse("127.0.0.1/32").expect("ranges");
    let server = start(settings).await;
    let addr = server.public_addr;

    // An untrusted peer naming a different client every time is still one source.
    let mut spoofed_in = 0;
    for i in 0..20u8 {
        let header = format!("X-Forwarded-For: 198.51.100.{i}\r\n");
        if upgrade_status([127, 0, 0, 2], addr, &format!("s{i}"), &header).await == 101 {
            spoofed_in += 1;
        }
    }
    assert_eq!(spoofed_in, 2, "the spoofed header was believed");

    // The trusted proxy forwards 20 different clients: each has its own budget.
    let mut forwarded_in = 0;
    for i in 0..20u8 {
        let header = format!("X-Forwarded-For: 6.6.6.6, 198.51.100.{i}\r\n");
        if upgrade_status([127, 0, 0, 1], addr, &format!("p{i}"), &header).await == 101 {
            forwarded_in += 1;
        }
    }
    assert_eq!(forwarded_in, 20);
    // …and the same client through it is limited like any other (its burst is 2).
    let header = "X-Forwarded-For: 198.51.100.1\r\n";
    assert_eq!(
        upgrade_status([127, 0, 0, 1], addr, "again", header).await,
        101
    );
    // A client's own `Forwarded` passes through an X-Forwarded-For proxy untouched: it
    // is ignored, so this is still 198.51.100.1, now out of tokens.
    let header = "Forwarded: for=203.0.113.50\r\nX-Forwarded-For: 198.51.100.1\r\n";
    assert_eq!(
        upgrade_status([127, 0, 0, 1], addr, "again2", header).await,
        503
    );
    let refused = metric(
        server.admin_addr,
        "chat_upgrades_rejected_total{reason=\"source_rate\"}",
    )
    .await;
    assert_eq!(refused, 19.0);
}

#[tokio::test]
async fn compression_is_never_negotiated_and_compressed_frames_are_refused() {
    let server = start_default().await;
    let mut tcp = TcpStream::connect(server.public_addr)
        .await
        .expect("connect");
    let (status, head) = upgrade_raw(
        &mut tcp,
        "user=zip",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "an extension was negotiated: {head}"
    );
    // A "compressed" frame (RSV1 set) is a protocol violation.
    tcp.write_all(&client_frame(true, true, 0x1, b"\x00\x00\xff\xff"))
        .await
        .expect("write");
    let (code, reason, _, _) = read_until_close(&mut tcp).await;
    assert_eq!(code, 1002, "{reason}");
}

#[tokio::test]
async fn malformed_websocket_frames_get_their_close_codes() {
    let server = start_default().await;

    // A continuation without a start.
    let mut tcp = raw_session(&server, "cont").await;
    tcp.write_all(&client_frame(true, false, 0x0, b"orphan"))
        .await
        .expect("write");
    let (code, reason, _, _) = read_until_close(&mut tcp).await;
    assert_eq!(code, 1002, "{reason}");

    // Fragments that add up past the 16 KiB message limit, each well under it.
    let mut tcp = raw_session(&server, "frag").await;
    let piece = vec![b'a'; 6 * 1024];
    tcp.write_all(&client_frame(false, false, 0x1, &piece))
        .await
        .expect("write");
    for _ in 0..3 {
        if tcp
            .write_all(&client_frame(false, false, 0x0, &piece))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason, _, _) = read_until_close(&mut tcp).await;
    assert_eq!(code, 1009, "{reason}");

    // A text frame that is not UTF-8.
    let mut tcp = raw_session(&server, "utf").await;
    tcp.write_all(&client_frame(true, false, 0x1, &[0x7b, 0xff, 0xfe, 0x7d]))
        .await
        .expect("write");
    let (code, reason, _, _) = read_until_close(&mut tcp).await;
    assert_eq!(code, 1007, "{reason}");

    // A fragmented ping (control frames cannot be fragmented).
    let mut tcp = raw_session(&server, "ctl").await;
    tcp.write_all(&client_frame(false, false, 0x9, b"x"))
        .await
        .expect("write");
    let (code, reason, _, _) = read_until_close(&mut tcp).await;
    assert_eq!(code, 1002, "{reason}");

    let closed = |code: &str| format!("chat_connections_closed_total{{code=\"{code}\"}}");
    wait_for_metric(server.admin_addr, &closed("1002"), 2.0).await;
    wait_for_metric(server.admin_addr, &closed("1007"), 1.0).await;
    wait_for_metric(server.admin_addr, &closed("1009"), 1.0).await;
}

#[tokio::test]
async fn ping_and_frame_floods_are_closed_and_their_answers_stay_bounded() {
    let mut settings = Settings::local_test();
    settings.rate_per_sec = 20.0;
    settings.rate_burst = 40;
    let server = start(settings).await;

    // 2,000 pings in one write: far over 20/s with a burst of 40.
    let mut tcp = raw_session(&server, "pinger").await;
    let pings: Vec<u8> = (0..2_000)
        .flat_map(|_| client_frame(true, false, 0x9, b"p"))
        .collect();
    let _ = tcp.write_all(&pings).await;
    let (code, reason, _, pongs) = read_until_close(&mut tcp).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("flooding"), "{reason}");
    // tungstenite keeps one unsent pong at a time: far fewer pongs than pings.
    assert!(pongs < 2_000, "{pongs} pongs");

    // The same for JSON frames: some rate_limited errors, then the close.
    let mut tcp = raw_session(&server, "spammer").await;
    let ping = json!({"type":"ping"}).to_string();
    let frames: Vec<u8> = (0..2_000)
        .flat_map(|_| client_frame(true, false, 0x1, ping.as_bytes()))
        .collect();
    let _ = tcp.write_all(&frames).await;
    let (code, reason, texts, _) = read_until_close(&mut tcp).await;
    assert_eq!(code, 1008, "{reason}");
    // welcome + 40 pongs + at most 4 × 40 refusals answered rate_limited (+ refills).
    assert!(texts <= 1 + 40 + 160 + 5, "{texts} text frames");

    // A client just above its rate is refused now and then but not closed.
    let mut steady = Client::connect(server.public_addr, "steady").await;
    for _ in 0..120 {
        steady.send(json!({"type":"ping"})).await;
        tokio::time::sleep(Duration::from_millis(40)).await; // 25/s
    }
    steady
        .send(json!({"type":"join","room":"still-here"}))
        .await;
    loop {
        let v = steady.recv().await;
        if v["type"] == "joined" {
            break;
        }
        assert!(v["type"] == "pong" || v["code"] == "rate_limited", "{v}");
    }
    steady.close().await;
}

#[tokio::test]
async fn joining_and_leaving_100_rooms_in_a_loop_leaves_nothing_behind() {
    let mut settings = Settings::local_test();
    settings.rate_per_sec = 100_000.0;
    settings.rate_burst = 10_000;
    let server = start(settings).await;
    let mut c = Client::connect(server.public_addr, "churn").await;
    for round in 0..10 {
        for r in 0..100 {
            c.send(json!({"type":"join","room":format!("churn-{r}")}))
                .await;
        }
        for _ in 0..100 {
            c.recv_type("joined").await;
        }
        for r in 0..100 {
            c.send(json!({"type":"leave","room":format!("churn-{r}")}))
                .await;
        }
        for _ in 0..100 {
            c.recv_type("left").await;
        }
        assert_eq!(server.state.hub.room_count(), 0, "round {round}");
    }
    let (status, body) = admin_get(server.admin_addr, "/admin/status").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["rooms"], 0, "{status}");
    let sessions = server.state.hub.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].wire.queued_bytes(), 0, "send queue not drained");
    c.close().await;
}
