//! Runs both load generator scenarios briefly against a real chat-server process, so the
//! benchmark program stays correct. Figures come from docs/benchmarks.md runs, not here.

use std::process::Command;

use chatcluster_e2e::harness::binaries::chat_server_binary;
use chatcluster_e2e::harness::server_process::ServerProcess;

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

/// The JSON report of a run that must have exited 0.
fn report_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_json_line(&out.stdout)
}

/// A chat-server that lets the load generator's publishers through.
fn fanout_server() -> ServerProcess {
    ServerProcess::start(
        &chat_server_binary(LOADGEN).unwrap(),
        &["--rate-per-sec", "1000", "--rate-burst", "1000"],
    )
    .unwrap()
}

/// Runs `chat-loadgen fanout` against `server` with `args`; its JSON report, after
/// checking it exited 0.
fn run_fanout(server: &ServerProcess, args: &[&str]) -> serde_json::Value {
    let out = Command::new(LOADGEN)
        .args(["fanout", "--url", &server.ws_url()])
        .args(["--server-pid", &server.pid().to_string()])
        .args(args)
        .output()
        .unwrap();
    report_of(&out)
}

/// Values that a broken load generator gets wrong, not just keys that exist: every
/// message reaches every subscriber exactly once and in order, latency and server CPU are
/// measured, and the publishers' lag behind schedule is reported.
#[test]
fn fanout_reports_every_delivery_latency_lag_and_server_cpu() {
    let server = fanout_server();
    let r = run_fanout(
        &server,
        &[
            "--subscribers",
            "10",
            "--publishers",
            "2",
            "--rate",
            "50",
            "--duration",
            "2",
        ],
    );
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing or not a count in {r}"))
    };
    assert_eq!(n("published"), 100, "{r}");
    assert_eq!(n("deliveries_to_subscribers"), 100 * 10, "{r}");
    // Both publishers are in the room too, so each also gets every message back.
    assert_eq!(n("deliveries_including_echoes"), 100 * 12, "{r}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "gaps",
        "other_traffic",
    ] {
        assert_eq!(n(k), 0, "{k} in {r}");
    }
    let lat = &r["latency_us"];
    assert!(lat["p99"].as_u64().unwrap() > 0, "{r}");
    assert!(lat["p50"].as_u64() <= lat["p99"].as_u64(), "{r}");
    assert!(lat["p99"].as_u64() <= lat["max"].as_u64(), "{r}");
    // Per message, the last of its 10 subscribers: never sooner than the median
    // delivery, and the slowest message's last subscriber is the slowest delivery.
    let last = &r["last_subscriber_latency_us"];
    assert!(last["p50"].as_u64() >= lat["p50"].as_u64(), "{r}");
    assert!(last["p99"].as_u64() <= last["max"].as_u64(), "{r}");
    assert_eq!(last["max"], lat["max"], "{r}");
    // Latency is counted from the scheduled send, so it can never undercut the lag.
    let lag = &r["publisher_lag_us"];
    for q in ["p50", "p99", "max"] {
        assert!(lag[q].as_u64().is_some(), "publisher_lag_us.{q} in {r}");
    }
    assert!(lag["max"].as_u64() <= lat["max"].as_u64(), "{r}");
    assert!(n("server_cpu_us") > 0, "{r}");
    assert!(
        r["server_cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(r["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}

/// With `--rooms`, each subscriber is in one room and gets exactly its room's messages
/// (from its room's own publishers), none of another room's.
#[test]
fn fanout_over_several_rooms_delivers_each_rooms_messages_to_its_members() {
    let server = fanout_server();
    let r = run_fanout(
        &server,
        &[
            "--rooms",
            "4",
            "--subscribers",
            "12",
            "--publishers",
            "1",
            "--rate",
            "40",
            "--duration",
            "2",
        ],
    );
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("rooms"), 4, "{r}");
    assert_eq!(n("published"), 80, "{r}");
    // 20 messages per room, 3 members each, plus each room's publisher's echo.
    assert_eq!(n("deliveries_to_subscribers"), 80 * 3, "{r}");
    assert_eq!(n("deliveries_including_echoes"), 80 * 4, "{r}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "gaps",
        "other_traffic",
    ] {
        assert_eq!(n(k), 0, "{k} in {r}");
    }
    let bad = Command::new(LOADGEN)
        .args(["fanout", "--url", &server.ws_url(), "--rooms", "3"])
        .args(["--subscribers", "10", "--rate", "30"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--rooms must divide"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
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
            "--rooms",
            "5",
        ])
        .output()
        .unwrap();
    let r = report_of(&out);
    assert_eq!(r["connections"], 200);
    assert_eq!(r["rooms"], 5);
    assert!(r["server_rss_after_bytes"].as_u64().unwrap() > 0);
}

/// A join storm reports every member joined, the server's CPU and what the members
/// received; above the presence limit the members get counts, not one frame per arrival,
/// so presence frames stay far under the n²/2 a frame per arrival would cost.
#[test]
fn join_storm_reports_cpu_and_bytes_per_member() {
    let server = ServerProcess::start(
        &chat_server_binary(LOADGEN).unwrap(),
        &["--presence-max-members", "50"],
    )
    .unwrap();
    let out = Command::new(LOADGEN)
        .args(["join-storm", "--url", &server.ws_url()])
        .args(["--server-pid", &server.pid().to_string()])
        .args([
            "--members",
            "300",
            "--join-rate",
            "300",
            "--quiet-ms",
            "1500",
        ])
        .output()
        .unwrap();
    let r = report_of(&out);
    assert_eq!(r["joined"], 300, "{r}");
    assert_eq!(r["closed_by_server"], 0, "{r}");
    assert!(r["server_cpu_secs"].as_f64().unwrap() > 0.0, "{r}");
    let presence = r["presence_frames"].as_u64().unwrap();
    // Up to 50 members, every arrival reaches everyone (50 × 51 / 2); after that, at
    // most a count a second each.
    assert!(presence >= 1275, "{r}");
    assert!(
        presence < 1275 + 300 * 10,
        "counts, not a frame per arrival: {r}"
    );
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

/// `chat-loadgen bench` starts its own servers on ephemeral ports: two nodes over a Redis
/// Cluster of three masters here. Every message reaches every subscriber, both nodes and
/// every Redis master are measured, and no process it started outlives it.
#[test]
fn bench_starts_its_servers_and_redis_and_stops_them() {
    let out = Command::new(LOADGEN)
        .args(["bench", "rooms-redis", "2", "cluster"])
        .args(["--rooms", "4", "--subscribers", "20", "--rate", "40"])
        .args(["--duration", "2"])
        .output()
        .unwrap();
    let r = report_of(&out);
    assert_eq!(r["servers"], 2, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["deliveries_to_subscribers"], 80 * 5, "{r}");
    let per_master = r["redis_cpu_us_per_server"]
        .as_array()
        .unwrap_or_else(|| panic!("per-master Redis CPU in {r}"));
    assert_eq!(per_master.len(), 3, "three masters measured: {r}");
    assert!(r["server_cpu_us"].as_u64().is_some_and(|us| us > 0), "{r}");
    // Nothing it started is left: no chat-server named as its nodes are runs any more.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("chat-server") && c.contains("--node-name bench"))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}
