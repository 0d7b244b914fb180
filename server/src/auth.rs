//! Who is connecting: JWT (HS256 or RS256, `sub` = user id, `exp` required) from the
//! `Authorization: Bearer` header or the `token` query parameter, anonymous `?user=`
//! only when enabled, and the Origin allow-list. Runs before the WebSocket upgrade, and
//! again for a `refresh` frame: a session ends when its token's `exp` passes unless the
//! client sent a fresh token for the same user.

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AuthSettings;
use crate::protocol::validate_user;

/// Why an upgrade was refused. Each maps to an HTTP status and a message for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    MissingToken,
    #[error("token rejected: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("token algorithm {0:?} is not accepted by this server")]
    WrongAlgorithm(Algorithm),
    #[error("token `sub` is not a valid user id: {0}")]
    InvalidSubject(String),
    #[error("anonymous user name is invalid: {0}")]
    InvalidAnonymousUser(String),
    #[error("origin `{0}` is not allowed")]
    OriginNotAllowed(String),
    #[error("the token is for user `{token}` but this session is `{session}`")]
    OtherUser { token: String, session: String },
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
}

/// Who a connection is, and until when (the token's `exp`, Unix seconds; `None` for an
/// anonymous user, whose session has no expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub expires_at: Option<u64>,
}

/// Seconds of clock skew allowed on `exp`, at the upgrade and during the session.
pub const EXP_LEEWAY_SECS: u64 = 5;

/// Verifies credentials against the configured keys.
pub struct Authenticator {
    settings: AuthSettings,
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
}

/// Error building the authenticator from configuration (e.g. an unreadable PEM key).
#[derive(Debug, thiserror::Error)]
#[error("CHAT_JWT_RS256_PUBLIC_KEY_FILE is not an RSA public key in PEM format: {0}")]
pub struct KeyError(String);

impl Authenticator {
    pub fn new(settings: AuthSettings) -> Result<Self, KeyError> {
        let hs256 = settings
            .hs256_secret
            .as_deref()
            .map(DecodingKey::from_secret);
        let rs256 = match settings.rs256_public_key_pem.as_deref() {
            Some(pem) => Some(DecodingKey::from_rsa_pem(pem).map_err(|e| KeyError(e.to_string()))?),
            None => None,
        };
        Ok(Authenticator {
            settings,
            hs256,
            rs256,
        })
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

    /// Returns the user id for a bearer token or, when enabled, an anonymous name.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        anonymous_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(token) = bearer {
            return self.verify(token);
        }
        if self.settings.allow_anonymous {
            if let Some(user) = anonymous_user {
                validate_user(user)
                    .map_err(|e| AuthError::InvalidAnonymousUser(e.message.clone()))?;
                return Ok(Identity {
                    user: user.to_owned(),
                    expires_at: None,
                });
            }
        }
        Err(AuthError::MissingToken)
    }

    /// Checks a token sent with a `refresh` frame: valid, and for `user`.
    pub fn refresh(&self, token: &str, user: &str) -> Result<Identity, AuthError> {
        let identity = self.verify(token)?;
        if identity.user != user {
            return Err(AuthError::OtherUser {
                token: identity.user,
                session: user.to_owned(),
            });
        }
        Ok(identity)
    }

    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or(AuthError::WrongAlgorithm(header.alg))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = EXP_LEEWAY_SECS;
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
        let data = decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::InvalidToken(e.to_string()),
        })?;
        validate_user(&data.claims.sub)
            .map_err(|e| AuthError::InvalidSubject(e.message.clone()))?;
        Ok(Identity {
            user: data.claims.sub,
            expires_at: Some(data.claims.exp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[derive(Serialize)]
    struct TestClaims<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        crate::backplane::now_us() / 1_000_000
    }

    fn hs_token(sub: &str, exp: u64) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &TestClaims { sub, exp },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn auth(allow_anonymous: bool) -> Authenticator {
        Authenticator::new(AuthSettings {
            allow_anonymous,
            hs256_secret: Some(SECRET.to_vec()),
            allowed_origins: Some(vec!["https://ok.example".into()]),
            ..AuthSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn hs256_accepts_valid_and_rejects_bad_tokens() {
        let a = auth(false);
        let exp = now() + 60;
        assert_eq!(
            a.authenticate(Some(&hs_token("alice", exp)), None),
            Ok(Identity {
                user: "alice".into(),
                expires_at: Some(exp)
            })
        );
        assert_eq!(
            a.authenticate(Some(&hs_token("alice", now() - 120)), None),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            a.authenticate(Some("garbage"), None),
            Err(AuthError::InvalidToken(_))
        ));
        assert!(matches!(
            a.authenticate(Some(&hs_token("bad user", now() + 60)), None),
            Err(AuthError::InvalidSubject(_))
        ));
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &TestClaims {
                sub: "mallory",
                exp: now() + 60,
            },
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert!(matches!(
            a.authenticate(Some(&forged), None),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn a_refresh_must_be_valid_and_for_the_same_user() {
        let a = auth(false);
        let exp = now() + 600;
        assert_eq!(
            a.refresh(&hs_token("alice", exp), "alice")
                .map(|i| i.expires_at),
            Ok(Some(exp))
        );
        assert_eq!(
            a.refresh(&hs_token("mallory", exp), "alice"),
            Err(AuthError::OtherUser {
                token: "mallory".into(),
                session: "alice".into()
            })
        );
        assert_eq!(
            a.refresh(&hs_token("alice", now() - 120), "alice"),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn configured_issuer_must_be_present() {
        let a = Authenticator::new(AuthSettings {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: Some("https://issuer.example".into()),
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(matches!(
            a.authenticate(Some(&hs_token("alice", now() + 60)), None),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn anonymous_only_when_enabled() {
        assert_eq!(
            auth(false).authenticate(None, Some("bob")),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            auth(true).authenticate(None, Some("bob")),
            Ok(Identity {
                user: "bob".into(),
                expires_at: None
            })
        );
        assert!(matches!(
            auth(true).authenticate(None, Some("b b")),
            Err(AuthError::InvalidAnonymousUser(_))
        ));
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
    }
}
