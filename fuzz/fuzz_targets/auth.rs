//! Who is connecting: JWTs (an HS256 secret with an RS256, ES256 or Ed25519 public key,
//! issuer and audience required), room tokens, JWKS documents, the Origin allow-list and
//! the client address behind trusted proxies. Any input is answered with a user or an
//! error, never a panic; an accepted user id is valid and never in the anonymous `~`
//! namespace, an anonymous one always is, an accepted room token names exactly the room
//! asked for, and a JWKS yields at most `MAX_KEYS` keys, each for one of the three
//! algorithms.
#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chat_server::auth::jwks::{parse_jwks, MAX_KEYS};
use chat_server::auth::Authenticator;
use chat_server::client_addr::{client_address, source_key, TrustedProxies};
use chat_server::auth::AuthSettings;
use chat_server::metrics::Metrics;
use chat_server::protocol::validate_user;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// An authenticator with the HS256 secret and `public_key` (a PEM fixture).
fn authenticator(public_key: &[u8]) -> Authenticator {
    Authenticator::new(
        AuthSettings {
            allow_anonymous: true,
            hs256_secret: Some(b"fuzz-secret-fuzz-secret-fuzz-secret!".to_vec()),
            public_key_pem: Some(public_key.to_vec()),
            jwks: None,
            issuer: Some("https://issuer.example".into()),
            audience: Some("chat".into()),
            allowed_origins: Some(vec!["https://chat.example".into()]),
        },
        Metrics::new(),
    )
    .expect("fixture key")
}

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    authenticator(include_bytes!("../../server/tests/fixtures/test-rs256-public.pem"))
});
static AUTH_ES256: LazyLock<Authenticator> = LazyLock::new(|| {
    authenticator(include_bytes!("../../server/tests/fixtures/test-es256-public.pem"))
});
static AUTH_EDDSA: LazyLock<Authenticator> = LazyLock::new(|| {
    authenticator(include_bytes!("../../server/tests/fixtures/test-ed25519-public.pem"))
});

/// The checks are async (a JWKS may need a fetch); with no JWKS configured they never
/// wait, so a current-thread runtime runs them to completion at once.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});

static TRUSTED: LazyLock<TrustedProxies> =
    LazyLock::new(|| TrustedProxies::parse("10.0.0.0/8,fd00::/8,127.0.0.1").expect("ranges"));

/// The client-address half of the target: a peer and forwarding headers.
#[derive(Arbitrary, Debug)]
struct Forwarded<'a> {
    peer: ([u8; 16], bool),
    headers: Vec<(bool, &'a [u8])>,
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks what the rest is, so the seed corpus can hold real tokens.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 5 {
        0 | 1 => RUNTIME.block_on(async {
            let by_key = [&*AUTH, &*AUTH_ES256, &*AUTH_EDDSA][usize::from(mode / 5 % 3)];
            for result in [
                by_key.authenticate(Some(&text), None).await,
                AUTH.refresh(&text, "alice").await,
            ] {
                if let Ok(identity) = result {
                    assert!(validate_user(&identity.user).is_ok());
                    assert!(!identity.anonymous);
                }
            }
            if let Ok(identity) = AUTH.authenticate(None, Some(&text)).await {
                let name = identity.user.strip_prefix('~').expect("anonymous ids start with ~");
                assert!(validate_user(name).is_ok() && identity.anonymous);
            }
            if let Ok(exp) = AUTH.room_token(&text, "alice", "team.red").await {
                assert!(exp > 0);
            }
        }),
        2 => {
            let _ = AUTH.check_origin(Some(&text));
        }
        3 => {
            if let Ok(keys) = parse_jwks(rest) {
                assert!(!keys.is_empty() && keys.len() <= MAX_KEYS);
                assert!(keys.values().all(|k| matches!(
                    k.alg,
                    Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
                )));
            }
        }
        _ => {
            if let Ok(forwarded) = Forwarded::arbitrary(&mut arbitrary::Unstructured::new(rest)) {
                check_client_address(forwarded);
            }
        }
    }
});

fn check_client_address(input: Forwarded) {
    let (octets, v4) = input.peer;
    let peer: IpAddr = if v4 {
        IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
    } else {
        IpAddr::from(octets)
    };
    let mut headers = HeaderMap::new();
    for (forwarded, value) in input.headers {
        let name = HeaderName::from_static(if forwarded {
            "forwarded"
        } else {
            "x-forwarded-for"
        });
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let client = client_address(peer, &headers, &TRUSTED);
    // Only a trusted peer can make the client anything but itself.
    if !TRUSTED.trusts(peer) {
        assert_eq!(source_key(client), source_key(peer));
    }
    let _ = source_key(client);
}
