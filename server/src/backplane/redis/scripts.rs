//! The backplane's Lua scripts. Each lives in its own `.lua` file (readable and lintable
//! as Lua) and declares every key it touches in `KEYS`, so in cluster mode a script runs
//! on the one shard that owns its room or user. The publish command is `PUB`, bound to
//! `PUBLISH` or, in cluster mode, `SPUBLISH` (sharded pub/sub) when the script is built.

use redis::Script;

/// The first line of a script that must run at `maxmemory` (see [`Scripts::new`]).
const ALLOW_OOM: &str = "--! allow-oom\n";

pub(super) struct Scripts {
    pub publish: Script,
    pub snapshot: Script,
    pub history_page: Script,
    pub members_page: Script,
    pub room_info: Script,
    pub history_read: Script,
    pub rotate_epoch: Script,
    pub presence_join: Script,
    pub presence_leave: Script,
    pub presence_restore: Script,
    pub presence_sweep: Script,
    pub room_admit: Script,
    pub rooms_created: Script,
    pub room_forget: Script,
    pub history_trim: Script,
    pub lease: Script,
    pub heartbeat: Script,
    pub session_register: Script,
    pub session_unregister: Script,
    pub session_forget_nodes: Script,
    /// Single-instance mode only: it reads other nodes' keys, which cluster mode cannot do
    /// in one script.
    pub direct: Script,
    pub event_add: Script,
}

impl Scripts {
    pub fn new(cluster: bool) -> Scripts {
        let publish_command = if cluster { "SPUBLISH" } else { "PUBLISH" };
        let build = |body: &str| {
            // A script whose first line is `--! allow-oom` only frees memory (or must run
            // to free it: the sweeper's lease): it runs even when Redis is at `maxmemory`,
            // where `noeviction` refuses every other script's writes.
            let shebang = match body.strip_prefix(ALLOW_OOM) {
                Some(_) => "#!lua flags=allow-oom\n",
                None => "",
            };
            Script::new(&format!("{shebang}local PUB = '{publish_command}'\n{body}"))
        };
        Scripts {
            publish: build(include_str!("scripts/publish.lua")),
            snapshot: build(include_str!("scripts/snapshot.lua")),
            history_page: build(include_str!("scripts/history_page.lua")),
            members_page: build(include_str!("scripts/members_page.lua")),
            room_info: build(include_str!("scripts/room_info.lua")),
            history_read: build(include_str!("scripts/history_read.lua")),
            rotate_epoch: build(include_str!("scripts/rotate_epoch.lua")),
            presence_join: build(include_str!("scripts/presence_join.lua")),
            presence_leave: build(include_str!("scripts/presence_leave.lua")),
            presence_restore: build(include_str!("scripts/presence_restore.lua")),
            presence_sweep: build(include_str!("scripts/presence_sweep.lua")),
            room_admit: build(include_str!("scripts/room_admit.lua")),
            rooms_created: build(include_str!("scripts/rooms_created.lua")),
            room_forget: build(include_str!("scripts/room_forget.lua")),
            history_trim: build(include_str!("scripts/history_trim.lua")),
            lease: build(include_str!("scripts/lease.lua")),
            heartbeat: build(include_str!("scripts/heartbeat.lua")),
            session_register: build(include_str!("scripts/session_register.lua")),
            session_unregister: build(include_str!("scripts/session_unregister.lua")),
            session_forget_nodes: build(include_str!("scripts/session_forget_nodes.lua")),
            direct: build(include_str!("scripts/direct.lua")),
            event_add: build(include_str!("scripts/event_add.lua")),
        }
    }
}
