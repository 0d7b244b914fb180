//! The cluster's open connections from Prometheus' HTTP API (`GET /api/v1/query`), as a
//! [`Sample`] for the autoscaler's decision ([`crate::autoscaling::decision`]).
//!
//! Pure parts, unit-tested below: the query URL ([`query_url`]), the answer's JSON types
//! ([`QueryResponse`]) and its reading as a sample ([`sample_from_response`]). The query
//! itself (the default one or the user's template) is [`crate::autoscaling::promql`]. One
//! async function, [`query`], does the GET through the operator's [`HttpClient`] (timeout
//! and size limit included); e2e/tests/prometheus_source.rs runs it against a real
//! Prometheus scraping real chat-server processes.
//!
//! What comes back is data for [`crate::autoscaling::decision::decide`], which judges it:
//! no series, several series, NaN, ±Inf, a negative or a stale value all hold the replica
//! count (`NoData`, `MultipleSeries`, `InvalidValue`, `StaleData`). This module does not
//! filter them out; it reports faithfully what Prometheus said. What it cannot turn into
//! a sample (an unreachable or slow Prometheus, a rejected query, a range vector or
//! string, an answer that is not Prometheus' JSON) is a [`PrometheusError`] whose message
//! names the URL and says what to fix.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use crate::autoscaling::decision::Sample;
use crate::http_client::{HttpClient, HttpError};
use crate::urls::{self, UrlPolicy};

/// Limit on one Prometheus query (connect, evaluate, answer).
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(5);
/// A one-series answer is a few hundred bytes; more than this is not what we asked for.
pub const PROMETHEUS_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The client for Prometheus queries: `PROMETHEUS_TIMEOUT`, `PROMETHEUS_MAX_RESPONSE_BYTES`.
pub fn prometheus_client() -> Result<HttpClient, HttpError> {
    HttpClient::new(PROMETHEUS_TIMEOUT, PROMETHEUS_MAX_RESPONSE_BYTES)
}

/// `GET` URL of an instant query: `{base_url}/api/v1/query?query=<form-encoded promql>`.
/// Trailing slashes of `base_url` are dropped; a path prefix (Prometheus behind
/// `--web.route-prefix`, e.g. `http://host/prometheus`) is kept.
///
/// `base_url` must be a plain `http(s)://host[:port][/path]` (see [`crate::urls`]): a
/// query or fragment in it would swallow the API path (`http://host/x?` +
/// `/api/v1/query...` requests `/x`), and credentials in it would end up in conditions.
pub fn query_url(base_url: &str, promql: &str) -> Result<String, PrometheusError> {
    let base = urls::check(base_url, UrlPolicy::BASE).map_err(|e| PrometheusError::InvalidUrl {
        url: urls::redact_userinfo(base_url),
        reason: e.to_string(),
    })?;
    let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    Ok(base.join("/api/v1/query", &format!("query={encoded}")))
}

/// Prometheus' answer to `/api/v1/query`, success or error (both are JSON, the error one
/// also with HTTP status 400, 422 or 503).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum QueryResponse {
    /// `{"status": "success", "data": {...}, "warnings": [...]}`.
    Success {
        /// The result and its type.
        data: QueryData,
        /// Warnings Prometheus attached (e.g. from a remote-read endpoint).
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// `{"status": "error", "errorType": "bad_data", "error": "..."}`.
    Error {
        /// `bad_data`, `execution`, `timeout`, `canceled`, `internal`, `unavailable`, ...
        #[serde(rename = "errorType", default)]
        error_type: String,
        /// Prometheus' message, e.g. `1:5: parse error: unexpected end of input`.
        #[serde(default)]
        error: String,
    },
}

/// `data` of a successful answer: `resultType` and `result`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub enum QueryData {
    /// An instant vector: one sample per series.
    Vector(Vec<InstantSeries>),
    /// A scalar: `[time, "value"]`.
    Scalar(SampleValue),
    /// A range vector (the query had a range selector such as `[5m]`).
    Matrix(Vec<RangeSeries>),
    /// A string literal: `[time, "text"]`.
    String(SampleValue),
}

impl QueryData {
    /// The `resultType` as Prometheus spells it.
    pub fn result_type(&self) -> &'static str {
        match self {
            QueryData::Vector(_) => "vector",
            QueryData::Scalar(_) => "scalar",
            QueryData::Matrix(_) => "matrix",
            QueryData::String(_) => "string",
        }
    }
}

/// One series of an instant vector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InstantSeries {
    /// The series' labels.
    #[serde(default)]
    pub metric: BTreeMap<String, String>,
    /// The float sample; absent when the series holds a native histogram instead.
    #[serde(default)]
    pub value: Option<SampleValue>,
    /// A native histogram sample (not a count: only its presence is kept).
    #[serde(default)]
    pub histogram: Option<serde::de::IgnoredAny>,
}

/// One series of a range vector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RangeSeries {
    /// The series' labels.
    #[serde(default)]
    pub metric: BTreeMap<String, String>,
    /// The float samples.
    #[serde(default)]
    pub values: Vec<SampleValue>,
}

/// A sample as Prometheus writes it: `[unix_seconds_float, "value as a string"]`. The
/// value is a string so that `NaN`, `+Inf` and `-Inf` survive JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SampleValue(pub f64, pub String);

impl SampleValue {
    /// The value as a float: a decimal number, `NaN`, `+Inf` or `-Inf`.
    pub fn value(&self) -> Result<f64, String> {
        parse_value(&self.1)
    }

    /// The sample's time (rounded to the millisecond, Prometheus' resolution).
    pub fn timestamp(&self) -> Result<Timestamp, String> {
        let millis = (self.0 * 1000.0).round();
        // i64 bounds as f64; jiff checks its own (narrower) range.
        if !millis.is_finite() || millis.abs() >= 9.2e18 {
            return Err(format!("sample time {} is not a Unix time", self.0));
        }
        Timestamp::from_millisecond(millis as i64)
            .map_err(|e| format!("sample time {} is out of range: {e}", self.0))
    }

    fn sample(&self) -> Result<Sample, String> {
        Ok(Sample::Value {
            total: self.value()?,
            at: self.timestamp()?,
        })
    }
}

/// A sample value string as Prometheus formats it (Go's `strconv.FormatFloat`, or
/// `NaN`, `+Inf`, `-Inf`).
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .map_err(|_| format!("sample value {s:?} is not a number")),
    }
}

/// Why no sample came from Prometheus. Each message names where (`Prometheus at URL`
/// when the URL is known) and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The URL cannot be requested at all (`url` with any `user:password@` masked).
    #[error("{url:?} is not a valid Prometheus URL ({reason}); set it to Prometheus' base URL, e.g. http://prometheus-operated.monitoring:9090")]
    InvalidUrl { url: String, reason: String },
    /// No connection (refused, no route, DNS, TLS) or it broke mid-answer.
    #[error("{} is unreachable ({reason}); check the URL's host and port and that Prometheus is running and reachable from the operator", Source(.url))]
    Unreachable { url: String, reason: String },
    /// No complete answer within the HTTP client's timeout.
    #[error("{} did not answer within {timeout:?}; check that Prometheus is up and not overloaded, or make the query cheaper", Source(.url))]
    Timeout {
        url: String,
        timeout: std::time::Duration,
    },
    /// Prometheus refused the query: a PromQL syntax error (`bad_data`, HTTP 400) or one
    /// that failed to evaluate (`execution`, HTTP 422).
    #[error("{} rejected the query ({reason}); fix the PromQL query", Source(.url))]
    Rejected { url: String, reason: String },
    /// Prometheus answered `status: error` for another reason (its own `timeout`,
    /// `internal`, `unavailable`, ...).
    #[error("{} could not run the query ({error_type}: {message}); check Prometheus' health and logs", Source(.url))]
    Failed {
        url: String,
        error_type: String,
        message: String,
    },
    /// The query returned a range vector (`matrix`) or a `string`.
    #[error("{} returned a {result_type} for the query, but the query must return an instant vector or a scalar; drop range selectors such as [5m] (wrap them in a function like max_over_time) and sum the series", Source(.url))]
    NotInstantVector { url: String, result_type: String },
    /// An HTTP status other than success or a rejected query (404: not Prometheus' API at
    /// that URL; 503: Prometheus not ready).
    #[error("{} answered HTTP {status} to the query; check that the URL is Prometheus' base URL (without /api/v1) and that Prometheus is ready", Source(.url))]
    HttpStatus { url: String, status: u16 },
    /// The answer is larger than the HTTP client's limit.
    #[error("{}: the answer is larger than {limit} bytes; the query must return one series (sum them)", Source(.url))]
    TooLarge { url: String, limit: usize },
    /// The answer is not Prometheus' query API JSON, or a value in it is not a number.
    #[error("{}: malformed answer, not Prometheus' query API JSON ({reason}); check that the URL is Prometheus' base URL", Source(.url))]
    Malformed { url: String, reason: String },
}

impl PrometheusError {
    /// The URL this error is about (empty for [`sample_from_response`], which has none).
    pub fn url(&self) -> &str {
        match self {
            PrometheusError::InvalidUrl { url, .. }
            | PrometheusError::Unreachable { url, .. }
            | PrometheusError::Timeout { url, .. }
            | PrometheusError::Rejected { url, .. }
            | PrometheusError::Failed { url, .. }
            | PrometheusError::NotInstantVector { url, .. }
            | PrometheusError::HttpStatus { url, .. }
            | PrometheusError::TooLarge { url, .. }
            | PrometheusError::Malformed { url, .. } => url,
        }
    }

    fn at(mut self, at: &str) -> Self {
        match &mut self {
            PrometheusError::InvalidUrl { url, .. }
            | PrometheusError::Unreachable { url, .. }
            | PrometheusError::Timeout { url, .. }
            | PrometheusError::Rejected { url, .. }
            | PrometheusError::Failed { url, .. }
            | PrometheusError::NotInstantVector { url, .. }
            | PrometheusError::HttpStatus { url, .. }
            | PrometheusError::TooLarge { url, .. }
            | PrometheusError::Malformed { url, .. } => *url = at.to_owned(),
        }
        self
    }
}

/// "Prometheus at URL", or "Prometheus" when the URL is not known.
struct Source<'a>(&'a str);

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Prometheus")
        } else {
            write!(f, "Prometheus at {}", self.0)
        }
    }
}

/// Reads an `/api/v1/query` answer as a sample: an instant vector of no series is
/// [`Sample::NoData`], of several [`Sample::MultipleSeries`], of one series (or a scalar)
/// [`Sample::Value`] with Prometheus' value and time. `NaN`, `+Inf` and `-Inf` are
/// returned as such: the decision treats them as bad data and holds the replicas.
///
/// Errors (their URL is empty; [`query`] fills it in): `status: error` answers carry
/// Prometheus' message ([`PrometheusError::Rejected`] for `bad_data` and `execution`,
/// [`PrometheusError::Failed`] otherwise); a `matrix` or `string` result is
/// [`PrometheusError::NotInstantVector`]; anything else unexpected (not JSON, missing
/// fields, a value that is not a number, a histogram sample) is
/// [`PrometheusError::Malformed`].
pub fn sample_from_response(body: &str) -> Result<Sample, PrometheusError> {
    let malformed = |reason: String| PrometheusError::Malformed {
        url: String::new(),
        reason,
    };
    let response: QueryResponse =
        serde_json::from_str(body).map_err(|e| malformed(e.to_string()))?;
    let data = match response {
        QueryResponse::Success { data, .. } => data,
        QueryResponse::Error { error_type, error } => {
            return Err(match error_type.as_str() {
                "bad_data" | "execution" => PrometheusError::Rejected {
                    url: String::new(),
                    reason: format!("{error_type}: {error}"),
                },
                _ => PrometheusError::Failed {
                    url: String::new(),
                    error_type,
                    message: error,
                },
            });
        }
    };
    match data {
        QueryData::Vector(series) => match series.as_slice() {
            [] => Ok(Sample::NoData),
            [one] => match &one.value {
                Some(v) => v.sample().map_err(malformed),
                None if one.histogram.is_some() => Err(malformed(
                    "the series holds a native histogram, not a number".to_owned(),
                )),
                None => Err(malformed("the series has no value".to_owned())),
            },
            several => Ok(Sample::MultipleSeries {
                count: several.len(),
            }),
        },
        QueryData::Scalar(v) => v.sample().map_err(malformed),
        other @ (QueryData::Matrix(_) | QueryData::String(_)) => {
            Err(PrometheusError::NotInstantVector {
                url: String::new(),
                result_type: other.result_type().to_owned(),
            })
        }
    }
}

/// Runs `promql` as an instant query against the Prometheus at `base_url` (e.g.
/// `http://prometheus-operated.monitoring:9090`) and reads the answer as a sample (see
/// [`sample_from_response`]). The client's timeout and size limit apply.
///
/// Prometheus answers a query it rejects with HTTP 400 (`bad_data`) or 422 (`execution`)
/// and a JSON error body; the client keeps only the status, so those are
/// [`PrometheusError::Rejected`] naming the status.
pub async fn query(
    client: &HttpClient,
    base_url: &str,
    promql: &str,
) -> Result<Sample, PrometheusError> {
    let url = query_url(base_url, promql)?;
    let body = client.get_text(&url).await.map_err(|e| match e {
        HttpError::InvalidUrl { reason, .. } => PrometheusError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        },
        HttpError::Timeout { timeout, .. } => PrometheusError::Timeout {
            url: base_url.to_owned(),
            timeout,
        },
        HttpError::Transport { reason, .. } => PrometheusError::Unreachable {
            url: base_url.to_owned(),
            reason,
        },
        HttpError::Tls(reason) => PrometheusError::Unreachable {
            url: base_url.to_owned(),
            reason,
        },
        HttpError::Status {
            status: status @ (400 | 422),
            ..
        } => PrometheusError::Rejected {
            url: base_url.to_owned(),
            reason: format!("HTTP {status}"),
        },
        HttpError::Status { status, .. } => PrometheusError::HttpStatus {
            url: base_url.to_owned(),
            status,
        },
        HttpError::TooLarge { limit, .. } => PrometheusError::TooLarge {
            url: base_url.to_owned(),
            limit,
        },
    })?;
    sample_from_response(&body).map_err(|e| e.at(base_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    fn vector(series: &[&str]) -> String {
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        )
    }

    fn series(pod: &str, value: &str) -> String {
        format!(r#"{{"metric":{{"pod":"{pod}"}},"value":[1712345678.123,"{value}"]}}"#)
    }

    #[test]
    fn query_urls_encode_the_promql_and_tolerate_a_trailing_slash() {
        let q = r#"sum(chat_connections{namespace="chat", pod=~"chat-[0-9]+"})"#;
        let expected = "http://p:9090/api/v1/query?query=sum%28chat_connections%7Bnamespace%3D%22chat%22%2C+pod%3D%7E%22chat-%5B0-9%5D%2B%22%7D%29";
        assert_eq!(query_url("http://p:9090", q).unwrap(), expected);
        assert_eq!(query_url("http://p:9090/", q).unwrap(), expected);
        assert_eq!(query_url("http://p:9090//", q).unwrap(), expected);
        assert_eq!(
            query_url("https://h/prometheus/", "a & b # c").unwrap(),
            "https://h/prometheus/api/v1/query?query=a+%26+b+%23+c"
        );
        // Decoding gives the query back (what Prometheus' Go server does).
        let url = query_url("http://p", q).unwrap();
        let (_, qs) = url.split_once('?').unwrap();
        let decoded: Vec<(String, String)> =
            form_urlencoded::parse(qs.as_bytes()).into_owned().collect();
        assert_eq!(decoded, [("query".to_owned(), q.to_owned())]);
    }

    /// A base URL ending in `?` or `#` used to swallow the API path, so the operator
    /// requested whatever path the URL named; such URLs, other schemes and credentials
    /// are refused before any request.
    #[test]
    fn base_urls_that_would_redirect_the_query_are_refused() {
        for base in [
            "http://evil.example/anything?",
            "http://evil.example/anything?x=",
            "http://p:9090#",
            "file:///etc/passwd",
            "gopher://p:70/",
            "p:9090",
        ] {
            let e = query_url(base, "up").unwrap_err();
            assert!(
                matches!(e, PrometheusError::InvalidUrl { .. }),
                "{base}: {e:?}"
            );
            assert!(e.to_string().contains("not a valid Prometheus URL"), "{e}");
        }
        let e = query_url("http://admin:hunter2@p:9090", "up").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("user:password@"), "{e}");
    }

    #[tokio::test]
    async fn an_invalid_base_url_makes_no_request() {
        let client = HttpClient::new(std::time::Duration::from_millis(100), 1024).unwrap();
        // Nothing listens on port 1: a request would be Unreachable, not InvalidUrl.
        let e = query(&client, "http://127.0.0.1:1/x?", "up")
            .await
            .unwrap_err();
        assert!(matches!(e, PrometheusError::InvalidUrl { .. }), "{e:?}");
    }

    #[test]
    fn one_series_is_its_value_and_time() {
        let s = sample_from_response(&vector(&[&series("chat-0", "5")])).unwrap();
        assert_eq!(
            s,
            Sample::Value {
                total: 5.0,
                at: at(1_712_345_678_123)
            }
        );
        let s = sample_from_response(&vector(&[&series("chat-0", "1234.5")])).unwrap();
        assert!(matches!(s, Sample::Value { total, .. } if total == 1234.5));
        let s = sample_from_response(&vector(&[&series("chat-0", "1e+06")])).unwrap();
        assert!(matches!(s, Sample::Value { total, .. } if total == 1e6));
        let s = sample_from_response(&vector(&[&series("chat-0", "-3")])).unwrap();
        assert!(matches!(s, Sample::Value { total, .. } if total == -3.0));
    }

    #[test]
    fn no_series_is_no_data_and_several_are_counted() {
        assert_eq!(sample_from_response(&vector(&[])).unwrap(), Sample::NoData);
        let body = vector(&[&series("chat-0", "2"), &series("chat-1", "3")]);
        assert_eq!(
            sample_from_response(&body).unwrap(),
            Sample::MultipleSeries { count: 2 }
        );
        let three = [series("a", "1"), series("b", "1"), series("c", "NaN")];
        let body = vector(&three.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            sample_from_response(&body).unwrap(),
            Sample::MultipleSeries { count: 3 }
        );
    }

    #[test]
    fn nan_and_infinities_are_values_for_the_decision_to_reject() {
        for (text, check) in [
            ("NaN", f64::is_nan as fn(f64) -> bool),
            ("+Inf", |v: f64| v == f64::INFINITY),
            ("-Inf", |v: f64| v == f64::NEG_INFINITY),
        ] {
            let s = sample_from_response(&vector(&[&series("chat-0", text)])).unwrap();
            let Sample::Value { total, at: t } = s else {
                panic!("{text}: {s:?}");
            };
            assert!(check(total), "{text}: {total}");
            assert_eq!(t, at(1_712_345_678_123));
        }
    }

    #[test]
    fn a_scalar_is_a_value() {
        let body =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1712345678,"7"]}}"#;
        assert_eq!(
            sample_from_response(body).unwrap(),
            Sample::Value {
                total: 7.0,
                at: at(1_712_345_678_000)
            }
        );
        let body =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1712345678.5,"NaN"]}}"#;
        let s = sample_from_response(body).unwrap();
        assert!(
            matches!(s, Sample::Value { total, at: t } if total.is_nan() && t == at(1_712_345_678_500))
        );
    }

    #[test]
    fn range_vectors_and_strings_are_not_instant_vectors() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"pod":"chat-0"},"values":[[1712345670,"1"],[1712345671,"2"]]}]}}"#;
        let e = sample_from_response(body).unwrap_err();
        assert!(
            matches!(&e, PrometheusError::NotInstantVector { result_type, .. } if result_type == "matrix"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("must return an instant vector or a scalar"),
            "{e}"
        );
        let body =
            r#"{"status":"success","data":{"resultType":"string","result":[1712345678,"hello"]}}"#;
        let e = sample_from_response(body).unwrap_err();
        assert!(
            matches!(&e, PrometheusError::NotInstantVector { result_type, .. } if result_type == "string"),
            "{e:?}"
        );
    }

    #[test]
    fn error_answers_carry_prometheus_message() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected end of input"}"#;
        let e = sample_from_response(body).unwrap_err();
        let PrometheusError::Rejected { reason, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(
            reason,
            r#"bad_data: invalid parameter "query": 1:5: parse error: unexpected end of input"#
        );
        assert_eq!(
            e.to_string(),
            r#"Prometheus rejected the query (bad_data: invalid parameter "query": 1:5: parse error: unexpected end of input); fix the PromQL query"#
        );

        let body = r#"{"status":"error","errorType":"execution","error":"found duplicate series for the match group"}"#;
        assert!(matches!(
            sample_from_response(body),
            Err(PrometheusError::Rejected { .. })
        ));

        let body = r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
        let e = sample_from_response(body).unwrap_err();
        assert!(
            matches!(&e, PrometheusError::Failed { error_type, message, .. }
                if error_type == "timeout" && message == "query timed out in expression evaluation"),
            "{e:?}"
        );
    }

    #[test]
    fn unexpected_answers_are_malformed() {
        for body in [
            "",
            "<html>not found</html>",
            "ok\n",
            "{}",
            r#"{"status":"success"}"#,
            r#"{"status":"pending","data":{}}"#,
            r#"{"status":"success","data":{"resultType":"vector"}}"#,
            r#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"five"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,5]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{"count":"2","sum":"3"}]}]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1e300,"1"]}}"#,
        ] {
            let e = sample_from_response(body).unwrap_err();
            assert!(
                matches!(e, PrometheusError::Malformed { .. }),
                "{body}: {e:?}"
            );
            assert!(
                e.to_string().contains("not Prometheus' query API JSON"),
                "{e}"
            );
        }
    }

    #[test]
    fn extra_fields_and_warnings_are_ignored() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1712345678,"4"]}],"stats":{"timings":{}}},"warnings":["w"],"infos":["i"]}"#;
        assert!(matches!(
            sample_from_response(body).unwrap(),
            Sample::Value { total, .. } if total == 4.0
        ));
    }

    #[test]
    fn errors_name_the_url_once_known() {
        let e = sample_from_response("nope")
            .unwrap_err()
            .at("http://p:9090");
        assert_eq!(e.url(), "http://p:9090");
        assert!(
            e.to_string()
                .starts_with("Prometheus at http://p:9090: malformed answer"),
            "{e}"
        );
        let e = PrometheusError::Rejected {
            url: "http://p:9090".into(),
            reason: "HTTP 400".into(),
        };
        assert_eq!(
            e.to_string(),
            "Prometheus at http://p:9090 rejected the query (HTTP 400); fix the PromQL query"
        );
    }
}
