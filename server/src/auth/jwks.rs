//! Keys from an identity provider's JWKS URL (Keycloak, Auth0, Cognito, Dex publish
//! one): fetched at start and every refresh interval, fetched again when a token names
//! a `kid` the cache does not hold (a key rotated in) but at most once per refetch
//! interval, so tokens with made-up `kid`s cannot make the server hammer the provider;
//! and when a fetch fails the last good keys stay in use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::keys::SigningKey;
use crate::http_client::{HttpClient, Url};
use crate::metrics::Metrics;
use crate::sync::{read, write};

/// Most keys taken from one JWKS (providers publish a handful).
pub const MAX_KEYS: usize = 64;
/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where the keys come from and how often.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// https only.
    pub url: String,
    /// A PEM CA for a provider behind a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// Fetch this often in any case.
    pub refresh: Duration,
    /// At most one fetch per this for an unknown `kid`.
    pub min_refetch: Duration,
}

/// The cache.
pub struct JwksCache {
    url: Url,
    client: HttpClient,
    keys: RwLock<Arc<HashMap<String, SigningKey>>>,
    /// When the last fetch started; held across a fetch so concurrent misses wait for
    /// one fetch instead of starting their own.
    last_fetch: Arc<tokio::sync::Mutex<Option<Instant>>>,
    min_refetch: Duration,
    metrics: Metrics,
}

/// Why a fetch brought no keys (the old ones stay).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("JWKS {url}: {why}")]
pub struct JwksError {
    url: String,
    why: String,
}

impl JwksCache {
    pub fn new(settings: &JwksSettings, metrics: Metrics) -> Result<JwksCache, String> {
        let url = Url::parse(&settings.url, true).map_err(|e| format!("CHAT_JWKS_URL: {e}"))?;
        let client = HttpClient::new(
            settings.ca_file.as_deref(),
            Duration::from_secs(5),
            MAX_JWKS_BYTES,
        )
        .map_err(|e| format!("CHAT_JWKS_CA_FILE: {e}"))?;
        Ok(JwksCache {
            url,
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: Arc::new(tokio::sync::Mutex::new(None)),
            min_refetch: settings.min_refetch,
            metrics,
        })
    }

    /// The key with `kid`, fetching the JWKS again first if it is unknown and the last
    /// fetch is older than the refetch interval. The fetch runs in a task of its own, so
    /// a client that hangs up mid-upgrade cannot cancel it (and with it the refetches of
    /// the next interval).
    pub async fn key(self: &Arc<Self>, kid: &str) -> Option<SigningKey> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        {
            let mut last = self.last_fetch.clone().lock_owned().await;
            // Another task may have fetched while this one waited for the lock.
            if let Some(key) = self.cached(kid) {
                return Some(key);
            }
            if last.is_some_and(|at| at.elapsed() < self.min_refetch) {
                return None;
            }
            *last = Some(Instant::now());
            let cache = self.clone();
            let fetch = tokio::spawn(async move {
                // Held until the fetch is done, whoever waits for it.
                let _last = last;
                let _ = cache.fetch_locked().await;
            });
            let _ = fetch.await;
        }
        self.cached(kid)
    }

    /// Fetches now (the periodic refresh), whatever the refetch interval says.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_locked().await
    }

    /// Replaces the keys held (after a good fetch).
    pub(crate) fn store(&self, keys: HashMap<String, SigningKey>) {
        *write(&self.keys) = Arc::new(keys);
    }

    fn cached(&self, kid: &str) -> Option<SigningKey> {
        read(&self.keys).get(kid).cloned()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        read(&self.keys).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn fetch_locked(&self) -> Result<usize, JwksError> {
        let error = |why: String| JwksError {
            url: self.url.to_string(),
            why,
        };
        let result = match self.client.get(&self.url).await {
            Ok(r) => keys_from_answer(r.status, &r.body).map_err(error),
            Err(e) => Err(error(e.to_string())),
        };
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.store(keys);
                self.metrics.jwks_fetches.with_label_values(&["ok"]).inc();
                self.metrics.jwks_keys.set(n as i64);
                tracing::info!(url = %self.url, keys = n, "JWKS fetched");
                Ok(n)
            }
            Err(e) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, keys_kept = self.len(), "JWKS fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }
}

/// The keys of the provider's answer: only a `200` with a usable key set counts, so a
/// proxy's error page or an empty set never replaces the keys held.
pub fn keys_from_answer(status: u16, body: &[u8]) -> Result<HashMap<String, SigningKey>, String> {
    if status != 200 {
        return Err(format!("answered HTTP {status}"));
    }
    parse_jwks(body)
}

/// The signing keys of a JWKS document, by `kid`: RSA (RS256), EC P-256 (ES256) and
/// Ed25519 (EdDSA) keys meant for signatures. Keys without a `kid`, for encryption,
/// symmetric (`oct`) or of other types are skipped; a document with none left is an
/// error, so a broken answer never replaces good keys with nothing.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, SigningKey>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = HashMap::new();
    for value in doc.keys {
        if keys.len() >= MAX_KEYS {
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Some(alg) = algorithm_of(&jwk) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, SigningKey { alg, key });
        }
    }
    if keys.is_empty() {
        return Err("no usable signing key (RSA, EC P-256 or Ed25519 with a kid)".into());
    }
    Ok(keys)
}

/// The one algorithm a key is used for: its type decides, and a stated `alg` must agree.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let stated = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    match stated {
        Some(alg) if alg != by_type => None,
        _ => Some(by_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw","e":"AQAB"}"#;
    const EC: &str = r#"{"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    const OKP: &str = r#"{"kty":"OKP","kid":"d1","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    fn doc(keys: &[&str]) -> Vec<u8> {
        format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
    }

    #[test]
    fn takes_signing_keys_of_the_three_types() {
        let keys = parse_jwks(&doc(&[RSA, EC, OKP])).unwrap();
        assert_eq!(keys["r1"].alg, Algorithm::RS256);
        assert_eq!(keys["e1"].alg, Algorithm::ES256);
        assert_eq!(keys["d1"].alg, Algorithm::EdDSA);
    }

    #[test]
    fn skips_what_it_cannot_use_and_refuses_an_empty_result() {
        let no_kid = RSA.replace(r#""kid":"r1","#, "");
        let for_encryption = RSA.replace(r#""use":"sig""#, r#""use":"enc""#);
        let wrong_alg = RSA.replace(r#""alg":"RS256""#, r#""alg":"ES256""#);
        let other_alg = RSA.replace(r#""alg":"RS256""#, r#""alg":"PS256""#);
        let symmetric = r#"{"kty":"oct","kid":"h1","k":"c2VjcmV0c2VjcmV0c2VjcmV0"}"#;
        let p384 = EC.replace("P-256", "P-384");
        let okp_not_ed25519 = OKP.replace("Ed25519", "P-256");
        let garbage = r#"{"kty":"RSA","kid":"g"}"#;
        for bad in [
            no_kid.as_str(),
            &for_encryption,
            &wrong_alg,
            &other_alg,
            symmetric,
            &p384,
            &okp_not_ed25519,
            garbage,
        ] {
            let err = parse_jwks(&doc(&[bad])).err();
            assert!(err.is_some_and(|e| e.contains("no usable")), "{bad}");
        }
        let keys = parse_jwks(&doc(&[symmetric, EC])).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["e1"]);
        assert!(parse_jwks(b"[]").unwrap_err().contains("not a JWKS"));
    }

    /// Unknown `kid`s fetch again at most once per refetch interval, and a failed fetch
    /// keeps the keys held. (A closed loopback port: each fetch fails at once.)
    #[tokio::test]
    async fn unknown_kids_fetch_at_a_bounded_rate_and_failures_keep_the_keys() {
        let metrics = Metrics::new();
        let cache = Arc::new(
            JwksCache::new(
                &JwksSettings {
                    url: "https://127.0.0.1:1/jwks".into(),
                    ca_file: None,
                    refresh: Duration::from_secs(3600),
                    min_refetch: Duration::from_millis(300),
                },
                metrics.clone(),
            )
            .unwrap(),
        );
        assert!(cache.is_empty());
        cache.store(parse_jwks(&doc(&[RSA, EC, OKP])).unwrap());
        assert_eq!(cache.len(), 3);
        cache.store(parse_jwks(&doc(&[EC])).unwrap());
        assert!(!cache.is_empty());
        let failures = || metrics.jwks_fetches.with_label_values(&["error"]).get();
        assert!(cache.key("e1").await.is_some());
        assert_eq!(failures(), 0, "a known kid fetches nothing");
        for kid in ["x1", "x2", "x3"] {
            assert!(cache.key(kid).await.is_none());
        }
        assert_eq!(failures(), 1, "three unknown kids at once, one fetch");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(cache.key("x4").await.is_none());
        assert_eq!(failures(), 2);
        assert!(cache.refresh().await.is_err());
        assert_eq!(
            failures(),
            3,
            "the periodic refresh fetches whatever the interval"
        );
        assert_eq!(cache.len(), 1, "failed fetches keep the last good keys");
        assert!(cache.key("e1").await.is_some());
        assert!(JwksCache::new(
            &JwksSettings {
                url: "http://idp/jwks".into(),
                ca_file: None,
                refresh: Duration::from_secs(1),
                min_refetch: Duration::from_secs(1),
            },
            Metrics::new()
        )
        .is_err());
    }

    #[test]
    fn only_a_200_with_usable_keys_is_taken() {
        let good = doc(&[RSA, EC, OKP]);
        assert_eq!(keys_from_answer(200, &good).map(|k| k.len()), Ok(3));
        for status in [201, 204, 302, 404, 500] {
            assert_eq!(
                keys_from_answer(status, &good).err(),
                Some(format!("answered HTTP {status}"))
            );
        }
        assert!(keys_from_answer(200, b"<html>").is_err());
    }

    #[test]
    fn takes_at_most_max_keys() {
        let many: Vec<String> = (0..MAX_KEYS + 5)
            .map(|i| EC.replace(r#""kid":"e1""#, &format!(r#""kid":"e{i}""#)))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(parse_jwks(&doc(&refs)).unwrap().len(), MAX_KEYS);
    }
}
