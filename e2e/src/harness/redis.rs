//! Redis for the suites: one `redis-server` ([`RedisProcess`]) or a Redis Cluster
//! ([`RedisCluster`]) behind one [`Redis`] handle, each started here and stopped by PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::redis_cluster::RedisCluster;

/// A `redis-server`, by default without persistence (a restart loses every key, like a
/// Redis pod without a volume); a durable one ([`RedisProcess::start_with`]) keeps an
/// append-only file.
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    password: Option<String>,
    durable: bool,
}

impl RedisProcess {
    pub fn start(port: u16, dir: &Path) -> Result<RedisProcess> {
        Self::start_with_password(port, dir, None)
    }

    /// Starts a Redis that requires `password` (`requirepass`), when given.
    pub fn start_with_password(
        port: u16,
        dir: &Path,
        password: Option<&str>,
    ) -> Result<RedisProcess> {
        Self::start_with(port, dir, password, false)
    }

    /// Starts a Redis that requires `password` when given and, when `durable`, keeps an
    /// append-only file fsynced on every write: a restart, even after SIGKILL, comes back
    /// with every write it acknowledged.
    pub fn start_with(
        port: u16,
        dir: &Path,
        password: Option<&str>,
        durable: bool,
    ) -> Result<RedisProcess> {
        let mut r = RedisProcess {
            port,
            child: None,
            dir: dir.to_owned(),
            password: password.map(str::to_owned),
            durable,
        };
        r.restart()?;
        Ok(r)
    }

    /// The running server's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (SIGKILL: its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port: empty, or with its append-only file if durable.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let appendonly: &[&str] = if self.durable {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "yes"])
            .args(appendonly)
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass", p.as_str()]),
            )
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let mut buf = [0u8; 16];
                // Without the password Redis answers -NOAUTH: it is up either way.
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf).is_ok_and(|n| {
                        buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")
                    })
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not answer PING on {addr}")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Redis a `LocalCluster` runs on: one instance, or a Redis Cluster.
pub enum Redis {
    Single(RedisProcess),
    /// 3 masters and 3 replicas; the nodes run with `--redis-cluster`.
    Cluster(RedisCluster),
}

impl Redis {
    /// The single instance; panics for a test that asks it of a Redis Cluster.
    pub fn single(&mut self) -> &mut RedisProcess {
        match self {
            Redis::Single(r) => r,
            Redis::Cluster(_) => panic!("this step needs a single Redis instance"),
        }
    }

    /// The Redis Cluster; panics for a test that asks it of a single instance.
    pub fn cluster(&mut self) -> &mut RedisCluster {
        match self {
            Redis::Cluster(c) => c,
            Redis::Single(_) => panic!("this step needs a Redis Cluster"),
        }
    }

    /// Runs one command on the instance, or on every node of the cluster.
    pub fn cli_everywhere(&self, args: &[&str]) -> Result<()> {
        match self {
            Redis::Single(_) => self.cli(args).map(|_| ()),
            Redis::Cluster(c) => c.cli_each(args).map(|_| ()),
        }
    }

    /// What a node's `--redis-url` is: the URL, or the cluster's seed URLs.
    pub fn url(&self) -> String {
        match self {
            Redis::Single(r) => r.url(),
            Redis::Cluster(c) => c.seed_urls(),
        }
    }

    /// Runs one command with `redis-cli` (on any cluster node, following redirections).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let (port, password) = match self {
            Redis::Single(r) => (r.port, r.password.clone()),
            Redis::Cluster(c) => return c.cli_any(args),
        };
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(p) = password {
            cmd.env("REDISCLI_AUTH", p);
        }
        let out = cmd.args(args).output().context("running redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
