//! The accept loop of both ports, in place of `axum::serve`, which cannot bound how long
//! a connection may take to send its request headers nor how many connections may wait
//! before the upgrade: a client that opens TCP and trickles its headers one byte a
//! second (or never sends them) would hold a socket and a task for ever.
//!
//! Each connection is served by hyper's HTTP/1 with a header-read timeout (it also bounds
//! an idle keep-alive connection waiting for its next request). Connections that have
//! not yet sent a complete request head are *pending*; at the cap, one is closed to make
//! room: the oldest of the peer address holding the most pending connections. A real
//! client sends its head within milliseconds of connecting, so it is rarely pending for
//! long, and a flood from a few addresses evicts its own connections first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::sync::lock;

/// Largest request head (request line and headers) hyper buffers: room for large cookies
/// and a `?token=` JWT.
const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// After a failed `accept` (e.g. out of file descriptors), wait before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds on connections before their upgrade (`CHAT_HEADER_READ_TIMEOUT`,
/// `CHAT_MAX_PENDING_CONNECTIONS`).
#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    /// A request's headers must be complete this long after the connection opened (or
    /// after the previous response on a keep-alive connection).
    pub header_read_timeout: Duration,
    /// Most connections (per port) that have not yet sent a complete request head.
    pub max_pending: usize,
}

/// Open connections in arrival order with their source, capped: admitting one past the
/// cap evicts the oldest connection of the source with the most. Pure bookkeeping (the
/// values are whatever the caller needs to close one).
#[derive(Debug)]
pub struct PendingSet<K, T> {
    max: usize,
    next_id: u64,
    open: BTreeMap<u64, (K, T)>,
    by_source: HashMap<K, BTreeSet<u64>>,
}

impl<K: Copy + Eq + Hash, T> PendingSet<K, T> {
    /// An empty set holding at most `max` (at least 1).
    pub fn new(max: usize) -> Self {
        PendingSet {
            max: max.max(1),
            next_id: 0,
            open: BTreeMap::new(),
            by_source: HashMap::new(),
        }
    }

    /// Adds a connection from `source`; returns its id and, when the set was full, the
    /// value of the connection evicted to make room, which the caller must close.
    pub fn admit(&mut self, source: K, value: T) -> (u64, Option<T>) {
        let evicted = if self.open.len() >= self.max {
            self.heaviest_oldest().and_then(|id| self.take(id))
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(id, (source, value));
        self.by_source.entry(source).or_default().insert(id);
        (id, evicted)
    }

    /// Forgets a connection (its head arrived, or it closed); a no-op if it was evicted.
    pub fn remove(&mut self, id: u64) {
        self.take(id);
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// The oldest connection of the source holding the most (ties: the oldest of them).
    fn heaviest_oldest(&self) -> Option<u64> {
        self.by_source
            .values()
            .filter_map(|ids| Some((ids.len(), *ids.first()?)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, oldest)| oldest)
    }

    fn take(&mut self, id: u64) -> Option<T> {
        let (source, value) = self.open.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some(value)
    }
}

/// Pending connections of one port: each one's peer address and eviction signal, and
/// this port's metric series (looked up once, not per connection).
struct Pending {
    set: Mutex<PendingSet<IpAddr, Arc<Notify>>>,
    gauge: IntGauge,
    closed_header_timeout: IntCounter,
    closed_pending_cap: IntCounter,
}

impl Pending {
    /// `port` labels the metrics.
    fn new(port: &str, max_pending: usize, metrics: &Metrics) -> Self {
        let closed = |reason| metrics.pending_closed.with_label_values(&[port, reason]);
        Pending {
            set: Mutex::new(PendingSet::new(max_pending)),
            gauge: metrics.pending_connections.with_label_values(&[port]),
            closed_header_timeout: closed("header_timeout"),
            closed_pending_cap: closed("pending_cap"),
        }
    }

    fn set_gauge(&self, pending: usize) {
        self.gauge.set(pending as i64);
    }
}

/// A connection's place in the pending set: left when its first request head arrives,
/// and in any case when the connection task ends (timed out, evicted, closed, stopped).
struct PendingEntry {
    pending: Arc<Pending>,
    id: u64,
}

impl PendingEntry {
    fn leave(&self) {
        let mut set = lock(&self.pending.set);
        set.remove(self.id);
        self.pending.set_gauge(set.len());
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Pending {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> (PendingEntry, Arc<Notify>) {
        let evict = Arc::new(Notify::new());
        let (id, evicted) = {
            let mut set = lock(&self.set);
            let admitted = set.admit(peer, evict.clone());
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
    let pending = Arc::new(Pending::new(port, limits.max_pending, &metrics));
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
        let (entry, evicted) = pending.admit(peer.ip());
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
    let entry = Arc::new(entry);
    let head_arrived = entry.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // The head is complete: no longer pending (a later keep-alive wait is bounded by
        // the header-read timeout alone).
        head_arrived.leave();
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
                        pending.closed_header_timeout.inc();
                    }
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            _ = evicted.notified() => {
                pending.closed_pending_cap.inc();
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
    fn past_the_cap_the_heaviest_source_loses_its_oldest() {
        let mut set = PendingSet::new(4);
        let (real, _) = set.admit("real", "r1");
        let (f1, _) = set.admit("flood", "f1");
        set.admit("flood", "f2");
        set.admit("other", "o1");
        // Full: the flood holds the most, so its oldest goes, not the real client's
        // older connection.
        assert_eq!(set.admit("flood", "f3").1, Some("f1"));
        assert_eq!(set.admit("real", "r2").1, Some("f2"));
        // Now every source holds one or two: real (2) loses its oldest.
        assert_eq!(set.admit("other", "o2").1, Some("r1"));
        assert_eq!(set.len(), 4);
        // Removing evicted or unknown ids is harmless.
        set.remove(f1);
        set.remove(real);
        set.remove(999);
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn ties_evict_the_oldest_and_removal_makes_room() {
        let mut set = PendingSet::new(2);
        assert_eq!(set.len(), 0);
        let (a, _) = set.admit(1, "a");
        set.admit(2, "b");
        assert_eq!(set.admit(3, "c").1, Some("a"));
        set.remove(a);
        let mut set = PendingSet::new(2);
        let (a, _) = set.admit(1, "a");
        set.admit(2, "b");
        set.remove(a);
        assert_eq!(set.admit(3, "c").1, None);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn a_cap_of_zero_still_admits_one() {
        let mut set = PendingSet::new(0);
        assert_eq!(set.admit('x', 1).1, None);
        assert_eq!(set.admit('y', 2).1, Some(1));
    }
}
