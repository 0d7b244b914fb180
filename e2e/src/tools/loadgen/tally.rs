//! Per-subscriber accounting for the fanout scenario, kept free of I/O so that every way
//! a delivery can go wrong (lost, duplicated, out of order, an offset gap before the first
//! message) is unit-tested rather than trusted.
//!
//! Each message body starts with `TAG PUBLISHER SEQ SCHEDULED_US`: the run's tag tells
//! this run's messages from other traffic in the room, (publisher, seq) identifies the
//! message, and the scheduled send time (micros since the run's common clock base) gives
//! latency without coordinated omission.

use std::time::Duration;

/// Which messages a run sends: publisher `p` sends seqs `0..counts[p]`, in bodies that
/// start with `tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub tag: String,
    pub counts: Vec<u64>,
    /// Messages per second over all publishers.
    pub rate: u32,
}

impl Plan {
    /// `total` messages over `publishers` at `rate` per second in all: message `i` of the
    /// run is sent by publisher `i % publishers`, so publishers interleave evenly.
    pub fn new(tag: impl Into<String>, total: u64, publishers: usize, rate: u32) -> Plan {
        let n = publishers.max(1) as u64;
        let counts = (0..n)
            .map(|p| total / n + u64::from(p < total % n))
            .collect();
        Plan {
            tag: tag.into(),
            counts,
            rate: rate.max(1),
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// When (publisher, seq) is due, from the start of publishing: `seq × interval` for
    /// that publisher plus its phase offset, i.e. message `seq × publishers + p` of the
    /// run at `rate` per second. Computed from integers so nothing drifts over a run.
    pub fn scheduled(&self, publisher: usize, seq: u64) -> Duration {
        let index = u128::from(seq) * self.counts.len() as u128 + publisher as u128;
        let nanos = index * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The body of (publisher, seq), padded with `x` to `bytes` (longer if the header
    /// alone is longer).
    pub fn body(&self, publisher: usize, seq: u64, scheduled_us: u64, bytes: usize) -> String {
        let mut body = format!("{} {publisher} {seq} {scheduled_us} ", self.tag);
        let pad = bytes.saturating_sub(body.len());
        body.extend(std::iter::repeat_n('x', pad));
        body
    }

    /// Reads a body back; bodies from other traffic (another tag) are `Other`.
    pub fn parse(&self, body: &str) -> Body {
        let mut words = body.split(' ');
        if words.next() != Some(self.tag.as_str()) {
            return Body::Other;
        }
        let mut num = || words.next().and_then(|w| w.parse::<u64>().ok());
        match (num(), num(), num()) {
            (Some(p), Some(seq), Some(scheduled_us))
                if (p as usize) < self.counts.len() && seq < self.counts[p as usize] =>
            {
                Body::Ours {
                    publisher: p as usize,
                    seq,
                    scheduled_us,
                }
            }
            _ => Body::Malformed,
        }
    }
}

/// What a message body turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Ours {
        publisher: usize,
        seq: u64,
        scheduled_us: u64,
    },
    /// Not from this run (someone else's traffic in the room).
    Other,
    /// Carries this run's tag but no valid (publisher, seq): a corrupted message.
    Malformed,
}

/// A fixed-size set of seqs (one bit each), so a long run costs little memory per
/// subscriber.
#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: u64) -> Bits {
        Bits(vec![0; len.div_ceil(64) as usize])
    }

    /// Adds `i`; false if it was already there.
    fn insert(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }
}

/// What one subscriber saw. Counts are in (publisher, seq) units unless named after
/// offsets; [`Tally::merge`] sums subscribers for the report.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    seen: Vec<Bits>,
    /// Highest seq seen per publisher, to spot one arriving after a later one.
    highest: Vec<Option<u64>>,
    /// Expected (publisher, seq) not seen yet; what is left at the end is lost.
    missing: u64,
    /// (epoch, last offset) of the room as this subscriber has followed it.
    cursor: Option<(String, u64)>,
    /// Every `message` frame received (this run's and other traffic): server deliveries.
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Messages from other traffic in the room (not counted as this run's).
    pub other_traffic: u64,
    /// Frames carrying this run's tag that do not parse, or messages without an offset.
    pub unexpected: u64,
    /// Room offsets skipped, from the `joined` offset on (so a gap before the first
    /// message counts too).
    pub gaps: u64,
    /// Messages whose offset was not past the last one seen.
    pub offset_repeats: u64,
    /// Times the server could not replay a gap (`joined` with `recovered: false`, or a
    /// new epoch) so offset continuity was lost.
    pub not_recovered: u64,
    /// Times the subscriber's connection ended and it came back and resumed (a clean
    /// benchmark run has none: a resume replays late, and the latencies show it).
    pub reconnects: u64,
    /// Deliveries received before they were scheduled: impossible on one monotonic
    /// clock, so any is a bug in the load generator, reported instead of clamped.
    pub negative_latencies: u64,
    /// Receive time minus scheduled send time, per delivery of this run's messages.
    pub latencies_us: Vec<u64>,
    /// The same latency by (publisher, seq), for [`RoomSpread`]; `None` until received.
    by_message_us: Vec<Vec<Option<u64>>>,
}

impl Tally {
    /// An empty tally expecting every message of `plan`.
    pub fn new(plan: &Plan) -> Tally {
        Tally {
            seen: plan.counts.iter().map(|&n| Bits::new(n)).collect(),
            highest: vec![None; plan.counts.len()],
            missing: plan.total(),
            by_message_us: plan
                .counts
                .iter()
                .map(|&n| vec![None; usize::try_from(n).unwrap_or(0)])
                .collect(),
            ..Tally::default()
        }
    }

    /// A `joined` frame: the first sets where the room's offsets start for this
    /// subscriber; a later one (the server could not replay a gap) moves the cursor, and
    /// the offsets it skips count as gaps.
    pub fn joined(&mut self, epoch: &str, offset: u64, recovered: bool) {
        match &self.cursor {
            None => {}
            Some((e, last)) if e == epoch => {
                self.gaps += offset.saturating_sub(*last);
                if !recovered {
                    self.not_recovered += 1;
                }
            }
            Some(_) => self.not_recovered += 1,
        }
        self.cursor = Some((epoch.to_owned(), offset));
    }

    /// A `message` frame received `received_us` after the run's clock base.
    pub fn message(&mut self, plan: &Plan, epoch: &str, offset: u64, body: &str, received_us: u64) {
        self.delivered += 1;
        match &mut self.cursor {
            Some((e, last)) if e == epoch => {
                if offset <= *last {
                    self.offset_repeats += 1;
                } else {
                    self.gaps += offset - *last - 1;
                    *last = offset;
                }
            }
            other => {
                // No `joined` seen, or an epoch change without one: continuity unknown.
                self.not_recovered += 1;
                *other = Some((epoch.to_owned(), offset));
            }
        }
        let (p, seq, scheduled_us) = match plan.parse(body) {
            Body::Ours {
                publisher,
                seq,
                scheduled_us,
            } => (publisher, seq, scheduled_us),
            Body::Other => {
                self.other_traffic += 1;
                return;
            }
            Body::Malformed => {
                self.unexpected += 1;
                return;
            }
        };
        let latency = received_us.checked_sub(scheduled_us);
        match latency {
            Some(l) => self.latencies_us.push(l),
            None => self.negative_latencies += 1,
        }
        if !self.seen[p].insert(seq) {
            self.duplicated += 1;
            return;
        }
        // `parse` only returns (publisher, seq) within the plan, as for `seen` above.
        self.by_message_us[p][seq as usize] = latency;
        self.missing -= 1;
        match self.highest[p] {
            Some(h) if seq < h => self.out_of_order += 1,
            _ => self.highest[p] = Some(seq),
        }
    }

    /// A frame that should have been a well-formed message but was not.
    pub fn unexpected_frame(&mut self) {
        self.unexpected += 1;
    }

    /// True once every expected (publisher, seq) has arrived.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// Expected (publisher, seq) not received.
    pub fn lost(&self) -> u64 {
        self.missing
    }

    /// Adds another subscriber's counts into this one (the merged tally is only for
    /// reporting: its per-message state is not combined).
    pub fn merge(&mut self, other: Tally) {
        self.missing += other.missing;
        self.delivered += other.delivered;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.other_traffic += other.other_traffic;
        self.unexpected += other.unexpected;
        self.gaps += other.gaps;
        self.offset_repeats += other.offset_repeats;
        self.not_recovered += other.not_recovered;
        self.reconnects += other.reconnects;
        self.negative_latencies += other.negative_latencies;
        self.latencies_us.extend(other.latencies_us);
    }

    /// What went wrong, one phrase per non-zero problem count; empty for a clean run.
    pub fn problems(&self) -> Vec<String> {
        [
            (self.lost(), "lost"),
            (self.duplicated, "duplicated"),
            (self.out_of_order, "out of order"),
            (self.gaps, "offsets skipped"),
            (self.offset_repeats, "offsets repeated"),
            (self.not_recovered, "unrecovered gaps"),
            (self.reconnects, "reconnects"),
            (self.unexpected, "malformed messages"),
            (self.negative_latencies, "received before scheduled"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect()
    }
}

/// How long each message of one room took to reach *every* subscriber: per (publisher,
/// seq), the latency of the subscriber that received it last. In a big room this is the
/// time one message's fan-out takes, which per-delivery percentiles blur.
#[derive(Debug, Default)]
pub struct RoomSpread {
    slowest_us: Vec<Vec<Option<u64>>>,
}

impl RoomSpread {
    /// Adds one subscriber of the room (call before [`Tally::merge`] consumes it).
    pub fn add(&mut self, t: &Tally) {
        if self.slowest_us.is_empty() {
            self.slowest_us = t.by_message_us.clone();
            return;
        }
        for (mine, theirs) in self.slowest_us.iter_mut().zip(&t.by_message_us) {
            for (m, l) in mine.iter_mut().zip(theirs) {
                *m = (*m).max(*l);
            }
        }
    }

    /// The last subscriber's latency for each message that some subscriber received. A
    /// subscriber that missed a message counts it as lost; the figure here is then the
    /// last of those that got it.
    pub fn into_latencies(self) -> impl Iterator<Item = u64> {
        self.slowest_us.into_iter().flatten().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        // 2 publishers, 3 messages each, 100 msg/s in all.
        Plan::new("t1", 6, 2, 100)
    }

    /// Feeds (offset, publisher, seq) as messages of epoch "e", received at 1 s.
    fn feed(t: &mut Tally, p: &Plan, msgs: &[(u64, usize, u64)]) {
        for &(offset, publisher, seq) in msgs {
            let body = p.body(publisher, seq, 1_000, 64);
            t.message(p, "e", offset, &body, 1_000_000);
        }
    }

    #[test]
    fn plan_splits_messages_and_interleaves_schedules() {
        let p = Plan::new("t", 7, 3, 10);
        assert_eq!(p.counts, vec![3, 2, 2]);
        assert_eq!(p.total(), 7);
        // Message i of the run is due at i / rate: publisher 1's seq 2 is message 7.
        assert_eq!(p.scheduled(0, 0), Duration::ZERO);
        assert_eq!(p.scheduled(1, 0), Duration::from_millis(100));
        assert_eq!(p.scheduled(1, 2), Duration::from_millis(700));
        assert_eq!(
            Plan::new("t", 3, 1, 3).scheduled(0, 1),
            Duration::from_nanos(333_333_333)
        );
    }

    #[test]
    fn bodies_round_trip_and_other_traffic_is_recognised() {
        let p = plan();
        let b = p.body(1, 2, 12_345, 48);
        assert_eq!(b.len(), 48);
        assert!(b.starts_with("t1 1 2 12345 x"));
        assert_eq!(
            p.parse(&b),
            Body::Ours {
                publisher: 1,
                seq: 2,
                scheduled_us: 12_345
            }
        );
        assert_eq!(p.parse("hello"), Body::Other);
        assert_eq!(p.parse("t10 0 0 0"), Body::Other);
        assert_eq!(p.parse("t1 0 3 0"), Body::Malformed, "seq past the plan");
        assert_eq!(p.parse("t1 2 0 0"), Body::Malformed, "no such publisher");
        assert_eq!(p.parse("t1 zero"), Body::Malformed);
    }

    #[test]
    fn clean_run_is_complete_with_latencies() {
        let p = plan();
        let mut t = Tally::new(&p);
        t.joined("e", 10, true);
        feed(
            &mut t,
            &p,
            &[(11, 0, 0), (12, 1, 0), (13, 0, 1), (14, 1, 1), (15, 0, 2)],
        );
        assert!(!t.is_complete());
        feed(&mut t, &p, &[(16, 1, 2)]);
        assert!(t.is_complete());
        assert!(t.problems().is_empty(), "{:?}", t.problems());
        assert_eq!(t.delivered, 6);
        assert_eq!(t.latencies_us, vec![999_000; 6]);
    }

    #[test]
    fn counts_lost_duplicated_and_out_of_order_separately() {
        let p = plan();
        let mut t = Tally::new(&p);
        t.joined("e", 0, true);
        // (0,1) lost; (1,0) duplicated; (0,0) arrives after (0,2).
        feed(
            &mut t,
            &p,
            &[
                (1, 1, 0),
                (2, 0, 2),
                (3, 0, 0),
                (4, 1, 0),
                (5, 1, 1),
                (6, 1, 2),
            ],
        );
        assert_eq!(t.lost(), 1);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.gaps, 0, "offsets themselves were contiguous");
        assert_eq!(
            t.problems(),
            vec!["1 lost", "1 duplicated", "1 out of order"]
        );
    }

    #[test]
    fn a_gap_before_the_first_message_is_seen_through_the_joined_offset() {
        let p = plan();
        let mut t = Tally::new(&p);
        t.joined("e", 10, true);
        // Offsets 11 and 12 never arrive (other traffic, say), then everything of ours.
        feed(
            &mut t,
            &p,
            &[
                (13, 0, 0),
                (14, 1, 0),
                (15, 0, 1),
                (16, 1, 1),
                (17, 0, 2),
                (18, 1, 2),
            ],
        );
        assert!(t.is_complete());
        assert_eq!(t.gaps, 2);
        assert_eq!(t.problems(), vec!["2 offsets skipped"]);
    }

    #[test]
    fn other_traffic_cannot_stand_in_for_this_runs_messages() {
        let p = plan();
        let mut t = Tally::new(&p);
        t.joined("e", 0, true);
        for offset in 1..=6 {
            t.message(&p, "e", offset, "someone else", 5);
        }
        assert_eq!(t.delivered, 6);
        assert_eq!(t.other_traffic, 6);
        assert_eq!(t.lost(), 6);
        assert!(!t.is_complete());
    }

    #[test]
    fn repeats_unrecovered_joins_and_clock_errors_are_problems() {
        let p = plan();
        let mut t = Tally::new(&p);
        t.joined("e", 0, true);
        feed(&mut t, &p, &[(1, 0, 0)]);
        t.message(&p, "e", 1, "other", 0);
        assert_eq!(t.offset_repeats, 1);
        // The server could not replay offsets 2..=4 and says so.
        t.joined("e", 4, false);
        assert_eq!((t.gaps, t.not_recovered), (3, 1));
        // A new epoch without a `joined`: continuity unknown.
        t.message(&p, "f", 1, "other", 0);
        assert_eq!(t.not_recovered, 2);
        // Received before it was scheduled.
        let early = p.body(0, 1, 2_000, 48);
        t.message(&p, "f", 2, &early, 1_000);
        assert_eq!(t.negative_latencies, 1);
        t.message(&p, "f", 3, "t1 broken", 0);
        t.unexpected_frame();
        assert_eq!(t.unexpected, 2);
    }

    #[test]
    fn merge_sums_subscribers() {
        let p = plan();
        let mut a = Tally::new(&p);
        a.joined("e", 0, true);
        feed(&mut a, &p, &[(1, 0, 0)]);
        let mut b = Tally::new(&p);
        b.joined("e", 0, true);
        feed(&mut b, &p, &[(1, 0, 0), (2, 0, 0)]);
        a.merge(b);
        assert_eq!(a.lost(), 10);
        assert_eq!(a.delivered, 3);
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.latencies_us.len(), 3);
    }

    #[test]
    fn room_spread_keeps_each_messages_last_subscriber() {
        let p = plan();
        // Message (0, 0) is due at 1 ms: subscriber a gets it at 3 ms, b at 9 ms. Only a
        // gets (1, 0), due at 11 ms, at 12 ms; b's duplicate of (0, 0) changes nothing.
        let mut a = Tally::new(&p);
        a.joined("e", 0, true);
        a.message(&p, "e", 1, &p.body(0, 0, 1_000, 48), 3_000);
        a.message(&p, "e", 2, &p.body(1, 0, 11_000, 48), 12_000);
        let mut b = Tally::new(&p);
        b.joined("e", 0, true);
        b.message(&p, "e", 1, &p.body(0, 0, 1_000, 48), 9_000);
        b.message(&p, "e", 1, &p.body(0, 0, 1_000, 48), 50_000);
        let mut spread = RoomSpread::default();
        spread.add(&a);
        spread.add(&b);
        let mut last: Vec<u64> = spread.into_latencies().collect();
        last.sort_unstable();
        assert_eq!(last, vec![1_000, 8_000]);
        assert!(RoomSpread::default().into_latencies().next().is_none());
    }
}
