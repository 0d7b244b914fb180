//! The Secrets a ChatCluster refers to (the JWT keys, the join hook's key, an external
//! Redis URL, the user's server API keys, the events' signing key), checked
//! before anything is applied. A missing Secret, a missing key or a value the chat-server
//! would refuse becomes `Degraded` with a message naming the Secret and the key, instead
//! of pods that fail at start. The check itself is pure; `check_all` reads the Secrets.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::validate::Invalid;
use crate::crd::{
    ChatClusterSpec, API_KEYS_KEY, EVENTS_SECRET_KEY, JOIN_HOOK_SECRET_KEY, JWT_KEY, JWT_PUBLIC_KEY,
};

/// The chat-server refuses a shorter HS256 key (`CHAT_JWT_HS256_SECRET`).
pub const MIN_JWT_KEY_BYTES: usize = 32;
/// Shortest join-hook HMAC key accepted: as long as the HS256 key, so the signature is
/// not the weak link.
pub const MIN_JOIN_HOOK_KEY_BYTES: usize = 32;
/// The chat-server refuses a shorter events signing key (`CHAT_WEBHOOK_SECRET`).
pub const MIN_EVENTS_KEY_BYTES: usize = 32;
/// Shortest and longest server API key the chat-server takes (`CHAT_API_KEYS_FILE`).
pub const MIN_API_KEY_BYTES: usize = 16;
pub const MAX_API_KEY_BYTES: usize = 256;

/// One Secret key the spec needs, and what its value must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// The spec field that names the Secret, for the message.
    pub field: &'static str,
    pub secret: String,
    pub key: String,
    pub requirement: Requirement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// At least this many bytes (a signing key).
    MinBytes(usize),
    /// A PEM public key (`-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----`),
    /// and no private key: the Secret is mounted into every chat pod.
    PemPublicKey,
    /// A `redis://` or `rediss://` URL; for a Redis Cluster, one or more separated by
    /// commas, all with the same scheme.
    RedisUrls { cluster: bool },
    /// Server API keys, one per line (blank lines and `#` comments aside), as the
    /// chat-server reads them: at least one, each of `MIN_API_KEY_BYTES` to
    /// `MAX_API_KEY_BYTES` printable ASCII characters without spaces or commas.
    ApiKeys,
}

/// Every Secret key `spec` refers to.
pub fn references(spec: &ChatClusterSpec) -> Vec<SecretKeyRef> {
    let mut out = Vec::new();
    if let Some(secret) = &spec.auth.jwt_secret_name {
        out.push(SecretKeyRef {
            field: "spec.auth.jwtSecretName",
            secret: secret.clone(),
            key: JWT_KEY.to_owned(),
            requirement: Requirement::MinBytes(MIN_JWT_KEY_BYTES),
        });
    }
    if let Some(secret) = &spec.auth.public_key_secret_name {
        out.push(SecretKeyRef {
            field: "spec.auth.publicKeySecretName",
            secret: secret.clone(),
            key: JWT_PUBLIC_KEY.to_owned(),
            requirement: Requirement::PemPublicKey,
        });
    }
    if let Some(secret) = spec.auth.join_hook.as_ref().map(|h| &h.secret_name) {
        out.push(SecretKeyRef {
            field: "spec.auth.joinHook.secretName",
            secret: secret.clone(),
            key: JOIN_HOOK_SECRET_KEY.to_owned(),
            requirement: Requirement::MinBytes(MIN_JOIN_HOOK_KEY_BYTES),
        });
    }
    if let Some(events) = &spec.events {
        out.push(SecretKeyRef {
            field: "spec.events.secretName",
            secret: events.secret_name.clone(),
            key: EVENTS_SECRET_KEY.to_owned(),
            requirement: Requirement::MinBytes(MIN_EVENTS_KEY_BYTES),
        });
    }
    // Only while the API is on: a Secret named by a disabled API is not mounted.
    if let Some(secret) = spec
        .api
        .keys_secret_name
        .as_ref()
        .filter(|_| spec.api.enabled)
    {
        out.push(SecretKeyRef {
            field: "spec.api.keysSecretName",
            secret: secret.clone(),
            key: API_KEYS_KEY.to_owned(),
            requirement: Requirement::ApiKeys,
        });
    }
    if let Some(ext) = &spec.redis.external {
        out.push(SecretKeyRef {
            field: "spec.redis.external.secretName",
            secret: ext.secret_name.clone(),
            key: ext.url_key.clone(),
            requirement: Requirement::RedisUrls {
                cluster: ext.cluster,
            },
        });
    }
    out
}

/// Checks one reference against the Secret as read (`None`: it does not exist). The
/// message never contains the value.
pub fn check(reference: &SecretKeyRef, ns: &str, secret: Option<&Secret>) -> Result<(), Invalid> {
    let SecretKeyRef {
        field,
        secret: name,
        key,
        requirement,
    } = reference;
    let Some(secret) = secret else {
        return Err(Invalid {
            reason: "SecretMissing",
            message: format!(
                "Secret {ns}/{name} (named by {field}) does not exist; create it with key `{key}`"
            ),
        });
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.as_slice());
    let Some(value) = value else {
        return Err(Invalid {
            reason: "SecretKeyMissing",
            message: format!("Secret {ns}/{name} (named by {field}) has no key `{key}`"),
        });
    };
    let problem = match requirement {
        Requirement::MinBytes(min) if value.len() < *min => Some(format!(
            "is {} bytes; it must be at least {min}",
            value.len()
        )),
        Requirement::RedisUrls { cluster } => redis_urls_problem(value, *cluster),
        Requirement::PemPublicKey => public_key_problem(value),
        Requirement::ApiKeys => api_keys_problem(value),
        _ => None,
    };
    match problem {
        Some(p) => Err(Invalid {
            reason: "SecretInvalid",
            message: format!("key `{key}` of Secret {ns}/{name} (named by {field}) {p}"),
        }),
        None => Ok(()),
    }
}

/// What is wrong with a PEM public key value, if anything. Only the armor is looked at
/// (the server parses the key itself, and says so at start); what this catches is the
/// mistakes worth catching before the pods start: something that is not PEM, and above
/// all a private key, which would be handed to every chat pod.
fn public_key_problem(value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(value);
    if text.contains("PRIVATE KEY-----") {
        return Some(
            "holds a private key; store only the public key (e.g. `openssl pkey -in key.pem -pubout`), and keep the private key out of the cluster's chat namespace"
                .to_owned(),
        );
    }
    let armored = [
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN RSA PUBLIC KEY-----",
    ]
    .iter()
    .any(|begin| text.trim_start().starts_with(begin));
    (!armored).then(|| {
        "must be a PEM public key starting with -----BEGIN PUBLIC KEY----- (RSA, EC P-256 or Ed25519)"
            .to_owned()
    })
}

/// What is wrong with a server API keys file, if anything (never quoting a key): the
/// chat-server refuses a file with no key or a malformed line (at start it does not
/// start; later it keeps the keys it had), so the pods would not get these keys. A line
/// is taken without the whitespace around it, as the server does, so CRLF line ends work.
fn api_keys_problem(value: &[u8]) -> Option<String> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Some("must be text: API keys, one per line".to_owned());
    };
    let mut keys = 0;
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let printable = line.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if !printable || !(MIN_API_KEY_BYTES..=MAX_API_KEY_BYTES).contains(&line.len()) {
            return Some(format!(
                "has an unusable line {number}: an API key is {MIN_API_KEY_BYTES} to {MAX_API_KEY_BYTES} printable ASCII characters without spaces or commas (this one is {} bytes{})",
                line.len(),
                if printable { "" } else { " and holds a space, a comma or a character that is not printable ASCII" }
            ));
        }
        keys += 1;
    }
    (keys == 0).then(|| {
        "holds no API key, which the chat-server refuses: put one key per line (blank lines and lines starting with # are ignored)"
            .to_owned()
    })
}

/// What is wrong with an external Redis URL value, if anything (never quoting it: it
/// holds the password).
fn redis_urls_problem(value: &[u8], cluster: bool) -> Option<String> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Some("must be a redis:// or rediss:// URL".to_owned());
    };
    let urls: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    let plain = urls.iter().filter(|u| u.starts_with("redis://")).count();
    if urls.is_empty() || tls + plain != urls.len() {
        return Some(if cluster {
            "must be the Redis Cluster's seed URLs (redis:// or rediss://, separated by commas)"
                .to_owned()
        } else {
            "must be a redis:// or rediss:// URL".to_owned()
        });
    }
    if urls.len() > 1 && !cluster {
        return Some(format!(
            "lists {} URLs, which only a Redis Cluster takes: set spec.redis.external.cluster: true, or keep one URL",
            urls.len()
        ));
    }
    if tls != 0 && plain != 0 {
        return Some(
            "mixes redis:// and rediss:// seed URLs: use one scheme for the whole cluster"
                .to_owned(),
        );
    }
    None
}

/// Reads every Secret `spec` refers to and checks it; the outer error is an API failure
/// (retried), the inner one a Secret the user must fix.
pub async fn check_all(
    client: &Client,
    ns: &str,
    spec: &ChatClusterSpec,
) -> Result<Result<(), Invalid>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for reference in references(spec) {
        let secret = api.get_opt(&reference.secret).await?;
        if let Err(invalid) = check(&reference, ns, secret.as_ref()) {
            return Ok(Err(invalid));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> ChatClusterSpec {
        serde_json::from_value(v).unwrap()
    }

    fn secret(key: &str, value: &[u8]) -> Secret {
        Secret {
            data: Some([(key.to_owned(), ByteString(value.to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn the_spec_names_the_jwt_and_external_redis_secrets() {
        assert!(references(&spec(json!({}))).is_empty());
        let refs = references(&spec(json!({
            "auth": {"jwtSecretName": "jwt"},
            "redis": {"external": {"secretName": "redis", "urlKey": "u"}}
        })));
        let names: Vec<(&str, &str)> = refs
            .iter()
            .map(|r| (r.secret.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(names, [("jwt", JWT_KEY), ("redis", "u")]);
    }

    #[test]
    fn missing_secret_key_or_short_value_is_named_without_the_value() {
        let jwt = &references(&spec(json!({"auth": {"jwtSecretName": "jwt"}})))[0];
        let e = check(jwt, "chat", None).unwrap_err();
        assert_eq!(e.reason, "SecretMissing");
        assert!(e.message.contains("Secret chat/jwt"), "{}", e.message);
        assert!(e.message.contains("hs256Secret"), "{}", e.message);

        let e = check(jwt, "chat", Some(&secret("other", b"x"))).unwrap_err();
        assert_eq!(e.reason, "SecretKeyMissing");
        assert!(e.message.contains("no key `hs256Secret`"), "{}", e.message);

        let e = check(jwt, "chat", Some(&secret(JWT_KEY, b"too-short-key"))).unwrap_err();
        assert_eq!(e.reason, "SecretInvalid");
        assert!(e.message.contains("13 bytes"), "{}", e.message);
        assert!(!e.message.contains("too-short-key"), "never the value");

        assert_eq!(
            check(jwt, "chat", Some(&secret(JWT_KEY, &[7u8; 32]))),
            Ok(())
        );
    }

    #[test]
    fn the_public_key_and_join_hook_secrets_are_referenced() {
        let refs = references(&spec(json!({"auth": {
            "publicKeySecretName": "jwt-pub",
            "joinHook": {"url": "http://app/join", "secretName": "hook"}
        }})));
        let names: Vec<(&str, &str, &str)> = refs
            .iter()
            .map(|r| (r.field, r.secret.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("spec.auth.publicKeySecretName", "jwt-pub", "publicKey"),
                ("spec.auth.joinHook.secretName", "hook", "hookSecret")
            ]
        );
        // A hook always names its signing Secret.
        assert!(serde_json::from_value::<ChatClusterSpec>(
            json!({"auth": {"joinHook": {"url": "http://app/join"}}})
        )
        .is_err());
        let hook = &references(&spec(
            json!({"auth": {"joinHook": {"url": "http://a", "secretName": "h"}}}),
        ))[0];
        let e = check(hook, "ns", Some(&secret(JOIN_HOOK_SECRET_KEY, b"short"))).unwrap_err();
        assert_eq!(e.reason, "SecretInvalid");
        assert!(e.message.contains("at least 32"), "{}", e.message);
    }

    #[test]
    fn the_events_signing_key_is_checked_like_the_join_hooks() {
        let refs = references(&spec(json!({"events": {
            "webhookUrl": "https://app.example/events",
            "secretName": "app-events"
        }})));
        let names: Vec<(&str, &str, &str)> = refs
            .iter()
            .map(|r| (r.field, r.secret.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(names, [("spec.events.secretName", "app-events", "secret")]);
        let r = &refs[0];

        let e = check(r, "apps", None).unwrap_err();
        assert_eq!(e.reason, "SecretMissing");
        assert!(
            e.message.contains("Secret apps/app-events")
                && e.message.contains("spec.events.secretName")
                && e.message.contains("key `secret`"),
            "{}",
            e.message
        );
        let e = check(r, "apps", Some(&secret("hookSecret", &[b'k'; 40]))).unwrap_err();
        assert_eq!(e.reason, "SecretKeyMissing");
        assert!(
            e.message.contains("Secret apps/app-events") && e.message.contains("no key `secret`"),
            "{}",
            e.message
        );
        let e = check(
            r,
            "apps",
            Some(&secret("secret", b"thirty-one-bytes-of-signing-key")),
        )
        .unwrap_err();
        assert_eq!(e.reason, "SecretInvalid");
        assert!(
            e.message.contains("is 31 bytes; it must be at least 32")
                && e.message.contains("Secret apps/app-events"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("signing-key"), "never the value");
        assert_eq!(
            check(r, "apps", Some(&secret("secret", &[b'k'; 32]))),
            Ok(()),
            "32 bytes is enough"
        );
        assert!(
            references(&spec(json!({}))).is_empty(),
            "no events, no Secret"
        );
    }

    #[test]
    fn the_public_key_must_be_a_pem_public_key_and_never_a_private_one() {
        let r = &references(&spec(json!({"auth": {"publicKeySecretName": "k"}})))[0];
        let public = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            check(r, "ns", Some(&secret(JWT_PUBLIC_KEY, public))),
            Ok(())
        );
        let rsa = b"\n-----BEGIN RSA PUBLIC KEY-----\nMIIB\n-----END RSA PUBLIC KEY-----\n";
        assert_eq!(check(r, "ns", Some(&secret(JWT_PUBLIC_KEY, rsa))), Ok(()));
        for private in [
            &b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n"[..],
            b"-----BEGIN EC PRIVATE KEY-----\nsecret\n-----END EC PRIVATE KEY-----\n",
            b"-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n-----BEGIN RSA PRIVATE KEY-----\nsecret\n",
        ] {
            let e = check(r, "ns", Some(&secret(JWT_PUBLIC_KEY, private))).unwrap_err();
            assert_eq!(e.reason, "SecretInvalid");
            assert!(e.message.contains("holds a private key"), "{}", e.message);
            assert!(!e.message.contains("secret\n"), "never the value");
        }
        let e = check(r, "ns", Some(&secret(JWT_PUBLIC_KEY, b"not a key"))).unwrap_err();
        assert!(
            e.message.contains("must be a PEM public key"),
            "{}",
            e.message
        );
        let e = check(r, "ns", Some(&secret("pub", b"x"))).unwrap_err();
        assert_eq!(e.reason, "SecretKeyMissing");
        assert!(e.message.contains("no key `publicKey`"), "{}", e.message);
    }

    #[test]
    fn the_users_api_keys_secret_is_checked_only_while_the_api_is_on() {
        let on = references(&spec(
            json!({"api": {"enabled": true, "keysSecretName": "app-keys"}}),
        ));
        let names: Vec<(&str, &str, &str)> = on
            .iter()
            .map(|r| (r.field, r.secret.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(names, [("spec.api.keysSecretName", "app-keys", "keys")]);
        assert!(
            references(&spec(
                json!({"api": {"enabled": false, "keysSecretName": "app-keys"}})
            ))
            .is_empty(),
            "not mounted, not needed"
        );
        assert!(
            references(&spec(json!({"api": {"enabled": true}}))).is_empty(),
            "the generated Secret is the operator's own"
        );

        let r = &on[0];
        let e = check(r, "apps", None).unwrap_err();
        assert_eq!(e.reason, "SecretMissing");
        assert!(
            e.message.contains("Secret apps/app-keys")
                && e.message.contains("spec.api.keysSecretName")
                && e.message.contains("key `keys`"),
            "{}",
            e.message
        );
        let e = check(r, "apps", Some(&secret("api-keys", b"x"))).unwrap_err();
        assert_eq!(e.reason, "SecretKeyMissing");
        assert!(
            e.message.contains("Secret apps/app-keys") && e.message.contains("no key `keys`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn api_keys_are_one_per_line_of_the_servers_shape() {
        let r = &references(&spec(
            json!({"api": {"enabled": true, "keysSecretName": "k"}}),
        ))[0];
        let ok = |value: &[u8]| check(r, "ns", Some(&secret(API_KEYS_KEY, value)));
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(ok(format!("{key}\n").as_bytes()), Ok(()));
        // Rotation: two keys, comments, blank lines, CRLF line ends.
        let rotating =
            format!("# new\r\n{key}-new\r\n\r\n# old, remove once clients moved\r\n{key}\r\n");
        assert_eq!(ok(rotating.as_bytes()), Ok(()));
        assert_eq!(ok(&[b'k'; 16]), Ok(()), "the shortest key");
        assert_eq!(ok(&[b'k'; 256]), Ok(()), "the longest key");

        for (value, expected) in [
            (&b""[..], "holds no API key"),
            (b"# only a comment\n\n", "holds no API key"),
            (&[b'k'; 15], "has an unusable line 1:"),
            (&[b'k'; 257], "(this one is 257 bytes)"),
            (
                b"# c\n0123456789abcdef 0123456789\n",
                "has an unusable line 2:",
            ),
            (
                b"0123456789abcdef,0123456789abcdef",
                "holds a space, a comma",
            ),
            (
                b"0123456789abcdef\t0123456789abcdef",
                "holds a space, a comma",
            ),
            (
                "0123456789abcdef\u{e9}0123456789".as_bytes(),
                "not printable ASCII",
            ),
            (&[0xff, 0xfe, b'k'], "must be text"),
        ] {
            let e = ok(value).unwrap_err();
            assert_eq!(e.reason, "SecretInvalid", "{value:?}");
            assert!(e.message.contains(expected), "{value:?}: {}", e.message);
            assert!(e.message.contains("Secret ns/k"), "{}", e.message);
        }
        let e = ok(b"0123456789abcdef secret-part-of-a-key").unwrap_err();
        assert!(
            !e.message.contains("secret-part"),
            "never the value: {}",
            e.message
        );
    }

    #[test]
    fn external_redis_url_must_be_a_redis_url() {
        let r = &references(&spec(json!({"redis": {"external": {"secretName": "r"}}})))[0];
        assert_eq!(
            check(r, "ns", Some(&secret("url", b"http://x")))
                .unwrap_err()
                .reason,
            "SecretInvalid"
        );
        assert_eq!(
            check(r, "ns", Some(&secret("url", b"rediss://:pw@redis:6380/0"))),
            Ok(())
        );
    }

    #[test]
    fn several_urls_need_cluster_mode_and_one_scheme() {
        let single = &references(&spec(json!({"redis": {"external": {"secretName": "r"}}})))[0];
        let seeds = b"redis://:pw@a:7000,redis://:pw@b:7001";
        let e = check(single, "ns", Some(&secret("url", seeds))).unwrap_err();
        assert_eq!(e.reason, "SecretInvalid");
        assert!(
            e.message.contains("lists 2 URLs")
                && e.message.contains("spec.redis.external.cluster: true"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("pw"), "never the value: {}", e.message);

        let cluster = &references(&spec(
            json!({"redis": {"external": {"secretName": "r", "cluster": true}}}),
        ))[0];
        assert_eq!(check(cluster, "ns", Some(&secret("url", seeds))), Ok(()));
        assert_eq!(
            check(cluster, "ns", Some(&secret("url", b"redis://a:7000"))),
            Ok(()),
            "one seed is enough"
        );
        let e = check(
            cluster,
            "ns",
            Some(&secret("url", b"redis://a:7000,rediss://b:7001")),
        )
        .unwrap_err();
        assert!(e.message.contains("mixes"), "{}", e.message);
        let e = check(cluster, "ns", Some(&secret("url", b"a:7000"))).unwrap_err();
        assert!(e.message.contains("seed URLs"), "{}", e.message);
    }
}
