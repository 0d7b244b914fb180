//! What each soak client records, in the order it happened: the checker's only input.

/// Milliseconds since the soak started.
pub type Millis = u64;

/// One thing a client saw or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A WebSocket session started (after `welcome`) on `node`.
    Connected { at: Millis, node: String },
    /// The session ended (closed by either side, or broken).
    Disconnected { at: Millis },
    /// A `joined` answer; `since` is the position the client asked to resume from (none
    /// on a first join; the current position for an unsolicited `joined`).
    Joined {
        room: String,
        epoch: String,
        offset: u64,
        recovered: bool,
        since: Option<(String, u64)>,
    },
    /// A room `message`.
    Message {
        room: String,
        epoch: String,
        offset: u64,
        body: String,
    },
    /// The client's `send` was acknowledged at `offset`.
    Acked {
        room: String,
        offset: u64,
        body: String,
    },
    /// A `dm` the server acknowledged (at least one session of `to` was reached).
    DmAcked {
        to: String,
        body: String,
        sent_at: Millis,
        acked_at: Millis,
    },
    /// A `dm` delivered to this client.
    DmReceived { from: String, body: String },
    /// A `send` or `dm` answered with an `error` (`code`): not sent.
    Refused { body: String, code: String },
    /// A `send` or `dm` whose connection ended before any answer: it may or may not have
    /// gone out, so no rule applies to it.
    Unanswered { body: String },
    /// An `unavailable` error without `ref`: the node could not fill a gap in live
    /// traffic. The client reconnects and resumes, which fills it.
    GapUnavailable { at: Millis },
}

/// Everything one client recorded.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    pub user: String,
    pub events: Vec<Event>,
}
