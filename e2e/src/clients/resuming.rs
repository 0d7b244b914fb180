//! The one resuming client of the suites and tools: it connects (keeping the load
//! balancer's sticky cookie, waiting between failed attempts as its [`Retry`] says),
//! joins its rooms resuming each from the last message processed ([`Cursors`]), follows
//! drain notices, and on any end of a connection comes back and resumes.
//!
//! What a client *does* with its frames is its user's: the suites' subscriber
//! ([`super::subscriber`]) records messages, the soak client (`tools::soak::client`)
//! publishes and keeps an event log for the exactly-once checker, the storm client
//! counts comebacks, and the load generator's subscribers time each message. They all
//! drive one [`ResumingClient`]:
//!
//! ```text
//! while let Some(welcome) = client.connect().await {
//!     let ended = loop {
//!         match client.next().await {
//!             Ok(received) => { /* record it */ }
//!             Err(ended) => break ended,
//!         }
//!     };
//!     client.pause(&ended).await;
//! }
//! ```

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_server::protocol::ReceivedFrame;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::Value;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::cursors::{must_resync, Cursors, JoinOutcome, Step};
use super::ws::{connect_with, parse_frame, send_json, ConnectOptions, Refused, Ws};

/// How long a client waits before connecting again after a failed attempt or a broken
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A fixed wait, moving on to the next URL: the suites give a client every node's
    /// address, and a drained node answers 503 until it goes.
    Steady(Duration),
    /// What a real client behind a load balancer does: a refusal's `Retry-After` (1 s
    /// without one) plus up to 1 s of jitter, else exponential backoff with full jitter
    /// from 100 ms doubling to 2 s.
    Backoff,
}

/// Everything a [`ResumingClient`] needs to know up front.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Addresses to try, in turn (one load balancer, or several nodes).
    pub urls: Vec<String>,
    pub user: String,
    /// Rooms joined (and resumed) on every connection.
    pub rooms: Vec<String>,
    /// Local address to connect from (a load generator spreads over 127.0.0.x).
    pub source: Option<IpAddr>,
    /// Bound on one connection attempt (TCP, upgrade and `welcome`).
    pub connect_within: Duration,
    pub retry: Retry,
    /// Give up after this many failed attempts in a row (`None`: until stopped).
    pub give_up_after: Option<u32>,
    /// Set to end the client: [`ResumingClient::connect`] returns `None` and
    /// [`ResumingClient::next`] ends with [`Ended::Stop`] within `stop_check`. `None`: a
    /// client its user stops by dropping it (no timer runs while it waits for frames).
    pub stop: Option<Arc<AtomicBool>>,
    /// How often a client waiting for a frame looks at `stop` (and at a drain notice's
    /// deadline). Thousands of clients in one process look less often.
    pub stop_check: Duration,
}

impl ClientOptions {
    /// A client of `user` in `rooms` through `urls`, steady 50 ms retries, 5 s attempts,
    /// no stop flag.
    pub fn new(urls: Vec<String>, user: String, rooms: Vec<String>) -> Self {
        ClientOptions {
            urls,
            user,
            rooms,
            source: None,
            connect_within: Duration::from_secs(5),
            retry: Retry::Steady(Duration::from_millis(50)),
            give_up_after: None,
            stop: None,
            stop_check: Duration::from_millis(100),
        }
    }
}

/// Why a connection ended, which decides how soon to come back ([`ResumingClient::pause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client was told to stop; it closed its connection.
    Stop,
    /// A drain notice asked to come back after this long; the server has since closed.
    ReconnectAfter(Duration),
    /// The server could not fill a gap in live traffic: the client closed, and resuming
    /// on a new connection fills it.
    Resync,
    /// Closed or broken without notice (a killed node, a cut link, a refused send).
    Broken,
}

/// A connection that got as far as `welcome`.
#[derive(Debug, Clone)]
pub struct Welcome {
    /// The node that answered (`welcome.node`).
    pub node: String,
}

/// One frame, after the client has taken it into its cursors.
#[derive(Debug)]
pub enum Received {
    /// A `joined` (answering a join, or unsolicited after history was lost).
    Joined {
        frame: ReceivedFrame,
        outcome: JoinOutcome,
    },
    /// A room `message`, and where it falls against the room's position.
    Message { frame: ReceivedFrame, step: Step },
    /// Any other server frame (a drain notice included: the client keeps reading what
    /// the server still sends until it closes).
    Other(ReceivedFrame),
    /// A text frame that is not a server frame, with the parse error.
    NotAFrame(String),
}

/// Failed connection attempts, as a client's user reports them.
#[derive(Debug, Default, Clone)]
pub struct ConnectFailures {
    /// Upgrades a chat server refused with 503, and how many of those carried
    /// `Retry-After` (all should: it is how a node paces its clients).
    pub refused_503: u64,
    pub with_retry_after: u64,
    /// 503s from a load balancer itself (an HTML error page: no server available).
    pub balancer_503: u64,
    /// Every other failure (refused with another status, timed out, reset).
    pub other: u64,
    /// The last few failures (address and error), for a test's failure message.
    pub recent: VecDeque<String>,
}

/// What kind of failed attempt: a 503 refusal (with its `Retry-After`), or anything else.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Refused(Option<Duration>),
    Other,
}

/// How many failures [`ConnectFailures::recent`] keeps.
const RECENT_FAILURES_KEPT: usize = 5;

/// After a drain notice, how long past its `after_ms` the client keeps reading before
/// it gives up on the server's close.
const NOTICE_GRACE: Duration = Duration::from_secs(2);

/// An open connection and, once one came, the drain notice's wait and deadline.
struct Connection {
    ws: Ws,
    notice: Option<(Duration, Instant)>,
}

/// A client that comes back: see the module doc.
pub struct ResumingClient {
    opts: ClientOptions,
    cookie: Option<String>,
    cursors: Cursors,
    /// The URL to try next (an index into `opts.urls`, wrapping).
    next_url: usize,
    /// Failed attempts in a row.
    failures: u32,
    connection: Option<Connection>,
    stop_check: Interval,
    failed: ConnectFailures,
}

impl ResumingClient {
    pub fn new(opts: ClientOptions) -> Self {
        let mut stop_check = tokio::time::interval(opts.stop_check);
        stop_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ResumingClient {
            opts,
            cookie: None,
            cursors: Cursors::default(),
            next_url: 0,
            failures: 0,
            connection: None,
            stop_check,
            failed: ConnectFailures::default(),
        }
    }

    /// Where the client is in each room.
    pub fn cursors(&self) -> &Cursors {
        &self.cursors
    }

    /// The failed connection attempts so far.
    pub fn connect_failures(&self) -> &ConnectFailures {
        &self.failed
    }

    fn stopped(&self) -> bool {
        self.opts
            .stop
            .as_ref()
            .is_some_and(|stop| stop.load(Ordering::Relaxed))
    }

    /// Connects, trying the URLs in turn and waiting between failed attempts as
    /// [`Retry`] says, then sends a join for every room, resuming from the cursors (the
    /// `joined` frames come through [`Self::next`]). `None` once stopped or given up.
    pub async fn connect(&mut self) -> Option<Welcome> {
        self.connection = None;
        while !self.stopped() {
            if self
                .opts
                .give_up_after
                .is_some_and(|limit| self.failures >= limit)
            {
                return None;
            }
            let url = self
                .opts
                .urls
                .get(self.next_url % self.opts.urls.len().max(1))?
                .clone();
            match self.attempt(&url).await {
                Ok(welcome) => return Some(welcome),
                Err(e) => {
                    let failure = self.record_failure(&url, &e);
                    self.failures += 1;
                    self.next_url += 1;
                    self.sleep(self.after_failure(failure)).await;
                }
            }
        }
        None
    }

    /// One connection attempt at `url`: connect (sending the sticky cookie), then a join
    /// for every room, resuming from the cursors.
    async fn attempt(&mut self, url: &str) -> anyhow::Result<Welcome> {
        let options = ConnectOptions {
            cookie: self.cookie.as_deref(),
            source: self.opts.source,
            within: self.opts.connect_within,
        };
        let query = format!("user={}", self.opts.user);
        let (mut ws, set_cookie, welcome) = connect_with(url, &query, options).await?;
        if let Some(c) = set_cookie {
            self.cookie = Some(c);
        }
        self.failures = 0;
        self.cursors.new_session();
        for room in &self.opts.rooms {
            let join = self.cursors.join(room);
            send_json(&mut ws, join)
                .await
                .map_err(|e| e.context("closed while joining"))?;
        }
        self.connection = Some(Connection { ws, notice: None });
        Ok(Welcome {
            node: welcome["node"].as_str().unwrap_or("").to_owned(),
        })
    }

    /// Counts a failed attempt and says what kind it was.
    fn record_failure(&mut self, url: &str, e: &anyhow::Error) -> Failure {
        if self.failed.recent.len() == RECENT_FAILURES_KEPT {
            self.failed.recent.pop_front();
        }
        self.failed.recent.push_back(format!("{url}: {e:#}"));
        match e.downcast_ref::<Refused>() {
            Some(r) if r.status == 503 && r.html => {
                self.failed.balancer_503 += 1;
                Failure::Refused(r.retry_after)
            }
            Some(r) if r.status == 503 => {
                self.failed.refused_503 += 1;
                if r.retry_after.is_some() {
                    self.failed.with_retry_after += 1;
                }
                Failure::Refused(r.retry_after)
            }
            _ => {
                self.failed.other += 1;
                Failure::Other
            }
        }
    }

    /// The wait after a failed attempt.
    fn after_failure(&self, failure: Failure) -> Duration {
        match (self.opts.retry, failure) {
            (Retry::Steady(wait), _) => wait,
            (Retry::Backoff, Failure::Refused(retry_after)) => {
                retry_after.unwrap_or(Duration::from_secs(1))
                    + Duration::from_millis(rand::rng().random_range(0..1_000))
            }
            (Retry::Backoff, Failure::Other) => backoff(self.failures),
        }
    }

    /// Sleeps `wait`, or less if the client is stopped meanwhile.
    async fn sleep(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stopped() {
            tokio::time::sleep_until(until.min(Instant::now() + self.opts.stop_check)).await;
        }
    }

    /// The wait before the next [`Self::connect`] after a connection ended so.
    pub async fn pause(&mut self, ended: &Ended) {
        let wait = match (ended, self.opts.retry) {
            (Ended::Stop, _) => Duration::ZERO,
            (Ended::ReconnectAfter(after), _) => *after,
            (Ended::Resync, _) => Duration::from_millis(100),
            (Ended::Broken, Retry::Steady(wait)) => wait,
            (Ended::Broken, Retry::Backoff) => backoff(0),
        };
        self.sleep(wait).await;
    }

    /// Sends a frame on the open connection; a failure ends it (the next
    /// [`Self::next`] says [`Ended::Broken`]).
    pub async fn send(&mut self, frame: Value) -> Result<(), Ended> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(Ended::Broken);
        };
        if send_json(&mut connection.ws, frame).await.is_err() {
            self.connection = None;
            return Err(Ended::Broken);
        }
        Ok(())
    }

    /// The next server frame, taken into the cursors, or how the connection ended. After
    /// a drain notice it goes on returning what the server still sends until the server
    /// closes (or the notice's wait plus 2 s pass). Cancel-safe: it can lose a `select!`
    /// without losing a frame.
    pub async fn next(&mut self) -> Result<Received, Ended> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Err(Ended::Broken);
            };
            let notice_deadline = connection.notice.map(|(_, deadline)| deadline);
            // The timer runs only when there is something to look at.
            let watching = self.opts.stop.is_some() || notice_deadline.is_some();
            let message = tokio::select! {
                m = connection.ws.next() => m,
                _ = self.stop_check.tick(), if watching => {
                    if self.stopped() {
                        self.close().await;
                        return Err(Ended::Stop);
                    }
                    if notice_deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(self.end_after_close().await);
                    }
                    continue;
                }
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    return Err(self.end_after_close().await);
                }
                Some(Ok(_)) => continue,
            };
            let frame = match parse_frame(text.as_str()) {
                Ok(frame) => frame,
                Err(e) => return Ok(Received::NotAFrame(format!("{e:#}"))),
            };
            return self.take_in(frame).await;
        }
    }

    /// Takes a frame into the cursors; a gap the server could not fill ends the
    /// connection.
    async fn take_in(&mut self, frame: ReceivedFrame) -> Result<Received, Ended> {
        if must_resync(&frame) {
            self.close().await;
            return Err(Ended::Resync);
        }
        Ok(match frame {
            ReceivedFrame::Joined {
                ref room,
                ref epoch,
                offset,
                recovered,
                ..
            } => {
                let outcome = self.cursors.joined(room, epoch, offset, recovered);
                Received::Joined { frame, outcome }
            }
            ReceivedFrame::Message {
                ref room,
                ref epoch,
                offset,
                ..
            } => {
                let step = self.cursors.message(room, epoch, offset);
                Received::Message { frame, step }
            }
            ReceivedFrame::Reconnect { after_ms, .. } => {
                let after = Duration::from_millis(after_ms);
                if let Some(connection) = self.connection.as_mut() {
                    connection.notice = Some((after, Instant::now() + after + NOTICE_GRACE));
                }
                Received::Other(frame)
            }
            other => Received::Other(other),
        })
    }

    /// The connection is over: answers the server's close (as a well-behaved client
    /// does) and says whether a drain notice came first.
    async fn end_after_close(&mut self) -> Ended {
        let Some(mut connection) = self.connection.take() else {
            return Ended::Broken;
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), connection.ws.flush()).await;
        match connection.notice {
            Some((after, _)) => Ended::ReconnectAfter(after),
            None => Ended::Broken,
        }
    }

    /// Closes the open connection, if any (bounded: a dead peer does not hold it up).
    pub async fn close(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), connection.ws.close(None)).await;
        }
    }
}

/// Exponential backoff with full jitter after `failures` failed attempts in a row:
/// up to 100 ms doubling to at most 2 s.
fn backoff(failures: u32) -> Duration {
    let cap = (100u64 << failures.min(5)).min(2_000);
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_up_to_2_s() {
        for failures in 0..10 {
            let cap = (100u64 << failures.min(5)).min(2_000);
            for _ in 0..50 {
                assert!(backoff(failures) <= Duration::from_millis(cap));
            }
        }
        assert!((0..200).any(|_| backoff(9) > Duration::from_millis(1_600)));
    }
}
