//! Client text frames: parsing and validation never panic; an accepted frame respects the
//! limits; a refused one becomes a well-formed `error` frame.
#![no_main]

use chat_server::protocol::{parse_client_frame, ClientFrame, FrameLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: FrameLimits = FrameLimits { max_body_bytes: 64 };

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // tungstenite refuses non-UTF-8 text before the parser sees it
    };
    match parse_client_frame(text, LIMITS) {
        Ok(ClientFrame::Send {
            body, client_ref, ..
        })
        | Ok(ClientFrame::Dm {
            body, client_ref, ..
        }) => {
            // An empty body is allowed (the protocol sets only a maximum).
            assert!(body.len() <= LIMITS.max_body_bytes);
            assert!(client_ref.map_or(true, |r| r.len() <= 64));
        }
        Ok(ClientFrame::Join { room, token, .. }) => {
            assert!(!room.is_empty() && room.len() <= 64);
            assert!(token.is_none_or(|t| !t.is_empty()));
        }
        Ok(ClientFrame::Leave { room }) => {
            assert!(!room.is_empty() && room.len() <= 64);
        }
        Ok(ClientFrame::Refresh { token }) | Ok(ClientFrame::Auth { token }) => {
            assert!(!token.is_empty())
        }
        Ok(ClientFrame::Ping {}) => {}
        Ok(ClientFrame::Members { room, after }) => {
            assert!(!room.is_empty() && room.len() <= 64);
            assert!(after.is_none_or(|a| !a.is_empty() && a.len() <= 65));
        }
        Err(e) => {
            let frame: serde_json::Value =
                serde_json::from_str(&e.to_json()).expect("an error frame is JSON");
            assert_eq!(frame["type"], "error");
            assert!(frame["message"].as_str().is_some_and(|m| m.len() < 1024));
        }
    }
});
