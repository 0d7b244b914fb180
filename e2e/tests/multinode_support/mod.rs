//! Helpers of the multi-node suites: a [`LocalCluster`] on either Redis backend, resuming
//! subscribers, and the waits that replace sleeps.
// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::sync::lock;
use chatcluster_e2e::clients::publisher::PublisherLog;
use chatcluster_e2e::clients::subscriber::SubscriberLog;
use chatcluster_e2e::clients::ws::{connect, join, send_and_ack};
use chatcluster_e2e::harness::binaries::chat_server_binary;
use chatcluster_e2e::harness::local_cluster::{ClusterOptions, LocalCluster};

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_chat-loadgen");
/// One suite at a time: each runs a whole cluster on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts a cluster. The harness blocks (it waits on processes), so suites run on a
/// multi-threaded runtime and call it through `block_in_place`: the clients' tasks keep
/// running meanwhile, as real clients would.
pub fn cluster(backend: Backend, n: usize, extra: &[&str]) -> LocalCluster {
    cluster_with(
        backend,
        ClusterOptions {
            nodes: n,
            extra,
            ..ClusterOptions::default()
        },
    )
}

/// [`cluster`] with more options.
pub fn cluster_with(backend: Backend, opts: ClusterOptions) -> LocalCluster {
    tokio::task::block_in_place(|| {
        let c = LocalCluster::start_with(
            &chat_server_binary(LOADGEN).unwrap(),
            ClusterOptions {
                redis_cluster: backend == Backend::Cluster,
                ..opts
            },
        )
        .unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    })
}

/// Which Redis a suite runs on: the suites that hold for both run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Single,
    /// 3 masters, 3 replicas, nodes in `--redis-cluster` mode.
    Cluster,
}

impl Backend {
    /// The flags a node started outside the [`LocalCluster`] needs for this backend.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Backend::Single => &[],
            Backend::Cluster => &["--redis-cluster"],
        }
    }
}

/// Runs each named suite (an `async fn(Backend)`) once on a single Redis and once on a
/// Redis Cluster: `single_redis::name` and `redis_cluster::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod single_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Single).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Cluster).await
                }
            )*
        }
    };
}

/// Starts `n` resuming subscribers (sub0..) through `url`, each joined to `rooms`.
pub fn spawn_subscribers(
    n: usize,
    url: &str,
    rooms: &[String],
    stop: &Arc<AtomicBool>,
) -> (
    Vec<Arc<Mutex<SubscriberLog>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    chatcluster_e2e::clients::lossless::spawn_subscribers(n, |_| vec![url.to_owned()], rooms, stop)
}

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Waits until every subscriber receives live traffic in every room, so that the
/// measured traffic which follows reaches each of them from its first message. A
/// subscriber's log records messages, not its `joined`; a live message reaching it proves
/// it has joined (subscribed, snapshot taken). A probe session at `url` sends one warm-up
/// message per room per round, and another round if some subscriber was not joined yet
/// when the last one went out. Returns, per room, the last warm-up offset: the measured
/// traffic starts after it.
pub async fn wait_subscribers_live(
    url: &str,
    rooms: &[String],
    logs: &[Arc<Mutex<SubscriberLog>>],
) -> BTreeMap<String, u64> {
    let (mut probe, _, _) = connect(url, "user=probe", None).await.unwrap();
    for room in rooms {
        join(&mut probe, room, None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut warm = BTreeMap::new();
    for round in 0.. {
        for room in rooms {
            let offset = send_and_ack(&mut probe, room, "warm-up", &format!("w{round}{room}"))
                .await
                .unwrap();
            warm.insert(room.clone(), offset);
        }
        // This round reaches every joined subscriber in milliseconds; one that misses it
        // joined too late and needs the next round.
        let round_ends = Instant::now() + Duration::from_secs(1);
        while Instant::now() < round_ends {
            let all = logs.iter().all(|l| {
                let l = lock(l);
                warm.iter().all(|(room, offset)| {
                    l.messages.get(room).is_some_and(|m| m.contains_key(offset))
                })
            });
            if all {
                return warm;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers never all joined (warm-up round {round})"
        );
    }
    unreachable!("the rounds end by returning or by the deadline")
}

/// Messages of `room` a subscriber got after the warm-up (offset above `warm`).
pub fn after_warm_up(l: &SubscriberLog, room: &str, warm: u64) -> BTreeMap<u64, String> {
    l.messages.get(room).map_or_else(BTreeMap::new, |m| {
        m.range(warm + 1..).map(|(o, b)| (*o, b.clone())).collect()
    })
}

/// Waits until the publisher has had `n` messages acknowledged (it is well under way).
pub async fn wait_acked(log: &Arc<Mutex<PublisherLog>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while lock(log).acked.values().map(BTreeMap::len).sum::<usize>() < n {
        assert!(Instant::now() < deadline, "publisher never got {n} acks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
