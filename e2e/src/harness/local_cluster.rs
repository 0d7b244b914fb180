//! A ChatCluster on loopback: a real `redis-server`, several `chat-server` processes and a
//! real `haproxy` with cookie stickiness in front, each on ephemeral 127.0.0.1 ports.
//! Every process is started here and stopped by PID when the cluster is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::haproxy::{Balancer, HaproxyServer, Upstream};
use super::http;
use super::process::{free_port, signal, ScratchDir};
use super::redis::{Redis, RedisProcess};
use super::redis_cluster::RedisCluster;
use super::server_process::ServerProcess;

/// One chat-server node with fixed ports so it can be restarted in place.
pub struct Node {
    pub name: String,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// The server API's port (served when the cluster has an API key).
    pub api: SocketAddr,
    /// The Redis this node talks to (Redis itself, or a proxy in front of it).
    pub redis_url: String,
    pub process: Option<ServerProcess>,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }
}

/// Redis, N chat-server nodes and haproxy.
pub struct LocalCluster {
    pub redis: Redis,
    pub nodes: Vec<Node>,
    /// The haproxy instances, each in front of every node (one unless asked for more).
    balancers: Vec<Balancer>,
    max_connections: u32,
    binary: PathBuf,
    extra: Vec<String>,
    api_key: Option<String>,
    _dir: ScratchDir,
}

/// How [`LocalCluster::start_with`] sets a cluster up.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions<'a> {
    /// Number of chat-server nodes (named s1..sn).
    pub nodes: usize,
    /// Flags every node gets.
    pub extra: &'a [&'a str],
    /// A password Redis requires; the nodes get it through `--redis-password` (as a
    /// Kubernetes Secret would provide it).
    pub redis_password: Option<&'a str>,
    /// Redis keeps an append-only file, so a restart loses nothing it acknowledged.
    pub durable_redis: bool,
    /// Redis' port; a free one when `None`. Given when something must point at Redis
    /// before the cluster starts (a fault-injecting proxy).
    pub redis_port: Option<u16>,
    /// The Redis URL of each node in turn (e.g. a proxy in front of Redis); Redis itself
    /// for the nodes past the end of the list.
    pub node_redis_urls: Vec<String>,
    /// haproxy's `maxconn` per instance (4,096 when `None`). One haproxy holds two file
    /// descriptors per connection under the 20,000 open-files limit: past about 9,900
    /// connections, add `load_balancers`.
    pub max_connections: Option<u32>,
    /// haproxy instances, each in front of every node with the same stickiness (at
    /// least 1), as replicas of a load balancer are.
    pub load_balancers: usize,
    /// A Redis Cluster (3 masters, 3 replicas) instead of one instance; the nodes get
    /// `--redis-cluster` and the seed URLs. `durable_redis` and `redis_port` then do not
    /// apply.
    pub redis_cluster: bool,
    /// Turns the server API on, on each node's `api` port, with this key.
    pub api_key: Option<&'a str>,
}

impl LocalCluster {
    /// Starts Redis, `n` nodes (named s1..sn, each with `extra` flags) and haproxy.
    pub fn start(binary: &Path, n: usize, extra: &[&str]) -> Result<LocalCluster> {
        Self::start_with(
            binary,
            ClusterOptions {
                nodes: n,
                extra,
                ..ClusterOptions::default()
            },
        )
    }

    /// Like [`LocalCluster::start`] with a Redis that requires `password`.
    pub fn start_with_redis_password(
        binary: &Path,
        n: usize,
        extra: &[&str],
        password: Option<&str>,
    ) -> Result<LocalCluster> {
        Self::start_with(
            binary,
            ClusterOptions {
                nodes: n,
                extra,
                redis_password: password,
                ..ClusterOptions::default()
            },
        )
    }

    /// Starts Redis, the nodes and haproxy as `opts` says.
    pub fn start_with(binary: &Path, opts: ClusterOptions) -> Result<LocalCluster> {
        let dir = ScratchDir::new("cluster")?;
        let port = match opts.redis_port {
            Some(p) => p,
            None => free_port()?,
        };
        let redis = if opts.redis_cluster {
            Redis::Cluster(RedisCluster::start(opts.redis_password)?)
        } else {
            Redis::Single(RedisProcess::start_with(
                port,
                &dir.0,
                opts.redis_password,
                opts.durable_redis,
            )?)
        };
        let mut extra: Vec<&str> = opts.extra.to_vec();
        if let Some(p) = opts.redis_password {
            extra.extend(["--redis-password", p]);
        }
        if opts.redis_cluster {
            extra.push("--redis-cluster");
        }
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            nodes.push(Node {
                name: format!("s{}", i + 1),
                public: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                api: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                redis_url: opts
                    .node_redis_urls
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| redis.url()),
                process: None,
            });
        }
        let balancers = (0..opts.load_balancers.max(1))
            .map(|b| Balancer::new(b, &dir.0))
            .collect::<Result<_>>()?;
        let mut cluster = LocalCluster {
            redis,
            nodes,
            balancers,
            max_connections: opts.max_connections.unwrap_or(4096),
            binary: binary.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            api_key: opts.api_key.map(str::to_owned),
            _dir: dir,
        };
        for i in 0..opts.nodes {
            cluster.start_node(i)?;
        }
        let upstreams = upstreams(&cluster.nodes);
        for b in &mut cluster.balancers {
            b.start(&upstreams, cluster.max_connections)?;
        }
        Ok(cluster)
    }

    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let mut args: Vec<&str> = vec!["--redis-url", &node.redis_url, "--node-name", &node.name];
        let api = node.api.to_string();
        if let Some(key) = &self.api_key {
            args.extend(["--api-listen", &api, "--api-keys", key]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let process = ServerProcess::start_on(
            &self.binary,
            &node.public.to_string(),
            &node.admin.to_string(),
            &args,
        )?;
        self.nodes[i].process = Some(process);
        Ok(())
    }

    /// Sends SIGTERM to node `i` and waits (at most `within`) for it to exit; returns its
    /// exit code.
    pub fn drain_node(&mut self, i: usize, within: Duration) -> Result<Option<i32>> {
        let mut process = self.nodes[i].process.take().context("node not running")?;
        signal(process.pid(), "TERM")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = process.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not exit within {within:?} of SIGTERM",
                    self.nodes[i].name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the node dies without draining.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        let mut process = self.nodes[i].process.take().context("node not running")?;
        process.child.kill()?;
        process.child.wait()?;
        Ok(())
    }

    /// `GET /readyz` status of node `i` (0 when it does not answer).
    pub fn readyz(&self, i: usize) -> u16 {
        http::status_of(self.nodes[i].admin, "/readyz").0
    }

    /// Waits until every running node reports ready and haproxy routes to each of them
    /// (its health checks report the server UP).
    pub fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<usize> = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].process.is_some())
                .collect();
            if running.iter().all(|i| self.readyz(*i) == 200) {
                let views: Vec<_> = self.balancers.iter().map(Balancer::servers).collect();
                let routed = |i: &usize| {
                    views.iter().all(|servers| {
                        servers.as_ref().is_ok_and(|s| {
                            s.get(&self.nodes[*i].name)
                                .is_some_and(HaproxyServer::routable)
                        })
                    })
                };
                if running.iter().all(routed) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "nodes ready but not all UP in haproxy within {within:?}: {views:?}\n\
                         haproxy's log:\n{}",
                        self.balancers[0].log()
                    );
                }
            } else if Instant::now() >= deadline {
                bail!("nodes not ready within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the (first) haproxy's health checks currently say about each node (by name),
    /// from `show stat` on its stats socket.
    pub fn haproxy_servers(&self) -> Result<BTreeMap<String, HaproxyServer>> {
        self.balancers[0].servers()
    }

    /// SIGKILLs every haproxy and starts each again on its address: every client
    /// connection through them breaks at once (a load balancer restart).
    pub fn restart_haproxy(&mut self) -> Result<()> {
        for b in &mut self.balancers {
            b.kill();
        }
        let upstreams = upstreams(&self.nodes);
        for b in &mut self.balancers {
            b.restart(&upstreams, self.max_connections)?;
        }
        Ok(())
    }

    /// The (first) haproxy's address.
    pub fn haproxy_addr(&self) -> SocketAddr {
        self.balancers[0].addr
    }

    /// The (first) haproxy's WebSocket URL.
    pub fn haproxy_url(&self) -> String {
        self.balancers[0].ws_url()
    }

    /// Every haproxy's WebSocket URL.
    pub fn haproxy_urls(&self) -> Vec<String> {
        self.balancers.iter().map(Balancer::ws_url).collect()
    }

    /// Value of a metric on node `i`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        http::metric(self.nodes[i].admin, name)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for b in &mut self.balancers {
            b.kill();
        }
        for n in &mut self.nodes {
            n.process.take();
        }
    }
}

/// What haproxy routes to: every node.
fn upstreams(nodes: &[Node]) -> Vec<Upstream<'_>> {
    nodes
        .iter()
        .map(|n| Upstream {
            name: &n.name,
            public: n.public,
            admin: n.admin,
        })
        .collect()
}
