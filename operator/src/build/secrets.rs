//! The Secrets the operator generates once per ChatCluster (admin token, managed Redis
//! password) and their names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::*;
use crate::crd::ChatCluster;

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

/// The Secrets the operator generates for `cluster` (created once with random values,
/// then kept): the admin token, and the Redis password with a managed Redis.
pub fn generated_secret_names(cluster: &ChatCluster) -> Vec<String> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let mut names = vec![admin_secret_name(name)];
    if cluster.spec.redis.external.is_none() {
        names.push(redis_auth_secret_name(name));
    }
    names
}

/// Generated Secret `secret` of `cluster` holding `value` (random, made by the caller):
/// labelled and owned like every child, so it goes with the ChatCluster.
pub fn generated_secret(
    cluster: &ChatCluster,
    secret: &str,
    value: &str,
) -> Result<Secret, BuildError> {
    let n = names(cluster)?;
    let (component, data) = if secret == redis_auth_secret_name(n.name) {
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
