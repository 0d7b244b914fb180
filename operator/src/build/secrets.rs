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
