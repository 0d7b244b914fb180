//! chat-local-cluster: runs a ChatCluster on this machine — a real redis-server (or, with
//! `--redis-cluster`, a Redis Cluster of 3 masters and 3 replicas), N chat-server
//! processes joined through it and haproxy with cookie stickiness in front — all on
//! 127.0.0.1, until Ctrl-C. Needs `redis-server`, `redis-cli` and `haproxy` on PATH.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chatcluster_e2e::harness::local_cluster::{ClusterOptions, LocalCluster};
use clap::Parser;

#[derive(Parser)]
#[command(name = "chat-local-cluster")]
struct Args {
    /// Number of chat-server nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// chat-server binary (default: next to this binary).
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Extra flags for every chat-server, e.g. `--server-arg=--drain-reconnect-window=5s`.
    #[arg(long = "server-arg")]
    server_args: Vec<String>,
    /// Run the backplane on a Redis Cluster (3 masters, 3 replicas) instead of one
    /// redis-server.
    #[arg(long)]
    redis_cluster: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(1..=9).contains(&args.nodes) {
        anyhow::bail!("--nodes must be 1 to 9");
    }
    let binary = match args.server_binary {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("chat-server"),
    };
    let extra: Vec<&str> = args.server_args.iter().map(String::as_str).collect();
    let cluster = LocalCluster::start_with(
        &binary,
        ClusterOptions {
            nodes: args.nodes,
            extra: &extra,
            redis_cluster: args.redis_cluster,
            ..ClusterOptions::default()
        },
    )?;
    cluster.wait_ready(Duration::from_secs(20))?;
    println!(
        "ChatCluster on loopback: {} nodes, Redis at {}",
        args.nodes,
        cluster.redis.url()
    );
    println!(
        "  web client (through haproxy): http://{}/",
        cluster.haproxy_addr()
    );
    println!("  WebSocket:                    {}", cluster.haproxy_url());
    for n in &cluster.nodes {
        println!(
            "  node {}: public http://{}/  admin http://{}/admin/status  pid {}",
            n.name,
            n.public,
            n.admin,
            n.pid().unwrap_or(0)
        );
    }
    println!("Drain a node: curl -X POST http://ADMIN/admin/drain   Stop everything: Ctrl-C (or SIGTERM)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("stopping");
    drop(cluster);
    Ok(())
}
