//! The operator's one HTTP client for everything that is not the API server: the
//! chat-server pods' `/metrics` and `/admin/*`, and Prometheus' query API. It is hyper's client (the one kube already uses), with a
//! timeout on every request and a bound on every response body, because the answers
//! come from pods whose image the user chooses.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a request failed. Messages name the URL so a condition or log line says where.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL, or a header built from the caller's input (e.g. a token), is unusable.
    #[error("{url}: not a valid request: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("could not set up TLS: {0}")]
    Tls(String),
}

/// A client with a per-request timeout (connect, headers and body together) and a
/// response-size limit.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body_bytes: usize,
}

impl HttpClient {
    /// `http://` and `https://` (system roots, ring provider) URLs.
    pub fn new(timeout: Duration, max_body_bytes: usize) -> Result<HttpClient, HttpError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| HttpError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(https),
            timeout,
            max_body_bytes,
        })
    }

    /// The body of a `200 OK` answer to `GET url`, as text (invalid UTF-8 replaced).
    pub async fn get_text(&self, url: &str) -> Result<String, HttpError> {
        self.send(hyper::Method::GET, url, None, None).await
    }

    /// `GET url` with `Authorization: Bearer <token>` (the pods' `/admin/*`).
    pub async fn get_with_token(&self, url: &str, token: &str) -> Result<String, HttpError> {
        self.send(hyper::Method::GET, url, Some(token), None).await
    }

    /// `POST url` with a JSON body and `Authorization: Bearer <token>`; the answer's body.
    pub async fn post_json(
        &self,
        url: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<String, HttpError> {
        self.send(
            hyper::Method::POST,
            url,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// One request; a 2xx answer's body as text (invalid UTF-8 replaced).
    async fn send(
        &self,
        method: hyper::Method,
        url: &str,
        bearer: Option<&str>,
        json_body: Option<Vec<u8>>,
    ) -> Result<String, HttpError> {
        let invalid = |reason: String| HttpError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        if let Some(token) = bearer {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if json_body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(json_body.unwrap_or_default())))
            .map_err(|e| invalid(e.to_string()))?;
        let request = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| HttpError::Transport {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
            let status = response.status();
            if !status.is_success() {
                return Err(HttpError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
            let body = Limited::new(response.into_body(), self.max_body_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge {
                            url: url.to_owned(),
                            limit: self.max_body_bytes,
                        }
                    } else {
                        HttpError::Transport {
                            url: url.to_owned(),
                            reason: e.to_string(),
                        }
                    }
                })?;
            Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.to_owned(),
                timeout: self.timeout,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on loopback answering `reply` (raw bytes) after `delay`.
    async fn serve_once(reply: Vec<u8>, delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            tokio::time::sleep(delay).await;
            let _ = s.write_all(&reply).await;
        });
        format!("http://{addr}/metrics")
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn answers_timeouts_statuses_and_size_limits() {
        let client = HttpClient::new(Duration::from_millis(300), 64).unwrap();
        let url = serve_once(ok("chat_connections 3\n"), Duration::ZERO).await;
        assert_eq!(client.get_text(&url).await.unwrap(), "chat_connections 3\n");

        let url = serve_once(ok("late"), Duration::from_secs(2)).await;
        assert!(matches!(
            client.get_text(&url).await,
            Err(HttpError::Timeout { .. })
        ));

        let url = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Duration::ZERO,
        )
        .await;
        assert!(matches!(
            client.get_text(&url).await,
            Err(HttpError::Status { status: 503, .. })
        ));

        let url = serve_once(ok(&"x".repeat(65)), Duration::ZERO).await;
        assert!(matches!(
            client.get_text(&url).await,
            Err(HttpError::TooLarge { limit: 64, .. })
        ));

        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = client
            .get_text(&format!("http://{closed}/metrics"))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Transport { .. }), "{e}");
        assert!(e.to_string().contains(&closed.to_string()), "{e}");

        assert!(matches!(
            client.get_text("not a url").await,
            Err(HttpError::InvalidUrl { .. })
        ));
    }
}
