//! The cluster-wide history budget's decisions: which rooms' oldest history to drop when
//! the bytes over all rooms exceed the budget, and in which order idle rooms are
//! forgotten when the room cap is reached. Pure (the caller reads the room index and
//! acts), so the rule is unit-tested here; the Redis backplane's sweeper applies it, and
//! it is the rule the in-memory backplane follows too: least recently active first.

/// One room as the room index records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedRoom {
    pub name: String,
    /// When a node last admitted or published to the room (ms since the Unix epoch).
    pub last_active_ms: u64,
    /// History bytes the room held when last reported.
    pub bytes: u64,
}

/// How much of one room's history to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trim {
    pub room: String,
    /// Drop the oldest messages until the room holds at most this many bytes.
    pub keep_bytes: u64,
}

/// Trims that bring the total under nine tenths of `max_bytes` (the slack keeps the
/// sweeper from trimming on every pass), taken from the least recently active rooms
/// first. Nothing when the total is within `max_bytes`.
pub fn plan_trims(rooms: &[IndexedRoom], max_bytes: u64) -> Vec<Trim> {
    let total: u64 = rooms.iter().map(|r| r.bytes).sum();
    if total <= max_bytes {
        return Vec::new();
    }
    let mut excess = total - max_bytes / 10 * 9;
    let mut trims = Vec::new();
    for room in least_recently_active(rooms) {
        if excess == 0 {
            break;
        }
        if room.bytes == 0 {
            continue;
        }
        let cut = room.bytes.min(excess);
        excess -= cut;
        trims.push(Trim {
            room: room.name.clone(),
            keep_bytes: room.bytes - cut,
        });
    }
    trims
}

/// The rooms in the order they are given up: least recently active first, ties by name
/// so every node would choose alike.
pub fn least_recently_active(rooms: &[IndexedRoom]) -> Vec<&IndexedRoom> {
    let mut order: Vec<&IndexedRoom> = rooms.iter().collect();
    order.sort_by(|a, b| {
        a.last_active_ms
            .cmp(&b.last_active_ms)
            .then_with(|| a.name.cmp(&b.name))
    });
    order
}

/// How many rooms must be forgotten to bring `count` back to `max_rooms`.
pub fn rooms_over_cap(count: usize, max_rooms: usize) -> usize {
    count.saturating_sub(max_rooms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str, last_active_ms: u64, bytes: u64) -> IndexedRoom {
        IndexedRoom {
            name: name.into(),
            last_active_ms,
            bytes,
        }
    }

    #[test]
    fn within_budget_nothing_is_trimmed() {
        let rooms = [room("a", 1, 400), room("b", 2, 600)];
        assert!(plan_trims(&rooms, 1000).is_empty());
        assert!(plan_trims(&[], 0).is_empty());
    }

    #[test]
    fn over_budget_the_least_recently_active_rooms_give_up_history_first() {
        // Total 1500 over a budget of 1000: down to 900, so 600 bytes go, from "old"
        // (400, all of it) then "mid" (200 of its 500); "new" keeps everything.
        let rooms = [
            room("new", 30, 600),
            room("old", 10, 400),
            room("mid", 20, 500),
        ];
        assert_eq!(
            plan_trims(&rooms, 1000),
            vec![
                Trim {
                    room: "old".into(),
                    keep_bytes: 0
                },
                Trim {
                    room: "mid".into(),
                    keep_bytes: 300
                },
            ]
        );
    }

    #[test]
    fn empty_rooms_are_skipped_and_ties_break_by_name() {
        // 200 over a budget of 100: down to 90, so 110 go: all of `a` (first by name at
        // the same time), then 10 of `b`; the empty `z` is older but has nothing to give.
        let rooms = [room("b", 5, 100), room("a", 5, 100), room("z", 1, 0)];
        assert_eq!(
            plan_trims(&rooms, 100),
            vec![
                Trim {
                    room: "a".into(),
                    keep_bytes: 0
                },
                Trim {
                    room: "b".into(),
                    keep_bytes: 90
                },
            ]
        );
    }

    #[test]
    fn the_cap_counts_what_is_over_it() {
        assert_eq!(rooms_over_cap(12, 10), 2);
        assert_eq!(rooms_over_cap(10, 10), 0);
        assert_eq!(rooms_over_cap(3, 10), 0);
    }
}
