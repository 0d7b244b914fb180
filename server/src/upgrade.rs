//! The WebSocket handshake (RFC 6455, 4.2), done here rather than by axum so that the
//! session keeps the TCP socket itself: the fan-out writes to it directly (`wire`), and
//! tungstenite reads client frames from it.

use std::future::Future;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::wire::{ClientIo, Wire};

/// A request that asked for a WebSocket and may be answered with one.
pub struct WsUpgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

/// Why a request to the WebSocket endpoint cannot be upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotUpgradable {
    #[error("a WebSocket handshake is a GET request")]
    NotGet,
    #[error("the `Connection` header must include `upgrade`")]
    NoConnectionUpgrade,
    #[error("the `Upgrade` header must be `websocket`")]
    NotWebSocket,
    #[error("the `Sec-WebSocket-Version` header must be 13")]
    Version,
    #[error("the `Sec-WebSocket-Key` header is missing")]
    NoKey,
    #[error("this connection cannot be upgraded")]
    NoUpgrade,
}

impl IntoResponse for NotUpgradable {
    fn into_response(self) -> Response {
        let status = match self {
            NotUpgradable::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            NotUpgradable::NoUpgrade => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("{self}\n")).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotUpgradable;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let accept = check_handshake(&parts.method, &parts.headers)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotUpgradable::NoUpgrade)?;
        Ok(WsUpgrade { on_upgrade, accept })
    }
}

/// Checks the handshake request and returns its `Sec-WebSocket-Accept` (pure).
pub fn check_handshake(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, NotUpgradable> {
    if method != Method::GET {
        return Err(NotUpgradable::NotGet);
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(NotUpgradable::NoConnectionUpgrade);
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(NotUpgradable::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(NotUpgradable::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(NotUpgradable::NoKey)?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).map_err(|_| NotUpgradable::NoKey)
}

/// The client's frames as tungstenite reads them, over the connection's wire.
pub type Reader = WebSocketStream<ClientIo>;

impl WsUpgrade {
    /// Answers 101 and, once hyper hands the connection over, runs `serve` on its wire
    /// (send-queue budget `queue_limit_bytes`) and reader.
    ///
    /// `serve` is a plain closure that returns the session's future: an idle
    /// connection's task holds this task's state for its lifetime, and an async block
    /// in `serve` would hold its captures a second time.
    pub fn on_upgrade<F, Fut>(
        self,
        config: WebSocketConfig,
        queue_limit_bytes: usize,
        serve: F,
    ) -> Response
    where
        F: FnOnce((Arc<Wire>, Reader)) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let socket = parts.io.into_inner();
                    let client = open(socket, parts.read_buf, config, queue_limit_bytes).await;
                    serve(client).await
                }
                // The listener serves plain TCP connections only (listener.rs).
                Err(_) => tracing::error!("upgraded connection is not a TCP stream; closed"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

/// The connection's wire and its reader, which first reads `read_ahead` (what the client
/// sent after the handshake and the HTTP server had already read).
async fn open(
    socket: TcpStream,
    read_ahead: Bytes,
    config: WebSocketConfig,
    queue_limit_bytes: usize,
) -> (Arc<Wire>, Reader) {
    let wire = Wire::new(Some(socket), queue_limit_bytes);
    let io = ClientIo(wire.clone());
    let reader =
        WebSocketStream::from_partially_read(io, read_ahead.to_vec(), Role::Server, Some(config))
            .await;
    (wire, reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_valid_handshake_gets_the_rfc_accept_key() {
        let accept = check_handshake(&Method::GET, &request(GOOD)).expect("valid");
        // RFC 6455, 1.3's example.
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn each_broken_handshake_is_named() {
        assert_eq!(
            check_handshake(&Method::POST, &request(GOOD)),
            Err(NotUpgradable::NotGet)
        );
        let without = |name: &str| {
            let kept: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != name).collect();
            check_handshake(&Method::GET, &request(&kept))
        };
        assert_eq!(
            without("connection"),
            Err(NotUpgradable::NoConnectionUpgrade)
        );
        assert_eq!(without("upgrade"), Err(NotUpgradable::NotWebSocket));
        assert_eq!(
            without("sec-websocket-version"),
            Err(NotUpgradable::Version)
        );
        assert_eq!(without("sec-websocket-key"), Err(NotUpgradable::NoKey));
        let mut old = request(GOOD);
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            check_handshake(&Method::GET, &old),
            Err(NotUpgradable::Version)
        );
    }
}
