//! The command connection (one Redis, or a Redis Cluster routed by slot) and the two
//! tasks that keep the node's view of Redis current: the connection/PING task and the
//! heartbeat.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::RedisBackplane;
use crate::sync::{read, write};

/// Where the backplane's Redis is. One per process, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Target {
    Single(redis::Client),
    /// Commands go through `commands`; `pubsub` speaks RESP3 and hands every push
    /// (sharded messages, subscription changes, disconnections) to the pub/sub task.
    Cluster {
        commands: ClusterClient,
        pubsub: ClusterClient,
    },
}

/// A command connection of either kind; both reconnect by themselves once established
/// (the cluster one also follows `MOVED`/`ASK` and refreshes its slot map).
#[derive(Clone)]
pub(super) enum CommandConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for CommandConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            CommandConnection::Single(c) => c.req_packed_command(cmd),
            CommandConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            CommandConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            CommandConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            CommandConnection::Single(c) => c.get_db(),
            CommandConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// How long one command may take before it counts as failed, and how long connecting
/// may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

async fn connect(target: &Target) -> redis::RedisResult<CommandConnection> {
    match target {
        Target::Single(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(COMMAND_TIMEOUT);
            client
                .get_connection_manager_with_config(config)
                .await
                .map(CommandConnection::Single)
        }
        Target::Cluster { commands, .. } => commands
            .get_async_connection()
            .await
            .map(CommandConnection::Cluster),
    }
}

/// Reconnect delays: 100 ms doubling to 5 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}

/// Establishes the command connection (which then reconnects by itself) and keeps
/// `commands_ok` current with a PING every second.
pub(super) async fn command_connection_task(bp: Weak<RedisBackplane>) {
    let mut attempt = 0;
    loop {
        let Some(b) = bp.upgrade() else { return };
        let needs_connection = read(&b.conn).is_none();
        if needs_connection {
            match connect(&b.target).await {
                Ok(conn) => {
                    *write(&b.conn) = Some(conn);
                    attempt = 0;
                    tracing::info!(cluster = b.cluster(), "connected to Redis");
                }
                Err(e) => {
                    b.commands_ok.store(false, Ordering::Relaxed);
                    let error = b.record_error("connect", e);
                    tracing::warn!(%error, "Redis unreachable; retrying");
                    drop(b);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            }
        }
        if let Ok(mut conn) = b.connection() {
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
            let ok = pong.is_ok();
            if let Err(e) = pong {
                b.record_error("PING", e);
            }
            if ok != b.commands_ok.swap(ok, Ordering::Relaxed) {
                tracing::info!(ok, "Redis command connection health changed");
            }
        }
        drop(b);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Refreshes this node's liveness key every third of the presence TTL.
pub(super) async fn heartbeat_task(bp: Weak<RedisBackplane>) {
    loop {
        let Some(b) = bp.upgrade() else { return };
        let every = match b.heartbeat().await {
            Ok(()) => {
                b.alive.store(true, Ordering::Relaxed);
                (b.presence_ttl / 3).max(Duration::from_millis(200))
            }
            Err(e) => {
                b.alive.store(false, Ordering::Relaxed);
                tracing::debug!(error = %e, "heartbeat failed");
                Duration::from_millis(250)
            }
        };
        drop(b);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), Duration::from_millis(5_000));
    }
}
