//! The few outbound HTTP calls the server makes itself: an identity provider's JWKS
//! (https only) and the application's join hook. One request per connection, HTTP/1.1,
//! every step under one timeout and every answer under a size bound, so a slow or
//! hostile endpoint costs a bounded wait and a bounded buffer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Why a call failed. The texts never hold a secret (URLs here carry no userinfo).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("invalid URL `{url}`: {why}")]
    InvalidUrl { url: String, why: &'static str },
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// A checked URL: http(s), a host, no userinfo, no fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    original: String,
}

impl Url {
    /// Parses `text`; `https_only` refuses `http://` (a JWKS must come over TLS).
    pub fn parse(text: &str, https_only: bool) -> Result<Url, HttpError> {
        let bad = |why| HttpError::InvalidUrl {
            url: text.chars().take(200).collect(),
            why,
        };
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            if https_only {
                return Err(bad("must start with https://"));
            }
            (false, rest)
        } else {
            return Err(bad(if https_only {
                "must start with https://"
            } else {
                "must start with http:// or https://"
            }));
        };
        if text.contains('#') {
            return Err(bad("must not have a #fragment"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain spaces or control characters"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        if authority.contains('@') {
            return Err(bad("must not carry a user or password (user@host)"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("has no valid host"))?;
        let port = match port {
            Some(p) => p,
            None if https => 443,
            None => 80,
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Url {
            https,
            host,
            port,
            path,
            original: text.to_owned(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.original)
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match &rest[end + 1..] {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host.to_owned(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (authority, None),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    valid.then(|| (host.to_ascii_lowercase(), port))
}

/// An answer: its status and its whole body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Bytes,
}

/// A client with its TLS roots, timeout and answer bound.
#[derive(Clone)]
pub struct HttpClient {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    max_body_bytes: usize,
}

impl HttpClient {
    /// TLS roots: the public web roots, plus the CAs in `ca_file` (PEM) when given, for
    /// an identity provider or a backend behind a private CA.
    pub fn new(
        ca_file: Option<&Path>,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Result<HttpClient, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("{}: no PEM certificate in it", path.display()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HttpClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
            max_body_bytes,
        })
    }

    /// `GET url`.
    pub async fn get(&self, url: &Url) -> Result<HttpResponse, HttpError> {
        self.send(url, "GET", Bytes::new(), &[]).await
    }

    /// `POST url` with a JSON body and extra headers.
    pub async fn post_json(
        &self,
        url: &Url,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<HttpResponse, HttpError> {
        let mut all = vec![("content-type", "application/json".to_owned())];
        all.extend(headers.iter().map(|(k, v)| (*k, v.clone())));
        self.send(url, "POST", Bytes::from(body), &all).await
    }

    /// One request under the client's timeout: connect, TLS, request and whole answer.
    async fn send(
        &self,
        url: &Url,
        method: &str,
        body: Bytes,
        headers: &[(&str, String)],
    ) -> Result<HttpResponse, HttpError> {
        let mut request = Request::builder()
            .method(method)
            .uri(&url.path)
            .header("host", url.host_header())
            .header(
                "user-agent",
                concat!("chat-server/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| HttpError::Failed(format!("cannot build a request for {url}: {e}")))?;
        tokio::time::timeout(self.timeout, self.exchange(url, request))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    /// Connects (with TLS for https) and sends `request`.
    async fn exchange(
        &self,
        url: &Url,
        request: Request<Full<Bytes>>,
    ) -> Result<HttpResponse, HttpError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            HttpError::Failed(format!("{what} {}:{}: {e}", url.host, url.port))
        };
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        if url.https {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| fail("no TLS server name for", &e))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| fail("TLS with", &e))?;
            self.roundtrip(TokioIo::new(tls), request, url).await
        } else {
            self.roundtrip(TokioIo::new(tcp), request, url).await
        }
    }

    async fn roundtrip<S>(
        &self,
        io: TokioIo<S>,
        request: Request<Full<Bytes>>,
        url: &Url,
    ) -> Result<HttpResponse, HttpError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let fail = |e: &dyn std::fmt::Display| {
            HttpError::Failed(format!("HTTP with {}:{}: {e}", url.host, url.port))
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| fail(&e))?;
        let driver = tokio::spawn(connection);
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), self.max_body_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge(self.max_body_bytes)
                    } else {
                        fail(&e)
                    }
                })?
                .to_bytes();
            Ok(HttpResponse { status, body })
        }
        .await;
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_without_userinfo_or_fragment() {
        let u = Url::parse("https://idp.example.com/realms/x/certs", true).unwrap();
        assert_eq!((u.https, u.port), (true, 443));
        assert_eq!(u.host, "idp.example.com");
        assert_eq!(u.path, "/realms/x/certs");
        assert_eq!(u.host_header(), "idp.example.com");
        let u = Url::parse("http://127.0.0.1:8081?a=b", false).unwrap();
        assert_eq!((u.https, u.port, u.path.as_str()), (false, 8081, "/?a=b"));
        assert_eq!(u.host_header(), "127.0.0.1:8081");
        let u = Url::parse("https://[::1]:8443/jwks", true).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        assert_eq!(u.host_header(), "[::1]:8443");
        let plain = Url::parse("http://h", false).unwrap();
        assert_eq!((plain.path.as_str(), plain.port), ("/", 80));
        assert_eq!(Url::parse("https://h", true).unwrap().port, 443);

        let why = |s: &str, https_only: bool| match Url::parse(s, https_only) {
            Err(HttpError::InvalidUrl { why, .. }) => why,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(why("http://idp/jwks", true), "must start with https://");
        assert_eq!(
            why("ftp://idp/jwks", false),
            "must start with http:// or https://"
        );
        assert_eq!(
            why("https://user:pw@idp/jwks", true),
            "must not carry a user or password (user@host)"
        );
        assert_eq!(why("https://idp/jwks#x", true), "must not have a #fragment");
        assert_eq!(
            why("https://idp/a b", true),
            "must not contain spaces or control characters"
        );
        assert_eq!(why("https:///jwks", true), "has no valid host");
        assert_eq!(why("https://idp:99999/", true), "has no valid host");
        assert_eq!(why("https://[nope]/", true), "has no valid host");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("chat-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let err = HttpClient::new(Some(&dir), Duration::from_secs(1), 1024)
            .err()
            .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
