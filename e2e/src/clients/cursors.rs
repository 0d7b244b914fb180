//! Where a resuming client is in each of its rooms, and the one rule every resuming
//! client here follows: resume each room from the last message processed, keep that
//! position when the server says the join `recovered` what was asked, and start again
//! from the server's position otherwise (history gone, a new epoch, or a first join).
//! When the server says it could not fill a gap in live traffic ([`must_resync`]), the
//! client processes nothing more on that connection: it reconnects and resumes from its
//! position, so the replay fills the gap.

use std::collections::HashMap;

use chat_server::protocol::{ErrorCode, Position, ReceivedFrame};
use serde_json::Value;

use super::ws::join_frame;

/// Per room: the position of the last message processed, and what the joins of the
/// current session asked for.
#[derive(Debug, Default)]
pub struct Cursors {
    at: HashMap<String, Position>,
    asked: HashMap<String, Option<Position>>,
}

/// The server could not read history to fill a gap in live traffic (`unavailable`
/// without a `ref`): what follows on this connection is past the gap, so the client
/// must stop here, reconnect and resume from its position (docs/protocol.md).
pub fn must_resync(frame: &ReceivedFrame) -> bool {
    matches!(
        frame,
        ReceivedFrame::Error {
            code: ErrorCode::Unavailable,
            client_ref: None,
            ..
        }
    )
}

/// Where a `message` fell against its room's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The room had no position yet.
    First,
    /// Right after the position: the expected next message.
    Next,
    /// At or before the position in the same epoch: a duplicate, or out of order.
    Behind,
    /// Past the position with `missing` offsets skipped.
    Gap { missing: u64 },
    /// From another epoch than the position's (the room's history started over).
    NewEpoch,
}

/// What a `joined` frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The `since` this join asked for (for an unsolicited `joined`, the position the
    /// client was at).
    pub since: Option<Position>,
    /// The join resumed from `since` and everything after it follows.
    pub resumed: bool,
}

impl Cursors {
    /// A new session: no join asked yet (positions are kept).
    pub fn new_session(&mut self) {
        self.asked.clear();
    }

    /// The `join` frame for `room`, resuming from the last message processed; remembers
    /// what it asked.
    pub fn join(&mut self, room: &str) -> Value {
        let since = self.at.get(room).cloned();
        let frame = join_frame(room, since.as_ref().map(|p| (p.epoch.as_str(), p.offset)));
        self.asked.insert(room.to_owned(), since);
        frame
    }

    /// Takes in a `joined` frame: keeps the position when the join recovered what it asked
    /// for, else starts from the server's `epoch`/`offset`.
    pub fn joined(&mut self, room: &str, epoch: &str, offset: u64, recovered: bool) -> JoinOutcome {
        // An unsolicited `joined` (history lost while in the room) answers no join: it
        // is measured against the current position.
        let since = match self.asked.remove(room) {
            Some(since) => since,
            None => self.at.get(room).cloned(),
        };
        let resumed = recovered && since.is_some();
        if !resumed {
            self.at.insert(
                room.to_owned(),
                Position {
                    epoch: epoch.to_owned(),
                    offset,
                },
            );
        }
        JoinOutcome { since, resumed }
    }

    /// Takes in a `message`: the room's position moves to it, never back within an
    /// epoch (a duplicate or a late message leaves it). Says where the message fell.
    pub fn message(&mut self, room: &str, epoch: &str, offset: u64) -> Step {
        // One look-up, and in place when the room is known: a load generator takes in
        // every message.
        let Some(at) = self.at.get_mut(room) else {
            self.at.insert(
                room.to_owned(),
                Position {
                    epoch: epoch.to_owned(),
                    offset,
                },
            );
            return Step::First;
        };
        let step = if at.epoch != epoch {
            at.epoch = epoch.to_owned();
            Step::NewEpoch
        } else if offset <= at.offset {
            return Step::Behind;
        } else if offset == at.offset + 1 {
            Step::Next
        } else {
            Step::Gap {
                missing: offset - at.offset - 1,
            }
        };
        at.offset = offset;
        step
    }

    /// The position in `room`, if the client has one.
    pub fn at(&self, room: &str) -> Option<&Position> {
        self.at.get(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, offset: u64) -> Option<Position> {
        Some(Position {
            epoch: epoch.into(),
            offset,
        })
    }

    #[test]
    fn a_first_join_starts_at_the_servers_position() {
        let mut c = Cursors::default();
        assert_eq!(c.join("r")["since"], Value::Null);
        let out = c.joined("r", "e1", 7, true);
        assert_eq!((out.since, out.resumed), (None, false));
        assert_eq!(c.at("r").cloned(), pos("e1", 7));
    }

    #[test]
    fn a_recovered_resume_keeps_the_position_and_a_lost_one_starts_over() {
        let mut c = Cursors::default();
        c.join("r");
        c.joined("r", "e1", 0, true);
        c.message("r", "e1", 3);
        c.new_session();
        let frame = c.join("r");
        assert_eq!(frame["since"]["epoch"], "e1");
        assert_eq!(frame["since"]["offset"], 3);
        let out = c.joined("r", "e1", 9, true);
        assert_eq!((out.since, out.resumed), (pos("e1", 3), true));
        assert_eq!(c.at("r").cloned(), pos("e1", 3), "replay follows from 3");
        c.new_session();
        c.join("r");
        let out = c.joined("r", "e2", 5, false);
        assert!(!out.resumed);
        assert_eq!(c.at("r").cloned(), pos("e2", 5));
    }

    #[test]
    fn only_an_unavailable_without_ref_asks_for_a_resync() {
        let error = |code, client_ref: Option<&str>| ReceivedFrame::Error {
            code,
            message: "m".into(),
            client_ref: client_ref.map(str::to_owned),
        };
        assert!(must_resync(&error(ErrorCode::Unavailable, None)));
        assert!(!must_resync(&error(ErrorCode::Unavailable, Some("c1"))));
        assert!(!must_resync(&error(ErrorCode::RateLimited, None)));
        assert!(!must_resync(&ReceivedFrame::Pong));
    }

    #[test]
    fn a_message_says_where_it_fell_and_never_moves_the_position_back() {
        let mut c = Cursors::default();
        assert_eq!(c.message("r", "e1", 5), Step::First);
        assert_eq!(c.message("r", "e1", 6), Step::Next);
        assert_eq!(c.message("r", "e1", 9), Step::Gap { missing: 2 });
        assert_eq!(c.message("r", "e1", 7), Step::Behind);
        assert_eq!(c.message("r", "e1", 9), Step::Behind);
        assert_eq!(c.at("r").cloned(), pos("e1", 9));
        assert_eq!(c.message("r", "e2", 1), Step::NewEpoch);
        assert_eq!(c.at("r").cloned(), pos("e2", 1));
    }

    #[test]
    fn an_unsolicited_joined_is_measured_against_the_current_position() {
        let mut c = Cursors::default();
        c.join("r");
        c.joined("r", "e1", 0, true);
        c.message("r", "e1", 4);
        let out = c.joined("r", "e2", 0, false);
        assert_eq!((out.since, out.resumed), (pos("e1", 4), false));
        assert_eq!(c.at("r").cloned(), pos("e2", 0));
    }
}
