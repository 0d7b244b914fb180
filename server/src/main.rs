//! `chat-server` binary: configuration, logging, signals. SIGTERM or Ctrl-C starts a
//! drain; the process exits 0 when the drain finishes.

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
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        _ = server.stopped() => {}
    }
    server.begin_drain();
    tokio::select! {
        _ = server.stopped() => tracing::info!("stopped"),
        _ = term.recv() => tracing::warn!("second SIGTERM: exiting without finishing the drain"),
        _ = int.recv() => tracing::warn!("second SIGINT: exiting without finishing the drain"),
    }
    Ok(())
}
