//! Key and channel names. Everything is under the configured prefix `P`, so one Redis
//! can serve several ChatClusters.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:room:R:meta` | hash | `epoch`, `head` (last assigned offset), `bytes` (history size) |
//! | `P:room:R:log` | stream | history; entry id `0-{offset}`, fields `f` (from), `b` (body), `t` (ts ms) |
//! | `P:room:R:presence` | hash | `{node}\|{user}` → sessions of the user on that node in the room |
//! | `P:room:R:users` | hash | user → sessions in the room over all nodes (presence) |
//! | `P:room:R:names` | sorted set | the room's members by name (member pages) |
//! | `P:room:R:idem:K` | string with TTL | `epoch\|offset` of the server API's publish with idempotency key K |
//! | `P:user:U:nodes` | set | nodes holding a session of the user (DM routing) |
//! | `P:user:U:sessions` | hash | node → sessions of the user on it (the per-user cap) |
//! | `P:user:U:rooms-created` | string with TTL | rooms the user created in the current hour |
//! | `P:budget:rooms:active` | sorted set | room → last activity (ms): the room cap's index |
//! | `P:budget:rooms:bytes` | hash | room → history bytes last reported (the byte budget) |
//! | `P:budget:rooms:sweeper` | string with TTL | the node that runs the budget sweeper |
//! | `P:events:S` | stream | events for the application of shard S (a room's or a user's shard), consumer group `deliver`; an entry is deleted once delivered |
//! | `P:events:S:lease` | string with TTL | the node delivering shard S |
//! | `P:events:dead` | list | events given up (JSON with `error`), newest first, at most 10,000 |
//! | `P:node:N:alive` | string with TTL | heartbeat; a node whose key expired is dead |
//!
//! Channels: `P:room:R` (a room's messages and presence changes) and `P:node:N` (direct
//! messages for users on node N).
//!
//! In cluster mode the id is a hash tag (`P:room:{R}:meta`, `P:room:{R}`, …), so all keys
//! and the channel of one room, one user or one node hash to one slot: every script
//! touches a single slot, and a room's sharded channel lives on the shard that holds its
//! history. Room and user names cannot contain braces (the protocol's name rules), node
//! names follow the user-id rule (checked at start) and the prefix is checked, so a tag
//! is never cut short.

pub(super) struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    pub fn new(prefix: &str, cluster: bool) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            cluster,
        }
    }

    /// `P:kind:id` with the id hash-tagged in cluster mode, then `:suffix` if any.
    fn name(&self, kind: &str, id: &str, suffix: Option<&str>) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + id.len() + 16);
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(kind);
        k.push(':');
        if self.cluster {
            k.push('{');
            k.push_str(id);
            k.push('}');
        } else {
            k.push_str(id);
        }
        if let Some(suffix) = suffix {
            k.push(':');
            k.push_str(suffix);
        }
        k
    }

    pub fn room_meta(&self, room: &str) -> String {
        self.name("room", room, Some("meta"))
    }

    pub fn room_log(&self, room: &str) -> String {
        self.name("room", room, Some("log"))
    }

    pub fn room_presence(&self, room: &str) -> String {
        self.name("room", room, Some("presence"))
    }

    pub fn room_users(&self, room: &str) -> String {
        self.name("room", room, Some("users"))
    }

    /// The room's members by name (a sorted set, all scores 0), for member pages.
    pub fn room_names(&self, room: &str) -> String {
        self.name("room", room, Some("names"))
    }

    /// The server API's idempotency key `key` for a publish to `room` (the room's slot).
    pub fn room_idempotency(&self, room: &str, key: &str) -> String {
        let mut k = self.name("room", room, Some("idem:"));
        k.push_str(key);
        k
    }

    pub fn room_channel(&self, room: &str) -> String {
        self.name("room", room, None)
    }

    pub fn user_nodes(&self, user: &str) -> String {
        self.name("user", user, Some("nodes"))
    }

    pub fn user_sessions(&self, user: &str) -> String {
        self.name("user", user, Some("sessions"))
    }

    /// How many rooms the user created in the current hour-long window (string, TTL).
    pub fn user_rooms_created(&self, user: &str) -> String {
        self.name("user", user, Some("rooms-created"))
    }

    /// The room index, its byte reports and the sweeper's lease share one id, so in
    /// cluster mode they live in one slot and one script can use them together.
    pub fn budget_index(&self) -> String {
        self.name("budget", "rooms", Some("active"))
    }

    pub fn budget_bytes(&self) -> String {
        self.name("budget", "rooms", Some("bytes"))
    }

    pub fn budget_lease(&self) -> String {
        self.name("budget", "rooms", Some("sweeper"))
    }

    /// Events of shard `shard` (single-instance mode only: see `config.rs`).
    pub fn events_stream(&self, shard: u32) -> String {
        format!("{}:events:{shard}", self.prefix)
    }

    pub fn events_lease(&self, shard: u32) -> String {
        format!("{}:events:{shard}:lease", self.prefix)
    }

    pub fn events_dead(&self) -> String {
        format!("{}:events:dead", self.prefix)
    }

    pub fn node_alive(&self, node: &str) -> String {
        self.name("node", node, Some("alive"))
    }

    pub fn node_channel(&self, node: &str) -> String {
        self.name("node", node, None)
    }

    /// `P:node:`, which the single-instance DM script completes with a node's name.
    pub fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// The room a room channel belongs to; `None` for any other channel.
    pub fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let id = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":room:")?;
        if self.cluster {
            id.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_instance_names_are_untagged() {
        let keys = Keys::new("chat", false);
        assert_eq!(keys.room_meta("lobby"), "chat:room:lobby:meta");
        assert_eq!(keys.room_log("lobby"), "chat:room:lobby:log");
        assert_eq!(keys.room_presence("lobby"), "chat:room:lobby:presence");
        assert_eq!(keys.room_users("lobby"), "chat:room:lobby:users");
        assert_eq!(keys.room_names("lobby"), "chat:room:lobby:names");
        assert_eq!(keys.room_channel("lobby"), "chat:room:lobby");
        assert_eq!(
            keys.room_idempotency("lobby", "k1"),
            "chat:room:lobby:idem:k1"
        );
        assert_eq!(keys.user_nodes("ann"), "chat:user:ann:nodes");
        assert_eq!(keys.user_sessions("ann"), "chat:user:ann:sessions");
        assert_eq!(
            keys.user_rooms_created("ann"),
            "chat:user:ann:rooms-created"
        );
        assert_eq!(keys.budget_index(), "chat:budget:rooms:active");
        assert_eq!(keys.budget_bytes(), "chat:budget:rooms:bytes");
        assert_eq!(keys.budget_lease(), "chat:budget:rooms:sweeper");
        assert_eq!(keys.node_alive("chat-0@1f"), "chat:node:chat-0@1f:alive");
        assert_eq!(keys.node_channel("chat-0@1f"), "chat:node:chat-0@1f");
        assert_eq!(keys.node_prefix(), "chat:node:");
        assert_eq!(keys.events_stream(3), "chat:events:3");
        assert_eq!(keys.events_lease(3), "chat:events:3:lease");
        assert_eq!(keys.events_dead(), "chat:events:dead");
        assert_eq!(keys.room_of_channel("chat:room:a:b"), Some("a:b"));
        assert_eq!(keys.room_of_channel("chat:node:chat-0@1f"), None);
        assert_eq!(keys.room_of_channel("other:room:a"), None);
    }

    #[test]
    fn cluster_names_tag_the_id_so_a_room_is_one_slot() {
        let keys = Keys::new("chat", true);
        assert_eq!(keys.room_meta("lobby"), "chat:room:{lobby}:meta");
        assert_eq!(keys.room_log("lobby"), "chat:room:{lobby}:log");
        assert_eq!(keys.room_presence("lobby"), "chat:room:{lobby}:presence");
        assert_eq!(keys.room_users("lobby"), "chat:room:{lobby}:users");
        assert_eq!(keys.room_names("lobby"), "chat:room:{lobby}:names");
        assert_eq!(keys.room_channel("lobby"), "chat:room:{lobby}");
        assert_eq!(
            keys.room_idempotency("lobby", "k1"),
            "chat:room:{lobby}:idem:k1"
        );
        assert_eq!(keys.user_nodes("ann"), "chat:user:{ann}:nodes");
        assert_eq!(keys.user_sessions("ann"), "chat:user:{ann}:sessions");
        assert_eq!(
            keys.user_rooms_created("ann"),
            "chat:user:{ann}:rooms-created"
        );
        assert_eq!(keys.budget_index(), "chat:budget:{rooms}:active");
        assert_eq!(keys.budget_bytes(), "chat:budget:{rooms}:bytes");
        assert_eq!(keys.budget_lease(), "chat:budget:{rooms}:sweeper");
        assert_eq!(keys.node_alive("n@1"), "chat:node:{n@1}:alive");
        assert_eq!(keys.node_channel("n@1"), "chat:node:{n@1}");
        assert_eq!(keys.room_of_channel("chat:room:{a:b}"), Some("a:b"));
        assert_eq!(keys.room_of_channel("chat:room:a"), None);
        assert_eq!(keys.room_of_channel("chat:node:{n@1}"), None);
    }
}
