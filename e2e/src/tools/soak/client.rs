//! One soak client: a user in several rooms that publishes to them, sends direct
//! messages, and on every reconnect (drain notice, lost connection, gap error) comes back
//! through the load balancer and resumes each room with `since`, as a real client does
//! (the suites' one [`ResumingClient`], with backoff). It records everything in a
//! [`ClientLog`] for the checker.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::protocol::ReceivedFrame;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::log::{ClientLog, Event, Millis};
use crate::clients::resuming::{ClientOptions, Ended, Received, ResumingClient, Retry};

/// What one client does.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub user: String,
    pub rooms: Vec<String>,
    /// Users it sends direct messages to, in turn.
    pub dm_peers: Vec<String>,
    pub publish_every: Duration,
    pub dm_every: Duration,
    pub source: Option<IpAddr>,
    pub seed: u64,
}

/// Shared switches of the run.
#[derive(Debug)]
pub struct Controls {
    pub started: Instant,
    /// Clients publish and send DMs while this is set.
    pub publishing: AtomicBool,
    /// Clients close their session and return their log once this is set.
    pub stop: Arc<AtomicBool>,
    /// Sessions with every room joined (the run settles when all clients have one).
    pub ready_sessions: AtomicUsize,
    /// When the last room message arrived at any client (ms since the start).
    pub last_message_at: AtomicU64,
}

impl Controls {
    pub fn new() -> Controls {
        Controls {
            started: Instant::now(),
            publishing: AtomicBool::new(true),
            stop: Arc::new(AtomicBool::new(false)),
            ready_sessions: AtomicUsize::new(0),
            last_message_at: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(Millis::MAX)
    }
}

impl Default for Controls {
    fn default() -> Self {
        Self::new()
    }
}

/// A `send` or `dm` waiting for its answer.
struct Pending {
    body: String,
    dm_to: Option<String>,
    sent_at: Millis,
}

struct Client<'a> {
    spec: &'a ClientSpec,
    ctl: &'a Controls,
    log: ClientLog,
    seq: u64,
    rng: rand::rngs::StdRng,
}

/// Runs the client until `ctl.stop`; returns what it recorded.
pub async fn run_client(url: String, spec: ClientSpec, ctl: Arc<Controls>) -> ClientLog {
    let ctl = ctl.as_ref();
    let mut connection = ResumingClient::new(ClientOptions {
        source: spec.source,
        retry: Retry::Backoff,
        stop: Some(ctl.stop.clone()),
        ..ClientOptions::new(vec![url], spec.user.clone(), spec.rooms.clone())
    });
    let mut c = Client {
        spec: &spec,
        ctl,
        log: ClientLog {
            user: spec.user.clone(),
            events: Vec::new(),
        },
        seq: 0,
        rng: rand::rngs::StdRng::seed_from_u64(spec.seed),
    };
    while let Some(welcome) = connection.connect().await {
        c.log.events.push(Event::Connected {
            at: ctl.now(),
            node: welcome.node,
        });
        let ended = c.session(&mut connection).await;
        if ended == Ended::Stop {
            break;
        }
        connection.pause(&ended).await;
    }
    c.log
}

impl Client<'_> {
    /// One session (its joins are sent): publish, send DMs and record until it ends.
    async fn session(&mut self, connection: &mut ResumingClient) -> Ended {
        let mut joined: HashSet<String> = HashSet::new();
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut ready = false;
        // After a drain notice the client only reads what the server still sends.
        let mut notified = false;
        // Clients start their timers at random phases so sends spread evenly.
        let phase = |every: Duration, rng: &mut rand::rngs::StdRng| {
            tokio::time::Instant::now() + every.mul_f64(rng.random_range(0.0..1.0))
        };
        let mut publish = tokio::time::interval_at(
            phase(self.spec.publish_every, &mut self.rng),
            self.spec.publish_every,
        );
        let mut dm =
            tokio::time::interval_at(phase(self.spec.dm_every, &mut self.rng), self.spec.dm_every);
        let ended = loop {
            let all_joined = joined.len() == self.spec.rooms.len();
            if all_joined && !ready {
                ready = true;
                self.ctl.ready_sessions.fetch_add(1, Ordering::Relaxed);
            }
            let publishing = all_joined && !notified && self.ctl.publishing.load(Ordering::Relaxed);
            tokio::select! {
                _ = publish.tick(), if publishing => {
                    let (r, body, frame) = self.next_room_message();
                    if let Err(ended) = self.send_tracked(connection, &mut pending, r, body, None, frame).await {
                        break ended;
                    }
                }
                _ = dm.tick(), if publishing && !self.spec.dm_peers.is_empty() => {
                    let (r, body, to, frame) = self.next_dm();
                    if let Err(ended) = self.send_tracked(connection, &mut pending, r, body, Some(to), frame).await {
                        break ended;
                    }
                }
                received = connection.next() => match received {
                    Ok(Received::Other(ReceivedFrame::Reconnect { .. })) => notified = true,
                    Ok(received) => self.on_frame(received, &mut joined, &mut pending),
                    Err(ended) => break ended,
                },
            }
        };
        if ready {
            self.ctl.ready_sessions.fetch_sub(1, Ordering::Relaxed);
        }
        let at = self.ctl.now();
        if ended == Ended::Resync {
            self.log.events.push(Event::GapUnavailable { at });
        }
        for (_, p) in pending.drain() {
            self.log.events.push(Event::Unanswered { body: p.body });
        }
        self.log.events.push(Event::Disconnected { at });
        ended
    }

    /// The next room message, to the client's rooms in turn: its `ref`, body and frame.
    fn next_room_message(&mut self) -> (String, String, Value) {
        self.seq += 1;
        let room = &self.spec.rooms[(self.seq as usize) % self.spec.rooms.len()];
        let body = format!("{}:{}", self.spec.user, self.seq);
        let r = format!("m{}", self.seq);
        let frame = json!({"type":"send","room":room,"body":body,"ref":r});
        (r, body, frame)
    }

    /// The next direct message, to the client's peers in turn: its `ref`, body,
    /// recipient and frame. DM bodies start with `dm:` (the checker tells them from room
    /// messages so).
    fn next_dm(&mut self) -> (String, String, String, Value) {
        self.seq += 1;
        let to = self.spec.dm_peers[(self.seq as usize) % self.spec.dm_peers.len()].clone();
        let body = format!("dm:{}:{}", self.spec.user, self.seq);
        let r = format!("d{}", self.seq);
        let frame = json!({"type":"dm","to":to,"body":body,"ref":r});
        (r, body, to, frame)
    }

    /// Remembers a frame as waiting for its answer (under `ref` `r`), then sends it.
    async fn send_tracked(
        &mut self,
        connection: &mut ResumingClient,
        pending: &mut HashMap<String, Pending>,
        r: String,
        body: String,
        dm_to: Option<String>,
        frame: Value,
    ) -> Result<(), Ended> {
        let sent_at = self.ctl.now();
        pending.insert(
            r,
            Pending {
                body,
                dm_to,
                sent_at,
            },
        );
        connection.send(frame).await
    }

    /// Records one frame.
    fn on_frame(
        &mut self,
        received: Received,
        joined: &mut HashSet<String>,
        pending: &mut HashMap<String, Pending>,
    ) {
        let frame = match received {
            Received::Joined {
                frame:
                    ReceivedFrame::Joined {
                        room,
                        epoch,
                        offset,
                        recovered,
                        ..
                    },
                outcome,
            } => {
                joined.insert(room.clone());
                self.log.events.push(Event::Joined {
                    room,
                    epoch,
                    offset,
                    recovered,
                    since: outcome.since.map(|p| (p.epoch, p.offset)),
                });
                return;
            }
            Received::Joined { .. } | Received::NotAFrame(_) => return,
            Received::Message { frame, .. } | Received::Other(frame) => frame,
        };
        match frame {
            ReceivedFrame::Message {
                room,
                epoch,
                offset,
                body,
                ..
            } => {
                self.ctl
                    .last_message_at
                    .store(self.ctl.now(), Ordering::Relaxed);
                self.log.events.push(Event::Message {
                    room,
                    epoch,
                    offset,
                    body,
                });
            }
            ReceivedFrame::Ack {
                client_ref,
                room,
                offset,
            } => {
                let Some(p) = client_ref.and_then(|r| pending.remove(&r)) else {
                    return;
                };
                let event = match p.dm_to {
                    Some(to) => Event::DmAcked {
                        to,
                        body: p.body,
                        sent_at: p.sent_at,
                        acked_at: self.ctl.now(),
                    },
                    None => Event::Acked {
                        room: room.unwrap_or_default(),
                        offset: offset.unwrap_or(0),
                        body: p.body,
                    },
                };
                self.log.events.push(event);
            }
            ReceivedFrame::Dm { from, body, .. } => {
                self.log.events.push(Event::DmReceived { from, body })
            }
            ReceivedFrame::Error {
                code, client_ref, ..
            } => {
                if let Some(p) = client_ref.and_then(|r| pending.remove(&r)) {
                    self.log.events.push(Event::Refused {
                        body: p.body,
                        code: code.name(),
                    });
                }
            }
            _ => {}
        }
    }
}
