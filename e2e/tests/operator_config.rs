//! The environment the operator gives chat-server pods (ConfigMap + env) starts a real
//! chat-server: catches drift between the operator's builders and the server's
//! configuration. Listen addresses are moved to 127.0.0.1 ephemeral ports for the test.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use chatcluster_operator::build::{build, BuildContext};
use chatcluster_operator::crd::ChatCluster;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");

fn pod_environment(example: &str) -> BTreeMap<String, String> {
    let path = format!("{}/../examples/{example}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut cluster: ChatCluster = chatcluster_operator::parse_manifest(&text).unwrap();
    cluster
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    cluster.metadata.uid = Some("uid-1".into());
    let d = build(&cluster, BuildContext::default()).unwrap();
    let mut env: BTreeMap<String, String> = d.config_map.data.unwrap();
    let container = &d
        .chat_statefulset
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0];
    for e in container.env.clone().unwrap() {
        let value = match (e.value, e.value_from) {
            (Some(v), _) => v,
            // Downward API and Secret values, as the kubelet would fill them in.
            (None, Some(from)) if from.field_ref.is_some() => {
                match from.field_ref.unwrap().field_path.as_str() {
                    "metadata.name" => "chat-0".into(),
                    "status.podIP" => "127.0.0.1".into(),
                    other => panic!("unexpected fieldRef {other}"),
                }
            }
            (None, Some(from)) if from.secret_key_ref.is_some() => {
                match from.secret_key_ref.unwrap().key.as_str() {
                    "hs256Secret" => "an-hs256-secret-that-is-at-least-32-bytes".into(),
                    "url" => "redis://127.0.0.1:1/".into(),
                    other => panic!("unexpected secret key {other}"),
                }
            }
            other => panic!("unexpected env source {other:?}"),
        };
        env.insert(e.name, value);
    }
    env.insert("CHAT_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("CHAT_ADMIN_LISTEN".into(), "127.0.0.1:0".into());
    // The in-cluster Redis name must not be resolved here (no traffic off loopback):
    // check it, then point at a closed loopback port.
    let url = env.insert("CHAT_REDIS_URL".into(), "redis://127.0.0.1:1/".into());
    assert!(
        url.is_some_and(|u| u.starts_with("redis://")),
        "pods get a Redis URL"
    );
    env
}

#[test]
fn operator_environment_starts_the_server() {
    let binary = chatcluster_e2e::server_process::chat_server_binary(LOADGEN).unwrap();
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
