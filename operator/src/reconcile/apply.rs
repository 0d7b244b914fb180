//! Apply and orphan stages of reconcile. Apply uses server-side apply with one field
//! manager and `force`, so the operator owns exactly the fields it sets and users'
//! other fields survive. The orphan stage deletes objects this ChatCluster created that
//! the spec no longer wants (e.g. the Ingress after `expose` is removed); which ones is
//! decided by a pure function.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::build::{Desired, Served, API_COMPONENT, MANAGED_BY};
use crate::crd::ChatCluster;

/// The field manager of every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "chatcluster-operator";

/// The Gateway API HTTPRoute resource (no typed struct in k8s-openapi).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ))
}

/// KEDA's ScaledObject resource.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ))
}

/// The Prometheus operator's PodMonitor resource.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "PodMonitor",
    ))
}

/// Applies an object of a kind without a typed struct, given as JSON.
async fn apply_dynamic(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    obj: &serde_json::Value,
) -> Result<(), kube::Error> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, resource)
        .patch(name, &params(), &Patch::Apply(obj))
        .await
        .map(|_| ())
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_one<K>(client: &Client, ns: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), ns)
        .patch(&name, &params(), &Patch::Apply(obj))
        .await
}

/// The StatefulSets a ChatCluster's status is computed from: as the apply stage returned
/// them (server-side apply answers with the stored object, status included), or read
/// when nothing was applied.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    pub chat: Option<StatefulSet>,
    /// The managed Redis' StatefulSet; `None` with an external Redis.
    pub redis: Option<StatefulSet>,
}

impl Workloads {
    /// Reads them (a missing object is `None`).
    pub async fn read(
        client: &Client,
        ns: &str,
        cluster: &ChatCluster,
    ) -> Result<Self, kube::Error> {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let redis = if cluster.spec.redis.external.is_none() {
            sts.get_opt(&crate::build::redis_name(&name)).await?
        } else {
            None
        };
        Ok(Workloads {
            chat: sts.get_opt(&name).await?,
            redis,
        })
    }
}

/// Applies every desired object, in an order that never leaves a gap: the
/// NetworkPolicies first (Redis, the admin port and the API port are never open while
/// they start), then Redis (the chat pods find it sooner), the chat pods' ServiceAccount
/// and ConfigMap before the StatefulSet that uses them, the Services, and last what
/// routes clients in (PDB, Ingress, HTTPRoute); the PodMonitor once there are pods to
/// scrape, and the ScaledObject last, once what it scales exists. `Desired` is
/// destructured without `..`, so a kind added to it does not compile until it is applied
/// here. Returns the StatefulSets as the API server stored them (with their status), for
/// the status stage.
pub async fn apply(client: &Client, ns: &str, d: &Desired) -> Result<Workloads, kube::Error> {
    let Desired {
        network_policy,
        redis_network_policy,
        redis_service,
        redis_statefulset,
        service_account,
        config_map,
        headless_service,
        client_service,
        api_service,
        chat_statefulset,
        pdb,
        ingress,
        http_route,
        pod_monitor,
        scaled_object,
    } = d;
    for p in [redis_network_policy, network_policy].into_iter().flatten() {
        apply_one::<NetworkPolicy>(client, ns, p).await?;
    }
    if let Some(s) = redis_service {
        apply_one::<Service>(client, ns, s).await?;
    }
    let redis = match redis_statefulset {
        Some(s) => Some(apply_one::<StatefulSet>(client, ns, s).await?),
        None => None,
    };
    apply_one::<ServiceAccount>(client, ns, service_account).await?;
    apply_one::<ConfigMap>(client, ns, config_map).await?;
    apply_one::<Service>(client, ns, headless_service).await?;
    apply_one::<Service>(client, ns, client_service).await?;
    if let Some(s) = api_service {
        apply_one::<Service>(client, ns, s).await?;
    }
    let chat = apply_one::<StatefulSet>(client, ns, chat_statefulset).await?;
    if let Some(p) = pdb {
        apply_one::<PodDisruptionBudget>(client, ns, p).await?;
    }
    if let Some(i) = ingress {
        apply_one::<Ingress>(client, ns, i).await?;
    }
    if let Some(route) = http_route {
        apply_dynamic(client, ns, &http_route_resource(), route).await?;
    }
    if let Some(monitor) = pod_monitor {
        apply_dynamic(client, ns, &pod_monitor_resource(), monitor).await?;
    }
    if let Some(scaled) = scaled_object {
        apply_dynamic(client, ns, &scaled_object_resource(), scaled).await?;
    }
    Ok(Workloads {
        chat: Some(chat),
        redis,
    })
}

/// An existing object of an optional kind: its name and its controller owner's uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub name: String,
    pub owner_uid: Option<String>,
}

/// Which existing objects to delete: those owned by this ChatCluster (`owner_uid`) that
/// are not the desired one. Objects owned by anything else are never touched.
pub fn orphans(existing: &[Existing], owner_uid: &str, desired_name: Option<&str>) -> Vec<String> {
    existing
        .iter()
        .filter(|e| e.owner_uid.as_deref() == Some(owner_uid))
        .filter(|e| Some(e.name.as_str()) != desired_name)
        .map(|e| e.name.clone())
        .collect()
}

fn existing<K: Resource>(items: &[K]) -> Vec<Existing> {
    items
        .iter()
        .map(|o| Existing {
            name: o.meta().name.clone().unwrap_or_default(),
            owner_uid: o
                .meta()
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| r.uid.clone()),
        })
        .collect()
}

/// Deletes the orphans of one kind among the objects matching `selector`; returns them as
/// `kind/name`.
async fn delete_orphans_of<K>(
    api: Api<K>,
    kind: &str,
    selector: &str,
    owner_uid: &str,
    desired_name: Option<&str>,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default().labels(selector)).await?;
    let doomed = orphans(&existing(&list.items), owner_uid, desired_name);
    for name in &doomed {
        api.delete(name, &DeleteParams::background()).await?;
    }
    Ok(doomed.iter().map(|n| format!("{kind}/{n}")).collect())
}

/// Deletes this cluster's objects of optional kinds that are no longer desired; returns
/// `kind/name` of each deleted object (for Events).
pub async fn delete_orphans(
    client: &Client,
    ns: &str,
    cluster: &str,
    owner_uid: &str,
    d: &Desired,
    served: Served,
) -> Result<Vec<String>, kube::Error> {
    let mine =
        format!("app.kubernetes.io/instance={cluster},app.kubernetes.io/managed-by={MANAGED_BY}");
    let redis = format!("{mine},app.kubernetes.io/component=redis");
    let name = |m: &ObjectMeta| m.name.clone();
    let pdb = d.pdb.as_ref().and_then(|p| name(&p.metadata));
    let ingress = d.ingress.as_ref().and_then(|i| name(&i.metadata));
    let redis_sts = d.redis_statefulset.as_ref().and_then(|s| name(&s.metadata));
    let redis_svc = d.redis_service.as_ref().and_then(|s| name(&s.metadata));
    let api = format!("{mine},app.kubernetes.io/component={API_COMPONENT}");
    let api_svc = d.api_service.as_ref().and_then(|s| name(&s.metadata));
    let chat_policy = d.network_policy.as_ref().and_then(|p| name(&p.metadata));
    let redis_policy = d
        .redis_network_policy
        .as_ref()
        .and_then(|p| name(&p.metadata));
    let chat = format!("{mine},app.kubernetes.io/component=chat-server");
    let mut deleted = Vec::new();
    deleted.extend(
        delete_orphans_of(
            Api::<NetworkPolicy>::namespaced(client.clone(), ns),
            "NetworkPolicy",
            &chat,
            owner_uid,
            chat_policy.as_deref(),
        )
        .await?,
    );
    deleted.extend(
        delete_orphans_of(
            Api::<NetworkPolicy>::namespaced(client.clone(), ns),
            "NetworkPolicy",
            &redis,
            owner_uid,
            redis_policy.as_deref(),
        )
        .await?,
    );
    deleted.extend(
        delete_orphans_of(
            Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
            "PodDisruptionBudget",
            &mine,
            owner_uid,
            pdb.as_deref(),
        )
        .await?,
    );
    deleted.extend(
        delete_orphans_of(
            Api::<Ingress>::namespaced(client.clone(), ns),
            "Ingress",
            &mine,
            owner_uid,
            ingress.as_deref(),
        )
        .await?,
    );
    deleted.extend(
        delete_orphans_of(
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            "StatefulSet",
            &redis,
            owner_uid,
            redis_sts.as_deref(),
        )
        .await?,
    );
    deleted.extend(
        delete_orphans_of(
            Api::<Service>::namespaced(client.clone(), ns),
            "Service",
            &redis,
            owner_uid,
            redis_svc.as_deref(),
        )
        .await?,
    );
    // The server API's Service, once `api.enabled` is off (the generated keys Secret is
    // kept: turning the API back on finds the same keys).
    deleted.extend(
        delete_orphans_of(
            Api::<Service>::namespaced(client.clone(), ns),
            "Service",
            &api,
            owner_uid,
            api_svc.as_deref(),
        )
        .await?,
    );
    let dynamic_kinds = [
        (served.gateway_api, http_route_resource(), &d.http_route),
        (served.keda, scaled_object_resource(), &d.scaled_object),
        (served.pod_monitors, pod_monitor_resource(), &d.pod_monitor),
    ];
    for (is_served, resource, desired) in dynamic_kinds {
        if !is_served {
            continue;
        }
        let wanted = desired
            .as_ref()
            .and_then(|o| o["metadata"]["name"].as_str());
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
        deleted.extend(delete_orphans_of(api, &resource.kind, &mine, owner_uid, wanted).await?);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, owner: Option<&str>) -> Existing {
        Existing {
            name: name.into(),
            owner_uid: owner.map(str::to_owned),
        }
    }

    #[test]
    fn only_this_clusters_undesired_objects_are_orphans() {
        let existing = [
            e("chat", Some("uid-1")),
            e("chat-old", Some("uid-1")),
            e("someone-else", Some("uid-2")),
            e("unowned", None),
        ];
        assert_eq!(
            orphans(&existing, "uid-1", Some("chat")),
            vec!["chat-old".to_string()]
        );
        assert_eq!(
            orphans(&existing, "uid-1", None),
            vec!["chat".to_string(), "chat-old".to_string()]
        );
        assert!(orphans(&existing, "uid-3", None).is_empty());
    }
}
