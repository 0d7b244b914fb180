//! One function per endpoint: check the request (model.rs), ask the backplane, answer.
//! The application is trusted with every room and user, so the room rules do not apply
//! here; the limits on names, bodies and pages do.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::model::{
    BroadcastItem, BroadcastRequest, DisconnectRequest, DmRequest, ErrorBody, HistoryMessage,
    HistoryRequest, PresenceRequest, PublishRequest, PublishResult, RemoveFromRoomRequest,
    RoomRequest, RoomStats, RoomsRequest, UserRequest,
};
use super::{ApiBody, ApiError, ApiState};
use crate::backplane::RoomInfo;

type Answer = Result<Json<Value>, ApiError>;

fn not_found(what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", what.to_owned())
}

fn stats(info: RoomInfo) -> RoomStats {
    RoomStats {
        room: info.room,
        epoch: info.epoch,
        head: info.head,
        members: info.members,
    }
}

pub async fn publish(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<PublishRequest>,
) -> Result<Json<PublishResult>, ApiError> {
    let from = req.check(api.app.settings.max_body_bytes)?;
    let published = api
        .app
        .backplane
        .publish_once(
            &req.room,
            from,
            &req.body,
            req.idempotency_key.as_deref(),
            api.settings.idempotency_ttl,
        )
        .await?;
    Ok(Json(PublishResult {
        room: req.room,
        epoch: published.epoch,
        offset: published.offset,
        duplicate: published.duplicate,
    }))
}

/// Publishes room by room; one room's failure does not stop the others, and the answer
/// says what happened in each. A retry with the same key publishes only where the first
/// call did not.
pub async fn broadcast(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<BroadcastRequest>,
) -> Answer {
    let from = req.check(api.app.settings.max_body_bytes)?;
    let mut results = Vec::with_capacity(req.rooms.len());
    for room in &req.rooms {
        let outcome = api
            .app
            .backplane
            .publish_once(
                room,
                from,
                &req.body,
                req.idempotency_key.as_deref(),
                api.settings.idempotency_ttl,
            )
            .await;
        results.push(match outcome {
            Ok(p) => BroadcastItem::Published(PublishResult {
                room: room.clone(),
                epoch: p.epoch,
                offset: p.offset,
                duplicate: p.duplicate,
            }),
            Err(e) => {
                let code = e.code().name();
                BroadcastItem::Failed {
                    room: room.clone(),
                    error: ErrorBody {
                        code,
                        message: e.to_string(),
                    },
                }
            }
        });
    }
    Ok(Json(json!({ "results": results })))
}

pub async fn dm(State(api): State<Arc<ApiState>>, ApiBody(req): ApiBody<DmRequest>) -> Answer {
    let from = req.check(api.app.settings.max_body_bytes)?;
    let reached = api
        .app
        .backplane
        .send_direct(from, &req.to, &req.body)
        .await?;
    Ok(Json(json!({
        "to": req.to,
        "delivered": reached > 0,
        "reached": reached,
    })))
}

pub async fn disconnect(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<DisconnectRequest>,
) -> Answer {
    let reached = command_user(&api, &req.user, req.command()?).await?;
    Ok(Json(json!({ "user": req.user, "reached": reached })))
}

pub async fn remove_from_room(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<RemoveFromRoomRequest>,
) -> Answer {
    let reached = command_user(&api, &req.user, req.command()?).await?;
    Ok(Json(json!({
        "room": req.room,
        "user": req.user,
        "reached": reached,
    })))
}

/// Sends `command` to `user`'s sessions on every node; how many it reached.
async fn command_user(
    api: &ApiState,
    user: &str,
    command: crate::user_command::UserCommand,
) -> Result<usize, ApiError> {
    Ok(api.app.backplane.send_user_command(user, &command).await?)
}

pub async fn presence(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<PresenceRequest>,
) -> Answer {
    req.check()?;
    let (members, count) = api
        .app
        .backplane
        .members_page(&req.room, req.after.as_deref())
        .await?;
    let next_after = (members.len() == crate::protocol::MEMBERS_PAGE)
        .then(|| members.last().cloned())
        .flatten();
    Ok(Json(json!({
        "room": req.room,
        "members": members,
        "member_count": count,
        "next_after": next_after,
    })))
}

pub async fn history(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<HistoryRequest>,
) -> Answer {
    let limit = req.check()?;
    let Some(read) = api
        .app
        .backplane
        .history_read(&req.room, req.after, limit)
        .await?
    else {
        return Err(not_found(
            "no such room (it never had a member or a message, or it was forgotten)",
        ));
    };
    let mut messages = Vec::with_capacity(read.messages.len());
    for (_, frame) in &read.messages {
        let message: HistoryMessage = serde_json::from_str(frame.as_str()).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("a stored message could not be read: {e}"),
            )
        })?;
        messages.push(message);
    }
    Ok(Json(json!({
        "room": req.room,
        "epoch": read.epoch,
        "head": read.head,
        "messages": messages,
    })))
}

pub async fn rooms(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<RoomsRequest>,
) -> Answer {
    let limit = req.check()?;
    let rooms: Vec<RoomStats> = api
        .app
        .backplane
        .rooms_page(req.after.as_deref(), limit)
        .await?
        .into_iter()
        .map(stats)
        .collect();
    let next_after = (rooms.len() == limit)
        .then(|| rooms.last().map(|r| r.room.clone()))
        .flatten();
    Ok(Json(json!({ "rooms": rooms, "next_after": next_after })))
}

pub async fn room(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<RoomRequest>,
) -> Result<Json<RoomStats>, ApiError> {
    req.check()?;
    match api.app.backplane.room_info(&req.room).await? {
        Some(info) => Ok(Json(stats(info))),
        None => Err(not_found("no such room")),
    }
}

pub async fn user_sessions(
    State(api): State<Arc<ApiState>>,
    ApiBody(req): ApiBody<UserRequest>,
) -> Answer {
    req.check()?;
    let nodes = api.app.backplane.user_sessions(&req.user).await?;
    let total: u64 = nodes.iter().map(|n| n.sessions).sum();
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|n| json!({ "node": n.node, "sessions": n.sessions }))
        .collect();
    Ok(Json(
        json!({ "user": req.user, "sessions": total, "nodes": nodes }),
    ))
}
