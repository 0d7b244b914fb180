//! The soak's exactly-once checker: reads every client's log after the run and decides
//! whether anything acknowledged was lost, duplicated or reordered. Pure, so each rule
//! has a unit test that feeds it a hand-written log.
//!
//! Rules (docs/reliability.md):
//! - Room messages: a subscriber's *segment* in a room starts at a fresh join (or at a
//!   `recovered: false`) and goes on through every resume answered `recovered: true`.
//!   Within a segment the subscriber must receive every acknowledged message of the
//!   segment's epoch after the segment's start offset exactly once, in offset order (for
//!   the last segment: up to the end of the run; for an earlier one: up to the last offset
//!   it received, the rest having been lost with the history).
//! - `recovered: false` on a resume must come with a new epoch, and is a failure on its
//!   own when Redis keeps its data (`history_durable`).
//! - Direct messages: a `dm` acknowledged to its sender must reach a recipient that was
//!   connected from [`DM_SETTLED_MS`] before it was sent to [`DM_IN_FLIGHT_MS`] after its
//!   acknowledgement, exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::log::{ClientLog, Event, Millis};

/// A recipient connected at least this long before a `dm` was sent is in the user → node
/// registry (written when its session starts).
pub const DM_SETTLED_MS: Millis = 1_000;
/// A `dm` is delivered within this long of its acknowledgement when nothing breaks.
pub const DM_IN_FLIGHT_MS: Millis = 2_000;
/// How many problems the verdict spells out (all are counted).
const EXAMPLES: usize = 20;

#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Redis keeps every write it acknowledged across restarts (append-only, fsync always):
    /// no history may be lost at all.
    pub history_durable: bool,
}

/// The checker's figures and the problems it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Room messages the clients sent, by outcome.
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub unanswered: u64,
    /// Room messages received, and how many the rules required.
    pub deliveries: u64,
    pub required_deliveries: u64,
    /// Required deliveries that never came.
    pub lost: u64,
    /// Deliveries of an offset the subscriber already had in that segment.
    pub duplicated: u64,
    /// Deliveries of an offset lower than one already received in that segment.
    pub reordered: u64,
    /// Resumes answered `recovered: false`.
    pub history_lost: u64,
    /// Acknowledged messages nobody received in a room whose history was lost (epoch
    /// changed): they went with it. Only possible when Redis is not durable, and then
    /// the `recovered: false` answers tell the clients.
    pub lost_with_history: u64,
    pub dms_acked: u64,
    pub dms_received: u64,
    /// Acknowledged DMs whose recipient stayed connected (the ones the rule covers).
    pub dms_required: u64,
    pub dms_lost: u64,
    pub dms_duplicated: u64,
    pub sessions: u64,
    /// `unavailable` gap errors the clients answered by reconnecting.
    pub gap_errors: u64,
    /// The longest time any client went without a session, ms.
    pub longest_disconnect_ms: Millis,
    /// Every rule broken, counted, with the first [`EXAMPLES`] spelled out.
    pub problems: u64,
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems == 0
    }

    fn problem(&mut self, text: String) {
        self.problems += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(text);
        }
    }
}

/// An acknowledged room message.
struct AckedMessage {
    room: String,
    offset: u64,
}

/// A subscriber's unbroken run in a room (see the module doc).
struct Segment {
    epoch: String,
    start: u64,
    received: BTreeSet<u64>,
    last: u64,
}

pub fn check(logs: &[ClientLog], opts: CheckOptions) -> Verdict {
    let mut v = Verdict::default();
    let acked = acked_messages(logs, &mut v);
    let epochs = epochs_of_bodies(logs, &acked, &mut v);
    // room → epoch → acknowledged offsets.
    let mut required: HashMap<&str, HashMap<&str, BTreeSet<u64>>> = HashMap::new();
    let room_epochs = epochs_by_room(logs);
    for (body, m) in &acked {
        let epoch = match epochs.get(body) {
            Some(e) => *e,
            // Never delivered to anyone: it belongs to the room's epoch if there was only
            // one, and is then missing for every subscriber of that epoch.
            None => match room_epochs.get(m.room.as_str()) {
                Some(set) if set.len() == 1 => set.iter().next().copied().unwrap_or(""),
                // The room changed epoch (its history was lost, which the resumes that
                // saw it report): which epoch it went with is unknown, so no segment can
                // be held to it.
                _ => {
                    v.lost_with_history += 1;
                    continue;
                }
            },
        };
        required
            .entry(m.room.as_str())
            .or_default()
            .entry(epoch)
            .or_default()
            .insert(m.offset);
    }
    for log in logs {
        check_rooms(log, &required, opts, &mut v);
    }
    check_dms(logs, &mut v);
    sessions(logs, &mut v);
    v
}

/// Every acknowledged room message by body (bodies are unique per send), plus the send
/// outcome counts.
fn acked_messages<'a>(logs: &'a [ClientLog], v: &mut Verdict) -> HashMap<&'a str, AckedMessage> {
    let mut acked = HashMap::new();
    for log in logs {
        for e in &log.events {
            match e {
                Event::Acked { room, offset, body } => {
                    v.sent += 1;
                    v.acked += 1;
                    let m = AckedMessage {
                        room: room.clone(),
                        offset: *offset,
                    };
                    if acked.insert(body.as_str(), m).is_some() {
                        v.problem(format!("{body} acknowledged twice"));
                    }
                }
                Event::Refused { body, .. } if !is_dm(body) => {
                    v.sent += 1;
                    v.refused += 1;
                }
                Event::Unanswered { body } if !is_dm(body) => {
                    v.sent += 1;
                    v.unanswered += 1;
                }
                _ => {}
            }
        }
    }
    acked
}

/// DM bodies start with `dm:` (the soak client writes them so).
fn is_dm(body: &str) -> bool {
    body.starts_with("dm:")
}

/// The epoch each delivered body was delivered in; checks that every delivery of an
/// acknowledged body carries its acknowledged room and offset.
fn epochs_of_bodies<'a>(
    logs: &'a [ClientLog],
    acked: &HashMap<&str, AckedMessage>,
    v: &mut Verdict,
) -> HashMap<&'a str, &'a str> {
    let mut epochs: HashMap<&str, &str> = HashMap::new();
    for log in logs {
        for e in &log.events {
            let Event::Message {
                room,
                epoch,
                offset,
                body,
            } = e
            else {
                continue;
            };
            if let Some(m) = acked.get(body.as_str()) {
                if m.room != *room || m.offset != *offset {
                    v.problem(format!(
                        "{} got {body} as {room}/{offset}, but it was acknowledged as {}/{}",
                        log.user, m.room, m.offset
                    ));
                }
            }
            let first = *epochs.entry(body.as_str()).or_insert(epoch.as_str());
            if first != epoch {
                v.problem(format!(
                    "{body} delivered in two epochs ({first} and {epoch})"
                ));
            }
        }
    }
    epochs
}

/// Every epoch each room was seen in (joins and messages).
fn epochs_by_room(logs: &[ClientLog]) -> HashMap<&str, BTreeSet<&str>> {
    let mut out: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for log in logs {
        for e in &log.events {
            if let Event::Joined { room, epoch, .. } | Event::Message { room, epoch, .. } = e {
                out.entry(room.as_str()).or_default().insert(epoch.as_str());
            }
        }
    }
    out
}

fn check_rooms(
    log: &ClientLog,
    required: &HashMap<&str, HashMap<&str, BTreeSet<u64>>>,
    opts: CheckOptions,
    v: &mut Verdict,
) {
    let user = &log.user;
    // room → its segments so far (the last is the current one).
    let mut segments: BTreeMap<&str, Vec<Segment>> = BTreeMap::new();
    for e in &log.events {
        match e {
            Event::Joined {
                room,
                epoch,
                offset,
                recovered,
                since,
            } => {
                let list = segments.entry(room.as_str()).or_default();
                let resumed = since.is_some() && !list.is_empty();
                if resumed && *recovered {
                    if let Some(seg) = list.last() {
                        if seg.epoch != *epoch {
                            v.problem(format!(
                                "{user} resumed {room} with recovered: true into epoch {epoch}, \
                                 but was in epoch {}",
                                seg.epoch
                            ));
                        }
                    }
                    continue;
                }
                if resumed {
                    v.history_lost += 1;
                    let old = since.as_ref().map(|(e, _)| e.as_str()).unwrap_or("");
                    if old == epoch {
                        v.problem(format!(
                            "{user} got recovered: false in {room} without an epoch change ({epoch})"
                        ));
                    } else if opts.history_durable {
                        v.problem(format!(
                            "{user} got recovered: false in {room} (epoch {old} → {epoch}) \
                             although Redis kept its data"
                        ));
                    }
                }
                list.push(Segment {
                    epoch: epoch.clone(),
                    start: *offset,
                    received: BTreeSet::new(),
                    last: *offset,
                });
            }
            Event::Message {
                room,
                epoch,
                offset,
                body,
            } => {
                v.deliveries += 1;
                let Some(seg) = segments.get_mut(room.as_str()).and_then(|l| l.last_mut()) else {
                    v.problem(format!("{user} got {body} in {room} before joining it"));
                    continue;
                };
                if seg.epoch != *epoch {
                    v.problem(format!(
                        "{user} got {body} of epoch {epoch} in {room} while in epoch {}",
                        seg.epoch
                    ));
                    continue;
                }
                if !seg.received.insert(*offset) || *offset <= seg.start {
                    v.duplicated += 1;
                    v.problem(format!("{user} got {room}/{offset} ({body}) twice"));
                } else if *offset < seg.last {
                    v.reordered += 1;
                    v.problem(format!(
                        "{user} got {room}/{offset} ({body}) after {room}/{}",
                        seg.last
                    ));
                }
                seg.last = seg.last.max(*offset);
            }
            _ => {}
        }
    }
    for (room, list) in &segments {
        let count = list.len();
        for (i, seg) in list.iter().enumerate() {
            let Some(offsets) = required.get(room).and_then(|by| by.get(seg.epoch.as_str())) else {
                continue;
            };
            let end = if i + 1 == count { u64::MAX } else { seg.last };
            for offset in offsets.range(seg.start.saturating_add(1)..=end) {
                v.required_deliveries += 1;
                if !seg.received.contains(offset) {
                    v.lost += 1;
                    v.problem(format!(
                        "{user} never got acknowledged {room}/{offset} (epoch {})",
                        seg.epoch
                    ));
                }
            }
        }
    }
}

/// A user's sessions as [start, end] intervals (end = `Millis::MAX` if still open).
fn sessions_of(log: &ClientLog) -> Vec<(Millis, Millis)> {
    let mut out = Vec::new();
    let mut open = None;
    for e in &log.events {
        match e {
            Event::Connected { at, .. } => open = Some(*at),
            Event::Disconnected { at } => {
                if let Some(start) = open.take() {
                    out.push((start, *at));
                }
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        out.push((start, Millis::MAX));
    }
    out
}

fn check_dms(logs: &[ClientLog], v: &mut Verdict) {
    let by_user: HashMap<&str, &ClientLog> = logs.iter().map(|l| (l.user.as_str(), l)).collect();
    let mut received: HashMap<(&str, &str), u64> = HashMap::new(); // (recipient, body) → times
    for log in logs {
        for e in &log.events {
            if let Event::DmReceived { body, .. } = e {
                v.dms_received += 1;
                let n = received
                    .entry((log.user.as_str(), body.as_str()))
                    .or_default();
                *n += 1;
                if *n == 2 {
                    v.dms_duplicated += 1;
                    v.problem(format!("{} got DM {body} twice", log.user));
                }
            }
        }
    }
    for log in logs {
        for e in &log.events {
            let Event::DmAcked {
                to,
                body,
                sent_at,
                acked_at,
            } = e
            else {
                continue;
            };
            v.dms_acked += 1;
            let Some(recipient) = by_user.get(to.as_str()) else {
                continue;
            };
            let stayed = sessions_of(recipient).iter().any(|(start, end)| {
                start.saturating_add(DM_SETTLED_MS) <= *sent_at
                    && *end >= acked_at.saturating_add(DM_IN_FLIGHT_MS)
            });
            if !stayed {
                continue;
            }
            v.dms_required += 1;
            if !received.contains_key(&(to.as_str(), body.as_str())) {
                v.dms_lost += 1;
                v.problem(format!(
                    "{to} stayed connected but never got DM {body} from {} (acknowledged at {acked_at} ms)",
                    log.user
                ));
            }
        }
    }
}

fn sessions(logs: &[ClientLog], v: &mut Verdict) {
    for log in logs {
        let mut down_since: Option<Millis> = None;
        for e in &log.events {
            match e {
                Event::Connected { at, .. } => {
                    v.sessions += 1;
                    if let Some(d) = down_since.take() {
                        v.longest_disconnect_ms = v.longest_disconnect_ms.max(at.saturating_sub(d));
                    }
                }
                Event::Disconnected { at } => down_since = Some(*at),
                Event::GapUnavailable { .. } => v.gap_errors += 1,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(room: &str, epoch: &str, offset: u64, recovered: bool, since: Option<u64>) -> Event {
        Event::Joined {
            room: room.into(),
            epoch: epoch.into(),
            offset,
            recovered,
            since: since.map(|o| (epoch.to_owned(), o)),
        }
    }

    fn msg(room: &str, epoch: &str, offset: u64, body: &str) -> Event {
        Event::Message {
            room: room.into(),
            epoch: epoch.into(),
            offset,
            body: body.into(),
        }
    }

    fn ack(room: &str, offset: u64, body: &str) -> Event {
        Event::Acked {
            room: room.into(),
            offset,
            body: body.into(),
        }
    }

    fn log(user: &str, events: Vec<Event>) -> ClientLog {
        ClientLog {
            user: user.into(),
            events,
        }
    }

    fn durable() -> CheckOptions {
        CheckOptions {
            history_durable: true,
        }
    }

    /// A publisher that sent b1..b3 to `r` at offsets 1..3.
    fn publisher() -> ClientLog {
        log(
            "pub",
            vec![ack("r", 1, "b1"), ack("r", 2, "b2"), ack("r", 3, "b3")],
        )
    }

    #[test]
    fn every_message_once_in_order_passes() {
        let sub = log(
            "sub",
            vec![
                joined("r", "e", 0, false, None),
                msg("r", "e", 1, "b1"),
                msg("r", "e", 2, "b2"),
                msg("r", "e", 3, "b3"),
            ],
        );
        let v = check(&[publisher(), sub], durable());
        assert!(v.passed(), "{:?}", v.examples);
        assert_eq!((v.acked, v.deliveries, v.required_deliveries), (3, 3, 3));
    }

    #[test]
    fn a_missing_message_is_lost() {
        let sub = log(
            "sub",
            vec![
                joined("r", "e", 0, false, None),
                msg("r", "e", 1, "b1"),
                msg("r", "e", 3, "b3"),
            ],
        );
        let v = check(&[publisher(), sub], durable());
        assert_eq!(v.lost, 1);
        assert!(!v.passed());
        assert!(v.examples[0].contains("r/2"), "{:?}", v.examples);
    }

    #[test]
    fn the_tail_of_the_last_segment_is_required() {
        let sub = log(
            "sub",
            vec![joined("r", "e", 0, false, None), msg("r", "e", 1, "b1")],
        );
        assert_eq!(check(&[publisher(), sub], durable()).lost, 2);
    }

    #[test]
    fn messages_before_the_join_are_not_required() {
        let sub = log(
            "sub",
            vec![joined("r", "e", 2, false, None), msg("r", "e", 3, "b3")],
        );
        let v = check(&[publisher(), sub], durable());
        assert!(v.passed(), "{:?}", v.examples);
        assert_eq!(v.required_deliveries, 1);
    }

    #[test]
    fn a_resume_with_recovered_true_must_fill_the_gap() {
        let resumed = |replayed: bool| {
            let mut events = vec![
                joined("r", "e", 0, false, None),
                msg("r", "e", 1, "b1"),
                Event::Disconnected { at: 10 },
                Event::Connected {
                    at: 20,
                    node: "s2".into(),
                },
                joined("r", "e", 3, true, Some(1)),
            ];
            if replayed {
                events.push(msg("r", "e", 2, "b2"));
            }
            events.push(msg("r", "e", 3, "b3"));
            log("sub", events)
        };
        let v = check(&[publisher(), resumed(true)], durable());
        assert!(v.passed(), "{:?}", v.examples);
        assert_eq!(v.longest_disconnect_ms, 10);
        assert_eq!(check(&[publisher(), resumed(false)], durable()).lost, 1);
    }

    #[test]
    fn duplicates_and_reorders_are_counted() {
        let sub = log(
            "sub",
            vec![
                joined("r", "e", 0, false, None),
                msg("r", "e", 1, "b1"),
                msg("r", "e", 1, "b1"),
                msg("r", "e", 3, "b3"),
                msg("r", "e", 2, "b2"),
            ],
        );
        let v = check(&[publisher(), sub], durable());
        assert_eq!((v.duplicated, v.reordered, v.lost), (1, 1, 0));
        assert_eq!(v.problems, 2);
    }

    #[test]
    fn a_message_at_or_before_the_join_offset_is_a_duplicate() {
        let sub = log(
            "sub",
            vec![
                joined("r", "e", 2, false, None),
                msg("r", "e", 2, "b2"),
                msg("r", "e", 3, "b3"),
            ],
        );
        assert_eq!(check(&[publisher(), sub], durable()).duplicated, 1);
    }

    #[test]
    fn history_loss_needs_a_new_epoch_and_fails_when_redis_is_durable() {
        let sub = |new_epoch: &str| {
            log(
                "sub",
                vec![
                    joined("r", "e", 0, false, None),
                    msg("r", "e", 1, "b1"),
                    Event::Joined {
                        room: "r".into(),
                        epoch: new_epoch.into(),
                        offset: 0,
                        recovered: false,
                        since: Some(("e".into(), 1)),
                    },
                ],
            )
        };
        // b2 and b3 went with the old epoch's history: not required after the change.
        let lossy = CheckOptions::default();
        let v = check(&[publisher(), sub("f")], lossy);
        assert!(v.passed(), "{:?}", v.examples);
        assert_eq!((v.history_lost, v.lost_with_history), (1, 2));
        assert!(!check(&[publisher(), sub("f")], durable()).passed());
        assert!(!check(&[publisher(), sub("e")], lossy).passed());
    }

    #[test]
    fn a_delivery_must_match_its_acknowledgement() {
        let sub = log(
            "sub",
            vec![
                joined("r", "e", 0, false, None),
                msg("r", "e", 1, "b1"),
                msg("r", "e", 2, "b3"),
                msg("r", "e", 3, "b2"),
            ],
        );
        assert!(!check(&[publisher(), sub], durable()).passed());
    }

    #[test]
    fn unanswered_and_refused_sends_are_not_required() {
        let publisher = log(
            "pub",
            vec![
                ack("r", 1, "b1"),
                Event::Unanswered { body: "b2".into() },
                Event::Refused {
                    body: "b3".into(),
                    code: "unavailable".into(),
                },
            ],
        );
        let sub = log(
            "sub",
            vec![joined("r", "e", 0, false, None), msg("r", "e", 1, "b1")],
        );
        let v = check(&[publisher, sub], durable());
        assert!(v.passed(), "{:?}", v.examples);
        assert_eq!((v.sent, v.acked, v.unanswered, v.refused), (3, 1, 1, 1));
    }

    fn dm_acked(to: &str, body: &str, sent_at: Millis) -> Event {
        Event::DmAcked {
            to: to.into(),
            body: body.into(),
            sent_at,
            acked_at: sent_at + 5,
        }
    }

    fn dm_received(body: &str) -> Event {
        Event::DmReceived {
            from: "a".into(),
            body: body.into(),
        }
    }

    fn connected(at: Millis) -> Event {
        Event::Connected {
            at,
            node: "s1".into(),
        }
    }

    #[test]
    fn a_dm_to_a_recipient_that_stayed_connected_must_arrive_once() {
        let sender = log(
            "a",
            vec![dm_acked("b", "dm:1", 5_000), dm_acked("b", "dm:2", 6_000)],
        );
        let got_both = log(
            "b",
            vec![connected(0), dm_received("dm:1"), dm_received("dm:2")],
        );
        let v = check(&[sender.clone(), got_both], durable());
        assert!(v.passed(), "{:?}", v.examples);
        assert_eq!((v.dms_acked, v.dms_required, v.dms_received), (2, 2, 2));

        let got_one_twice = log(
            "b",
            vec![connected(0), dm_received("dm:1"), dm_received("dm:1")],
        );
        let v = check(&[sender, got_one_twice], durable());
        assert_eq!((v.dms_lost, v.dms_duplicated), (1, 1));
    }

    #[test]
    fn a_dm_to_a_recipient_that_reconnected_is_not_required() {
        let sender = log("a", vec![dm_acked("b", "dm:1", 5_000)]);
        let reconnecting = log(
            "b",
            vec![
                connected(0),
                Event::Disconnected { at: 5_500 },
                connected(5_600),
            ],
        );
        let just_connected = log("b", vec![connected(4_500)]);
        for b in [reconnecting, just_connected] {
            let v = check(&[sender.clone(), b], durable());
            assert!(v.passed(), "{:?}", v.examples);
            assert_eq!(v.dms_required, 0);
        }
    }
}
