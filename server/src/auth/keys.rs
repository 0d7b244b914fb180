//! The keys a token may be signed with: an HS256 secret and one public key from a PEM
//! file (RSA for RS256, EC P-256 for ES256, Ed25519 for EdDSA). Keys from a JWKS URL
//! live in [`super::jwks`]. Each key accepts exactly one algorithm: a token's `alg`
//! header picks the key, and a key of another family is never tried, so an HS256 token
//! "signed" with the RSA public key is refused rather than checked as an HMAC.

use jsonwebtoken::{Algorithm, DecodingKey};

/// The algorithms this server accepts; anything else (`none`, HS384, PS256, ...) is
/// refused before any key is looked at.
pub const ACCEPTED: [Algorithm; 4] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// A verification key and the one algorithm it is used for.
#[derive(Clone)]
pub struct SigningKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?})", self.alg)
    }
}

/// Error reading the public key file.
#[derive(Debug, thiserror::Error)]
#[error("CHAT_JWT_PUBLIC_KEY_FILE is not a PEM public key of RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA)")]
pub struct KeyError;

/// Reads a PEM public key and decides its algorithm from its type.
pub fn public_key_from_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(SigningKey {
            alg: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(SigningKey {
            alg: Algorithm::ES256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(SigningKey {
            alg: Algorithm::EdDSA,
            key,
        });
    }
    Err(KeyError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pem_type_maps_to_its_algorithm() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        for (file, alg) in [
            ("test-rs256-public.pem", Algorithm::RS256),
            ("test-es256-public.pem", Algorithm::ES256),
            ("test-ed25519-public.pem", Algorithm::EdDSA),
        ] {
            let pem = std::fs::read(format!("{fixtures}/{file}")).unwrap();
            assert_eq!(public_key_from_pem(&pem).unwrap().alg, alg, "{file}");
        }
        assert!(public_key_from_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
        assert!(public_key_from_pem(b"not pem").is_err());
    }
}
