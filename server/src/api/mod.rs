//! The server API: the application's backend publishes, sends DMs, disconnects users,
//! removes them from rooms and reads presence, history, rooms and sessions, over HTTP and
//! JSON on its own port. Every call needs an API key (`Authorization: Bearer <key>`),
//! compared in constant time; each endpoint has its own rate limit and every body a size
//! limit. Over Redis every answer is the whole cluster's, so any node can take any call.
//!
//! `openapi.json` (served at `GET /api/v1/openapi.json`, without a key) is the contract;
//! docs/api.md shows it in use.

mod handlers;
pub mod keys;
pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::backplane::BackplaneError;
use crate::ratelimit::TokenBucket;
use crate::state::AppState;
use crate::sync::lock;
use keys::ApiKeys;
use model::{ErrorAnswer, ErrorBody, FieldError};

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// How often the keys file is read again.
pub const KEYS_RELOAD_EVERY: Duration = Duration::from_secs(10);

use crate::config::ApiSettings;

/// What the API's handlers share.
pub struct ApiState {
    pub app: Arc<AppState>,
    pub keys: Arc<ApiKeys>,
    /// One bucket per endpoint (its route path).
    buckets: HashMap<&'static str, Mutex<TokenBucket>>,
    settings: ApiSettings,
}

/// Every endpoint but the document, by path: each gets its own rate limit.
const ENDPOINTS: [&str; 10] = [
    "/api/v1/publish",
    "/api/v1/broadcast",
    "/api/v1/dm",
    "/api/v1/disconnect",
    "/api/v1/remove_from_room",
    "/api/v1/presence",
    "/api/v1/history",
    "/api/v1/rooms",
    "/api/v1/room",
    "/api/v1/user_sessions",
];

/// The API's routes; `keys` already loaded (see [`keys::ApiKeys::load`]).
pub fn router(app: Arc<AppState>, settings: ApiSettings, keys: Arc<ApiKeys>) -> Router {
    let now = Instant::now();
    let buckets = ENDPOINTS
        .iter()
        .map(|path| {
            let bucket = TokenBucket::new(settings.rate_per_sec, settings.burst, now);
            (*path, Mutex::new(bucket))
        })
        .collect();
    let state = Arc::new(ApiState {
        app,
        keys,
        buckets,
        settings,
    });
    let endpoints = Router::new()
        .route(ENDPOINTS[0], post(handlers::publish))
        .route(ENDPOINTS[1], post(handlers::broadcast))
        .route(ENDPOINTS[2], post(handlers::dm))
        .route(ENDPOINTS[3], post(handlers::disconnect))
        .route(ENDPOINTS[4], post(handlers::remove_from_room))
        .route(ENDPOINTS[5], post(handlers::presence))
        .route(ENDPOINTS[6], post(handlers::history))
        .route(ENDPOINTS[7], post(handlers::rooms))
        .route(ENDPOINTS[8], post(handlers::room))
        .route(ENDPOINTS[9], post(handlers::user_sessions))
        // Layers run outside in: the key first, then the endpoint's rate limit, so
        // callers without a key cannot use up the limit.
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    OPENAPI_DOCUMENT,
                )
            }),
        )
        .merge(endpoints)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint: see GET /api/v1/openapi.json",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// An answer other than 2xx, as JSON: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
    }
}

impl From<BackplaneError> for ApiError {
    fn from(e: BackplaneError) -> Self {
        match e {
            BackplaneError::RoomLimit(m) => ApiError::new(StatusCode::CONFLICT, "room_limit", m),
            BackplaneError::TooManySessions(_) | BackplaneError::Unavailable(_) => ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{e}; try again"),
                )
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(ErrorAnswer { error: self.body() })).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// A JSON request body within `CHAT_API_MAX_BODY_BYTES`; a refusal names the field.
pub struct ApiBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<ApiState>> for ApiBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let max = state.settings.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the request body exceeds {max} bytes (CHAT_API_MAX_BODY_BYTES)"),
                )
            })?;
        parse_body(&bytes).map(ApiBody)
    }
}

/// Parses a request body; the error says which field is wrong and how.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde takes a struct written as an array too (`[room, body]`): only objects here.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let parsed: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("the body is not the JSON object this endpoint takes: {inner}")
        } else {
            format!("`{path}`: {inner}")
        };
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    })?;
    json.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("trailing data after the JSON object: {e}"),
        )
    })?;
    Ok(parsed)
}

async fn require_key(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|key| state.keys.accepts(key)) {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the server API needs `Authorization: Bearer <API key>`",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    next.run(request).await
}

async fn rate_limit(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if let Some(bucket) = state.buckets.get(path.as_str()) {
        let mut bucket = lock(bucket);
        if !bucket.try_take(Instant::now()) {
            let wait = bucket.wait_secs().ceil() as u64;
            return ApiError {
                retry_after_secs: Some(wait),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "{path} takes {} requests a second on this node (CHAT_API_RATE_PER_SEC); retry later",
                        state.settings.rate_per_sec
                    ),
                )
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// `chat_api_requests_total{endpoint, status}`; unknown paths share one label.
async fn count(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let endpoint = ENDPOINTS
        .iter()
        .chain(["/api/v1/openapi.json"].iter())
        .find(|e| **e == path)
        .copied()
        .unwrap_or("other");
    let resp = next.run(request).await;
    state
        .app
        .metrics
        .api_requests
        .with_label_values(&[endpoint, resp.status().as_str()])
        .inc();
    resp
}

/// Keeps the keys file's keys current until the server stops.
pub fn spawn_keys_reload(keys: Arc<ApiKeys>) {
    let weak = Arc::downgrade(&keys);
    drop(keys);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEYS_RELOAD_EVERY).await;
            let Some(keys) = weak.upgrade() else { return };
            if let Err(e) = keys.reload() {
                tracing::warn!(error = %e, "server API keys file not reloaded; the previous keys stay in use");
            }
        }
    });
}
