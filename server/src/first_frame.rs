//! Connections that send their token in their first frame (`{"type":"auth","token":...}`)
//! instead of the URL, where proxies' access logs would keep it. Such a connection is
//! upgraded without credentials (only when token keys are configured) and must send
//! `auth` first, within the header-read timeout; anything else closes it with 1008, an
//! expired token with 4003. Nothing else is read or sent before the identity is known.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::admission::Held;
use crate::auth::AuthError;
use crate::protocol::{parse_client_frame, ClientFrame, CloseCode, FrameLimits};
use crate::state::AppState;
use crate::upgrade::Reader;
use crate::wire::Wire;

/// Longest close reason a WebSocket close frame may carry is 123 bytes.
const MAX_CLOSE_REASON: usize = 120;

/// Reads the `auth` frame, then serves the session as [`crate::session::run`] does.
/// `awaiting` counts this connection among those not yet authenticated until then.
pub async fn authenticate_then_run(
    state: Arc<AppState>,
    (wire, mut reader): (Arc<Wire>, Reader),
    slot: Held,
    awaiting: Option<Held>,
) {
    let wait = state.settings.header_read_timeout;
    let limits = FrameLimits {
        max_body_bytes: state.settings.max_body_bytes,
    };
    let refused = match tokio::time::timeout(wait, first_text(&mut reader)).await {
        Err(_) => (
            CloseCode::Policy,
            format!("no `auth` frame within {}s", wait.as_secs()),
        ),
        Ok(None) => return wire.shut_down(),
        Ok(Some(text)) => match parse_client_frame(&text, limits) {
            Ok(ClientFrame::Auth { token }) => {
                match state.auth.authenticate(Some(&token), None).await {
                    Ok(identity) => {
                        drop(awaiting);
                        return crate::session::run(state, (wire, reader), identity, slot).await;
                    }
                    Err(e) => (close_code_for(&e), e.to_string()),
                }
            }
            _ => (
                CloseCode::Policy,
                "the first frame must be {\"type\":\"auth\",\"token\":...}".into(),
            ),
        },
    };
    state
        .metrics
        .upgrades_rejected
        .with_label_values(&["auth"])
        .inc();
    let (code, reason) = refused;
    let close = Message::Close(Some(CloseFrame {
        code: code.code().into(),
        reason: cut(&reason, MAX_CLOSE_REASON).into(),
    }));
    let _ = tokio::time::timeout(state.settings.write_timeout, reader.send(close)).await;
    wire.shut_down();
}

/// An expired token may be replaced and the client reconnect (4003); any other refusal is
/// a policy close (1008).
pub fn close_code_for(e: &AuthError) -> CloseCode {
    match e {
        AuthError::Expired => CloseCode::TokenExpired,
        _ => CloseCode::Policy,
    }
}

/// The first data frame's text (a binary frame reads as empty text, which is not
/// `auth`); `None` when the client went away first.
async fn first_text(reader: &mut Reader) -> Option<String> {
    loop {
        match reader.next().await? {
            Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
            Ok(Message::Binary(_)) => return Some(String::new()),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_and_reasons() {
        assert_eq!(close_code_for(&AuthError::Expired).code(), 4003);
        assert_eq!(close_code_for(&AuthError::NotYetValid).code(), 1008);
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("abc", 120), "abc");
    }
}
