//! A real Redis Cluster on loopback: 3 masters and 3 replicas of `redis-server` in
//! cluster mode, created with `redis-cli --cluster create … --cluster-replicas 1`, with
//! the operations the failover and migration tests need (kill a master and wait for its
//! replica to take over, move one slot between masters). Every process is started here
//! and stopped by PID when the cluster is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::{free_ports, wait_listening, ScratchDir};
use super::tls::TestCa;

/// How long a master may be unreachable before its replica is promoted.
const NODE_TIMEOUT_MS: u32 = 1000;

struct ClusterNode {
    port: u16,
    /// The cluster bus' port, kept across restarts.
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Alive as seen by the node asked (not `fail`/`fail?`, connected).
    pub healthy: bool,
    /// Slot ranges served (masters).
    pub slots: Vec<(u16, u16)>,
}

pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    password: Option<String>,
    /// With TLS: clients, replication and the cluster bus all speak TLS only.
    tls: Option<TestCa>,
    _dir: ScratchDir,
}

impl RedisCluster {
    /// Starts 6 nodes and creates a cluster of 3 masters with one replica each; returns
    /// once every slot is served and every node agrees the cluster is ok.
    pub fn start(password: Option<&str>) -> Result<RedisCluster> {
        Self::start_with(password, None)
    }

    /// [`RedisCluster::start`] with TLS everywhere (`rediss://` for clients), the
    /// server certificates signed by `tls`'s CA.
    pub fn start_with(password: Option<&str>, tls: Option<TestCa>) -> Result<RedisCluster> {
        Self::start_shaped(password, tls, 3, 1)
    }

    /// `masters` masters without replicas, no password, no TLS: the benchmarks' cluster,
    /// where each shard's CPU is the figure.
    pub fn start_masters(masters: usize) -> Result<RedisCluster> {
        Self::start_shaped(None, None, masters, 0)
    }

    /// PIDs of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    fn start_shaped(
        password: Option<&str>,
        tls: Option<TestCa>,
        masters: usize,
        replicas_each: usize,
    ) -> Result<RedisCluster> {
        let dir = ScratchDir::new("redis-cluster")?;
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            password: password.map(str::to_owned),
            tls,
            _dir: dir,
        };
        // Every data and bus port at once, so none of them is another's: a bus port picked
        // after the data ports were let go could be a node's data port not yet started.
        let ports = free_ports(2 * masters * (1 + replicas_each))?;
        for pair in ports.chunks(2) {
            let (port, bus_port) = (pair[0], pair[1]);
            let node_dir = cluster._dir.0.join(port.to_string());
            std::fs::create_dir_all(&node_dir)?;
            cluster.nodes.push(ClusterNode {
                port,
                bus_port,
                dir: node_dir,
                child: None,
            });
        }
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i)?;
        }
        let mut create = cluster.cli_command(cluster.nodes[0].port);
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args([
            "--cluster-replicas",
            &replicas_each.to_string(),
            "--cluster-yes",
        ]);
        let out = create
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_ok(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let bus_port = node.bus_port;
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &node.port.to_string()]),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &node.port.to_string()])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(["--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &bus_port.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&node.dir)
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--logfile")
            .arg(node.dir.join("redis.log"));
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        self.nodes[i].child = Some(child);
        wait_listening(
            std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].port)),
            Duration::from_secs(10),
        )
    }

    fn cli_command(&self, port: u16) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        if let Some(p) = &self.password {
            cmd.env("REDISCLI_AUTH", p);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs one command on the node at `port` with `redis-cli`; its output, or an error
    /// if redis-cli failed or Redis answered an error.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String> {
        let out = self
            .cli_command(port)
            .args(args)
            .output()
            .context("running redis-cli")?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || text.starts_with("ERR") || text.starts_with("(error)") {
            bail!(
                "redis-cli -p {port} {}: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    /// Runs one command with `redis-cli -c` on a running node (following `MOVED`).
    pub fn cli_any(&self, args: &[&str]) -> Result<String> {
        let port = *self.running_ports().first().context("no node running")?;
        let mut full = vec!["-c"];
        full.extend_from_slice(args);
        self.cli(port, &full)
    }

    /// The CA certificate clients must trust, with TLS.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// Runs one command on every running node; their outputs.
    pub fn cli_each(&self, args: &[&str]) -> Result<Vec<String>> {
        self.running_ports()
            .into_iter()
            .map(|port| self.cli(port, args))
            .collect()
    }

    /// Seed URLs for `CHAT_REDIS_URL`, comma-separated (every node: any will do).
    pub fn seed_urls(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}/", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The cluster as a running node sees it.
    pub fn topology(&self) -> Result<Vec<NodeInfo>> {
        let port = *self
            .running_ports()
            .first()
            .context("no Redis Cluster node is running")?;
        Ok(parse_cluster_nodes(&self.cli(port, &["CLUSTER", "NODES"])?))
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees on one master
    /// for every slot, and every replica is in sync with its master.
    pub fn wait_ok(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            let mut owners: Option<BTreeMap<u16, String>> = None;
            for port in self.running_ports() {
                let info = self.cli(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    ok = false;
                    break;
                }
                let view = self.cli(port, &["CLUSTER", "NODES"]).unwrap_or_default();
                let mine = slot_owners(&parse_cluster_nodes(&view));
                if mine.len() != 16384 {
                    ok = false;
                    break;
                }
                match &owners {
                    None => owners = Some(mine),
                    Some(o) if *o == mine => {}
                    Some(_) => {
                        ok = false;
                        break;
                    }
                }
                // A replica that has not finished its first sync cannot be promoted.
                let replication = self.cli(port, &["INFO", "replication"]).unwrap_or_default();
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    ok = false;
                    break;
                }
            }
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("Redis Cluster not ok within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The slot `key` (or channel) hashes to.
    pub fn keyslot(&self, key: &str) -> Result<u16> {
        let port = *self.running_ports().first().context("no node running")?;
        self.cli(port, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .context("CLUSTER KEYSLOT reply")
    }

    /// The master serving `slot`.
    pub fn master_of(&self, slot: u16) -> Result<NodeInfo> {
        self.topology()?
            .into_iter()
            .find(|n| {
                n.master && n.healthy && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .with_context(|| format!("no healthy master serves slot {slot}"))
    }

    /// SIGKILLs the node on `port` (its replica, if it was a master, is promoted after
    /// the node timeout).
    pub fn kill(&mut self, port: u16) -> Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("no such node")?;
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// Starts the node on `port` again; it rejoins (a former master as a replica).
    pub fn restart(&mut self, port: u16) -> Result<()> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .context("no such node")?;
        self.start_node(i)
    }

    /// Moves `slot` and its keys from its master to the master on `to_port`, the way
    /// `redis-cli --cluster reshard` does: IMPORTING/MIGRATING, `MIGRATE` in batches, then
    /// the new owner on every master. Clients meanwhile get `ASK`, `TRYAGAIN` or `MOVED`.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) -> Result<()> {
        let from = self.master_of(slot)?;
        let topology = self.topology()?;
        let to = topology
            .iter()
            .find(|n| n.port == to_port && n.master)
            .context("the target is not a master")?;
        if from.id == to.id {
            bail!("slot {slot} is already on 127.0.0.1:{to_port}");
        }
        let slot_text = slot.to_string();
        self.cli(
            to.port,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from.id],
        )?;
        self.cli(
            from.port,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to.id],
        )?;
        loop {
            let keys = self.cli(from.port, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"])?;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port_text = to.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port_text, "", "0", "5000"];
            if let Some(p) = &self.password {
                args.extend(["AUTH", p.as_str()]);
            }
            args.push("KEYS");
            args.extend(keys.iter().copied());
            self.cli(from.port, &args)?;
        }
        for node in topology.iter().filter(|n| n.master && n.healthy) {
            self.cli(
                node.port,
                &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to.id],
            )?;
        }
        Ok(())
    }

    /// Kills the master of `slot` and waits until its replica serves the slot; returns
    /// the new master's port.
    pub fn fail_over_slot(&mut self, slot: u16, within: Duration) -> Result<u16> {
        let old = self.master_of(slot)?;
        self.kill(old.port)?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(m) = self.master_of(slot) {
                if m.port != old.port {
                    self.wait_ok(deadline.saturating_duration_since(Instant::now()))?;
                    return Ok(m.port);
                }
            }
            if Instant::now() >= deadline {
                bail!("no replica took over slot {slot} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log of the node on `port` (for a failing test's message).
    pub fn log_tail(&self, port: u16, lines: usize) -> String {
        let Some(node) = self.nodes.iter().find(|n| n.port == port) else {
            return String::new();
        };
        let text = std::fs::read_to_string(node.dir.join("redis.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Parses `CLUSTER NODES`: `id addr:port@bus flags master-id ping pong epoch link slots…`.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                healthy: !flags.iter().any(|fl| fl.starts_with("fail")) && f[7] == "connected",
                slots,
            })
        })
        .collect()
}

/// Slot → id of the healthy master serving it.
fn slot_owners(nodes: &[NodeInfo]) -> BTreeMap<u16, String> {
    let mut owners = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.master && n.healthy) {
        for (a, b) in &n.slots {
            for s in *a..=*b {
                owners.insert(s, n.id.clone());
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
07c3 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 6000
67ed 127.0.0.1:30002@40002 master,fail - 0 0 2 connected 5461-5999 6001-10922
e7d1 127.0.0.1:30004@40004 slave 07c3 0 0 1 connected
bad line";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 30001);
        assert!(nodes[0].master && nodes[0].healthy);
        assert_eq!(nodes[0].slots, vec![(0, 5460), (6000, 6000)]);
        assert!(!nodes[1].healthy);
        assert!(!nodes[2].master);
        let owners = slot_owners(&nodes);
        assert_eq!(owners.len(), 5462);
    }
}
