//! The accept loop of both ports, in place of `axum::serve`, which cannot bound how long
//! a connection may take to send its request headers nor how many connections may wait
//! before the upgrade: a client that opens TCP and trickles its headers one byte a
//! second (or never sends them) would hold a socket and a task for ever.
//!
//! Each connection is served by hyper's HTTP/1 with a header-read timeout (it also bounds
//! an idle keep-alive connection waiting for its next request). Connections that have
//! not become a WebSocket session are *pending*; at the cap, the oldest pending one is
//! closed to make room. A real client sends its headers within milliseconds of
//! connecting, so the oldest waiting connection is almost always a slow one, and a flood
//! of them cannot lock real clients out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::sync::lock;

/// Largest request head (request line and headers) hyper buffers; the least it allows.
const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// After a failed `accept` (e.g. out of file descriptors), wait before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds on connections before their upgrade (`CHAT_HEADER_READ_TIMEOUT`,
/// `CHAT_MAX_PENDING_CONNECTIONS`).
#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    /// A request's headers must be complete this long after the connection opened (or
    /// after the previous response on a keep-alive connection).
    pub header_read_timeout: Duration,
    /// Most connections that have not become a WebSocket session.
    pub max_pending: usize,
}

/// Open connections in arrival order, capped: admitting one past the cap evicts the
/// oldest. Pure bookkeeping (the values are whatever the caller needs to close one).
#[derive(Debug)]
pub struct PendingSet<T> {
    max: usize,
    next_id: u64,
    open: BTreeMap<u64, T>,
}

impl<T> PendingSet<T> {
    /// An empty set holding at most `max` (at least 1).
    pub fn new(max: usize) -> Self {
        PendingSet {
            max: max.max(1),
            next_id: 0,
            open: BTreeMap::new(),
        }
    }

    /// Adds a connection; returns its id and, when the set was full, the oldest one's
    /// value, which the caller must close.
    pub fn admit(&mut self, value: T) -> (u64, Option<T>) {
        let evicted = if self.open.len() >= self.max {
            self.open.pop_first().map(|(_, v)| v)
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(id, value);
        (id, evicted)
    }

    /// Forgets a connection (closed or upgraded); a no-op if it was evicted.
    pub fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Pending connections of one port: each one's eviction signal.
struct Pending {
    set: Mutex<PendingSet<Arc<Notify>>>,
    metrics: Metrics,
    /// The `port` label of the pending-connection metrics.
    port: &'static str,
}

impl Pending {
    fn set_gauge(&self, pending: usize) {
        self.metrics
            .pending_connections
            .with_label_values(&[self.port])
            .set(pending as i64);
    }

    fn count_closed(&self, reason: &str) {
        self.metrics
            .pending_closed
            .with_label_values(&[self.port, reason])
            .inc();
    }
}

/// Removes its connection from the pending set when the connection task ends, whichever
/// way (served, upgraded, timed out, evicted, stopped).
struct PendingEntry {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        let mut set = lock(&self.pending.set);
        set.remove(self.id);
        self.pending.set_gauge(set.len());
    }
}

impl Pending {
    fn admit(self: &Arc<Self>) -> (PendingEntry, Arc<Notify>) {
        let evict = Arc::new(Notify::new());
        let (id, evicted) = {
            let mut set = lock(&self.set);
            let admitted = set.admit(evict.clone());
            self.set_gauge(set.len());
            admitted
        };
        if let Some(oldest) = evicted {
            // notify_one keeps a permit if the task has not started waiting yet.
            oldest.notify_one();
        }
        let entry = PendingEntry {
            pending: self.clone(),
            id,
        };
        (entry, evict)
    }
}

/// Serves `router` on `listener` until the node stops. Requests carry
/// [`ConnectInfo<SocketAddr>`] (the TCP peer). `port` labels the metrics.
pub async fn serve(
    port: &'static str,
    listener: TcpListener,
    router: Router,
    limits: PendingLimits,
    drain: Arc<Drain>,
    metrics: Metrics,
) {
    let pending = Arc::new(Pending {
        set: Mutex::new(PendingSet::new(limits.max_pending)),
        metrics,
        port,
    });
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = drain.stopped() => break,
        };
        let _ = tcp.set_nodelay(true);
        let (entry, evicted) = pending.admit();
        tokio::spawn(serve_connection(
            tcp,
            peer,
            router.clone(),
            limits.header_read_timeout,
            entry,
            evicted,
            drain.clone(),
        ));
    }
}

/// One connection: HTTP/1 until it closes or hands its socket to a WebSocket session
/// (hyper's connection future ends at the upgrade, and so does its pending entry).
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_read_timeout: Duration,
    entry: PendingEntry,
    evicted: Arc<Notify>,
    drain: Arc<Drain>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|e| match e {})) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(connection);
    let pending = entry.pending.clone();
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    if e.is_timeout() {
                        pending.count_closed("header_timeout");
                    }
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            _ = evicted.notified() => {
                pending.count_closed("pending_cap");
                tracing::debug!(%peer, "oldest pending connection closed to make room");
                break;
            }
            _ = drain.stopped(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    drop(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitting_past_the_cap_evicts_the_oldest_still_open() {
        let mut set = PendingSet::new(2);
        let (a, none) = set.admit("a");
        assert_eq!(none, None);
        let (b, none) = set.admit("b");
        assert_eq!(none, None);
        // `a` upgraded: there is room again.
        set.remove(a);
        let (_c, none) = set.admit("c");
        assert_eq!(none, None);
        let (_d, evicted) = set.admit("d");
        assert_eq!(evicted, Some("b"));
        assert_eq!(set.len(), 2);
        // Removing an evicted id is harmless.
        set.remove(b);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn a_cap_of_zero_still_admits_one() {
        let mut set = PendingSet::new(0);
        assert_eq!(set.admit(1).1, None);
        assert_eq!(set.admit(2).1, Some(1));
        assert!(!set.is_empty());
    }
}
