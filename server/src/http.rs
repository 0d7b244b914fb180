//! HTTP routing: the public port (`/ws`, the web client at `/`) and the admin port
//! (`/healthz`, `/readyz`, `/metrics`, and behind the admin token `POST /admin/drain`,
//! `POST /admin/undrain`, `GET /admin/status`). Every refused upgrade is answered before
//! the WebSocket opens, with a status and a plain message.
//!
//! `POST /admin/drain` takes an optional JSON body, `{"reconnect_window_seconds":
//! <number>, "keep_running": <bool>, "notice_delay_seconds": <number>}` (all optional,
//! no other field; no content type needed); an empty body drains with the configured
//! timing and the process exits when the drain ends. The notice delay holds the first
//! reconnect notice back (the node is not ready meanwhile) so the load balancer stops
//! sending clients back first; delay + window must be shorter than the deadline. It
//! answers 202 `{"draining": true, "started", "connections", "notice_delay_ms",
//! "reconnect_window_ms", "keep_running"}` (of the drain in effect: a drain already
//! under way is left unchanged and `started` is false), or 400 with a one-line message.
//! With `keep_running` the node stays alive, not ready, once drained, until SIGTERM or
//! `POST /admin/undrain`, which cancels such a drain: 200 `{"serving": true, "was":
//! "serving"|"draining"|"drained"}`, or 409 when the node is stopping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::Either;

use crate::client_addr::{client_address, source_key};
use crate::drain::{parse_drain_request, plan_drain, Phase};
use crate::signature::same_secret;
use crate::state::AppState;
use crate::sync::lock;
use crate::upgrade::WsUpgrade;

const WEB_CLIENT: &str = include_str!("web/index.html");
const WEB_CLIENT_JS: &str = include_str!("web/app.js");
const WEB_CLIENT_CSS: &str = include_str!("web/app.css");

/// The web client's Content-Security-Policy: its own script and style only, connections
/// (the WebSocket, `token_url`) to its own origin only, and no framing by other sites.
const WEB_CLIENT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn public_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { web_asset("text/html; charset=utf-8", WEB_CLIENT) }),
        )
        .route(
            "/app.js",
            get(|| async { web_asset("text/javascript; charset=utf-8", WEB_CLIENT_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { web_asset("text/css; charset=utf-8", WEB_CLIENT_CSS) }),
        )
        .route("/ws", get(upgrade))
        .with_state(state)
}

fn web_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, WEB_CLIENT_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub fn admin_router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/admin/drain", post(drain))
        .route("/admin/undrain", post(undrain))
        .route("/admin/status", get(status))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(protected)
        .with_state(state)
}

fn refuse(state: &AppState, status: StatusCode, reason: &str, message: String) -> Response {
    state
        .metrics
        .upgrades_rejected
        .with_label_values(&[reason])
        .inc();
    (status, format!("{message}\n")).into_response()
}

fn unavailable(state: &AppState, reason: &str, retry_after_secs: u64, message: String) -> Response {
    let mut resp = refuse(state, StatusCode::SERVICE_UNAVAILABLE, reason, message);
    if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: WsUpgrade,
) -> Response {
    let phase = state.drain.phase();
    if phase != Phase::Serving {
        let what = match phase {
            Phase::Drained => "drained",
            Phase::Stopped => "stopping",
            _ => "draining",
        };
        return unavailable(
            &state,
            "draining",
            1,
            format!("this node is {what}; connect again to reach another node"),
        );
    }
    let max = state.settings.max_connections;
    let Some(slot) = state.connections.try_take(max) else {
        return unavailable(
            &state,
            "connection_cap",
            1,
            format!("this node holds its maximum of {max} connections"),
        );
    };
    if let Some(sources) = &state.source_buckets {
        let client = client_address(peer.ip(), &headers, &state.settings.trusted_proxies);
        let taken = lock(sources).try_take(source_key(client), Instant::now());
        if let Err(wait) = taken {
            return unavailable(
                &state,
                "source_rate",
                wait.ceil() as u64,
                "too many new connections from your address; retry shortly".into(),
            );
        }
    }
    let accept_wait = {
        let mut bucket = lock(&state.accept_bucket);
        if bucket.try_take(Instant::now()) {
            None
        } else {
            Some(bucket.wait_secs().ceil() as u64)
        }
    };
    if let Some(wait) = accept_wait {
        return unavailable(
            &state,
            "accept_rate",
            wait,
            "too many new connections; retry shortly".into(),
        );
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Err(e) = state.auth.check_origin(origin) {
        return refuse(&state, StatusCode::FORBIDDEN, "origin", e.to_string());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| query.get("token").map(String::as_str));
    let anonymous_user = query.get("user").map(String::as_str);
    // No credentials at all, and tokens are possible: the first frame must be `auth`.
    let first_frame =
        bearer.is_none() && anonymous_user.is_none() && state.auth.accepts_first_frame_token();
    let mut awaiting = None;
    let identity =
        if first_frame {
            match state
                .awaiting_auth
                .try_take(state.settings.max_pending_connections)
            {
                Some(waiting) => awaiting = Some(waiting),
                None => return unavailable(
                    &state,
                    "awaiting_auth",
                    1,
                    "too many connections are waiting to send their `auth` frame; retry shortly"
                        .into(),
                ),
            }
            None
        } else {
            match state.auth.authenticate(bearer, anonymous_user).await {
                Ok(identity) => Some(identity),
                Err(e) => {
                    let mut resp = refuse(
                        &state,
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                        "auth",
                        e.to_string(),
                    );
                    if e.status() == 401 {
                        resp.headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    }
                    return resp;
                }
            }
        };
    let settings = &state.settings;
    let session_state = state.clone();
    // tungstenite reads the client's frames; everything the server sends is framed by
    // `wire` (tungstenite writes only its pongs and close frames, at once).
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(settings.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(Some(settings.max_frame_bytes))
        .max_frame_size(Some(settings.max_frame_bytes));
    ws.on_upgrade(
        config,
        settings.send_queue_bytes,
        move |client| match identity {
            Some(identity) => {
                Either::Left(crate::session::run(session_state, client, identity, slot))
            }
            // Boxed: only connections that authenticate in their first frame pay for it.
            None => Either::Right(Box::pin(crate::first_frame::authenticate_then_run(
                session_state,
                client,
                slot,
                awaiting,
            ))),
        },
    )
}

async fn require_admin_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.settings.admin_token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| same_secret(p, token)) {
            return (
                StatusCode::UNAUTHORIZED,
                "admin endpoints need `Authorization: Bearer <CHAT_ADMIN_TOKEN>`\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let not_serving = match state.drain.phase() {
        Phase::Serving => None,
        Phase::Draining => Some("draining\n"),
        Phase::Drained => Some("drained\n"),
        Phase::Stopped => Some("stopping\n"),
    };
    if let Some(body) = not_serving {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else if !state.backplane.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}

/// `POST /admin/drain`: the body is read as bytes whatever its content type (curl `-d`
/// sends a form type), then checked by [`parse_drain_request`] and [`plan_drain`].
async fn drain(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let plan = match parse_drain_request(&body)
        .and_then(|request| plan_drain(&request, state.configured_drain_plan()))
    {
        Ok(plan) => plan,
        Err(e) => {
            tracing::info!(error = %e, "drain request refused");
            return bad_request(e.to_string());
        }
    };
    let outcome = state.begin_drain_with(plan);
    let body = serde_json::json!({
        "draining": true,
        "started": outcome.started,
        "connections": state.hub.connection_count(),
        "notice_delay_ms": outcome.in_effect.notice_delay.as_millis() as u64,
        "reconnect_window_ms": outcome.in_effect.reconnect_window.as_millis() as u64,
        "keep_running": outcome.in_effect.keep_running,
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `POST /admin/undrain`: cancels a `keep_running` drain (see
/// [`crate::drain::Drain::undrain`]; sessions already told to reconnect are not called
/// back). 409 when the node is stopping.
async fn undrain(State(state): State<Arc<AppState>>) -> Response {
    match state.undrain() {
        Ok(was) => (
            StatusCode::OK,
            Json(serde_json::json!({"serving": true, "was": was.as_str()})),
        )
            .into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

/// The node at a glance. `backplane` (kind) and `backplane_ready` (readiness) stay for
/// existing readers; `backplane_status` adds the connection state and the last
/// connection error (e.g. Redis refused the password or the certificate), without secrets.
/// `draining` is true in every phase but serving; `phase` is `serving`, `draining`,
/// `drained` or `stopped`, and `drain` is null while serving, else the drain in effect:
/// `{"notice_delay_ms", "reconnect_window_ms", "deadline_ms", "elapsed_ms", "connections_at_start",
/// "keep_running", "stop_requested"}`.
async fn status(State(state): State<Arc<AppState>>) -> Response {
    let drain = state.drain.status();
    Json(serde_json::json!({
        "node": state.settings.node_name,
        "pod_ip": state.settings.pod_ip,
        "connections": state.hub.connection_count(),
        "rooms": state.hub.room_count(),
        "draining": drain.phase != Phase::Serving,
        "phase": drain.phase,
        "drain": drain.drain,
        "backplane": state.backplane.kind(),
        "backplane_ready": state.backplane.is_ready(),
        "backplane_status": state.backplane.status(),
    }))
    .into_response()
}
