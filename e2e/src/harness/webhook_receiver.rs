//! A real HTTP receiver of the chat server's events, on loopback, as an application's
//! backend would run one: it checks each POST's signature, records what arrived in
//! arrival order and answers 200. It can be taken down (its port refuses connections)
//! and brought back on the same port, or made to answer 500. Also the suites' reader of
//! one HTTP/1.1 request, which the attacker suite's join hook shares.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub kind: String,
    pub payload: Value,
    /// The `X-Chat-Event-Id` header, which must equal `id`.
    pub header_id: String,
    /// `X-Chat-Signature` verified against the body and the secret.
    pub signature_ok: bool,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    secret: Vec<u8>,
    received: Arc<Mutex<Vec<Received>>>,
    failing: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Listens on a free loopback port.
    pub async fn start(secret: &str) -> std::io::Result<WebhookReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut r = WebhookReceiver {
            addr: listener.local_addr()?,
            secret: secret.as_bytes().to_vec(),
            received: Arc::default(),
            failing: Arc::default(),
            task: None,
        };
        r.serve(listener);
        Ok(r)
    }

    /// `http://ADDR/events`.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Closes the port: deliveries are refused until [`WebhookReceiver::restart`].
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The aborted task drops its listener when it is next polled; retry the bind.
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.serve(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
    }

    /// While `true`, every POST is answered 500 (and not recorded).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn serve(&mut self, listener: TcpListener) {
        let (secret, received, failing) = (
            self.secret.clone(),
            self.received.clone(),
            self.failing.clone(),
        );
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (secret, received, failing) =
                    (secret.clone(), received.clone(), failing.clone());
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let status = if failing.load(Ordering::SeqCst) {
                        "500 Internal Server Error"
                    } else {
                        let header = |name: &str| {
                            headers
                                .lines()
                                .find_map(|l| l.strip_prefix(name))
                                .unwrap_or_default()
                                .trim()
                                .to_owned()
                        };
                        let signature_ok = chat_server::signature::verify(
                            &secret,
                            &body,
                            &header("x-chat-signature: "),
                        );
                        let event: Value = serde_json::from_slice(&body).unwrap_or_default();
                        received
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Received {
                                id: event["id"].as_str().unwrap_or_default().to_owned(),
                                kind: event["type"].as_str().unwrap_or_default().to_owned(),
                                payload: event["payload"].clone(),
                                header_id: header("x-chat-event-id: "),
                                signature_ok,
                            });
                        "200 OK"
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        }));
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Headers (lower-cased) and body of one HTTP/1.1 request; `None` when the peer sends
/// something else or stalls for 5 s.
pub async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        read_more(stream, &mut buf).await?;
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                read_more(stream, &mut buf).await?;
            }
            return Some((headers, buf[end + 4..end + 4 + length].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    }
}

/// Appends what the peer sends next to `buf`; `None` when it closed or stalled 5 s.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
        .await
        .ok()?
        .ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}
