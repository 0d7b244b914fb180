//! Parsing what Redis sends back: pub/sub payloads and the snapshot script's reply.

use axum::extract::ws::Utf8Bytes;

use super::super::{BackplaneError, HistoryRead, RoomInfo, RoomSnapshot};
use crate::protocol::ServerFrame;

pub(super) enum RoomEvent<'a> {
    Message {
        offset: u64,
        published_us: u64,
        epoch: &'a str,
        from: &'a str,
        body: &'a str,
    },
    Presence {
        joined: bool,
        user: &'a str,
        /// The room's members after the change; `None` from a node older than counts.
        member_count: Option<u64>,
    },
}

/// `M|offset|published_us|epoch|from|body` or `P|+|user|count` / `P|-|user|count` (or,
/// from a node older than counts, `P|+|user`; the count comes last so such a node reads
/// the user right). The body comes last and may contain `|`; the other fields cannot
/// (validated names, digits, hex).
pub(super) fn parse_room_event(payload: &str) -> Option<RoomEvent<'_>> {
    let mut parts = payload.splitn(6, '|');
    match parts.next()? {
        "M" => Some(RoomEvent::Message {
            offset: parts.next()?.parse().ok()?,
            published_us: parts.next()?.parse().ok()?,
            epoch: parts.next()?,
            from: parts.next()?,
            body: parts.next()?,
        }),
        "P" => {
            let joined = match parts.next()? {
                "+" => true,
                "-" => false,
                _ => return None,
            };
            let user = parts.next()?;
            let member_count = match parts.next() {
                Some(count) => Some(count.parse().ok()?),
                None => None,
            };
            Some(RoomEvent::Presence {
                joined,
                user,
                member_count,
            })
        }
        _ => None,
    }
}

/// Parses the snapshot script's flat reply:
/// `epoch, head, status (fresh|ok|lost), member count, n, n members..., then
/// (offset, from, body, ts)*`.
pub(super) fn parse_snapshot(
    room: &str,
    reply: Vec<String>,
) -> Result<RoomSnapshot, BackplaneError> {
    let bad = || BackplaneError::Unavailable("malformed snapshot reply from Redis".into());
    let mut it = reply.into_iter();
    let epoch = it.next().ok_or_else(bad)?;
    let head: u64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let status = match it.next().ok_or_else(bad)?.as_str() {
        "fresh" => "fresh",
        "ok" => "ok",
        "lost" => "lost",
        _ => return Err(bad()),
    };
    let member_count: u64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let n: usize = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let members: Vec<String> = it.by_ref().take(n).collect();
    if members.len() != n {
        return Err(bad());
    }
    let rest: Vec<String> = it.collect();
    let replay = entry_frames(room, &epoch, &rest)
        .ok_or_else(bad)?
        .into_iter()
        .map(|(_, frame)| frame)
        .collect();
    Ok(RoomSnapshot {
        recovered: status != "lost",
        epoch,
        head,
        replay,
        members,
        member_count,
    })
}

/// Parses the history_page script's reply: `gone`, or `ok` then (offset, from, body, ts)*.
pub(super) fn parse_page(
    room: &str,
    epoch: &str,
    reply: Vec<String>,
) -> Result<Option<Vec<(u64, Utf8Bytes)>>, BackplaneError> {
    let bad = || BackplaneError::Unavailable("malformed history page from Redis".into());
    match reply.split_first() {
        Some((status, _)) if status == "gone" => Ok(None),
        Some((status, rest)) if status == "ok" => {
            entry_frames(room, epoch, rest).map(Some).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// The room info script's reply: `None` for a room that does not exist.
pub(super) fn parse_room_info(
    room: &str,
    reply: Vec<String>,
) -> Result<Option<RoomInfo>, BackplaneError> {
    let bad = || BackplaneError::Unavailable("malformed room info from Redis".into());
    match <[String; 3]>::try_from(reply) {
        Ok([epoch, head, members]) => Ok(Some(RoomInfo {
            room: room.to_owned(),
            epoch,
            head: head.parse().map_err(|_| bad())?,
            members: members.parse().map_err(|_| bad())?,
        })),
        Err(reply) if reply.is_empty() => Ok(None),
        Err(_) => Err(bad()),
    }
}

/// The history read script's reply: `None` for a room that does not exist.
pub(super) fn parse_history_read(
    room: &str,
    reply: Vec<String>,
) -> Result<Option<HistoryRead>, BackplaneError> {
    let bad = || BackplaneError::Unavailable("malformed history read from Redis".into());
    let [epoch, head, rest @ ..] = reply.as_slice() else {
        return if reply.is_empty() {
            Ok(None)
        } else {
            Err(bad())
        };
    };
    Ok(Some(HistoryRead {
        head: head.parse().map_err(|_| bad())?,
        messages: entry_frames(room, epoch, rest).ok_or_else(bad)?,
        epoch: epoch.clone(),
    }))
}

/// Message frames, with their offsets, from a flat list of (offset, from, body, ts).
fn entry_frames(room: &str, epoch: &str, flat: &[String]) -> Option<Vec<(u64, Utf8Bytes)>> {
    if flat.len() % 4 != 0 {
        return None;
    }
    flat.chunks(4)
        .map(|e| {
            let offset: u64 = e[0].parse().ok()?;
            let ts: u64 = e[3].parse().ok()?;
            let frame = ServerFrame::Message {
                room,
                epoch,
                offset,
                from: &e[1],
                body: &e[2],
                ts,
            }
            .to_json()
            .into();
            Some((offset, frame))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_events_parse_with_pipes_in_the_body() {
        match parse_room_event("M|7|1700000000000123|abc|alice|a|b|c") {
            Some(RoomEvent::Message {
                offset,
                published_us,
                epoch,
                from,
                body,
            }) => {
                assert_eq!(
                    (offset, published_us, epoch, from, body),
                    (7, 1700000000000123, "abc", "alice", "a|b|c")
                );
            }
            _ => panic!("not parsed"),
        }
        assert!(matches!(
            parse_room_event("P|+|bob|12"),
            Some(RoomEvent::Presence {
                joined: true,
                user: "bob",
                member_count: Some(12)
            })
        ));
        assert!(matches!(
            parse_room_event("P|-|bob|0"),
            Some(RoomEvent::Presence {
                joined: false,
                member_count: Some(0),
                ..
            })
        ));
        assert!(
            matches!(
                parse_room_event("P|+|123"),
                Some(RoomEvent::Presence {
                    user: "123",
                    member_count: None,
                    ..
                })
            ),
            "an older node's event: the user alone"
        );
        assert!(parse_room_event("P|+|bob|x").is_none());
        assert!(parse_room_event("M|x|1|e|f|b").is_none());
        assert!(parse_room_event("P|?|bob").is_none());
        assert!(parse_room_event("").is_none());
    }

    #[test]
    fn snapshot_reply_parses_members_and_entries() {
        let reply: Vec<String> = [
            "e1", "5", "ok", "250", "2", "alice", "bob", "4", "alice", "hi", "1000", "5", "bob",
            "yo", "1001",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let snap = parse_snapshot("r", reply).unwrap();
        assert_eq!(
            (snap.epoch.as_str(), snap.head, snap.recovered),
            ("e1", 5, true)
        );
        assert_eq!(snap.members, vec!["alice", "bob"]);
        assert_eq!(snap.member_count, 250, "the count, beyond the first page");
        assert_eq!(snap.replay.len(), 2);
        assert!(snap.replay[0].as_str().contains("\"offset\":4"));
        assert!(parse_snapshot("r", vec!["e".into(), "x".into()]).is_err());
        let page: Vec<String> = ["ok", "6", "carl", "hey", "1002"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let page = parse_page("r", "e1", page).unwrap().unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, 6);
        assert!(page[0].1.as_str().contains("\"from\":\"carl\""));
        assert_eq!(parse_page("r", "e1", vec!["gone".into()]).unwrap(), None);
        assert!(parse_page("r", "e1", vec!["ok".into(), "6".into()]).is_err());
        assert!(parse_snapshot(
            "r",
            vec![
                "e".into(),
                "1".into(),
                "ok".into(),
                "1".into(),
                "0".into(),
                "1".into()
            ]
        )
        .is_err());
    }
}
