//! The chaos soak and the connection storm: see `chatcluster_e2e::tools::soak` and
//! docs/reliability.md. Exits 0 when the run's checks passed; 1 otherwise.

use chatcluster_e2e::tools::soak::storm::{self, StormArgs, StormWorkerArgs};
use chatcluster_e2e::tools::soak::{run, SoakArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chat-soak",
    about = "Chaos soak with an exactly-once checker, and a reconnect storm (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    run: Run,
}

#[derive(Subcommand)]
enum Run {
    /// 3 nodes, haproxy, durable Redis behind Toxiproxy, clients, one fault at a time.
    Chaos(SoakArgs),
    /// Thousands of clients reconnecting at once after a haproxy restart.
    Storm(StormArgs),
    /// Internal: one client process of `storm`.
    #[command(hide = true)]
    StormWorker(StormWorkerArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let passed = match Cli::parse().run {
        Run::Chaos(args) => {
            let report = run(args.clone()).await?;
            report.print(&args);
            report.passed()
        }
        Run::Storm(args) => {
            let report = storm::run(args.clone()).await?;
            report.print(&args);
            report.passed(args.clients)
        }
        Run::StormWorker(args) => {
            storm::worker(args).await?;
            true
        }
    };
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}
