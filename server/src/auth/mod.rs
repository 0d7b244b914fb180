//! Who is connecting: a JWT (`sub` = user id, `exp` required, `nbf` honoured, `iss` and
//! `aud` enforced when configured) signed with the HS256 secret, the public key file
//! (RS256, ES256 or EdDSA) or a key of the JWKS URL; anonymous users only when enabled;
//! and the Origin allow-list. Runs before the WebSocket upgrade (or on the connection's
//! first frame, `auth`), again for a `refresh` frame, and for the room tokens sent with
//! `join`.
//!
//! Anonymous users can never take a name a token could carry: once any token key is
//! configured, an anonymous user's id is `~NAME`, and no token `sub` may start with `~`.
//! Without keys there are no tokens, and anonymous ids stay as chosen (`--dev`).

pub mod jwks;
pub mod keys;

use std::sync::Arc;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::protocol::{validate_user, ANONYMOUS_PREFIX};
use crate::rooms::{parse_grants, Pattern};
use jwks::JwksCache;
use keys::{public_key_from_pem, SigningKey, ACCEPTED};

pub use keys::KeyError;

/// Authentication settings (validated from the flags by [`crate::config`]).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub allow_anonymous: bool,
    pub hs256_secret: Option<Vec<u8>>,
    /// PEM public key (RSA, EC P-256 or Ed25519).
    pub public_key_pem: Option<Vec<u8>>,
    pub jwks: Option<jwks::JwksSettings>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// `None` allows any origin.
    pub allowed_origins: Option<Vec<String>>,
}

/// Why credentials were refused. Each maps to an HTTP status (or close code) and a
/// message for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <jwt>`, or an `auth` frame with the token first")]
    MissingToken,
    #[error("token rejected: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (`nbf` is in the future)")]
    NotYetValid,
    #[error("token algorithm {0:?} is not accepted by this server")]
    WrongAlgorithm(Algorithm),
    #[error("token key id `{0}` is unknown")]
    UnknownKey(String),
    #[error("token has no key id (`kid`), which keys from a JWKS need")]
    MissingKeyId,
    #[error("token `sub` is not a valid user id: {0}")]
    InvalidSubject(String),
    #[error("anonymous user name is invalid: {0}")]
    InvalidAnonymousUser(String),
    #[error("origin `{0}` is not allowed")]
    OriginNotAllowed(String),
    #[error("the token is for user `{token}` but this session is `{session}`")]
    OtherUser { token: String, session: String },
    #[error("a room token (claim `room`) cannot open a connection")]
    RoomTokenAsConnectionToken,
    #[error("the room token is for room `{token}`, not `{room}`")]
    OtherRoom { token: String, room: String },
    #[error("the room token is valid for longer than {0} s; room tokens must be short-lived")]
    RoomTokenTooLong(u64),
}

impl AuthError {
    /// 403 for a forbidden origin, 401 for everything about credentials.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::OriginNotAllowed(_) => 403,
            _ => 401,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Room patterns the application grants this user (connection tokens).
    #[serde(default)]
    rooms: Option<Vec<String>>,
    /// The one room a room token admits to.
    #[serde(default)]
    room: Option<String>,
}

/// Who a connection is, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// The token's `exp` (Unix seconds); `None` for an anonymous user, whose session has
    /// no expiry.
    pub expires_at: Option<u64>,
    pub anonymous: bool,
    /// Room patterns from the token's `rooms` claim.
    pub grants: Arc<[Pattern]>,
}

impl Identity {
    fn anonymous(user: String) -> Identity {
        Identity {
            user,
            expires_at: None,
            anonymous: true,
            grants: Arc::new([]),
        }
    }
}

/// Seconds of clock skew allowed on `exp` and `nbf`, at the upgrade and during the
/// session.
pub const EXP_LEEWAY_SECS: u64 = 5;

/// Longest a room token may still be valid when it is used (its `exp` at most this far
/// ahead): a room token is a ticket to enter, and a stolen long-lived one would be a
/// standing grant.
pub const ROOM_TOKEN_MAX_SECS: u64 = 600;

/// Verifies credentials against the configured keys.
pub struct Authenticator {
    settings: AuthSettings,
    hs256: Option<DecodingKey>,
    public: Option<SigningKey>,
    jwks: Option<Arc<JwksCache>>,
}

/// Error building the authenticator from configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{0}")]
    Jwks(String),
}

impl Authenticator {
    pub fn new(settings: AuthSettings, metrics: Metrics) -> Result<Self, SetupError> {
        let hs256 = settings
            .hs256_secret
            .as_deref()
            .map(DecodingKey::from_secret);
        let public = match settings.public_key_pem.as_deref() {
            Some(pem) => Some(public_key_from_pem(pem)?),
            None => None,
        };
        let jwks = match &settings.jwks {
            Some(jwks) => Some(Arc::new(
                JwksCache::new(jwks, metrics).map_err(SetupError::Jwks)?,
            )),
            None => None,
        };
        Ok(Authenticator {
            settings,
            hs256,
            public,
            jwks,
        })
    }

    /// The JWKS cache, for the periodic refresh the server starts.
    pub fn jwks(&self) -> Option<Arc<JwksCache>> {
        self.jwks.clone()
    }

    /// Whether any token key is configured (tokens can carry identities).
    pub fn has_keys(&self) -> bool {
        self.hs256.is_some() || self.public.is_some() || self.jwks.is_some()
    }

    /// Checks the Origin header (when present) against the allow-list.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), AuthError> {
        match (&self.settings.allowed_origins, origin) {
            (None, _) | (_, None) => Ok(()),
            (Some(allowed), Some(origin)) => {
                let origin = origin.trim_end_matches('/');
                if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
                    Ok(())
                } else {
                    Err(AuthError::OriginNotAllowed(origin.to_owned()))
                }
            }
        }
    }

    /// Whether a connection without any credentials may still authenticate with an
    /// `auth` first frame (any token key is configured).
    pub fn accepts_first_frame_token(&self) -> bool {
        self.has_keys()
    }

    /// Returns the identity of a bearer token or, when enabled, of an anonymous name
    /// (`~NAME` once token keys exist).
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        anonymous_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(token) = bearer {
            return self.connection_token(token).await;
        }
        if self.settings.allow_anonymous {
            if let Some(name) = anonymous_user {
                validate_user(name)
                    .map_err(|e| AuthError::InvalidAnonymousUser(e.message.clone()))?;
                if !self.has_keys() {
                    return Ok(Identity::anonymous(name.to_owned()));
                }
                let user = format!("{ANONYMOUS_PREFIX}{name}");
                // The prefix must not push the id past the name limit.
                crate::protocol::validate_recipient(&user)
                    .map_err(|e| AuthError::InvalidAnonymousUser(e.message.clone()))?;
                return Ok(Identity::anonymous(user));
            }
        }
        Err(AuthError::MissingToken)
    }

    /// Checks a token sent with a `refresh` frame: valid, and for `user`. Its grants
    /// replace the session's.
    pub async fn refresh(&self, token: &str, user: &str) -> Result<Identity, AuthError> {
        let identity = self.connection_token(token).await?;
        if identity.user != user {
            return Err(AuthError::OtherUser {
                token: identity.user,
                session: user.to_owned(),
            });
        }
        Ok(identity)
    }

    /// Checks a room token sent with `join`: signed by a configured key, for `user`, and
    /// naming `room`. Returns its `exp`.
    pub async fn room_token(&self, token: &str, user: &str, room: &str) -> Result<u64, AuthError> {
        let claims = self.verify(token).await?;
        if claims.sub != user {
            return Err(AuthError::OtherUser {
                token: claims.sub,
                session: user.to_owned(),
            });
        }
        let now = crate::clock::now_us() / 1_000_000;
        if claims.exp > now.saturating_add(ROOM_TOKEN_MAX_SECS) {
            return Err(AuthError::RoomTokenTooLong(ROOM_TOKEN_MAX_SECS));
        }
        match claims.room {
            Some(r) if r == room => Ok(claims.exp),
            Some(r) => Err(AuthError::OtherRoom {
                token: r,
                room: room.to_owned(),
            }),
            None => Err(AuthError::InvalidToken(
                "a room token needs a `room` claim naming the room".into(),
            )),
        }
    }

    async fn connection_token(&self, token: &str) -> Result<Identity, AuthError> {
        let claims = self.verify(token).await?;
        if claims.room.is_some() {
            return Err(AuthError::RoomTokenAsConnectionToken);
        }
        let grants = parse_grants(claims.rooms.as_deref().unwrap_or_default())
            .map_err(|e| AuthError::InvalidToken(e.0))?;
        Ok(Identity {
            user: claims.sub,
            expires_at: Some(claims.exp),
            anonymous: false,
            grants: grants.into(),
        })
    }

    async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let key = self.key_for(&header).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not just match when present.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            _ => AuthError::InvalidToken(e.to_string()),
        })?;
        validate_user(&data.claims.sub)
            .map_err(|e| AuthError::InvalidSubject(e.message.clone()))?;
        Ok(data.claims)
    }

    /// The key for a token's header: its algorithm picks the kind of key, and only a key
    /// made for exactly that algorithm is used.
    async fn key_for(&self, header: &Header) -> Result<DecodingKey, AuthError> {
        let alg = header.alg;
        if !ACCEPTED.contains(&alg) {
            return Err(AuthError::WrongAlgorithm(alg));
        }
        if alg == Algorithm::HS256 {
            return self.hs256.clone().ok_or(AuthError::WrongAlgorithm(alg));
        }
        if let (Some(jwks), Some(kid)) = (&self.jwks, &header.kid) {
            return match jwks.key(kid).await {
                Some(key) if key.alg == alg => Ok(key.key),
                Some(_) => Err(AuthError::WrongAlgorithm(alg)),
                None => Err(AuthError::UnknownKey(kid.chars().take(64).collect())),
            };
        }
        match &self.public {
            Some(key) if key.alg == alg => Ok(key.key.clone()),
            _ if self.jwks.is_some() => Err(AuthError::MissingKeyId),
            _ => Err(AuthError::WrongAlgorithm(alg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn now() -> u64 {
        crate::clock::now_us() / 1_000_000
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn hs_token(sub: &str, exp: u64) -> String {
        hs(json!({"sub": sub, "exp": exp}))
    }

    fn settings(allow_anonymous: bool) -> AuthSettings {
        AuthSettings {
            allow_anonymous,
            hs256_secret: Some(SECRET.to_vec()),
            allowed_origins: Some(vec!["https://ok.example".into()]),
            ..AuthSettings::default()
        }
    }

    fn auth_with(settings: AuthSettings) -> Authenticator {
        Authenticator::new(settings, Metrics::new()).unwrap()
    }

    fn auth(allow_anonymous: bool) -> Authenticator {
        auth_with(settings(allow_anonymous))
    }

    fn user(identity: Result<Identity, AuthError>) -> Result<String, AuthError> {
        identity.map(|i| i.user)
    }

    #[tokio::test]
    async fn hs256_accepts_valid_and_rejects_bad_tokens() {
        let a = auth(false);
        let exp = now() + 60;
        let alice = a
            .authenticate(Some(&hs_token("alice", exp)), None)
            .await
            .unwrap();
        assert_eq!(
            (alice.user.as_str(), alice.expires_at, alice.anonymous),
            ("alice", Some(exp), false)
        );
        assert!(alice.grants.is_empty());
        assert_eq!(
            user(
                a.authenticate(Some(&hs_token("alice", now() - 120)), None)
                    .await
            ),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            a.authenticate(Some("garbage"), None).await,
            Err(AuthError::InvalidToken(_))
        ));
        assert!(matches!(
            a.authenticate(Some(&hs_token("bad user", now() + 60)), None)
                .await,
            Err(AuthError::InvalidSubject(_))
        ));
        assert!(matches!(
            a.authenticate(Some(&hs_token("~alice", now() + 60)), None)
                .await,
            Err(AuthError::InvalidSubject(_))
        ));
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "mallory", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert!(matches!(
            a.authenticate(Some(&forged), None).await,
            Err(AuthError::InvalidToken(_))
        ));
        // exp is required.
        assert!(matches!(
            a.authenticate(Some(&hs(json!({"sub": "alice"}))), None)
                .await,
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_refused_within_the_leeway_accepted() {
        let a = auth(false);
        let soon = hs(json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 120}));
        assert_eq!(
            user(a.authenticate(Some(&soon), None).await),
            Err(AuthError::NotYetValid)
        );
        let skewed = hs(json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 2}));
        assert_eq!(
            user(a.authenticate(Some(&skewed), None).await),
            Ok("alice".into())
        );
        let past = hs(json!({"sub": "alice", "exp": now() + 600, "nbf": now() - 60}));
        assert!(a.authenticate(Some(&past), None).await.is_ok());
    }

    #[tokio::test]
    async fn alg_none_and_unconfigured_algorithms_are_refused() {
        let a = auth(false);
        let b64 = |v: serde_json::Value| {
            use base64_url::encode;
            encode(&v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "alice", "exp": now() + 60}))
        );
        assert!(a.authenticate(Some(&none), None).await.is_err());
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            user(a.authenticate(Some(&hs384), None).await),
            Err(AuthError::WrongAlgorithm(Algorithm::HS384))
        );
        // RS256 with no public key configured.
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &json!({"sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_rsa_pem(&fixture("test-rs256-private.pem")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            user(a.authenticate(Some(&rs), None).await),
            Err(AuthError::WrongAlgorithm(Algorithm::RS256))
        );
    }

    /// Base64url without padding, for hand-made tokens.
    mod base64_url {
        pub fn encode(s: &str) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let b = s.as_bytes();
            let mut out = String::new();
            for chunk in b.chunks(3) {
                let n = chunk.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    #[tokio::test]
    async fn public_keys_of_each_type_verify_their_algorithm_only() {
        for (public, private, alg) in [
            (
                "test-rs256-public.pem",
                "test-rs256-private.pem",
                Algorithm::RS256,
            ),
            (
                "test-es256-public.pem",
                "test-es256-private.pem",
                Algorithm::ES256,
            ),
            (
                "test-ed25519-public.pem",
                "test-ed25519-private.pem",
                Algorithm::EdDSA,
            ),
        ] {
            let a = auth_with(AuthSettings {
                public_key_pem: Some(fixture(public)),
                ..AuthSettings::default()
            });
            let token = signed(alg, None, private, "bob@example.com");
            assert_eq!(
                user(a.authenticate(Some(&token), None).await),
                Ok("bob@example.com".into()),
                "{alg:?}"
            );
            // The classic confusion: an HS256 token "signed" with the public key's
            // bytes. No HS256 secret is configured, so the key is never tried as one.
            let confused = encode(
                &Header::new(Algorithm::HS256),
                &json!({"sub": "mallory", "exp": now() + 60}),
                &EncodingKey::from_secret(&fixture(public)),
            )
            .unwrap();
            assert_eq!(
                user(a.authenticate(Some(&confused), None).await),
                Err(AuthError::WrongAlgorithm(Algorithm::HS256)),
                "{alg:?}"
            );
        }
    }

    fn signed(alg: Algorithm, kid: Option<&str>, private: &str, sub: &str) -> String {
        let pem = fixture(private);
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, &json!({"sub": sub, "exp": now() + 60}), &key).unwrap()
    }

    #[tokio::test]
    async fn a_public_key_refuses_tokens_of_another_algorithm() {
        let a = auth_with(AuthSettings {
            public_key_pem: Some(fixture("test-es256-public.pem")),
            ..AuthSettings::default()
        });
        assert!(a.has_keys() && a.jwks().is_none());
        let rs = signed(Algorithm::RS256, None, "test-rs256-private.pem", "alice");
        assert_eq!(
            user(a.authenticate(Some(&rs), None).await),
            Err(AuthError::WrongAlgorithm(Algorithm::RS256))
        );
        let ed = signed(Algorithm::EdDSA, None, "test-ed25519-private.pem", "alice");
        assert_eq!(
            user(a.authenticate(Some(&ed), None).await),
            Err(AuthError::WrongAlgorithm(Algorithm::EdDSA))
        );
    }

    /// Keys of a JWKS are picked by `kid` and used for their own algorithm only. (The
    /// URL is a closed loopback port: the fetch an unknown `kid` causes fails at once,
    /// and the keys stored stay.)
    #[tokio::test]
    async fn jwks_keys_are_picked_by_kid_and_used_for_their_algorithm_only() {
        let a = auth_with(AuthSettings {
            jwks: Some(jwks::JwksSettings {
                url: "https://127.0.0.1:1/jwks".into(),
                ca_file: None,
                refresh: std::time::Duration::from_secs(3600),
                min_refetch: std::time::Duration::from_secs(3600),
            }),
            ..AuthSettings::default()
        });
        assert!(a.has_keys());
        let cache = a.jwks().expect("the JWKS cache");
        let es = public_key_from_pem(&fixture("test-es256-public.pem")).unwrap();
        cache.store([("k1".to_owned(), es)].into());
        let ok = signed(
            Algorithm::ES256,
            Some("k1"),
            "test-es256-private.pem",
            "alice",
        );
        assert_eq!(
            user(a.authenticate(Some(&ok), None).await),
            Ok("alice".into())
        );
        let other_alg = signed(
            Algorithm::RS256,
            Some("k1"),
            "test-rs256-private.pem",
            "alice",
        );
        assert_eq!(
            user(a.authenticate(Some(&other_alg), None).await),
            Err(AuthError::WrongAlgorithm(Algorithm::RS256))
        );
        let no_kid = signed(Algorithm::ES256, None, "test-es256-private.pem", "alice");
        assert_eq!(
            user(a.authenticate(Some(&no_kid), None).await),
            Err(AuthError::MissingKeyId)
        );
        let unknown = signed(
            Algorithm::ES256,
            Some("k9"),
            "test-es256-private.pem",
            "alice",
        );
        assert_eq!(
            user(a.authenticate(Some(&unknown), None).await),
            Err(AuthError::UnknownKey("k9".into()))
        );
        assert_eq!(cache.len(), 1, "a failed fetch keeps the keys");
        assert_eq!(
            user(a.authenticate(Some(&ok), None).await),
            Ok("alice".into())
        );
    }

    #[tokio::test]
    async fn a_refresh_must_be_valid_and_for_the_same_user() {
        let a = auth(false);
        let exp = now() + 600;
        assert_eq!(
            a.refresh(&hs_token("alice", exp), "alice")
                .await
                .map(|i| i.expires_at),
            Ok(Some(exp))
        );
        assert_eq!(
            user(a.refresh(&hs_token("mallory", exp), "alice").await),
            Err(AuthError::OtherUser {
                token: "mallory".into(),
                session: "alice".into()
            })
        );
        assert_eq!(
            user(a.refresh(&hs_token("alice", now() - 120), "alice").await),
            Err(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn configured_issuer_and_audience_must_be_present_and_match() {
        let a = auth_with(AuthSettings {
            issuer: Some("https://issuer.example".into()),
            audience: Some("chat".into()),
            ..settings(false)
        });
        let exp = now() + 60;
        let ok =
            hs(json!({"sub": "alice", "exp": exp, "iss": "https://issuer.example", "aud": "chat"}));
        assert_eq!(
            user(a.authenticate(Some(&ok), None).await),
            Ok("alice".into())
        );
        for bad in [
            json!({"sub": "alice", "exp": exp}),
            json!({"sub": "alice", "exp": exp, "iss": "https://issuer.example"}),
            json!({"sub": "alice", "exp": exp, "aud": "chat"}),
            json!({"sub": "alice", "exp": exp, "iss": "https://other.example", "aud": "chat"}),
            json!({"sub": "alice", "exp": exp, "iss": "https://issuer.example", "aud": "other"}),
        ] {
            assert!(
                matches!(
                    a.authenticate(Some(&hs(bad.clone())), None).await,
                    Err(AuthError::InvalidToken(_))
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn anonymous_users_get_their_own_namespace_once_tokens_exist() {
        assert_eq!(
            user(auth(false).authenticate(None, Some("bob")).await),
            Err(AuthError::MissingToken)
        );
        let guest = auth(true).authenticate(None, Some("bob")).await.unwrap();
        assert_eq!((guest.user.as_str(), guest.anonymous), ("~bob", true));
        assert_eq!(guest.expires_at, None);
        assert!(matches!(
            auth(true).authenticate(None, Some("b b")).await,
            Err(AuthError::InvalidAnonymousUser(_))
        ));
        assert!(matches!(
            auth(true).authenticate(None, Some(&"b".repeat(64))).await,
            Err(AuthError::InvalidAnonymousUser(_))
        ));
        // Without keys no token can carry a name: anonymous names stay as chosen.
        let open = auth_with(AuthSettings {
            allow_anonymous: true,
            ..AuthSettings::default()
        });
        assert!(!open.has_keys() && !open.accepts_first_frame_token());
        assert_eq!(
            user(open.authenticate(None, Some("bob")).await),
            Ok("bob".into())
        );
        assert!(auth(false).has_keys() && auth(false).accepts_first_frame_token());
    }

    #[tokio::test]
    async fn rooms_claim_becomes_grants() {
        let a = auth(false);
        let t = hs(json!({"sub": "alice", "exp": now() + 60, "rooms": ["team.*", "ops"]}));
        let id = a.authenticate(Some(&t), None).await.unwrap();
        assert_eq!(id.grants.len(), 2);
        assert!(id.grants[0].matches("team.red"));
        let bad = hs(json!({"sub": "alice", "exp": now() + 60, "rooms": ["a b"]}));
        assert!(matches!(
            a.authenticate(Some(&bad), None).await,
            Err(AuthError::InvalidToken(m)) if m.contains("claim `rooms`")
        ));
    }

    #[tokio::test]
    async fn room_tokens_admit_one_user_to_one_room_and_open_no_connection() {
        let a = auth(false);
        let exp = now() + 60;
        let t = hs(json!({"sub": "alice", "exp": exp, "room": "team.red"}));
        assert_eq!(a.room_token(&t, "alice", "team.red").await, Ok(exp));
        assert_eq!(
            a.room_token(&t, "alice", "team.blue").await,
            Err(AuthError::OtherRoom {
                token: "team.red".into(),
                room: "team.blue".into()
            })
        );
        assert!(matches!(
            a.room_token(&t, "bob", "team.red").await,
            Err(AuthError::OtherUser { .. })
        ));
        assert_eq!(
            user(a.authenticate(Some(&t), None).await),
            Err(AuthError::RoomTokenAsConnectionToken)
        );
        let connection = hs_token("alice", exp);
        assert!(matches!(
            a.room_token(&connection, "alice", "team.red").await,
            Err(AuthError::InvalidToken(_))
        ));
        let long = hs(
            json!({"sub": "alice", "exp": now() + ROOM_TOKEN_MAX_SECS + 60, "room": "team.red"}),
        );
        assert_eq!(
            a.room_token(&long, "alice", "team.red").await,
            Err(AuthError::RoomTokenTooLong(ROOM_TOKEN_MAX_SECS))
        );
        let at_the_cap =
            hs(json!({"sub": "alice", "exp": now() + ROOM_TOKEN_MAX_SECS - 5, "room": "team.red"}));
        assert!(a.room_token(&at_the_cap, "alice", "team.red").await.is_ok());
        let expired = hs(json!({"sub": "alice", "exp": now() - 120, "room": "team.red"}));
        assert_eq!(
            a.room_token(&expired, "alice", "team.red").await,
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn origin_allow_list() {
        let a = auth(true);
        assert!(a.check_origin(None).is_ok());
        assert!(a.check_origin(Some("https://ok.example")).is_ok());
        assert!(a.check_origin(Some("https://ok.example/")).is_ok());
        assert_eq!(
            a.check_origin(Some("https://evil.example")),
            Err(AuthError::OriginNotAllowed("https://evil.example".into()))
        );
        assert_eq!(AuthError::OriginNotAllowed(String::new()).status(), 403);
        assert_eq!(AuthError::Expired.status(), 401);
    }
}
