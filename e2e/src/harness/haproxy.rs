//! A real `haproxy` in front of chat-server nodes, as a load balancer with cookie
//! stickiness (`CHATNODE`) and `/readyz` health checks: its config, its process (stopped
//! by PID) and what its stats socket says about each node.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::{free_port, terminate};

/// The haproxy backend holding the chat-server nodes.
const BACKEND: &str = "chat_servers";

/// A chat-server haproxy routes to: its name (also the value of its sticky cookie), its
/// public address, and its admin address (health checks on `/readyz`).
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    pub name: &'a str,
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

/// One haproxy process in front of every node. Its files (config, stats socket, log) are
/// in the cluster's scratch directory, named by its index.
pub struct Balancer {
    pub addr: SocketAddr,
    child: Option<Child>,
    index: usize,
    dir: PathBuf,
}

impl Balancer {
    /// Balancer `index` on a free port, not started yet; its files go to `dir`.
    pub fn new(index: usize, dir: &Path) -> Result<Balancer> {
        Ok(Balancer {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            child: None,
            index,
            dir: dir.to_owned(),
        })
    }

    /// The WebSocket URL through this haproxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// What its health checks currently say about each node (by name), from `show stat`
    /// on its stats socket.
    pub fn servers(&self) -> Result<BTreeMap<String, HaproxyServer>> {
        let mut s =
            UnixStream::connect(self.socket()).context("connecting to haproxy's stats socket")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"show stat\n")?;
        let mut csv = String::new();
        s.read_to_string(&mut csv)?;
        parse_show_stat(&csv, BACKEND)
    }

    /// Starts haproxy in front of `nodes` and waits until its stats socket answers. The
    /// port is only known free when picked; if another process takes it first haproxy
    /// exits on the bind, and it is started again on a new port.
    pub fn start(&mut self, nodes: &[Upstream], max_connections: u32) -> Result<()> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let mut child = self.spawn(nodes, max_connections)?;
            let Err(e) = self.wait_answers(&mut child, Duration::from_secs(10)) else {
                self.child = Some(child);
                return Ok(());
            };
            let _ = terminate(&mut child, Duration::from_secs(2));
            let log = self.log();
            if attempt == ATTEMPTS || !log.contains("cannot bind") {
                return Err(e.context(format!("haproxy's log:\n{log}")));
            }
            attempt += 1;
            self.addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        }
    }

    /// Starts haproxy again on its address (after [`Balancer::kill`]).
    pub fn restart(&mut self, nodes: &[Upstream], max_connections: u32) -> Result<()> {
        let mut child = self.spawn(nodes, max_connections)?;
        if let Err(e) = self.wait_answers(&mut child, Duration::from_secs(10)) {
            let _ = terminate(&mut child, Duration::from_secs(2));
            return Err(e.context(format!("haproxy's log:\n{}", self.log())));
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: every client connection through it breaks at once.
    pub fn kill(&mut self) {
        if let Some(mut h) = self.child.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(format!("haproxy-{}.sock", self.index))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("haproxy-{}.log", self.index))
    }

    /// What it wrote to stderr (its warnings and why it exited).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&self, nodes: &[Upstream], max_connections: u32) -> Result<Child> {
        let mut servers = String::new();
        for n in nodes {
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
            addr = self.addr,
            maxconn = max_connections,
            socket = self.socket().display(),
        );
        let path = self.dir.join(format!("haproxy-{}.cfg", self.index));
        std::fs::write(&path, config)?;
        // A socket file left by an earlier attempt would refuse connections.
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.log_path())?;
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
    fn wait_answers(&self, child: &mut Child, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("haproxy exited at start ({status})");
            }
            if self.servers().is_ok()
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "haproxy did not answer on its stats socket and {} within {within:?}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.kill();
    }
}

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
