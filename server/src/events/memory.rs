//! The in-memory backplane's events: one queue in the process, delivered in order by one
//! task. It promises less than Redis: what is queued is lost when the process exits, and
//! past `max_backlog` waiting events the oldest is dropped (`chat_events_dropped_total`);
//! the dead-letter list is the log and the last `MAX_DEAD` events, kept in memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Notify;

use super::{Event, EventKind, Outcome, Poster};
use crate::metrics::Metrics;
use crate::sync::lock;

/// Dead letters kept.
pub const MAX_DEAD: usize = 1_000;

pub struct MemoryEvents {
    queue: Mutex<VecDeque<Event>>,
    dead: Mutex<VecDeque<(Event, String)>>,
    wake: Notify,
    next_id: AtomicU64,
    /// Ids are `{start ms}-{n}`: a restarted process never reuses one.
    id_prefix: String,
    max_backlog: usize,
    metrics: Metrics,
}

impl MemoryEvents {
    pub fn new(max_backlog: usize, metrics: Metrics) -> Arc<MemoryEvents> {
        Arc::new(MemoryEvents {
            queue: Mutex::new(VecDeque::new()),
            dead: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            next_id: AtomicU64::new(1),
            id_prefix: (crate::clock::now_us() / 1000).to_string(),
            max_backlog: max_backlog.max(1),
            metrics,
        })
    }

    /// Queues an event. Callers record a room's events under the room's lock, so they
    /// queue in offset order.
    pub fn record(&self, kind: EventKind, payload: Value) {
        let id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let event = Event {
            id,
            kind,
            ts_ms: crate::clock::now_us() / 1000,
            payload,
        };
        {
            let mut queue = lock(&self.queue);
            if queue.len() >= self.max_backlog {
                queue.pop_front();
                self.metrics.events_dropped.inc();
            }
            queue.push_back(event);
            self.metrics.events_lag.set(queue.len() as i64);
        }
        self.metrics
            .events_recorded
            .with_label_values(&[kind.name()])
            .inc();
        self.wake.notify_one();
    }

    /// Events waiting, oldest first (tests, `/admin/status`).
    pub fn waiting(&self) -> usize {
        lock(&self.queue).len()
    }

    /// The dead letters kept, oldest first, with why each was given up.
    pub fn dead_letters(&self) -> Vec<(Event, String)> {
        lock(&self.dead).iter().cloned().collect()
    }

    /// Delivers events in order, for as long as the process runs.
    pub fn spawn_deliverer(self: &Arc<Self>, poster: Poster) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let next = lock(&me.queue).front().cloned();
                let Some(event) = next else {
                    me.wake.notified().await;
                    continue;
                };
                let outcome = poster
                    .deliver(&event, |d| async move {
                        tokio::time::sleep(d).await;
                        true
                    })
                    .await;
                let mut queue = lock(&me.queue);
                // Dropped meanwhile (backlog full) when it is no longer first.
                if queue.front().is_some_and(|e| e.id == event.id) {
                    queue.pop_front();
                }
                me.metrics.events_lag.set(queue.len() as i64);
                drop(queue);
                if let Outcome::GaveUp(why) = outcome {
                    let mut dead = lock(&me.dead);
                    if dead.len() >= MAX_DEAD {
                        dead.pop_front();
                    }
                    dead.push_back((event, why));
                }
            }
        });
    }
}
