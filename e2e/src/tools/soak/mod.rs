//! The chaos soak (`chat-soak`): 3 chat-server nodes behind haproxy, a durable Redis,
//! Toxiproxy between each node and Redis, and a few hundred clients that publish,
//! subscribe, send DMs and resume on every reconnect, while faults are injected one at a
//! time. Afterwards the checker reads every client's log. Loopback only; bounded in time
//! (`--seconds`) and in clients; every process is stopped by PID when the run ends.

pub mod checker;
pub mod client;
pub mod faults;
pub mod log;
pub mod storm;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::seq::IteratorRandom;
use rand::SeedableRng;

use crate::harness::local_cluster::{ClusterOptions, LocalCluster};
use crate::harness::process::free_port;
use crate::harness::toxiproxy::{toxiproxy_binary, Link, Toxiproxy};
use checker::{CheckOptions, Verdict};
use client::{ClientSpec, Controls};
use faults::{Fault, FaultKind, Target};

/// Time for every client to connect and join before the first fault.
const WARM_UP: Duration = Duration::from_secs(5);
/// Time kept at the end with no fault: clients stop publishing, reconnect, resume and
/// receive what is still in flight. The run stops early once every client has a session
/// and nothing has arrived for [`QUIET`].
const SETTLE: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Length of the whole run (warm-up 5 s, faults, then up to 30 s to settle).
    #[arg(long, default_value_t = 90)]
    pub seconds: u64,
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Rooms in all; each client joins `--rooms-per-client` of them at random.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    #[arg(long, default_value_t = 20)]
    pub rooms_per_client: usize,
    /// Each client sends a room message this often (ms), to its rooms in turn.
    #[arg(long, default_value_t = 4_000)]
    pub publish_every_ms: u64,
    /// Each client sends a direct message this often (ms), to 5 peers in turn.
    #[arg(long, default_value_t = 10_000)]
    pub dm_every_ms: u64,
    /// Quiet time before each fault, at random between these (s).
    #[arg(long, default_value_t = 3)]
    pub fault_gap_min: u64,
    #[arg(long, default_value_t = 8)]
    pub fault_gap_max: u64,
    /// Seed of the fault schedule and the clients' choices (random when not given; the
    /// report prints it so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// chat-server binary (default: the one next to this program).
    #[arg(long)]
    pub server_binary: Option<PathBuf>,
}

/// What a run did and what the checker found.
#[derive(Debug)]
pub struct SoakReport {
    pub seed: u64,
    pub elapsed: Duration,
    pub faults: Vec<Fault>,
    /// Faults that could not be applied or after which the cluster did not recover.
    pub fault_errors: Vec<String>,
    pub verdict: Verdict,
    /// What the run did too little of to prove anything ([`shortfalls`]).
    pub shortfalls: Vec<String>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.verdict.passed() && self.fault_errors.is_empty() && self.shortfalls.is_empty()
    }

    pub fn print(&self, args: &SoakArgs) {
        let v = &self.verdict;
        println!(
            "soak: {} clients, {} nodes behind haproxy, {} rooms ({} per client), durable Redis \
             behind Toxiproxy; seed {}; {:.0} s",
            args.clients,
            args.nodes,
            args.rooms,
            args.rooms_per_client,
            self.seed,
            self.elapsed.as_secs_f64()
        );
        let by_kind: Vec<String> = faults::count_by_kind(&self.faults)
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "faults injected: {} ({})",
            self.faults.len(),
            by_kind.join(", ")
        );
        println!(
            "room messages: sent {}, acknowledged {}, refused {}, unanswered {}",
            v.sent, v.acked, v.refused, v.unanswered
        );
        println!(
            "deliveries: {} received, {} required by the rules",
            v.deliveries, v.required_deliveries
        );
        println!(
            "direct messages: {} acknowledged, {} received, {} to recipients that stayed connected",
            v.dms_acked, v.dms_received, v.dms_required
        );
        println!(
            "sessions: {}; gap errors answered by resuming: {}; longest time a client had no \
             connection: {:.1} s",
            v.sessions,
            v.gap_errors,
            v.longest_disconnect_ms as f64 / 1000.0
        );
        println!(
            "lost {}, duplicated {}, reordered {}, history lost {}, DMs lost {}, DMs duplicated {}",
            v.lost, v.duplicated, v.reordered, v.history_lost, v.dms_lost, v.dms_duplicated
        );
        for e in &self.fault_errors {
            println!("fault error: {e}");
        }
        for e in &self.shortfalls {
            println!("shortfall: {e}");
        }
        for e in &v.examples {
            println!("problem: {e}");
        }
        if v.problems > v.examples.len() as u64 {
            println!("... {} problems in all", v.problems);
        }
        println!("result: {}", if self.passed() { "PASS" } else { "FAIL" });
    }
}

pub async fn run(args: SoakArgs) -> Result<SoakReport> {
    if args.rooms_per_client > args.rooms || args.clients < 2 || args.nodes < 2 {
        bail!("need at least 2 clients and 2 nodes, and no more rooms per client than rooms");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let server = match &args.server_binary {
        Some(p) => p.clone(),
        None => crate::harness::binaries::chat_server_binary(
            &std::env::current_exe()?.to_string_lossy(),
        )?,
    };
    let redis_port = free_port()?;
    let redis_addr = std::net::SocketAddr::from(([127, 0, 0, 1], redis_port));
    let links: Vec<Link> = (1..=args.nodes)
        .map(|i| Link::to(&format!("s{i}"), redis_addr))
        .collect::<Result<_>>()?;
    let proxy = Toxiproxy::start(&toxiproxy_binary()?, &links)?;
    let node_redis_urls = links
        .iter()
        .map(|l| format!("redis://{}/", l.listen))
        .collect();
    let extra = ["--drain-reconnect-window", "3s", "--drain-deadline", "15s"];
    let mut cluster = LocalCluster::start_with(
        &server,
        ClusterOptions {
            nodes: args.nodes,
            extra: &extra,
            durable_redis: true,
            redis_port: Some(redis_port),
            node_redis_urls,
            ..ClusterOptions::default()
        },
    )?;
    cluster.wait_ready(Duration::from_secs(30))?;
    let url = cluster.haproxy_url();

    let ctl = Arc::new(Controls::new());
    let mut clients = Vec::new();
    for spec in client_specs(&args, seed) {
        clients.push(tokio::spawn(client::run_client(
            url.clone(),
            spec,
            ctl.clone(),
        )));
    }

    let total = Duration::from_secs(args.seconds);
    let fault_period = total.saturating_sub(WARM_UP + SETTLE);
    let schedule = faults::schedule(
        seed,
        fault_period,
        args.nodes,
        (
            Duration::from_secs(args.fault_gap_min),
            Duration::from_secs(args.fault_gap_max.max(args.fault_gap_min)),
        ),
    );
    tokio::time::sleep(WARM_UP).await;
    let faults_end = Instant::now() + fault_period;
    let clock = ctl.clone();
    let injector = tokio::task::spawn_blocking(move || {
        let mut applied = Vec::new();
        let mut errors = Vec::new();
        {
            let mut target = Target {
                cluster: &mut cluster,
                proxy: &proxy,
            };
            for f in schedule {
                std::thread::sleep(f.after);
                if Instant::now() >= faults_end {
                    break;
                }
                let started = clock.now();
                if let Err(e) = target.apply(&f) {
                    errors.push(format!("{}: {e:#}", f.kind.name()));
                }
                progress(&format!(
                    "{} (node s{}) from {started} ms to {} ms",
                    f.kind.name(),
                    f.node + 1,
                    clock.now()
                ));
                applied.push(f);
            }
        }
        // Traffic goes on, fault-free, to the end of the fault period.
        std::thread::sleep(faults_end.saturating_duration_since(Instant::now()));
        (cluster, proxy, applied, errors)
    });
    let (cluster, proxy, applied, fault_errors) =
        injector.await.context("the fault injector panicked")?;

    // Settle: no more traffic; every client back in its rooms; nothing more arriving.
    ctl.publishing.store(false, Ordering::Relaxed);
    let settle_end = Instant::now() + SETTLE;
    tokio::time::sleep(QUIET).await;
    while Instant::now() < settle_end {
        let all_ready = ctl.ready_sessions.load(Ordering::Relaxed) == args.clients;
        let quiet_for = ctl
            .now()
            .saturating_sub(ctl.last_message_at.load(Ordering::Relaxed));
        if all_ready && quiet_for >= QUIET.as_millis() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctl.stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for c in clients {
        logs.push(c.await.context("a soak client panicked")?);
    }
    let elapsed = ctl.started.elapsed();
    drop(cluster);
    drop(proxy);
    let verdict = checker::check(
        &logs,
        CheckOptions {
            history_durable: true,
        },
    );
    let shortfalls = shortfalls(&args, &applied, &verdict);
    Ok(SoakReport {
        seed,
        elapsed,
        faults: applied,
        fault_errors,
        verdict,
        shortfalls,
    })
}

/// A run that checked nothing would pass the checker: what it must at least have done.
/// Every fault kind applied at least once; half the room messages the clients were
/// scheduled to send acknowledged (faults refuse some); every acknowledged message
/// delivered to at least its sender's room (a delivery each); some DMs acknowledged; and
/// more sessions than clients (the faults made clients reconnect).
pub fn shortfalls(args: &SoakArgs, applied: &[Fault], v: &Verdict) -> Vec<String> {
    let mut out = Vec::new();
    let fault_period = Duration::from_secs(args.seconds).saturating_sub(WARM_UP + SETTLE);
    for kind in FaultKind::ALL {
        if !applied.iter().any(|f| f.kind == kind) {
            let needed = WARM_UP
                + SETTLE
                + faults::shortest_period_for_every_kind(Duration::from_secs(args.fault_gap_min));
            out.push(format!(
                "fault {} was never applied (a fault period of {} s; every kind needs a run of \
                 at least {} s)",
                kind.name(),
                fault_period.as_secs(),
                needed.as_secs()
            ));
        }
    }
    let publishing_ms = args.seconds.saturating_sub(SETTLE.as_secs()) * 1000;
    let scheduled = args.clients as u64 * publishing_ms / args.publish_every_ms.max(1);
    if v.acked < scheduled / 2 {
        out.push(format!(
            "{} room messages acknowledged, under half of the {scheduled} scheduled",
            v.acked
        ));
    }
    if v.acked == 0 || v.deliveries < v.acked || v.required_deliveries < v.acked {
        out.push(format!(
            "{} deliveries ({} required) for {} acknowledged messages",
            v.deliveries, v.required_deliveries, v.acked
        ));
    }
    if v.dms_acked == 0 && args.dm_every_ms < args.seconds * 1000 {
        out.push("no direct message acknowledged".into());
    }
    if v.sessions <= args.clients as u64 {
        out.push(format!(
            "{} sessions for {} clients: no fault made a client reconnect",
            v.sessions, args.clients
        ));
    }
    out
}

/// Progress lines go to stderr, so stdout holds only the report.
fn progress(text: &str) {
    eprintln!("chat-soak: {text}");
}

/// Client `i` is user `u{i}` in `rooms_per_client` rooms picked at random and sends DMs
/// to 5 other users picked at random.
fn client_specs(args: &SoakArgs, seed: u64) -> Vec<ClientSpec> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..args.clients)
        .map(|i| {
            let rooms = (0..args.rooms)
                .choose_multiple(&mut rng, args.rooms_per_client)
                .into_iter()
                .map(|r| format!("room{r}"))
                .collect();
            let dm_peers = (0..args.clients)
                .filter(|p| *p != i)
                .choose_multiple(&mut rng, 5)
                .into_iter()
                .map(|p| format!("u{p}"))
                .collect();
            ClientSpec {
                user: format!("u{i}"),
                rooms,
                dm_peers,
                publish_every: Duration::from_millis(args.publish_every_ms.max(1)),
                dm_every: Duration::from_millis(args.dm_every_ms.max(1)),
                source: None,
                seed: seed.wrapping_add(i as u64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SoakArgs,
    }

    fn args() -> SoakArgs {
        Cli::parse_from(["chat-soak"]).args
    }

    fn every_kind() -> Vec<Fault> {
        FaultKind::ALL
            .iter()
            .map(|&kind| Fault {
                kind,
                node: 0,
                after: Duration::ZERO,
            })
            .collect()
    }

    /// What the test command's 90 s run gives (2026-12-06).
    fn busy() -> Verdict {
        Verdict {
            sent: 3338,
            acked: 3059,
            deliveries: 125_053,
            required_deliveries: 125_053,
            dms_acked: 1133,
            sessions: 366,
            ..Verdict::default()
        }
    }

    #[test]
    fn a_busy_run_with_every_fault_falls_short_of_nothing() {
        assert_eq!(
            shortfalls(&args(), &every_kind(), &busy()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_idle_run_or_a_missing_fault_kind_falls_short() {
        let idle = shortfalls(&args(), &every_kind(), &Verdict::default());
        assert_eq!(idle.len(), 4, "{idle:?}");
        let mut some = every_kind();
        some.retain(|f| f.kind != FaultKind::DrainNode);
        let missing = shortfalls(&args(), &some, &busy());
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].contains("drain_node"), "{missing:?}");
        let undisturbed = Verdict {
            sessions: 200,
            ..busy()
        };
        assert_eq!(shortfalls(&args(), &every_kind(), &undisturbed).len(), 1);
    }
}
