//! Which optional APIs the cluster serves (Gateway API, KEDA, the Prometheus operator's
//! PodMonitor): objects of those kinds are created only where they can be, and a spec
//! that asks for one the cluster lacks is Degraded with a message saying what to install.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;

use crate::build::Served;
use crate::crd::{AutoscalingEngine, ChatClusterSpec};

/// The Gateway API's HTTPRoutes.
pub const HTTP_ROUTES: (&str, &str) = ("gateway.networking.k8s.io/v1", "httproutes");
/// KEDA's ScaledObjects.
pub const SCALED_OBJECTS: (&str, &str) = ("keda.sh/v1alpha1", "scaledobjects");
/// The Prometheus operator's PodMonitors.
pub const POD_MONITORS: (&str, &str) = ("monitoring.coreos.com/v1", "podmonitors");

/// How long an answer is reused: installing KEDA or the Gateway API CRDs is noticed
/// within this time, without three discovery calls per reconcile.
pub const REFRESH: Duration = Duration::from_secs(30);

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

/// What the cluster serves, asked at most every [`REFRESH`].
#[derive(Default)]
pub struct Cache(Mutex<Option<(Instant, Served)>>);

impl Cache {
    /// The cached answer while fresh; otherwise asks again. If asking fails, a previous
    /// answer is kept (and the error logged); with none, the error is returned.
    pub async fn get(&self, client: &Client) -> Result<Served, kube::Error> {
        let cached = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, served)) = cached {
            if at.elapsed() < REFRESH {
                return Ok(served);
            }
        }
        match ask(client).await {
            Ok(served) => {
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), served));
                Ok(served)
            }
            Err(e) => match cached {
                Some((_, served)) => {
                    tracing::warn!(error = %e, "API discovery failed; using the previous answer");
                    Ok(served)
                }
                None => Err(e),
            },
        }
    }
}

async fn ask(client: &Client) -> Result<Served, kube::Error> {
    let (gateway_api, keda, pod_monitors) = tokio::try_join!(
        serves(client, HTTP_ROUTES),
        serves(client, SCALED_OBJECTS),
        serves(client, POD_MONITORS)
    )?;
    Ok(Served {
        gateway_api,
        keda,
        pod_monitors,
    })
}

/// The first optional API `spec` asks for that the cluster does not serve, as (reason,
/// message) for the Degraded condition; `None` when everything asked for is served.
pub fn missing(spec: &ChatClusterSpec, served: Served) -> Option<(&'static str, String)> {
    let wants_route = spec.expose.as_ref().is_some_and(|e| e.http_route.is_some());
    let wants_keda = spec
        .autoscaling
        .as_ref()
        .is_some_and(|a| a.engine == AutoscalingEngine::Keda);
    let wants_monitor = spec.monitoring.pod_monitor.is_some();
    if wants_route && !served.gateway_api {
        Some(("GatewayApiNotInstalled", "expose.httpRoute is set but this cluster does not serve gateway.networking.k8s.io/v1 HTTPRoutes: install the Gateway API CRDs (and a Gateway controller), or remove expose.httpRoute".to_owned()))
    } else if wants_keda && !served.keda {
        Some(("KedaNotInstalled", "autoscaling.engine is keda but this cluster does not serve keda.sh/v1alpha1 ScaledObjects: install KEDA, or set autoscaling.engine to builtin".to_owned()))
    } else if wants_monitor && !served.pod_monitors {
        Some(("PodMonitorsNotServed", "monitoring.podMonitor is set but this cluster does not serve monitoring.coreos.com/v1 PodMonitors: install the Prometheus operator's CRDs, or remove monitoring.podMonitor".to_owned()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> ChatClusterSpec {
        serde_json::from_value(value).expect("a valid spec")
    }

    #[test]
    fn nothing_optional_asked_for_needs_nothing() {
        assert_eq!(missing(&spec(json!({})), Served::default()), None);
    }

    #[test]
    fn each_missing_api_is_named() {
        let keda = spec(json!({"autoscaling": {"maxReplicas": 3, "engine": "keda",
            "prometheusUrl": "http://prometheus:9090"}}));
        assert_eq!(
            missing(&keda, Served::default()).map(|m| m.0),
            Some("KedaNotInstalled")
        );
        let served = Served {
            keda: true,
            ..Served::default()
        };
        assert_eq!(missing(&keda, served), None);

        let builtin = spec(json!({"autoscaling": {"maxReplicas": 3}}));
        assert_eq!(missing(&builtin, Served::default()), None);

        let monitor = spec(json!({"monitoring": {"podMonitor": {}}}));
        let (reason, message) = missing(&monitor, Served::default()).expect("missing");
        assert_eq!(reason, "PodMonitorsNotServed");
        assert!(message.contains("monitoring.podMonitor"), "{message}");

        let route = spec(json!({"expose": {"httpRoute": {"gatewayName": "gw"}}}));
        assert_eq!(
            missing(&route, Served::default()).map(|m| m.0),
            Some("GatewayApiNotInstalled")
        );
    }
}
