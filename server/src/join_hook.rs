//! The join hook: for a `grant` room that the connection token does not grant, the
//! server can ask the application's backend. A POST of `{"user", "room", "action":
//! "join", "ts"}` signed with HMAC-SHA256 (`X-Chat-Signature: sha256=<hex>` over the
//! raw body; `ts` lets the backend refuse replays), answered by `200 {"allow": true}` or
//! `{"allow": false}` (403 and 404 also mean no). The signature authenticates the chat
//! server to the backend, not the answer to the server: where the network between them
//! is not trusted, use an https hook (`CHAT_JOIN_HOOK_CA_FILE` for a private CA).
//!
//! Bounded on every side: one timeout per call, at most `concurrency` calls in flight
//! (a join past it fails like a hook error rather than queueing), answers cached for a
//! short time in a map of bounded size. Fail-closed by default: a hook that errs or times
//! out refuses the join, unless `fail_open` is set; a hook too busy to be asked always
//! refuses it (any client could keep it busy).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::http_client::{HttpClient, Url};
use crate::metrics::Metrics;
pub use crate::signature::sign;
use crate::sync::lock;

/// Most (user, room) answers kept.
pub const MAX_CACHED: usize = 10_000;
/// Largest answer read from the hook.
const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// The hook's configuration (`CHAT_JOIN_HOOK_*`).
#[derive(Debug, Clone)]
pub struct JoinHookSettings {
    pub url: Url,
    /// A PEM CA for an https hook behind a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub fail_open: bool,
    pub concurrency: usize,
    pub cache_ttl: Duration,
}

/// What the session does with a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// The hook could not answer and the hook fails closed: refuse, saying why.
    Unavailable(String),
}

/// A definite answer from the backend, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow,
    Deny,
    Failed(String),
    /// No call made: too many in flight.
    Busy,
}

pub struct JoinHook {
    settings: JoinHookSettings,
    client: HttpClient,
    permits: Semaphore,
    cache: Mutex<HashMap<(String, String), (bool, Instant)>>,
    metrics: Metrics,
}

impl JoinHook {
    pub fn new(settings: JoinHookSettings, metrics: Metrics) -> Result<JoinHook, String> {
        let client = HttpClient::new(
            settings.ca_file.as_deref(),
            settings.timeout,
            MAX_ANSWER_BYTES,
        )?;
        Ok(JoinHook {
            permits: Semaphore::new(settings.concurrency),
            settings,
            client,
            cache: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// May `user` join `room`? A cached answer if fresh, else one call.
    pub async fn ask(&self, user: &str, room: &str) -> Verdict {
        let key = (user.to_owned(), room.to_owned());
        if let Some(&(allow, at)) = lock(&self.cache).get(&key) {
            if at.elapsed() < self.settings.cache_ttl {
                self.count("cached");
                return if allow { Verdict::Allow } else { Verdict::Deny };
            }
        }
        let answer = match self.permits.try_acquire() {
            Ok(_permit) => self.call(user, room).await,
            Err(_) => Answer::Busy,
        };
        self.count(match &answer {
            Answer::Allow => "allow",
            Answer::Deny => "deny",
            Answer::Failed(_) => "error",
            Answer::Busy => "busy",
        });
        let why = match answer {
            Answer::Allow => {
                self.remember(key, true);
                return Verdict::Allow;
            }
            Answer::Deny => {
                self.remember(key, false);
                return Verdict::Deny;
            }
            // Never let a join through because the hook is busy: any client can keep it
            // busy (joins of made-up rooms), which would open every grant room on demand.
            Answer::Busy => {
                return Verdict::Unavailable(format!(
                    "more than {} join hook calls in flight",
                    self.settings.concurrency
                ))
            }
            Answer::Failed(why) => why,
        };
        tracing::warn!(room, error = %why, fail_open = self.settings.fail_open, "join hook failed");
        if self.settings.fail_open {
            Verdict::Allow
        } else {
            Verdict::Unavailable(why)
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .join_hook_calls
            .with_label_values(&[result])
            .inc();
    }

    fn remember(&self, key: (String, String), allow: bool) {
        // A zero TTL keeps no answer (none would ever be read).
        if self.settings.cache_ttl.is_zero() {
            return;
        }
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (allow, Instant::now()));
    }

    async fn call(&self, user: &str, room: &str) -> Answer {
        let ts = crate::clock::now_us() / 1_000_000;
        let body = request_body(user, room, ts);
        let signature = sign(&self.settings.secret, &body);
        match self
            .client
            .post_json(&self.settings.url, body, &[("x-chat-signature", signature)])
            .await
        {
            Ok(r) => parse_answer(r.status, &r.body),
            Err(e) => Answer::Failed(e.to_string()),
        }
    }
}

/// The JSON the hook receives.
pub fn request_body(user: &str, room: &str, ts: u64) -> Vec<u8> {
    serde_json::json!({"user": user, "room": room, "action": "join", "ts": ts})
        .to_string()
        .into_bytes()
}

/// What a status and body mean: 200 with `{"allow": bool}` is an answer, 403 and 404
/// are a no, anything else is a failure.
pub fn parse_answer(status: u16, body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    struct Reply {
        allow: bool,
    }
    match status {
        200 => match serde_json::from_slice::<Reply>(body) {
            Ok(Reply { allow: true }) => Answer::Allow,
            Ok(Reply { allow: false }) => Answer::Deny,
            Err(_) => {
                Answer::Failed("join hook answered 200 without {\"allow\": true|false}".into())
            }
        },
        403 | 404 => Answer::Deny,
        other => Answer::Failed(format!("join hook answered HTTP {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(parse_answer(200, br#"{"allow":true}"#), Answer::Allow);
        assert_eq!(
            parse_answer(200, br#"{"allow":false,"why":"x"}"#),
            Answer::Deny
        );
        assert!(matches!(parse_answer(200, b"yes"), Answer::Failed(_)));
        assert!(matches!(
            parse_answer(200, br#"{"allow":"true"}"#),
            Answer::Failed(_)
        ));
        assert_eq!(parse_answer(403, b""), Answer::Deny);
        assert_eq!(parse_answer(404, b""), Answer::Deny);
        assert!(
            matches!(parse_answer(500, br#"{"allow":true}"#), Answer::Failed(m) if m.contains("500"))
        );
        assert!(matches!(parse_answer(302, b""), Answer::Failed(_)));
    }

    /// A hook on loopback that answers every call with `body` and counts the calls.
    async fn hook_answering(body: String) -> (Url, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        hook_answering_after(body, Duration::ZERO).await
    }

    /// What a hook on loopback was asked: the body of its first request.
    async fn first_request_body() -> (Url, tokio::sync::oneshot::Receiver<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(
            &format!("http://{}/join", listener.local_addr().unwrap()),
            false,
        )
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers and body: until the body's `}`.
            while !request.ends_with(b"}") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 14\r\nconnection: close\r\n\r\n{\"allow\":true}";
            let _ = conn.write_all(answer.as_bytes()).await;
            let body = request
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|at| request[at + 4..].to_vec())
                .unwrap_or_default();
            let _ = tx.send(body);
        });
        (url, rx)
    }

    /// [`hook_answering`], each answer `delay` late.
    async fn hook_answering_after(
        body: String,
        delay: Duration,
    ) -> (Url, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(
            &format!("http://{}/join", listener.local_addr().unwrap()),
            false,
        )
        .unwrap();
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, calls)
    }

    fn settings(url: Url, fail_open: bool) -> JoinHookSettings {
        JoinHookSettings {
            url,
            ca_file: None,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            timeout: Duration::from_secs(2),
            fail_open,
            concurrency: 4,
            cache_ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn answers_are_cached_and_an_oversized_answer_fails_closed_or_open() {
        use std::sync::atomic::Ordering;
        // Padded to about 2 KiB: within the answer bound (4 KiB).
        let padded = format!(r#"{{"allow":true,"pad":"{}"}}"#, "x".repeat(2000));
        let (url, calls) = hook_answering(padded).await;
        let hook = JoinHook::new(settings(url, false), Metrics::new()).unwrap();
        assert_eq!(hook.ask("alice", "team.red").await, Verdict::Allow);
        assert_eq!(hook.ask("alice", "team.red").await, Verdict::Allow);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the second answer came from the cache"
        );
        assert_eq!(hook.ask("bob", "team.red").await, Verdict::Allow);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let counted = |result: &str| {
            hook.metrics
                .join_hook_calls
                .with_label_values(&[result])
                .get()
        };
        assert_eq!((counted("allow"), counted("cached")), (2, 1));

        let huge = format!(r#"{{"allow":true,"pad":"{}"}}"#, "x".repeat(10_000));
        let (url, _) = hook_answering(huge.clone()).await;
        let closed = JoinHook::new(settings(url, false), Metrics::new()).unwrap();
        assert!(
            matches!(closed.ask("alice", "r").await, Verdict::Unavailable(why) if why.contains("larger than"))
        );
        let (url, _) = hook_answering(huge).await;
        let open = JoinHook::new(settings(url, true), Metrics::new()).unwrap();
        assert_eq!(open.ask("alice", "r").await, Verdict::Allow);
    }

    /// Two asks of a hook allowing one call at a time, answering `answer` 300 ms late:
    /// the second starts while the first waits. Returns both verdicts and the calls made.
    async fn two_at_once(answer: &str, fail_open: bool) -> (Verdict, Verdict, usize) {
        let (url, calls) = hook_answering_after(answer.into(), Duration::from_millis(300)).await;
        let mut s = settings(url, fail_open);
        s.concurrency = 1;
        let hook = JoinHook::new(s, Metrics::new()).unwrap();
        let (first, second) = tokio::join!(hook.ask("alice", "a"), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            hook.ask("bob", "b").await
        });
        (
            first,
            second,
            calls.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn calls_past_the_concurrency_bound_fail_instead_of_queueing() {
        let (first, second, calls) = two_at_once(r#"{"allow":true}"#, false).await;
        assert_eq!(first, Verdict::Allow);
        assert!(matches!(second, Verdict::Unavailable(why) if why.contains("in flight")));
        assert_eq!(calls, 1);
        // Failing open never covers a busy hook.
        let (first, second, _) = two_at_once(r#"{"allow":false}"#, true).await;
        assert_eq!(first, Verdict::Deny);
        assert!(matches!(second, Verdict::Unavailable(_)));
    }

    #[tokio::test]
    async fn a_hook_slower_than_its_timeout_fails_closed_or_open_and_is_not_cached() {
        let (url, calls) =
            hook_answering_after(r#"{"allow":true}"#.into(), Duration::from_millis(800)).await;
        let mut s = settings(url.clone(), false);
        s.timeout = Duration::from_millis(200);
        let closed = JoinHook::new(s, Metrics::new()).unwrap();
        // The hook would allow: only the cut at the timeout makes this unavailable.
        assert!(matches!(
            closed.ask("alice", "r").await,
            Verdict::Unavailable(why) if why.contains("no answer within")
        ));
        assert!(matches!(
            closed.ask("alice", "r").await,
            Verdict::Unavailable(_)
        ));
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "a failure is not cached"
        );
        let mut s = settings(url, true);
        s.timeout = Duration::from_millis(200);
        let open = JoinHook::new(s, Metrics::new()).unwrap();
        assert_eq!(open.ask("alice", "r").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn the_call_carries_user_room_action_and_the_time_in_seconds() {
        let (url, body) = first_request_body().await;
        let hook = JoinHook::new(settings(url, false), Metrics::new()).unwrap();
        assert_eq!(hook.ask("alice", "team.red").await, Verdict::Allow);
        let body: serde_json::Value = serde_json::from_slice(&body.await.unwrap()).unwrap();
        assert_eq!(
            (&body["user"], &body["room"], &body["action"]),
            (&"alice".into(), &"team.red".into(), &"join".into())
        );
        let now = crate::clock::now_us() / 1_000_000;
        let ts = body["ts"].as_u64().unwrap();
        assert!(
            ts <= now && ts + 60 > now,
            "ts {ts} is unix seconds (now {now})"
        );
    }

    #[tokio::test]
    async fn the_answer_cache_is_bounded_and_drops_stale_answers_first() {
        let url = Url::parse("http://127.0.0.1:1/join", false).unwrap();
        let mut s = settings(url, false);
        // Long enough that the fresh half stays fresh while it is written on a busy machine.
        s.cache_ttl = Duration::from_millis(500);
        let hook = JoinHook::new(s, Metrics::new()).unwrap();
        let key = |i: usize| (format!("u{i}"), "r".to_owned());
        // A small cache is not swept on every answer: a stale one stays until it is full.
        hook.remember(key(0), true);
        tokio::time::sleep(Duration::from_millis(600)).await;
        hook.remember(key(1), true);
        assert_eq!(lock(&hook.cache).len(), 2);
        // Full, half stale: the stale half goes, the fresh half stays.
        lock(&hook.cache).clear();
        for i in 0..MAX_CACHED / 2 {
            hook.remember(key(i), true);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        for i in MAX_CACHED / 2..MAX_CACHED {
            hook.remember(key(i), false);
        }
        hook.remember(key(MAX_CACHED), true);
        let cache = lock(&hook.cache);
        assert_eq!(cache.len(), MAX_CACHED / 2 + 1);
        assert!(cache.contains_key(&key(MAX_CACHED - 1)) && !cache.contains_key(&key(0)));
        drop(cache);
        // Full of fresh answers: all go (the bound holds whatever the TTL).
        let url = Url::parse("http://127.0.0.1:1/join", false).unwrap();
        let fresh = JoinHook::new(settings(url, false), Metrics::new()).unwrap();
        for i in 0..=MAX_CACHED {
            fresh.remember(key(i), true);
        }
        assert_eq!(lock(&fresh.cache).len(), 1);
    }

    #[tokio::test]
    async fn a_hook_that_is_not_there_fails_closed() {
        let url = Url::parse("http://127.0.0.1:1/join", false).unwrap();
        let hook = JoinHook::new(settings(url, false), Metrics::new()).unwrap();
        assert!(matches!(
            hook.ask("alice", "r").await,
            Verdict::Unavailable(_)
        ));
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = request_body("alice", "team.red", 1_700_000_000);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["room"], "team.red");
        assert_eq!(v["action"], "join");
        assert_eq!(v["ts"], 1_700_000_000u64);
    }
}
