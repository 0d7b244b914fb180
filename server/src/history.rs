//! Per-room ordered history and the resume decision. Pure: no I/O, no clock reads
//! (callers pass `now_ms`), so the "whole gap or nothing" rule is unit-tested here and
//! shared by every backplane.

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;

use crate::protocol::Position;

/// How much history a room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_messages: usize,
    pub max_age_ms: u64,
}

/// One stored room message, with its frame already serialized so replay costs no JSON work.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub offset: u64,
    pub ts_ms: u64,
    pub frame: Utf8Bytes,
}

/// What a joining client gets for its `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeDecision {
    /// No `since`: live messages only, nothing replayed.
    Fresh,
    /// Replay every message with offset in `from..=to` (`from <= to`).
    Replay { from: u64, to: u64 },
    /// The client has seen the head already: recovered, nothing to replay.
    UpToDate,
    /// The gap is not (wholly) in history, or the epoch changed: replay nothing.
    NotRecovered,
}

/// Decides what to replay for a client that last saw `since`, given the room's current
/// epoch, head offset (last assigned, 0 when none) and the oldest retained offset
/// (`None` when nothing is retained).
pub fn resume_decision(
    epoch: &str,
    head: u64,
    oldest_retained: Option<u64>,
    since: Option<&Position>,
) -> ResumeDecision {
    let Some(since) = since else {
        return ResumeDecision::Fresh;
    };
    if since.epoch != epoch || since.offset > head {
        return ResumeDecision::NotRecovered;
    }
    if since.offset == head {
        // Not `Replay { from: head + 1, .. }`: the head may be u64::MAX (found by the
        // `resume` fuzz target).
        return ResumeDecision::UpToDate;
    }
    match oldest_retained {
        Some(oldest) if oldest <= since.offset + 1 => ResumeDecision::Replay {
            from: since.offset + 1,
            to: head,
        },
        _ => ResumeDecision::NotRecovered,
    }
}

/// A room's ordered log, bounded by count and age.
#[derive(Debug)]
pub struct RoomLog {
    epoch: std::sync::Arc<str>,
    head: u64,
    entries: VecDeque<StoredMessage>,
    limits: HistoryLimits,
    /// Sum of the retained frames' lengths (for the node-wide history budget).
    bytes: usize,
}

impl RoomLog {
    pub fn new(epoch: String, limits: HistoryLimits) -> Self {
        RoomLog {
            epoch: epoch.into(),
            head: 0,
            entries: VecDeque::new(),
            limits,
            bytes: 0,
        }
    }

    pub fn epoch(&self) -> &std::sync::Arc<str> {
        &self.epoch
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// The next offset `append` will assign.
    pub fn next_offset(&self) -> u64 {
        self.head + 1
    }

    /// Appends a message whose frame was built for `next_offset()`.
    pub fn append(&mut self, ts_ms: u64, frame: Utf8Bytes, now_ms: u64) -> u64 {
        self.head += 1;
        self.bytes += frame.len();
        self.entries.push_back(StoredMessage {
            offset: self.head,
            ts_ms,
            frame,
        });
        self.prune(now_ms);
        self.head
    }

    /// Drops entries over the count bound or older than the age bound.
    pub fn prune(&mut self, now_ms: u64) {
        while self.entries.len() > self.limits.max_messages {
            self.drop_oldest();
        }
        let cutoff = now_ms.saturating_sub(self.limits.max_age_ms);
        while self.entries.front().is_some_and(|m| m.ts_ms < cutoff) {
            self.drop_oldest();
        }
    }

    /// Forgets the oldest retained message; returns the bytes freed (0 when empty).
    pub fn drop_oldest(&mut self) -> usize {
        let freed = self.entries.pop_front().map_or(0, |m| m.frame.len());
        self.bytes -= freed;
        freed
    }

    /// Bytes of history this room retains.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// At most `max` retained messages with offsets above `after` and times at or after
    /// `min_ts_ms`, in offset order (the server API's history read).
    pub fn read(&self, after: u64, min_ts_ms: u64, max: usize) -> Vec<(u64, Utf8Bytes)> {
        let start = self.entries.front().map_or(0, |m| {
            usize::try_from(after.saturating_sub(m.offset - 1)).unwrap_or(usize::MAX)
        });
        self.entries
            .iter()
            .skip(start)
            .filter(|m| m.offset > after && m.ts_ms >= min_ts_ms)
            .take(max)
            .map(|m| (m.offset, m.frame.clone()))
            .collect()
    }

    /// Newest message time, used to forget idle rooms.
    pub fn last_ts(&self) -> Option<u64> {
        self.entries.back().map(|m| m.ts_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Resume decision plus the first page (at most `max` frames) to replay, in offset
    /// order; the rest comes from [`RoomLog::page`].
    pub fn replay(
        &mut self,
        since: Option<&Position>,
        now_ms: u64,
        max: usize,
    ) -> (ResumeDecision, Vec<Utf8Bytes>) {
        self.prune(now_ms);
        let oldest = self.entries.front().map(|m| m.offset);
        let decision = resume_decision(&self.epoch, self.head, oldest, since);
        let frames = match decision {
            ResumeDecision::Replay { from, to } => self
                .page(&self.epoch.clone(), from - 1, to, max)
                .map(|page| page.into_iter().map(|(_, f)| f).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        (decision, frames)
    }

    /// The next page of a replay: at most `max` frames with offsets `after + 1 ..= upto`
    /// of `epoch`, with their offsets. `None` when history no longer holds offset
    /// `after + 1` of that epoch (trimmed, or the epoch was replaced): the replay cannot
    /// continue whole.
    pub fn page(
        &self,
        epoch: &str,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Option<Vec<(u64, Utf8Bytes)>> {
        if *self.epoch != *epoch || after >= upto {
            return (*self.epoch == *epoch).then(Vec::new);
        }
        // Offsets are contiguous, so the entry for `after + 1` sits at a known index.
        let oldest = self.entries.front()?.offset;
        if oldest > after + 1 {
            return None;
        }
        let start = usize::try_from(after + 1 - oldest).ok()?;
        Some(
            self.entries
                .iter()
                .skip(start)
                .take_while(|m| m.offset <= upto)
                .take(max)
                .map(|m| (m.offset, m.frame.clone()))
                .collect(),
        )
    }
}

/// A fresh random room epoch: 16 hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, offset: u64) -> Position {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }

    #[test]
    fn decision_covers_every_case() {
        assert_eq!(
            resume_decision("e", 5, Some(1), None),
            ResumeDecision::Fresh
        );
        assert_eq!(
            resume_decision("e", 5, Some(1), Some(&pos("e", 2))),
            ResumeDecision::Replay { from: 3, to: 5 }
        );
        assert_eq!(
            resume_decision("e", 5, Some(3), Some(&pos("e", 2))),
            ResumeDecision::Replay { from: 3, to: 5 }
        );
        // Offset 3 was pruned: replaying 4..5 would be partial.
        assert_eq!(
            resume_decision("e", 5, Some(4), Some(&pos("e", 2))),
            ResumeDecision::NotRecovered
        );
        assert_eq!(
            resume_decision("e", 5, Some(1), Some(&pos("other", 2))),
            ResumeDecision::NotRecovered
        );
        assert_eq!(
            resume_decision("e", 5, Some(1), Some(&pos("e", 9))),
            ResumeDecision::NotRecovered
        );
        // Caught up, even with everything pruned: nothing was missed.
        assert_eq!(
            resume_decision("e", 5, None, Some(&pos("e", 5))),
            ResumeDecision::UpToDate
        );
        assert_eq!(
            resume_decision("e", 5, None, Some(&pos("e", 4))),
            ResumeDecision::NotRecovered
        );
        assert_eq!(
            resume_decision("e", 0, None, Some(&pos("e", 0))),
            ResumeDecision::UpToDate
        );
        // At the very top of the offset range.
        assert_eq!(
            resume_decision("e", u64::MAX, Some(1), Some(&pos("e", u64::MAX))),
            ResumeDecision::UpToDate
        );
    }

    fn log(max_messages: usize, max_age_ms: u64) -> RoomLog {
        RoomLog::new(
            "e".into(),
            HistoryLimits {
                max_messages,
                max_age_ms,
            },
        )
    }

    #[test]
    fn epochs_are_16_hex_digits_and_fresh_each_time() {
        let a = new_epoch();
        let b = new_epoch();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn last_ts_and_emptiness_follow_the_retained_messages() {
        // The memory backplane forgets idle rooms by these two.
        let mut l = log(2, 1_000);
        assert!(l.is_empty());
        assert_eq!(l.last_ts(), None);
        l.append(100, "a".into(), 100);
        l.append(250, "b".into(), 250);
        assert!(!l.is_empty());
        assert_eq!(l.last_ts(), Some(250));
        l.prune(1_300);
        assert!(l.is_empty());
        assert_eq!(l.last_ts(), None);
    }

    #[test]
    fn bounded_by_count() {
        let mut l = log(3, 1_000_000);
        for i in 0..5 {
            l.append(i, format!("m{}", i + 1).into(), 10);
        }
        assert_eq!(l.head(), 5);
        let (d, frames) = l.replay(Some(&pos("e", 2)), 10, 100);
        assert_eq!(d, ResumeDecision::Replay { from: 3, to: 5 });
        let texts: Vec<&str> = frames.iter().map(|f| f.as_str()).collect();
        assert_eq!(texts, ["m3", "m4", "m5"]);
        let (d, frames) = l.replay(Some(&pos("e", 1)), 10, 100);
        assert_eq!(d, ResumeDecision::NotRecovered);
        assert!(frames.is_empty());
    }

    #[test]
    fn tracks_retained_bytes() {
        let mut l = log(2, 1_000_000);
        l.append(0, "aaaa".into(), 0);
        l.append(0, "bb".into(), 0);
        assert_eq!(l.bytes(), 6);
        l.append(0, "c".into(), 0);
        assert_eq!(l.bytes(), 3, "the oldest fell out of the count bound");
        assert_eq!(l.drop_oldest(), 2);
        assert_eq!(l.drop_oldest(), 1);
        assert_eq!(l.drop_oldest(), 0);
        assert_eq!(l.bytes(), 0);
    }

    #[test]
    fn bounded_by_age() {
        let mut l = log(100, 1_000);
        l.append(0, "m1".into(), 0);
        l.append(500, "m2".into(), 500);
        l.append(1_200, "m3".into(), 1_200);
        // At t=1200 the cutoff is 200: m1 is gone.
        let (d, _) = l.replay(Some(&pos("e", 0)), 1_200, 100);
        assert_eq!(d, ResumeDecision::NotRecovered);
        let (d, frames) = l.replay(Some(&pos("e", 1)), 1_200, 100);
        assert_eq!(d, ResumeDecision::Replay { from: 2, to: 3 });
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn a_replay_comes_in_pages_and_stops_where_history_was_cut() {
        let mut l = RoomLog::new(
            "e".into(),
            HistoryLimits {
                max_messages: 10,
                max_age_ms: 1_000_000,
            },
        );
        for i in 1..=12u64 {
            l.append(i, Utf8Bytes::from(format!("m{i}")), i);
        }
        // 10 kept: 3..=12. From 2: pages of 4.
        let (d, first) = l.replay(Some(&pos("e", 2)), 12, 4);
        assert_eq!(d, ResumeDecision::Replay { from: 3, to: 12 });
        assert_eq!(first.len(), 4);
        let page = l.page("e", 6, 12, 4).unwrap();
        assert_eq!(
            page.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        assert_eq!(
            l.page("e", 10, 12, 4).unwrap().len(),
            2,
            "the last page ends at upto"
        );
        assert_eq!(
            l.page("e", 12, 12, 4),
            Some(Vec::new()),
            "nothing after the head"
        );
        assert_eq!(l.page("other", 6, 12, 4), None, "another epoch");
        l.drop_oldest();
        l.drop_oldest();
        assert_eq!(
            l.page("e", 3, 12, 4),
            None,
            "offset 4 was trimmed meanwhile"
        );
    }

    #[test]
    fn a_read_starts_where_history_does_and_skips_expired_messages() {
        let mut l = log(10, 1_000_000);
        for i in 1..=12u64 {
            l.append(i, Utf8Bytes::from(format!("m{i}")), i);
        }
        let offsets = |v: Vec<(u64, Utf8Bytes)>| v.into_iter().map(|(o, _)| o).collect::<Vec<_>>();
        assert_eq!(
            offsets(l.read(0, 0, 4)),
            vec![3, 4, 5, 6],
            "3 is the oldest kept"
        );
        assert_eq!(offsets(l.read(9, 0, 4)), vec![10, 11, 12]);
        assert_eq!(offsets(l.read(12, 0, 4)), Vec::<u64>::new());
        assert_eq!(offsets(l.read(u64::MAX, 0, 4)), Vec::<u64>::new());
        assert_eq!(
            offsets(l.read(0, 11, 4)),
            vec![11, 12],
            "older than the cutoff"
        );
        assert_eq!(offsets(l.read(5, 0, 1)), vec![6]);
    }
}
