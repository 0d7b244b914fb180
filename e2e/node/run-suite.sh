#!/usr/bin/env bash
# The data-plane suite on a real node (the README's test command runs it): packs the
# images, starts the node (e2e/node/start-node.sh), installs the operator chart with Helm
# (the operator runs as a pod and reaches the API server through its Service), then runs
# e2e/tests/k8s_data_plane.rs inside the node's network namespace, where the ingress
# controller (Traefik, ingress-nginx provider) listens on 198.18.0.1:80. Stops the node
# whatever happens.
#
# Usage: e2e/node/run-suite.sh IMAGE_BUILD_DIR [CARGO TEST ARGS...]
#   IMAGE_BUILD_DIR: e2e/images/build.sh's output. Extra arguments go to the test binary
#   (after --), e.g. a test name. KEEP_NODE=1 leaves the node running (stop it with
#   e2e/node/stop-node.sh STATE_DIR, printed at the end).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="$(cd "${1:?usage: run-suite.sh IMAGE_BUILD_DIR [TEST ARGS...]}" && pwd)"
shift
cd "$repo"
# The heavy suites compile only with this set (e2e/build.rs).
export CHATCLUSTER_HEAVY_TESTS=1

built="$("$here/build-node.sh")"
node_bin="$(sed -n 1p <<<"$built")"
eg="$(sed -n 3p <<<"$built")"
keda="$(sed -n 5p <<<"$built")"
helm="$(bash e2e/k8s/build-helm.sh)"
# The autoscaler test runs this Prometheus as a pod (its image is packed below).
prometheus="$(bash e2e/k8s/build-prometheus.sh)"
images="$(bash "$here/images.sh" "$build" "$node_bin" "$eg" target/node-images "$prometheus" "$keda")"
# The test binary is built before the node starts (cargo needs no network inside it).
cargo test -p chatcluster-e2e --test k8s_data_plane --locked --no-run

state="$(mktemp -d /tmp/chatcluster-node-XXXXXX)"
# The host's firewall (every table, counters aside) and ipsets, before and after: the
# node's kube-proxy and kube-router write rules and sets only inside its namespace.
host_firewall() {
  { iptables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'; ipset list -n | sort; } | sha256sum
}
host_before="$(host_firewall)"
cleanup() {
  if [[ "${KEEP_NODE:-0}" == 1 ]]; then
    echo "run-suite: node left running: e2e/node/stop-node.sh $state" >&2
  else
    "$here/stop-node.sh" "$state"
    rm -rf "$state"
    if [[ "$(host_firewall)" != "$host_before" ]]; then
      echo "run-suite: the host's iptables rules or ipsets changed while the node ran" >&2
      exit 1
    fi
    echo "run-suite: the host's iptables rules and ipsets are as they were before the node" >&2
  fi
}
trap cleanup EXIT
"$here/start-node.sh" "$state" "$images" >/dev/null
netns="$(cat "$state/netns")"
in_node() { ip netns exec "$netns" "$@"; }
node_kubectl() { in_node "$state/kubectl" --kubeconfig "$state/kubeconfig" "$@"; }
# What a failed install leaves for the reader (the node is stopped right after): every
# pod, the latest events, NAMESPACE's pods described with their containers' last lines,
# and the tails of the node's own logs.
show_node_state() {
  local namespace="$1" pod
  echo "run-suite: the node's state after the failure:"
  node_kubectl get pods -A -o wide || true
  node_kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 40 || true
  for pod in $(node_kubectl get pods -n "$namespace" -o name 2>/dev/null); do
    echo "--- $namespace/$pod"
    node_kubectl describe -n "$namespace" "$pod" 2>&1 | sed -n '/^Containers:/,/^Conditions:/p' || true
    node_kubectl logs -n "$namespace" "$pod" --all-containers --tail=30 2>&1 || true
  done
  for log in "$state"/logs/*.log; do
    echo "--- $log (last lines)"
    tail -n 15 "$log"
  done
} >&2
fail_with_node_state() {
  show_node_state "$1"
  exit 1
}

echo "== Envoy Gateway (its chart: controller, certgen, Gateway API experimental CRDs)"
start=$SECONDS
# shellcheck source=e2e/k8s/versions.sh
source "$here/../k8s/versions.sh"
chart="$state/gateway-helm"
cp -r "$eg/charts/gateway-helm" "$chart"
# The chart's release process fills in its values file; do the same with our image.
sed -e "s|\${GatewayImage}|docker.io/envoyproxy/gateway:v$ENVOY_GATEWAY_VERSION|" \
  -e "s|\${GatewayImagePullPolicy}|IfNotPresent|" "$chart/values.tmpl.yaml" >"$chart/values.yaml"
# The topology injector is a mutating webhook that adds zone labels: one node has none.
install_envoy_gateway() {
  in_node "$helm" install envoy-gateway "$chart" --kubeconfig "$state/kubeconfig" \
    --namespace envoy-gateway-system --create-namespace --set topologyInjector.enabled=false \
    --wait --timeout 180s >/dev/null
}
# It takes 24-35 s here. One CI run's install did not finish in 180 s; the state is
# printed so the cause can be found, and the install is tried once more from scratch.
if ! install_envoy_gateway; then
  show_node_state envoy-gateway-system
  echo "run-suite: Envoy Gateway's install did not finish (the state above); uninstalling it and trying once more" >&2
  in_node "$helm" uninstall envoy-gateway --kubeconfig "$state/kubeconfig" \
    --namespace envoy-gateway-system --wait --timeout 120s >/dev/null || true
  install_envoy_gateway || fail_with_node_state envoy-gateway-system
fi
# One Gateway for every test (routes from any namespace), its Envoy from our image and
# behind a ClusterIP Service (no load balancer here); kube-proxy routes to it.
node_kubectl apply -f - >/dev/null <<EOF
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: node, namespace: envoy-gateway-system}
spec:
  provider:
    type: Kubernetes
    kubernetes:
      envoyDeployment:
        replicas: 1
        container: {image: "docker.io/envoyproxy/envoy:distroless-v$ENVOY_VERSION"}
      envoyService: {type: ClusterIP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
  parametersRef: {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: node, namespace: envoy-gateway-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: chat, namespace: envoy-gateway-system}
spec:
  gatewayClassName: envoy
  listeners:
  - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
EOF
node_kubectl wait -n envoy-gateway-system \
  --for=condition=Programmed gateway/chat --timeout=180s >/dev/null ||
  fail_with_node_state envoy-gateway-system
gateway_ip="$(node_kubectl get gateway chat \
  -n envoy-gateway-system -o jsonpath='{.status.addresses[0].value}')"
echo "run-suite: Envoy Gateway installed and Gateway chat programmed at $gateway_ip:80 in $((SECONDS - start)) s"

echo "== operator chart (the operator image as a pod)"
start=$SECONDS
in_node "$helm" install chatcluster-operator charts/chatcluster-operator \
  --kubeconfig "$state/kubeconfig" --namespace chatcluster-system --create-namespace \
  --set image.repository=docker.io/chatcluster/chatcluster-operator --set image.tag=e2e \
  --set image.pullPolicy=Never --wait --timeout 180s >/dev/null ||
  fail_with_node_state chatcluster-system
echo "run-suite: operator chart installed and Available in $((SECONDS - start)) s"

echo "== KEDA (its own manifests: CRDs, RBAC, operator, metrics API server, APIService)"
start=$SECONDS
# KEDA's config/ as released, with an overlay that does what KEDA's release process and a
# registry would: the version's image tags, images from the node (imagePullPolicy Never),
# and no admission webhooks (not installed here, so the operator's certificate rotation
# must not patch them). The operator makes the certificates (kedaorg-certs) and writes
# their CA into the APIService, through which the API server reaches the metrics server.
mkdir -p "$state/keda/overlay"
cp -r "$keda/config" "$state/keda/config"
cat >"$state/keda/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../config/general
- ../config/crd
- ../config/rbac
- ../config/service_account
- ../config/manager
- ../config/metrics-server
images:
- {name: ghcr.io/kedacore/keda, newTag: "$KEDA_VERSION"}
- {name: ghcr.io/kedacore/keda-metrics-apiserver, newTag: "$KEDA_VERSION"}
patches:
- target: {kind: Deployment, name: keda-operator}
  patch: |-
    - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: --enable-webhook-patching=false}
- target: {kind: Deployment, name: keda-metrics-apiserver}
  patch: |-
    - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
EOF
node_kubectl apply --server-side -k "$state/keda/overlay" >/dev/null ||
  fail_with_node_state keda
node_kubectl wait -n keda --for=condition=Available deployment/keda-operator \
  deployment/keda-metrics-apiserver --timeout=240s >/dev/null || fail_with_node_state keda
node_kubectl wait --for=condition=Available apiservice/v1beta1.external.metrics.k8s.io \
  --timeout=120s >/dev/null || fail_with_node_state keda
echo "run-suite: KEDA v$KEDA_VERSION installed, its APIService Available in $((SECONDS - start)) s"

echo "== data-plane suite (real pods; Traefik's ingress-nginx provider and Envoy Gateway)"
in_node env CHATCLUSTER_KUBECONFIG="$state/kubeconfig" CHATCLUSTER_KUBECTL="$state/kubectl" \
  CHATCLUSTER_E2E_INGRESS=198.18.0.1:80 \
  CHATCLUSTER_E2E_PROMETHEUS_IMAGE=docker.io/chatcluster/prometheus:e2e \
  CHATCLUSTER_E2E_GATEWAY=envoy-gateway-system/chat CHATCLUSTER_E2E_GATEWAY_ADDRESS="$gateway_ip:80" \
  CHATCLUSTER_E2E_IMAGE=docker.io/chatcluster/chat-server:e2e \
  CHATCLUSTER_E2E_IMAGE_B=docker.io/chatcluster/chat-server:e2e-b \
  CHATCLUSTER_E2E_REDIS_IMAGE=docker.io/chatcluster/redis:e2e \
  cargo test --offline -p chatcluster-e2e --test k8s_data_plane --locked -- \
  --test-threads=1 --nocapture "$@"
