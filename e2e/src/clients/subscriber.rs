//! The suites' subscriber: a [`ResumingClient`] that records every message it gets, in
//! arrival order and by offset, in a log the test reads while it runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::protocol::ReceivedFrame;
use chat_server::sync::lock;

use super::resuming::{ClientOptions, Ended, Received, ResumingClient};

/// What a resuming subscriber saw, shared with the test.
#[derive(Debug, Default)]
pub struct SubscriberLog {
    /// room → offset → body, as delivered (a duplicate offset is recorded in `duplicates`).
    pub messages: HashMap<String, BTreeMap<u64, String>>,
    /// room → (epoch, offset) of every message, in the order they arrived.
    pub arrivals: HashMap<String, Vec<(String, u64)>>,
    pub duplicates: u64,
    /// Joins answered with `recovered: false` (or unsolicited ones).
    pub not_recovered: u64,
    /// `joined` frames received (one per room per (re)connection): a test waits for the
    /// subscriber's rooms to be joined instead of guessing with a sleep.
    pub joins: u64,
    pub reconnects: u64,
    /// When each reconnect happened (for the reconnect-rate figure).
    pub reconnect_times: Vec<Instant>,
    pub longest_disconnect: Duration,
    /// The node of every connection, in order.
    pub nodes_seen: Vec<String>,
    pub errors: Vec<String>,
    /// The last few failed connection attempts (address and error), for a test's
    /// failure message.
    pub connect_failures: VecDeque<String>,
}

/// The first message of a room that arrived out of offset order, if any: within an
/// epoch every message must come after the one before it.
pub fn out_of_order(arrivals: &[(String, u64)]) -> Option<String> {
    arrivals.windows(2).find_map(|pair| {
        let ((epoch_a, a), (epoch_b, b)) = (&pair[0], &pair[1]);
        (epoch_a == epoch_b && b <= a).then(|| format!("offset {b} arrived after {a} ({epoch_b})"))
    })
}

impl SubscriberLog {
    /// The first message, in any room, that arrived out of offset order.
    pub fn first_disorder(&self) -> Option<String> {
        self.arrivals
            .iter()
            .find_map(|(room, arrivals)| out_of_order(arrivals).map(|d| format!("{room}: {d}")))
    }
}

/// How many failed connection attempts in a row end a subscriber.
const GIVE_UP_AFTER: u32 = 200;

/// Runs a subscriber until `stop` is set: joins `rooms`, records every message, and on a
/// drain notice or lost connection reconnects (honouring `after_ms`, keeping the sticky
/// cookie) and resumes each room with `since`. It starts on the first of `urls` (one load
/// balancer, or several addresses) and moves on to the next whenever a connection
/// attempt fails (e.g. a drained node answering 503).
pub async fn run_resuming_subscriber_over(
    urls: Vec<String>,
    user: String,
    rooms: Vec<String>,
    log: Arc<Mutex<SubscriberLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut client = ResumingClient::new(ClientOptions {
        give_up_after: Some(GIVE_UP_AFTER),
        stop: Some(stop),
        ..ClientOptions::new(urls, user, rooms)
    });
    let mut disconnected_at: Option<Instant> = None;
    loop {
        let welcome = client.connect().await;
        lock(&log).connect_failures = client.connect_failures().recent.clone();
        let Some(welcome) = welcome else { return };
        {
            let mut l = lock(&log);
            l.nodes_seen.push(welcome.node);
            if let Some(t) = disconnected_at.take() {
                l.longest_disconnect = l.longest_disconnect.max(t.elapsed());
                l.reconnects += 1;
                l.reconnect_times.push(Instant::now());
            }
        }
        let ended = loop {
            match client.next().await {
                Ok(received) => record(&log, received),
                Err(ended) => break ended,
            }
        };
        match ended {
            Ended::Stop => return,
            Ended::Resync => lock(&log)
                .errors
                .push("unavailable: a gap the server could not fill".into()),
            Ended::ReconnectAfter(_) | Ended::Broken => {}
        }
        disconnected_at.get_or_insert_with(Instant::now);
        client.pause(&ended).await;
    }
}

/// Records one frame in the log.
fn record(log: &Mutex<SubscriberLog>, received: Received) {
    let mut l = lock(log);
    match received {
        Received::Joined {
            frame: ReceivedFrame::Joined { recovered, .. },
            ..
        } => {
            l.joins += 1;
            if !recovered {
                l.not_recovered += 1;
            }
        }
        Received::Message {
            frame:
                ReceivedFrame::Message {
                    room,
                    epoch,
                    offset,
                    body,
                    ..
                },
            ..
        } => {
            l.arrivals
                .entry(room.clone())
                .or_default()
                .push((epoch, offset));
            let seen = l.messages.entry(room).or_default();
            if seen.insert(offset, body).is_some() {
                l.duplicates += 1;
            }
        }
        Received::Other(error @ ReceivedFrame::Error { .. }) => l.errors.push(format!("{error:?}")),
        Received::NotAFrame(e) => l.errors.push(e),
        Received::Joined { .. } | Received::Message { .. } | Received::Other(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, offset: u64) -> (String, u64) {
        (epoch.to_owned(), offset)
    }

    #[test]
    fn offsets_must_rise_within_an_epoch() {
        assert_eq!(out_of_order(&[at("e1", 1), at("e1", 2), at("e2", 1)]), None);
        assert_eq!(out_of_order(&[]), None);
        assert_eq!(
            out_of_order(&[at("e1", 1), at("e1", 3), at("e1", 2)]).as_deref(),
            Some("offset 2 arrived after 3 (e1)")
        );
        assert!(out_of_order(&[at("e1", 4), at("e1", 4)]).is_some());
    }
}
