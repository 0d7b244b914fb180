//! One soak client: a user in several rooms that publishes to them, sends direct
//! messages, and on every reconnect (drain notice, lost connection, gap error) comes back
//! through the load balancer and resumes each room with `since`, as a real client does.
//! It records everything in a [`ClientLog`] for the checker.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::protocol::ReceivedFrame;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::log::{ClientLog, Event, Millis};
use crate::clients::cursors::{must_resync, Cursors};
use crate::clients::ws::{connect_with, parse_frame, send_json, ConnectOptions, Ws};

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
    pub stop: AtomicBool,
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
            stop: AtomicBool::new(false),
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

/// Why a session ended, which decides how soon to reconnect.
enum Ended {
    Stop,
    /// The server asked to come back after this long (drain notice).
    ReconnectAfter(Duration),
    /// The node could not fill a gap in live traffic: reconnecting and resuming fills it.
    Resync,
    Broken,
}

struct Client<'a> {
    url: &'a str,
    spec: &'a ClientSpec,
    ctl: &'a Controls,
    log: ClientLog,
    /// Where to resume each room from.
    cursors: Cursors,
    cookie: Option<String>,
    seq: u64,
    rng: rand::rngs::StdRng,
}

/// Runs the client until `ctl.stop`; returns what it recorded.
pub async fn run_client(url: String, spec: ClientSpec, ctl: Arc<Controls>) -> ClientLog {
    let ctl = ctl.as_ref();
    let mut c = Client {
        url: &url,
        spec: &spec,
        ctl,
        log: ClientLog {
            user: spec.user.clone(),
            events: Vec::new(),
        },
        cursors: Cursors::default(),
        cookie: None,
        seq: 0,
        rng: rand::rngs::StdRng::seed_from_u64(spec.seed),
    };
    let mut failures = 0u32;
    while !ctl.stop.load(Ordering::Relaxed) {
        let ended = match c.connect().await {
            Some(ws) => {
                failures = 0;
                c.session(ws).await
            }
            None => {
                failures += 1;
                Ended::Broken
            }
        };
        let wait = match ended {
            Ended::Stop => break,
            Ended::ReconnectAfter(d) => d,
            Ended::Resync => Duration::from_millis(100),
            // Exponential backoff with full jitter: 100 ms doubling to 2 s.
            Ended::Broken => {
                let cap = 100u64 << failures.min(5);
                Duration::from_millis(c.rng.random_range(50..=cap.min(2_000)))
            }
        };
        tokio::time::sleep(wait).await;
    }
    c.log
}

impl Client<'_> {
    async fn connect(&mut self) -> Option<Ws> {
        let opts = ConnectOptions {
            cookie: self.cookie.as_deref(),
            source: self.spec.source,
            within: Duration::from_secs(5),
        };
        let (ws, set_cookie, welcome) =
            connect_with(self.url, &format!("user={}", self.spec.user), opts)
                .await
                .ok()?;
        if let Some(c) = set_cookie {
            self.cookie = Some(c);
        }
        self.log.events.push(Event::Connected {
            at: self.ctl.now(),
            node: welcome["node"].as_str().unwrap_or("").to_owned(),
        });
        Some(ws)
    }

    /// One session: join (resume) every room, then publish, send DMs and record until it
    /// ends.
    async fn session(&mut self, mut ws: Ws) -> Ended {
        let mut joined: HashSet<String> = HashSet::new();
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut ready = false;
        let ended = 'session: {
            self.cursors.new_session();
            for room in &self.spec.rooms {
                let frame = self.cursors.join(room);
                if send_json(&mut ws, frame).await.is_err() {
                    break 'session Ended::Broken;
                }
            }
            // Clients start their timers at random phases so sends spread evenly.
            let phase = |every: Duration, rng: &mut rand::rngs::StdRng| {
                tokio::time::Instant::now() + every.mul_f64(rng.random_range(0.0..1.0))
            };
            let mut publish = tokio::time::interval_at(
                phase(self.spec.publish_every, &mut self.rng),
                self.spec.publish_every,
            );
            let mut dm = tokio::time::interval_at(
                phase(self.spec.dm_every, &mut self.rng),
                self.spec.dm_every,
            );
            let mut check_stop = tokio::time::interval(Duration::from_millis(100));
            loop {
                let all_joined = joined.len() == self.spec.rooms.len();
                if all_joined && !ready {
                    ready = true;
                    self.ctl.ready_sessions.fetch_add(1, Ordering::Relaxed);
                }
                let publishing = all_joined && self.ctl.publishing.load(Ordering::Relaxed);
                tokio::select! {
                    _ = publish.tick(), if publishing => {
                        if self.send_room_message(&mut ws, &mut pending).await.is_err() {
                            break 'session Ended::Broken;
                        }
                    }
                    _ = dm.tick(), if publishing && !self.spec.dm_peers.is_empty() => {
                        if self.send_dm(&mut ws, &mut pending).await.is_err() {
                            break 'session Ended::Broken;
                        }
                    }
                    _ = check_stop.tick() => {
                        if self.ctl.stop.load(Ordering::Relaxed) {
                            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                            break 'session Ended::Stop;
                        }
                    }
                    frame = ws.next() => {
                        let text = match frame {
                            Some(Ok(Message::Text(t))) => t,
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                                // Answer the server's close, as a well-behaved client does.
                                let _ = tokio::time::timeout(Duration::from_millis(500), ws.flush()).await;
                                break 'session Ended::Broken;
                            }
                            Some(Ok(_)) => continue,
                        };
                        let Ok(frame) = parse_frame(text.as_str()) else {
                            continue;
                        };
                        if let Some(end) = self.on_frame(frame, &mut joined, &mut pending) {
                            if matches!(end, Ended::Resync) {
                                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                            }
                            if let Ended::ReconnectAfter(d) = end {
                                self.read_until_close(&mut ws, d, &mut joined, &mut pending).await;
                            }
                            break 'session end;
                        }
                    }
                }
            }
        };
        if ready {
            self.ctl.ready_sessions.fetch_sub(1, Ordering::Relaxed);
        }
        let at = self.ctl.now();
        for (_, p) in pending.drain() {
            self.log.events.push(Event::Unanswered { body: p.body });
        }
        self.log.events.push(Event::Disconnected { at });
        ended
    }

    /// After a drain notice the server sends what is still queued, then closes: record
    /// all of it (for at most `after` plus 2 s), so nothing already sent is missed.
    async fn read_until_close(
        &mut self,
        ws: &mut Ws,
        after: Duration,
        joined: &mut HashSet<String>,
        pending: &mut HashMap<String, Pending>,
    ) {
        let _ = tokio::time::timeout(after + Duration::from_secs(2), async {
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                if let Ok(frame) = parse_frame(t.as_str()) {
                    self.on_frame(frame, joined, pending);
                }
            }
        })
        .await;
    }

    /// Sends the next room message, to the client's rooms in turn.
    async fn send_room_message(
        &mut self,
        ws: &mut Ws,
        pending: &mut HashMap<String, Pending>,
    ) -> anyhow::Result<()> {
        self.seq += 1;
        let room = &self.spec.rooms[(self.seq as usize) % self.spec.rooms.len()];
        let body = format!("{}:{}", self.spec.user, self.seq);
        let r = format!("m{}", self.seq);
        let frame = json!({"type":"send","room":room,"body":body,"ref":r});
        self.send_tracked(ws, pending, r, body, None, frame).await
    }

    /// Sends the next direct message, to the client's peers in turn. DM bodies start with
    /// `dm:` (the checker tells them from room messages so).
    async fn send_dm(
        &mut self,
        ws: &mut Ws,
        pending: &mut HashMap<String, Pending>,
    ) -> anyhow::Result<()> {
        self.seq += 1;
        let to = self.spec.dm_peers[(self.seq as usize) % self.spec.dm_peers.len()].clone();
        let body = format!("dm:{}:{}", self.spec.user, self.seq);
        let r = format!("d{}", self.seq);
        let frame = json!({"type":"dm","to":to,"body":body,"ref":r});
        self.send_tracked(ws, pending, r, body, Some(to), frame)
            .await
    }

    /// Remembers a frame as waiting for its answer (under `ref` `r`), then sends it.
    async fn send_tracked(
        &mut self,
        ws: &mut Ws,
        pending: &mut HashMap<String, Pending>,
        r: String,
        body: String,
        dm_to: Option<String>,
        frame: Value,
    ) -> anyhow::Result<()> {
        let sent_at = self.ctl.now();
        pending.insert(
            r,
            Pending {
                body,
                dm_to,
                sent_at,
            },
        );
        send_json(ws, frame).await
    }

    /// Records one frame; returns how the session ends if this frame ends it.
    fn on_frame(
        &mut self,
        frame: ReceivedFrame,
        joined: &mut HashSet<String>,
        pending: &mut HashMap<String, Pending>,
    ) -> Option<Ended> {
        match frame {
            ReceivedFrame::Joined {
                room,
                epoch,
                offset,
                recovered,
                ..
            } => {
                let since = self.cursors.joined(&room, &epoch, offset, recovered).since;
                joined.insert(room.clone());
                self.log.events.push(Event::Joined {
                    room,
                    epoch,
                    offset,
                    recovered,
                    since: since.map(|p| (p.epoch, p.offset)),
                });
            }
            ReceivedFrame::Message {
                room,
                epoch,
                offset,
                body,
                ..
            } => {
                self.cursors.message(&room, &epoch, offset);
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
                let p = pending.remove(&client_ref?)?;
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
            frame if must_resync(&frame) => {
                self.log
                    .events
                    .push(Event::GapUnavailable { at: self.ctl.now() });
                return Some(Ended::Resync);
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
            ReceivedFrame::Reconnect { after_ms, .. } => {
                return Some(Ended::ReconnectAfter(Duration::from_millis(after_ms)));
            }
            _ => {}
        }
        None
    }
}
