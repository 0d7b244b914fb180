//! The suites' one HTTP client: a blocking HTTP/1.1 request on a fresh loopback
//! connection (`Connection: close`), with an optional JSON body, an optional bearer token
//! and a read timeout; the answer is its status code and body. It reads the chat-server's
//! admin port (`/readyz`, `/metrics`, `/admin/status`), the operator's metrics port,
//! Prometheus' readiness and Toxiproxy's API. (The operator's own HTTP client, which some
//! suites test, is the operator's.)
//!
//! Blocking on purpose: callers poll it from plain threads and, through
//! `tokio::task::block_in_place` or briefly inline, from tests on a multi-threaded runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a read may wait when the caller gives no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a request carries besides its method and path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// A JSON body (sent with `Content-Type: application/json`).
    pub json: Option<&'a str>,
    /// Sent as `Authorization: Bearer TOKEN`.
    pub bearer: Option<&'a str>,
    /// Bound on each read of the answer (2 s when `None`).
    pub timeout: Option<Duration>,
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The whole answer as received (status line, headers and body), for a failure
    /// message.
    pub raw: String,
}

/// One request; `None` when nothing answers in time or the answer is not HTTP.
pub fn request(addr: SocketAddr, method: &str, path: &str, opts: Options) -> Option<Response> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    s.set_read_timeout(Some(opts.timeout.unwrap_or(DEFAULT_TIMEOUT)))
        .ok()?;
    let body = opts.json.unwrap_or("");
    let content_type = if opts.json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let authorization = opts
        .bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some(Response { status, body, raw })
}

/// `GET path`; `None` when nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<Response> {
    request(addr, "GET", path, Options::default())
}

/// Status code and body of `GET path` (status 0 and no body when nothing answers).
pub fn status_of(addr: SocketAddr, path: &str) -> (u16, String) {
    get(addr, path).map_or((0, String::new()), |r| (r.status, r.body))
}

/// The value on the line `name VALUE` of `addr`'s `/metrics` (no labels, or the labels
/// written into `name`); `None` when nothing answers or the line is not there.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let body = get(addr, "/metrics")?.body;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_is_no_answer() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(get(port, "/"), None);
        assert_eq!(status_of(port, "/"), (0, String::new()));
    }

    #[test]
    fn sends_the_token_and_reads_status_and_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The whole request first: closing with unread bytes would reset the
            // connection under the client's read.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ends with an empty line");
                request.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                .unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let opts = Options {
            bearer: Some("t0ken"),
            ..Options::default()
        };
        let r = request(addr, "GET", "/admin/status", opts).unwrap();
        assert_eq!((r.status, r.body.as_str()), (403, "no"));
        let sent = server.join().unwrap();
        assert!(sent.starts_with("GET /admin/status HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("Authorization: Bearer t0ken\r\n"), "{sent}");
    }
}
