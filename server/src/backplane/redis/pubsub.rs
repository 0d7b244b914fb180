//! The pub/sub side: one task owns the subscriptions, reference-counts room channels
//! (a node listens to a room only while it hosts a member), dispatches what arrives and,
//! after anything that may have dropped messages, has the node restore its state and
//! its sessions catch up from history.
//!
//! Single instance: one classic pub/sub connection, resubscribed in one batch after each
//! reconnect. Cluster: sharded pub/sub over a RESP3 cluster connection, which
//! subscribes each channel on the shard that owns its slot and resubscribes by itself
//! after a reconnect or a topology change; this task follows what it cannot, a shard
//! moving a slot away (the server then drops the subscription with a `sunsubscribe`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::super::BackplaneError;
use super::connection::{backoff, Target};
use super::RedisBackplane;

/// Commands to the task that owns the pub/sub connection.
pub(super) enum SubCommand {
    Subscribe(String, oneshot::Sender<Result<(), BackplaneError>>),
    /// With a sender: answered once Redis has answered the UNSUBSCRIBE (at once when
    /// other local members still need the channel or pub/sub is down).
    Unsubscribe(String, Option<oneshot::Sender<()>>),
}

/// Reference counts of the room channels local members need.
#[derive(Default)]
struct Refcounts(HashMap<String, usize>);

impl Refcounts {
    /// Takes a reference; true when it is the channel's first (subscribe it).
    fn take(&mut self, channel: &str) -> bool {
        let n = self.0.entry(channel.to_owned()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Releases a reference; true when it was the channel's last (unsubscribe it).
    fn release(&mut self, channel: &str) -> bool {
        if let Some(n) = self.0.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(channel);
                return true;
            }
        }
        false
    }

    fn contains(&self, channel: &str) -> bool {
        self.0.contains_key(channel)
    }

    fn channels(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }
}

/// Starts the pub/sub task for the backplane's kind of Redis (`pushes` is the cluster
/// pub/sub connection's push receiver).
pub(super) fn spawn(
    bp: &Arc<RedisBackplane>,
    commands: mpsc::UnboundedReceiver<SubCommand>,
    pushes: Option<mpsc::UnboundedReceiver<PushInfo>>,
) {
    let weak = Arc::downgrade(bp);
    match pushes {
        Some(pushes) => {
            tokio::spawn(cluster_pubsub_task(weak, commands, pushes));
        }
        None => {
            tokio::spawn(single_pubsub_task(weak, commands));
        }
    }
}

/// Single instance: subscribes the node channel and every room with local members (in
/// one batched SUBSCRIBE after each reconnect), dispatches messages, and triggers a
/// restore and resync after each reconnect.
async fn single_pubsub_task(
    bp: Weak<RedisBackplane>,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
) {
    let mut refcounts = Refcounts::default();
    let mut attempt = 0u32;
    let mut connected_before = false;
    loop {
        let Some(b) = bp.upgrade() else { return };
        let Target::Single(client) = &b.target else {
            return;
        };
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                let error = b.record_error("pub/sub connect", e);
                tracing::warn!(%error, "Redis pub/sub unreachable; retrying");
                drop(b);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                fail_waiting_commands(&bp, &mut commands, &mut refcounts);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels: Vec<String> = refcounts.channels().cloned().collect();
        channels.push(b.node_channel());
        let mut resubscribed = true;
        for chunk in channels.chunks(500) {
            if let Err(e) = sink.subscribe(chunk).await {
                let error = b.record_error("pub/sub subscribe", e);
                tracing::warn!(%error, "Redis resubscribe failed");
                resubscribed = false;
                break;
            }
        }
        if !resubscribed {
            drop(b);
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            continue;
        }
        attempt = 0;
        b.pubsub_ok.store(true, Ordering::Relaxed);
        tracing::info!(channels = channels.len(), "Redis pub/sub subscribed");
        if connected_before {
            b.restore_with_retries(true).await;
        }
        connected_before = true;
        drop(b);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        if let Some(b) = bp.upgrade() {
                            b.record_error("pub/sub", "connection lost");
                        }
                        break;
                    };
                    let Some(b) = bp.upgrade() else { return };
                    match (msg.get_channel::<String>(), msg.get_payload::<String>()) {
                        (Ok(channel), Ok(payload)) => b.dispatch(&channel, &payload),
                        _ => tracing::warn!("ignoring undecodable pub/sub message"),
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    match cmd {
                        SubCommand::Subscribe(ch, reply) => {
                            if reply.is_closed() {
                                continue; // the session stopped waiting: it holds no reference
                            }
                            if refcounts.take(&ch) {
                                if let Err(e) = sink.subscribe(&ch).await {
                                    refcounts.release(&ch);
                                    let error = match bp.upgrade() {
                                        Some(b) => b.record_error("pub/sub subscribe", e),
                                        None => return,
                                    };
                                    let _ = reply.send(Err(BackplaneError::Unavailable(format!("Redis {error}"))));
                                    break;
                                }
                            }
                            if reply.send(Ok(())).is_err() && refcounts.release(&ch) {
                                // It stopped waiting meanwhile and will never unsubscribe.
                                forget_channel(&bp, &ch);
                                if let Err(e) = sink.unsubscribe(&ch).await {
                                    log_unsubscribe_failure(&bp, e);
                                }
                            }
                        }
                        SubCommand::Unsubscribe(ch, reply) => {
                            if refcounts.release(&ch) {
                                forget_channel(&bp, &ch);
                                if let Err(e) = sink.unsubscribe(&ch).await {
                                    log_unsubscribe_failure(&bp, e);
                                }
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(());
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = bp.upgrade() {
            b.pubsub_ok.store(false, Ordering::Relaxed);
        }
        tracing::warn!("Redis pub/sub connection lost; reconnecting");
    }
}

/// While disconnected: fails subscriptions asked for rather than keep them waiting, and
/// releases unsubscribed channels (nothing to tell Redis).
fn fail_waiting_commands(
    bp: &Weak<RedisBackplane>,
    commands: &mut mpsc::UnboundedReceiver<SubCommand>,
    refcounts: &mut Refcounts,
) {
    while let Ok(cmd) = commands.try_recv() {
        match cmd {
            SubCommand::Subscribe(_, reply) => {
                let _ = reply.send(Err(BackplaneError::Unavailable(
                    "Redis pub/sub is disconnected".into(),
                )));
            }
            SubCommand::Unsubscribe(ch, reply) => {
                if refcounts.release(&ch) {
                    forget_channel(bp, &ch);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
    }
}

/// The node no longer listens to a room: it stops tracking the room's offsets.
fn forget_channel(bp: &Weak<RedisBackplane>, channel: &str) {
    if let Some(b) = bp.upgrade() {
        b.forget_room_channel(channel);
    }
}

fn log_unsubscribe_failure(bp: &Weak<RedisBackplane>, e: impl std::fmt::Display) {
    if let Some(b) = bp.upgrade() {
        let error = b.redact(e);
        tracing::debug!(%error, "Redis unsubscribe failed");
    }
}

/// How long a sharded (un)subscribe may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One sharded (un)subscribe with a time limit; the error as text.
async fn bounded(
    what: &str,
    call: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{what} timed out")),
    }
}

/// Cluster: sharded pub/sub. The node channel and every room channel with local members
/// are `SSUBSCRIBE`d one by one (a multi-channel SSUBSCRIBE must stay in one slot).
///
/// What the pushes tell this task:
/// - `smessage`: dispatched;
/// - `ssubscribe` that this task did not ask for: the connection resubscribed after a
///   reconnect or a failover, so messages may have been missed: restore and resync;
/// - `sunsubscribe` of a channel still needed: the server dropped it because its slot
///   moved to another shard: subscribe again (the cluster connection follows the
///   `MOVED`), then restore and resync.
async fn cluster_pubsub_task(
    bp: Weak<RedisBackplane>,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    let mut refcounts = Refcounts::default();
    // Confirmations this task is waiting for, per channel, so a confirmation it did not
    // ask for is recognised as the connection's own resubscription.
    let mut expected = Expected::default();
    let mut attempt = 0u32;
    let mut conn = loop {
        let Some(b) = bp.upgrade() else { return };
        let Target::Cluster { pubsub, .. } = &b.target else {
            return;
        };
        let node_channel = b.node_channel();
        let connected = match pubsub.get_async_connection().await {
            Ok(mut conn) => {
                expected.add(&node_channel);
                bounded("SSUBSCRIBE", conn.ssubscribe(&node_channel))
                    .await
                    .map(|()| conn)
            }
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(conn) => break conn,
            Err(e) => {
                expected = Expected::default();
                let error = b.record_error("pub/sub connect", e);
                tracing::warn!(%error, "Redis Cluster pub/sub unreachable; retrying");
                drop(b);
                fail_waiting_commands(&bp, &mut commands, &mut refcounts);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    };
    if let Some(b) = bp.upgrade() {
        b.pubsub_ok.store(true, Ordering::Relaxed);
    }
    tracing::info!("Redis Cluster sharded pub/sub subscribed");
    let mut pending = PendingResubscribe::default();
    loop {
        let due = pending.due;
        tokio::select! {
            push = pushes.recv() => {
                let Some(PushInfo { kind, data }) = push else { return };
                let Some(b) = bp.upgrade() else { return };
                // Taken, not copied: this runs for every message of every local room.
                let mut data = data.into_iter();
                let channel = data.next().and_then(text);
                if kind != PushKind::SMessage {
                    tracing::debug!(%kind, ?channel, "Redis Cluster push");
                }
                match (kind, channel) {
                    (PushKind::SMessage, Some(channel)) => match data.next().and_then(text) {
                        Some(payload) => b.dispatch(&channel, &payload),
                        None => tracing::warn!("ignoring undecodable sharded message"),
                    },
                    (PushKind::SSubscribe, Some(channel)) if !expected.confirm(&channel) => {
                        tracing::info!(%channel, "sharded subscription restored by the connection; resyncing");
                        b.schedule_restore();
                    }
                    (PushKind::SUnsubscribe, Some(channel))
                        if refcounts.contains(&channel) || channel == b.node_channel() =>
                    {
                        tracing::info!(%channel, "a shard dropped a needed subscription (its slot moved); subscribing again");
                        pending.add([channel]);
                    }
                    (PushKind::Disconnection, _) => {
                        // The connection to one shard broke (a master died, or a network
                        // fault). Its subscriptions are made again, on whichever master
                        // serves each slot once the cluster has settled.
                        tracing::warn!("a Redis Cluster pub/sub connection dropped; subscribing again");
                        pending.add(refcounts.channels().cloned().chain([b.node_channel()]));
                    }
                    _ => {}
                }
            }
            _ = sleep_until(due), if due.is_some() => {
                let Some(b) = bp.upgrade() else { return };
                let node_channel = b.node_channel();
                let channels: Vec<String> = pending
                    .take()
                    .into_iter()
                    .filter(|ch| refcounts.contains(ch) || *ch == node_channel)
                    .collect();
                for channel in &channels {
                    expected.add(channel);
                }
                // All at once, so commands wait for one round trip, not one per channel.
                let results = futures_util::future::join_all(channels.iter().map(|channel| {
                    let mut conn = conn.clone();
                    async move { bounded("SSUBSCRIBE", conn.ssubscribe(channel)).await }
                }))
                .await;
                let mut failed = None;
                for (channel, result) in channels.into_iter().zip(results) {
                    if let Err(e) = result {
                        // The cluster is not ready for this slot yet: the next try.
                        expected.forget(&channel);
                        failed = Some(e);
                        pending.add([channel]);
                    }
                }
                match failed {
                    Some(e) => {
                        let error = b.record_error("pub/sub resubscribe", e);
                        tracing::warn!(%error, "sharded resubscribe failed; retrying");
                        pending.retry_later();
                    }
                    None => {
                        tracing::info!("sharded subscriptions made again; resyncing");
                        pending.done();
                        // Messages published meanwhile were missed: catch up from history.
                        b.schedule_restore();
                    }
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    SubCommand::Subscribe(ch, reply) => {
                        if reply.is_closed() {
                            continue; // the session stopped waiting: it holds no reference
                        }
                        if refcounts.take(&ch) {
                            expected.add(&ch);
                            if let Err(e) = bounded("SSUBSCRIBE", conn.ssubscribe(&ch)).await {
                                refcounts.release(&ch);
                                expected.forget(&ch);
                                let error = match bp.upgrade() {
                                    Some(b) => b.record_error("pub/sub subscribe", e),
                                    None => return,
                                };
                                let _ = reply.send(Err(BackplaneError::Unavailable(format!("Redis {error}"))));
                                continue;
                            }
                        }
                        if reply.send(Ok(())).is_err() && refcounts.release(&ch) {
                            // It stopped waiting meanwhile and will never unsubscribe.
                            forget_channel(&bp, &ch);
                            if let Err(e) = bounded("SUNSUBSCRIBE", conn.sunsubscribe(&ch)).await {
                                log_unsubscribe_failure(&bp, e);
                            }
                        }
                    }
                    SubCommand::Unsubscribe(ch, reply) => {
                        if refcounts.release(&ch) {
                            forget_channel(&bp, &ch);
                            if let Err(e) = bounded("SUNSUBSCRIBE", conn.sunsubscribe(&ch)).await {
                                log_unsubscribe_failure(&bp, e);
                            }
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(());
                        }
                    }
                }
            }
        }
    }
}

/// Waits until `due` (never when `None`; the select arm is disabled then).
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Channels to subscribe again after a shard dropped them, and when to try next.
#[derive(Default)]
struct PendingResubscribe {
    channels: std::collections::HashSet<String>,
    due: Option<tokio::time::Instant>,
    attempt: u32,
}

impl PendingResubscribe {
    /// Adds channels; the first try comes shortly, once the cluster had a moment to
    /// settle (a failover takes seconds: later tries back off).
    fn add(&mut self, channels: impl IntoIterator<Item = String>) {
        self.channels.extend(channels);
        if self.due.is_none() && !self.channels.is_empty() {
            self.due = Some(tokio::time::Instant::now() + backoff(self.attempt.min(2)));
        }
    }

    fn take(&mut self) -> Vec<String> {
        self.due = None;
        self.channels.drain().collect()
    }

    fn retry_later(&mut self) {
        self.attempt += 1;
        self.due = Some(tokio::time::Instant::now() + backoff(self.attempt.min(4)));
    }

    fn done(&mut self) {
        self.attempt = 0;
    }
}

/// Subscription confirmations the cluster task asked for and has not yet seen.
#[derive(Default)]
struct Expected(HashMap<String, usize>);

impl Expected {
    fn add(&mut self, channel: &str) {
        *self.0.entry(channel.to_owned()).or_insert(0) += 1;
    }

    /// Counts off one confirmation; false when none was expected (the connection
    /// resubscribed by itself).
    fn confirm(&mut self, channel: &str) -> bool {
        match self.0.get_mut(channel) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.0.remove(channel);
            }
            None => return false,
        }
        true
    }

    /// The request failed: its confirmation will not come.
    fn forget(&mut self, channel: &str) {
        self.confirm(channel);
    }
}

/// A push's channel or payload as text.
fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts_subscribe_on_first_and_unsubscribe_on_last() {
        let mut r = Refcounts::default();
        assert!(r.take("a"));
        assert!(!r.take("a"));
        assert!(!r.release("a"));
        assert!(r.contains("a"));
        assert!(r.release("a"));
        assert!(!r.contains("a"));
        assert!(!r.release("a"), "releasing an unknown channel is a no-op");
    }

    #[test]
    fn only_unrequested_confirmations_are_unexpected() {
        let mut e = Expected::default();
        e.add("a");
        e.add("a");
        assert!(e.confirm("a"));
        assert!(e.confirm("a"));
        assert!(!e.confirm("a"), "a third confirmation was not asked for");
        assert!(!e.confirm("b"));
        e.add("c");
        e.forget("c");
        assert!(!e.confirm("c"));
    }
}
