//! The environment the operator gives chat-server pods (ConfigMap + env) starts a real
//! chat-server: catches drift between the operator's builders and the server's
//! configuration. Listen addresses are moved to 127.0.0.1 ephemeral ports for the test.

use std::process::{Command, Stdio};

mod common;
use common::pod_environment;

const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");

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
