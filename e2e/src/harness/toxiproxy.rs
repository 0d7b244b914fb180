//! Toxiproxy (Shopify's fault-injecting TCP proxy, built from its Go module by
//! `e2e/build-toxiproxy.sh`) on loopback: one named proxy per link, whose traffic the
//! chaos soak slows down or cuts through Toxiproxy's HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::binaries::path_from_env_or_script;
use super::http;
use super::process::{free_port, wait_listening, ScratchDir};

/// The toxiproxy-server binary: `CHATCLUSTER_TOXIPROXY`, or built (once, cached) by
/// `e2e/build-toxiproxy.sh`.
pub fn toxiproxy_binary() -> Result<PathBuf> {
    path_from_env_or_script("CHATCLUSTER_TOXIPROXY", "e2e/build-toxiproxy.sh", &[])
}

/// One proxied link: Toxiproxy listens on `listen` and forwards to `upstream`.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
}

impl Link {
    /// A link to `upstream` on a free loopback port.
    pub fn to(name: &str, upstream: SocketAddr) -> Result<Link> {
        Ok(Link {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            upstream,
        })
    }
}

/// A running toxiproxy-server; stopped by PID on drop.
pub struct Toxiproxy {
    api: SocketAddr,
    child: Child,
    _dir: ScratchDir,
}

impl Toxiproxy {
    /// Starts toxiproxy-server with `links` created and enabled, and waits until its API
    /// and every link's port accept connections.
    pub fn start(binary: &Path, links: &[Link]) -> Result<Toxiproxy> {
        let dir = ScratchDir::new("toxiproxy")?;
        let config: Vec<_> = links
            .iter()
            .map(|l| {
                json!({"name": l.name, "listen": l.listen.to_string(),
                       "upstream": l.upstream.to_string(), "enabled": true})
            })
            .collect();
        let config_path = dir.0.join("proxies.json");
        std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = std::fs::File::create(dir.0.join("toxiproxy.log"))?;
        let child = Command::new(binary)
            .args(["-host", "127.0.0.1", "-port", &api.port().to_string()])
            .arg("-config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let proxy = Toxiproxy {
            api,
            child,
            _dir: dir,
        };
        wait_listening(api, Duration::from_secs(10)).context("toxiproxy's API")?;
        for l in links {
            wait_listening(l.listen, Duration::from_secs(10))
                .with_context(|| format!("toxiproxy link {}", l.name))?;
        }
        Ok(proxy)
    }

    /// Adds `ms` of latency to everything `link` carries back from upstream (each reply
    /// and each pub/sub message arrives that much later), as toxic `toxic`.
    pub fn add_latency(&self, link: &str, toxic: &str, ms: u64) -> Result<()> {
        let body = json!({"name": toxic, "type": "latency", "stream": "downstream",
                          "toxicity": 1.0, "attributes": {"latency": ms, "jitter": 0}});
        self.call("POST", &format!("/proxies/{link}/toxics"), Some(&body))
    }

    pub fn remove_toxic(&self, link: &str, toxic: &str) -> Result<()> {
        self.call("DELETE", &format!("/proxies/{link}/toxics/{toxic}"), None)
    }

    /// Disabling a link closes its connections and refuses new ones until it is enabled
    /// again: the node is cut from Redis.
    pub fn set_enabled(&self, link: &str, enabled: bool) -> Result<()> {
        self.call(
            "POST",
            &format!("/proxies/{link}"),
            Some(&json!({ "enabled": enabled })),
        )
    }

    fn call(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<()> {
        let body = body.map(serde_json::Value::to_string);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let opts = http::Options {
                json: body.as_deref(),
                ..http::Options::default()
            };
            let response = http::request(self.api, method, path, opts);
            match response {
                Some(r) if (200..=299).contains(&r.status) => return Ok(()),
                Some(r) => bail!("toxiproxy {method} {path}: HTTP {}: {}", r.status, r.raw),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                None => bail!("toxiproxy {method} {path}: no answer from {}", self.api),
            }
        }
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
