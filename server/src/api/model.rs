//! The server API's requests and answers, and the checks on every field. Pure: no I/O, so
//! each rule is tested on its own. The OpenAPI document (`openapi.json`) describes the
//! same shapes; `server/tests/api.rs` checks the two agree.

use serde::{Deserialize, Serialize};

use crate::protocol::{validate_recipient, validate_room, validate_user, MAX_NAME_LEN};
use crate::user_command::{
    UserCommand, APP_CLOSE_CODES, DEFAULT_DISCONNECT_CODE, MAX_CLOSE_REASON_BYTES,
};

/// The `from` of a message or DM the application sends as itself: no user id can hold
/// `$`, so no client can pass for the application.
pub const APPLICATION_SENDER: &str = "$app";

/// Most rooms one broadcast publishes to.
pub const MAX_BROADCAST_ROOMS: usize = 100;

/// Most messages one history read returns.
pub const MAX_HISTORY_PAGE: usize = 100;

/// Most rooms one room list returns (each is one read of the room over Redis).
pub const MAX_ROOMS_PAGE: usize = 100;

/// A request that cannot be carried out: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

fn field(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

fn check_room(name: &'static str, room: &str) -> Result<(), FieldError> {
    validate_room(room).map_err(|e| field(name, e.message))
}

fn check_user(name: &'static str, user: &str) -> Result<(), FieldError> {
    validate_recipient(user).map_err(|e| field(name, e.message))
}

fn check_body(body: &str, max_body_bytes: usize) -> Result<(), FieldError> {
    if body.len() > max_body_bytes {
        return Err(field(
            "body",
            format!(
                "is {} bytes; the limit is {max_body_bytes} bytes (CHAT_MAX_BODY_BYTES)",
                body.len()
            ),
        ));
    }
    Ok(())
}

/// `from`: the application when absent, else a user the application speaks for (not an
/// anonymous `~` user: the application never needs to pass for one).
fn sender(from: Option<&str>) -> Result<&str, FieldError> {
    match from {
        None => Ok(APPLICATION_SENDER),
        Some(user) => validate_user(user)
            .map(|_| user)
            .map_err(|e| field("from", e.message)),
    }
}

fn check_idempotency_key(key: Option<&str>) -> Result<(), FieldError> {
    match key {
        Some(k)
            if k.is_empty()
                || k.len() > MAX_NAME_LEN
                || !k
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')) =>
        {
            Err(field(
                "idempotency_key",
                format!("use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - ."),
            ))
        }
        _ => Ok(()),
    }
}

/// JSON Schema counts `4400.0` as an integer, so the API takes integral numbers written
/// either way (and refuses fractions and values out of the field's range).
fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = serde_json::Number::deserialize(d)?;
    whole_number(&n)
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number in range")))
}

/// `n` as a u64 when it is one, written with or without a fraction of zero. A float is
/// taken only below 2^64 (`u64::MAX as f64` is 2^64, which would saturate).
fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

fn optional_integer<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => whole_number(&n)
            .and_then(|v| T::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number in range"))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub room: String,
    pub body: String,
    pub from: Option<String>,
    pub idempotency_key: Option<String>,
}

impl PublishRequest {
    /// The sender to publish as, once every field is valid.
    pub fn check(&self, max_body_bytes: usize) -> Result<&str, FieldError> {
        check_room("room", &self.room)?;
        check_body(&self.body, max_body_bytes)?;
        check_idempotency_key(self.idempotency_key.as_deref())?;
        sender(self.from.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    pub rooms: Vec<String>,
    pub body: String,
    pub from: Option<String>,
    pub idempotency_key: Option<String>,
}

impl BroadcastRequest {
    pub fn check(&self, max_body_bytes: usize) -> Result<&str, FieldError> {
        if self.rooms.is_empty() || self.rooms.len() > MAX_BROADCAST_ROOMS {
            return Err(field(
                "rooms",
                format!("give 1 to {MAX_BROADCAST_ROOMS} rooms"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for room in &self.rooms {
            check_room("rooms", room)?;
            if !seen.insert(room.as_str()) {
                return Err(field("rooms", format!("room `{room}` is listed twice")));
            }
        }
        check_body(&self.body, max_body_bytes)?;
        check_idempotency_key(self.idempotency_key.as_deref())?;
        sender(self.from.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmRequest {
    pub to: String,
    pub body: String,
    pub from: Option<String>,
}

impl DmRequest {
    pub fn check(&self, max_body_bytes: usize) -> Result<&str, FieldError> {
        check_user("to", &self.to)?;
        check_body(&self.body, max_body_bytes)?;
        sender(self.from.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    pub user: String,
    #[serde(default, deserialize_with = "optional_integer")]
    pub code: Option<u16>,
    pub reason: Option<String>,
}

impl DisconnectRequest {
    pub fn command(&self) -> Result<UserCommand, FieldError> {
        check_user("user", &self.user)?;
        let code = self.code.unwrap_or(DEFAULT_DISCONNECT_CODE);
        if !APP_CLOSE_CODES.contains(&code) {
            return Err(field(
                "code",
                format!(
                    "{code} is not an application close code: use {} to {} (4000-4099: the client reconnects; 4400-4499: it does not)",
                    APP_CLOSE_CODES.start(),
                    APP_CLOSE_CODES.end()
                ),
            ));
        }
        let reason = self.reason.clone().unwrap_or_default();
        if reason.len() > MAX_CLOSE_REASON_BYTES {
            return Err(field(
                "reason",
                format!("must be at most {MAX_CLOSE_REASON_BYTES} bytes (a close frame's limit)"),
            ));
        }
        Ok(UserCommand::Disconnect { code, reason })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveFromRoomRequest {
    pub room: String,
    pub user: String,
}

impl RemoveFromRoomRequest {
    pub fn command(&self) -> Result<UserCommand, FieldError> {
        check_room("room", &self.room)?;
        check_user("user", &self.user)?;
        Ok(UserCommand::RemoveFromRoom {
            room: self.room.clone(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    pub room: String,
    /// The last name of the previous page.
    pub after: Option<String>,
}

impl PresenceRequest {
    pub fn check(&self) -> Result<(), FieldError> {
        check_room("room", &self.room)?;
        match &self.after {
            Some(after) => check_user("after", after),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    pub room: String,
    /// Messages with offsets above this one (0: from the oldest kept).
    #[serde(default, deserialize_with = "integer")]
    pub after: u64,
    #[serde(default, deserialize_with = "optional_integer")]
    pub limit: Option<usize>,
}

impl HistoryRequest {
    /// The page size, once every field is valid.
    pub fn check(&self) -> Result<usize, FieldError> {
        check_room("room", &self.room)?;
        page_limit(self.limit, MAX_HISTORY_PAGE)
    }
}

fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, FieldError> {
    match limit {
        None => Ok(max),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(field("limit", format!("{n} is not between 1 and {max}"))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsRequest {
    pub after: Option<String>,
    #[serde(default, deserialize_with = "optional_integer")]
    pub limit: Option<usize>,
}

impl RoomsRequest {
    pub fn check(&self) -> Result<usize, FieldError> {
        if let Some(after) = &self.after {
            check_room("after", after)?;
        }
        page_limit(self.limit, MAX_ROOMS_PAGE)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRequest {
    pub room: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub user: String,
}

impl RoomRequest {
    pub fn check(&self) -> Result<(), FieldError> {
        check_room("room", &self.room)
    }
}

impl UserRequest {
    pub fn check(&self) -> Result<(), FieldError> {
        check_user("user", &self.user)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    pub room: String,
    pub epoch: String,
    pub offset: u64,
    pub duplicate: bool,
}

/// One room of a broadcast: published, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BroadcastItem {
    Published(PublishResult),
    Failed { room: String, error: ErrorBody },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStats {
    pub room: String,
    pub epoch: String,
    pub head: u64,
    pub members: u64,
}

/// A message as history holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub offset: u64,
    pub from: String,
    pub body: String,
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(json: &str) -> Result<PublishRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_publish_names_the_field_it_refuses() {
        let ok = publish(r#"{"room":"lobby","body":"hi"}"#).unwrap();
        assert_eq!(ok.check(10), Ok(APPLICATION_SENDER));
        let as_user = publish(r#"{"room":"lobby","body":"hi","from":"ann"}"#).unwrap();
        assert_eq!(as_user.check(10), Ok("ann"));
        for (json, field_name) in [
            (r#"{"room":"no room","body":"hi"}"#, "room"),
            (r#"{"room":"lobby","body":"far too long"}"#, "body"),
            (r#"{"room":"lobby","body":"hi","from":"~anon"}"#, "from"),
            (r#"{"room":"lobby","body":"hi","from":"$app"}"#, "from"),
            (
                r#"{"room":"lobby","body":"hi","idempotency_key":""}"#,
                "idempotency_key",
            ),
            (
                r#"{"room":"lobby","body":"hi","idempotency_key":"a b"}"#,
                "idempotency_key",
            ),
        ] {
            let err = publish(json).unwrap().check(10).unwrap_err();
            assert_eq!(err.field, field_name, "{json}: {err}");
        }
        assert!(publish(r#"{"room":"lobby","body":"hi","extra":1}"#).is_err());
    }

    #[test]
    fn integers_may_be_written_as_integral_numbers_and_nothing_else() {
        let history = |json: &str| serde_json::from_str::<HistoryRequest>(json);
        assert_eq!(history(r#"{"room":"r","after":5.0}"#).unwrap().after, 5);
        assert_eq!(history(r#"{"room":"r"}"#).unwrap().after, 0);
        assert_eq!(history(r#"{"room":"r","limit":null}"#).unwrap().limit, None);
        for bad in [
            r#"{"room":"r","after":5.5}"#,
            r#"{"room":"r","after":-1}"#,
            r#"{"room":"r","after":"5"}"#,
            r#"{"room":"r","after":18446744073709551616}"#,
            r#"{"room":"r","after":null}"#,
        ] {
            assert!(history(bad).is_err(), "{bad}");
        }
        let code = |json: &str| serde_json::from_str::<DisconnectRequest>(json).map(|r| r.code);
        assert_eq!(code(r#"{"user":"a","code":4401.0}"#).unwrap(), Some(4401));
        assert!(code(r#"{"user":"a","code":70000}"#).is_err());
        assert_eq!(code(r#"{"user":"a","code":null}"#).unwrap(), None);
    }

    #[test]
    fn a_broadcast_takes_one_to_a_hundred_distinct_rooms() {
        let req = |rooms: Vec<String>| BroadcastRequest {
            rooms,
            body: "hi".into(),
            from: None,
            idempotency_key: None,
        };
        assert!(req(vec!["a".into(), "b".into()]).check(10).is_ok());
        assert_eq!(req(vec![]).check(10).unwrap_err().field, "rooms");
        assert_eq!(
            req(vec!["a".into(), "a".into()])
                .check(10)
                .unwrap_err()
                .field,
            "rooms"
        );
        let many = (0..=MAX_BROADCAST_ROOMS).map(|i| format!("r{i}")).collect();
        assert_eq!(req(many).check(10).unwrap_err().field, "rooms");
    }

    #[test]
    fn a_disconnect_takes_application_close_codes_and_a_short_reason() {
        let req = |code: Option<u16>, reason: Option<&str>| DisconnectRequest {
            user: "ann".into(),
            code,
            reason: reason.map(str::to_owned),
        };
        assert_eq!(
            req(None, None).command(),
            Ok(UserCommand::Disconnect {
                code: 4400,
                reason: String::new()
            })
        );
        assert!(req(Some(4000), Some("re-authenticate")).command().is_ok());
        assert!(req(Some(4999), None).command().is_ok());
        for code in [1000, 3999, 5000] {
            assert_eq!(req(Some(code), None).command().unwrap_err().field, "code");
        }
        let long = "x".repeat(MAX_CLOSE_REASON_BYTES + 1);
        assert_eq!(
            req(None, Some(&long)).command().unwrap_err().field,
            "reason"
        );
        let anonymous = DisconnectRequest {
            user: "~a1".into(),
            code: None,
            reason: None,
        };
        assert!(
            anonymous.command().is_ok(),
            "anonymous users can be disconnected"
        );
    }

    #[test]
    fn page_limits_are_bounded() {
        let history = |limit| HistoryRequest {
            room: "lobby".into(),
            after: 0,
            limit,
        };
        assert_eq!(history(None).check(), Ok(MAX_HISTORY_PAGE));
        assert_eq!(history(Some(5)).check(), Ok(5));
        assert_eq!(history(Some(0)).check().unwrap_err().field, "limit");
        assert_eq!(
            history(Some(MAX_HISTORY_PAGE + 1))
                .check()
                .unwrap_err()
                .field,
            "limit"
        );
        let rooms = RoomsRequest {
            after: Some("bad room".into()),
            limit: None,
        };
        assert_eq!(rooms.check().unwrap_err().field, "after");
    }
}
