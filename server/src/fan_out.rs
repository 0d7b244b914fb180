//! Offering one delivery to many sessions, and counting what became of it.
//!
//! Each offer is a direct write or a queue push (`wire`), so a room's fan-out costs one
//! `send` per member on the thread that runs it. For a room with more than
//! [`SPLIT_AT`] local members that thread writes to half of them (even session ids)
//! and hands the other half to the node's fan-out helper thread, so both cores write a
//! big room's message instead of one. A member always goes to the same writer while
//! its room stays above the threshold, and the helper takes jobs in the order they were
//! given, so each member still gets the room's messages in order; when a room crosses
//! the threshold, a message that overtakes an earlier one meets the cursor's check and
//! is queued, and the session fills the gap from history.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, OnceLock};

use prometheus::{Histogram, IntCounter};

use crate::clock::now_us;
use crate::wire::{Delivery, DeliveryKind, Offered, RoomCursor, SessionHandle};

/// Rooms with more local members than this are written by two threads.
pub const SPLIT_AT: usize = 256;

/// One session in a room, with its place in the room's stream (checked by the fan-out).
#[derive(Debug, Clone)]
pub struct RoomMember {
    pub session: Arc<SessionHandle>,
    pub cursor: Arc<RoomCursor>,
}

/// What the fan-out counts itself: messages it wrote to sockets directly (those the
/// session task writes are counted there), and which path each delivery took.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    pub delivered: IntCounter,
    pub latency: Histogram,
    pub direct: IntCounter,
    pub queued: IntCounter,
}

/// Which members of a room one writer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    All,
    EvenIds,
    OddIds,
}

impl Share {
    fn takes(self, member: &RoomMember) -> bool {
        match self {
            Share::All => true,
            Share::EvenIds => member.session.id % 2 == 0,
            Share::OddIds => member.session.id % 2 == 1,
        }
    }
}

/// A big room's delivery for the helper thread: its half of `members`.
struct Job {
    delivery: Arc<Delivery>,
    members: Arc<Vec<RoomMember>>,
}

/// The node's fan-out: its metrics and, once a big room needed it, its helper thread.
#[derive(Debug, Default)]
pub struct FanOut {
    metrics: Option<DeliveryMetrics>,
    /// Started on the first big room's message; `None` if the thread could not start
    /// (then one thread writes every room, as for small ones).
    helper: OnceLock<Option<Sender<Job>>>,
}

impl FanOut {
    pub fn counting(metrics: DeliveryMetrics) -> FanOut {
        FanOut {
            metrics: Some(metrics),
            helper: OnceLock::new(),
        }
    }

    /// Offers `delivery` to a room's `members`; returns how many took it (those handed
    /// to the helper count as taken).
    pub fn to_room(&self, delivery: Arc<Delivery>, members: Arc<Vec<RoomMember>>) -> usize {
        let metrics = self.metrics.as_ref();
        if let Some(helper) = (members.len() > SPLIT_AT).then(|| self.helper()).flatten() {
            let handed = members.iter().filter(|m| Share::OddIds.takes(m)).count();
            let job = Job {
                delivery: delivery.clone(),
                members: members.clone(),
            };
            if helper.send(job).is_ok() {
                return handed + offer_room(&delivery, &members, Share::EvenIds, metrics);
            }
        }
        offer_room(&delivery, &members, Share::All, metrics)
    }

    /// Offers `delivery` (a direct message) to a user's sessions; returns how many took it.
    pub fn to_sessions(&self, delivery: &Arc<Delivery>, sessions: &[Arc<SessionHandle>]) -> usize {
        let outcomes = sessions.iter().map(|s| s.wire.deliver(delivery, None));
        tally(delivery, outcomes, self.metrics.as_ref())
    }

    fn helper(&self) -> Option<&Sender<Job>> {
        self.helper
            .get_or_init(|| {
                let (jobs, inbox) = mpsc::channel::<Job>();
                let metrics = self.metrics.clone();
                let started = std::thread::Builder::new()
                    .name("chat-fan-out".into())
                    .spawn(move || {
                        // Ends when the hub (the only sender) is dropped.
                        for job in inbox {
                            offer_room(&job.delivery, &job.members, Share::OddIds, metrics.as_ref());
                        }
                    });
                match started {
                    Ok(_) => Some(jobs),
                    Err(e) => {
                        tracing::warn!(error = %e, "fan-out helper thread not started; big rooms are written by one thread");
                        None
                    }
                }
            })
            .as_ref()
    }
}

fn offer_room(
    delivery: &Arc<Delivery>,
    members: &[RoomMember],
    share: Share,
    metrics: Option<&DeliveryMetrics>,
) -> usize {
    let outcomes = members
        .iter()
        .filter(|m| share.takes(m))
        .map(|m| m.session.wire.deliver(delivery, Some(&m.cursor)));
    tally(delivery, outcomes, metrics)
}

/// Counts the offers' outcomes, once per fan-out: each path, and the messages written
/// directly with their latency (as the session task counts those it writes). Returns how
/// many were taken (written, queued or already had).
fn tally(
    delivery: &Delivery,
    outcomes: impl Iterator<Item = Offered>,
    metrics: Option<&DeliveryMetrics>,
) -> usize {
    let (mut taken, mut written, mut queued) = (0, 0u64, 0u64);
    for outcome in outcomes {
        match outcome {
            Offered::Written => {
                taken += 1;
                written += 1;
            }
            Offered::Queued => {
                taken += 1;
                queued += 1;
            }
            Offered::Dropped => taken += 1,
            Offered::Refused => {}
        }
    }
    let Some(metrics) = metrics else {
        return taken;
    };
    metrics.direct.inc_by(written);
    metrics.queued.inc_by(queued);
    match &delivery.kind {
        DeliveryKind::Room { published_us, .. } if written > 0 => {
            metrics.delivered.inc_by(written);
            // A local histogram keeps the observations to plain adds.
            let latency = metrics.latency.local();
            let seconds = now_us().saturating_sub(*published_us) as f64 / 1e6;
            for _ in 0..written {
                latency.observe(seconds);
            }
            latency.flush();
        }
        DeliveryKind::Direct => metrics.delivered.inc_by(written),
        _ => {}
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CursorState, Inbox, Outbound};

    #[test]
    fn a_big_room_is_shared_with_the_helper_and_each_member_gets_its_messages_in_order() {
        let fan_out = FanOut::default();
        let members_count = SPLIT_AT + 44;
        let mut inboxes = Vec::new();
        let mut members = Vec::new();
        for id in 0..members_count as u64 {
            let (session, inbox) = SessionHandle::detached(id, "u", 1 << 20);
            let cursor = Arc::new(RoomCursor::default());
            cursor.set(CursorState {
                epoch: Some("e".into()),
                last: 0,
                presence: true,
            });
            members.push(RoomMember { session, cursor });
            inboxes.push(inbox);
        }
        let members = Arc::new(members);
        for offset in 1..=20 {
            let kind = DeliveryKind::Room {
                room: "r".into(),
                epoch: "e".into(),
                offset,
                published_us: 0,
            };
            let delivery = Arc::new(Delivery::text(kind, b"m"));
            assert_eq!(fan_out.to_room(delivery, members.clone()), members_count);
        }
        let received = |inbox: &Inbox| {
            std::iter::from_fn(|| inbox.try_recv())
                .map(|out| match out {
                    Outbound::Deliver(d) => match d.kind {
                        DeliveryKind::Room { offset, .. } => offset,
                        ref other => panic!("unexpected {other:?}"),
                    },
                    other => panic!("unexpected {other:?}"),
                })
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut done = vec![false; members_count];
        let mut got: Vec<Vec<u64>> = vec![Vec::new(); members_count];
        while done.iter().any(|d| !d) {
            assert!(
                std::time::Instant::now() < deadline,
                "the helper wrote its half"
            );
            for (i, inbox) in inboxes.iter().enumerate() {
                got[i].extend(received(inbox));
                done[i] = got[i].len() == 20;
            }
            std::thread::yield_now();
        }
        for offsets in &got {
            assert_eq!(offsets, &(1..=20).collect::<Vec<_>>());
        }
        assert!(
            fan_out.helper.get().is_some_and(Option::is_some),
            "the helper ran"
        );
    }
}
