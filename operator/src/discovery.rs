//! Which optional APIs the cluster serves (Gateway API, KEDA, the Prometheus
//! operator's PodMonitor): objects of those kinds are created only where they can be.

use kube::Client;

/// The Gateway API's HTTPRoutes.
pub const HTTP_ROUTES: (&str, &str) = ("gateway.networking.k8s.io/v1", "httproutes");
/// KEDA's ScaledObjects.
pub const SCALED_OBJECTS: (&str, &str) = ("keda.sh/v1alpha1", "scaledobjects");
/// The Prometheus operator's PodMonitors.
pub const POD_MONITORS: (&str, &str) = ("monitoring.coreos.com/v1", "podmonitors");

/// Whether `group_version` serves `resource` (a plural name). A group that is not
/// installed answers 404: `Ok(false)`. Other errors are returned, so a caller can tell
/// "not installed" from "could not ask".
pub async fn serves(
    client: &Client,
    (group_version, resource): (&str, &str),
) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == resource)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}
