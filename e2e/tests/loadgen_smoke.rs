//! Runs both load generator scenarios briefly against a real chat-server process, so the
//! benchmark program stays correct. Figures come from docs/benchmarks.md runs, not here.

use std::process::Command;

use chatcluster_e2e::server_process::{chat_server_binary, ServerProcess};

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");

fn last_json_line(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("JSON report");
    serde_json::from_str(line).expect("valid JSON report")
}

#[test]
fn fanout_reports_zero_loss_and_server_cpu() {
    let server = ServerProcess::start(
        &chat_server_binary(LOADGEN).unwrap(),
        &["--rate-per-sec", "1000", "--rate-burst", "1000"],
    )
    .unwrap();
    let out = Command::new(LOADGEN)
        .args(["fanout", "--url", &server.ws_url()])
        .args(["--server-pid", &server.pid().to_string()])
        .args([
            "--subscribers",
            "10",
            "--publishers",
            "2",
            "--rate",
            "50",
            "--duration",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = last_json_line(&out.stdout);
    assert_eq!(r["published"], 100);
    assert_eq!(r["deliveries_to_subscribers"], 1000);
    assert_eq!(r["loss"], 0);
    assert_eq!(r["duplicates"], 0);
    assert!(r["server_cpu_us"].as_u64().is_some());
    assert!(r["latency_us"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn idle_holds_connections_from_several_source_addresses() {
    let server = ServerProcess::start(&chat_server_binary(LOADGEN).unwrap(), &[]).unwrap();
    let out = Command::new(LOADGEN)
        .args(["idle", "--url", &server.ws_url()])
        .args(["--server-pid", &server.pid().to_string()])
        .args([
            "--connections",
            "200",
            "--workers",
            "2",
            "--source-ips",
            "4",
            "--hold",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = last_json_line(&out.stdout);
    assert_eq!(r["connections"], 200);
    assert!(r["server_rss_after_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(LOADGEN)
        .args([
            "fanout",
            "--url",
            "ws://192.0.2.1:8080/ws",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
