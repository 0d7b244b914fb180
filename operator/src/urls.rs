//! URLs taken from a ChatCluster spec, checked before anything uses them. Pure.
//!
//! The operator calls one of them itself (`autoscaling.prometheusUrl`) and hands the
//! others to the chat-server pods (`auth.jwksUrl`, `auth.joinHook.url`). A base URL is
//! joined with a path the operator chooses (`/api/v1/query`), so what the user writes
//! must be a plain `scheme://host[:port][/path]`: a `?` or `#` at its end would turn the
//! operator's path into a query or fragment and make it request the base URL's own path
//! instead (on whatever host it names); `user:password@` would put credentials in logs,
//! Events and conditions, which quote the URL. Those are refused here (the validate
//! stage turns the refusal into a Degraded condition), and by the CRD's CEL rules, which
//! are kept equivalent: see [`CEL_HTTP_BASE_URL`] and friends.

use std::fmt;

/// CEL rule (on a string field) equivalent to [`check`] with [`UrlPolicy::BASE`]: an
/// `http://` or `https://` URL with a host, no userinfo, query or fragment, printable
/// ASCII only, no backslash. A regular expression does the shape (Go's `isURL`, unlike
/// the check here, accepts spaces, and the two CEL implementations that evaluate these
/// rules, the API server's and the operator's, parse fragments differently), `isURL`
/// and `getHostname` the syntax.
pub const CEL_HTTP_BASE_URL: &str = r"self.matches('^https?://[^/?#@]+(/[^?#]*)?$') && self.matches('^[!-~]+$') && !self.contains('\\') && isURL(self) && url(self).getHostname() != ''";

/// [`CEL_HTTP_BASE_URL`] for `https://` only.
pub const CEL_HTTPS_BASE_URL: &str = r"self.matches('^https://[^/?#@]+(/[^?#]*)?$') && self.matches('^[!-~]+$') && !self.contains('\\') && isURL(self) && url(self).getHostname() != ''";

/// [`CEL_HTTP_BASE_URL`] that also allows a query (a URL called as it is, never joined).
pub const CEL_HTTP_URL_WITH_QUERY: &str = r"self.matches('^https?://[^/?#@]+([/?][^#]*)?$') && self.matches('^[!-~]+$') && !self.contains('\\') && isURL(self) && url(self).getHostname() != ''";

/// Longest URL a spec field takes (the CRD's `maxLength`; also bounds the CEL cost).
pub const MAX_URL_LEN: usize = 2048;

/// Which URLs a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Only `https://` (a key source: a plain-HTTP JWKS could be replaced in transit).
    pub https_only: bool,
    /// A query is allowed (the URL is called as it is, never joined with a path).
    pub allow_query: bool,
}

impl UrlPolicy {
    /// A base URL the operator joins paths to (Prometheus).
    pub const BASE: UrlPolicy = UrlPolicy {
        https_only: false,
        allow_query: false,
    };
    /// A key source fetched by the pods (a JWKS).
    pub const HTTPS_BASE: UrlPolicy = UrlPolicy {
        https_only: true,
        allow_query: false,
    };
    /// An endpoint called as written (the join hook).
    pub const ENDPOINT: UrlPolicy = UrlPolicy {
        https_only: false,
        allow_query: true,
    };
}

/// What is wrong with a URL. Each message completes "`<field>` ...", says what to fix
/// and never repeats the URL (the caller names the field and quotes the URL only when
/// it holds no credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("must start with https:// (keys must not travel over plain HTTP)")]
    NotHttps,
    #[error("must be at most {MAX_URL_LEN} characters")]
    TooLong,
    #[error("must contain only printable ASCII without spaces or backslashes (percent-encode anything else)")]
    Characters,
    #[error("has no host; write it as scheme://host[:port][/path]")]
    NoHost,
    #[error("must not carry user:password@ before the host; remove the credentials from the URL")]
    UserInfo,
    #[error("must not have a query (?...): give the base URL only, the operator adds its own path and query")]
    Query,
    #[error("must not have a fragment (#...); remove it")]
    Fragment,
    #[error("is not a valid URL ({0}); write it as scheme://host[:port][/path]")]
    Invalid(String),
}

/// A URL that passed [`check`]: its parts, for joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    /// `http` or `https`.
    scheme: &'static str,
    /// `host[:port]`.
    authority: String,
    /// The path without trailing slashes (empty for none).
    path: String,
    /// The query without `?`, when the policy allows one and there is one.
    query: Option<String>,
}

impl CheckedUrl {
    /// `base + path + ?query`: `path` (starting with `/`) is appended to the base URL's
    /// own path (kept, e.g. a Prometheus behind `--web.route-prefix`), and `query` (already
    /// encoded, without `?`) becomes the whole query. Only for URLs checked without a
    /// query ([`UrlPolicy::BASE`]): a base query would otherwise be dropped.
    pub fn join(&self, path: &str, query: &str) -> String {
        let mut url = format!("{}://{}{}{}", self.scheme, self.authority, self.path, path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl fmt::Display for CheckedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// Checks `url` against `policy` and splits it into parts.
pub fn check(url: &str, policy: UrlPolicy) -> Result<CheckedUrl, UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        if policy.https_only {
            return Err(UrlError::NotHttps);
        }
        ("http", rest)
    } else if policy.https_only {
        return Err(UrlError::NotHttps);
    } else {
        return Err(UrlError::Scheme);
    };
    // Printable ASCII only: no spaces, controls or non-ASCII (which parsers normalize
    // differently), and no backslash (which browsers and some parsers read as `/`).
    if !url
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\')
    {
        return Err(UrlError::Characters);
    }
    if url.contains('#') {
        return Err(UrlError::Fragment);
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (path, query) = match after.split_once('?') {
        Some(_) if !policy.allow_query => return Err(UrlError::Query),
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (after, None),
    };
    check_authority(authority)?;
    // And as the HTTP client will parse it.
    url.parse::<http::Uri>()
        .map_err(|e| UrlError::Invalid(e.to_string()))?;
    Ok(CheckedUrl {
        scheme,
        authority: authority.to_owned(),
        path: path.trim_end_matches('/').to_owned(),
        query: query.filter(|q| !q.is_empty()),
    })
}

/// `host[:port]`: a DNS name or IPv4 address, or an IPv6 address in brackets, and a port
/// from 1 to 65535 (the HTTP client's parser takes any text as a port, and a bad one
/// would only fail at the first request, less clearly).
fn check_authority(authority: &str) -> Result<(), UrlError> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or_else(|| {
                UrlError::Invalid("an IPv6 address needs its closing ]".to_owned())
            })?;
            if addr.is_empty()
                || !addr
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(UrlError::Invalid(format!(
                    "[{addr}] is not an IPv6 address"
                )));
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    UrlError::Invalid("only :port may follow an IPv6 address".to_owned())
                })?),
            };
            (addr, port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(UrlError::Invalid(format!(
            "host `{host}` may only hold letters, digits, '-', '.' and '_' (or be an IPv6 address in brackets)"
        )));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !valid {
            return Err(UrlError::Invalid(format!(
                "port `{port}` must be a number from 1 to 65535"
            )));
        }
    }
    Ok(())
}

/// `field` and what is wrong with its URL `url`, for a condition or an Event, quoting
/// the URL with any `user:password@` masked.
pub fn describe(field: &str, url: &str, e: &UrlError) -> String {
    format!("{field} `{}` {e}", redact_userinfo(url))
}

/// `url` with the userinfo of its authority (what precedes the last `@` before the
/// path) replaced by `***`, so a password never reaches a condition, Event or log.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_keep_their_path_and_lose_trailing_slashes() {
        for (url, joined) in [
            ("http://p:9090", "http://p:9090/api/v1/query?query=up"),
            ("http://p:9090/", "http://p:9090/api/v1/query?query=up"),
            ("http://p:9090//", "http://p:9090/api/v1/query?query=up"),
            (
                "https://h/prometheus/",
                "https://h/prometheus/api/v1/query?query=up",
            ),
            (
                "http://[::1]:9090",
                "http://[::1]:9090/api/v1/query?query=up",
            ),
            (
                "http://prometheus-operated.monitoring.svc:9090",
                "http://prometheus-operated.monitoring.svc:9090/api/v1/query?query=up",
            ),
        ] {
            let checked = check(url, UrlPolicy::BASE).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(checked.join("/api/v1/query", "query=up"), joined);
        }
    }

    /// The bug this module exists for: a base URL ending in `?` (or `#`) made the joined
    /// path part of the query, so the operator requested the base URL's own path.
    #[test]
    fn a_query_or_fragment_in_a_base_url_is_refused() {
        for url in [
            "http://evil.example/steal?",
            "http://evil.example/steal?x=",
            "http://p:9090?",
            "http://p:9090/?a=b",
        ] {
            assert_eq!(check(url, UrlPolicy::BASE), Err(UrlError::Query), "{url}");
        }
        for url in ["http://p:9090#", "http://p/x#frag", "http://p/x?a#b"] {
            assert_eq!(
                check(url, UrlPolicy::BASE),
                Err(UrlError::Fragment),
                "{url}"
            );
        }
    }

    #[test]
    fn other_schemes_userinfo_and_odd_characters_are_refused() {
        let cases = [
            ("prometheus:9090", UrlError::Scheme),
            ("ftp://p", UrlError::Scheme),
            ("HTTP://p", UrlError::Scheme),
            ("http:/p", UrlError::Scheme),
            ("//p:9090", UrlError::Scheme),
            ("http://user:pw@p:9090", UrlError::UserInfo),
            ("http://user@p", UrlError::UserInfo),
            ("http://p/a b", UrlError::Characters),
            ("http://p\\@evil", UrlError::Characters),
            ("http://p/\u{e9}", UrlError::Characters),
            ("http://p/\n", UrlError::Characters),
            ("http://", UrlError::NoHost),
            ("http:///path", UrlError::NoHost),
            ("http://:9090", UrlError::NoHost),
        ];
        for (url, expected) in cases {
            assert_eq!(check(url, UrlPolicy::BASE), Err(expected), "{url}");
        }
        for url in [
            "http://p:port",
            "http://p:",
            "http://p:0",
            "http://p:65536",
            "http://p:1:2",
            "http://[::1",
            "http://[]:80",
            "http://[::1]x",
            "http://[zz]",
            "http://p%2e:80",
            "http://p!:80",
        ] {
            assert!(
                matches!(check(url, UrlPolicy::BASE), Err(UrlError::Invalid(_))),
                "{url}: {:?}",
                check(url, UrlPolicy::BASE)
            );
        }
        for url in [
            "http://p:1",
            "http://p:65535",
            "http://[fd00::1]:80/x",
            "http://[fd00::1]/x",
            "http://10.0.0.1",
        ] {
            assert!(check(url, UrlPolicy::BASE).is_ok(), "{url}");
        }
        assert_eq!(
            check(
                &format!("http://p/{}", "a".repeat(MAX_URL_LEN)),
                UrlPolicy::BASE
            ),
            Err(UrlError::TooLong)
        );
        // Exactly the bound is allowed, one more is not.
        let at_bound = format!("http://p/{}", "a".repeat(MAX_URL_LEN - "http://p/".len()));
        assert_eq!(at_bound.len(), MAX_URL_LEN);
        assert!(check(&at_bound, UrlPolicy::BASE).is_ok());
        assert_eq!(
            check(&format!("{at_bound}a"), UrlPolicy::BASE),
            Err(UrlError::TooLong)
        );
    }

    #[test]
    fn key_sources_must_be_https() {
        let jwks = "https://auth.example.com/realms/chat/protocol/openid-connect/certs";
        assert!(check(jwks, UrlPolicy::HTTPS_BASE).is_ok());
        assert_eq!(
            check("http://auth.example.com/keys", UrlPolicy::HTTPS_BASE),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            check("auth.example.com/keys", UrlPolicy::HTTPS_BASE),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            check("https://a.example/keys?tenant=1", UrlPolicy::HTTPS_BASE),
            Err(UrlError::Query)
        );
    }

    #[test]
    fn endpoints_may_have_a_query_but_no_fragment_or_userinfo() {
        let hook = check(
            "http://app.default.svc:8000/chat/join?v=2",
            UrlPolicy::ENDPOINT,
        )
        .unwrap();
        assert_eq!(
            hook.to_string(),
            "http://app.default.svc:8000/chat/join?v=2"
        );
        assert_eq!(hook.authority(), "app.default.svc:8000");
        assert!(check("https://app?x", UrlPolicy::ENDPOINT).is_ok());
        assert_eq!(
            check("https://app/join#x", UrlPolicy::ENDPOINT),
            Err(UrlError::Fragment)
        );
        assert_eq!(
            check("https://u:p@app/join", UrlPolicy::ENDPOINT),
            Err(UrlError::UserInfo)
        );
    }

    #[test]
    fn descriptions_never_quote_credentials() {
        let url = "http://admin:hunter2@p:9090";
        let e = check(url, UrlPolicy::BASE).unwrap_err();
        let text = describe("spec.autoscaling.prometheusUrl", url, &e);
        assert_eq!(
            text,
            "spec.autoscaling.prometheusUrl `http://***@p:9090` must not carry user:password@ before the host; remove the credentials from the URL"
        );
        assert_eq!(
            redact_userinfo("https://a@b:c@h/x@y?q#f"),
            "https://***@h/x@y?q#f"
        );
        assert_eq!(redact_userinfo("http://h/p@x"), "http://h/p@x");
        assert_eq!(redact_userinfo("no-scheme@h"), "no-scheme@h");
        let e = check("http://p?", UrlPolicy::BASE).unwrap_err();
        assert_eq!(
            describe("spec.autoscaling.prometheusUrl", "http://p?", &e),
            "spec.autoscaling.prometheusUrl `http://p?` must not have a query (?...): give the base URL only, the operator adds its own path and query"
        );
    }
}
