//! Starts a `chat-server` binary on ephemeral loopback ports and stops it by PID, so
//! suites and benchmarks never leave processes behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};

/// How long a started server may take to log that it listens.
const LISTENING_WITHIN: Duration = Duration::from_secs(30);

/// A running chat-server process; killed on drop if still running.
pub struct ServerProcess {
    pub child: Child,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `binary --dev` on 127.0.0.1 ephemeral ports plus `extra` flags and waits for
    /// its "listening" log line (at most 10 s).
    pub fn start(binary: &Path, extra: &[&str]) -> Result<ServerProcess> {
        Self::start_on(binary, "127.0.0.1:0", "127.0.0.1:0", extra)
    }

    /// Like [`ServerProcess::start`] on given addresses (a restarted node keeps its ports).
    pub fn start_on(
        binary: &Path,
        listen: &str,
        admin: &str,
        extra: &[&str],
    ) -> Result<ServerProcess> {
        let mut child = Command::new(binary)
            .args(["--dev", "--listen", listen, "--admin-listen", admin])
            .args(["--log-format", "json"])
            .args(extra)
            .env(
                "CHAT_LOG",
                std::env::var("CHAT_E2E_SERVER_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // CHAT_E2E_SERVER_LOGS=1 copies every server log line to stderr for debugging.
            let echo = std::env::var_os("CHAT_E2E_SERVER_LOGS").is_some();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                let _ = tx.send(line);
            }
        });
        // Generous: on a loaded 2-core machine (a build next to six Redis processes and
        // other nodes) a debug server has been seen to take over 10 s.
        let deadline = Instant::now() + LISTENING_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    bail!("chat-server did not report listening within {LISTENING_WITHIN:?}");
                }
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "chat server listening" {
                let addr = |k: &str| -> Result<SocketAddr> {
                    v[k].as_str()
                        .context("address in log")?
                        .parse()
                        .context("parse address")
                };
                return Ok(ServerProcess {
                    public_addr: addr("public_addr")?,
                    admin_addr: addr("admin_addr")?,
                    child,
                });
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public_addr)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
