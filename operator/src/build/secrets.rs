//! The Secrets the operator generates once per ChatCluster (admin token, managed Redis
//! password, server API keys) and their names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::*;
use crate::crd::{ChatCluster, API_KEYS_KEY};

pub const ADMIN_TOKEN_KEY: &str = "token";
/// Key of the managed Redis password in the `NAME-redis-auth` Secret (chat pods get it as
/// CHAT_REDIS_PASSWORD; the Redis pod's readiness probe reads it as a mounted file).
pub const REDIS_PASSWORD_KEY: &str = "password";
/// Key of the managed Redis' config file (`requirepass …`) in the same Secret, so the
/// password never appears in the Redis pod's arguments.
pub const REDIS_CONFIG_KEY: &str = "redis.conf";

/// The admin-token Secret of ChatCluster `cluster`.
pub fn admin_secret_name(cluster: &str) -> String {
    format!("{cluster}-admin")
}

/// The managed Redis' password Secret of ChatCluster `cluster`.
pub fn redis_auth_secret_name(cluster: &str) -> String {
    format!("{cluster}-redis-auth")
}

/// The server API keys Secret the operator generates for ChatCluster `cluster` when
/// `api.keysSecretName` is unset.
pub fn api_keys_secret_name(cluster: &str) -> String {
    format!("{cluster}-api-keys")
}

/// The Secrets the operator generates for `cluster` (created once with random values,
/// then kept): the admin token, the Redis password with a managed Redis, and the API
/// keys with `api.enabled` and no `api.keysSecretName`.
pub fn generated_secret_names(cluster: &ChatCluster) -> Vec<String> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let mut names = vec![admin_secret_name(name)];
    if cluster.spec.redis.external.is_none() {
        names.push(redis_auth_secret_name(name));
    }
    if cluster.spec.api.enabled && cluster.spec.api.keys_secret_name.is_none() {
        names.push(api_keys_secret_name(name));
    }
    names
}

/// Whether the pods read generated Secret `secret` of ChatCluster `cluster` only when
/// they start, so that a recreated one (a new value) must restart them: the admin token
/// and the Redis password are environment variables. The API keys are not: they are a
/// mounted file the server re-reads every 10 s, which the kubelet refreshes, so a new
/// key never needs a restart, and neither does a recreated Secret.
pub fn pods_read_at_start(cluster: &str, secret: &str) -> bool {
    secret != api_keys_secret_name(cluster)
}

/// Generated Secret `secret` of `cluster` holding `value` (random, made by the caller):
/// labelled and owned like every child, so it goes with the ChatCluster.
pub fn generated_secret(
    cluster: &ChatCluster,
    secret: &str,
    value: &str,
) -> Result<Secret, BuildError> {
    let n = names(cluster)?;
    let (component, data) = if secret == api_keys_secret_name(n.name) {
        // One key on its own line: rotating means adding a line, not editing this one.
        (
            API_COMPONENT,
            BTreeMap::from([(API_KEYS_KEY.to_owned(), format!("{value}\n"))]),
        )
    } else if secret == redis_auth_secret_name(n.name) {
        let config = format!("requirepass {value}\n");
        (
            "redis",
            BTreeMap::from([
                (REDIS_PASSWORD_KEY.to_owned(), value.to_owned()),
                (REDIS_CONFIG_KEY.to_owned(), config),
            ]),
        )
    } else {
        (
            "chat-server",
            BTreeMap::from([(ADMIN_TOKEN_KEY.to_owned(), value.to_owned())]),
        )
    };
    Ok(Secret {
        metadata: n.meta(secret.to_owned(), component),
        string_data: Some(data),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::build::test_cluster as cluster;

    #[test]
    fn a_managed_redis_adds_its_password_secret() {
        let managed = cluster(serde_json::json!({}));
        assert_eq!(
            generated_secret_names(&managed),
            ["chat-admin", "chat-redis-auth"]
        );
        let external = cluster(serde_json::json!({"redis": {"external": {"secretName": "r"}}}));
        assert_eq!(generated_secret_names(&external), ["chat-admin"]);
    }

    #[test]
    fn the_api_keys_are_generated_only_when_enabled_without_a_secret_of_the_users() {
        let on = cluster(serde_json::json!({"api": {"enabled": true}}));
        assert_eq!(
            generated_secret_names(&on),
            ["chat-admin", "chat-redis-auth", "chat-api-keys"]
        );
        let own = cluster(serde_json::json!({"api": {"enabled": true, "keysSecretName": "mine"}}));
        assert_eq!(
            generated_secret_names(&own),
            ["chat-admin", "chat-redis-auth"]
        );
        let off = cluster(serde_json::json!({"api": {"enabled": false}}));
        assert_eq!(
            generated_secret_names(&off),
            ["chat-admin", "chat-redis-auth"]
        );

        let keys = generated_secret(&on, "chat-api-keys", "k3y").unwrap();
        assert!(
            keys.metadata.owner_references.is_some(),
            "goes with the ChatCluster"
        );
        assert_eq!(
            keys.metadata.labels.unwrap()["app.kubernetes.io/component"],
            API_COMPONENT
        );
        let data = keys.string_data.unwrap();
        assert_eq!(data.len(), 1, "only the keys file");
        assert_eq!(data[API_KEYS_KEY], "k3y\n", "one key, one line");

        // A new API key never restarts the pods (the server re-reads the file); a new
        // admin token or Redis password does.
        assert!(!pods_read_at_start("chat", "chat-api-keys"));
        assert!(pods_read_at_start("chat", "chat-admin"));
        assert!(pods_read_at_start("chat", "chat-redis-auth"));
    }

    #[test]
    fn generated_secrets_hold_the_value_under_their_keys_and_are_owned() {
        let c = cluster(serde_json::json!({}));
        let redis = generated_secret(&c, "chat-redis-auth", "s3cret").unwrap();
        assert_eq!(redis.metadata.name.as_deref(), Some("chat-redis-auth"));
        assert_eq!(redis.metadata.namespace.as_deref(), Some("apps"));
        assert!(
            redis.metadata.owner_references.is_some(),
            "goes with the ChatCluster"
        );
        assert_eq!(redis.type_.as_deref(), Some("Opaque"));
        let data = redis.string_data.unwrap();
        assert_eq!(data[REDIS_PASSWORD_KEY], "s3cret");
        assert_eq!(data[REDIS_CONFIG_KEY], "requirepass s3cret\n");

        let admin = generated_secret(&c, "chat-admin", "t0ken").unwrap();
        let data = admin.string_data.unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[ADMIN_TOKEN_KEY], "t0ken");
        assert_eq!(
            admin.metadata.labels.unwrap()["app.kubernetes.io/component"],
            "chat-server"
        );
    }
}
