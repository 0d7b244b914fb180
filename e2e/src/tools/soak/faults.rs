//! The faults the soak injects: a random schedule (pure, from a seed, so a failing run
//! can be repeated) and the code that applies one fault to the running cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::harness::local_cluster::LocalCluster;
use crate::harness::toxiproxy::Toxiproxy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a node (no drain: its clients lose the connection), restart it 2 s later.
    KillNode,
    /// SIGTERM a node (drain: reconnect notices), restart it once it has exited.
    DrainNode,
    /// SIGKILL Redis and start it again from its append-only file.
    RestartRedis,
    /// 200 ms added to everything Redis sends to every node, for 10 s.
    RedisLatency,
    /// One node's link to Redis closed and refused for 5 s.
    CutNodeFromRedis,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::KillNode,
        FaultKind::DrainNode,
        FaultKind::RestartRedis,
        FaultKind::RedisLatency,
        FaultKind::CutNodeFromRedis,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillNode => "kill_node",
            FaultKind::DrainNode => "drain_node",
            FaultKind::RestartRedis => "restart_redis",
            FaultKind::RedisLatency => "redis_latency_200ms",
            FaultKind::CutNodeFromRedis => "cut_node_from_redis_5s",
        }
    }

    /// How long the fault itself lasts (the time before the next one starts comes on top).
    fn hold(self) -> Duration {
        match self {
            FaultKind::KillNode => Duration::from_secs(2),
            FaultKind::RedisLatency => Duration::from_secs(10),
            FaultKind::CutNodeFromRedis => Duration::from_secs(5),
            FaultKind::DrainNode | FaultKind::RestartRedis => Duration::ZERO,
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// Which node (for the kinds that hit one).
    pub node: usize,
    /// The quiet time before it starts, after the previous fault has ended.
    pub after: Duration,
}

/// What applying one round of all five kinds takes beyond their holds: a drain waits for
/// the node to exit and restart, a kill for the restart, a cut for the link to come back
/// (about 7 s measured on 2 cores, 2026-12-06), with a margin.
pub const ROUND_APPLY_MARGIN: Duration = Duration::from_secs(12);

/// The shortest fault period that holds one fault of every kind with quiet gaps of
/// `gap_min` before each.
pub fn shortest_period_for_every_kind(gap_min: Duration) -> Duration {
    let holds: Duration = FaultKind::ALL.iter().map(|k| k.hold()).sum();
    holds + gap_min * FaultKind::ALL.len() as u32 + ROUND_APPLY_MARGIN
}

/// A random sequence of faults, one at a time, for a fault period of `period`: kinds come
/// in shuffled rounds of all five, nodes at random, and a random quiet gap of
/// `gap.0..=gap.1` before each. The first round's gaps are shortened where needed so the
/// whole round fits in the period (with [`ROUND_APPLY_MARGIN`]): a run long enough for
/// [`shortest_period_for_every_kind`] sees every kind. Faults whose start plus hold
/// would run past `period` are left out; applying a fault takes longer than its hold
/// (restarts), so the injector also stops at the end of the period.
pub fn schedule(
    seed: u64,
    period: Duration,
    nodes: usize,
    gap: (Duration, Duration),
) -> Vec<Fault> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut at = Duration::ZERO;
    let mut round: Vec<FaultKind> = Vec::new();
    // The longest gap that still fits the first round in the period.
    let kinds = FaultKind::ALL.len() as u32;
    let holds: Duration = FaultKind::ALL.iter().map(|k| k.hold()).sum();
    let first_round_gap = period.saturating_sub(holds + ROUND_APPLY_MARGIN) / kinds;
    loop {
        if round.is_empty() {
            round = FaultKind::ALL.to_vec();
            round.shuffle(&mut rng);
        }
        let Some(kind) = round.pop() else { break };
        let longest = if out.len() < FaultKind::ALL.len() {
            gap.1.min(first_round_gap).max(gap.0)
        } else {
            gap.1
        };
        let after = if longest > gap.0 {
            rng.random_range(gap.0..=longest)
        } else {
            gap.0
        };
        at += after + kind.hold();
        if at > period {
            break;
        }
        out.push(Fault {
            kind,
            node: rng.random_range(0..nodes.max(1)),
            after,
        });
    }
    out
}

/// Counts by kind, for the report.
pub fn count_by_kind(faults: &[Fault]) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for f in faults {
        *out.entry(f.kind.name()).or_default() += 1;
    }
    out
}

/// The running system the faults act on. Toxiproxy link `i` carries node `i`'s Redis
/// traffic and is named after it.
pub struct Target<'a> {
    pub cluster: &'a mut LocalCluster,
    pub proxy: &'a Toxiproxy,
}

impl Target<'_> {
    /// Applies `f` and undoes it (restarts what it stopped, removes what it added); returns
    /// once the system is whole again: every node ready and routed.
    pub fn apply(&mut self, f: &Fault) -> Result<()> {
        let node = f.node.min(self.cluster.nodes.len().saturating_sub(1));
        let link = self.cluster.nodes[node].name.clone();
        match f.kind {
            FaultKind::KillNode => {
                self.cluster.kill_node(node)?;
                std::thread::sleep(f.kind.hold());
                self.cluster.start_node(node)?;
            }
            FaultKind::DrainNode => {
                self.cluster
                    .drain_node(node, Duration::from_secs(60))
                    .context("draining")?;
                self.cluster.start_node(node)?;
            }
            FaultKind::RestartRedis => self.cluster.redis.single().restart()?,
            FaultKind::RedisLatency => {
                let links: Vec<String> =
                    self.cluster.nodes.iter().map(|n| n.name.clone()).collect();
                for l in &links {
                    self.proxy.add_latency(l, "soak_latency", 200)?;
                }
                std::thread::sleep(f.kind.hold());
                for l in &links {
                    self.proxy.remove_toxic(l, "soak_latency")?;
                }
            }
            FaultKind::CutNodeFromRedis => {
                self.proxy.set_enabled(&link, false)?;
                std::thread::sleep(f.kind.hold());
                self.proxy.set_enabled(&link, true)?;
            }
        }
        self.cluster
            .wait_ready(Duration::from_secs(60))
            .with_context(|| format!("the cluster did not recover from {}", f.kind.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_fits_its_period_and_repeats_from_its_seed() {
        let period = Duration::from_secs(75);
        let gap = (Duration::from_secs(3), Duration::from_secs(8));
        let s = schedule(7, period, 3, gap);
        assert_eq!(s, schedule(7, period, 3, gap));
        let total: Duration = s.iter().map(|f| f.after + f.kind.hold()).sum();
        assert!(total <= period, "{total:?}");
        assert!(s
            .iter()
            .all(|f| f.node < 3 && f.after >= gap.0 && f.after <= gap.1));
        // The first round holds every kind once.
        let first: std::collections::BTreeSet<_> = s.iter().take(5).map(|f| f.kind).collect();
        assert_eq!(first.len(), 5, "{s:?}");
    }

    #[test]
    fn a_period_long_enough_fits_every_kind_whatever_the_seed() {
        let gap = (Duration::from_secs(3), Duration::from_secs(8));
        // The test command's soak: 90 s less 5 s of warm-up and 30 s to settle.
        let period = Duration::from_secs(55);
        assert!(period >= shortest_period_for_every_kind(gap.0));
        for seed in 0..500 {
            let s = schedule(seed, period, 3, gap);
            let first: std::collections::BTreeSet<_> = s.iter().take(5).map(|f| f.kind).collect();
            assert_eq!(first.len(), 5, "seed {seed}: {s:?}");
            let round: Duration = s.iter().take(5).map(|f| f.after + f.kind.hold()).sum();
            assert!(
                round + ROUND_APPLY_MARGIN <= period,
                "seed {seed}: {round:?}"
            );
        }
    }

    #[test]
    fn a_short_period_gets_no_fault_that_does_not_fit() {
        let gap = (Duration::from_secs(5), Duration::from_secs(5));
        let s = schedule(1, Duration::from_secs(6), 3, gap);
        assert!(s.len() <= 1);
        assert!(s
            .iter()
            .all(|f| f.after + f.kind.hold() <= Duration::from_secs(6)));
        assert!(schedule(1, Duration::from_secs(4), 3, gap).is_empty());
    }
}
