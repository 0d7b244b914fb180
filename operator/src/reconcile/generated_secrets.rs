//! The Secrets the operator generates for each ChatCluster (the admin token, the managed
//! Redis' password, the server API keys): created once with a random value, then kept as
//! they are, so pods and Redis keep agreeing across reconciles and operator restarts, and
//! a key the user added to the API keys is never overwritten. A generated Secret that
//! was deleted is created again with a new value; if the pods read it only at start, its
//! new uid changes the pod templates' `chatcluster.dev/secrets-revision`, so the pods
//! restart and read it (the API keys file is re-read by the server instead). Values are
//! never logged.

use std::io::Read;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::Client;

use crate::build::{
    admin_secret_name, generated_secret, generated_secret_names, pods_read_at_start, BuildError,
    ADMIN_TOKEN_KEY,
};
use crate::crd::ChatCluster;

#[derive(Debug, thiserror::Error)]
pub enum GeneratedSecretError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("reading random bytes from /dev/urandom: {0}")]
    Random(#[from] std::io::Error),
}

/// 32 random bytes, hex-encoded (64 characters): a token, password or API key (URL-safe,
/// and within the server's 16 to 256 printable characters for a key).
pub fn random_value() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The revision string for the pod templates: the generated Secrets' uids, in order.
pub fn revision(secrets: &[Secret]) -> String {
    secrets
        .iter()
        .map(|s| s.metadata.uid.as_deref().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the operator needs from its generated Secrets.
pub struct Generated {
    /// For the pod templates (`revision`).
    pub revision: String,
    /// The admin token the operator presents to the pods' `/admin/*` (never logged);
    /// `None` if the Secret lost its key (the pods then run without one).
    pub admin_token: Option<String>,
}

/// Makes sure every generated Secret of `cluster` exists (creating a missing one with a
/// fresh random value) and returns their revision and the admin token.
pub async fn ensure(
    client: &Client,
    cluster: &ChatCluster,
) -> Result<Generated, GeneratedSecretError> {
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut secrets = Vec::new();
    for name in generated_secret_names(cluster) {
        let secret = match api.get_opt(&name).await? {
            Some(existing) => existing,
            None => {
                let fresh = generated_secret(cluster, &name, &random_value()?)?;
                tracing::info!(%ns, secret = %name, "created a generated Secret");
                match api.create(&PostParams::default(), &fresh).await {
                    Ok(created) => created,
                    // Created meanwhile (another reconcile): keep theirs, never overwrite.
                    Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        secrets.push(secret);
    }
    let cluster_name = cluster.metadata.name.as_deref().unwrap_or_default();
    let admin = admin_secret_name(cluster_name);
    let admin_token = secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(admin.as_str()))
        .and_then(|s| s.data.as_ref()?.get(ADMIN_TOKEN_KEY))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    // Only the Secrets the pods read at start count: a recreated API keys Secret reaches
    // the pods through the kubelet's refresh of the mounted file, without a restart.
    secrets.retain(|s| {
        pods_read_at_start(cluster_name, s.metadata.name.as_deref().unwrap_or_default())
    });
    Ok(Generated {
        revision: revision(&secrets),
        admin_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_long_hex_and_differ() {
        let a = random_value().unwrap();
        let b = random_value().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn revision_follows_the_uids() {
        let s = |uid: &str| {
            let mut s = Secret::default();
            s.metadata.uid = Some(uid.to_owned());
            s
        };
        assert_eq!(revision(&[s("a"), s("b")]), "a,b");
        assert_ne!(revision(&[s("a"), s("b")]), revision(&[s("a"), s("c")]));
    }
}
