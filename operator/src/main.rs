//! chatcluster-operator: watches ChatClusters and reconciles them, as the leader of a
//! coordination.k8s.io Lease. Serves /healthz, /readyz and /metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chatcluster_operator::autoscaling::sources::pods::scrape_client;
use chatcluster_operator::autoscaling::sources::prometheus::prometheus_client;
use chatcluster_operator::controller;
use chatcluster_operator::leader::Elector;
use chatcluster_operator::metrics::OperatorMetrics;
use chatcluster_operator::reconcile::Context;
use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "chatcluster-operator", version)]
struct Args {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "chatcluster-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a Lease stays valid without renewal; a standby takes over after this.
    #[arg(long, env = "OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity in the Lease (the pod name on Kubernetes).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace (empty: every namespace). A namespace-scoped operator
    /// needs only a Role in that namespace, and several can share one cluster.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// Log format: json or pretty.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPERATOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "pretty" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The same bounds as the chart's values.schema.json (leaderElection.leaseSeconds).
    if !(3..=300).contains(&args.lease_seconds) {
        anyhow::bail!("OPERATOR_LEASE_SECONDS must be between 3 and 300");
    }
    init_logging(&args.log_format);
    let identity = args.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
            rand_u32()
        )
    });
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = OperatorMetrics::new();

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", args.metrics_listen))?;
    tokio::spawn(metrics.clone().serve(listener));

    let elector = Elector::new(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_seconds),
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(%identity, lease = %args.lease_name, namespace = %args.watch_namespace, "waiting to become leader");
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            r = elector.try_acquire_or_renew() => match r {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
        }
        tokio::time::sleep(elector.retry_period()).await;
    }
    metrics.leader.set(1);
    tracing::info!(%identity, "became leader");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "chatcluster-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        apis: Default::default(),
        recorder,
        failures: Default::default(),
        http: scrape_client()?,
        prometheus_http: prometheus_client()?,
        autoscaler: Default::default(),
        metrics: metrics.clone(),
        // Only a namespace really given: the default "default" must not open the
        // admin port to every pod there.
        operator_namespace: std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|ns| !ns.is_empty()),
        drain_failures: Default::default(),
    });
    let controller = controller::run(&client, &args.watch_namespace, ctx, metrics.clone());
    tokio::pin!(controller);

    // Lead until a signal, or until the Lease cannot be renewed (then exit: a fresh
    // process re-enters the election rather than risk acting alongside a new leader).
    // Renewals are bounded in time, and leadership ends once no renewal has succeeded
    // for two thirds of the lease duration: well before a standby may take over.
    let renew_deadline = Duration::from_secs(args.lease_seconds) * 2 / 3;
    let mut last_renewed = Instant::now();
    let mut renew = tokio::time::interval(elector.retry_period());
    let (outcome, lost_lease) = loop {
        tokio::select! {
            _ = &mut controller => break ("controller stopped", false),
            _ = term.recv() => break ("SIGTERM", false),
            _ = int.recv() => break ("SIGINT", false),
            _ = renew.tick() => {
                match tokio::time::timeout(elector.retry_period(), elector.try_acquire_or_renew()).await {
                    Ok(Ok(true)) => last_renewed = Instant::now(),
                    Ok(Ok(false)) => break ("lost the Lease", true),
                    Ok(Err(e)) => tracing::warn!(error = %e, "Lease renewal failed; retrying"),
                    Err(_) => tracing::warn!("Lease renewal timed out; retrying"),
                }
                if last_renewed.elapsed() > renew_deadline {
                    break ("lost the Lease", true);
                }
            }
        }
    };
    metrics.leader.set(0);
    tracing::info!(outcome, "stopping");
    if lost_lease {
        std::process::exit(1);
    }
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "could not release the Lease; a standby takes over when it expires");
    }
    Ok(())
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}
