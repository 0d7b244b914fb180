//! The cluster-wide bounds over Redis: the room cap, the history byte budget and the
//! per-user session cap. Rooms are admitted into one index (sorted by last activity, with
//! each room's history bytes as last reported); one node at a time, holding a lease, sweeps
//! it: it trims the least recently active rooms' oldest history while the total is over
//! budget ([`crate::history_budget`] decides) and drops entries of rooms whose keys
//! expired. A new room at the cap makes way by forgetting idle rooms (no members), least
//! recently active first, as the in-memory backplane does; if every room has members it is
//! refused. In cluster mode the index lives in one slot and each room in its own, so every
//! step is a script on one slot; a race between nodes can overshoot the cap by a room or
//! two until the next sweep.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::RedisBackplane;
use crate::backplane::BackplaneError;
use crate::clock::now_us;
use crate::history_budget::{least_recently_active, plan_trims, rooms_over_cap, IndexedRoom};
use crate::sync::lock;

/// What a history entry costs beyond its sender and body, in the byte budget: the stream
/// entry's id, field names and timestamp, rounded up.
pub(super) const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// A node reports a room's activity and bytes to the index at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The sweeper runs every this many reports (2 s); its lease outlives two missed runs.
const SWEEP_EVERY_REPORTS: u64 = 2;
const LEASE_TTL_MS: u64 = 6_000;

/// The window of the per-user cap on rooms created.
const NEW_ROOMS_WINDOW_SECS: u64 = 3600;

/// What the room index said to an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// The room was in the index already.
    Known,
    /// The room is new to the index: someone is creating it.
    New,
    /// The index is full.
    Full,
}

/// Idle rooms tried per refusal before a new room is refused (the least recently active;
/// nodes keep rooms with members recent, see `touch_local_rooms`).
const FORGET_CANDIDATES: isize = 64;

/// This node's view of the index: when it last admitted each room (so a busy room costs
/// the index one call a second) and the bytes its publishes saw since the last report.
#[derive(Default)]
pub(super) struct Admitted {
    rooms: std::sync::Mutex<HashMap<String, Reported>>,
}

struct Reported {
    at: Instant,
    /// The room's bytes after this node's latest publish, not yet reported.
    unreported: Option<u64>,
}

impl Admitted {
    /// Whether the room must be (re)admitted: this node has not within the last second.
    fn due(&self, room: &str) -> bool {
        lock(&self.rooms)
            .get(room)
            .is_none_or(|r| r.at.elapsed() >= REPORT_EVERY)
    }

    fn admitted(&self, room: &str) {
        let mut rooms = lock(&self.rooms);
        if rooms.len() > 4096 {
            rooms.retain(|_, r| r.at.elapsed() < REPORT_EVERY * 10 || r.unreported.is_some());
        }
        rooms
            .entry(room.to_owned())
            .and_modify(|r| r.at = Instant::now())
            .or_insert(Reported {
                at: Instant::now(),
                unreported: None,
            });
    }

    fn published(&self, room: &str, bytes: u64) {
        lock(&self.rooms)
            .entry(room.to_owned())
            .or_insert(Reported {
                at: Instant::now(),
                unreported: None,
            })
            .unreported = Some(bytes);
    }

    /// The rooms published to since the last call, with their latest bytes.
    fn take_unreported(&self) -> Vec<(String, u64)> {
        lock(&self.rooms)
            .iter_mut()
            .filter_map(|(room, r)| r.unreported.take().map(|b| (room.clone(), b)))
            .collect()
    }

    fn forget(&self, room: &str) {
        lock(&self.rooms).remove(room);
    }
}

impl RedisBackplane {
    /// Admits `room` into the cluster's room index before anything creates its keys.
    /// Refused with `RoomLimit` when the index is full and no idle room can make way.
    /// A room new to the index counts against the joining `user`'s rooms created per
    /// hour; one the application creates (`None`: server API) against no user's.
    pub(super) async fn admit_room(
        &self,
        room: &str,
        user: Option<&str>,
    ) -> Result<(), BackplaneError> {
        if !self.admitted.due(room) {
            return Ok(());
        }
        let mut admission = self.index_admit(room, None).await?;
        if admission == Admission::Full {
            self.forget_idle_rooms(1).await?;
            admission = self.index_admit(room, None).await?;
        }
        match admission {
            Admission::Known => {}
            Admission::New => {
                if let Some(user) = user {
                    self.count_new_room(room, user).await?
                }
            }
            Admission::Full => {
                return Err(BackplaneError::RoomLimit(format!(
                    "the cluster holds its maximum of {} rooms and every one has members",
                    self.budget.max_rooms
                )))
            }
        }
        self.admitted.admitted(room);
        Ok(())
    }

    /// Counts a room `user` created; over the per-user cap the room leaves the index
    /// again and the join is refused.
    async fn count_new_room(&self, room: &str, user: &str) -> Result<(), BackplaneError> {
        let max = self.budget.max_new_rooms_per_user_per_hour;
        if max == 0 {
            return Ok(());
        }
        let mut inv = self.scripts.rooms_created.prepare_invoke();
        inv.key(self.keys.user_rooms_created(user))
            .arg(max)
            .arg(NEW_ROOMS_WINDOW_SECS);
        let counted: i64 = self.run(&inv).await?;
        if counted == 1 {
            return Ok(());
        }
        self.drop_index_entry(room).await?;
        Err(BackplaneError::RoomLimit(format!(
            "this user created {max} new rooms within an hour, the most allowed"
        )))
    }

    /// After a publish: the room's bytes go to the index with the next report.
    pub(super) fn published(&self, room: &str, bytes: u64) {
        self.admitted.published(room, bytes);
    }

    /// Reports the rooms this node published to since the last report: their activity
    /// and bytes. A report admits its room even into a full index (the room exists, and
    /// its bytes must count, also after the sweeper dropped an entry while its members
    /// were quiet); the sweeper brings the count back under the cap.
    async fn report_activity(&self) -> Result<(), BackplaneError> {
        let mut reports = self.admitted.take_unreported().into_iter();
        while let Some((room, bytes)) = reports.next() {
            if let Err(e) = self.index_admit(&room, Some(bytes)).await {
                // Kept for the next report, with those not sent yet.
                self.admitted.published(&room, bytes);
                for (room, bytes) in reports {
                    self.admitted.published(&room, bytes);
                }
                return Err(e);
            }
            self.admitted.admitted(&room);
        }
        Ok(())
    }

    /// Marks the rooms with local members active in the index (one command), so the
    /// rooms the cap forgets first are the idle ones, not quiet rooms with members.
    pub(super) async fn touch_local_rooms(&self) -> Result<(), BackplaneError> {
        let rooms = self.hub.local_rooms();
        if rooms.is_empty() {
            return Ok(());
        }
        let now_ms = now_us() / 1000;
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.keys.budget_index()).arg("XX").arg("GT");
        for room in rooms.iter() {
            cmd.arg(now_ms).arg(room.as_ref());
        }
        self.query::<()>(&cmd).await
    }

    async fn index_admit(
        &self,
        room: &str,
        bytes: Option<u64>,
    ) -> Result<Admission, BackplaneError> {
        let mut inv = self.scripts.room_admit.prepare_invoke();
        inv.key(self.keys.budget_index())
            .key(self.keys.budget_bytes())
            .arg(room)
            .arg(now_us() / 1000)
            .arg(self.budget.max_rooms)
            .arg(bytes.map(|b| b.to_string()).unwrap_or_default());
        let reply: i64 = self.run(&inv).await?;
        Ok(match reply {
            1 => Admission::Known,
            2 => Admission::New,
            _ => Admission::Full,
        })
    }

    /// Forgets up to `wanted` rooms nobody is in, least recently active first; returns
    /// how many went.
    async fn forget_idle_rooms(&self, wanted: usize) -> Result<usize, BackplaneError> {
        let oldest: Vec<(String, u64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.budget_index())
                    .arg(0)
                    .arg(FORGET_CANDIDATES.max(wanted as isize) - 1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let mut forgotten = 0;
        for (room, _) in oldest {
            if forgotten >= wanted {
                break;
            }
            if self.forget_room(&room).await? {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Forgets one room if nobody is in it: its keys, then its index entry.
    async fn forget_room(&self, room: &str) -> Result<bool, BackplaneError> {
        let mut inv = self.scripts.room_forget.prepare_invoke();
        inv.key(self.keys.room_meta(room))
            .key(self.keys.room_log(room))
            .key(self.keys.room_users(room));
        let forgotten: i64 = self.run(&inv).await?;
        if forgotten == 1 {
            self.drop_index_entry(room).await?;
            self.metrics.rooms_forgotten.inc();
        }
        Ok(forgotten == 1)
    }

    async fn drop_index_entry(&self, room: &str) -> Result<(), BackplaneError> {
        self.admitted.forget(room);
        self.query::<()>(redis::cmd("ZREM").arg(self.keys.budget_index()).arg(room))
            .await?;
        self.query::<()>(redis::cmd("HDEL").arg(self.keys.budget_bytes()).arg(room))
            .await
    }

    /// One sweep, when this node holds the lease: index entries of expired rooms go, the
    /// history budget is enforced, and a count over the cap (after a race) is brought
    /// back by forgetting idle rooms.
    async fn sweep_budget(&self) -> Result<(), BackplaneError> {
        let mut lease = self.scripts.lease.prepare_invoke();
        lease
            .key(self.keys.budget_lease())
            .arg(&self.node)
            .arg(LEASE_TTL_MS);
        let held: i64 = self.run(&lease).await?;
        if held != 1 {
            return Ok(());
        }
        let scores: Vec<(String, u64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.budget_index())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let bytes: HashMap<String, u64> = self
            .query(redis::cmd("HGETALL").arg(self.keys.budget_bytes()))
            .await?;
        let stale_before = (now_us() / 1000).saturating_sub(self.history_ttl_secs() * 1000);
        let mut rooms = Vec::with_capacity(scores.len());
        for (name, last_active_ms) in scores {
            if last_active_ms < stale_before {
                // Its history keys have expired and nobody is in it: nothing left to
                // count. (A room with members stays: a later message recreates its keys.)
                let exists: bool = self
                    .query(redis::cmd("EXISTS").arg(self.keys.room_meta(&name)))
                    .await?;
                let members: u64 = self
                    .query(redis::cmd("HLEN").arg(self.keys.room_users(&name)))
                    .await?;
                if !exists && members == 0 {
                    self.drop_index_entry(&name).await?;
                    continue;
                }
            }
            let bytes = bytes.get(&name).copied().unwrap_or(0);
            rooms.push(IndexedRoom {
                name,
                last_active_ms,
                bytes,
            });
        }
        for trim in plan_trims(&rooms, self.budget.max_history_bytes as u64) {
            let mut inv = self.scripts.history_trim.prepare_invoke();
            inv.key(self.keys.room_meta(&trim.room))
                .key(self.keys.room_log(&trim.room))
                .arg(trim.keep_bytes)
                .arg(ENTRY_OVERHEAD_BYTES);
            let kept: u64 = self.run(&inv).await?;
            let before = rooms
                .iter()
                .find(|r| r.name == trim.room)
                .map_or(0, |r| r.bytes);
            self.metrics
                .history_trimmed_bytes
                .inc_by(before.saturating_sub(kept));
            // At `maxmemory` this write is refused; the next pass reads the room's true
            // size again from its next report, and the trim itself has freed memory.
            if let Err(e) = self
                .query::<()>(
                    redis::cmd("HSET")
                        .arg(self.keys.budget_bytes())
                        .arg(&trim.room)
                        .arg(kept),
                )
                .await
            {
                tracing::debug!(error = %e, room = %trim.room, "could not record a trimmed room's size");
            }
        }
        let over = rooms_over_cap(rooms.len(), self.budget.max_rooms);
        if over > 0 {
            let mut forgotten = 0;
            for room in least_recently_active(&rooms) {
                if forgotten >= over {
                    break;
                }
                if self.forget_room(&room.name).await? {
                    forgotten += 1;
                }
            }
        }
        Ok(())
    }
}

/// Reports this node's room activity every second and, every other second, sweeps the
/// budget when this node holds the lease, while the backplane lives.
pub(super) async fn sweeper_task(bp: Weak<RedisBackplane>) {
    for tick in 0u64.. {
        tokio::time::sleep(REPORT_EVERY).await;
        let Some(bp) = bp.upgrade() else { return };
        if !bp.commands_ok() {
            continue;
        }
        if let Err(e) = bp.report_activity().await {
            tracing::debug!(error = %e, "room activity report failed; the next one retries");
        }
        if tick % SWEEP_EVERY_REPORTS == 0 {
            if let Err(e) = bp.sweep_budget().await {
                tracing::debug!(error = %e, "history budget sweep failed; the next one retries");
            }
        }
    }
}
