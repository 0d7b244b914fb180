//! Parsing what Redis sends back: pub/sub payloads and the snapshot script's reply.

use super::super::{BackplaneError, RoomSnapshot};
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
    },
}

/// `M|offset|published_us|epoch|from|body` or `P|+|user` / `P|-|user`. The body comes
/// last and may contain `|`; the other fields cannot (validated names, digits, hex).
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
            Some(RoomEvent::Presence {
                joined,
                user: parts.next()?,
            })
        }
        _ => None,
    }
}

/// Parses the snapshot script's flat reply:
/// `epoch, head, status (fresh|ok|lost), n, n members..., then (offset, from, body, ts)*`.
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
    let n: usize = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let mut members: Vec<String> = it.by_ref().take(n).collect();
    if members.len() != n {
        return Err(bad());
    }
    members.sort();
    let rest: Vec<String> = it.collect();
    if rest.len() % 4 != 0 {
        return Err(bad());
    }
    let mut replay = Vec::with_capacity(rest.len() / 4);
    for e in rest.chunks(4) {
        let offset: u64 = e[0].parse().map_err(|_| bad())?;
        let ts: u64 = e[3].parse().map_err(|_| bad())?;
        replay.push(
            ServerFrame::Message {
                room,
                epoch: &epoch,
                offset,
                from: &e[1],
                body: &e[2],
                ts,
            }
            .to_json()
            .into(),
        );
    }
    Ok(RoomSnapshot {
        recovered: status != "lost",
        epoch,
        head,
        replay,
        members,
    })
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
            parse_room_event("P|+|bob"),
            Some(RoomEvent::Presence {
                joined: true,
                user: "bob"
            })
        ));
        assert!(matches!(
            parse_room_event("P|-|bob"),
            Some(RoomEvent::Presence { joined: false, .. })
        ));
        assert!(parse_room_event("M|x|1|e|f|b").is_none());
        assert!(parse_room_event("P|?|bob").is_none());
        assert!(parse_room_event("").is_none());
    }

    #[test]
    fn snapshot_reply_parses_members_and_entries() {
        let reply: Vec<String> = [
            "e1", "5", "ok", "2", "bob", "alice", "4", "alice", "hi", "1000", "5", "bob", "yo",
            "1001",
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
        assert_eq!(snap.replay.len(), 2);
        assert!(snap.replay[0].as_str().contains("\"offset\":4"));
        assert!(parse_snapshot("r", vec!["e".into(), "x".into()]).is_err());
        assert!(parse_snapshot(
            "r",
            vec!["e".into(), "1".into(), "ok".into(), "0".into(), "1".into()]
        )
        .is_err());
    }
}
