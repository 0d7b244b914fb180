//! The environment the operator gives chat-server pods (ConfigMap + env) starts a real
//! chat-server: catches drift between the operator's builders and the server's
//! configuration. Listen addresses are moved to 127.0.0.1 ephemeral ports for the test.

use std::process::{Command, Stdio};

mod common;
use common::pod_environment;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");

#[test]
fn operator_environment_starts_the_server() {
    let binary = chatcluster_e2e::harness::binaries::chat_server_binary(LOADGEN).unwrap();
    for example in ["minimal.yaml", "full.yaml"] {
        let env = pod_environment(example);
        // `--help`-free dry run: start it, wait for the listening line, stop it.
        let mut child = Command::new(&binary)
            .env_clear()
            .envs(&env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let listening = std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .take(20)
            .find(|l| l.contains("chat server listening"));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            listening.is_some(),
            "{example}: chat-server did not start with the operator's environment {env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = listening.unwrap();
        assert!(
            line.contains("\"backplane\":\"redis\""),
            "{example}: {line}"
        );
    }
}

/// The managed Redis as the operator configures it: a real `redis-server` started with the
/// arguments of the operator's Redis StatefulSet and the config file of the generated
/// `NAME-redis-auth` Secret refuses a client without the password, and a chat-server with
/// the pods' environment (CHAT_REDIS_PASSWORD from the same Secret) connects and is ready.
#[test]
fn the_generated_redis_password_locks_redis_and_the_pods_have_it() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let desired = common::desired_for_example("minimal.yaml");
    let cluster = common::cluster_for_example("minimal.yaml");
    let password = chatcluster_operator::reconcile::generated_secrets::random_value().unwrap();
    let secret = chatcluster_operator::build::generated_secret(
        &cluster,
        &chatcluster_operator::build::redis_auth_secret_name("chat"),
        &password,
    )
    .unwrap();
    let data = secret.string_data.unwrap();
    let scratch = chatcluster_e2e::harness::process::ScratchDir::new("redis-auth").unwrap();
    let conf = scratch.0.join("redis.conf");
    std::fs::write(&conf, &data["redis.conf"]).unwrap();
    assert!(!data["redis.conf"].is_empty() && data["password"] == password);

    // The operator's Redis arguments, with the config file and data dir moved here.
    let redis = desired
        .redis_statefulset
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let args = redis.containers[0].args.clone().unwrap();
    assert!(
        !args.iter().any(|a| a.contains(&password)),
        "the password is not in the pod's arguments: {args:?}"
    );
    let port = chatcluster_e2e::harness::process::free_port().unwrap();
    let mut redis_args: Vec<String> = args
        .iter()
        .map(|a| match a.as_str() {
            "/data" => scratch.0.display().to_string(),
            a if a.ends_with("redis.conf") => conf.display().to_string(),
            a => a.to_owned(),
        })
        .collect();
    redis_args.extend([
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
    ]);
    let mut redis_server = Command::new("redis-server")
        .args(&redis_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    chatcluster_e2e::harness::process::wait_listening(addr, Duration::from_secs(10)).unwrap();

    // Without the password: refused.
    let mut anonymous = std::net::TcpStream::connect(addr).unwrap();
    anonymous
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    anonymous.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 64];
    let n = anonymous.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
    assert!(reply.starts_with("-NOAUTH"), "{reply}");

    // The pods' environment: the chat-server authenticates and turns ready.
    let binary = chatcluster_e2e::harness::binaries::chat_server_binary(LOADGEN).unwrap();
    let mut env = common::pod_environment("minimal.yaml");
    env.insert(
        "CHAT_REDIS_URL".into(),
        format!("redis://127.0.0.1:{port}/"),
    );
    env.insert("CHAT_REDIS_PASSWORD".into(), password.clone());
    let admin_port = chatcluster_e2e::harness::process::free_port().unwrap();
    env.insert(
        "CHAT_ADMIN_LISTEN".into(),
        format!("127.0.0.1:{admin_port}"),
    );
    let mut chat = Command::new(&binary)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = (0, String::new());
    while Instant::now() < deadline {
        status = chatcluster_e2e::harness::http::status_of(admin, "/readyz");
        if status.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    chatcluster_e2e::harness::process::terminate(&mut chat, Duration::from_secs(10));
    chatcluster_e2e::harness::process::terminate(&mut redis_server, Duration::from_secs(10));
    assert_eq!(
        status.0, 200,
        "chat-server with the pods' password: {}",
        status.1
    );
}
