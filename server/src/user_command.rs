//! What the application (through the server API) asks of a user's sessions wherever they
//! are: end them, or take the user out of a room. The Redis backplane carries a command
//! to the user's nodes as JSON on their node channels; every node hands it to its hub.

use serde::{Deserialize, Serialize};

/// Lowest and highest close code the application may choose (the private-use range of
/// RFC 6455). Clients reconnect after 4000–4099 and do not after 4400–4499 (see
/// [`crate::protocol::CloseCode::should_reconnect`]).
pub const APP_CLOSE_CODES: std::ops::RangeInclusive<u16> = 4000..=4999;

/// The close code when the application gives none: terminal, the client does not
/// reconnect.
pub const DEFAULT_DISCONNECT_CODE: u16 = 4400;

/// Longest close reason: a close frame's payload is at most 125 bytes, 2 of them the code.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UserCommand {
    /// Close every session of the user with this code and reason.
    Disconnect { code: u16, reason: String },
    /// Take the user's sessions out of `room`: each gets a `removed` error and `left`.
    RemoveFromRoom { room: String },
}

impl UserCommand {
    /// The command a node received, or `None` when it is not one (a newer node's kind, or
    /// a value out of bounds: never trusted further than a client frame).
    pub fn parse(json: &str) -> Option<UserCommand> {
        let command: UserCommand = serde_json::from_str(json).ok()?;
        match &command {
            UserCommand::Disconnect { code, reason } => (APP_CLOSE_CODES.contains(code)
                && reason.len() <= MAX_CLOSE_REASON_BYTES)
                .then_some(command),
            UserCommand::RemoveFromRoom { room } => {
                crate::protocol::validate_room(room).ok().map(|_| command)
            }
        }
    }

    pub fn to_json(&self) -> String {
        // A two-variant enum of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_survive_the_trip_over_a_node_channel() {
        for command in [
            UserCommand::Disconnect {
                code: 4401,
                reason: "banned".into(),
            },
            UserCommand::RemoveFromRoom {
                room: "lobby".into(),
            },
        ] {
            assert_eq!(UserCommand::parse(&command.to_json()), Some(command));
        }
    }

    #[test]
    fn out_of_bounds_commands_are_not_taken() {
        for json in [
            r#"{"kind":"disconnect","code":1000,"reason":""}"#,
            r#"{"kind":"disconnect","code":5000,"reason":""}"#,
            &format!(
                r#"{{"kind":"disconnect","code":4400,"reason":"{}"}}"#,
                "x".repeat(124)
            ),
            r#"{"kind":"remove_from_room","room":"no spaces"}"#,
            r#"{"kind":"explode"}"#,
            "not json",
        ] {
            assert_eq!(UserCommand::parse(json), None, "{json}");
        }
        assert!(UserCommand::parse(r#"{"kind":"disconnect","code":4999,"reason":""}"#).is_some());
    }
}
