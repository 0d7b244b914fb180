//! Wire protocol v1: JSON text frames, their validation, error codes and close codes.
//!
//! This module is pure (no I/O) so every rule here is unit-testable. docs/protocol.md is
//! the authority for clients; keep the two in step.

use serde::{Deserialize, Serialize};

/// Longest room name, user id or client `ref`, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A position in a room's history: the room's epoch and a message offset within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Join {
        room: String,
        #[serde(default)]
        since: Option<Position>,
        /// A room token: a short-lived JWT from the application naming this room and
        /// this user, for rooms that need a grant.
        #[serde(default)]
        token: Option<String>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        body: String,
        #[serde(default, rename = "ref")]
        client_ref: Option<String>,
    },
    Dm {
        to: String,
        body: String,
        #[serde(default, rename = "ref")]
        client_ref: Option<String>,
    },
    Ping {},
    /// A fresh token for this session's user, before the current one expires.
    Refresh {
        token: String,
    },
    /// The connection token, as the first frame of a connection opened without
    /// credentials (keeps the token out of URLs and so out of proxy access logs).
    Auth {
        token: String,
    },
    /// The next page of a room's member list, after the name `after` (from the start
    /// when absent).
    Members {
        room: String,
        #[serde(default)]
        after: Option<String>,
    },
}

/// The frame types a client may send, to tell "unknown type" from "bad fields".
const CLIENT_FRAME_TYPES: [&str; 8] = [
    "join", "leave", "send", "dm", "ping", "refresh", "auth", "members",
];

/// Most member names one frame carries (`joined`'s first page, each `members` page): a
/// room of any size costs a join the same.
pub const MEMBERS_PAGE: usize = 100;

/// Frames the server sends. Borrowed fields keep serialization allocation-light.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        user: &'a str,
        session: &'a str,
        node: &'a str,
        /// The token's `exp` (Unix seconds): the session is closed (4003) after it unless
        /// the client sends a `refresh`. Absent for anonymous users.
        #[serde(skip_serializing_if = "Option::is_none")]
        token_exp: Option<u64>,
    },
    /// The `refresh` token was accepted; the session now ends at `exp`.
    Refreshed {
        exp: u64,
    },
    Joined {
        room: &'a str,
        epoch: &'a str,
        offset: u64,
        recovered: bool,
        /// The first page of the member list (at most [`MEMBERS_PAGE`], by name).
        members: &'a [String],
        /// Members in the room, all of them.
        member_count: u64,
    },
    Left {
        room: &'a str,
    },
    /// A page of a room's member list, answering `members`.
    Members {
        room: &'a str,
        members: &'a [String],
        member_count: u64,
        /// The `after` that asks for the next page; absent on the last.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a str>,
    },
    Message {
        room: &'a str,
        epoch: &'a str,
        offset: u64,
        from: &'a str,
        body: &'a str,
        ts: u64,
    },
    Dm {
        from: &'a str,
        to: &'a str,
        body: &'a str,
        ts: u64,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        client_ref: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Who arrived and left, and how many are in the room now. In a room above the
    /// server's presence limit, `joined` and `left` are empty and `member_count` comes at
    /// most once a second.
    Presence {
        room: &'a str,
        joined: &'a [String],
        left: &'a [String],
        member_count: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        client_ref: Option<&'a str>,
    },
    Reconnect {
        reason: &'a str,
        after_ms: u64,
    },
    Pong,
}

impl ServerFrame<'_> {
    /// Serializes the frame to its JSON text. Serializing these types cannot fail
    /// (string keys, no maps with non-string keys), so a failure is a programming error
    /// reported as an `internal` error frame rather than a panic.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal","message":"serialize: {e}"}}"#)
        })
    }
}

/// A server frame as a client reads it: [`ServerFrame`] with owned fields, so clients
/// written in Rust (the e2e suites, the load generator, the soak) parse what the server
/// sends with the server's own types. A test below keeps the two in step. Unknown frame
/// types fail to parse: a client built from this crate knows every frame.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReceivedFrame {
    Welcome {
        user: String,
        session: String,
        node: String,
        #[serde(default)]
        token_exp: Option<u64>,
    },
    Refreshed {
        exp: u64,
    },
    Joined {
        room: String,
        epoch: String,
        offset: u64,
        recovered: bool,
        members: Vec<String>,
        member_count: u64,
    },
    Left {
        room: String,
    },
    Members {
        room: String,
        members: Vec<String>,
        member_count: u64,
        #[serde(default)]
        next: Option<String>,
    },
    Message {
        room: String,
        epoch: String,
        offset: u64,
        from: String,
        body: String,
        ts: u64,
    },
    Dm {
        from: String,
        to: String,
        body: String,
        ts: u64,
    },
    Ack {
        #[serde(rename = "ref", default)]
        client_ref: Option<String>,
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        offset: Option<u64>,
    },
    Presence {
        room: String,
        joined: Vec<String>,
        left: Vec<String>,
        member_count: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref", default)]
        client_ref: Option<String>,
    },
    Reconnect {
        reason: String,
        after_ms: u64,
    },
    Pong,
}

impl ReceivedFrame {
    /// Parses one text frame from the server.
    pub fn parse(text: &str) -> Result<ReceivedFrame, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Error codes carried by `error` frames. The connection stays open after each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not valid JSON.
    BadJson,
    /// The frame's `type` is not one this server knows.
    UnknownType,
    /// The frame has a known type but missing, extra or wrongly typed fields.
    InvalidFrame,
    /// Binary frames are not part of the protocol.
    Unsupported,
    InvalidRoom,
    InvalidUser,
    InvalidRef,
    BodyTooLong,
    RateLimited,
    NotJoined,
    AlreadyJoined,
    TooManyRooms,
    /// A direct message to a user with no connected session.
    UserOffline,
    /// The backplane (history/fanout) is not reachable; the message was NOT accepted.
    Unavailable,
    /// A `refresh` token was invalid, expired, or for another user; the session keeps
    /// its current token (and ends when that expires).
    TokenRejected,
    /// The room rules, the application's grants or the DM policy do not allow this.
    Forbidden,
    /// A `refresh` token no longer grants a room this session was in: the session has
    /// left it (a `left` frame follows).
    GrantRevoked,
    /// The application took the user out of the room (server API): a `left` frame follows.
    Removed,
    /// An `auth` frame on a connection that already has an identity.
    AlreadyAuthenticated,
    /// A new room was refused: the room cap is reached and every room has members.
    RoomLimit,
    /// The user already has the most sessions allowed; the server closes with 4429.
    TooManySessions,
    Internal,
}

impl ErrorCode {
    /// The code as the wire spells it (`rate_limited`, …): metric labels and clients.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// WebSocket close codes. 4000–4099 mean "reconnect with backoff", 4400–4499 mean
/// "do not reconnect"; 1012 means "this node is restarting, reconnect now (after the
/// `reconnect` frame's `after_ms`)".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal,
    Policy,
    TooBig,
    Internal,
    ServiceRestart,
    /// The client read too slowly and its send queue overflowed.
    SlowConsumer,
    /// No frame (not even a pong) arrived within the idle timeout.
    IdleTimeout,
    /// The session's token expired without a `refresh`: get a new token, then reconnect.
    TokenExpired,
    /// A WebSocket protocol violation (e.g. a continuation frame without a start, reserved
    /// bits set, a fragmented control frame).
    ProtocolError,
    /// A text frame that is not valid UTF-8.
    InvalidUtf8,
    /// The user already has the most sessions allowed: do not reconnect until one ends.
    TooManySessions,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::SlowConsumer => 4000,
            CloseCode::IdleTimeout => 4001,
            CloseCode::TokenExpired => 4003,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidUtf8 => 1007,
            CloseCode::TooManySessions => 4429,
        }
    }

    /// Whether a client should reconnect after this close.
    pub fn should_reconnect(code: u16) -> bool {
        matches!(code, 1001 | 1006 | 1011 | 1012 | 1013 | 4000..=4099)
    }
}

/// Why a client frame was refused, with the error frame it should produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub client_ref: Option<String>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            client_ref: None,
        }
    }

    pub fn with_ref(mut self, client_ref: Option<&str>) -> Self {
        self.client_ref = client_ref.map(str::to_owned);
        self
    }

    pub fn to_json(&self) -> String {
        ServerFrame::Error {
            code: self.code,
            message: &self.message,
            client_ref: self.client_ref.as_deref(),
        }
        .to_json()
    }
}

/// Limits that frame validation needs.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub max_body_bytes: usize,
}

/// Parses and validates one client text frame.
pub fn parse_client_frame(text: &str, limits: FrameLimits) -> Result<ClientFrame, FrameError> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
        FrameError::new(
            ErrorCode::BadJson,
            format!(
                "frame is not a JSON object: {}",
                truncate(&e.to_string(), MAX_DETAIL_LEN)
            ),
        )
    })?;
    let kind = match envelope.kind {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => {
            return Err(FrameError::new(
                ErrorCode::InvalidFrame,
                "field `type` must be a string",
            ))
        }
        None => {
            return Err(FrameError::new(
                ErrorCode::InvalidFrame,
                "frame has no `type` field",
            ))
        }
    };
    if !CLIENT_FRAME_TYPES.contains(&kind.as_str()) {
        return Err(FrameError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown frame type `{}`; expected one of: {}",
                truncate(&kind, MAX_NAME_LEN),
                CLIENT_FRAME_TYPES.join(", ")
            ),
        ));
    }
    let frame: ClientFrame = serde_json::from_str(text).map_err(|e| {
        FrameError::new(
            ErrorCode::InvalidFrame,
            format!(
                "invalid `{kind}`: {}",
                truncate(&e.to_string(), MAX_DETAIL_LEN)
            ),
        )
    })?;
    validate(&frame, limits)?;
    Ok(frame)
}

fn validate(frame: &ClientFrame, limits: FrameLimits) -> Result<(), FrameError> {
    match frame {
        ClientFrame::Join { room, since, token } => {
            validate_room(room)?;
            if token.as_ref().is_some_and(|t| t.is_empty()) {
                return Err(FrameError::new(
                    ErrorCode::InvalidFrame,
                    "`token` must not be empty",
                ));
            }
            if let Some(since) = since {
                if since.epoch.is_empty() || since.epoch.len() > MAX_NAME_LEN {
                    return Err(FrameError::new(
                        ErrorCode::InvalidFrame,
                        format!("`since.epoch` must be 1 to {MAX_NAME_LEN} bytes"),
                    ));
                }
            }
            Ok(())
        }
        ClientFrame::Leave { room } => validate_room(room),
        ClientFrame::Send {
            room,
            body,
            client_ref,
        } => {
            validate_ref(client_ref.as_deref())?;
            let r = client_ref.as_deref();
            validate_room(room).map_err(|e| e.with_ref(r))?;
            validate_body(body, limits).map_err(|e| e.with_ref(r))
        }
        ClientFrame::Dm {
            to,
            body,
            client_ref,
        } => {
            validate_ref(client_ref.as_deref())?;
            let r = client_ref.as_deref();
            validate_recipient(to).map_err(|e| e.with_ref(r))?;
            validate_body(body, limits).map_err(|e| e.with_ref(r))
        }
        ClientFrame::Ping {} => Ok(()),
        ClientFrame::Refresh { token } | ClientFrame::Auth { token } => {
            if token.is_empty() {
                return Err(FrameError::new(
                    ErrorCode::InvalidFrame,
                    "`token` must not be empty",
                ));
            }
            Ok(())
        }
        ClientFrame::Members { room, after } => {
            validate_room(room)?;
            match after {
                // A member's name: a user id, or an anonymous one (`~` and a user id).
                Some(after) => validate_recipient(after),
                None => Ok(()),
            }
        }
    }
}

/// Room names: 1–64 bytes of ASCII letters, digits, `_`, `-`, `.`, `:`, `@` (so a
/// per-user room can hold an e-mail-like user id).
pub fn validate_room(room: &str) -> Result<(), FrameError> {
    if is_valid_name(room, |c| c == b'@') {
        Ok(())
    } else {
        Err(FrameError::new(
            ErrorCode::InvalidRoom,
            format!(
                "room `{}` is invalid: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - . : @",
                truncate(room, MAX_NAME_LEN)
            ),
        ))
    }
}

/// User ids: 1–64 bytes of ASCII letters, digits, `_`, `-`, `.`, `:`, `@`.
pub fn validate_user(user: &str) -> Result<(), FrameError> {
    if is_valid_name(user, |c| c == b'@') {
        Ok(())
    } else {
        Err(FrameError::new(
            ErrorCode::InvalidUser,
            format!(
                "user `{}` is invalid: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - . : @",
                truncate(user, MAX_NAME_LEN)
            ),
        ))
    }
}

/// The first byte of every anonymous user's id: no token `sub` can hold it
/// ([`validate_user`] refuses it), so a client without a token can never take the name
/// of a user who has one.
pub const ANONYMOUS_PREFIX: char = '~';

/// A DM recipient: a user id, or an anonymous user's `~` id.
pub fn validate_recipient(to: &str) -> Result<(), FrameError> {
    match to.strip_prefix(ANONYMOUS_PREFIX) {
        // The whole id, prefix included, stays within the name limit.
        Some(name) if to.len() <= MAX_NAME_LEN => validate_user(name),
        _ => validate_user(to),
    }
}

fn validate_ref(client_ref: Option<&str>) -> Result<(), FrameError> {
    match client_ref {
        Some(r) if r.len() > MAX_NAME_LEN => Err(FrameError::new(
            ErrorCode::InvalidRef,
            format!("`ref` must be at most {MAX_NAME_LEN} bytes"),
        )),
        _ => Ok(()),
    }
}

fn validate_body(body: &str, limits: FrameLimits) -> Result<(), FrameError> {
    if body.len() > limits.max_body_bytes {
        return Err(FrameError::new(
            ErrorCode::BodyTooLong,
            format!(
                "body is {} bytes; the limit is {} bytes",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    Ok(())
}

fn is_valid_name(name: &str, extra: impl Fn(u8) -> bool) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':') || extra(c)
        })
}

/// Longest parser detail quoted in an error message: serde's messages quote the
/// offending value (escaped, up to six bytes per input byte), so an unbounded one would
/// answer a 16 KiB frame with a much larger error (found by the `client_frame` fuzz
/// target).
const MAX_DETAIL_LEN: usize = 200;

/// Cuts a string for inclusion in an error message, on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits { max_body_bytes: 16 };

    fn code_of(text: &str) -> ErrorCode {
        parse_client_frame(text, LIMITS).unwrap_err().code
    }

    #[test]
    fn since_epochs_must_be_1_to_64_bytes() {
        let join = |epoch: &str| {
            parse_client_frame(
                &format!(
                    r#"{{"type":"join","room":"a","since":{{"epoch":"{epoch}","offset":1}}}}"#
                ),
                LIMITS,
            )
        };
        assert!(join(&"e".repeat(MAX_NAME_LEN)).is_ok());
        assert!(join("e").is_ok());
        for bad in [String::new(), "e".repeat(MAX_NAME_LEN + 1)] {
            let err = join(&bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidFrame, "{bad:?}");
            assert!(err.message.contains("since.epoch"), "{err}");
        }
    }

    #[test]
    fn dm_recipients_may_be_anonymous_ids_but_users_may_not() {
        assert!(
            validate_user("~bob").is_err(),
            "no token sub may start with ~"
        );
        assert!(validate_recipient("~bob").is_ok());
        assert!(validate_recipient("bob").is_ok());
        assert!(validate_recipient("~").is_err());
        assert!(validate_recipient("~~bob").is_err());
        assert!(validate_recipient(&format!("~{}", "b".repeat(MAX_NAME_LEN - 1))).is_ok());
        assert!(validate_recipient(&format!("~{}", "b".repeat(MAX_NAME_LEN))).is_err());
    }

    #[test]
    fn parses_every_client_frame() {
        assert_eq!(
            parse_client_frame(r#"{"type":"join","room":"a"}"#, LIMITS),
            Ok(ClientFrame::Join {
                room: "a".into(),
                since: None,
                token: None,
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"join","room":"a@b","token":"t"}"#, LIMITS),
            Ok(ClientFrame::Join {
                room: "a@b".into(),
                since: None,
                token: Some("t".into()),
            })
        );
        assert_eq!(
            code_of(r#"{"type":"join","room":"a","token":""}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"auth","token":"t"}"#, LIMITS),
            Ok(ClientFrame::Auth { token: "t".into() })
        );
        assert_eq!(
            code_of(r#"{"type":"auth","token":""}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            parse_client_frame(
                r#"{"type":"join","room":"a","since":{"epoch":"e1","offset":4}}"#,
                LIMITS
            ),
            Ok(ClientFrame::Join {
                room: "a".into(),
                since: Some(Position {
                    epoch: "e1".into(),
                    offset: 4
                }),
                token: None,
            })
        );
        assert!(matches!(
            parse_client_frame(r#"{"type":"leave","room":"a"}"#, LIMITS),
            Ok(ClientFrame::Leave { .. })
        ));
        assert_eq!(
            parse_client_frame(
                r#"{"type":"send","room":"a","body":"hi","ref":"1"}"#,
                LIMITS
            ),
            Ok(ClientFrame::Send {
                room: "a".into(),
                body: "hi".into(),
                client_ref: Some("1".into())
            })
        );
        assert!(matches!(
            parse_client_frame(r#"{"type":"dm","to":"bob@x","body":"hi"}"#, LIMITS),
            Ok(ClientFrame::Dm { .. })
        ));
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#, LIMITS),
            Ok(ClientFrame::Ping {})
        );
        assert_eq!(code_of(r#"{"type":"ping","x":1}"#), ErrorCode::InvalidFrame);
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(code_of("not json"), ErrorCode::BadJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code_of(r#"{"room":"a"}"#), ErrorCode::InvalidFrame);
        assert_eq!(code_of(r#"{"type":7}"#), ErrorCode::InvalidFrame);
        assert_eq!(code_of(r#"{"type":"shout"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"join"}"#), ErrorCode::InvalidFrame);
        assert_eq!(
            code_of(r#"{"type":"join","room":"a","extra":1}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code_of(r#"{"type":"join","room":"a b"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code_of(r#"{"type":"join","room":""}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code_of(r#"{"type":"dm","to":"b b","body":"x"}"#),
            ErrorCode::InvalidUser
        );
        let long = "x".repeat(17);
        let err = parse_client_frame(
            &format!(r#"{{"type":"send","room":"a","body":"{long}","ref":"r9"}}"#),
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::BodyTooLong);
        assert_eq!(err.client_ref.as_deref(), Some("r9"));
        let long_ref = "r".repeat(65);
        assert_eq!(
            code_of(&format!(
                r#"{{"type":"send","room":"a","body":"x","ref":"{long_ref}"}}"#
            )),
            ErrorCode::InvalidRef
        );
    }

    #[test]
    fn names_allow_only_the_documented_characters() {
        assert!(validate_room("general.eu-1:ops_2").is_ok());
        assert!(validate_room("é").is_err());
        assert!(validate_room(&"a".repeat(64)).is_ok());
        assert!(validate_room(&"a".repeat(65)).is_err());
        assert!(validate_user("alice@example.com").is_ok());
        // A per-user room can hold an e-mail-like id; `~`, `*` and braces never.
        assert!(validate_room("inbox.alice@example.com").is_ok());
        for bad in ["a~b", "a*b", "{a}", "a b"] {
            assert!(validate_room(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_message_truncates_on_char_boundary() {
        let room = "é".repeat(40);
        let err = validate_room(&room).unwrap_err();
        assert!(err.message.len() < 200);
        assert_eq!(truncate("abc", 64), "abc");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("abcd", 3), "abc");
        // Byte 64 falls inside an "é": cut before it.
        let long = format!("a{}", "é".repeat(40));
        assert_eq!(truncate(&long, 64), format!("a{}", "é".repeat(31)));
    }

    #[test]
    fn parser_details_in_error_messages_are_bounded() {
        // serde quotes a value of the wrong type in full.
        let value = "x".repeat(2_000);
        let frame = format!(r#"{{"type":"join","room":"r","since":"{value}"}}"#);
        let err = parse_client_frame(&frame, LIMITS).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);
        assert!(err.message.contains("xxxx"), "{}", err.message);
        assert!(err.to_json().len() < 400, "{}", err.to_json().len());
    }

    #[test]
    fn limits_are_inclusive() {
        let exactly = |field: &str, len: usize| {
            let v = "x".repeat(len);
            let frame = match field {
                "body" => format!(r#"{{"type":"send","room":"r","body":"{v}"}}"#),
                _ => format!(r#"{{"type":"send","room":"r","body":"b","ref":"{v}"}}"#),
            };
            parse_client_frame(&frame, LIMITS)
        };
        assert!(exactly("body", LIMITS.max_body_bytes).is_ok());
        assert_eq!(
            exactly("body", LIMITS.max_body_bytes + 1).unwrap_err().code,
            ErrorCode::BodyTooLong
        );
        assert!(exactly("ref", 64).is_ok());
        assert_eq!(exactly("ref", 65).unwrap_err().code, ErrorCode::InvalidRef);
    }

    #[test]
    fn server_frames_serialize_as_documented() {
        let json = ServerFrame::Message {
            room: "r",
            epoch: "e",
            offset: 3,
            from: "u",
            body: "b",
            ts: 9,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"message","room":"r","epoch":"e","offset":3,"from":"u","body":"b","ts":9}"#
        );
        let ack = ServerFrame::Ack {
            client_ref: Some("1"),
            room: None,
            offset: None,
        }
        .to_json();
        assert_eq!(ack, r#"{"type":"ack","ref":"1"}"#);
        let err = FrameError::new(ErrorCode::RateLimited, "slow down").to_json();
        assert_eq!(
            err,
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn close_codes_split_reconnect_from_terminal() {
        assert!(CloseCode::should_reconnect(
            CloseCode::ServiceRestart.code()
        ));
        assert!(CloseCode::should_reconnect(CloseCode::SlowConsumer.code()));
        assert!(!CloseCode::should_reconnect(CloseCode::Policy.code()));
        assert!(!CloseCode::should_reconnect(4400));
        assert!(!CloseCode::should_reconnect(CloseCode::TooBig.code()));
    }

    #[test]
    fn every_server_frame_reads_back_as_the_same_received_frame() {
        let members = vec!["alice".to_owned(), "bob".to_owned()];
        let none: Vec<String> = Vec::new();
        let s = |v: &str| v.to_owned();
        let cases = [
            (
                ServerFrame::Welcome {
                    user: "alice",
                    session: "s1",
                    node: "n1",
                    token_exp: Some(9),
                },
                ReceivedFrame::Welcome {
                    user: s("alice"),
                    session: s("s1"),
                    node: s("n1"),
                    token_exp: Some(9),
                },
            ),
            (
                ServerFrame::Welcome {
                    user: "~a",
                    session: "s2",
                    node: "n1",
                    token_exp: None,
                },
                ReceivedFrame::Welcome {
                    user: s("~a"),
                    session: s("s2"),
                    node: s("n1"),
                    token_exp: None,
                },
            ),
            (
                ServerFrame::Refreshed { exp: 7 },
                ReceivedFrame::Refreshed { exp: 7 },
            ),
            (
                ServerFrame::Joined {
                    room: "r",
                    epoch: "e",
                    offset: 3,
                    recovered: true,
                    members: &members,
                    member_count: 7,
                },
                ReceivedFrame::Joined {
                    room: s("r"),
                    epoch: s("e"),
                    offset: 3,
                    recovered: true,
                    members: members.clone(),
                    member_count: 7,
                },
            ),
            (
                ServerFrame::Members {
                    room: "r",
                    members: &members,
                    member_count: 7,
                    next: Some("b"),
                },
                ReceivedFrame::Members {
                    room: s("r"),
                    members: members.clone(),
                    member_count: 7,
                    next: Some(s("b")),
                },
            ),
            (
                ServerFrame::Left { room: "r" },
                ReceivedFrame::Left { room: s("r") },
            ),
            (
                ServerFrame::Message {
                    room: "r",
                    epoch: "e",
                    offset: 4,
                    from: "bob",
                    body: "hi \"there\"",
                    ts: 5,
                },
                ReceivedFrame::Message {
                    room: s("r"),
                    epoch: s("e"),
                    offset: 4,
                    from: s("bob"),
                    body: s("hi \"there\""),
                    ts: 5,
                },
            ),
            (
                ServerFrame::Dm {
                    from: "a",
                    to: "b",
                    body: "x",
                    ts: 1,
                },
                ReceivedFrame::Dm {
                    from: s("a"),
                    to: s("b"),
                    body: s("x"),
                    ts: 1,
                },
            ),
            (
                ServerFrame::Ack {
                    client_ref: Some("c1"),
                    room: Some("r"),
                    offset: Some(8),
                },
                ReceivedFrame::Ack {
                    client_ref: Some(s("c1")),
                    room: Some(s("r")),
                    offset: Some(8),
                },
            ),
            (
                ServerFrame::Ack {
                    client_ref: None,
                    room: None,
                    offset: None,
                },
                ReceivedFrame::Ack {
                    client_ref: None,
                    room: None,
                    offset: None,
                },
            ),
            (
                ServerFrame::Presence {
                    room: "r",
                    joined: &members,
                    left: &none,
                    member_count: 2,
                },
                ReceivedFrame::Presence {
                    room: s("r"),
                    joined: members.clone(),
                    left: vec![],
                    member_count: 2,
                },
            ),
            (
                ServerFrame::Error {
                    code: ErrorCode::GrantRevoked,
                    message: "m",
                    client_ref: Some("c"),
                },
                ReceivedFrame::Error {
                    code: ErrorCode::GrantRevoked,
                    message: s("m"),
                    client_ref: Some(s("c")),
                },
            ),
            (
                ServerFrame::Reconnect {
                    reason: "drain",
                    after_ms: 250,
                },
                ReceivedFrame::Reconnect {
                    reason: s("drain"),
                    after_ms: 250,
                },
            ),
            (ServerFrame::Pong, ReceivedFrame::Pong),
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for (sent, expected) in cases {
            // No wildcard: a new server frame must be added to the cases above (and to
            // `ReceivedFrame`) before this compiles.
            kinds.insert(match &sent {
                ServerFrame::Welcome { .. } => "welcome",
                ServerFrame::Refreshed { .. } => "refreshed",
                ServerFrame::Joined { .. } => "joined",
                ServerFrame::Left { .. } => "left",
                ServerFrame::Members { .. } => "members",
                ServerFrame::Message { .. } => "message",
                ServerFrame::Dm { .. } => "dm",
                ServerFrame::Ack { .. } => "ack",
                ServerFrame::Presence { .. } => "presence",
                ServerFrame::Error { .. } => "error",
                ServerFrame::Reconnect { .. } => "reconnect",
                ServerFrame::Pong => "pong",
            });
            let json = sent.to_json();
            assert_eq!(
                ReceivedFrame::parse(&json).expect(&json),
                expected,
                "{json}"
            );
        }
        assert_eq!(kinds.len(), 12, "every kind of server frame is read back");
        assert!(ReceivedFrame::parse(r#"{"type":"surprise"}"#).is_err());
    }
}
