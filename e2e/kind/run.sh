#!/usr/bin/env bash
# The ChatCluster e2e suite on kind, with real pods and a real ingress controller.
# Needs Docker, kind, kubectl and helm on PATH; everything else (the simulated control
# plane) runs without Docker through the README's test command.
#
# Steps: create the kind cluster (e2e/kind/cluster.yaml), install ingress-nginx, build
# both images and load them into the nodes, run the Rust Kubernetes suite against the
# cluster (its own operator process per test namespace), then install the operator chart
# (watching every namespace), apply examples/minimal.yaml and run the data-plane suite,
# e2e/tests/k8s_data_plane.rs, the same one the README's test command runs on its native
# node: the sticky cookie, chat, DMs and presence across pods through the ingress, and
# lossless scale-down, rolling update, force-deleted pod, killed container and Redis loss.
#
# Usage: e2e/kind/run.sh            # KEEP_CLUSTER=1 leaves the cluster running after
#        INGRESS_NGINX_MANIFEST=...  # path or URL of the ingress-nginx kind manifest
set -euo pipefail
# The heavy suites compile only with this set (e2e/build.rs).
export CHATCLUSTER_HEAVY_TESTS=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster=chatcluster-e2e
tag=e2e
ingress_manifest="${INGRESS_NGINX_MANIFEST:-https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-v1.12.1/deploy/static/provider/kind/deploy.yaml}"

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "kind e2e: $tool is required" >&2; exit 1; }
done

kubeconfig="$(mktemp)"
cleanup() {
  if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  rm -f "$kubeconfig"
}
trap cleanup EXIT

echo "== kind cluster"
kind create cluster --config "$here/cluster.yaml" --kubeconfig "$kubeconfig" --wait 120s
export KUBECONFIG="$kubeconfig"

echo "== ingress-nginx"
kubectl apply -f "$ingress_manifest"
kubectl wait -n ingress-nginx --for=condition=Available deploy/ingress-nginx-controller --timeout=180s

echo "== images"
docker build -f "$repo/server/Dockerfile" -t "chatcluster/chat-server:$tag" "$repo"
docker build -f "$repo/operator/Dockerfile" -t "chatcluster/chatcluster-operator:$tag" "$repo"
# A second tag of the same image: the suite's rollout test changes the image.
docker tag "chatcluster/chat-server:$tag" "chatcluster/chat-server:$tag-b"
kind load docker-image --name "$cluster" "chatcluster/chat-server:$tag" \
  "chatcluster/chat-server:$tag-b" "chatcluster/chatcluster-operator:$tag"

echo "== Rust Kubernetes suite (the operator as a process per test namespace)"
cd "$repo"
cargo build --workspace --locked
CHATCLUSTER_KUBECONFIG="$kubeconfig" CHATCLUSTER_KUBECTL="$(command -v kubectl)" \
  CHATCLUSTER_E2E_IMAGE="chatcluster/chat-server:$tag" \
  CHATCLUSTER_E2E_IMAGE_B="chatcluster/chat-server:$tag-b" \
  cargo test -p chatcluster-e2e --test k8s_operator --locked -- \
  --test-threads=1 --skip status_connections_counts_the_clients_of_every_pod \
  --skip a_pod_the_statefulset_does_not_own_never_gets_the_admin_token
# (Those tests bind stand-in servers to simulated pods' loopback IPs; on kind the
# operator process runs on the host, which may not route to pod IPs.)

echo "== operator chart"
helm install chatcluster-operator "$repo/charts/chatcluster-operator" \
  --namespace chatcluster-system --create-namespace \
  --set image.repository=chatcluster/chatcluster-operator --set image.tag="$tag" \
  --set image.pullPolicy=Never --wait --timeout 180s

echo "== examples"
kubectl create namespace chat-example --dry-run=client -o yaml | kubectl apply -f -
sed "s|^metadata:|metadata:\n  namespace: chat-example|" "$repo/examples/minimal.yaml" | kubectl apply -f -
kubectl patch chatcluster chat -n chat-example --type merge \
  -p "{\"spec\":{\"image\":\"chatcluster/chat-server:$tag\",\"imagePullPolicy\":\"Never\"}}"
kubectl wait -n chat-example --for=condition=Ready chatcluster/chat --timeout=300s
kubectl get chat -n chat-example

echo "== data-plane suite (real pods behind ingress-nginx)"
# Skipped here: the test that kills a container (it finds the process through /proc,
# which on kind is inside the node's container), the Envoy Gateway test (it needs a
# Gateway reachable from the host; e2e/node/run-suite.sh installs one on the real node)
# the autoscaler test (its Prometheus pod needs the image e2e/node/images.sh packs, which
# this script does not load into kind), the NetworkPolicy test (it needs a plugin that
# enforces them; the node runs kube-router's) and the Redis flood test (it asks the
# Redis pod at its IP, which the host does not reach on kind).
CHATCLUSTER_KUBECONFIG="$kubeconfig" CHATCLUSTER_KUBECTL="$(command -v kubectl)" \
  CHATCLUSTER_E2E_IMAGE="chatcluster/chat-server:$tag" \
  CHATCLUSTER_E2E_IMAGE_B="chatcluster/chat-server:$tag-b" \
  CHATCLUSTER_E2E_INGRESS="127.0.0.1:18080" \
  cargo test -p chatcluster-e2e --test k8s_data_plane --locked -- \
  --test-threads=1 --skip data_plane_a_killed_container --skip data_plane_gateway \
  --skip data_plane_the_autoscaler --skip data_plane_network_policies --skip data_plane_a_flood
