//! `chat-server` binary: configuration, logging, signals. The process exits 0 once the
//! server has stopped:
//!
//! - SIGTERM or Ctrl-C while serving starts a drain with the configured timing; the
//!   process exits when it finishes;
//! - during a drain (SIGTERM's, or `POST /admin/drain`'s, even with `keep_running`) the
//!   drain goes on unchanged and the process exits when it finishes;
//! - on a node drained with `keep_running` (alive, not ready) the process exits at once;
//! - a drain without `keep_running` exits the process when it finishes, signal or not;
//! - a second SIGTERM or Ctrl-C while waiting for a drain exits at once.

use anyhow::Context;
use chat_server::config::{Args, LogFormat, Settings};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = match Settings::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat-server: {e}");
            std::process::exit(2);
        }
    };
    init_logging(settings.log_format);
    let server = chat_server::start(settings)
        .await
        .context("starting chat server")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = server.stopped() => {}
    }
    if !server.request_stop() {
        tracing::info!("stopped");
        return Ok(());
    }
    tokio::select! {
        _ = server.stopped() => tracing::info!("stopped"),
        _ = term.recv() => tracing::warn!("second SIGTERM: exiting without finishing the drain"),
        _ = int.recv() => tracing::warn!("second SIGINT: exiting without finishing the drain"),
    }
    Ok(())
}
