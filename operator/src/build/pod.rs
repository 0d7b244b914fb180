//! Pieces shared by the pod templates (chat server and managed Redis): environment,
//! probes, the restricted security context, ports, Secret volumes, template annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

pub const SECRETS_REVISION_ANNOTATION: &str = "chatcluster.dev/secrets-revision";

pub(super) fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

pub(super) fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub(super) fn env_secret(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub(super) fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Required by the "restricted" Pod Security level.
pub(super) fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

pub(super) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

pub(super) fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// Pod-template annotations: `base` plus the generated Secrets' revision, if known.
pub(super) fn template_annotations(
    base: Vec<(String, String)>,
    ctx: &BuildContext,
) -> Option<BTreeMap<String, String>> {
    let mut annotations: BTreeMap<String, String> = base.into_iter().collect();
    if let Some(revision) = &ctx.secrets_revision {
        annotations.insert(SECRETS_REVISION_ANNOTATION.to_owned(), revision.clone());
    }
    (!annotations.is_empty()).then_some(annotations)
}

/// A volume with the keys of Secret `secret`, each as the file named by its pair
/// (`(key, path)`), at `mode`. Required (`optional: false`): the operator checks the
/// Secret before it applies the pods.
pub(super) fn secret_volume(
    volume: &str,
    secret: &str,
    files: &[(&str, &str)],
    mode: i32,
) -> Volume {
    Volume {
        name: volume.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(
                files
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).to_owned(),
                        path: (*path).to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            default_mode: Some(mode),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

/// `volume` mounted read-only at `dir`.
pub(super) fn read_only_mount(volume: &str, dir: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: dir.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}
