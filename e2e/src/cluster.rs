//! A ChatCluster on loopback: a real `redis-server`, several `chat-server` processes and a
//! real `haproxy` with cookie stickiness in front, each on ephemeral 127.0.0.1 ports.
//! Every process is started here and stopped by PID when the cluster is dropped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};

use crate::redis_cluster::RedisCluster;
use crate::server_process::ServerProcess;

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listening on {addr} after {within:?}")
}

/// A command that runs `binary` as `uid:gid` (through `setpriv`, which execs it, so the
/// child's PID is the binary's; the caller must be root), or as the caller when `None`.
pub fn command_as(binary: &Path, run_as: Option<(u32, u32)>) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--"])
                .arg(binary);
            c
        }
        None => Command::new(binary),
    }
}

/// SIGTERM to `child`, then its exit status; SIGKILL (and `None`) if it has not exited
/// within `within`.
pub fn terminate(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on the PID of a child the caller owns and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A scratch directory for config files, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!(
            "chatcluster-{tag}-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// One chat-server node with fixed ports so it can be restarted in place.
pub struct Node {
    pub name: String,
    pub public: SocketAddr,
    pub admin: SocketAddr,
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
/// The Redis a [`LocalCluster`] runs on.
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

pub struct LocalCluster {
    pub redis: Redis,
    pub nodes: Vec<Node>,
    /// The haproxy instances, each in front of every node (one unless asked for more).
    balancers: Vec<Balancer>,
    max_connections: u32,
    binary: PathBuf,
    extra: Vec<String>,
    _dir: ScratchDir,
}

/// One haproxy process in front of every node.
struct Balancer {
    addr: SocketAddr,
    child: Option<Child>,
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
                redis_url: opts
                    .node_redis_urls
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| redis.url()),
                process: None,
            });
        }
        let balancers = (0..opts.load_balancers.max(1))
            .map(|_| {
                Ok(Balancer {
                    addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                    child: None,
                })
            })
            .collect::<Result<_>>()?;
        let mut cluster = LocalCluster {
            redis,
            nodes,
            balancers,
            max_connections: opts.max_connections.unwrap_or(4096),
            binary: binary.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        for i in 0..opts.nodes {
            cluster.start_node(i)?;
        }
        for b in 0..cluster.balancers.len() {
            cluster.start_haproxy(b)?;
        }
        Ok(cluster)
    }

    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let mut args: Vec<&str> = vec!["--redis-url", &node.redis_url, "--node-name", &node.name];
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
        http_status(self.nodes[i].admin, "/readyz")
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
                let views: Vec<_> = (0..self.balancers.len())
                    .map(|b| self.haproxy_servers_of(b))
                    .collect();
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
                        self.haproxy_log(0)
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
        self.haproxy_servers_of(0)
    }

    fn haproxy_servers_of(&self, b: usize) -> Result<BTreeMap<String, HaproxyServer>> {
        let mut s = UnixStream::connect(self.haproxy_socket(b))
            .context("connecting to haproxy's stats socket")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"show stat\n")?;
        let mut csv = String::new();
        s.read_to_string(&mut csv)?;
        parse_show_stat(&csv, BACKEND)
    }

    /// SIGKILLs every haproxy and starts each again on its address: every client
    /// connection through them breaks at once (a load balancer restart).
    pub fn restart_haproxy(&mut self) -> Result<()> {
        for b in &mut self.balancers {
            if let Some(mut h) = b.child.take() {
                let _ = h.kill();
                let _ = h.wait();
            }
        }
        for b in 0..self.balancers.len() {
            let mut child = self.spawn_haproxy(b)?;
            if let Err(e) = self.wait_haproxy_answers(b, &mut child, Duration::from_secs(10)) {
                let _ = terminate(&mut child, Duration::from_secs(2));
                return Err(e.context(format!("haproxy's log:\n{}", self.haproxy_log(b))));
            }
            self.balancers[b].child = Some(child);
        }
        Ok(())
    }

    fn haproxy_socket(&self, b: usize) -> PathBuf {
        self._dir.0.join(format!("haproxy-{b}.sock"))
    }

    /// The (first) haproxy's address.
    pub fn haproxy_addr(&self) -> SocketAddr {
        self.balancers[0].addr
    }

    /// The (first) haproxy's WebSocket URL.
    pub fn haproxy_url(&self) -> String {
        format!("ws://{}/ws", self.haproxy_addr())
    }

    /// Every haproxy's WebSocket URL.
    pub fn haproxy_urls(&self) -> Vec<String> {
        self.balancers
            .iter()
            .map(|b| format!("ws://{}/ws", b.addr))
            .collect()
    }

    /// Starts haproxy `b` on a free port and waits until its stats socket answers. The
    /// port is only known free when picked; if another process takes it first haproxy
    /// exits on the bind, and it is started again on a new port.
    fn start_haproxy(&mut self, b: usize) -> Result<()> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let mut child = self.spawn_haproxy(b)?;
            let Err(e) = self.wait_haproxy_answers(b, &mut child, Duration::from_secs(10)) else {
                self.balancers[b].child = Some(child);
                return Ok(());
            };
            let _ = terminate(&mut child, Duration::from_secs(2));
            let log = self.haproxy_log(b);
            if attempt == ATTEMPTS || !log.contains("cannot bind") {
                return Err(e.context(format!("haproxy's log:\n{log}")));
            }
            attempt += 1;
            self.balancers[b].addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        }
    }

    fn spawn_haproxy(&self, b: usize) -> Result<Child> {
        let mut servers = String::new();
        for n in &self.nodes {
            servers.push_str(&format!(
                "  server {name} {public} cookie {name} check port {admin_port}\n",
                name = n.name,
                public = n.public,
                admin_port = n.admin.port()
            ));
        }
        let config = format!(
            "global\n  maxconn {maxconn}\n  stats socket {socket} mode 600 level user\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 60s\n\
             \x20 option redispatch 1\n  retries 3\n  retry-on conn-failure empty-response 503\n\
             frontend chat\n  bind {addr}\n  default_backend {BACKEND}\n\
             backend {BACKEND}\n  balance roundrobin\n  cookie CHATNODE insert indirect nocache\n\
             \x20 option httpchk GET /readyz\n  default-server inter 200ms fall 2 rise 2\n{servers}",
            addr = self.balancers[b].addr,
            maxconn = self.max_connections,
            socket = self.haproxy_socket(b).display(),
        );
        let path = self._dir.0.join(format!("haproxy-{b}.cfg"));
        std::fs::write(&path, config)?;
        // A socket file left by an earlier attempt would refuse connections.
        let _ = std::fs::remove_file(self.haproxy_socket(b));
        let log = std::fs::File::create(self.haproxy_log_path(b))?;
        Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting haproxy (apt-get install haproxy)")
    }

    /// Waits until haproxy answers on its stats socket and accepts on its frontend. Its
    /// own socket answering proves the process holding the frontend port is this
    /// haproxy (not another process that had the port); it exiting is an error at once.
    fn wait_haproxy_answers(&self, b: usize, child: &mut Child, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("haproxy exited at start ({status})");
            }
            if self.haproxy_servers_of(b).is_ok()
                && TcpStream::connect_timeout(&self.balancers[b].addr, Duration::from_millis(200))
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "haproxy did not answer on its stats socket and {} within {within:?}",
                    self.balancers[b].addr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn haproxy_log_path(&self, b: usize) -> PathBuf {
        self._dir.0.join(format!("haproxy-{b}.log"))
    }

    /// What haproxy `b` wrote to stderr (its warnings and why it exited).
    fn haproxy_log(&self, b: usize) -> String {
        std::fs::read_to_string(self.haproxy_log_path(b)).unwrap_or_default()
    }

    /// Value of a metric on node `i`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let body = http_body(self.nodes[i].admin, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for b in &mut self.balancers {
            if let Some(mut h) = b.child.take() {
                let _ = h.kill();
                let _ = h.wait();
            }
        }
        for n in &mut self.nodes {
            n.process.take();
        }
    }
}

/// The haproxy backend holding the chat-server nodes.
const BACKEND: &str = "chat_servers";

/// One server line of haproxy's `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyServer {
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (going up), `MAINT`, ...
    pub status: String,
    /// Result of the last health check: `L7OK` when `/readyz` answered 200, `INI`
    /// before the first check, `L7STS` on another status, ...
    pub check_status: String,
}

impl HaproxyServer {
    /// haproxy sends new clients to it: fully UP, and the last check really passed
    /// (not the state assumed before any check ran).
    pub fn routable(&self) -> bool {
        self.status == "UP" && self.check_status == "L7OK"
    }
}

/// The servers of `backend` in `show stat` CSV output, by name.
fn parse_show_stat(csv: &str, backend: &str) -> Result<BTreeMap<String, HaproxyServer>> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .context("`show stat` output without its header")?;
    let column = |name: &str| {
        header
            .split(',')
            .position(|c| c == name)
            .with_context(|| format!("`show stat` has no `{name}` column"))
    };
    let (px, sv) = (column("pxname")?, column("svname")?);
    let (status, check) = (column("status")?, column("check_status")?);
    let mut servers = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        if field(px) != backend || matches!(field(sv), "FRONTEND" | "BACKEND") {
            continue;
        }
        servers.insert(
            field(sv).to_owned(),
            HaproxyServer {
                status: field(status).to_owned(),
                check_status: field(check).to_owned(),
            },
        );
    }
    Ok(servers)
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http_request(addr, "GET", path, None)
}

/// One HTTP/1.1 request with an optional JSON body; the whole response (head and body),
/// `None` when nothing answers within 2 s.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let body = json.unwrap_or("");
    let content_type = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The status code of a whole HTTP response (`None` if it has no status line).
pub fn status_code(response: &str) -> Option<u16> {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// Status code and body of one `GET path` on `addr` (status 0 when nothing answers).
pub fn http_status_of(addr: SocketAddr, path: &str) -> (u16, String) {
    let Some(response) = http_get(addr, path) else {
        return (0, String::new());
    };
    let status = status_code(&response).unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn http_status(addr: SocketAddr, path: &str) -> u16 {
    http_status_of(addr, path).0
}

fn http_body(addr: SocketAddr, path: &str) -> Option<String> {
    http_get(addr, path).and_then(|r| r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_servers_of_one_backend() {
        let csv = "# pxname,svname,qcur,status,weight,check_status,\n\
                   chat,FRONTEND,,OPEN,,,\n\
                   chat_servers,s1,0,UP,1,L7OK,\n\
                   chat_servers,s2,0,DOWN 1/2,1,L7STS,\n\
                   chat_servers,s3,0,UP,1,INI,\n\
                   chat_servers,BACKEND,0,UP,2,,\n\
                   other,s1,0,DOWN,1,L4CON,\n";
        let servers = parse_show_stat(csv, "chat_servers").unwrap();
        assert_eq!(servers.len(), 3);
        assert!(servers["s1"].routable());
        assert!(!servers["s2"].routable());
        assert!(!servers["s3"].routable(), "no check has passed yet");
        assert!(parse_show_stat("", "chat_servers").is_err());
    }
}
