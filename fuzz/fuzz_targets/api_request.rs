//! The server API's request bodies and the user commands nodes pass each other: any bytes
//! are either a request whose every field then obeys the name, size and range rules, or
//! a 400 naming what is wrong; a command is taken only within its bounds. Never a panic.
#![no_main]

use chat_server::api::model::{
    BroadcastRequest, DisconnectRequest, DmRequest, HistoryRequest, PresenceRequest,
    PublishRequest, RemoveFromRoomRequest, RoomRequest, RoomsRequest, UserRequest,
    APPLICATION_SENDER, MAX_BROADCAST_ROOMS, MAX_HISTORY_PAGE, MAX_ROOMS_PAGE,
};
use chat_server::api::parse_body;
use chat_server::protocol::{validate_recipient, validate_room, validate_user};
use chat_server::user_command::{UserCommand, APP_CLOSE_CODES, MAX_CLOSE_REASON_BYTES};
use libfuzzer_sys::fuzz_target;

const MAX_BODY: usize = 64;

fn sender_ok(from: &str) {
    assert!(from == APPLICATION_SENDER || validate_user(from).is_ok(), "{from}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 11 {
        0 => {
            if let Ok(r) = parse_body::<PublishRequest>(body) {
                if let Ok(from) = r.check(MAX_BODY) {
                    sender_ok(from);
                    assert!(validate_room(&r.room).is_ok() && r.body.len() <= MAX_BODY);
                }
            }
        }
        1 => {
            if let Ok(r) = parse_body::<BroadcastRequest>(body) {
                if let Ok(from) = r.check(MAX_BODY) {
                    sender_ok(from);
                    assert!((1..=MAX_BROADCAST_ROOMS).contains(&r.rooms.len()));
                    assert!(r.rooms.iter().all(|room| validate_room(room).is_ok()));
                }
            }
        }
        2 => {
            if let Ok(r) = parse_body::<DmRequest>(body) {
                if let Ok(from) = r.check(MAX_BODY) {
                    sender_ok(from);
                    assert!(validate_recipient(&r.to).is_ok());
                }
            }
        }
        3 => {
            if let Ok(r) = parse_body::<DisconnectRequest>(body) {
                if let Ok(UserCommand::Disconnect { code, reason }) = r.command() {
                    assert!(APP_CLOSE_CODES.contains(&code));
                    assert!(reason.len() <= MAX_CLOSE_REASON_BYTES);
                }
            }
        }
        4 => {
            if let Ok(r) = parse_body::<RemoveFromRoomRequest>(body) {
                if let Ok(command) = r.command() {
                    // What a node sends another survives the trip unchanged.
                    assert_eq!(UserCommand::parse(&command.to_json()), Some(command));
                }
            }
        }
        5 => {
            if let Ok(r) = parse_body::<PresenceRequest>(body) {
                if r.check().is_ok() {
                    assert!(validate_room(&r.room).is_ok());
                }
            }
        }
        6 => {
            if let Ok(r) = parse_body::<HistoryRequest>(body) {
                if let Ok(limit) = r.check() {
                    assert!((1..=MAX_HISTORY_PAGE).contains(&limit));
                }
            }
        }
        7 => {
            if let Ok(r) = parse_body::<RoomsRequest>(body) {
                if let Ok(limit) = r.check() {
                    assert!((1..=MAX_ROOMS_PAGE).contains(&limit));
                }
            }
        }
        8 => {
            if let Ok(r) = parse_body::<RoomRequest>(body) {
                let _ = r.check();
            }
        }
        9 => {
            if let Ok(r) = parse_body::<UserRequest>(body) {
                let _ = r.check();
            }
        }
        _ => {
            // A node channel's command from another node: taken only within bounds.
            if let Ok(text) = std::str::from_utf8(body) {
                match UserCommand::parse(text) {
                    Some(UserCommand::Disconnect { code, reason }) => {
                        assert!(APP_CLOSE_CODES.contains(&code));
                        assert!(reason.len() <= MAX_CLOSE_REASON_BYTES);
                    }
                    Some(UserCommand::RemoveFromRoom { room }) => {
                        assert!(validate_room(&room).is_ok())
                    }
                    None => {}
                }
            }
        }
    }
});
