//! chat-loadgen: benchmark program for ChatCluster chat servers (loopback only).
//!
//! This binary only parses flags and prints what a scenario reports; the scenarios live
//! in `chatcluster_e2e::tools::loadgen` so they share the suites' client and are unit-tested.

use anyhow::Result;
use chatcluster_e2e::tools::loadgen::{bench, fanout, idle, join_storm};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chat-loadgen",
    about = "Load generator for ChatCluster chat servers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// C subscribers in one room, publishers at a fixed total rate.
    #[command(args_override_self = true)]
    Fanout(fanout::FanoutArgs),
    /// N idle connections; reports server RSS per connection.
    #[command(args_override_self = true)]
    Idle(idle::IdleArgs),
    /// N members join one room as fast as they can; server CPU and bytes per member.
    #[command(args_override_self = true)]
    JoinStorm(join_storm::JoinStormArgs),
    /// A scenario with its servers: starts the chat-server nodes next to this binary (and
    /// Redis) on ephemeral ports, runs it, stops them.
    #[command(subcommand)]
    Bench(bench::Scenario),
    /// Internal: one worker process of `idle`.
    #[command(hide = true)]
    IdleWorker(idle::WorkerArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let report = match Cli::parse().scenario {
        Scenario::Fanout(a) => fanout::run(a).await?,
        Scenario::Idle(a) => idle::run(a).await?,
        Scenario::JoinStorm(a) => join_storm::run(a).await?,
        Scenario::Bench(s) => bench::run(s).await?,
        Scenario::IdleWorker(a) => return idle::worker(a).await,
    };
    println!("{}", report.summary);
    println!("{}", report.json);
    if !report.failures.is_empty() {
        eprintln!("chat-loadgen: FAILED: {}", report.failures.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
