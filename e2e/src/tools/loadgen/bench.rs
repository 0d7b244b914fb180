//! `chat-loadgen bench SCENARIO`: a benchmark scenario with its servers. It starts the
//! release `chat-server` nodes next to this binary (and a `redis-server` or a Redis
//! Cluster) on 127.0.0.1 ephemeral ports, waits until every node is ready, runs
//! [`fanout`] or [`idle`] against them with the scenario's defaults (flags given after the
//! scenario override them), and stops every process it started by PID, whatever happens.
//! The figures in docs/benchmarks.md come from these scenarios (`e2e/bench.sh` builds the
//! release binaries and runs one).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use super::{fanout, idle, join_storm, Report};
use crate::harness::binaries::chat_server_binary;
use crate::harness::http;
use crate::harness::process::{free_port, ScratchDir};
use crate::harness::redis::RedisProcess;
use crate::harness::redis_cluster::RedisCluster;
use crate::harness::server_process::ServerProcess;

/// The scenarios, each with the servers it needs.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// One node: 100 subscribers in one room, 2 publishers at 200 msg/s for 10 s.
    Fanout(Extra),
    /// One node: 15,000 idle connections; server memory per connection.
    Idle(Extra),
    /// One node: 10,000 members join one room at 1,000 a second; server CPU and bytes
    /// per member.
    JoinStorm(Extra),
    /// N nodes joined by one redis-server: fanout over every node.
    FanoutRedis(Nodes),
    /// N nodes joined by one redis-server: idle connections spread over them (each
    /// node under the open-files limit), each in one of 1,000 rooms; RSS per connection
    /// of the nodes and of Redis.
    IdleRedis(Nodes),
    /// N nodes on one redis-server (`single`) or on a Redis Cluster of 3 masters
    /// (`cluster`, sharded pub/sub): 200 rooms × 20 members at 1,000 msg/s; Redis CPU is
    /// reported per server.
    RoomsRedis(RoomsRedis),
}

/// Flags passed on to the load generator, after the scenario's defaults.
#[derive(Debug, Clone, Args)]
pub struct Extra {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct Nodes {
    /// How many chat-server nodes.
    #[arg(value_parser = clap::value_parser!(u8).range(1..=16))]
    pub nodes: u8,
    #[command(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Args)]
pub struct RoomsRedis {
    /// How many chat-server nodes.
    #[arg(value_parser = clap::value_parser!(u8).range(1..=16))]
    pub nodes: u8,
    pub redis: RedisShape,
    #[command(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RedisShape {
    Single,
    Cluster,
}

/// How long a node may take to be ready (listening, and Redis reachable).
const READY_WITHIN: Duration = Duration::from_secs(10);

/// What a scenario runs on: the nodes and their Redis, stopped when dropped.
struct Servers {
    nodes: Vec<ServerProcess>,
    redis_pids: Vec<u32>,
    _redis: Option<RedisProcess>,
    _cluster: Option<RedisCluster>,
    _dir: ScratchDir,
}

impl Servers {
    /// Starts `n` nodes with `flags` (plus each one's name), on `redis_url` if given.
    fn start(n: u8, flags: &[&str], redis: Option<RedisShape>) -> Result<Servers> {
        let dir = ScratchDir::new("bench")?;
        let (redis_url, redis_pids, single, cluster) = match redis {
            None => (None, Vec::new(), None, None),
            Some(RedisShape::Single) => {
                let r = RedisProcess::start(free_port()?, &dir.0)?;
                let pids = r.pid().into_iter().collect();
                (Some(r.url()), pids, Some(r), None)
            }
            Some(RedisShape::Cluster) => {
                let c = RedisCluster::start_masters(3)?;
                (Some(c.seed_urls()), c.pids(), None, Some(c))
            }
        };
        let binary = server_binary()?;
        let mut nodes = Vec::new();
        for i in 1..=n {
            let name = format!("bench{i}");
            let mut args: Vec<&str> = flags.to_vec();
            args.extend(["--node-name", &name]);
            if let Some(url) = &redis_url {
                args.extend(["--redis-url", url]);
                if cluster.is_some() {
                    args.push("--redis-cluster");
                }
            }
            nodes.push(ServerProcess::start(&binary, &args)?);
        }
        for node in &nodes {
            wait_ready(node)?;
        }
        Ok(Servers {
            nodes,
            redis_pids,
            _redis: single,
            _cluster: cluster,
            _dir: dir,
        })
    }

    /// `--url` and `--server-pid` of every node, and `--redis-pid` of every Redis.
    fn target_flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            out.extend(["--url".to_owned(), n.ws_url()]);
            out.extend(["--server-pid".to_owned(), n.pid().to_string()]);
        }
        for pid in &self.redis_pids {
            out.extend(["--redis-pid".to_owned(), pid.to_string()]);
        }
        out
    }
}

/// The release (or whichever build this is) `chat-server` next to this binary.
fn server_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("this binary's path")?;
    chat_server_binary(&me.to_string_lossy())
}

fn wait_ready(node: &ServerProcess) -> Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if http::status_of(node.admin_addr, "/readyz").0 == 200 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the chat-server on {} was not ready within {READY_WITHIN:?}",
        node.public_addr
    )
}

/// The flags every fanout node gets: a per-connection rate limit the publishers stay
/// under (the load generator sends faster than a person).
const NODE_FLAGS: [&str; 4] = ["--rate-per-sec", "1000", "--rate-burst", "1000"];

/// A scenario's load-generator arguments: its defaults, the servers, then the user's.
fn args(scenario: &str, defaults: &[&str], servers: &Servers, extra: &Extra) -> Vec<String> {
    let mut out = vec!["chat-loadgen".to_owned(), scenario.to_owned()];
    out.extend(defaults.iter().map(|s| (*s).to_owned()));
    out.extend(servers.target_flags());
    out.extend(extra.flags.iter().cloned());
    out
}

/// Parses a scenario's own flags as `chat-loadgen SCENARIO` would.
#[derive(Parser)]
#[command(name = "chat-loadgen")]
enum Inner {
    #[command(args_override_self = true)]
    Fanout(fanout::FanoutArgs),
    #[command(args_override_self = true)]
    Idle(idle::IdleArgs),
    #[command(args_override_self = true)]
    JoinStorm(join_storm::JoinStormArgs),
}

/// Runs `scenario` with its servers; they are stopped when it returns.
pub async fn run(scenario: Scenario) -> Result<Report> {
    const FANOUT: [&str; 8] = [
        "--subscribers",
        "100",
        "--publishers",
        "2",
        "--rate",
        "200",
        "--duration",
        "10",
    ];
    let (servers, argv) = match &scenario {
        Scenario::Fanout(extra) => {
            let s = tokio::task::block_in_place(|| Servers::start(1, &NODE_FLAGS, None))?;
            let argv = args("fanout", &FANOUT, &s, extra);
            (s, argv)
        }
        Scenario::Idle(extra) => {
            let s = tokio::task::block_in_place(|| {
                Servers::start(1, &["--max-connections", "19000"], None)
            })?;
            let defaults = [
                "--connections",
                "15000",
                "--workers",
                "2",
                "--source-ips",
                "8",
                "--connect-rate",
                "1500",
                "--hold",
                "5",
            ];
            let argv = args("idle", &defaults, &s, extra);
            (s, argv)
        }
        Scenario::JoinStorm(extra) => {
            let s = tokio::task::block_in_place(|| {
                Servers::start(1, &["--max-connections", "19000"], None)
            })?;
            let mut argv = vec!["chat-loadgen".to_owned(), "join-storm".to_owned()];
            argv.extend(["--url".to_owned(), s.nodes[0].ws_url()]);
            argv.extend(["--server-pid".to_owned(), s.nodes[0].pid().to_string()]);
            argv.extend(extra.flags.iter().cloned());
            (s, argv)
        }
        Scenario::IdleRedis(n) => {
            let s = tokio::task::block_in_place(|| {
                Servers::start(
                    n.nodes,
                    &["--max-connections", "19000"],
                    Some(RedisShape::Single),
                )
            })?;
            // 6 nodes: 100,002 connections, 16,667 per node and per client process.
            let connections = (usize::from(n.nodes) * 16_667).to_string();
            let workers = usize::from(n.nodes).to_string();
            let defaults = [
                "--connections",
                connections.as_str(),
                "--workers",
                workers.as_str(),
                "--source-ips",
                "16",
                // Each connection registers and joins through Redis: 700/s is what six
                // nodes, Redis and the clients keep up with on 2 cores.
                "--connect-rate",
                "700",
                "--hold",
                "5",
                "--rooms",
                "1000",
            ];
            let argv = args("idle", &defaults, &s, &n.extra);
            (s, argv)
        }
        Scenario::FanoutRedis(n) => {
            let s = tokio::task::block_in_place(|| {
                Servers::start(n.nodes, &NODE_FLAGS, Some(RedisShape::Single))
            })?;
            let argv = args("fanout", &FANOUT, &s, &n.extra);
            (s, argv)
        }
        Scenario::RoomsRedis(r) => {
            let s = tokio::task::block_in_place(|| {
                Servers::start(r.nodes, &NODE_FLAGS, Some(r.redis))
            })?;
            let defaults = [
                "--rooms",
                "200",
                "--subscribers",
                "4000",
                "--publishers",
                "1",
                "--rate",
                "1000",
                "--duration",
                "10",
                "--body-bytes",
                "64",
            ];
            let argv = args("fanout", &defaults, &s, &r.extra);
            (s, argv)
        }
    };
    let report = match Inner::try_parse_from(&argv)? {
        Inner::Fanout(a) => fanout::run(a).await,
        Inner::Idle(a) => idle::run(a).await,
        Inner::JoinStorm(a) => join_storm::run(a).await,
    };
    drop(servers);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        scenario: Scenario,
    }

    #[test]
    fn scenarios_parse_their_nodes_and_pass_the_rest_on() {
        let cli = Cli::try_parse_from(["x", "rooms-redis", "3", "cluster", "--duration", "2"])
            .expect("parses");
        let Scenario::RoomsRedis(r) = cli.scenario else {
            panic!("rooms-redis")
        };
        assert_eq!(r.nodes, 3);
        assert!(matches!(r.redis, RedisShape::Cluster));
        assert_eq!(r.extra.flags, ["--duration", "2"]);
        assert!(Cli::try_parse_from(["x", "fanout-redis", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "rooms-redis", "2", "sharded"]).is_err());
    }

    #[test]
    fn the_users_flags_override_the_scenarios_defaults() {
        let argv = [
            "chat-loadgen",
            "fanout",
            "--subscribers",
            "100",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--subscribers",
            "7",
        ];
        let Inner::Fanout(a) = Inner::try_parse_from(argv).expect("parses") else {
            panic!("fanout")
        };
        assert_eq!(a.subscribers, 7);
    }
}
