//! Lossless-operation checks shared by the Kubernetes suites: resuming subscribers that
//! join rooms before traffic starts, and the check that each got every acknowledged
//! message exactly once, in offset order, and every resume was recovered.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::subscriber::{run_resuming_subscriber_over, SubscriberLog};
use crate::wait::eventually;

/// Resuming subscribers, by index and what they hold.
pub type Subscribers = (
    Vec<std::sync::Arc<std::sync::Mutex<SubscriberLog>>>,
    Vec<tokio::task::JoinHandle<()>>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
);

/// Subscribers are named `sub0`, `sub1`, … over the whole test process, so groups of
/// them never share a user (the per-user session cap would refuse the 21st).
static NEXT_SUBSCRIBER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Starts `n` resuming subscribers to `rooms`, subscriber `i` trying `urls(i)` in turn,
/// until `stop` is set; returns their logs and tasks.
pub fn spawn_subscribers(
    n: usize,
    urls: impl Fn(usize) -> Vec<String>,
    rooms: &[String],
    stop: &Arc<AtomicBool>,
) -> (
    Vec<Arc<Mutex<SubscriberLog>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    (0..n)
        .map(|i| {
            let log = Arc::new(Mutex::new(SubscriberLog::default()));
            let task = tokio::spawn(run_resuming_subscriber_over(
                urls(i),
                format!(
                    "sub{}",
                    NEXT_SUBSCRIBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ),
                rooms.to_vec(),
                log.clone(),
                stop.clone(),
            ));
            (log, task)
        })
        .unzip()
}

/// Starts `n` resuming subscribers to `rooms` (subscriber `i` tries `urls(i)` in turn)
/// and waits until each has joined every room; the flag stops them.
pub async fn subscribers_joined(
    n: usize,
    urls: impl Fn(usize) -> Vec<String>,
    rooms: &[String],
) -> Subscribers {
    let stop = Arc::new(AtomicBool::new(false));
    let (logs, tasks) = spawn_subscribers(n, urls, rooms, &stop);
    // Generous: on a loaded 2-core CI machine the stand-in servers share the CPU with a
    // control plane, the operator and a background build.
    let joined = eventually(
        "every subscriber to join",
        Duration::from_secs(60),
        || async {
            Ok(logs
                .iter()
                .all(|l| l.lock().is_ok_and(|l| l.joins >= rooms.len() as u64))
                .then_some(()))
        },
    )
    .await;
    if let Err(e) = joined {
        let states: Vec<String> = logs
            .iter()
            .zip(&tasks)
            .enumerate()
            .map(|(i, (l, t))| {
                let l = l.lock().expect("log");
                format!(
                    "sub{i}: joins {}, nodes {:?}, errors {:?}, failed connects {:?}, task ended {}",
                    l.joins,
                    l.nodes_seen,
                    l.errors,
                    l.connect_failures,
                    t.is_finished()
                )
            })
            .collect();
        panic!("{e}\n{}", states.join("\n"));
    }
    (logs, tasks, stop)
}

/// Waits for the subscribers to catch up with what the publisher had acknowledged
/// (`acked`), stops them, and checks each got every message exactly once, in offset
/// order (as they arrived, not as the log sorts them), and every resume was recovered.
pub async fn every_subscriber_got_every_message_once(
    acked: &std::collections::HashMap<String, BTreeMap<u64, String>>,
    logs: &[std::sync::Arc<std::sync::Mutex<SubscriberLog>>],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) {
    let caught_up = eventually(
        "subscribers to catch up",
        Duration::from_secs(30),
        || async {
            let done = logs.iter().all(|l| {
                let l = l.lock().expect("log");
                acked
                    .iter()
                    .all(|(room, m)| l.messages.get(room).map_or(0, |s| s.len()) >= m.len())
            });
            Ok(done.then_some(()))
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.expect("subscriber task");
    }
    assert!(caught_up.is_ok(), "{caught_up:?}");
    for (i, l) in logs.iter().enumerate() {
        let l = l.lock().expect("log");
        assert_eq!(l.duplicates, 0, "sub{i} got a duplicate");
        for (room, expected) in acked {
            let got = l.messages.get(room).cloned().unwrap_or_default();
            assert_eq!(
                &got, expected,
                "sub{i} in {room}: every message exactly once"
            );
        }
        assert_eq!(l.first_disorder(), None, "sub{i}: messages in offset order");
        assert_eq!(l.not_recovered, 0, "sub{i}: every resume was recovered");
    }
}

/// Reconnects per second over a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectRate {
    /// The busiest one-second bucket, counted from the first reconnect.
    pub peak: u32,
    /// The mean over the span from the first reconnect to the last (at least 1 s).
    pub mean: f64,
    /// Every one-second bucket from the first reconnect on.
    pub per_second: Vec<u32>,
}

/// The reconnect rate of `times` (any order); all zero for none.
pub fn reconnect_rate(times: &[std::time::Instant]) -> ReconnectRate {
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return ReconnectRate {
            peak: 0,
            mean: 0.0,
            per_second: Vec::new(),
        };
    };
    let seconds = last.duration_since(*first).as_secs() as usize + 1;
    let mut per_second = vec![0u32; seconds];
    for t in times {
        per_second[t.duration_since(*first).as_secs() as usize] += 1;
    }
    let span = last.duration_since(*first).as_secs_f64().max(1.0);
    ReconnectRate {
        peak: per_second.iter().max().copied().unwrap_or(0),
        mean: times.len() as f64 / span,
        per_second,
    }
}
